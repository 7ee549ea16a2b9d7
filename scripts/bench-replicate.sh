#!/usr/bin/env bash
# Benchmarks `reprise replicate` against peers measured in the same run, on the same files,
# over the same sshd (a lab on 127.NET.x.x), for each image size of SIZES_MIB:
#   1. initial full copy of an image of random data: reprise vs `cat img | ssh host 'cat > copy'`
#      (OpenSSH's default cipher; also followed by `sync copy`, as durable as a reprise point; and
#      with `-c aes128-gcm@openssh.com`, the cipher reprise's OpenSSH client offers first on
#      processors with AES);
#   2. PCTS% of its 64 KiB blocks changed (random blocks, random data): reprise vs
#      `rsync --inplace --no-whole-file -e ssh` vs rsync's default mode (temporary file + rename).
# reprise copies both disks of the lab's erp-db (the small system disk and the measured data
# disk), as a real replication of a vm does. It is measured relayed (the orchestrator on a third
# machine: the data goes through it) and with `--here hv-pra` (the orchestrator on the recovery
# host, as in a real set-up that must survive the loss of the main site: the data crosses SSH
# once, like the peers'), each with both SSH clients of its data: `--ssh-client openssh` (the
# system's ssh) and `--ssh-client libssh2`.
# Prints, as Markdown tables: medians of REPS runs of the wall time, the CPU time of the
# orchestrator and its children (helpers here, ssh clients), bytes on the wire (reprise: block
# stream + manifest; rsync: its --stats total bytes sent + received; cat: the image size), ratios
# to the peers of the same run, the 1-minute load average during the timed runs, and the peak
# resident memory of each kind of process (orchestrator, helpers, ssh streams, ssh master
# connections), sampled in one more, untimed run per mode and case. Asserts nothing.
#
# Ratios are reprise's time over the peer's: below 1, reprise took less time.
#
# Env: SIZES_MIB ("1024 4096"), PCTS ("1 10"), REPS (3), NET (160), KEEP (0: remove the tmp dir),
# PEERS ("cat sync gcm inplace default": which peers run: `cat | ssh`, with `sync`, with AES-GCM,
# rsync --inplace, rsync's default mode), BIN (a reprise binary to measure instead of building
# this checkout's release build),
# MODES ("relay here relay-libssh2 here-libssh2"; a mode ending in `@alt` runs ALT_BIN instead
# of this checkout's release build, e.g. to compare two builds in the same run),
# LOAD_BELOW and LOAD_WAIT (before each size, wait up to LOAD_WAIT seconds for the 1-minute
# load average to drop below LOAD_BELOW).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZES_MIB=${SIZES_MIB:-"1024 4096"}
PCTS=${PCTS:-"1 10"}
REPS=${REPS:-3}
NET=${NET:-160}
LOAD_BELOW=${LOAD_BELOW:-}
LOAD_WAIT=${LOAD_WAIT:-0}
log() { echo "[bench] $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
py() { python3 -c "$@"; }
median() { py 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

command -v sshd >/dev/null || { log "installing openssh-server"; apt-get install -y -qq openssh-server >/dev/null; }
command -v qemu-img >/dev/null || { log "installing qemu-utils"; apt-get install -y -qq qemu-utils >/dev/null; }
command -v rsync >/dev/null || { log "installing rsync"; apt-get install -y -qq rsync >/dev/null; }
if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=$ROOT/target/release/reprise
fi
BIN=$(realpath "$BIN")
PEERS=${PEERS:-"cat sync gcm inplace default"}
peer() { [[ " $PEERS " == *" $1 "* ]]; }
if [ -n "${ALT_BIN:-}" ]; then ALT_BIN=$(realpath "$ALT_BIN"); fi

# The lab network's lock, as the tests take it: a test or another bench on the same network waits.
exec 9>"${TMPDIR:-/tmp}/reprise-it-net-$NET.lock"
flock 9

TMP=$(mktemp -d /tmp/reprise-bench-replicate.XXXXXX)
LAB=$TMP/lab
cleanup() {
  "$BIN" lab down --lab-dir "$LAB" >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT
"$BIN" lab up --lab-dir "$LAB" --net "$NET" >/dev/null
SRC_DIR=$(grep -A3 '^\[hosts.hv-main.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
DST_DIR=$(grep -A3 '^\[hosts.hv-pra.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
PRA=$(grep -A2 '^\[hosts.hv-pra\]' "$LAB/overlay.toml" | sed -n 's/^address = "\(.*\)"/\1/p')
SSH="ssh -p 2222 -i $LAB/client/id_ed25519 -o UserKnownHostsFile=$LAB/client/known_hosts -o BatchMode=yes -o Compression=no"
SRC=$SRC_DIR/erp-db-data.qcow2
DST=$DST_DIR/erp-db-data.qcow2
# The image: the same pseudo-random bytes each time it is made (AES-CTR of zeros), rather than a
# kept copy, so that the bench needs a file of the size less on the disk.
base() { { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 0 < /dev/zero 2>/dev/null || true; } | head -c "$SIZE"; }

read -r -a MODES <<< "${MODES:-relay here relay-libssh2 here-libssh2}"
declare -A MODE_ARGS=(
  [relay]="--ssh-client openssh" [here]="--here hv-pra --ssh-client openssh"
  [relay-libssh2]="--ssh-client libssh2" [here-libssh2]="--here hv-pra --ssh-client libssh2")
declare -A MODE_NAME=(
  [relay]="reprise, OpenSSH client, relayed" [here]="reprise, OpenSSH client, \`--here hv-pra\`"
  [relay-libssh2]="reprise, libssh2, relayed" [here-libssh2]="reprise, libssh2, \`--here hv-pra\`")
args_of() { echo "${MODE_ARGS[${1%@alt}]}"; }
name_of() { if [[ $1 == *@alt ]]; then echo "${MODE_NAME[${1%@alt}]} ($(basename "$ALT_BIN"))"; else echo "${MODE_NAME[$1]}"; fi; }
bin_of() { if [[ $1 == *@alt ]]; then echo "$ALT_BIN"; else echo "$BIN"; fi; }

# `reprise replicate --service erp-db` in mode $1, not timed.
reprise_quiet() {
  # shellcheck disable=SC2046
  "$(bin_of "$1")" --overlay "$LAB/overlay.toml" --state-dir "$TMP/state" replicate --service erp-db $(args_of "$1") >/dev/null
}

# Timed `reprise replicate` in mode $1: "seconds cpu_seconds bytes" (CPU: the orchestrator and
# the children it waited for; bytes: the data disk's line).
reprise_run() {
  local out
  # shellcheck disable=SC2046
  out=$(/usr/bin/time -f 'TIME %e %U %S' "$(bin_of "$1")" --overlay "$LAB/overlay.toml" --state-dir "$TMP/state" \
    replicate --service erp-db $(args_of "$1") 2>&1) || true
  local bytes times
  bytes=$(echo "$out" | grep erp-db-data | sed -n 's/.*: point [^,]*, \([0-9]*\) bytes sent.*/\1/p')
  times=$(echo "$out" | sed -n 's/^TIME //p')
  [ -n "$bytes" ] || { log "reprise failed: $out"; echo "failed"; return; }
  read -r e u s <<< "$times"
  echo "$e $(py "print($u + $s)") $bytes"
}

# Peak resident memory (VmHWM) of this bench's processes, sampled every 20 ms until the file $1
# exists: the orchestrator (`reprise ... replicate`), the replication helpers (`helper-<hash>
# helper ...`, on the lab's hosts, i.e. this machine; or `reprise helper` here), the OpenSSH
# clients carrying a stream, and the OpenSSH master connections. Prints "orch helper ssh master"
# in KiB.
peak_memory() {
  py "
import os, time
stop = '$1'
peak = {'orch': 0, 'helper': 0, 'ssh': 0, 'master': 0}
while not os.path.exists(stop):
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
            status = open(f'/proc/{pid}/status').read()
        except OSError:
            continue
        words = [w.decode(errors='replace') for w in cmd if w]
        # Only this bench's processes (other labs may replicate on the same machine).
        if not words or not any('$TMP' in w for w in words):
            continue
        hwm = next((int(l.split()[1]) for l in status.splitlines() if l.startswith('VmHWM:')), 0)
        exe = os.path.basename(words[0])
        if 'replicate' in words and exe.startswith('reprise'):
            kind = 'orch'
        elif 'helper' in words and (exe.startswith('reprise') or exe.startswith('helper-')
                                    or any(os.path.basename(w).startswith('helper-') for w in words)):
            kind = 'helper'
        elif exe == 'ssh' and 'ControlMaster=yes' in words:
            kind = 'master'
        elif exe == 'ssh' and any('helper' in w for w in words):
            kind = 'ssh'
        else:
            continue
        peak[kind] = max(peak[kind], hwm)
    time.sleep(0.02)
print(peak['orch'], peak['helper'], peak['ssh'], peak['master'])"
}

# Runs "$@" (a command that replicates) while sampling memory; sets MEM to "orch helper ssh master".
with_memory() {
  rm -f "$TMP/stop"
  peak_memory "$TMP/stop" > "$TMP/peak" &
  local sampler=$!
  "$@"
  touch "$TMP/stop"; wait "$sampler"
  MEM=$(cat "$TMP/peak")
}

mib() { py "print('%.1f' % ($1 / 1024))"; }
mem_row() { # name "orch helper ssh master"
  read -r o h s m <<< "$2"
  local sc mc
  if [ "$s" = 0 ]; then sc="none"; else sc="$(mib "$s") MiB"; fi
  if [ "$m" = 0 ]; then mc="none"; else mc="$(mib "$m") MiB"; fi
  echo "| $1 | $(mib "$o") MiB | $(mib "$h") MiB | $sc | $mc |"
}
load_summary() { # loads...
  py 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print("%.1f (min %.1f, max %.1f)" % (statistics.median(v), min(v), max(v)))' "$@"
}

change() { # percent seed size
  py "
import os, random
random.seed($2)
n = $3 // 65536
k = max(1, n * $1 // 100)
with open('$SRC', 'r+b') as f:
    for b in random.sample(range(n), k):
        f.seek(b * 65536); f.write(os.urandom(65536))
print(k * 65536)"
}
rsync_run() { # extra-args dst
  local t0 t1 out
  t0=$(now)
  # shellcheck disable=SC2086
  out=$(rsync $1 --stats -e "$SSH" "$SRC" root@"$PRA":"$2")
  t1=$(now)
  local sent recv
  sent=$(echo "$out" | sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' | tr -d ,)
  recv=$(echo "$out" | sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' | tr -d ,)
  echo "$(py "print($t1 - $t0)") $((sent + recv))"
}

echo "# reprise replicate: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(ssh -V 2>&1)"
for SIZE_MIB in $SIZES_MIB; do
  SIZE=$((SIZE_MIB * 1024 * 1024))
  if [ -n "$LOAD_BELOW" ]; then
    waited=0
    until py "import sys; sys.exit(0 if $(load1) < $LOAD_BELOW else 1)" || [ "$waited" -ge "$LOAD_WAIT" ]; do
      sleep 30; waited=$((waited + 30))
    done
    log "load average $(load1) after waiting ${waited}s"
  fi
  LOADS=()
  START_UPTIME=$(uptime)

  # 1. Initial full copy.
  declare -a C_T=() S_T=() G_T=()
  declare -A R_T=() R_C=() R_B=() MEM_INIT=()
  for i in $(seq "$REPS"); do
    for mode in "${MODES[@]}"; do
      log "$SIZE_MIB MiB, initial copy, $mode, run $i"
      base > "$SRC"
      rm -rf "$DST" "$DST.reprise"
      sync                                    # no earlier write-back competes with the run
      LOADS+=("$(load1)")
      read -r t c b < <(reprise_run "$mode")
      [ "$t" != failed ] || exit 1
      R_T[$mode]+="$t "; R_C[$mode]+="$c "; R_B[$mode]+="$b "
      cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
    done
    rm -rf "$DST" "$DST.reprise" "$DST_DIR/cat-copy.img"; sync   # room for the peers' copy
    LOADS+=("$(load1)")
    t0=$(now); $SSH root@"$PRA" "cat > '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
    C_T+=("$(py "print($t1 - $t0)")")
    if peer sync; then
      # The same, durable as a reprise point is (its copy is fsynced before it counts).
      rm -f "$DST_DIR/cat-copy.img"; sync
      t0=$(now); $SSH root@"$PRA" "cat > '$DST_DIR/cat-copy.img' && sync '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
      S_T+=("$(py "print($t1 - $t0)")")
    fi
    if peer gcm; then
      # The same cipher as reprise's OpenSSH client on a processor with AES instructions.
      rm -f "$DST_DIR/cat-copy.img"; sync
      t0=$(now); $SSH -c aes128-gcm@openssh.com root@"$PRA" "cat > '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
      G_T+=("$(py "print($t1 - $t0)")")
    fi
    rm -f "$DST_DIR/cat-copy.img"
  done
  ct=$(median "${C_T[@]}"); st=$(if peer sync; then median "${S_T[@]}"; else echo 0; fi)
  gt=$(if peer gcm; then median "${G_T[@]}"; else echo 0; fi)
  ratio() { if [ "$2" = 0 ]; then echo "n/a"; else py "print('%.2f ×' % ($1/$2))"; fi; }
  # Peak memory, in one more (untimed) initial copy per mode: the sampler costs CPU.
  for mode in "${MODES[@]}"; do
    log "$SIZE_MIB MiB, initial copy, $mode, memory"
    rm -rf "$DST" "$DST.reprise"; sync
    with_memory reprise_quiet "$mode"
    MEM_INIT[$mode]=$MEM
  done
  INIT_LOAD=$(load_summary "${LOADS[@]}")

  echo
  echo "## $SIZE_MIB MiB of random data, initial copy (medians of $REPS; load average during the runs: $INIT_LOAD)"
  echo
  echo "| $SIZE_MIB MiB, initial copy | time | throughput | CPU (orchestrator and children) | against \`cat \\| ssh\` | with \`sync\` | with AES-GCM |"
  echo "|---|---|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    rt=$(median ${R_T[$mode]}); rc=$(median ${R_C[$mode]})
    printf '| %s | %.2f s | %.1f MB/s | %.2f s | %s | %s | %s |\n' \
      "$(name_of "$mode")" "$rt" "$(py "print($SIZE/$rt/1e6)")" "$rc" "$(ratio "$rt" "$ct")" "$(ratio "$rt" "$st")" "$(ratio "$rt" "$gt")"
  done
  printf '| `cat \\| ssh '"'"'cat > copy'"'"'` | %.2f s | %.1f MB/s | | | | |\n' "$ct" "$(py "print($SIZE/$ct/1e6)")"
  if peer sync; then printf '| the same with `sync` | %.2f s | %.1f MB/s | | | | |\n' "$st" "$(py "print($SIZE/$st/1e6)")"; fi
  if peer gcm; then printf '| the same with `-c aes128-gcm@openssh.com` | %.2f s | %.1f MB/s | | | | |\n' "$gt" "$(py "print($SIZE/$gt/1e6)")"; fi
  echo
  echo "Bytes on the wire: $(for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    printf '%s %.0f; ' "${mode}" "$(median ${R_B[$mode]})"; done)cat $SIZE."
  echo
  echo "| peak memory, initial copy | orchestrator | each helper | each ssh stream | each ssh master |"
  echo "|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do mem_row "$(name_of "$mode")" "${MEM_INIT[$mode]}"; done

  # 2. Changed blocks.
  for pct in $PCTS; do
    LOADS=()
    declare -A RT=() RC=() RB=() MEM_UPD=()
    declare -a IT=() IB=() DT=() DB=()
    changed=0
    for i in $(seq "$REPS"); do
      for mode in "${MODES[@]}"; do
        log "$SIZE_MIB MiB, $pct% changed, $mode, run $i"
        base > "$SRC"
        reprise_quiet "$mode"                  # up to date (not timed)
        sync
        changed=$(change "$pct" "$i" "$SIZE")  # the same blocks in every mode
        LOADS+=("$(load1)")
        read -r t c b < <(reprise_run "$mode")
        [ "$t" != failed ] || exit 1
        RT[$mode]+="$t "; RC[$mode]+="$c "; RB[$mode]+="$b "
        cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
      done
      for kind in inplace default; do
        peer "$kind" || continue
        base > "$DST_DIR/rsync-$kind.img"
        # An old mtime: rsync's quick check (size and mtime) must not skip the file.
        touch -d @0 "$DST_DIR/rsync-$kind.img"
        sync
        LOADS+=("$(load1)")
        if [ "$kind" = inplace ]; then
          read -r t b < <(rsync_run "--inplace --no-whole-file" "$DST_DIR/rsync-$kind.img"); IT+=("$t"); IB+=("$b")
        else
          read -r t b < <(rsync_run "" "$DST_DIR/rsync-$kind.img"); DT+=("$t"); DB+=("$b")
        fi
        cmp -s "$SRC" "$DST_DIR/rsync-$kind.img" || { log "the rsync $kind copy differs"; exit 1; }
        rm -f "$DST_DIR/rsync-$kind.img"
      done
    done
    for mode in "${MODES[@]}"; do
      log "$SIZE_MIB MiB, $pct% changed, $mode, memory"
      base > "$SRC"
      reprise_quiet "$mode"
      sync
      change "$pct" 1 "$SIZE" >/dev/null
      with_memory reprise_quiet "$mode"
      MEM_UPD[$mode]=$MEM
    done
    it=0; ib=0; dt=0; db=0
    if peer inplace; then it=$(median "${IT[@]}"); ib=$(median "${IB[@]}"); fi
    if peer default; then dt=$(median "${DT[@]}"); db=$(median "${DB[@]}"); fi
    echo
    echo "## $SIZE_MIB MiB, $pct% of the 64 KiB blocks changed ($changed bytes; medians of $REPS; load average during the runs: $(load_summary "${LOADS[@]}"))"
    echo
    echo "| $SIZE_MIB MiB, $pct% changed | time | CPU (orchestrator and children) | on the wire | against rsync \`--inplace\` | against rsync (default) |"
    echo "|---|---|---|---|---|---|"
    for mode in "${MODES[@]}"; do
      # shellcheck disable=SC2086
      rt=$(median ${RT[$mode]}); rc=$(median ${RC[$mode]}); rb=$(median ${RB[$mode]})
      printf '| %s | %.2f s | %.2f s | %.0f bytes (%.3f × changed) | %s | %s |\n' \
        "$(name_of "$mode")" "$rt" "$rc" "$rb" "$(py "print($rb/$changed)")" "$(ratio "$rt" "$it")" "$(ratio "$rt" "$dt")"
    done
    if peer inplace; then printf '| rsync `--inplace --no-whole-file` | %.2f s | | %.0f bytes (%.3f × changed) | | |\n' "$it" "$ib" "$(py "print($ib/$changed)")"; fi
    if peer default; then printf '| rsync (default) | %.2f s | | %.0f bytes (%.3f × changed) | | |\n' "$dt" "$db" "$(py "print($db/$changed)")"; fi
    echo
    echo "| peak memory, $pct% changed | orchestrator | each helper | each ssh stream | each ssh master |"
    echo "|---|---|---|---|---|"
    for mode in "${MODES[@]}"; do mem_row "$(name_of "$mode")" "${MEM_UPD[$mode]}"; done
  done
  echo
  echo "Load at the start of this size: $START_UPTIME; at its end: $(uptime)"
done

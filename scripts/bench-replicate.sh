#!/usr/bin/env bash
# Benchmarks `reprise replicate` against peers measured in the same run, on the same files,
# over the same sshd (a lab on 127.160.x.x):
#   1. initial full copy of an image of SIZE_MIB random MiB: reprise vs `cat img | ssh host 'cat > copy'`
#      (OpenSSH's default cipher; also followed by `sync copy`, as durable as a reprise point; and
#      with `-c aes128-gcm@openssh.com`, the cipher reprise's OpenSSH client offers first on
#      processors with AES);
#   2. PCTS% of its 64 KiB blocks changed (random blocks, random data): reprise vs
#      `rsync --inplace --no-whole-file -e ssh` vs rsync's default mode (temporary file + rename).
# reprise is measured relayed (the orchestrator on a third machine: the data goes through it)
# and with `--here hv-pra` (the orchestrator on the recovery host, as in a real set-up that must
# survive the loss of the main site: the data crosses SSH once, like the peers'), each with both
# SSH clients of its data: `--ssh-client openssh` (the system's ssh) and `--ssh-client libssh2`.
# Wall time and bytes on the wire (reprise: block stream + manifest; rsync: its --stats total bytes
# sent + received; cat: the image size), and the peak memory of the orchestrator and the helpers
# during the initial copy. Prints medians of REPS runs and ratios; asserts nothing.
#
# Env: SIZE_MIB (1024), PCTS ("1 10"), REPS (3), NET (160), KEEP (0: remove the tmp dir),
# MODES ("relay here relay-libssh2 here-libssh2").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MIB=${SIZE_MIB:-1024}
PCTS=${PCTS:-"1 10"}
REPS=${REPS:-3}
NET=${NET:-160}
log() { echo "[bench] $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
py() { python3 -c "$@"; }
median() { py 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

command -v sshd >/dev/null || { log "installing openssh-server"; apt-get install -y -qq openssh-server >/dev/null; }
command -v qemu-img >/dev/null || { log "installing qemu-utils"; apt-get install -y -qq qemu-utils >/dev/null; }
command -v rsync >/dev/null || { log "installing rsync"; apt-get install -y -qq rsync >/dev/null; }
log "cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/reprise

TMP=$(mktemp -d /tmp/reprise-bench-replicate.XXXXXX)
LAB=$TMP/lab
cleanup() {
  "$BIN" lab down --lab-dir "$LAB" >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT
"$BIN" lab up --lab-dir "$LAB" --net "$NET" >/dev/null
R=("$BIN" --overlay "$LAB/overlay.toml" --state-dir "$TMP/state")
SRC_DIR=$(grep -A3 '^\[hosts.hv-main.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
DST_DIR=$(grep -A3 '^\[hosts.hv-pra.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
PRA=$(grep -A2 '^\[hosts.hv-pra\]' "$LAB/overlay.toml" | sed -n 's/^address = "\(.*\)"/\1/p')
SSH="ssh -p 2222 -i $LAB/client/id_ed25519 -o UserKnownHostsFile=$LAB/client/known_hosts -o BatchMode=yes -o Compression=no"
SRC=$SRC_DIR/erp-db-data.qcow2
DST=$DST_DIR/erp-db-data.qcow2
BASE=$TMP/base.img
SIZE=$((SIZE_MIB * 1024 * 1024))

log "making a $SIZE_MIB MiB image of random data"
head -c "$SIZE" /dev/urandom > "$BASE"

# Seconds and bytes of the data disk's line of `reprise replicate` (extra arguments: $@).
reprise_run() {
  local t0 t1 out
  t0=$(now)
  out=$("${R[@]}" replicate --service erp-db "$@")
  t1=$(now)
  local bytes
  bytes=$(echo "$out" | grep erp-db-data | sed -n 's/.*: point [^,]*, \([0-9]*\) bytes sent.*/\1/p')
  echo "$(py "print($t1 - $t0)") $bytes"
}

# Peak resident memory (VmHWM) of the orchestrator (`reprise ... replicate`), of the
# replication helpers (`helper-<hash> helper ...`, on the lab's hosts, i.e. this machine) and of
# each OpenSSH client carrying one, sampled every 20 ms until the file $1 exists; prints
# "orchestrator_kib helper_kib ssh_kib".
peak_memory() {
  py "
import os, time
stop = '$1'
peak = {'orch': 0, 'helper': 0, 'ssh': 0}
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
        if 'replicate' in words and os.path.basename(words[0]) == 'reprise':
            peak['orch'] = max(peak['orch'], hwm)
        elif 'helper' in words and (os.path.basename(words[0]) == 'reprise'
                                    or any(os.path.basename(w).startswith('helper-') for w in words)):
            peak['helper'] = max(peak['helper'], hwm)
        elif os.path.basename(words[0]) == 'ssh' and any('helper' in w for w in words):
            peak['ssh'] = max(peak['ssh'], hwm)
    time.sleep(0.02)
print(peak['orch'], peak['helper'], peak['ssh'])"
}

# 1. Initial full copy.
read -r -a MODES <<< "${MODES:-relay here relay-libssh2 here-libssh2}"
declare -A MODE_ARGS=(
  [relay]="--ssh-client openssh" [here]="--here hv-pra --ssh-client openssh"
  [relay-libssh2]="--ssh-client libssh2" [here-libssh2]="--here hv-pra --ssh-client libssh2")
declare -A MODE_NAME=(
  [relay]="reprise, openssh, relayed" [here]="reprise, openssh, --here hv-pra"
  [relay-libssh2]="reprise, libssh2, relayed" [here-libssh2]="reprise, libssh2, --here hv-pra")
declare -a C_T S_T G_T
declare -A M_O M_H M_S
declare -A R_T R_B
for i in $(seq "$REPS"); do
  for mode in "${MODES[@]}"; do
    log "initial copy, $mode, run $i"
    cp "$BASE" "$SRC"
    rm -rf "$DST" "$DST.reprise"
    sync                                    # no earlier write-back competes with the run
    # shellcheck disable=SC2086
    read -r t b < <(reprise_run ${MODE_ARGS[$mode]})
    R_T[$mode]+="$t "; R_B[$mode]+="$b "
    cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
  done
  rm -f "$DST_DIR/cat-copy.img"; sync
  t0=$(now); $SSH root@"$PRA" "cat > '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
  C_T+=("$(py "print($t1 - $t0)")")
  # The same, durable as a reprise point is (its copy is fsynced before it counts).
  rm -f "$DST_DIR/cat-copy.img"; sync
  t0=$(now); $SSH root@"$PRA" "cat > '$DST_DIR/cat-copy.img' && sync '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
  S_T+=("$(py "print($t1 - $t0)")")
  # The same cipher as reprise on a processor with AES instructions.
  rm -f "$DST_DIR/cat-copy.img"; sync
  t0=$(now); $SSH -c aes128-gcm@openssh.com root@"$PRA" "cat > '$DST_DIR/cat-copy.img'" < "$SRC"; t1=$(now)
  G_T+=("$(py "print($t1 - $t0)")")
done
ct=$(median "${C_T[@]}"); st=$(median "${S_T[@]}"); gt=$(median "${G_T[@]}")
# Peak memory, in one more (untimed) initial copy per mode: the sampler costs CPU.
for mode in "${MODES[@]}"; do
  log "initial copy, $mode, memory"
  rm -rf "$DST" "$DST.reprise"; sync
  rm -f "$TMP/stop"
  peak_memory "$TMP/stop" > "$TMP/peak" &
  sampler=$!
  # shellcheck disable=SC2086
  reprise_run ${MODE_ARGS[$mode]} >/dev/null
  touch "$TMP/stop"; wait "$sampler"
  read -r mo mh ms < "$TMP/peak"
  M_O[$mode]=$mo; M_H[$mode]=$mh; M_S[$mode]=$ms
done
echo
echo "Initial copy of $SIZE_MIB MiB of random data (medians of $REPS):"
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  rt=$(median ${R_T[$mode]}); rb=$(median ${R_B[$mode]})
  printf '  %-34s %8.2f s  %12.0f bytes  %7.1f MB/s  (%.2f x cat|ssh, %.2f x with sync, %.2f x with aes128-gcm)\n' \
    "${MODE_NAME[$mode]}" "$rt" "$rb" "$(py "print($SIZE/$rt/1e6)")" "$(py "print($ct/$rt)")" "$(py "print($st/$rt)")" "$(py "print($gt/$rt)")"
done
printf '  %-34s %8.2f s  %12d bytes  %7.1f MB/s\n' "cat | ssh 'cat > copy'" "$ct" "$SIZE" "$(py "print($SIZE/$ct/1e6)")"
printf '  %-34s %8.2f s  %12d bytes  %7.1f MB/s\n' "cat | ssh 'cat > copy && sync copy'" "$st" "$SIZE" "$(py "print($SIZE/$st/1e6)")"
printf '  %-34s %8.2f s  %12d bytes  %7.1f MB/s\n' "cat | ssh -c aes128-gcm (same cipher)" "$gt" "$SIZE" "$(py "print($SIZE/$gt/1e6)")"
echo "  peak memory (an untimed copy per mode):"
for mode in "${MODES[@]}"; do
  printf '    %-32s orchestrator %.1f MiB, each helper at most %.1f MiB, each ssh at most %.1f MiB\n' \
    "${MODE_NAME[$mode]}" "$(py "print(${M_O[$mode]} / 1024)")" "$(py "print(${M_H[$mode]} / 1024)")" \
    "$(py "print(${M_S[$mode]} / 1024)")"
done

# 2. Changed blocks.
change() { # percent seed
  py "
import os, random
random.seed($2)
n = $SIZE // 65536
k = max(1, n * $1 // 100)
with open('$SRC', 'r+b') as f:
    for b in random.sample(range(n), k):
        f.seek(b * 65536); f.write(os.urandom(65536))
print(k * 65536)"
}
rsync_run() { # extra-args dst
  local t0 t1 out
  t0=$(now)
  out=$(rsync $1 --stats -e "$SSH" "$SRC" root@"$PRA":"$2")
  t1=$(now)
  local sent recv
  sent=$(echo "$out" | sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' | tr -d ,)
  recv=$(echo "$out" | sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' | tr -d ,)
  echo "$(py "print($t1 - $t0)") $((sent + recv))"
}
for pct in $PCTS; do
  declare -A RT=() RB=()
  declare -a IT=() IB=() DT=() DB=()
  changed=0
  for i in $(seq "$REPS"); do
    for mode in "${MODES[@]}"; do
      log "$pct% changed, $mode, run $i"
      cp "$BASE" "$SRC"
      # shellcheck disable=SC2086
      "${R[@]}" replicate --service erp-db ${MODE_ARGS[$mode]} >/dev/null   # up to date (not timed)
      sync
      changed=$(change "$pct" "$i")                       # the same blocks in both modes
      # shellcheck disable=SC2086
      read -r t b < <(reprise_run ${MODE_ARGS[$mode]}); RT[$mode]+="$t "; RB[$mode]+="$b "
      cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
    done
    cp "$BASE" "$DST_DIR/rsync-inplace.img"
    cp "$BASE" "$DST_DIR/rsync-default.img"
    # An old mtime: rsync's quick check (size and mtime) must not skip the file.
    touch -d @0 "$DST_DIR/rsync-inplace.img" "$DST_DIR/rsync-default.img"
    sync
    read -r t b < <(rsync_run "--inplace --no-whole-file" "$DST_DIR/rsync-inplace.img"); IT+=("$t"); IB+=("$b")
    read -r t b < <(rsync_run "" "$DST_DIR/rsync-default.img"); DT+=("$t"); DB+=("$b")
    cmp -s "$SRC" "$DST_DIR/rsync-inplace.img" || { log "the rsync --inplace copy differs"; exit 1; }
    cmp -s "$SRC" "$DST_DIR/rsync-default.img" || { log "the rsync copy differs"; exit 1; }
  done
  it=$(median "${IT[@]}"); ib=$(median "${IB[@]}")
  dt=$(median "${DT[@]}"); db=$(median "${DB[@]}")
  echo
  echo "$pct% of the 64 KiB blocks changed ($changed bytes), medians of $REPS:"
  for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    rt=$(median ${RT[$mode]}); rb=$(median ${RB[$mode]})
    printf '  %-34s %8.2f s  %12.0f bytes on the wire (%.3f x changed)  %.2f x rsync --inplace, %.2f x rsync default\n' \
      "${MODE_NAME[$mode]}" "$rt" "$rb" "$(py "print($rb/$changed)")" "$(py "print($rt/$it)")" "$(py "print($rt/$dt)")"
  done
  printf '  %-34s %8.2f s  %12.0f bytes on the wire (%.3f x changed)\n' "rsync --inplace --no-whole-file" "$it" "$ib" "$(py "print($ib/$changed)")"
  printf '  %-34s %8.2f s  %12.0f bytes on the wire (%.3f x changed)\n' "rsync (default)" "$dt" "$db" "$(py "print($db/$changed)")"
done

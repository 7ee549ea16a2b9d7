#!/usr/bin/env bash
# Benchmarks replication over a WAN-like link, as between the two sites over their VPN, against
# `cat | ssh` and `rsync --inplace --no-whole-file -e ssh` on the same link, in the same run.
#
# Two network namespaces this script creates and deletes (never the machine's own network):
# "near", the primary site, where the example's lab runs (`reprise lab up`, on 127.NET.x.x of
# that namespace), and "far", the recovery host, where hv-pra's sshd (the lab's configuration,
# host key and folders) listens on 192.0.2.2; hv-main's sshd listens on 192.0.2.1 in "near" too.
# They are joined by a link of RATE_MBIT each way, RTT_MS of round trip and LOSS_PCT% of the
# packets lost each way: `tc netem` on a veth pair when the kernel has it, else a delay line
# between two TUN devices (scripts/bench/wan-link.py, which also queues at most a router's
# buffer). reprise runs in "far" with `--here hv-pra` (the orchestrator on the recovery host:
# the data crosses the link once, as the peers'), copying both disks of erp-db, with each
# `--ssh-client` (openssh, libssh2), plain and with `--compress`; the peers run in "near".
#
#   1. An initial copy of an image of INIT_MIB (64 KiB blocks, half pseudo-random, half text
#      made of words, which zstd shrinks): reprise against `cat | ssh` (none when INIT_MIB=0).
#   2. An image of UPDATE_MIB (the same mix), brought up to date once (untimed, over the near
#      namespace's loopback); a replication with nothing changed; then, for each PCT of PCTS,
#      that share of its 64 KiB blocks rewritten with random data before each timed run:
#      reprise against rsync (its copy brought to the same content first, with an old mtime),
#      and against `cat | ssh` of the changed bytes alone through an OpenSSH master connection
#      made once and idle for a second before each run (the peer of a kept-connection round).
#
# Prints, as Markdown tables, medians of REPS: the wall time, the bytes that crossed the link
# (both ways, IP packets: every protocol's overhead included), the time over the floor (the
# image or the changed bytes at RATE_MBIT), the ratio to the peer; first the link as measured
# (ping's round trip, one TCP stream's throughput without ssh). Asserts nothing.
#
# Env: RATE_MBIT (100), RTT_MS (30), LOSS_PCT (0.1), INIT_MIB (256), UPDATE_MIB (1024), PCTS ("1 10"),
# REPS (3), NET (170: the lab's 127.NET addresses, inside "near"), LINK (auto | netem | tun),
# CC (the TCP congestion control of both namespaces; default: as the machine's),
# IDLE_RESTART (net.ipv4.tcp_slow_start_after_idle of both namespaces: 0 or 1; default: as
# the machine's, 1 unless changed: a connection idle past its retransmission timeout starts
# again from a small window, which a kept connection meets at each round),
# MODES ("openssh openssh-compress libssh2 libssh2-compress"; also openssh-kept and
# libssh2-kept: a round of a `replicate --every` kept running, its connections kept between
# rounds, asked with SIGUSR1 and timed from the signal to the round's end), KEEP (0), LOG_DIR (each timed
# reprise run's output appended to LOG_DIR/reprise-wan.log; with REPRISE_LOG=reprise=debug,
# every login, remote command and stream, timed), MIN_FREE_GIB (8: refused
# when the images, their copies and rsync's would leave less free disk), BIN (a reprise binary;
# default: a release build of this checkout, in CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE_MBIT=${RATE_MBIT:-100}
RTT_MS=${RTT_MS:-30}
LOSS_PCT=${LOSS_PCT:-0.1}
INIT_MIB=${INIT_MIB:-256}
UPDATE_MIB=${UPDATE_MIB:-1024}
PCTS=${PCTS:-"1 10"}
REPS=${REPS:-3}
NET=${NET:-170}
LINK=${LINK:-auto}
MIN_FREE_GIB=${MIN_FREE_GIB:-8}
read -r -a MODES <<< "${MODES:-openssh openssh-compress libssh2 libssh2-compress}"
log() { echo "[bench] $*" >&2; }
py() { python3 -c "$@"; }
median() { py 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

[ "$(id -u)" = 0 ] || { log "needs root: it creates network namespaces"; exit 2; }
command -v sshd >/dev/null || { log "installing openssh-server"; apt-get install -y -qq openssh-server >/dev/null; }
command -v qemu-img >/dev/null || { log "installing qemu-utils"; apt-get install -y -qq qemu-utils >/dev/null; }
command -v rsync >/dev/null || { log "installing rsync"; apt-get install -y -qq rsync >/dev/null; }
command -v ping >/dev/null || { log "installing iputils-ping"; apt-get install -y -qq iputils-ping >/dev/null; }
if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/reprise
fi
BIN=$(realpath "$BIN")
SSHD=$(command -v sshd)

NEED_MIB=$(py "print(int(3.3 * max($INIT_MIB, $UPDATE_MIB)))")
AVAIL_MIB=$(($(df --output=avail -B1M /tmp | tail -1)))
if [ $((AVAIL_MIB - NEED_MIB)) -lt $((MIN_FREE_GIB * 1024)) ]; then
  log "needs about $NEED_MIB MiB of disk: $AVAIL_MIB MiB are free, and $MIN_FREE_GIB GiB must stay free"
  exit 1
fi
TMP=$(mktemp -d /tmp/reprise-bench-wan.XXXXXX)
LAB=$TMP/lab
NEAR=reprise-wan-near-$$
FAR=reprise-wan-far-$$
LINK_PID=
declare -A KEPT_PID=()
cleanup() {
  set +e
  for side in near far; do
    [ -f "$TMP/$side-sshd.pid" ] && kill "$(cat "$TMP/$side-sshd.pid")" 2>/dev/null
  done
  [ -S "$TMP/cm" ] && in_near $SSH -o ControlPath="$TMP/cm" -O exit root@192.0.2.2 2>/dev/null
  for pid in "${KEPT_PID[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [ -n "$LINK_PID" ] && kill "$LINK_PID" 2>/dev/null && wait "$LINK_PID" 2>/dev/null
  "$BIN" lab down --lab-dir "$LAB" >/dev/null 2>&1
  ip netns del "$NEAR" 2>/dev/null
  ip netns del "$FAR" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT
in_near() { ip netns exec "$NEAR" "$@"; }
in_far() { ip netns exec "$FAR" "$@"; }

# The link.
ip netns add "$NEAR"
ip netns add "$FAR"
ip -n "$NEAR" link set lo up
ip -n "$FAR" link set lo up
if [ "$LINK" = auto ]; then
  # netem is there when a netem qdisc can be added to a device of a namespace of our own.
  if tc -n "$NEAR" qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    tc -n "$NEAR" qdisc del dev lo root; LINK=netem
  else
    LINK=tun
  fi
fi
if [ "$LINK" = netem ]; then
  ip -n "$NEAR" link add wan type veth peer name wan netns "$FAR"
  for ns in "$NEAR" "$FAR"; do
    tc -n "$ns" qdisc add dev wan root netem delay "$(py "print($RTT_MS / 2)")ms" \
      rate "${RATE_MBIT}mbit" loss "${LOSS_PCT}%" limit 1000
  done
  ip -n "$NEAR" addr add 192.0.2.1/24 dev wan
  ip -n "$FAR" addr add 192.0.2.2/24 dev wan
  ip -n "$NEAR" link set wan up
  ip -n "$FAR" link set wan up
else
  for ns in "$NEAR" "$FAR"; do ip -n "$ns" tuntap add dev wan mode tun; done
  ip -n "$NEAR" addr add 192.0.2.1/24 dev wan
  ip -n "$FAR" addr add 192.0.2.2/24 dev wan
  ip -n "$NEAR" link set wan up
  ip -n "$FAR" link set wan up
  python3 "$ROOT/scripts/bench/wan-link.py" "$NEAR" wan "$FAR" wan "$RATE_MBIT" "$RTT_MS" "$LOSS_PCT" \
    > "$TMP/link.log" 2>&1 &
  LINK_PID=$!
fi
if [ -n "${CC:-}" ]; then
  # The namespaces' own TCP congestion control (the machine's is left as it is).
  for ns in "$NEAR" "$FAR"; do ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_congestion_control="$CC"; done
fi
if [ -n "${IDLE_RESTART:-}" ]; then
  for ns in "$NEAR" "$FAR"; do ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_slow_start_after_idle="$IDLE_RESTART"; done
fi
link_bytes() { # both ways, as "near" counts them
  echo $(($(in_near cat /sys/class/net/wan/statistics/tx_bytes) + $(in_near cat /sys/class/net/wan/statistics/rx_bytes)))
}
for _ in $(seq 50); do in_near ping -c 1 -W 1 192.0.2.2 >/dev/null 2>&1 && break; sleep 0.2; done
RTT=$(in_near ping -q -c 20 -i 0.2 192.0.2.2 | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
# One TCP stream without ssh, 64 MiB, as the link carries it.
in_far python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('192.0.2.2', 5001)); s.listen(1); c, _ = s.accept()
while c.recv(1 << 20): pass
" &
SINK=$!
sleep 0.5
TCP_MBIT=$(in_near python3 -c "
import socket, time
for _ in range(100):  # the listener may start late on a loaded machine
    try: s = socket.create_connection(('192.0.2.2', 5001)); break
    except ConnectionRefusedError: time.sleep(0.1)
buf = bytes(1 << 20); t = time.monotonic()
for _ in range(64): s.sendall(buf)
s.shutdown(socket.SHUT_WR); s.recv(1); print('%.1f' % (64 * 8 * 1.048576 / (time.monotonic() - t)))")
wait "$SINK"

# The lab in "near", and each side's sshd on the link.
in_near "$BIN" lab up --lab-dir "$LAB" --net "$NET" >/dev/null
for side in near far; do
  if [ $side = near ]; then host=hv-main addr=192.0.2.1 ns=$NEAR; else host=hv-pra addr=192.0.2.2 ns=$FAR; fi
  sed -e "s/^ListenAddress .*/ListenAddress $addr:2222/" -e "s|^PidFile .*|PidFile $TMP/$side-sshd.pid|" \
    "$LAB/hosts/$host/sshd_config" > "$TMP/$side-sshd_config"
  ip netns exec "$ns" "$SSHD" -e -f "$TMP/$side-sshd_config" 2>> "$TMP/$side-sshd.log"
  echo "[$addr]:2222 $(cut -d' ' -f1,2 "$LAB/hosts/$host/ssh_host_ed25519_key.pub")" >> "$LAB/client/known_hosts"
done
py "
import re
text = open('$LAB/overlay.toml').read()
for host, addr in (('hv-main', '192.0.2.1'), ('hv-pra', '192.0.2.2')):
    text = re.sub(r'(\[hosts\.%s\]\naddress = )\"[^\"]*\"' % re.escape(host), r'\g<1>\"%s\"' % addr, text)
open('$TMP/wan-overlay.toml', 'w').write(text)
"
SRC_DIR=$(grep -A3 '^\[hosts.hv-main.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
DST_DIR=$(grep -A3 '^\[hosts.hv-pra.vars\]' "$LAB/overlay.toml" | sed -n 's/^images_dir = "\(.*\)"/\1/p')
SRC=$SRC_DIR/erp-db-data.qcow2
DST=$DST_DIR/erp-db-data.qcow2
SSH="ssh -p 2222 -i $LAB/client/id_ed25519 -o UserKnownHostsFile=$LAB/client/known_hosts -o BatchMode=yes -o Compression=no"

# An image of $1 MiB: 64 KiB blocks alternately pseudo-random and text (words of a made-up
# vocabulary of 2,000, drawn by a Zipf law, as in prose; 64 such blocks, in turn).
make_image() {
  py "
import random, string
rng = random.Random(7)
vocab = [''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(2000)]
weights = [1 / (r + 1) for r in range(len(vocab))]
texts = []
for _ in range(64):
    words = rng.choices(vocab, weights, k=14000)
    texts.append(' '.join(words).encode()[:65536])
with open('$SRC', 'wb') as f:
    for i in range($1 * 16):
        f.write(texts[i // 2 % 64] if i % 2 else rng.randbytes(65536))
"
}
change() { # percent seed: rewrites that share of the blocks with random data; prints the bytes
  py "
import os, random
rng = random.Random($2)
n = os.path.getsize('$SRC') // 65536
k = max(1, n * $1 // 100)
with open('$SRC', 'r+b') as f:
    for b in rng.sample(range(n), k):
        f.seek(b * 65536); f.write(os.urandom(65536))
print(k * 65536)"
}
declare -A MODE_ARGS=(
  [openssh]="--ssh-client openssh" [openssh-compress]="--ssh-client openssh --compress"
  [libssh2]="--ssh-client libssh2" [libssh2-compress]="--ssh-client libssh2 --compress"
  [openssh-kept]="--ssh-client openssh" [libssh2-kept]="--ssh-client libssh2")
declare -A MODE_NAME=(
  [openssh]="reprise, OpenSSH client" [openssh-compress]="reprise, OpenSSH client, \`--compress\`"
  [libssh2]="reprise, libssh2" [libssh2-compress]="reprise, libssh2, \`--compress\`"
  [openssh-kept]="reprise \`--every\`, a round, OpenSSH client"
  [libssh2-kept]="reprise \`--every\`, a round, libssh2")
# The modes ending in -kept run as `replicate --every 24h`, started once (its first round
# untimed) and kept running; a timed run is one round asked with SIGUSR1, timed from the
# signal to the round's line (its connections' check before the round included).
start_kept() {
  local mode=$1
  # shellcheck disable=SC2086
  ip netns exec "$FAR" "$BIN" --overlay "$TMP/wan-overlay.toml" --state-dir "$TMP/state" \
    replicate --service erp-db --here hv-pra ${MODE_ARGS[$mode]} --every 24h \
    > "$TMP/$mode.out" 2> "$TMP/$mode.err" &
  KEPT_PID[$mode]=$!
  kept_wait "$mode" 0
}
kept_rounds() { grep -c '^round ' "$TMP/$1.out" || true; }
kept_wait() { # mode rounds-before: waits for the next round's line; fails unless it is ok
  local n
  for _ in $(seq 12000); do
    n=$(kept_rounds "$1")
    if [ "$n" -gt "$2" ]; then
      grep '^round ' "$TMP/$1.out" | tail -1 | grep -q ': ok in ' && return 0
      log "reprise --every failed: $(tail -n 20 "$TMP/$1.out" "$TMP/$1.err")"; exit 1
    fi
    kill -0 "${KEPT_PID[$1]}" 2>/dev/null || { log "reprise --every ended: $(cat "$TMP/$1.err")"; exit 1; }
    sleep 0.01
  done
  log "reprise --every: no round within 120 s"; exit 1
}
# Timed replication over the link in mode $1: "seconds link_bytes".
reprise_wan() {
  local b0 t0 out n
  if [ -n "${KEPT_PID[$1]:-}" ]; then
    # Untimed: a point of the run just before (another mode's) is not in this round's second.
    sleep 1
    n=$(kept_rounds "$1")
    b0=$(link_bytes); t0=$EPOCHREALTIME
    kill -USR1 "${KEPT_PID[$1]}"
    kept_wait "$1" "$n"
    echo "$(py "print($EPOCHREALTIME - $t0)") $(($(link_bytes) - b0))"
    return
  fi
  b0=$(link_bytes); t0=$EPOCHREALTIME
  # shellcheck disable=SC2086
  out=$(in_far "$BIN" --overlay "$TMP/wan-overlay.toml" --state-dir "$TMP/state" \
    replicate --service erp-db --here hv-pra ${MODE_ARGS[$1]} 2>&1) || { log "reprise failed: $out"; exit 1; }
  [ -z "${LOG_DIR:-}" ] || printf '### %s\n%s\n' "$1" "$out" >> "$LOG_DIR/reprise-wan.log"
  echo "$(py "print($EPOCHREALTIME - $t0)") $(($(link_bytes) - b0))"
}
# Untimed replication over "near"'s loopback (the lab's own addresses).
reprise_local() {
  in_near "$BIN" --overlay "$LAB/overlay.toml" --state-dir "$TMP/state" replicate --service erp-db >/dev/null
  # A kept-running replication's next round must not take its point in the second of this
  # one's (a point id is to the second: the copy would refuse it as a second point of that id).
  sleep 1
}
timed() { # command...: "seconds link_bytes"
  local b0 t0
  b0=$(link_bytes); t0=$EPOCHREALTIME
  "$@"
  echo "$(py "print($EPOCHREALTIME - $t0)") $(($(link_bytes) - b0))"
}
# An OpenSSH master connection to the far side, made once (untimed) and kept: the peer of a
# round of `replicate --every`, whose connections are kept.
ensure_master() {
  in_near $SSH -o ControlPath="$TMP/cm" -O check root@192.0.2.2 2>/dev/null && return
  in_near $SSH -o ControlMaster=yes -o ControlPath="$TMP/cm" -o ControlPersist=yes -f -N root@192.0.2.2
}
floor() { py "print($1 * 8 / ($RATE_MBIT * 1e6))"; }
row() { # name seconds bytes floor_bytes peer_seconds
  py "
t, b, f, p = $2, $3, $4, $5
print('| $1 | %.2f s | %.1f MB | %.2f × | %s |' % (t, b / 1e6, t / (f * 8 / ($RATE_MBIT * 1e6)), ('%.2f ×' % (t / p)) if p else ''))"
}

echo "# bench-wan: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $(ssh -V 2>&1), $(rsync --version | head -1)"
echo "# link: $LINK, ${RATE_MBIT} Mbit/s each way, ${RTT_MS} ms round trip, ${LOSS_PCT}% loss each way;" \
  "measured: ping $RTT ms, one TCP stream (no ssh) $TCP_MBIT Mbit/s; TCP congestion control $(in_near cat /proc/sys/net/ipv4/tcp_congestion_control), slow start after idle $(in_near cat /proc/sys/net/ipv4/tcp_slow_start_after_idle)"
echo "# load at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

# Helpers deployed (untimed), on the lab's loopback.
make_image 1
reprise_local
for mode in "${MODES[@]}"; do
  case $mode in *-kept) start_kept "$mode" ;; esac
done

# 1. Initial copy (INIT_MIB=0: none).
INIT=$((INIT_MIB << 20))
if [ "$INIT_MIB" -gt 0 ]; then
  make_image "$INIT_MIB"
  declare -A T=() B=()
  CT=() CB=()
  for i in $(seq "$REPS"); do
    for mode in "${MODES[@]}"; do
      log "initial copy of $INIT_MIB MiB, $mode, run $i"
      rm -rf "$DST" "$DST.reprise"; sync
      read -r t b < <(reprise_wan "$mode")
      T[$mode]+="$t "; B[$mode]+="$b "
      cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
    done
    log "initial copy of $INIT_MIB MiB, cat | ssh, run $i"
    rm -f "$DST_DIR/cat-copy.img"; sync
    read -r t b < <(timed in_near sh -c "$SSH root@192.0.2.2 \"cat > '$DST_DIR/cat-copy.img'\" < '$SRC'")
    CT+=("$t"); CB+=("$b")
    cmp -s "$SRC" "$DST_DIR/cat-copy.img" || { log "the cat copy differs"; exit 1; }
    rm -f "$DST_DIR/cat-copy.img"
  done
  ct=$(median "${CT[@]}")
  echo
  echo "## Initial copy of $INIT_MIB MiB (half random, half text), medians of $REPS"
  echo
  echo "| initial copy | time | over the link | × the floor ($INIT_MIB MiB at $RATE_MBIT Mbit/s) | × \`cat \\| ssh\` |"
  echo "|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    row "${MODE_NAME[$mode]}" "$(median ${T[$mode]})" "$(median ${B[$mode]})" "$INIT" "$ct"
  done
  row '`cat \| ssh`' "$ct" "$(median "${CB[@]}")" "$INIT" 0
fi

# 2. Updates.
make_image "$UPDATE_MIB"
rm -rf "$DST" "$DST.reprise"
reprise_local
unset T B
# With nothing changed: the fixed costs (logins, requests, the manifests' digests).
declare -A Z=() ZB=()
RZ=() RZB=()
for i in $(seq "$REPS"); do
  for mode in "${MODES[@]}"; do
    log "$UPDATE_MIB MiB, nothing changed, $mode, run $i"
    read -r t b < <(reprise_wan "$mode")
    Z[$mode]+="$t "; ZB[$mode]+="$b "
  done
  log "$UPDATE_MIB MiB, nothing changed, rsync, run $i"
  cp "$SRC" "$DST_DIR/rsync.img"; touch -d @0 "$DST_DIR/rsync.img"; sync
  read -r t b < <(timed in_near rsync --inplace --no-whole-file -e "$SSH" "$SRC" root@192.0.2.2:"$DST_DIR/rsync.img")
  RZ+=("$t"); RZB+=("$b")
  rm -f "$DST_DIR/rsync.img"
done
rz=$(median "${RZ[@]}")
echo
echo "## $UPDATE_MIB MiB, nothing changed, medians of $REPS"
echo
echo "| nothing changed | time | over the link | × rsync \`--inplace\` |"
echo "|---|---|---|---|"
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  py "t, b, p = $(median ${Z[$mode]}), $(median ${ZB[$mode]}), $rz; print('| ${MODE_NAME[$mode]} | %.2f s | %.3f MB | %.2f × |' % (t, b / 1e6, t / p))"
done
py "t, b = $rz, $(median "${RZB[@]}"); print('| rsync \`--inplace --no-whole-file\` | %.2f s | %.3f MB | |' % (t, b / 1e6))"

for PCT in $PCTS; do
  declare -A T=() B=()
  RT=() RB=() KT=() KB=()
  changed=0
  for i in $(seq "$REPS"); do
    for mode in "${MODES[@]}"; do
      log "$UPDATE_MIB MiB, $PCT% changed, $mode, run $i"
      changed=$(change "$PCT" "$i$RANDOM")
      sync
      read -r t b < <(reprise_wan "$mode")
      T[$mode]+="$t "; B[$mode]+="$b "
      cmp -s "$SRC" "$DST" || { log "the reprise copy differs"; exit 1; }
    done
    log "$UPDATE_MIB MiB, $PCT% changed, rsync, run $i"
    cp "$SRC" "$DST_DIR/rsync.img"; touch -d @0 "$DST_DIR/rsync.img"
    changed=$(change "$PCT" "$i$RANDOM"); sync
    read -r t b < <(timed in_near rsync --inplace --no-whole-file -e "$SSH" "$SRC" root@192.0.2.2:"$DST_DIR/rsync.img")
    RT+=("$t"); RB+=("$b")
    cmp -s "$SRC" "$DST_DIR/rsync.img" || { log "the rsync copy differs"; exit 1; }
    rm -f "$DST_DIR/rsync.img"
    # The same bytes as the change, alone, through a connection already made and idle for a
    # second (as a round's): what one TCP stream with ssh carries them in on this link.
    head -c "$changed" "$SRC" > "$TMP/changed.bin"
    ensure_master
    sleep 1
    log "$UPDATE_MIB MiB, $PCT% changed, cat | ssh of the changed bytes (kept), run $i"
    read -r t b < <(timed in_near sh -c "$SSH -o ControlPath='$TMP/cm' root@192.0.2.2 \"cat > '$DST_DIR/cat-changed.bin'\" < '$TMP/changed.bin'")
    KT+=("$t"); KB+=("$b")
    rm -f "$DST_DIR/cat-changed.bin"
    reprise_local  # rsync's change reaches reprise's copy too, untimed: the next run sends its own only
  done
  rt=$(median "${RT[@]}")
  echo
  echo "## $UPDATE_MIB MiB, $PCT% of the 64 KiB blocks rewritten ($changed bytes), medians of $REPS"
  echo
  echo "| $PCT% changed | time | over the link | × the floor ($changed bytes at $RATE_MBIT Mbit/s) | × rsync \`--inplace\` |"
  echo "|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    row "${MODE_NAME[$mode]}" "$(median ${T[$mode]})" "$(median ${B[$mode]})" "$changed" "$rt"
  done
  row 'rsync `--inplace --no-whole-file`' "$rt" "$(median "${RB[@]}")" "$changed" 0
  row '`cat \| ssh` of the changed bytes alone, a connection kept' "$(median "${KT[@]}")" "$(median "${KB[@]}")" "$changed" "$rt"
  unset T B
done
echo
echo "Load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$LINK_PID" ]; then
  kill "$LINK_PID"; wait "$LINK_PID" || true; LINK_PID=
  echo "The link: $(paste -sd ';' "$TMP/link.log")"
fi

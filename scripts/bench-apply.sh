#!/usr/bin/env bash
# Benchmarks the recovery side of a replication: `reprise helper apply` of a change of PCT% of
# the blocks of a SIZE GiB disk, read through its dirty bitmap (as bench-cbt.sh does), timed
# with a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, the machine's whole cache)
# for two binaries side by side: each keeps its own copy, both copies get the same streams, and
# the two applies of each stream run one after the other (in alternating order), so that both
# see the same load. Prints each run's time and peak memory, then the medians. Asserts nothing.
#
# Env: SIZE_GIB (64), DATA_PCT (0.5), PCT (0.1), REPS (5), SAME (0; 1: every run changes the
# same blocks, so that each apply replaces data the copy holds, not holes), BIN_A and BIN_B
# (reprise binaries to compare; BIN_B defaults to a release build of this checkout). Needs about
# SIZE * (2 * DATA_PCT + 3 * PCT * REPS) / 100 of free disk, under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_GIB=${SIZE_GIB:-64}
DATA_PCT=${DATA_PCT:-0.5}
PCT=${PCT:-0.1}
REPS=${REPS:-5}
SAME=${SAME:-0}
: "${BIN_A:?BIN_A: the reprise binary to compare with}"
if [ -z "${BIN_B:-}" ]; then
  cargo build --release --quiet
  BIN_B=${CARGO_TARGET_DIR:-$PWD/target}/release/reprise
fi
py() { python3 -c "$@"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
TMP=$(mktemp -d /var/tmp/reprise-bench-apply.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"' EXIT
export HOME=$TMP/home
P=$("$BIN_B" helper version | py 'import json,sys; print(json.load(sys.stdin)["protocol"])')
SIZE=$((SIZE_GIB << 30))

# Writes COUNT runs of LEN random bytes at random multiples of LEN below SIZE into qcow2 IMG.
scribble() {
  local img=$1 len=$2 count=$3
  rm -rf "$TMP/chunks"; mkdir "$TMP/chunks"
  py "
import os, random
slots = random.sample(range($SIZE // $len), $count)
if $len == 65536 and '$SAME' == '1':
    # The same blocks each run (as a guest rewriting its hot blocks): each apply replaces
    # blocks the copy holds, read from its disk, not holes.
    try:
        slots = [int(x) for x in open('$TMP/slots').read().split()]
    except FileNotFoundError:
        open('$TMP/slots', 'w').write(' '.join(map(str, slots)))
cmds = []
for i, s in enumerate(slots):
    path = '$TMP/chunks/%d' % i
    with open(path, 'wb') as f:
        f.write(os.urandom($len))
    cmds.append('-c \"write -s %s %d %d\"' % (path, s * $len, $len))
print(' '.join(cmds))
" > "$TMP/cmds"
  eval qemu-io -f qcow2 $(cat "$TMP/cmds") "$img" >/dev/null
  rm -rf "$TMP/chunks"
}
# apply BIN COPY POINT MODE: seconds and peak resident KiB of one apply of $TMP/stream, cold.
apply() {
  cold
  local t0=$EPOCHREALTIME
  /usr/bin/time -o "$TMP/rss" -f %M "$1" helper apply "$2" --point="$3" --taken-at="$(date -u +%FT%TZ)" \
    --source=bench --retention=2 --mode="$4" --protocol="$P" < "$TMP/stream" >/dev/null
  echo "$(py "print(round($EPOCHREALTIME - $t0, 3))") $(cat "$TMP/rss")"
}

IMG=$TMP/disk.qcow2
qemu-img create -q -f qcow2 "$IMG" "${SIZE_GIB}G"
scribble "$IMG" $((1 << 20)) "$(py "print(int($SIZE * $DATA_PCT / 100) >> 20)")"
"$BIN_B" helper manifest "$TMP/a.raw" --protocol="$P" > "$TMP/manifest"
"$BIN_B" helper send "$IMG" --format=qcow2 --protocol="$P" < "$TMP/manifest" > "$TMP/stream"
apply "$BIN_A" "$TMP/a.raw" p0 scan >/dev/null
apply "$BIN_B" "$TMP/b.raw" p0 scan >/dev/null
qemu-img bitmap --add "$IMG" cp
BLOCKS=$(py "print(max(1, int($SIZE / 65536 * $PCT / 100)))")
echo "# bench-apply: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; $SIZE_GIB GiB, $PCT% of the blocks changed ($BLOCKS, the same each run: $SAME); load at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# A: $BIN_A; B: $BIN_B"
echo
echo "| run | A time | A peak memory | B time | B peak memory | load |"
echo "|---|---|---|---|---|---|"
TA=() TB=()
for i in $(seq "$REPS"); do
  scribble "$IMG" 65536 "$BLOCKS"
  "$BIN_B" helper manifest "$TMP/b.raw" --protocol="$P" > "$TMP/manifest"
  "$BIN_B" helper send "$IMG" --format=qcow2 --bitmap=cp --protocol="$P" < "$TMP/manifest" > "$TMP/stream"
  if [ $((i % 2)) = 1 ]; then
    read -r ta ma < <(apply "$BIN_A" "$TMP/a.raw" "p$i" changed-blocks)
    read -r tb mb < <(apply "$BIN_B" "$TMP/b.raw" "p$i" changed-blocks)
  else
    read -r tb mb < <(apply "$BIN_B" "$TMP/b.raw" "p$i" changed-blocks)
    read -r ta ma < <(apply "$BIN_A" "$TMP/a.raw" "p$i" changed-blocks)
  fi
  TA+=("$ta") TB+=("$tb")
  printf '| %s | %.3f s | %.1f MiB | %.3f s | %.1f MiB | %s |\n' "$i" "$ta" "$(py "print($ma / 1024)")" "$tb" "$(py "print($mb / 1024)")" "$(cut -d' ' -f1 /proc/loadavg)"
  qemu-img bitmap --clear "$IMG" cp
done
qemu-img compare -q -f raw -F qcow2 "$TMP/a.raw" "$IMG" || echo "A's copy differs from the disk"
qemu-img compare -q -f raw -F qcow2 "$TMP/b.raw" "$IMG" || echo "B's copy differs from the disk"
median() { py 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
echo
echo "Median: A $(median "${TA[@]}") s, B $(median "${TB[@]}") s."

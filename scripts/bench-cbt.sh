#!/usr/bin/env bash
# Benchmarks what changed-block tracking changes: the source side of a replication of a stopped
# qcow2 disk (reprise's helper, as on a hypervisor) reading every block (a scan, through
# qemu-nbd) against reading only what the disk's persistent dirty bitmap marks, with
# `rsync --inplace --no-whole-file` of the image file as the peer, in the same run.
#
# For each SIZE in SIZES_GIB: a sparse qcow2 of SIZE GiB with DATA_PCT% of it random data (in
# 1 MiB runs at random places), copied once (raw, sparse), a bitmap started; then for each PCT in
# PCTS, PCT% of its 64 KiB blocks rewritten with random data, and, with a cold page cache before
# each timed run when COLD=1 (`sync; echo 3 > /proc/sys/vm/drop_caches`, the machine's whole
# cache), the source side timed REPS times each way (its stream written to a file: what would
# cross the link): every block and the dirty bitmap against the manifest the source kept when
# it last sent (as a replication does when the recovery manifest's digest is that one's), and
# the bitmap against the recovery manifest read on its standard input (the source did not keep
# it); then the change applied to the copy and the bitmap cleared, as a new
# checkpoint does. Prints, as Markdown tables: medians of the wall time, bytes of the stream
# against the bytes changed, ratios to rsync and to the bitmap path of the same run, the peak
# resident memory of the source side (the helper and the qemu-nbd it starts; rsync's processes),
# the load average during the runs; then, per PCT, how the bitmap path's time grows with the
# size. The recovery side is timed too, once per PCT (the change moves the copy on): the
# helper applying the bitmap path's stream to the copy, cold, with its peak memory; and how
# its time grows with the size. Asserts nothing.
#
# Needs about SIZE * (4 * DATA_PCT + 4 * (sum of PCTS)) / 100 of free disk per size (the disk,
# the copy, the image file's copy for rsync and rsync's working copy, each growing by what
# changes); a size that would leave less than MIN_FREE_GIB free is refused before it starts.
#
# Env: SIZES_GIB ("4 16"), DATA_PCT (5), PCTS ("0.1 1"), REPS (3), COLD (1), KEEP (0),
# MIN_FREE_GIB (8), BIN (a reprise binary; default: a release build of this checkout, in
# CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZES_GIB=${SIZES_GIB:-"4 16"}
DATA_PCT=${DATA_PCT:-5}
PCTS=${PCTS:-"0.1 1"}
REPS=${REPS:-3}
COLD=${COLD:-1}
MIN_FREE_GIB=${MIN_FREE_GIB:-8}
log() { echo "[bench] $*" >&2; }
py() { python3 -c "$@"; }
median() { py 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
cold() { if [ "$COLD" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }

command -v qemu-img >/dev/null || { log "installing qemu-utils"; apt-get install -y -qq qemu-utils >/dev/null; }
command -v rsync >/dev/null || { log "installing rsync"; apt-get install -y -qq rsync >/dev/null; }
if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/reprise
fi
P=$("$BIN" helper version | py 'import json,sys; print(json.load(sys.stdin)["protocol"])')
H=("$BIN" helper)

TMP=$(mktemp -d /var/tmp/reprise-bench-cbt.XXXXXX)
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"; }
trap cleanup EXIT
export HOME=$TMP/home
KEPT=$HOME/.cache/reprise/manifests

# Writes COUNT runs of LEN random bytes at random multiples of LEN below SIZE into qcow2 IMG
# (each run its own bytes, so that rsync finds none of them elsewhere in the file).
scribble() {
  local img=$1 size=$2 len=$3 count=$4
  rm -rf "$TMP/chunks"; mkdir "$TMP/chunks"
  py "
import os, random
size, length, count = $size, $len, $count
slots = random.sample(range(size // length), count)
cmds = []
for i, s in enumerate(slots):
    path = '$TMP/chunks/%d' % i
    with open(path, 'wb') as f:
        f.write(os.urandom(length))
    cmds.append('-c \"write -s %s %d %d\"' % (path, s * length, length))
print(' '.join(cmds))
" > "$TMP/cmds"
  eval qemu-io -f qcow2 $(cat "$TMP/cmds") "$img" >/dev/null
  rm -rf "$TMP/chunks"
}

# Source side once: seconds, bytes of the stream, peak resident KiB (the helper and the
# qemu-nbd it starts and waits for).
send() {
  local img=$1; shift
  local t0=$EPOCHREALTIME
  /usr/bin/time -o "$TMP/rss" -f %M "${H[@]}" send "$img" --format=qcow2 "$@" --protocol="$P" < "$TMP/manifest" > "$TMP/stream"
  py "print(round($EPOCHREALTIME - $t0, 3))"
  stat -c %s "$TMP/stream"
  cat "$TMP/rss"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
avail_gib() { df --output=avail -B1 "$TMP" | tail -1 | py 'import sys; print(int(sys.stdin.read()) / 2**30)'; }

echo "# bench-cbt: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $(qemu-nbd --version | head -1), $(rsync --version | head -1)"
echo "# DATA_PCT=$DATA_PCT PCTS=\"$PCTS\" REPS=$REPS COLD=$COLD; load at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| size | changed | way | time | × rsync | × bitmap | stream bytes | × changed | peak memory |"
echo "|---|---|---|---|---|---|---|---|---|"
declare -A BITMAP_T=() APPLY_T=()
LOADS=()
for G in $SIZES_GIB; do
  SIZE=$((G << 30))
  NEED=$(py "print($G * (4 * $DATA_PCT + 4 * sum(float(p) for p in '$PCTS'.split())) / 100)")
  if py "import sys; sys.exit(0 if $(avail_gib) - $NEED >= $MIN_FREE_GIB else 1)"; then :; else
    log "$G GiB needs about $NEED GiB of disk: $(avail_gib) GiB are free, and $MIN_FREE_GIB must stay free; not run"
    exit 1
  fi
  IMG=$TMP/disk.qcow2 COPY=$TMP/copy.raw FILECOPY=$TMP/file-copy.qcow2
  rm -rf "$IMG" "$COPY" "$COPY.reprise" "$FILECOPY" "$HOME"
  qemu-img create -q -f qcow2 "$IMG" "${G}G"
  log "$G GiB: $DATA_PCT% of random data"
  scribble "$IMG" "$SIZE" $((1 << 20)) "$(py "print(int($SIZE * $DATA_PCT / 100) >> 20)")"
  "${H[@]}" manifest "$COPY" --protocol="$P" > "$TMP/manifest"
  "${H[@]}" send "$IMG" --format=qcow2 --protocol="$P" < "$TMP/manifest" |
    "${H[@]}" apply "$COPY" --point=p0 --taken-at="$(date -u +%FT%TZ)" --source=bench --retention=2 --mode=scan --protocol="$P" >/dev/null
  cp --sparse=always "$IMG" "$FILECOPY"
  qemu-img bitmap --add "$IMG" cp
  n=1
  for PCT in $PCTS; do
    BLOCKS=$(py "print(max(1, int($SIZE / 65536 * $PCT / 100)))")
    CHANGED=$((BLOCKS * 65536))
    scribble "$IMG" "$SIZE" 65536 "$BLOCKS"
    "${H[@]}" manifest "$COPY" --protocol="$P" > "$TMP/manifest"
    # As a replication does: the recovery side's digest, the manifest the source kept when
    # it last sent (the same), put back before each run (a run updates it).
    DIGEST=$("${H[@]}" manifest "$COPY" --digest --protocol="$P")
    rm -rf "$TMP/kept"; cp -a "$KEPT" "$TMP/kept"
    declare -A T=() B=() M=()
    for way in scan bitmap sent rsync; do
      ts=(); ms=()
      for _ in $(seq "$REPS"); do
        rm -rf "$KEPT"; cp -a "$TMP/kept" "$KEPT"
        cold
        LOADS+=("$(load1)")
        case $way in
          scan) read -r t b m < <(send "$IMG" --base="$DIGEST" | paste -sd ' ') ;;
          bitmap) read -r t b m < <(send "$IMG" --bitmap=cp --base="$DIGEST" | paste -sd ' ') ;;
          sent) read -r t b m < <(send "$IMG" --bitmap=cp | paste -sd ' ') ;;
          rsync)
            cp --sparse=always "$FILECOPY" "$TMP/rsync.qcow2"
            cold
            t0=$EPOCHREALTIME
            b=$(/usr/bin/time -o "$TMP/rss" -f %M rsync --inplace --no-whole-file --stats "$IMG" "$TMP/rsync.qcow2" | sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' | tr -d ,)
            t=$(py "print(round($EPOCHREALTIME - $t0, 3))")
            m=$(cat "$TMP/rss")
            rm -f "$TMP/rsync.qcow2" ;;
        esac
        ts+=("$t"); ms+=("$m")
      done
      T[$way]=$(median "${ts[@]}")
      B[$way]=$b
      M[$way]=$(py "print(max(int(x) for x in '${ms[*]}'.split()))")
    done
    BITMAP_T[$G,$PCT]=${T[bitmap]}
    for way in bitmap sent scan rsync; do
      printf '| %s GiB | %s%% (%s bytes) | %s | %.3f s | %s | %s | %s | %s | %.1f MiB |\n' "$G" "$PCT" "$CHANGED" \
        "$(case $way in bitmap) echo 'reprise, dirty bitmap';; sent) echo 'reprise, dirty bitmap, manifest not kept';; scan) echo 'reprise, scan (qemu-nbd)';; rsync) echo 'rsync `--inplace --no-whole-file`';; esac)" \
        "${T[$way]}" "$(py "print('%.2f' % (${T[$way]} / ${T[rsync]}))")" "$(py "print('%.1f' % (${T[$way]} / ${T[bitmap]}))")" \
        "${B[$way]}" "$(py "print('%.3f' % (${B[$way]} / $CHANGED))")" "$(py "print(${M[$way]} / 1024)")"
    done
    # The change reaches the copy (the recovery side timed, cold); a new checkpoint starts
    # (the bitmap cleared).
    send "$IMG" --bitmap=cp >/dev/null
    cold
    LOADS+=("$(load1)")
    t0=$EPOCHREALTIME
    /usr/bin/time -o "$TMP/rss" -f %M "${H[@]}" apply "$COPY" --point="p$n" --taken-at="$(date -u +%FT%TZ)" --source=bench --retention=2 --mode=changed-blocks --checkpoint=cp --protocol="$P" < "$TMP/stream" >/dev/null
    APPLY_T[$G,$PCT]=$(py "print(round($EPOCHREALTIME - $t0, 3))")
    printf '| %s GiB | %s%% (%s bytes) | %s | %.3f s | | | %s | | %.1f MiB |\n' "$G" "$PCT" "$CHANGED" \
      'recovery side: apply (once)' "${APPLY_T[$G,$PCT]}" "$(stat -c %s "$TMP/stream")" "$(py "print($(cat "$TMP/rss") / 1024)")"
    qemu-img compare -q -f raw -F qcow2 "$COPY" "$IMG" || { log "the copy differs from the disk"; exit 1; }
    qemu-img bitmap --clear "$IMG" cp
    cp --sparse=always "$IMG" "$FILECOPY"
    n=$((n + 1))
    unset T B M
  done
done
echo
echo "Load average during the timed runs: $(py 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print("median %.1f, min %.1f, max %.1f" % (statistics.median(v), min(v), max(v)))' "${LOADS[@]}"); at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r -a GS <<< "$SIZES_GIB"
if [ "${#GS[@]}" -gt 1 ]; then
  for PCT in $PCTS; do
    first=${GS[0]} last=${GS[-1]}
    echo "Dirty bitmap, $PCT% changed: $last GiB took $(py "print('%.2f' % (${BITMAP_T[$last,$PCT]} / ${BITMAP_T[$first,$PCT]}))") × the time of $first GiB."
    echo "Recovery side (apply), $PCT% changed: $last GiB took $(py "print('%.2f' % (${APPLY_T[$last,$PCT]} / ${APPLY_T[$first,$PCT]}))") × the time of $first GiB."
  done
fi

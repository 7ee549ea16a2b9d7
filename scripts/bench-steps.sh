#!/usr/bin/env bash
# Benchmarks reprise against peers measured in the same run, on loopback labs (127.150-152.x.x):
#   1. per-step overhead, N trivial steps on one host: reprise vs OpenSSH ControlMaster vs
#      ansible-playbook (pipelining, one task per command); plus parallel throughput;
#   2. scheduling of a 500-step DAG of sleeps over 20 hosts: makespan vs critical path vs
#      topological waves;
#   3. peak RSS and CPU time of the orchestrator driving 50 hosts at once.
# Prints medians of REPS runs and ratios; asserts no wall-clock limits.
#
# Env: N (200), REPS (3), DAG_SEED (42), MANY (50), SKIP_ANSIBLE (0), KEEP (0: remove tmp dir),
#      ANSIBLE_VENV (/tmp/reprise-bench-ansible: `pip install ansible-core` goes there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-200}
REPS=${REPS:-3}
DAG_SEED=${DAG_SEED:-42}
MANY=${MANY:-50}
SKIP_ANSIBLE=${SKIP_ANSIBLE:-0}
ANSIBLE_VENV=${ANSIBLE_VENV:-/tmp/reprise-bench-ansible}
GEN="python3 $ROOT/scripts/bench/gen.py"
med() { $GEN median "$@"; }
calc() { python3 -c "import sys; print(format(eval(sys.argv[1]), '.2f'))" "$1" 2>/dev/null || echo NA; }
now() { echo "$EPOCHREALTIME"; }
log() { echo "[bench] $*" >&2; }

# ---- prerequisites -------------------------------------------------------------------------
[ -x /usr/bin/time ] || { log "installing time"; apt-get install -y -qq time >/dev/null; }
command -v sshd >/dev/null || { log "installing openssh-server"; apt-get install -y -qq openssh-server >/dev/null; }
command -v qemu-img >/dev/null || { log "installing qemu-utils"; apt-get install -y -qq qemu-utils >/dev/null; }
if [ "$SKIP_ANSIBLE" != 1 ] && [ ! -x "$ANSIBLE_VENV/bin/ansible-playbook" ]; then
  log "installing ansible-core into $ANSIBLE_VENV"
  python3 -m venv "$ANSIBLE_VENV" && "$ANSIBLE_VENV/bin/pip" install -q ansible-core
fi
log "cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/reprise

TMP=$(mktemp -d /tmp/reprise-bench.XXXXXX)
LABS=()
cleanup() {
  local d
  for d in "${LABS[@]}"; do "$BIN" lab down --lab-dir "$d" >/dev/null 2>&1 || true; done
  [ -S "$TMP/cm.sock" ] && ssh -S "$TMP/cm.sock" -O exit x >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lab_up() { # inventory runbooks labdir net
  LABS+=("$3")
  "$BIN" --inventory "$1" --runbooks "$2" lab up --lab-dir "$3" --net "$4" >"$3.up.log" 2>&1 \
    || { cat "$3.up.log" >&2; exit 1; }
}

# ================================ 1. per-step overhead ======================================
D=$TMP/one
$GEN onehost "$D" "$N"
for rb in runbooks-seq runbooks-one runbooks-par; do
  "$BIN" validate --inventory "$D/inventory" --runbooks "$D/$rb" >/dev/null
done
log "lab up (1 host) on 127.150.0.10:2222"
lab_up "$D/inventory" "$D/runbooks-seq" "$D/lab" 150
OV=$D/lab/overlay.toml
KEY=$D/lab/client/id_ed25519
KH=$D/lab/client/known_hosts
SSHOPTS=(-p 2222 -i "$KEY" -o IdentitiesOnly=yes -o UserKnownHostsFile="$KH"
         -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR)
H=root@127.150.0.10
ssh "${SSHOPTS[@]}" -o ControlMaster=no -o ControlPath=none $H true || { log "ssh to lab failed"; exit 1; }

reprise_run() { # runbooks-dir extra-args... ; prints seconds, checks success
  local rb=$1; shift
  local st=$TMP/state.$RANDOM$RANDOM t0 t1
  t0=$(now)
  timeout 600 "$BIN" --inventory "$D/inventory" --runbooks "$D/$rb" --overlay "$OV" \
    --state-dir "$st" restore --no-prompt "$@" >"$st.out" 2>&1 || { cat "$st.out" >&2; log "reprise run failed"; exit 1; }
  t1=$(now)
  rm -rf "$st" "$st.out"
  calc "$t1-$t0"
}

cm_run() { # count [parallel]; master setup + count commands + master exit
  local n=$1 p=${2:-1} sock=$TMP/cm.sock t0 t1
  t0=$(now)
  ssh "${SSHOPTS[@]}" -o ControlMaster=yes -o ControlPersist=yes -S "$sock" -f -N $H
  if [ "$p" = 1 ]; then
    for ((i = 0; i < n; i++)); do ssh "${SSHOPTS[@]}" -S "$sock" $H true; done
  else
    seq "$n" | timeout 600 xargs -P "$p" -I{} ssh "${SSHOPTS[@]}" -S "$sock" $H true
  fi
  ssh -S "$sock" -O exit $H 2>/dev/null
  t1=$(now)
  calc "$t1-$t0"
}

ANS=$TMP/ansible
ans_run() { # playbook
  local t0 t1
  t0=$(now)
  (cd "$ANS" && ANSIBLE_CONFIG=$ANS/ansible.cfg timeout 900 "$ANSIBLE_VENV/bin/ansible-playbook" "$1.yml" >"$ANS/$1.out" 2>&1) \
    || { tail -20 "$ANS/$1.out" >&2; log "ansible failed"; exit 1; }
  t1=$(now)
  calc "$t1-$t0"
}

declare -A R
for ((r = 1; r <= REPS; r++)); do
  log "rep $r/$REPS: reprise sequential N=$N, N=1, parallel"
  R[rp_n]+=" $(reprise_run runbooks-seq --parallel 1)"
  R[rp_1]+=" $(reprise_run runbooks-one --parallel 1)"
  R[rp_par]+=" $(reprise_run runbooks-par --parallel 8 --per-host 8)"
  log "rep $r/$REPS: ssh ControlMaster N=$N, N=1, xargs -P8"
  R[cm_n]+=" $(cm_run "$N")"
  R[cm_1]+=" $(cm_run 1)"
  R[cm_par]+=" $(cm_run "$N" 8)"
done
if [ "$SKIP_ANSIBLE" != 1 ]; then
  $GEN ansible "$ANS" "$N" "$OV"
  mkdir -p "$ANS/cp" "$ANS/tmp"
  av=$("$ANSIBLE_VENV/bin/ansible-playbook" --version 2>&1 || true); log "${av%%$'\n'*}"
  for ((r = 1; r <= REPS; r++)); do
    log "rep $r/$REPS: ansible command N=$N, N=1; raw N=$N, N=1"
    R[ac_n]+=" $(ans_run command-n)"
    R[ac_1]+=" $(ans_run command-1)"
    R[ar_n]+=" $(ans_run raw-n)"
    R[ar_1]+=" $(ans_run raw-1)"
  done
fi
for k in "${!R[@]}"; do log "raw $k:${R[$k]}"; done
M() { med ${R[$1]:-}; }
per() { calc "$(M "$1")*1000/$N"; }                            # total / N, ms
marg() { calc "($(M "$1")-$(M "$2"))*1000/($N-1)"; }           # (T_N - T_1)/(N-1), ms
"$BIN" lab down --lab-dir "$D/lab" >/dev/null 2>&1 || true

# ================================ 2. scheduling =============================================
G=$TMP/dag
$GEN dag "$G" 20 100 5 "$DAG_SEED"
"$BIN" validate --inventory "$G/inventory" --runbooks "$G/runbooks" >/dev/null
log "lab up (10 hosts) on 127.151.0.x"
lab_up "$G/inventory" "$G/runbooks" "$G/lab" 151
"$BIN" --inventory "$G/inventory" --runbooks "$G/runbooks" --overlay "$G/lab/overlay.toml" \
  plan restore --json >"$G/plan.json"
declare -A S
for ((r = 1; r <= REPS; r++)); do
  log "rep $r/$REPS: DAG restore --parallel 64 --per-host 16"
  st=$G/state$r
  t0=$(now)
  timeout 600 "$BIN" --inventory "$G/inventory" --runbooks "$G/runbooks" --overlay "$G/lab/overlay.toml" \
    --state-dir "$st" restore --no-prompt --parallel 64 --per-host 16 >"$st.out" 2>&1 \
    || { cat "$st.out" >&2; log "DAG run failed"; exit 1; }
  t1=$(now)
  S[wall]+=" $(calc "$t1-$t0")"
  j=$(ls "$st"/runs/*/journal.jsonl | head -1)
  $GEN dag-analyse "$G/plan.json" "$j" "$G/durations.json" >"$G/an$r.json"
  for k in ok_steps sum_known_s cp_known_s waves_known_s cp_measured_s waves_measured_s \
           cp_observed_s waves_observed_s makespan_journal_s makespan_steps_s levels steps; do
    S[$k]+=" $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$G/an$r.json" $k)"
  done
done
for k in "${!S[@]}"; do log "raw dag $k:${S[$k]}"; done
SM() { med ${S[$1]:-}; }
"$BIN" lab down --lab-dir "$G/lab" >/dev/null 2>&1 || true

# ================================ 3. memory / CPU ===========================================
X=$TMP/many
$GEN many "$X" "$MANY" 2
"$BIN" validate --inventory "$X/inventory" --runbooks "$X/runbooks" >/dev/null
log "lab up ($MANY hosts) on 127.152.0.x"
lab_up "$X/inventory" "$X/runbooks" "$X/lab" 152
declare -A U
for ((r = 1; r <= REPS; r++)); do
  log "rep $r/$REPS: $MANY hosts x sleep 2, --parallel $MANY --per-host 1 under /usr/bin/time -v"
  st=$X/state$r
  timeout 600 /usr/bin/time -v -o "$st.time" "$BIN" --inventory "$X/inventory" --runbooks "$X/runbooks" \
    --overlay "$X/lab/overlay.toml" --state-dir "$st" restore --no-prompt --parallel "$MANY" --per-host 1 \
    >"$st.out" 2>&1 || { cat "$st.out" "$st.time" >&2; log "many-hosts run failed"; exit 1; }
  U[rss]+=" $(awk -F': ' '/Maximum resident set size/{print $2/1024}' "$st.time")"
  U[user]+=" $(awk -F': ' '/User time/{print $2}' "$st.time")"
  U[sys]+=" $(awk -F': ' '/System time/{print $2}' "$st.time")"
  U[wall]+=" $(awk '/Elapsed \(wall clock\)/{n=split($NF,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$st.time")"
done
for k in "${!U[@]}"; do log "raw many $k:${U[$k]}"; done
UM() { med ${U[$1]:-}; }

# ================================ report =====================================================
echo
echo "== reprise benchmark ($(date -u +%FT%TZ), $(nproc) CPUs, medians of $REPS, N=$N) =="
echo
echo "1. per-step overhead, N=$N trivial steps (\`true\`) on one host, sequential"
echo "   total/N includes process start and connection setup; marginal = (T_N - T_1)/(N-1)"
printf "   %-38s %12s %12s %14s\n" tool "total s" "ms/step" "marginal ms"
printf "   %-38s %12s %12s %14s\n" "reprise restore --parallel 1" "$(M rp_n)" "$(per rp_n)" "$(marg rp_n rp_1)"
printf "   %-38s %12s %12s %14s\n" "ssh ControlMaster (ssh -S) x N" "$(M cm_n)" "$(per cm_n)" "$(marg cm_n cm_1)"
if [ "$SKIP_ANSIBLE" != 1 ]; then
printf "   %-38s %12s %12s %14s\n" "ansible-playbook command, pipelining" "$(M ac_n)" "$(per ac_n)" "$(marg ac_n ac_1)"
printf "   %-38s %12s %12s %14s\n" "ansible-playbook raw" "$(M ar_n)" "$(per ar_n)" "$(marg ar_n ar_1)"
fi
echo "   ratios (ms/step, >1 means reprise is faster):"
echo "     ControlMaster/reprise = $(calc "$(per cm_n)/$(per rp_n)")  (marginal: $(calc "$(marg cm_n cm_1)/$(marg rp_n rp_1)"))   target >= 1"
if [ "$SKIP_ANSIBLE" != 1 ]; then
echo "     ansible(command)/reprise = $(calc "$(per ac_n)/$(per rp_n)")  (marginal: $(calc "$(marg ac_n ac_1)/$(marg rp_n rp_1)"))   target >= 5"
echo "     ansible(raw)/reprise     = $(calc "$(per ar_n)/$(per rp_n)")  (marginal: $(calc "$(marg ar_n ar_1)/$(marg rp_n rp_1)"))"
fi
echo
echo "   parallel throughput, $N independent steps on the same host, 8 at a time:"
echo "     reprise --parallel 8 --per-host 8 : $(M rp_par) s = $(per rp_par) ms/step  (speed-up vs sequential x$(calc "$(M rp_n)/$(M rp_par)"))"
echo "     ssh ControlMaster, xargs -P 8     : $(M cm_par) s = $(per cm_par) ms/step  (speed-up vs sequential x$(calc "$(M cm_n)/$(M cm_par)"))"
echo "     ControlMaster/reprise = $(calc "$(M cm_par)/$(M rp_par)")"
echo
echo "2. scheduling: $(SM steps | cut -d. -f1) steps (sleep 0.1-0.5 s, seed $DAG_SEED), 100 services on 20 hosts, $(SM levels | cut -d. -f1) levels; restore --parallel 64 --per-host 16"
echo "   sum of all sleeps (serial)                 : $(SM sum_known_s) s"
echo "   critical path, known sleeps                : $(SM cp_known_s) s"
echo "   critical path, measured step durations     : $(SM cp_measured_s) s   (journal duration_ms)"
echo "   critical path, started->finished times     : $(SM cp_observed_s) s   (journal timestamps)"
echo "   reprise makespan, wall (process)           : $(SM wall) s"
echo "   reprise makespan, run_started->finished    : $(SM makespan_journal_s) s"
echo "   reprise makespan, first start->last finish : $(SM makespan_steps_s) s"
echo "   waves (level by level), simulated, known sleeps    : $(SM waves_known_s) s"
echo "   waves (level by level), simulated, measured durs   : $(SM waves_measured_s) s"
echo "   makespan/critical path (known)   = $(calc "$(SM makespan_journal_s)/$(SM cp_known_s)")"
echo "   makespan/critical path (measured)= $(calc "$(SM makespan_journal_s)/$(SM cp_measured_s)")"
echo "   waves/makespan (measured durs)   = $(calc "$(SM waves_measured_s)/$(SM makespan_journal_s)")   (>1: reprise beats waves)"
echo "   steps done per run: ${S[ok_steps]}"
echo
echo "3. orchestrator resources: $MANY hosts, 1 step each (sleep 2), --parallel $MANY --per-host 1"
echo "   peak RSS $(UM rss) MiB | CPU user $(UM user) s + sys $(UM sys) s | wall $(UM wall) s"
echo
echo "summary: per-step overhead (N=$N, sequential): reprise $(per rp_n) ms/step | ssh ControlMaster $(per cm_n) ms/step | ansible $( [ "$SKIP_ANSIBLE" != 1 ] && per ac_n || echo skipped) ms/step | ratios CM/reprise $(calc "$(per cm_n)/$(per rp_n)"), ansible/reprise $( [ "$SKIP_ANSIBLE" != 1 ] && calc "$(per ac_n)/$(per rp_n)" || echo NA)"

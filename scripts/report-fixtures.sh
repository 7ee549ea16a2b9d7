#!/usr/bin/env bash
# Makes the journals in tests/fixtures/journals/ with the real runner on a lab of the example:
# a drill after a readiness check, an emergency failover with the primary site and a Casablanca host down, a planned
# failover with manual steps confirmed from another process, and a drill killed and resumed.
# Then two runs of services their application replicates: a planned failover of Moodle whose
# lags are read (lag), and an emergency one whose standby answers garbage and whose directory
# lags past its RPO (lag-unknown).
# The report tests snapshot reports of these journals. Run it again when the journal changes;
# `report-fixtures.sh NAME...` makes only the journals named.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
cargo build --quiet
bin=$PWD/target/debug/reprise
work=$(mktemp -d)
out=$PWD/tests/fixtures/journals
lab="$bin lab --lab-dir $work/lab"
net=${REPORT_FIXTURES_NET:-60}   # the lab network (tests hold others)
trap '$lab down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
$lab up --net "$net" >/dev/null
ov=$work/lab/overlay.toml
replicate() { $bin --overlay "$ov" --state-dir "$work/replicate" replicate >/dev/null; }
replicate

journal_of() { ls -d "$1"/runs/*/ | tail -1 | sed 's:/$::'; }

# Confirms every manual step of the newest run in state folder $1 as it comes, as $2.
confirmer() {
    local state=$1 by=$2
    while true; do
        local run
        run=$(ls -d "$state"/runs/*/ 2>/dev/null | tail -1) || true
        if [ -n "$run" ] && [ -f "$run/journal.jsonl" ]; then
            python3 - "$run/journal.jsonl" 2>/dev/null <<'PY' | while read -r step; do
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
waiting = [e["step"] for e in events if e["event"] == "waiting_for_operator"]
done = {e["step"] for e in events if e["event"] == "confirmed"}
for s in waiting:
    if s not in done:
        print(s)
PY
                sleep 2
                $bin --state-dir "$state" confirm latest "$step" --by "$by" --note "checked on site" >/dev/null 2>&1 || true
            done
        fi
        sleep 0.5
    done
}

save() { cp "$(journal_of "$1")/journal.jsonl" "$out/$2.jsonl"; echo "$out/$2.jsonl"; }

# Which journals to make: all, or those named.
WANTED=("$@")
wanted() { [ ${#WANTED[@]} -eq 0 ] || [[ " ${WANTED[*]} " == *" $1 "* ]]; }

# 1. A drill, after a readiness check.
if wanted drill; then
$bin --overlay "$ov" --state-dir "$work/drill" check >/dev/null
$bin --overlay "$ov" --state-dir "$work/drill" drill --no-prompt --operator "Karim Benali" >/dev/null
save "$work/drill" drill
fi

# 2. A planned failover: its manual steps confirmed from another shell.
if wanted manual; then
confirmer "$work/planned" "Sofia Haddad" & c=$!
$bin --overlay "$ov" --state-dir "$work/planned" failover --yes --no-prompt --operator "Karim Benali" >/dev/null || true
kill $c; wait $c 2>/dev/null || true
save "$work/planned" manual
fi

# 3. A drill killed (kill -9) in the middle, resumed by someone else.
if wanted resumed; then
$lab down >/dev/null; $lab up --net "$net" >/dev/null; replicate
$bin --overlay "$ov" --state-dir "$work/resumed" drill --no-prompt --operator "Karim Benali" >/dev/null & r=$!
finished_steps() { grep -c '"step_finished"' "$(journal_of "$work/resumed" 2>/dev/null)/journal.jsonl" 2>/dev/null || true; }
until [ "$(finished_steps)" -ge 10 ] 2>/dev/null; do sleep 0.05; done
kill -9 $r; wait $r 2>/dev/null || true
# A step cut in the middle that cannot safely run twice waits for someone to check it.
confirmer "$work/resumed" "Nadia Amrani" & c=$!
$bin --overlay "$ov" --state-dir "$work/resumed" resume latest --no-prompt --operator "Nadia Amrani" >/dev/null
kill $c; wait $c 2>/dev/null || true
save "$work/resumed" resumed
fi

# 4. An emergency failover declared 5h30 after the incident (RTO targets of 4h and less are
#    missed), with the primary site down, replicas 10 to 40 minutes older than the incident
#    (the ERP database misses its RPO) and the replica of the planning VM damaged: planning
#    fails and citrix, which needs it, is blocked.
if wanted emergency; then
$lab down >/dev/null; $lab up --net "$net" >/dev/null; replicate
python3 - "$work/lab" <<'PY' | while read -r pidfile; do kill "$(cat "$pidfile")"; done
import json, sys, os
lab = sys.argv[1]
state = json.load(open(os.path.join(lab, "lab.json")))
for host, h in state["hosts"].items():
    if h["site_role"] == "primary":
        print(os.path.join(lab, "hosts", host, "run", "sshd.pid"))
PY
truncate -s 4096 "$work/lab/hosts/hv-pra/root/srv/replicas/images/planning-system.qcow2"
incident=$(date -u -d '-330 minutes' +%Y-%m-%dT%H:%M:%SZ)
# The last replication ran 10 minutes before the incident; the ERP database's data disk had
# not been replicated for 40 minutes (its RPO is 15).
images=$work/lab/hosts/hv-pra/root/srv/replicas/images
python3 - "$images" "$incident" <<'PY'
import datetime, glob, json, sys
images, incident = sys.argv[1], datetime.datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00"))
for points_file in glob.glob(images + "/*.qcow2.reprise/points.json"):
    minutes = 40 if "erp-db-data" in points_file else 10
    points = json.load(open(points_file))
    # A single point (the copy itself, no deltas): its id is its time, as replicate names it.
    for p in points:
        taken = incident - datetime.timedelta(minutes=minutes)
        p["taken_at"] = taken.strftime("%Y-%m-%dT%H:%M:%SZ")
        p["id"] = taken.strftime("%Y%m%dT%H%M%SZ")
    json.dump(points, open(points_file, "w"))
PY
# The readiness check run at the start of the crisis finds the primary site gone.
$bin --overlay "$ov" --state-dir "$work/emergency" check --connect-timeout 2 >/dev/null || true
confirmer "$work/emergency" "Sofia Haddad" & c=$!
$bin --overlay "$ov" --state-dir "$work/emergency" failover --emergency --yes --no-prompt \
    --operator "Karim Benali" --incident-at "$incident" --connect-timeout 2 >/dev/null 2>&1 || true
kill $c; wait $c 2>/dev/null || true
save "$work/emergency" emergency
fi

lag_file() { mkdir -p "$work/lab/hosts/$1/root/var/lib/lab"; printf '%s\n' "$2" > "$work/lab/hosts/$1/root/var/lib/lab/replication-lag"; }

# 5. A planned failover of Moodle: the standby pg-pra replays 3.2 s behind moodle-db, dc-pra's
#    replication is 2 minutes old; manual steps confirmed from another shell.
if wanted lag; then
$lab down >/dev/null; $lab up --net "$net" >/dev/null; replicate
lag_file pg-pra 3.2; lag_file mgmt-pra 120
confirmer "$work/lag" "Sofia Haddad" & c=$!
$bin --overlay "$ov" --state-dir "$work/lag" failover --service lms --yes --no-prompt --operator "Karim Benali" >/dev/null || true
kill $c; wait $c 2>/dev/null || true
save "$work/lag" lag
fi

# 6. An emergency failover of Moodle: the standby answers something that is not a lag (its
#    data loss is not measured) and dc-pra last replicated 1h30 ago (over its RPO of 1h).
if wanted lag-unknown; then
$lab down >/dev/null; $lab up --net "$net" >/dev/null; replicate
lag_file pg-pra "ERROR:  canceling statement due to conflict with recovery"; lag_file mgmt-pra 5400
confirmer "$work/lag-unknown" "Sofia Haddad" & c=$!
$bin --overlay "$ov" --state-dir "$work/lag-unknown" failover --emergency --service lms --yes --no-prompt --operator "Karim Benali" >/dev/null || true
kill $c; wait $c 2>/dev/null || true
save "$work/lag-unknown" lag-unknown
fi

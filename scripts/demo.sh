#!/usr/bin/env bash
# The main job on the built-in example: a lab of SSH hosts on loopback, last night's replication,
# a readiness check, a drill, its report.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
cargo build --release --quiet
bin=./target/release/reprise
$bin validate
$bin lab down >/dev/null 2>&1 || true
$bin lab up
trap '$bin lab down' EXIT
# Last night's replication, as cron runs it: verified replica points on the recovery host.
$bin --overlay lab/overlay.toml replicate
$bin --overlay lab/overlay.toml status
# Would a recovery work now? Its result goes into the drill's report. The secret the UPS
# runbook reads comes from the environment, as on the day (the lab's stand-in takes any).
export UPS_NUT_PASSWORD=${UPS_NUT_PASSWORD:-lab-secret}
$bin --overlay lab/overlay.toml check
$bin --overlay lab/overlay.toml drill --no-prompt
$bin runs
mkdir -p reports
run=$($bin report latest --format json | sed -n 's/^  "run_id": "\(.*\)",$/\1/p')
$bin report latest --output "reports/$run.html" >/dev/null
$bin report latest --pdf --output "reports/$run.pdf" >/dev/null
$bin report latest
echo "report: reports/$run.html and reports/$run.pdf"

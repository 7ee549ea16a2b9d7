#!/usr/bin/env bash
# The main job on the built-in example: a lab of SSH hosts on loopback, a drill, its record.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
cargo build --release --quiet
bin=./target/release/reprise
$bin validate
$bin lab down >/dev/null 2>&1 || true
$bin lab up
trap '$bin lab down' EXIT
$bin --overlay lab/overlay.toml drill --no-prompt
$bin runs
$bin show latest

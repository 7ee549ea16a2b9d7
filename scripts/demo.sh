#!/usr/bin/env bash
# The main job on the built-in example: validate it, then show the drill plan (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
./target/release/reprise validate
./target/release/reprise plan drill

#!/usr/bin/env bash
# The test command: formatting, lints, then every test. `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/prereqs.sh
source scripts/hv-prereqs.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== no dbg!/todo!/unimplemented! in src/"
if grep -rnE '\b(dbg|todo|unimplemented)!' src/; then
    echo "error: remove the macros above" >&2
    exit 1
fi
echo "== cargo test"
# Snapshots must match what is committed: never write new ones in CI.
INSTA_UPDATE=no cargo test --quiet

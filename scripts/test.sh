#!/usr/bin/env bash
# The test command: formatting, lints, then every test. `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    # Installs a Debian package when its command is missing (fresh machines have few tools).
    local cmd=$1 pkg=$2
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "installing $pkg (for $cmd)"
        if [ -z "${APT_UPDATED:-}" ]; then apt-get update -q; APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg"
    fi
}
need qemu-img qemu-utils

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

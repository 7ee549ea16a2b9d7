#!/usr/bin/env bash
# The dependency check: `cargo deny check` (known vulnerabilities and unmaintained crates in
# Cargo.lock, licences, duplicate versions, sources). cargo-deny is installed when missing.
#
# The advisories need the RustSec database (https://github.com/rustsec/advisory-db):
#   bash scripts/deny.sh                      # fetches it (needs access to github.com)
#   REPRISE_ADVISORY_DB=DIR bash scripts/deny.sh   # offline, against a checkout of it in DIR
#   bash scripts/deny.sh --no-advisories      # licences, bans and sources only (offline)
# The repository carries no copy of the database, so the test command does not run this.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep "^cargo-deny $CARGO_DENY_VERSION\$" >/dev/null; then
    echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install, from crates.io)"
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

if [ "${1:-}" = "--no-advisories" ]; then
    echo "checking licences, bans and sources; advisories NOT checked (--no-advisories)"
    exec cargo deny --offline check --hide-inclusion-graph licenses bans sources
fi
if [ -n "${REPRISE_ADVISORY_DB:-}" ]; then
    # cargo-deny looks for the database under db-path, in a folder named after its URL.
    if [ ! -d "$REPRISE_ADVISORY_DB/crates" ] || ! git -C "$REPRISE_ADVISORY_DB" rev-parse HEAD >/dev/null 2>&1; then
        echo "error: REPRISE_ADVISORY_DB=$REPRISE_ADVISORY_DB is not a git checkout of the RustSec advisory database" >&2
        exit 4
    fi
    mkdir -p target/advisory-dbs
    rm -rf target/advisory-dbs/advisory-db-3157b0e258782691
    ln -s "$(cd "$REPRISE_ADVISORY_DB" && pwd)" target/advisory-dbs/advisory-db-3157b0e258782691
    exec cargo deny --offline check --hide-inclusion-graph
fi
cargo deny check --hide-inclusion-graph || {
    echo "error: cargo deny check failed (above). Without access to github.com, run it against a" >&2
    echo "checkout of the advisory database: REPRISE_ADVISORY_DB=DIR bash scripts/deny.sh" >&2
    exit 1
}

#!/usr/bin/env bash
# The dependency check: `cargo deny check` (advisories, licences, bans, sources) against the
# RustSec database kept in deny/advisory-db, offline (this machine may not reach GitHub).
# Installs cargo-deny when missing. To refresh the database: replace deny/advisory-db with the
# crates/, rust/ and LICENSE.txt of a newer advisory-db commit and update deny/SNAPSHOT.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny $CARGO_DENY_VERSION\$"; then
    echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install, from crates.io)"
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

# cargo-deny reads its database from a git checkout (the commit date says how old it is),
# under db-path, in a folder named after the database's URL: one is made from the kept files,
# with the snapshot's commit date.
commit=$(sed -n 's/^commit //p' deny/SNAPSHOT)
date=$(sed -n 's/^date //p' deny/SNAPSHOT)
db=target/advisory-dbs/advisory-db-3157b0e258782691
if [ "$(git -C "$db" log -1 --format=%s 2>/dev/null)" != "advisory-db $commit" ] \
    || ! diff -rq deny/advisory-db "$db" --exclude=.git >/dev/null 2>&1; then
    rm -rf "$db"
    mkdir -p "$db"
    cp -r deny/advisory-db/. "$db"/
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -C "$db" \
        -c user.name=reprise -c user.email=reprise@localhost -c commit.gpgsign=false \
        commit -q -m "advisory-db $commit"
fi
cargo deny --offline check --hide-inclusion-graph 2>&1 || {
    echo "error: cargo deny check failed (above); the advisory database is from $date" >&2
    exit 1
}

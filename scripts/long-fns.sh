#!/usr/bin/env bash
# Lists the functions in src/ longer than a limit (default 120 lines), longest first:
# lines, file:line, name. Reads rustfmt-formatted code: a function ends at the first
# `}` at the indentation of its `fn`. Informational; always exits 0.
#   bash scripts/long-fns.sh [limit]
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${1:-120}"
find src -name '*.rs' -print0 | sort -z | xargs -0 awk -v limit="$limit" '
function report() {
    if (open && FNR - start + 1 > limit)
        printf "%5d  %s:%d  %s\n", FNR - start + 1, FILENAME, start, name
}
FNR == 1 { open = 0 }
{
    if (open) {
        if (!body) {
            if ($0 ~ /;[[:space:]]*$/ && $0 !~ /\{/) { open = 0; next }
            if ($0 ~ /\{[[:space:]]*$/) body = 1
            else if ($0 ~ /\}[[:space:]]*$/) { open = 0; next }
        }
        if (body && $0 == indent "}") { report(); open = 0 }
        next
    }
    if (match($0, /^[[:space:]]*((pub(\([^)]*\))?|const|async|unsafe|extern "[^"]*")[[:space:]]+)*fn[[:space:]]+[A-Za-z_][A-Za-z0-9_]*/)) {
        line = substr($0, RSTART, RLENGTH)
        indent = line; sub(/[^[:space:]].*$/, "", indent)
        name = line; sub(/^.*fn[[:space:]]+/, "", name)
        start = FNR; open = 1; body = 0
        rest = substr($0, RSTART + RLENGTH)
        if ($0 ~ /;[[:space:]]*$/ && $0 !~ /\{/) open = 0
        else if ($0 ~ /\{[[:space:]]*$/) body = 1
        else if ($0 ~ /\}[[:space:]]*$/) open = 0
    }
}
' | sort -rn

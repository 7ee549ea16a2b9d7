#!/usr/bin/env bash
# Replication of a running libvirt guest, end to end, with changed-block tracking against
# reprise's scan and rsync (benches/libvirt_cbt.rs, whose header says what it measures).
# Installs what the real-hypervisor set-up needs (as the tests do), then runs the benchmark.
# Env: SIZES_GIB ("4 16 64"), PCTS ("0.1 1"), DATA_PCT (10), REPS (3), COLD (1),
# MIN_FREE_GIB (8), WAYS ("bitmap scan rsync"), REPRISE_LOG (each run's log). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
source scripts/hv-prereqs.sh
exec cargo bench --bench libvirt_cbt

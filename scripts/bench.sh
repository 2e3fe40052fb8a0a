#!/usr/bin/env bash
# Benchmarks against a real OpenBao on loopback; each prints its figures (ratios against tmpfs
# are measured in the same run).
# Usage (root): scripts/bench.sh [read_path|scale|takeover|all]   BENCH_SECONDS=5, BENCH_VOLUMES=1000
# takeover: restart survival with real `baofs holder`/`baofs csi` processes (its own audited
# OpenBao, from BAOFS_TEST_BAO_BIN); BENCH_KEEP_LOGS=1 keeps the drivers' logs, BENCH_LOG sets
# their --log-level (see bench/takeover.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/peers.sh
source scripts/peers.sh
which="${1:-all}"
peers_install
work=$(mktemp -d /tmp/baofs-bench.XXXXXX)
peers_on_exit "rm -rf '$work'"
peers_bao_start "$work"
case "$which" in
read_path | scale | takeover) cargo bench --bench "$which" ;;
all) cargo bench --bench read_path && cargo bench --bench scale && cargo bench --bench takeover ;;
*) echo "usage: $0 [read_path|scale|takeover|all]" >&2; exit 2 ;;
esac

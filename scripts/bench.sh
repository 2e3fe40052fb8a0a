#!/usr/bin/env bash
# Benchmarks against a real OpenBao on loopback; each prints its figures (ratios against tmpfs
# are measured in the same run).
# Usage (root): scripts/bench.sh [read_path|scale|all]      BENCH_SECONDS=5, BENCH_VOLUMES=1000
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
read_path | scale) cargo bench --bench "$which" ;;
all) cargo bench --bench read_path && cargo bench --bench scale ;;
*) echo "usage: $0 [read_path|scale|all]" >&2; exit 2 ;;
esac

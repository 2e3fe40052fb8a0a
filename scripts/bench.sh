#!/usr/bin/env bash
# Read-path benchmark: baofs vs tmpfs in one run, against a real OpenBao on loopback.
# Usage (root): scripts/bench.sh            BENCH_SECONDS=5 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/peers.sh
source scripts/peers.sh
peers_install
work=$(mktemp -d /tmp/baofs-bench.XXXXXX)
peers_on_exit "rm -rf '$work'"
peers_bao_start "$work"
cargo bench --bench read_path

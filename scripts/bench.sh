#!/usr/bin/env bash
# The benchmark: a fresh private cluster, the release build of pg_eventstore, and
# eventstore-bench printing events/s and ratios against plain INSERT baselines.
# Extra arguments go to eventstore-bench (--seconds N, --rounds N).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/install-extension.sh --release
cargo build --release -p pg_eventstore_bench

mkdir -p target/pg
if [ "$(id -u)" = 0 ]; then chown postgres: target/pg; fi
cluster=target/pg/bench-cluster
scripts/cluster.sh stop "$cluster"
rm -rf "$cluster"
scripts/cluster.sh start "$cluster" >/dev/null
trap 'scripts/cluster.sh stop "$cluster"' EXIT
DATABASE_URL=$(scripts/cluster.sh url "$cluster") target/release/eventstore-bench "$@"

#!/usr/bin/env bash
# The benchmark: a fresh private cluster, the release build of pg_eventstore, and
# eventstore-bench printing events/s and ratios against plain INSERT baselines (and the
# portable form's against Message DB, installed here from its npm package).
# Extra arguments go to eventstore-bench (--seconds N, --rounds N).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/install-extension.sh --release
cargo build --release -p pg_eventstore_bench
# eventstore serve, which the bench starts as a process of its own.
cargo build --release -p pg_eventstore_cli --bin eventstore

mkdir -p target/pg
if [ "$(id -u)" = 0 ]; then chown postgres: target/pg; fi
cluster=target/pg/bench-cluster
scripts/cluster.sh stop "$cluster"
rm -rf "$cluster"
scripts/cluster.sh start "$cluster" >/dev/null
trap 'scripts/cluster.sh stop "$cluster"' EXIT

# Message DB, which the portable append is compared with: its npm package's own install
# script, into a database of the bench cluster.
message_db=target/message-db/node_modules/@eventide/message-db/database
if [ ! -f "$message_db/install.sh" ]; then
  npm install --prefix target/message-db --no-audit --no-fund --no-save @eventide/message-db@1.3.1
fi
PGHOST=127.0.0.1 PGPORT=$(cat "$cluster/port") PGUSER=postgres \
  DATABASE_NAME=eventstore_bench_message_db bash "$message_db/install.sh" >/dev/null
export MESSAGE_DB_URL
MESSAGE_DB_URL=$(scripts/cluster.sh url "$cluster" eventstore_bench_message_db)

DATABASE_URL=$(scripts/cluster.sh url "$cluster") target/release/eventstore-bench "$@"

#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one:
#   1. the in-database #[pg_test] tests (pgrx runs them in a cluster of its own);
#   0. formatting and lints (cargo fmt --check, clippy -D warnings on every target), and
#      the released SQL frozen (scripts/check-frozen-sql.sh);
#   2. the unit and doc tests of the client, the shop, the command and the gRPC server
#      crates, and the integration tests in tests/ (among them EventStoreDB's own Rust
#      client against eventstore serve, and its stream browser in a headless Chromium)
#      against a private cluster that preloads the extension;
#      then the integration tests again with the portable form installed instead
#      (EVENTSTORE_TEST_INSTALL=portable);
#   3. the examples (the seed's minimal event store interface, the shop pipeline);
#   4. the psql walkthroughs in sql/, run as written and compared with sql/expected/, on the
#      extension and on the portable form;
#   5. the eventstore command end to end: migrate, generate, run, stats, rebuild, replay.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# One build from scratch: incremental caches would only double the disk it takes.
export CARGO_INCREMENTAL=0

scripts/setup.sh --tests

# Every stage's output also goes to a log, from which the closing summary line is counted.
log=$(mktemp)

# Folders the postgres user writes to.
mkdir -p target/pg
if [ "$(id -u)" = 0 ]; then chown postgres: target/pg; fi

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
echo "format and lints: ok"
scripts/check-frozen-sql.sh

echo "== pg_test: SQL functions and errors, inside PostgreSQL"
# cargo pgrx test installs the library too; never overwrite one a running server maps.
scripts/unlink-library.sh
cargo pgrx test pg15 -p pg_eventstore --runas postgres --pgdata "$root/target/pg/pgrx-test" 2>&1 | tee -a "$log"

echo "== integration tests against a private cluster"
scripts/install-extension.sh
cluster=target/pg/test-cluster
scripts/cluster.sh stop "$cluster"
rm -rf "$cluster"
scripts/cluster.sh start "$cluster" >/dev/null
trap 'scripts/cluster.sh stop "$cluster"; rm -f "$log"' EXIT
export DATABASE_URL EVENTSTORE_TEST_PGDATA
DATABASE_URL=$(scripts/cluster.sh url "$cluster")
# tests/server_restart.rs restarts this cluster.
EVENTSTORE_TEST_PGDATA="$root/$cluster/data"
# tests/projections.rs starts the eventstore binary as a separate process (and kills it).
cargo build -p pg_eventstore_cli --bin eventstore
export EVENTSTORE_BIN="$root/target/debug/eventstore"
cargo test -p pg_eventstore_client -p pg_eventstore_shop -p pg_eventstore_cli -p pg_eventstore_server -p pg_eventstore_tests 2>&1 | tee -a "$log"
echo "== the integration tests again, against the portable form (plain SQL and PL/pgSQL)"
EVENTSTORE_TEST_INSTALL=portable cargo test -p pg_eventstore_tests 2>&1 | tee -a "$log"

echo "== the client examples: the seed's minimal event store interface, the shop pipeline"
examples=0
for example in pg_eventstore_client:minimal_event_store pg_eventstore_shop:shop_pipeline; do
  crate=${example%%:*}
  example=${example#*:}
  psql -X -q -h 127.0.0.1 -p "$(cat "$cluster/port")" -U postgres -d postgres \
    -c "CREATE DATABASE example_$example" >/dev/null
  if DATABASE_URL=$(scripts/cluster.sh url "$cluster" "example_$example") \
    cargo run -q -p "$crate" --example "$example"; then
    examples=$((examples + 1))
  else
    echo "example: $example FAILED" >&2
    exit 1
  fi
done

echo "== psql walkthroughs in sql/, compared with sql/expected/"
port=$(cat "$cluster/port")
scripts/walkthroughs.sh "$port"
scripts/walkthroughs.sh "$port" --portable
walkthroughs=$(($(find sql -maxdepth 1 -name '*.sql' | wc -l) * 2))
echo "== the eventstore command end to end"
db=command_line
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
DATABASE_URL=$(scripts/cluster.sh url "$cluster" "$db") scripts/command-line-check.sh "$EVENTSTORE_BIN"
commands=1

passed=$(sed -n 's/^test result: [a-z]*\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(sed -n 's/^test result: .* \([0-9]*\) failed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
echo "all test stages passed"
echo "Summary: $((passed + walkthroughs + examples + commands)) passed, $failed failed"

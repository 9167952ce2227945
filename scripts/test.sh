#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one:
#   1. the in-database #[pg_test] tests (pgrx runs them in a cluster of its own);
#   2. the integration tests in tests/ against a private cluster with the extension installed;
#   3. the psql walkthroughs in sql/, run as written.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh

# Folders the postgres user writes to.
mkdir -p target/pg
if [ "$(id -u)" = 0 ]; then chown postgres: target/pg; fi

echo "== pg_test: SQL functions and errors, inside PostgreSQL"
cargo pgrx test pg15 -p pg_eventstore --runas postgres --pgdata "$root/target/pg/pgrx-test"

echo "== integration tests against a private cluster"
scripts/install-extension.sh
cluster=target/pg/test-cluster
scripts/cluster.sh stop "$cluster"
rm -rf "$cluster"
scripts/cluster.sh start "$cluster" >/dev/null
trap 'scripts/cluster.sh stop "$cluster"' EXIT
export DATABASE_URL
DATABASE_URL=$(scripts/cluster.sh url "$cluster")
cargo test -p pg_eventstore_tests

echo "== psql walkthroughs in sql/"
port=$(cat "$cluster/port")
for script in sql/*.sql; do
  db="walkthrough_$(basename "$script" .sql | tr -c 'a-z0-9\n' '_')"
  psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
  if psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" -f "$script" >/dev/null; then
    echo "walkthrough: $script ok"
  else
    echo "walkthrough: $script FAILED" >&2
    exit 1
  fi
done
echo "all test stages passed"

#!/usr/bin/env bash
# Builds pg_eventstore and installs it into the machine's PostgreSQL 15, where every cluster
# started by scripts/cluster.sh finds it. Pass --release for an optimized build.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_flag=()
if [ "$(id -u)" != 0 ]; then sudo_flag=(--sudo); fi
scripts/unlink-library.sh
cargo pgrx install -p pg_eventstore --pg-config /usr/bin/pg_config "${sudo_flag[@]}" "$@" \
  2>&1 | grep -E "^\s*(Finished|error)" || true
extension_dir="$(/usr/bin/pg_config --sharedir)/extension"
test -f "$extension_dir/pg_eventstore.control"
# The install scripts of the released versions, frozen in the repository (pgrx writes the
# current one and the upgrade scripts), so CREATE EXTENSION ... VERSION and the upgrade tests
# can install any of them.
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for script in extension/sql/released/pg_eventstore--*.sql; do
  [ "$(basename "$script")" = "pg_eventstore--$current.sql" ] && continue
  if [ -w "$extension_dir" ]; then cp "$script" "$extension_dir/"; else sudo cp "$script" "$extension_dir/"; fi
done

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
test -f "$(/usr/bin/pg_config --sharedir)/extension/pg_eventstore.control"

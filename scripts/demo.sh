#!/usr/bin/env bash
# The main job: a private PostgreSQL 15 cluster in .pgdata/demo, pg_eventstore built and
# installed, and the seed scenarios appended and read back. In a terminal it stays up for psql
# until Ctrl-C; otherwise it stops the cluster and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== building and installing pg_eventstore (release)"
scripts/install-extension.sh --release

cluster=.pgdata/demo
echo "== starting the demo cluster in $cluster"
scripts/cluster.sh stop "$cluster"
port=$(scripts/cluster.sh start "$cluster")
trap 'scripts/cluster.sh stop "$cluster"; echo "demo cluster stopped"' EXIT

db=eventstore_demo
psql=(psql -X -h 127.0.0.1 -p "$port" -U postgres)
"${psql[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
for script in sql/01_quickstart.sql sql/02_user_service.sql sql/03_coffee_shop.sql; do
  echo
  echo "== $script"
  "${psql[@]}" -d "$db" -v ON_ERROR_STOP=1 -f "$script"
done

echo
echo "== the global log"
"${psql[@]}" -d "$db" -c \
  "SELECT position, stream, version, type, data FROM eventstore.read_all(0, 100)"

url=$(scripts/cluster.sh url "$cluster" "$db")
echo "The event store is at $url"
echo "  psql '$url'"
if [ -t 0 ]; then
  echo "Press Ctrl-C to stop the cluster."
  while true; do sleep 3600; done
fi

#!/usr/bin/env bash
# The main job: a private PostgreSQL 15 cluster in .pgdata/demo with pg_eventstore built and
# installed, the psql walkthroughs of the seed scenarios, the migrations (extension, shop read
# models, checkpoints), a generated workload of the seed shop, and the projection daemon
# keeping shop.users and shop.orders current. It prints the read models and the stats, shows
# a live append reaching them, starts `eventstore serve` (the stream browser, /metrics, and
# EventStoreDB's gRPC protocol) and prints its URL, and in a terminal stays up for psql, the
# client and the browser until Ctrl-C; otherwise it stops the server, the daemon and the
# cluster and exits.
#
#   DEMO_USERS / DEMO_ORDERS  size of the generated workload (default 500 / 5000)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== building and installing pg_eventstore and the eventstore command (release)"
scripts/install-extension.sh --release
cargo build --release -q -p pg_eventstore_cli --bin eventstore
eventstore=$PWD/target/release/eventstore

cluster=.pgdata/demo
echo "== starting the demo cluster in $cluster"
scripts/cluster.sh stop "$cluster"
port=$(scripts/cluster.sh start "$cluster")
daemon=""
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    echo "eventstore serve stopped"
  fi
  if [ -n "$daemon" ]; then
    kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    echo "projection daemon stopped"
  fi
  scripts/cluster.sh stop "$cluster"
  echo "demo cluster stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

db=eventstore_demo
psql=(psql -X -h 127.0.0.1 -p "$port" -U postgres)
"${psql[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export DATABASE_URL
DATABASE_URL=$(scripts/cluster.sh url "$cluster" "$db")

for script in sql/01_quickstart.sql sql/02_user_service.sql sql/03_coffee_shop.sql sql/04_state_as_of_a_time.sql; do
  echo
  echo "== $script"
  "${psql[@]}" -d "$db" -v ON_ERROR_STOP=1 -f "$script"
done

echo
echo "== eventstore migrate"
"$eventstore" migrate

echo
echo "== eventstore generate: users registering, placing, paying, shipping and cancelling orders"
"$eventstore" generate --users "${DEMO_USERS:-500}" --orders "${DEMO_ORDERS:-5000}"

echo
echo "== eventstore run: the projection daemon (log in $cluster/daemon.log)"
"$eventstore" run >"$cluster/daemon.log" 2>&1 &
daemon=$!
events=$("${psql[@]}" -d "$db" -A -t -c "SELECT count(*) FROM eventstore.events WHERE type = ANY(ARRAY['user-created','user-renamed','user-deactivated','order-placed','order-paid','order-shipped','order-cancelled'])")
for _ in $(seq 1 600); do
  applied=$("${psql[@]}" -d "$db" -A -t -c "SELECT coalesce((SELECT events_applied FROM projections.checkpoints WHERE name = 'shop'), 0)")
  [ "$applied" -ge "$events" ] && break
  sleep 0.1
done
echo "the shop projection applied $applied of $events shop events"

echo
echo "== the read models"
"${psql[@]}" -d "$db" -c "SELECT status, count(*) AS orders, sum(item_count) AS items, sum(total) AS total FROM shop.orders GROUP BY status ORDER BY status" \
  -c "SELECT username, full_name, active, order_count, total_spent FROM shop.users ORDER BY total_spent DESC, username LIMIT 5" \
  -c "SELECT order_id, username, status, item_count, total, currency, placed_at, version FROM shop.orders ORDER BY placed_at DESC LIMIT 5" \
  -c "SELECT count(*) AS anomalies FROM shop.anomalies" \
  -c "SELECT stream, version, type, reason FROM shop.anomalies ORDER BY position LIMIT 6"

echo
echo "== a live append reaches the read model"
"$eventstore" append order-live-1 --type order-placed --expected-version no-stream \
  --data '{"username": "alice", "items": [{"sku": "espresso", "qty": 2, "price": 2.4}], "currency": "EUR"}'
for _ in $(seq 1 50); do
  [ "$("${psql[@]}" -d "$db" -A -t -c "SELECT count(*) FROM shop.orders WHERE order_id = 'live-1'")" = 1 ] && break
  sleep 0.1
done
"${psql[@]}" -d "$db" -c "SELECT o.order_id, o.status, o.total, u.username, u.order_count FROM shop.orders o JOIN shop.users u USING (username) WHERE o.order_id = 'live-1'"

echo
echo "== eventstore stats"
"$eventstore" stats

echo
echo "== eventstore serve: the stream browser, /metrics, and EventStoreDB's gRPC protocol (log in $cluster/serve.log)"
# EventStoreDB's port when it is free, any free one otherwise.
listen=127.0.0.1:2113
if (exec 3<>/dev/tcp/127.0.0.1/2113) 2>/dev/null; then listen=127.0.0.1:0; fi
"$eventstore" serve --listen "$listen" >"$cluster/serve.out" 2>"$cluster/serve.log" &
server=$!
for _ in $(seq 1 600); do
  grep -q '^stream browser at ' "$cluster/serve.out" && break
  kill -0 "$server" 2>/dev/null || { cat "$cluster/serve.log"; exit 1; }
  sleep 0.1
done
ui=$(sed -n 's/^stream browser at //p' "$cluster/serve.out")
esdb=$(sed -n 's/^serving //p' "$cluster/serve.out")
echo "stream browser at $ui"

echo
echo "The event store is at $DATABASE_URL"
echo "  psql '$DATABASE_URL'"
echo "  DATABASE_URL='$DATABASE_URL' target/release/eventstore tail     # follow new events"
echo "The stream browser is at $ui (metrics: ${ui%/ui}/metrics)"
echo "EventStoreDB's clients connect to $esdb"
if [ -t 0 ]; then
  echo "The daemon keeps shop.users and shop.orders current, and eventstore serve keeps"
  echo "serving the stream browser. Press Ctrl-C to stop."
  wait "$daemon"
fi

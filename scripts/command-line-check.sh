#!/usr/bin/env bash
# The eventstore command as a user runs it, against the empty database in DATABASE_URL:
# migrate, generate a workload, run the daemon until the read models are current, print
# stats, rebuild, replay into a schema, and stop the daemon with SIGTERM. Fails on any
# unexpected output.
set -euo pipefail
bin=${1:?usage: command-line-check.sh EVENTSTORE_BINARY}
: "${DATABASE_URL:?}"
psql_q() { psql -X -A -t -q -d "$DATABASE_URL" -c "$1"; }
fail() { echo "command-line check: $*" >&2; exit 1; }
# Runs a command to its end, then looks for an extended regex in what it printed. (Piping it
# into grep -q would close the pipe at the first match while the command still writes.)
expect() {
  local pattern=$1 what=$2 out
  shift 2
  out=$("$@") || fail "$what: exit status $?"
  grep -qE -- "$pattern" <<<"$out" || fail "$what: $out"
}

expect "projection daemon" "--help" "$bin" --help
for sub in run migrate append read tail rebuild replay stats groups generate portable-sql notify serve; do
  "$bin" "$sub" --help >/dev/null || fail "$sub --help"
done

# Without authentication the gRPC server listens on loopback only, unless told otherwise.
if timeout 60 "$bin" serve --listen 0.0.0.0:0 >/dev/null 2>/tmp/err.$$; then
  fail "serve on 0.0.0.0 without --insecure succeeded"
fi
grep -q "not a loopback address" /tmp/err.$$ || fail "serve on 0.0.0.0: $(cat /tmp/err.$$)"

# Nothing listening: the command says so at once, naming the server.
started=$(date +%s)
if DATABASE_URL=postgres://postgres@127.0.0.1:1/none "$bin" stats 2>/tmp/err.$$; then
  fail "stats against a closed port succeeded"
fi
grep -q "cannot connect to 127.0.0.1:1" /tmp/err.$$ || fail "unreachable server: $(cat /tmp/err.$$)"
[ $(($(date +%s) - started)) -lt 20 ] || fail "an unreachable server took $(($(date +%s) - started)) s to report"
rm -f /tmp/err.$$

migrated=$("$bin" migrate)
for applied in "V1__pg_eventstore_extension (eventstore_schema_history)" \
  "V4__projection_checkpoints (eventstore_schema_history)" \
  "V1__persistent_subscriptions (kurrentdb_schema_history)" "V1__shop_read_models (shop_schema_history)" \
  "V2__shop_read_models_storage (shop_schema_history)"; do
  grep -qF "applied $applied" <<<"$migrated" || fail "migrate: $migrated"
done
expect "up to date" "second migrate" "$bin" migrate
expect "generated 50 users and 300 orders" generate "$bin" generate --users 50 --orders 300

RUST_LOG=warn "$bin" run &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
events=$(psql_q "SELECT count(*) FROM eventstore.events")
for _ in $(seq 1 3000); do
  applied=$(psql_q "SELECT coalesce((SELECT events_applied FROM projections.checkpoints WHERE name = 'shop'), 0)")
  [ "$applied" = "$events" ] && break
  sleep 0.1
done
[ "$applied" = "$events" ] || fail "the daemon applied $applied of $events events"
expect "^shop .* caught up$" stats "$bin" stats

# A live append reaches the read model.
expect "appended user-zed@0\.\.0" append "$bin" append user-zed --type user-created \
  --data '{"username": "zed", "fullName": "Zed"}' --expected-version no-stream
for _ in $(seq 1 1000); do
  [ "$(psql_q "SELECT count(*) FROM shop.users WHERE username = 'zed'")" = 1 ] && break
  sleep 0.1
done
[ "$(psql_q "SELECT full_name FROM shop.users WHERE username = 'zed'")" = Zed ] || fail "live update"
expect "user-zed@0  user-created" read "$bin" read --stream user-zed
if "$bin" append user-zed --type user-created --data '{}' --expected-version no-stream 2>/tmp/err.$$; then
  fail "a conflicting append succeeded"
fi
grep -q "SQLSTATE 40001" /tmp/err.$$ || fail "conflict without SQLSTATE: $(cat /tmp/err.$$)"
rm -f /tmp/err.$$

# Groups: create one in SQL, park an event, and settle it from the command line.
psql_q "SELECT eventstore.create_group('cli-check', event_types => ARRAY['user-created'])" >/dev/null
expect "^cli-check " groups "$bin" groups
parked_at=$(psql_q "SELECT position FROM eventstore.fetch('cli-check', 'c1', 1)")
[ "$(psql_q "SELECT eventstore.park('cli-check', 'c1', ARRAY[$parked_at::bigint], 'checked by hand')")" = 1 ] || fail "park"
expect "checked by hand" "groups parked" "$bin" groups parked cli-check
expect "^1 parked events" "groups replay-parked" "$bin" groups replay-parked cli-check --position "$parked_at"
expect '"name":"cli-check"' "groups --format json" "$bin" groups --format json
if "$bin" groups parked no-such-group 2>/tmp/err.$$; then fail "parked of a missing group succeeded"; fi
rm -f /tmp/err.$$

# Rebuild while the daemon runs it: the daemon replays, the command follows its progress.
before=$(psql_q "SELECT md5(string_agg(u::text, ',' ORDER BY username)) FROM shop.users u")
expect "rebuilt shop" rebuild "$bin" rebuild shop --yes
after=$(psql_q "SELECT md5(string_agg(u::text, ',' ORDER BY username)) FROM shop.users u")
[ "$before" = "$after" ] || fail "rebuild changed shop.users"

head=$(psql_q "SELECT eventstore.head_position()")
expect "through position $head" replay "$bin" replay shop --schema asof --position "$head"
[ "$(psql_q "SELECT count(*) FROM (TABLE shop.orders EXCEPT TABLE asof.orders) d")" = 0 ] || fail "replay differs"

kill -TERM $daemon
wait $daemon || fail "the daemon did not stop cleanly on SIGTERM"
trap - EXIT
echo "command-line check: ok ($events events projected, rebuild and replay agree)"

#!/usr/bin/env bash
# A private PostgreSQL 15 cluster in a folder of its own, on a free port, run as the
# `postgres` user (initdb and postgres refuse root). Other clusters on the machine are never
# touched: this one is stopped through its own data folder.
#
#   scripts/cluster.sh start DIR [PORT]   init if needed, start; prints the port
#   scripts/cluster.sh stop DIR
#   scripts/cluster.sh url DIR [DB]        the connection URL of a running cluster
#
# The server preloads pg_eventstore (coalesced subscriber wake-ups), so the extension must be
# installed first; EVENTSTORE_PRELOAD=0 starts it without. CLUSTER_NEXT_XID=N moves a new
# cluster's transaction counter to N before its first start (pg_resetwal -x), as on a server
# that has run for a long time.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres -- "$@"; fi
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

cmd=${1:?usage: cluster.sh start|stop|url DIR}
dir=${2:?usage: cluster.sh start|stop|url DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case "$cmd" in
  start)
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_postgres "$PGBIN/initdb" -D "$dir/data" --auth=trust --username=postgres \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
      if [ -n "${CLUSTER_NEXT_XID:-}" ]; then
        as_postgres "$PGBIN/pg_resetwal" -x "$CLUSTER_NEXT_XID" -D "$dir/data" >/dev/null
        # The commit log must have the segment that holds the new id (1,048,576 ids each).
        segment=$(printf '%04X' $((CLUSTER_NEXT_XID / 1048576)))
        if [ ! -f "$dir/data/pg_xact/$segment" ]; then
          as_postgres dd if=/dev/zero of="$dir/data/pg_xact/$segment" bs=262144 count=1 2>/dev/null
        fi
      fi
    fi
    if as_postgres "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      cat "$dir/port"
      exit 0
    fi
    port=${3:-$(free_port)}
    echo "$port" >"$dir/port"
    preload=""
    if [ "${EVENTSTORE_PRELOAD:-1}" = 1 ]; then preload="-c shared_preload_libraries=pg_eventstore"; fi
    as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 \
          -c shared_buffers=512MB -c max_wal_size=4GB $preload" >/dev/null
    echo "$port"
    ;;
  stop)
    if [ -f "$dir/data/PG_VERSION" ]; then
      as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  url)
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/${3:-postgres}"
    ;;
  *)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac

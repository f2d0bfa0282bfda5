#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: Debian's packages, its own data directory and
# port, trust authentication on localhost only. Never touches the system cluster ("main").
#
#   tests/services/postgres.sh start   install postgresql if missing (root), initdb, start, create
#                                      the test database; writes its URL to $PG_STATE/url
#   tests/services/postgres.sh stop    fast shutdown
#   tests/services/postgres.sh url     print the SQLAlchemy URL (what TPO_TEST_PG_URL should be)
#
# Settings: PG_STATE=/tmp/tpo-pg, PG_PORT=55432. Runs the server as the 'postgres' user when
# started as root (initdb refuses root), else as the current user.
set -euo pipefail

STATE=${PG_STATE:-/tmp/tpo-pg}
PORT=${PG_PORT:-55432}
DB=tpo_test
USER_NAME=tpo
URL="postgresql+psycopg://$USER_NAME@127.0.0.1:$PORT/$DB"

say() { printf '[postgres.sh] %s\n' "$*" >&2; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {  # run a command as the server's owner
  if [ "$(id -u)" = 0 ]; then su -s /bin/sh postgres -c "$*"; else sh -c "$*"; fi
}

cmd_start() {
  local bin t0=$SECONDS
  bin=$(bindir)
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || { say "postgresql is not installed and I am not root"; exit 1; }
    say "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local rcd=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # no init system: postinst must not start the server
      rcd=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > "$rcd"; chmod +x "$rcd"
    fi
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    [ -z "$rcd" ] || rm -f "$rcd"
    bin=$(bindir)
  fi
  mkdir -p "$STATE"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$STATE"
  if [ ! -s "$STATE/data/PG_VERSION" ]; then
    as_owner "$bin/initdb -D '$STATE/data' -U postgres --auth=trust -E UTF8 >'$STATE/initdb.log'"
    # localhost only; the tests open 32+ connections at once
    cat >> "$STATE/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$STATE'
max_connections = 200
fsync = on
CONF
  fi
  if ! as_owner "$bin/pg_ctl -D '$STATE/data' status" >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl -D '$STATE/data' -l '$STATE/server.log' -w -t 60 start" >/dev/null
  fi
  local psql="$bin/psql -h 127.0.0.1 -p $PORT -U postgres -v ON_ERROR_STOP=1 -qAt"
  $psql -d postgres -c "select 1 from pg_roles where rolname='$USER_NAME'" | grep -q 1 \
    || $psql -d postgres -c "create role $USER_NAME login createdb"
  $psql -d postgres -c "alter role $USER_NAME createdb"  # tests make a database each
  $psql -d postgres -c "select 1 from pg_database where datname='$DB'" | grep -q 1 \
    || $psql -d postgres -c "create database $DB owner $USER_NAME"
  echo "$URL" > "$STATE/url"
  [ "$(id -u)" = 0 ] && chmod 644 "$STATE/url"
  say "up in $((SECONDS - t0)) s: $URL"
}

cmd_stop() {
  local bin; bin=$(bindir)
  [ -n "$bin" ] && [ -s "$STATE/data/PG_VERSION" ] || return 0
  rm -f "$STATE/url"   # the tests read it to find the server
  as_owner "$bin/pg_ctl -D '$STATE/data' -m fast stop" >/dev/null 2>&1 && say "stopped" || true
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac

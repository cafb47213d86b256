#!/bin/sh
# The shell wait script of bench/compare.sh's tini contender (PID 1 `tini -- start.sh APP...`)
# and, with WAIT_SLEEP=0 and no init, of its bare container: PostgreSQL started directly as
# `postgres`, the usual `until pg_isready; do sleep 1; done` loop, then the app; SIGTERM or
# SIGINT stops the app first, then PostgreSQL with SIGINT (fast shutdown), and exits 0.
#
#   PGDATA (required)   PGPORT (5432)   PG_SOCKET_DIR (/var/run/postgresql)
#   PG_BINDIR           where postgres and pg_isready are (default: PATH)
#   WAIT_SLEEP          seconds between two pg_isready tries (default 1; 0: none)
#   APP_USER            run the app as this user (default: as the caller)
#   DATABASE_URL        default postgresql://POSTGRES_USER:POSTGRES_PASSWORD@127.0.0.1:PGPORT/POSTGRES_DB
set -eu
: "${PGDATA:?start.sh: PGDATA must be set}"
[ $# -gt 0 ] || { echo "start.sh: no app command given" >&2; exit 2; }
port=${PGPORT:-5432}
bin=${PG_BINDIR:+$PG_BINDIR/}
wait_sleep=${WAIT_SLEEP:-1}
app_pid=
pg_pid=

stop() {
    trap '' TERM INT
    if [ -n "$app_pid" ]; then
        kill -TERM "$app_pid" 2>/dev/null || true
        wait "$app_pid" || true
    fi
    if [ -n "$pg_pid" ]; then
        kill -INT "$pg_pid" 2>/dev/null || true
        wait "$pg_pid" || true
    fi
    exit "${1:-0}"
}
trap stop TERM INT

setpriv --reuid=postgres --regid=postgres --init-groups \
    "${bin}postgres" -D "$PGDATA" -p "$port" -k "${PG_SOCKET_DIR:-/var/run/postgresql}" &
pg_pid=$!
until "${bin}pg_isready" -h 127.0.0.1 -p "$port" -q; do
    kill -0 "$pg_pid" 2>/dev/null || { echo "start.sh: postgres exited before it was ready" >&2; exit 1; }
    if [ "$wait_sleep" != 0 ]; then
        sleep "$wait_sleep"
    fi
done

: "${DATABASE_URL:=postgresql://${POSTGRES_USER:-postgres}:${POSTGRES_PASSWORD:-}@127.0.0.1:$port/${POSTGRES_DB:-${POSTGRES_USER:-postgres}}}"
export DATABASE_URL
if [ -n "${APP_USER:-}" ]; then
    setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups "$@" &
else
    "$@" &
fi
app_pid=$!
code=0
wait "$app_pid" || code=$?
app_pid=
stop "$code"

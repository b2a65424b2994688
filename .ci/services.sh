#!/usr/bin/env bash
# Real servers for the distributed tests, on loopback only:
#   - PostgreSQL from Debian's packages (initdb into a private directory, run as a non-root user),
#   - moto's standalone S3-API server (PyPI `moto[server]`).
#
#   .ci/services.sh start [pg|s3|all] [STATE_DIR]   start them; prints `export ...` lines, also in STATE_DIR/env
#   .ci/services.sh stop  [STATE_DIR]               stop whatever was started there and delete STATE_DIR
#   .ci/services.sh pg-down [STATE_DIR]             stop PostgreSQL at once, keeping its data (a fault test)
#   .ci/services.sh pg-up   [STATE_DIR]             start it again on the same port
#
# STATE_DIR defaults to $DISTIL_SERVICES_DIR or ${TMPDIR:-/tmp}/distil-services-<uid>.
# Missing software is installed when possible: `apt-get install -y postgresql` (as root),
# `pip install moto[server]` into $PYTHON's environment. Nothing listens beyond 127.0.0.1.
#
# Exports:
#   DISTIL_TEST_PG_URL       postgresql://distil:<password>@127.0.0.1:<port>/postgres (superuser, maintenance db)
#   DISTIL_TEST_S3_ENDPOINT  http://127.0.0.1:<port> (any access key / secret is accepted)
set -euo pipefail

cmd=${1:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

state_dir() { echo "${1:-${DISTIL_SERVICES_DIR:-${TMPDIR:-/tmp}/distil-services-$(id -u)}}"; }

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

ensure_postgres() {
  pg_bindir >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services: installing postgresql from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2; }
  fi
  pg_bindir >/dev/null || { echo "services: no PostgreSQL binaries (initdb) and cannot install them" >&2; return 1; }
}

# Runs "$@" as the unprivileged owner of the cluster (initdb/postgres refuse to run as root).
as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || { user=distilpg; id "$user" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$user"; }
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

pg_owner() { if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 && echo postgres || echo distilpg; else id -un; fi; }

start_pg() {
  local dir=$1 bin port pw
  ensure_postgres
  bin=$(pg_bindir)
  port=$(free_port)
  pw=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then
    as_pg_user true  # creates the unprivileged user when there is none
    chmod 755 "$dir"  # its parents must be traversable by that user too (not a 0700 pytest tmp dir)
    chown "$(pg_owner)" "$dir/pg"
  fi
  (umask 077; printf '%s\n' "$pw" > "$dir/pg/.pw")
  [ "$(id -u)" = 0 ] && chown "$(pg_owner)" "$dir/pg/.pw"
  as_pg_user "$bin/initdb" -D "$dir/pg/data" -U distil --pwfile="$dir/pg/.pw" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$dir/pg/initdb.log" 2>&1 \
    || { cat "$dir/pg/initdb.log" >&2; return 1; }
  rm -f "$dir/pg/.pw"
  as_pg_user "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/pg -c max_connections=200" \
    start >&2 || { cat "$dir/pg/server.log" >&2; return 1; }
  echo "$bin" > "$dir/pg/bindir"
  echo "$port" > "$dir/pg/port"
  echo "export DISTIL_TEST_PG_URL=postgresql://distil:$pw@127.0.0.1:$port/postgres" >> "$dir/env"
}

start_s3() {
  local dir=$1 port i
  "$PYTHON" -c 'import moto.server, flask' 2>/dev/null || {
    echo "services: installing moto[server] into $PYTHON's environment" >&2
    "$PYTHON" -m pip install -q 'moto[server]>=5' >&2
  }
  port=$(free_port)
  mkdir -p "$dir/s3"
  # setsid: its own session, so `stop` can end the server and only it.
  setsid "$PYTHON" -m moto.server -H 127.0.0.1 -p "$port" >"$dir/s3/server.log" 2>&1 < /dev/null &
  echo $! > "$dir/s3/pid"
  for i in $(seq 1 100); do
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.5)" 2>/dev/null && break
    kill -0 "$(cat "$dir/s3/pid")" 2>/dev/null || { cat "$dir/s3/server.log" >&2; return 1; }
    sleep 0.2
  done
  echo "export DISTIL_TEST_S3_ENDPOINT=http://127.0.0.1:$port" >> "$dir/env"
}

stop_all() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/s3/pid" ]; then
    local pid; pid=$(cat "$dir/s3/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -f "$dir/pg/bindir" ] && [ -f "$dir/pg/data/postmaster.pid" ]; then
    as_pg_user "$(cat "$dir/pg/bindir")/pg_ctl" -D "$dir/pg/data" -m fast -w stop >&2 || true
  fi
  rm -rf "$dir"
}

case "$cmd" in
  start)
    what=${2:-all}
    case "$what" in pg|s3|all) ;; *) echo "usage: $0 start [pg|s3|all] [STATE_DIR]" >&2; exit 2 ;; esac
    dir=$(state_dir "${3:-}")
    if [ -f "$dir/env" ]; then echo "services: $dir already holds running services; stop them first" >&2; exit 1; fi
    mkdir -p "$dir"
    : > "$dir/env"
    trap 'stop_all "$dir"' ERR
    [ "$what" = s3 ] || start_pg "$dir"
    [ "$what" = pg ] || start_s3 "$dir"
    trap - ERR
    echo "export DISTIL_SERVICES_DIR=$dir" >> "$dir/env"
    cat "$dir/env"
    ;;
  stop)
    stop_all "$(state_dir "${2:-}")"
    ;;
  pg-down)
    dir=$(state_dir "${2:-}")
    # -m immediate: connections cut as in a crash; the data directory stays for pg-up.
    as_pg_user "$(cat "$dir/pg/bindir")/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >&2
    ;;
  pg-up)
    dir=$(state_dir "${2:-}")
    port=$(cat "$dir/pg/port")
    as_pg_user "$(cat "$dir/pg/bindir")/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/pg -c max_connections=200" \
      start >&2
    ;;
  *)
    echo "usage: $0 start [pg|s3|all] [STATE_DIR] | stop [STATE_DIR] | pg-down|pg-up [STATE_DIR]" >&2
    exit 2
    ;;
esac

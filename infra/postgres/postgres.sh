#!/usr/bin/env bash
# Local PostgreSQL for Rassylka's database outbox (a stand-in for the ERP's database):
# install | up | down | restart | status | psql | wipe.
#
#   POSTGRES_PORT      TCP port on 127.0.0.1 (default 15432); the outbox tests, `make demo` and
#                      the connector configs Rassylka writes use it
#   POSTGRES_HOME_DIR  where the cluster's data and logs live (default infra/postgres/.cache; as
#                      root, /var/tmp/rassylka-postgres when the `postgres` user cannot reach it)
#
# A private cluster of Debian's server package (apt-get installs `postgresql` when no server
# is there), `wal_level=logical` so Debezium can stream it, listening on 127.0.0.1 only, with
# trust authentication for local development (superuser `rassylka`). `up` creates the
# database `erp` with the outbox table (outbox.sql) and the example `orders` table whose
# trigger writes an outbox row on every status change (orders_example.sql); both idempotent.
# initdb refuses to run as root: as root the cluster runs as the package's `postgres` user.
# `up` refuses, in one line and before starting anything, when the port is already taken.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[postgres] %s\n' "$*" >&2; }
is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 && 10#$1 < 65536 )); }

PORT="${POSTGRES_PORT:-15432}"
is_port "$PORT" || { say "POSTGRES_PORT=$PORT is not a TCP port number (1-65535)"; exit 2; }
PORT="$((10#$PORT))"
HOME_DIR="${POSTGRES_HOME_DIR:-$HERE/.cache}"
# As root the cluster belongs to `postgres`, which may not reach a checkout under a private
# folder (/root, say): then the cluster lives in /var/tmp instead.
if [[ -z "${POSTGRES_HOME_DIR:-}" && "$(id -u)" == 0 ]] && getent passwd postgres >/dev/null \
   && ! runuser -u postgres -- test -x "$HERE" 2>/dev/null; then
  HOME_DIR=/var/tmp/rassylka-postgres
fi
DATA="$HOME_DIR/data-$PORT"
LOGS="$HOME_DIR/logs-$PORT"
SUPERUSER=rassylka
DATABASE=erp

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sudo_cmd() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

# The newest server installed by Debian's packages (/usr/lib/postgresql/<major>/bin).
bindir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
}

install() {
  if bindir >/dev/null; then return 0; fi
  command -v apt-get >/dev/null || { say "no PostgreSQL server found and no apt-get to install one: install PostgreSQL 14+ (initdb, pg_ctl, psql)"; exit 1; }
  say "installing Debian's PostgreSQL server package (apt-get install postgresql) ..."
  sudo_cmd apt-get update -q >/dev/null
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 postgresql >/dev/null
  bindir >/dev/null || { say "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb is there"; exit 1; }
}

# Runs a server binary as the cluster's owner: the `postgres` user when we are root.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

prepare_dirs() {
  mkdir -p "$HOME_DIR" "$LOGS"
  if [[ "$(id -u)" == 0 ]]; then
    getent passwd postgres >/dev/null || { say "running as root and there is no 'postgres' user to own the cluster (Debian's postgresql package creates it)"; exit 1; }
    chown postgres "$LOGS"
    if ! runuser -u postgres -- test -w "$LOGS"; then
      say "the 'postgres' user cannot reach $HOME_DIR (a parent folder is private?) — set POSTGRES_HOME_DIR to a folder it can reach"
      exit 1
    fi
  fi
}

init_cluster() {
  if [[ -f "$DATA/PG_VERSION" ]]; then return 0; fi
  say "creating a cluster in $DATA (once)"
  mkdir -p "$DATA"
  [[ "$(id -u)" == 0 ]] && chown postgres "$DATA"
  chmod 700 "$DATA"
  as_owner "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$LOGS/initdb.log" 2>&1 \
    || { say "initdb failed; see $LOGS/initdb.log"; tail -n 5 "$LOGS/initdb.log" >&2; exit 1; }
}

pg_running() { [[ -f "$DATA/postmaster.pid" ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

psql_cmd() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" "$@"; }

create_database() {
  if [[ "$(psql_cmd -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]]; then
    psql_cmd -d postgres -c "CREATE DATABASE $DATABASE" >/dev/null
  fi
  psql_cmd -d "$DATABASE" -f "$HERE/outbox.sql" >/dev/null
  psql_cmd -d "$DATABASE" -f "$HERE/orders_example.sql" >/dev/null
}

up() {
  install
  BIN="$(bindir)"
  if pg_running && listening "$PORT"; then
    say "PostgreSQL already running on 127.0.0.1:$PORT (data: $DATA)"
    create_database
    return 0
  fi
  if listening "$PORT"; then
    say "port 127.0.0.1:$PORT is already in use (another PostgreSQL?) — start this one elsewhere with POSTGRES_PORT=<free port>"
    exit 1
  fi
  prepare_dirs
  init_cluster
  say "starting PostgreSQL $("$BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$PORT (wal_level=logical; logs: $LOGS)"
  # Settings on the command line: the cluster's own files stay as initdb wrote them.
  local options="-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories='' \
-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=60 \
-c shared_buffers=64MB -c max_slot_wal_keep_size=1GB -c logging_collector=off"
  if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOGS/postgres.log" -o "$options" -w -t 60 start >/dev/null; then
    if grep -qs "could not bind\|Address already in use" "$LOGS/postgres.log"; then
      say "port 127.0.0.1:$PORT is already in use — start PostgreSQL elsewhere with POSTGRES_PORT=<free port>"
    else
      say "PostgreSQL did not start; last lines of $LOGS/postgres.log:"
      tail -n 15 "$LOGS/postgres.log" >&2 || true
    fi
    exit 1
  fi
  create_database
  say "PostgreSQL is up: postgresql://$SUPERUSER@127.0.0.1:$PORT/$DATABASE (outbox and orders tables ready)"
}

down() {
  local bin; bin="$(bindir)" || { say "no PostgreSQL installed: nothing to stop"; return 0; }
  BIN="$bin"
  if [[ ! -f "$DATA/postmaster.pid" ]] || ! pg_running; then say "no PostgreSQL running on port $PORT"; return 0; fi
  say "stopping PostgreSQL on port $PORT"
  as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null
  say "stopped"
}

status() {
  BIN="$(bindir)" || { echo "not installed"; return 1; }
  if pg_running && listening "$PORT"; then echo "running: postgresql://$SUPERUSER@127.0.0.1:$PORT/$DATABASE"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  psql) shift; exec psql -X -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" -d "$DATABASE" "$@" ;;
  wipe) down; rm -rf "$DATA" "$LOGS"; say "wiped $DATA" ;;
  *) echo "usage: $0 install|up|down|restart|status|psql [args]|wipe" >&2; exit 2 ;;
esac

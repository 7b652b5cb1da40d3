#!/usr/bin/env bash
# Local Schema Registry for Rassylka (Apicurio Registry, in-memory): fetch | up | down | restart | status.
#
#   SCHEMA_REGISTRY_PORT             HTTP port on 127.0.0.1 (default 18081); every rassylka command,
#                                    worker and test uses http://127.0.0.1:$SCHEMA_REGISTRY_PORT/apis/ccompat/v7
#                                    unless SCHEMA_REGISTRY_URL is set
#   SCHEMA_REGISTRY_MANAGEMENT_PORT  Quarkus' management interface, bound to 127.0.0.1 too
#                                    (default SCHEMA_REGISTRY_PORT+1)
#   SCHEMA_REGISTRY_HOME_DIR         where the unpacked registry and its logs live (default infra/registry/.cache)
#   SCHEMA_REGISTRY_URL              when set, that registry is used and nothing is fetched or started
#
# The registry keeps its schemas in memory: `down` forgets them (`rassylka schemas register`
# puts the project's back). `up` sets the global compatibility level to BACKWARD and refuses,
# in one line and before fetching or starting anything, when a port is already taken.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[registry] %s\n' "$*" >&2; }
is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 && 10#$1 < 65536 )); }

PORT="${SCHEMA_REGISTRY_PORT:-18081}"
is_port "$PORT" || { say "SCHEMA_REGISTRY_PORT=$PORT is not a TCP port number (1-65535)"; exit 2; }
PORT="$((10#$PORT))"
MGMT_PORT="${SCHEMA_REGISTRY_MANAGEMENT_PORT:-$((PORT + 1))}"
is_port "$MGMT_PORT" || {
  say "SCHEMA_REGISTRY_MANAGEMENT_PORT=$MGMT_PORT is not a TCP port number (default SCHEMA_REGISTRY_PORT+1)"; exit 2; }
MGMT_PORT="$((10#$MGMT_PORT))"
if (( MGMT_PORT == PORT )); then say "SCHEMA_REGISTRY_MANAGEMENT_PORT must differ from SCHEMA_REGISTRY_PORT ($PORT)"; exit 2; fi
HOME_DIR="${SCHEMA_REGISTRY_HOME_DIR:-$HERE/.cache}"
VERSION="$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$HERE/pom.xml")"
APP="$HOME_DIR/apicurio-registry-$VERSION"
LOGS="$HOME_DIR/logs-$PORT"
PIDFILE="$HOME_DIR/registry-$PORT.pid"
COMPAT_API="/apis/ccompat/v7"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One HTTP/1.0 request to the local registry without curl: prints the status code, then the body.
http() {
  local method="$1" path="$2" body="${3:-}" response
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
  printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nAccept: application/json\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: %s\r\n\r\n%s' \
    "$method" "$path" "$PORT" "${#body}" "$body" >&3
  response="$(cat <&3)"
  exec 3<&-
  printf '%s\n%s\n' "$(head -1 <<<"$response" | cut -d' ' -f2)" "${response#*$'\r\n\r\n'}"
}

ready() { [[ "$(http GET /health/ready 2>/dev/null | head -1)" == "200" ]]; }

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

check_ports_free() {
  if listening "$PORT"; then
    say "port 127.0.0.1:$PORT is already in use (another checkout's registry?) — start this one elsewhere with SCHEMA_REGISTRY_PORT=<free port>, or use that registry with SCHEMA_REGISTRY_URL=http://127.0.0.1:$PORT$COMPAT_API"
    exit 1
  fi
  if listening "$MGMT_PORT"; then
    say "management port 127.0.0.1:$MGMT_PORT is already in use — set SCHEMA_REGISTRY_MANAGEMENT_PORT=<free port> (default SCHEMA_REGISTRY_PORT+1) or choose another SCHEMA_REGISTRY_PORT"
    exit 1
  fi
}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }

fetch() {
  if [[ -f "$APP/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || { say "Maven (mvn) is needed to fetch the registry: apt-get install maven"; exit 1; }
  command -v java >/dev/null || { say "A JDK (java 17+) is needed to run the registry: apt-get install openjdk-17-jre-headless"; exit 1; }
  say "fetching Apicurio Registry $VERSION with Maven into $APP (once, ~140 MB) ..."
  rm -rf "$APP" "$HOME_DIR/download"
  mkdir -p "$HOME_DIR/download"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$HOME_DIR/download" -DincludeTypes=tar.gz
  mkdir -p "$APP"
  tar -xzf "$HOME_DIR/download/apicurio-registry-app-$VERSION-all.tar.gz" -C "$APP"
  rm -rf "$HOME_DIR/download"
  [[ -f "$APP/apicurio-registry-app-$VERSION-runner.jar" ]] || { say "unexpected archive layout in $APP: no runner jar"; exit 1; }
  touch "$APP/.complete"
  say "fetched"
}

# After the registry died during start-up: one line when a port was taken, else the log tail.
explain_failed_start() {
  if grep -qsiE "port.*(already bound|in use)|address already in use" "$LOGS/stdout.log"; then
    say "a port of the registry is already in use (127.0.0.1:$PORT or management 127.0.0.1:$MGMT_PORT) — set SCHEMA_REGISTRY_PORT=<free port> (and SCHEMA_REGISTRY_MANAGEMENT_PORT)"
    return
  fi
  say "registry exited during start-up; last lines of $LOGS/stdout.log:"
  tail -n 20 "$LOGS/stdout.log" >&2 || true
}

set_global_compatibility() {
  local answer
  answer="$(http PUT "$COMPAT_API/config" '{"compatibility":"BACKWARD"}')" || true
  if [[ "$(head -1 <<<"$answer")" != "200" ]]; then
    say "could not set the global compatibility level to BACKWARD: $(tail -n +2 <<<"$answer")"; exit 1
  fi
}

up() {
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then
    say "SCHEMA_REGISTRY_URL=$SCHEMA_REGISTRY_URL is set: using that registry, starting nothing"
    return 0
  fi
  if running && ready; then
    say "registry already running on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
    return 0
  fi
  check_ports_free
  fetch
  local major; major="$(java_major)"
  if [[ -n "$major" ]] && (( major < 17 )); then say "Apicurio Registry $VERSION needs Java 17+, found $major"; exit 1; fi
  mkdir -p "$LOGS"
  say "starting Apicurio Registry $VERSION on http://127.0.0.1:$PORT (in memory; logs: $LOGS)"
  nohup java -Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$MGMT_PORT" \
    -Dquarkus.http.cors.origins="http://127.0.0.1:$PORT" \
    -jar "$APP/apicurio-registry-app-$VERSION-runner.jar" >"$LOGS/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  local waited=0
  until ready; do
    if ! running; then
      (( waited >= 4 )) && printf '\n' >&2
      explain_failed_start
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( waited >= 240 )); then say "registry did not answer on port $PORT within 120 s; see $LOGS/stdout.log"; exit 1; fi
    sleep 0.5; waited=$((waited + 1))
    if (( waited % 4 == 0 )); then printf '.' >&2; fi
  done
  (( waited >= 4 )) && printf '\n' >&2
  set_global_compatibility
  say "registry is up: http://127.0.0.1:$PORT$COMPAT_API (global compatibility BACKWARD)"
}

down() {
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then say "SCHEMA_REGISTRY_URL is set: nothing to stop"; return 0; fi
  if ! running; then say "no registry running on port $PORT"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  say "stopping registry (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "registry did not stop in 20 s: killing"; kill -KILL "$pid" || true; fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then echo "external: $SCHEMA_REGISTRY_URL"; return 0; fi
  if running && ready; then echo "running: http://127.0.0.1:$PORT$COMPAT_API pid $(cat "$PIDFILE")"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  *) echo "usage: $0 fetch|up|down|restart|status" >&2; exit 2 ;;
esac

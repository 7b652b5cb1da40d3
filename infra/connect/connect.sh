#!/usr/bin/env bash
# Local Kafka Connect worker (distributed mode) with Debezium's PostgreSQL connector for
# Rassylka's database outbox: fetch | up | down | restart | status | pid | wipe.
#
#   CONNECT_PORT      REST port on 127.0.0.1 (default 18083); every rassylka command and test
#                     uses http://127.0.0.1:$CONNECT_PORT unless CONNECT_URL is set
#   CONNECT_HOME_DIR  where jars, the plugin folder and logs live (default infra/connect/.cache)
#   CONNECT_URL       when set, that worker is used and nothing is fetched or started
#   KAFKA_BOOTSTRAP / KAFKA_PORT   the broker the worker stores its configs, offsets and status
#                     in and writes change records to (default 127.0.0.1:$KAFKA_PORT, 19092)
#
# The worker keeps connector configs, source offsets and statuses in three Kafka topics named
# after its port (_connect-<port>.configs / .offsets / .status): a worker that is killed and
# started again resumes every connector from its last committed source offset.
# `up` refuses, in one line and before fetching or starting anything, when the port is taken.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[connect] %s\n' "$*" >&2; }
is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 && 10#$1 < 65536 )); }

PORT="${CONNECT_PORT:-18083}"
is_port "$PORT" || { say "CONNECT_PORT=$PORT is not a TCP port number (1-65535)"; exit 2; }
PORT="$((10#$PORT))"
KAFKA_PORT="${KAFKA_PORT:-19092}"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"
HOME_DIR="${CONNECT_HOME_DIR:-$HERE/.cache}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
DEBEZIUM_VERSION="$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$HERE/pom.xml")"
BROKER_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/../kafka/pom.xml" 2>/dev/null || true)"
WORKER="$HOME_DIR/worker-$KAFKA_VERSION"
PLUGINS="$HOME_DIR/plugins-$DEBEZIUM_VERSION"
LOGS="$HOME_DIR/logs-$PORT"
PIDFILE="$HOME_DIR/connect-$PORT.pid"
CONF="$HOME_DIR/connect-$PORT.properties"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One HTTP/1.0 GET to the local worker without curl: prints the status code.
http_status() {
  local response
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nAccept: application/json\r\n\r\n' "$1" "$PORT" >&3
  response="$(cat <&3)"
  exec 3<&-
  head -1 <<<"$response" | cut -d' ' -f2
}

# Ready = the REST API answers /connectors, which it does only once the worker joined its group
# and read the config topic.
ready() { [[ "$(http_status /connectors 2>/dev/null)" == "200" ]]; }

# Alive and not a zombie: a worker killed with SIGKILL stays a zombie until its parent reaps it.
running() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid state=""; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/stat" ]]; then state="$(sed 's/.*) \([A-Z]\).*/\1/' "/proc/$pid/stat" 2>/dev/null)"; fi
  [[ "$state" != Z ]]
}

fetch() {
  if [[ -f "$WORKER/.complete" && -f "$PLUGINS/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || { say "Maven (mvn) is needed to fetch Kafka Connect: apt-get install maven"; exit 1; }
  command -v java >/dev/null || { say "A JDK (java 17+) is needed to run Kafka Connect: apt-get install openjdk-17-jre-headless"; exit 1; }
  if [[ -n "$BROKER_VERSION" && "$BROKER_VERSION" != "$KAFKA_VERSION" ]]; then
    say "note: Connect $KAFKA_VERSION (infra/connect/pom.xml) differs from the broker's $BROKER_VERSION (infra/kafka/pom.xml)"
  fi
  if [[ ! -f "$WORKER/.complete" ]]; then
    say "fetching the Kafka Connect $KAFKA_VERSION worker with Maven into $WORKER (once) ..."
    rm -rf "$WORKER"; mkdir -p "$WORKER"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -P worker dependency:copy-dependencies \
        -DoutputDirectory="$WORKER" -DincludeScope=runtime
    touch "$WORKER/.complete"
  fi
  if [[ ! -f "$PLUGINS/.complete" ]]; then
    say "fetching Debezium's PostgreSQL connector $DEBEZIUM_VERSION with Maven into $PLUGINS (once) ..."
    rm -rf "$PLUGINS"; mkdir -p "$PLUGINS/debezium-connector-postgres"
    # Kafka's own jars come from the worker (Connect loads org.apache.kafka.* parent-first).
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -P debezium dependency:copy-dependencies \
        -DoutputDirectory="$PLUGINS/debezium-connector-postgres" -DincludeScope=runtime \
        -DexcludeGroupIds=org.apache.kafka
    touch "$PLUGINS/.complete"
  fi
  say "fetched: $(ls "$WORKER" | wc -l) worker jars, $(ls "$PLUGINS/debezium-connector-postgres" | wc -l) Debezium jars"
}

write_config() {
  mkdir -p "$LOGS"
  cat > "$CONF" <<EOF
bootstrap.servers=$BOOTSTRAP
group.id=rassylka-connect-$PORT
listeners=http://127.0.0.1:$PORT
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$PORT
plugin.path=$PLUGINS
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
config.storage.topic=_connect-$PORT.configs
offset.storage.topic=_connect-$PORT.offsets
status.storage.topic=_connect-$PORT.status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=5
status.storage.partitions=1
offset.flush.interval.ms=10000
# a worker that comes back after a crash gets its tasks at once, not after the default 5 minutes
scheduled.rebalance.max.delay.ms=0
session.timeout.ms=10000
heartbeat.interval.ms=2000
task.shutdown.graceful.timeout.ms=5000
EOF
  cat > "$HOME_DIR/log4j2-$PORT.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $LOGS/connect.log
appender.file.filePattern = $LOGS/connect.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.debezium.name = io.debezium
logger.debezium.level = info
logger.herder.name = org.apache.kafka.connect.runtime.distributed.DistributedHerder
logger.herder.level = info
logger.rest.name = org.apache.kafka.connect.runtime.rest.RestServer
logger.rest.level = info
EOF
}

explain_failed_start() {
  if grep -qs "Address already in use" "$LOGS/stdout.log" "$LOGS/connect.log"; then
    say "port 127.0.0.1:$PORT is already in use — start the worker elsewhere with CONNECT_PORT=<free port>"
    return
  fi
  say "Kafka Connect exited during start-up; last lines of $LOGS/stdout.log and connect.log:"
  tail -n 20 "$LOGS/stdout.log" "$LOGS/connect.log" >&2 || true
}

up() {
  if [[ -n "${CONNECT_URL:-}" ]]; then
    say "CONNECT_URL=$CONNECT_URL is set: using that worker, starting nothing"
    return 0
  fi
  if running && ready; then
    say "worker already running on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
    return 0
  fi
  if ! running && listening "$PORT"; then
    say "port 127.0.0.1:$PORT is already in use (another checkout's worker?) — start this one elsewhere with CONNECT_PORT=<free port>, or use that worker with CONNECT_URL=http://127.0.0.1:$PORT"
    exit 1
  fi
  local host="${BOOTSTRAP%%,*}"; host="${host##*://}"
  if ! (exec 3<>"/dev/tcp/${host%:*}/${host##*:}") 2>/dev/null; then
    say "Kafka is not reachable at $BOOTSTRAP — start it with \`make kafka-up\` or set KAFKA_BOOTSTRAP"
    exit 1
  fi
  fetch
  write_config
  if ! running; then
    say "starting Kafka Connect $KAFKA_VERSION with Debezium $DEBEZIUM_VERSION on http://127.0.0.1:$PORT (Kafka $BOOTSTRAP; logs: $LOGS)"
    nohup java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="$HOME_DIR/log4j2-$PORT.properties" \
      -cp "$WORKER/*" org.apache.kafka.connect.cli.ConnectDistributed "$CONF" >"$LOGS/stdout.log" 2>&1 &
    echo $! > "$PIDFILE"
  fi
  local waited=0
  until ready; do
    if ! running; then
      (( waited >= 4 )) && printf '\n' >&2
      explain_failed_start
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( waited >= 240 )); then say "worker did not answer on port $PORT within 120 s; see $LOGS/connect.log"; exit 1; fi
    sleep 0.5; waited=$((waited + 1))
    if (( waited % 4 == 0 )); then printf '.' >&2; fi
  done
  (( waited >= 4 )) && printf '\n' >&2
  say "worker is up: http://127.0.0.1:$PORT"
}

down() {
  if [[ -n "${CONNECT_URL:-}" ]]; then say "CONNECT_URL is set: nothing to stop"; return 0; fi
  if ! running; then say "no worker running on port $PORT"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  say "stopping worker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "worker did not stop in 30 s: killing"; kill -KILL "$pid" || true; fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if [[ -n "${CONNECT_URL:-}" ]]; then echo "external: $CONNECT_URL"; return 0; fi
  if running && ready; then echo "running: http://127.0.0.1:$PORT pid $(cat "$PIDFILE")"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  pid) if running; then cat "$PIDFILE"; else exit 1; fi ;;
  wipe) down; rm -rf "$LOGS" "$CONF"; say "wiped $LOGS (the worker's topics _connect-$PORT.* stay on the broker)" ;;
  *) echo "usage: $0 fetch|up|down|restart|status|pid|wipe" >&2; exit 2 ;;
esac

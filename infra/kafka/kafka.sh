#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for Rassylka: fetch | up | down | restart | status.
#
#   KAFKA_PORT             client port on 127.0.0.1 (default 19092); every rassylka command
#                          and worker uses 127.0.0.1:$KAFKA_PORT unless KAFKA_BOOTSTRAP is set
#   KAFKA_CONTROLLER_PORT  the KRaft controller's port on 127.0.0.1 (default KAFKA_PORT+1)
#   KAFKA_HOME_DIR         where jars, storage and logs live (default infra/kafka/.cache)
#   KAFKA_BOOTSTRAP        when set, an existing cluster is used and nothing is fetched or started
#   KAFKA_HEAP             the broker's JVM heap options (default "-Xms1g -Xmx2g": every test and
#                          bench run leaves its topics, and with thousands of partitions a 768 MB
#                          heap was nearly all live data, collected several times a second)
#
# `up` refuses, in one line and before fetching or starting anything, when either port is
# already taken (another checkout's broker, say).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[kafka] %s\n' "$*" >&2; }
is_port() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 && 10#$1 < 65536 )); }

PORT="${KAFKA_PORT:-19092}"
is_port "$PORT" || { say "KAFKA_PORT=$PORT is not a TCP port number (1-65535)"; exit 2; }
PORT="$((10#$PORT))"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
is_port "$CONTROLLER_PORT" || {
  say "KAFKA_CONTROLLER_PORT=$CONTROLLER_PORT is not a TCP port number (set KAFKA_CONTROLLER_PORT, default KAFKA_PORT+1)"; exit 2; }
CONTROLLER_PORT="$((10#$CONTROLLER_PORT))"
if (( CONTROLLER_PORT == PORT )); then say "KAFKA_CONTROLLER_PORT must differ from KAFKA_PORT ($PORT)"; exit 2; fi
HOME_DIR="${KAFKA_HOME_DIR:-$HERE/.cache}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
LIBS="$HOME_DIR/libs-$KAFKA_VERSION"
DATA="$HOME_DIR/data-$PORT"
LOGS="$HOME_DIR/logs-$PORT"
PIDFILE="$HOME_DIR/broker-$PORT.pid"
CONF="$HOME_DIR/server-$PORT.properties"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_open() { listening "$PORT"; }

# One line naming the knob when a port this broker needs is taken by another process.
check_ports_free() {
  if listening "$PORT"; then
    say "port 127.0.0.1:$PORT is already in use (another checkout's broker?) — start this one elsewhere with KAFKA_PORT=<free port>, or use that broker with KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
    exit 1
  fi
  if listening "$CONTROLLER_PORT"; then
    say "controller port 127.0.0.1:$CONTROLLER_PORT is already in use — set KAFKA_CONTROLLER_PORT=<free port> (default KAFKA_PORT+1) or choose another KAFKA_PORT"
    exit 1
  fi
}

# After the broker died during start-up: one line when a port was taken, else the log tails.
explain_failed_start() {
  local taken
  taken="$(grep -ho 'bind to [0-9a-zA-Z.-]*:[0-9]*' "$LOGS/stdout.log" "$LOGS/server.log" 2>/dev/null | head -1 | sed 's/.*://')" || true
  if [[ -n "$taken" ]] && grep -qs "Address already in use" "$LOGS/stdout.log" "$LOGS/server.log"; then
    if [[ "$taken" == "$CONTROLLER_PORT" ]]; then
      say "controller port 127.0.0.1:$CONTROLLER_PORT is already in use — set KAFKA_CONTROLLER_PORT=<free port> (default KAFKA_PORT+1) or choose another KAFKA_PORT"
    else
      say "port 127.0.0.1:$taken is already in use — start the broker elsewhere with KAFKA_PORT=<free port>"
    fi
    return
  fi
  say "broker exited during start-up; last lines of $LOGS/stdout.log and server.log:"
  tail -n 20 "$LOGS/stdout.log" "$LOGS/server.log" >&2 || true
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || { say "Maven (mvn) is needed to fetch Kafka: apt-get install maven"; exit 1; }
  command -v java >/dev/null || { say "A JDK (java 17+) is needed to run Kafka: apt-get install openjdk-17-jre-headless"; exit 1; }
  say "fetching Apache Kafka $KAFKA_VERSION jars with Maven into $LIBS (once) ..."
  mkdir -p "$LIBS"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" -DincludeScope=runtime
  touch "$LIBS/.complete"
  say "fetched $(ls "$LIBS" | wc -l) jars"
}

write_config() {
  mkdir -p "$DATA" "$LOGS"
  cat > "$CONF" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
log.cleaner.backoff.ms=5000
num.network.threads=2
num.io.threads=4
EOF
  cat > "$HOME_DIR/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $LOGS/server.log
appender.file.filePattern = $LOGS/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = info
EOF
}

java_cmd() {
  java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" \
    -cp "$LIBS/*" "$@"
}

format_storage() {
  if [[ -f "$DATA/meta.properties" ]]; then return 0; fi
  say "formatting KRaft storage in $DATA (once)"
  local cluster_id
  cluster_id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF" >/dev/null
}

up() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    say "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that cluster, starting nothing"
    return 0
  fi
  if running && port_open; then
    say "broker already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
    return 0
  fi
  check_ports_free
  fetch
  write_config
  format_storage
  say "starting Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (logs: $LOGS)"
  rm -f "$LOGS/server.log"
  # shellcheck disable=SC2086  # KAFKA_HEAP is a list of JVM options
  nohup java ${KAFKA_HEAP:--Xms1g -Xmx2g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Xlog:gc*:file="$LOGS/gc.log":time,uptime:filecount=2,filesize=20M \
    -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$CONF" >"$LOGS/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  local waited=0
  until port_open && grep -q "Kafka Server started" "$LOGS/server.log" 2>/dev/null; do
    if ! running; then
      (( waited >= 4 )) && printf '\n' >&2
      explain_failed_start
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( waited >= 120 )); then say "broker did not answer on port $PORT within 60 s; see $LOGS/server.log"; exit 1; fi
    sleep 0.5; waited=$((waited + 1))
    if (( waited % 4 == 0 )); then printf '.' >&2; fi
  done
  (( waited >= 4 )) && printf '\n' >&2
  say "broker is up on 127.0.0.1:$PORT"
}

down() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then say "KAFKA_BOOTSTRAP is set: nothing to stop"; return 0; fi
  if ! running; then say "no broker running on port $PORT"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  say "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "broker did not stop in 30 s: killing"; kill -KILL "$pid" || true; fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then echo "external: $KAFKA_BOOTSTRAP"; return 0; fi
  if running && port_open; then echo "running: 127.0.0.1:$PORT pid $(cat "$PIDFILE")"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  wipe) down; rm -rf "$DATA" "$LOGS"; say "wiped $DATA" ;;
  *) echo "usage: $0 fetch|up|down|restart|status|wipe" >&2; exit 2 ;;
esac

# shellcheck shell=bash
# Apache Kafka: one KRaft node (combined broker + controller) on 127.0.0.1:9092 (controller 9093).
#
# The jars come from Maven Central (scripts/maven/kafka/pom.xml, which holds the version pin) because
# the CI machines reach package registries only, not the Apache download mirrors. The lib folder
# doubles as the classpath for the CLI/benchmark tools (UMP_KAFKA_LIBS), e.g.
#   java -Dlog4j2.configurationFile="$UMP_KAFKA_TOOLS_LOG4J" -cp "$UMP_KAFKA_LIBS/*" \
#     org.apache.kafka.tools.ProducerPerformance --topic t --num-records 100000 --record-size 100 \
#     --throughput -1 --producer-props bootstrap.servers=127.0.0.1:9092
# Data (run/kafka/data) survives down/up; delete run/kafka to start from an empty cluster.

KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_POM=${BASH_SOURCE[0]%/*}/../maven/kafka/pom.xml

kafka__version() { sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$KAFKA_POM" | head -n 1; }
kafka__libs() { echo "$UMP_INFRA_CACHE/kafka/$(kafka__version)/lib"; }

kafka__fetch() { maven_fetch kafka "$KAFKA_POM" "$(kafka__libs)"; }

# Configs are rewritten on every start (cheap) so edits here apply after a down/up; data is untouched.
kafka__write_config() {
  local dir=$1
  cat >"$dir/server.properties" <<EOF
# written by scripts/infra.d/kafka.sh; changes are overwritten on the next start
process.roles=broker,controller
node.id=1
# A static voter set: no dynamic-quorum bootstrapping needed for a single node.
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# One broker: every internal topic must make do with one replica.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the defaults (50): creating them makes the first group join or
# transaction on a fresh cluster slow on a 2-core box.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8
share.coordinator.state.topic.num.partitions=8
# Tests join groups all the time; the default 3 s delay would only slow them down.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
EOF
  # Everything goes to stdout, which start_daemon sends to run/kafka/log.
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
# per-request and per-partition state chatter
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
EOF
  # For the CLI and benchmark tools: warnings only, on stderr, so their stdout stays parseable.
  cat >"$dir/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# kafka__tool CLASS ARGS...: run a Kafka CLI class with a small, fast-starting JVM.
kafka__tool() {
  local dir=$UMP_INFRA_RUN/kafka
  "$(java17)" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$dir/tools-log4j2.properties" -cp "$(kafka__libs)/*" "$@"
}

kafka_up() {
  kafka_status && return 0
  local dir libs i
  kafka__fetch
  dir=$(run_dir kafka)
  libs=$(kafka__libs)
  if ! pid_alive kafka; then
    ensure_port_free kafka "$KAFKA_PORT"
    ensure_port_free kafka "$KAFKA_CONTROLLER_PORT"
    kafka__write_config "$dir"
    if [ ! -f "$dir/data/meta.properties" ]; then
      log "kafka: formatting a new KRaft log in $dir/data"
      kafka__tool kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id "$(kafka__tool kafka.tools.StorageTool random-uuid)" \
        --config "$dir/server.properties" >"$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; die "kafka: storage format failed"; }
    fi
    # The marker names our server.properties so pid_alive never mistakes another Kafka for ours.
    start_daemon kafka "kafka.Kafka $dir/server.properties" \
      "$(java17)" -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dkafka.logs.dir="$dir" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      -cp "$libs/*" kafka.Kafka "$dir/server.properties"
  fi
  wait_port kafka "$KAFKA_PORT" 180
  # The listener opens before the broker has caught up with the metadata log and been unfenced;
  # until then clients get errors. A real metadata round trip through the admin client settles it.
  for ((i = 0; i < 60; i++)); do
    if kafka__tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --list >/dev/null 2>"$dir/ready-check.err"; then
      return 0
    fi
    pid_alive kafka || { tail -n 40 "$dir/log" >&2; die "kafka exited during startup (log: $dir/log)"; }
    sleep 1
  done
  cat "$dir/ready-check.err" >&2
  die "kafka: broker does not answer metadata requests (log: $dir/log)"
}

kafka_down() { stop_daemon kafka; }

kafka_status() { pid_alive kafka && port_open "$KAFKA_PORT"; }

kafka_env() {
  echo "UMP_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
  echo "UMP_KAFKA_VERSION=$(kafka__version)"
  echo "UMP_KAFKA_LIBS=$(kafka__libs)"
  echo "UMP_KAFKA_TOOLS_LOG4J=$UMP_INFRA_RUN/kafka/tools-log4j2.properties"
}

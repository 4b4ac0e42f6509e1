# shellcheck shell=bash
# ActiveMQ Classic with AMQP 1.0 on 127.0.0.1:5672 (SASL PLAIN, user ump / password ump).
#
# Debian's activemq package lacks the AMQP module ("Transport scheme NOT recognized: [amqp]") and
# upstream no longer publishes its binary tarball on Maven Central, so the broker is assembled from
# the Central jars (scripts/maven/activemq/pom.xml, which holds the version pin) and configured by
# our own activemq.xml. KahaDB data (run/activemq/data) survives down/up; "up" restarts a running
# broker whose configuration differs from the one written here.

ACTIVEMQ_PORT=5672
ACTIVEMQ_POM=${BASH_SOURCE[0]%/*}/../maven/activemq/pom.xml

activemq__version() { sed -n 's:.*<activemq\.version>\(.*\)</activemq\.version>.*:\1:p' "$ACTIVEMQ_POM" | head -n 1; }
activemq__libs() { echo "$UMP_INFRA_CACHE/activemq/$(activemq__version)/lib"; }

activemq__fetch() { maven_fetch activemq "$ACTIVEMQ_POM" "$(activemq__libs)"; }

# Configs are rewritten on every "up" (cheap); data is untouched.
activemq__write_config() {
  local dir=$1
  mkdir -p "$dir/data" "$dir/tmp"
  cat >"$dir/activemq.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- written by scripts/infra.d/activemq.sh; changes are overwritten on the next start -->
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <!-- No JMX (nothing would reach it: a remote connector would listen on all interfaces) and no
       scheduler: the tests talk AMQP only. -->
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="ump" dataDirectory="$dir/data"
          persistent="true" useJmx="false" schedulerSupport="false">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- No persistJMSRedelivered (ActiveMQ's default): with it the broker stores every message
               synchronously on arrival (no concurrent store and dispatch) and, before dispatching it,
               updates it in the store once more, one message after the other on the dispatch path.
               At 1,000 realtime messages a second on 2 shared cores that capped dispatch near the
               arrival rate, and a backlog of seconds never drained (scripts/bench-realtime). The
               worker needs no stored flag: a message whose worker died comes back with its
               delivery-count raised from the broker's memory, and one in flight when the broker
               itself restarts is recognised by its Redis key (README, "Realtime path").
               A rejected (or modified undeliverable-here) AMQP delivery is dead-lettered to DLQ.<name>;
               processNonPersistent because AMQP messages without durable=true count as non-persistent
               here and would otherwise be dropped instead of dead-lettered. -->
          <policyEntry queue=">">
            <deadLetterStrategy>
              <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"
                                            processNonPersistent="true"/>
            </deadLetterStrategy>
          </policyEntry>
          <policyEntry topic=">">
            <deadLetterStrategy>
              <individualDeadLetterStrategy topicPrefix="DLQ." useQueueForTopicMessages="true"
                                            processNonPersistent="true"/>
            </deadLetterStrategy>
          </policyEntry>
        </policyEntries>
      </policyMap>
    </destinationPolicy>

    <!-- journalDiskSyncStrategy="always", ActiveMQ's default, written out because it is a
         decision: the broker answers a persistent send "accepted" only after its journal writer
         has written and fsynced the message, so an accepted message survives the broker's process
         dying (even by kill -9) and its machine losing power. With "periodic" the broker answers
         as soon as the message is queued for the journal writer, before anything is written: a
         broker killed a moment after its answers loses what the writer had not reached yet
         (worker/tests/faults.rs, activemq_killed_while_accepting_keeps_every_message_it_accepted).
         Its price is CPU and latency: README, "The broker's settings". -->
    <persistenceAdapter>
      <kahaDB directory="$dir/data/kahadb" journalDiskSyncStrategy="always"/>
    </persistenceAdapter>

    <plugins>
      <!-- Without an authorization plugin every authenticated user may do everything (admin rights);
           anonymous connections are refused, so clients must really do SASL PLAIN. -->
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>
          <authenticationUser username="ump" password="ump" groups="admins,users"/>
        </users>
      </simpleAuthenticationPlugin>
    </plugins>

    <!-- Explicit limits: the defaults (100 GB store) trigger warnings and adjustments on a small disk. -->
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="128 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="4 gb"/></storeUsage>
        <tempUsage><tempUsage limit="1 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>

    <transportConnectors>
      <!-- tcpNoDelay: small request/response exchanges must not wait for Nagle.
           maxFrameSize bounds a whole message (100 MiB). -->
      <transportConnector name="amqp"
          uri="amqp://127.0.0.1:$ACTIVEMQ_PORT?maximumConnections=1000&amp;wireFormat.maxFrameSize=104857600&amp;transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
EOF
  # Everything goes to stdout, which start_daemon sends to run/activemq/log.
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d | %-5p | %m | %c | %t%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.spring.name = org.springframework
logger.spring.level = warn
logger.xbean.name = org.apache.xbean
logger.xbean.level = warn
EOF
}

activemq_up() {
  local dir libs i
  dir=$(run_dir activemq)
  # A broker running with another configuration than the one written now (this file was edited
  # since it started) is restarted, so that "up" always leaves the broker configured as here.
  if activemq_status; then
    activemq__write_config "$dir"
    cmp -s "$dir/activemq.xml" "$dir/activemq.xml.running" && return 0
    log "activemq: its configuration changed; restarting it"
    stop_daemon activemq
  fi
  activemq__fetch
  libs=$(activemq__libs)
  if ! pid_alive activemq; then
    ensure_port_free activemq "$ACTIVEMQ_PORT"
    activemq__write_config "$dir"
    cp "$dir/activemq.xml" "$dir/activemq.xml.running"
    # The marker names our activemq.xml so pid_alive never mistakes another broker for ours.
    # -Xms512m (= -Xmx): with -Xms128m G1 kept the heap at 128 MB, the KahaDB index cache (up to
    #   10,000 pages of 4 KB) holds ~40 MB of it, and at 1,000 msg/s the young collections came
    #   every 0.85 s with pauses of 5-17 ms: 1 % of realtime messages waited for one. A fixed
    #   512 MB heap makes them several times rarer.
    # -XX:+AlwaysPreTouch: the heap's pages are mapped at start, not during the first collections.
    # -Xlog:gc: pauses in run/activemq/gc.log, to set beside slow messages.
    start_daemon activemq "xbean:file:$dir/activemq.xml" \
      "$(java17)" -Xms512m -Xmx512m -XX:+AlwaysPreTouch \
      -Xlog:gc:file="$dir/gc.log":utctime:filecount=2,filesize=10m \
      -Djava.awt.headless=true -Djava.io.tmpdir="$dir/tmp" \
      -Dactivemq.home="$(dirname "$libs")" -Dactivemq.base="$dir" -Dactivemq.conf="$dir" \
      -Dactivemq.data="$dir/data" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      -cp "$libs/*" org.apache.activemq.console.Main start "xbean:file:$dir/activemq.xml"
  fi
  wait_port activemq "$ACTIVEMQ_PORT" 120
  # The connector opens while the broker is still starting; "... (ump, ID:...) started" comes last.
  for ((i = 0; i < 600; i++)); do
    grep -q 'Apache ActiveMQ .* (ump, .*) started' "$dir/log" && return 0
    pid_alive activemq || { tail -n 40 "$dir/log" >&2; die "activemq exited during startup (log: $dir/log)"; }
    sleep 0.1
  done
  tail -n 40 "$dir/log" >&2
  die "activemq: no 'started' line in $dir/log after 60 s"
}

activemq_down() { stop_daemon activemq; }

activemq_status() { pid_alive activemq && port_open "$ACTIVEMQ_PORT"; }

activemq_env() {
  echo "UMP_AMQP_URL=amqp://ump:ump@127.0.0.1:$ACTIVEMQ_PORT"
  echo "UMP_ACTIVEMQ_VERSION=$(activemq__version)"
}

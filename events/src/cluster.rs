//! The processor of the cluster mode: a Kafka consumer group over the events topic (one person's
//! events on one partition, in order) and MySQL. Each batch is committed by
//! `MySqlAudience::process` with the partitions' positions in the same transaction; Kafka's
//! committed offsets are advanced afterwards and only say where to start reading (an entry below
//! the position stored in MySQL is recognised and skipped). Due wake-ups are claimed in MySQL and
//! put back on the topic as rechecks, on the person's partition.

use crate::{EventMetrics, backoff};
use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use prometheus::{Encoder, TextEncoder};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ump_automation::event::Queued;
use ump_core::audience::{EventLog, KafkaEventLog, LogEntry};
use ump_core::audience_mysql::{MySqlAudience, Positioned};
use ump_core::queue::KafkaSettings;
use ump_core::store::{connect_mysql, migrate_mysql};

#[derive(Clone, clap::Args)]
pub struct ProcessorSettings {
    #[arg(long, env = "UMP_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,
    #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
    pub mysql_url: String,
    /// The topic of behaviour events.
    #[arg(long, env = "UMP_EVENTS_TOPIC", default_value = ump_core::audience::DEFAULT_EVENTS_TOPIC)]
    pub topic: String,
    /// Partitions of the events topic when the processor creates it: the most processors that
    /// can share the work.
    #[arg(long, env = "UMP_EVENTS_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,
    #[arg(long, env = "UMP_EVENTS_REPLICATION", default_value_t = 1)]
    pub replication: i32,
    /// The consumer group: processors of one group share the partitions.
    #[arg(long, env = "UMP_EVENTS_GROUP", default_value = ump_core::audience::DEFAULT_EVENTS_GROUP)]
    pub group: String,
    /// Entries in flight at once: each of the `LANES` lanes commits batches of up to a
    /// `LANES`th of it, side by side.
    #[arg(long, env = "UMP_EVENTS_BATCH", default_value_t = 5000)]
    pub batch: usize,
    /// Longest wait to fill a lane's batch.
    #[arg(long, env = "UMP_EVENTS_BATCH_WAIT", default_value = "20ms")]
    pub batch_wait: ump_core::duration::Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, env = "UMP_EVENTS_LISTEN", default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// How long the processor goes without an event, nothing in hand, before it looks at the
    /// group's progress; two looks that find events waiting and nothing recorded, or two that
    /// cannot see the progress, make it replace its Kafka consumer.
    #[arg(long, env = "UMP_EVENTS_STALL_CHECK", default_value = "20s")]
    pub stall_check: ump_core::duration::Duration,
}

impl std::fmt::Debug for ProcessorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorSettings")
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Runs the processor until `shutdown` fires; the batch in hand is committed first.
pub async fn run(settings: ProcessorSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let kafka = KafkaSettings::from_env(settings.kafka_bootstrap.clone());
    let pool = connect_mysql(&settings.mysql_url, 8).await?;
    migrate_mysql(&pool).await?;
    let audience = MySqlAudience::new(pool.clone());
    ensure_topic(&kafka, &settings).await;
    let metrics = EventMetrics::new(prometheus::Registry::new())?;
    let log = KafkaEventLog::new(&kafka, &settings.topic, Duration::from_secs(10))
        .context("creating the Kafka producer of rechecks")?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(wake_ups(
        audience.clone(),
        log,
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::sample_sizes(
        Arc::new(audience.clone()),
        shutdown.clone(),
    ));
    tasks.spawn(crate::items::run(
        Arc::new(ump_core::recommendations::MySqlItemModel::new(pool.clone())),
        crate::items::ItemMetrics::new(&metrics.registry)?,
        shutdown.clone(),
    ));
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Probes {
            metrics: metrics.clone(),
            mysql: pool,
        });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let server_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "probe server failed");
        }
    });
    tracing::info!(listen = %settings.listen, topic = %settings.topic, group = %settings.group,
        "event processor running");
    loop {
        let consumer = Arc::new(events_consumer(&kafka, &settings)?);
        let lag_stop = shutdown.child_token();
        let lag = tokio::spawn(watch_lag(
            Arc::clone(&consumer),
            settings.topic.clone(),
            metrics.clone(),
            lag_stop.clone(),
        ));
        let ended = consume(&consumer, &audience, &settings, &metrics, &shutdown).await;
        lag_stop.cancel();
        let _ = lag.await;
        if ended == Ended::Shutdown {
            break;
        }
        // Stalled: this consumer is closed (it leaves the group; with Kafka away that can take
        // its request timeout, so not on this task) and a new one joins. Reading restarts from
        // Kafka's committed offsets; the positions in MySQL skip what was already counted.
        metrics.rejoins.inc();
        tokio::task::spawn_blocking(move || drop(consumer));
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The events topic's consumer, subscribed.
fn events_consumer(
    kafka: &KafkaSettings,
    settings: &ProcessorSettings,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = kafka
        .client_config_with(&[
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "10"),
            // Smaller slices of each partition per fetch: the lanes are fed side by side rather
            // than one partition's megabyte at a time.
            ("max.partition.fetch.bytes", "262144"),
            // What is fetched ahead and waits in librdkafka's queue (64 MiB by default): half a
            // second of events at 20,000 a second.
            ("queued.max.messages.kbytes", "8192"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            // A processor that dies hands its partitions on after 10 s, not librdkafka's 45.
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "2000"),
        ])
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the Kafka consumer of events")?;
    consumer
        .subscribe(&[&settings.topic])
        .context("subscribing to the events topic")?;
    Ok(consumer)
}

/// Transactions in flight at once: the topic's partitions are dealt to this many lanes, each
/// folding and committing its own batches in order while the others do theirs.
const LANES: usize = 4;

/// How long a new consumer is given to join its group before the stall watch may judge it:
/// twice the group session, in which the coordinator drops members that went silent (a consumer
/// replaced while Kafka was away, say). Judged sooner, a consumer still joining would be
/// replaced again and again.
const JOIN_GRACE: Duration = Duration::from_secs(20);

/// The longest the consume loop waits for an event before polling the consumer again.
const REPOLL: Duration = Duration::from_secs(1);

/// The group's progress as MySQL records it, at the processor's quiet moments: a group that
/// recorded nothing between two of them while entries wait on the topic is stalled. Kafka's own
/// view can be wrong here: after Kafka came back, a consumer has been seen to sit idle for
/// minutes, its session expired and no partition taken again, with no error to say so.
#[derive(Debug, Default)]
struct StallWatch {
    /// Entries the group had recorded at the last quiet look.
    recorded: Option<i64>,
    /// Quiet looks in a row that could not see the group's progress.
    blind: u32,
}

impl StallWatch {
    /// A quiet look: `recorded` entries in MySQL's positions, `waiting` on the topic beyond them.
    /// True when the group is stalled (and the watch starts over).
    fn check(&mut self, recorded: i64, waiting: i64) -> bool {
        self.blind = 0;
        let stalled = waiting > 0 && self.recorded == Some(recorded);
        self.recorded = (!stalled).then_some(recorded);
        stalled
    }

    /// A quiet look that could not see the group's progress: Kafka (or MySQL) did not answer
    /// this processor's questions. Two in a row, 20 s apart, with nothing received: the consumer
    /// is renewed too, as one that can ask Kafka nothing for that long is no better kept (and
    /// while Kafka is really away, a new one waits for it as well as the old).
    fn blind(&mut self) -> bool {
        self.recorded = None;
        self.blind += 1;
        let stalled = self.blind >= 2;
        if stalled {
            self.blind = 0;
        }
        stalled
    }

    /// An entry arrived: the processor is not stalled.
    fn progressed(&mut self) {
        self.recorded = None;
        self.blind = 0;
    }
}

/// What a quiet processor sees of its group.
#[derive(Debug, PartialEq)]
struct Progress {
    /// Entries the group has recorded: its positions in MySQL.
    recorded: i64,
    /// Entries on the topic beyond those positions, up to the partitions' high watermarks.
    waiting: i64,
    /// This processor holds partitions and has read each to its end: what waits is another
    /// processor's, or in a batch still being committed.
    caught_up: bool,
}

/// The group's progress, and how many partitions this processor holds; what failed when Kafka
/// or MySQL cannot say.
async fn group_progress(
    consumer: &Arc<StreamConsumer>,
    audience: &MySqlAudience,
    settings: &ProcessorSettings,
) -> Result<(Progress, usize), String> {
    let positions = audience
        .positions(&settings.group, &settings.topic)
        .await
        .map_err(|e| format!("positions in MySQL: {e}"))?;
    let consumer = Arc::clone(consumer);
    let topic = settings.topic.clone();
    let (highs, read) = tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| format!("topic metadata: {e}"))?;
        let partitions = metadata
            .topics()
            .first()
            .ok_or("topic metadata: no topic")?
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect::<Vec<i32>>();
        let highs = partitions
            .iter()
            .map(|partition| {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, *partition, timeout)
                    .map_err(|e| format!("high watermark of partition {partition}: {e}"))?;
                Ok((*partition, high))
            })
            .collect::<Result<BTreeMap<i32, i64>, String>>()?;
        // Where this consumer reads each partition it holds (none read yet: not known).
        let read: BTreeMap<i32, Option<i64>> = consumer
            .position()
            .map_err(|e| format!("this consumer's positions: {e}"))?
            .elements_for_topic(&topic)
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(at) => (e.partition(), Some(at)),
                _ => (e.partition(), None),
            })
            .collect();
        Ok::<_, String>((highs, read))
    })
    .await
    .map_err(|e| format!("the look itself: {e}"))??;
    Ok((progress(&positions, &highs, &read), read.len()))
}

/// The progress from each partition's position in MySQL, its high watermark, and where this
/// consumer reads the partitions it holds.
fn progress(
    positions: &BTreeMap<i32, i64>,
    highs: &BTreeMap<i32, i64>,
    read: &BTreeMap<i32, Option<i64>>,
) -> Progress {
    let recorded = positions.values().sum();
    let waiting = highs
        .iter()
        .map(|(partition, high)| (high - positions.get(partition).copied().unwrap_or(0)).max(0))
        .sum();
    let caught_up = !read.is_empty()
        && read.iter().all(|(partition, at)| {
            let high = highs.get(partition).copied().unwrap_or(0);
            at.is_some_and(|at| at >= high)
        });
    Progress {
        recorded,
        waiting,
        caught_up,
    }
}

/// How [`consume`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// The stall watch found the consumer stalled: it is to be replaced.
    Stalled,
}

/// Reads the topic and deals each entry to its partition's lane until `shutdown` or a stall;
/// then the lanes commit what they were handed and stop.
async fn consume(
    consumer: &Arc<StreamConsumer>,
    audience: &MySqlAudience,
    settings: &ProcessorSettings,
    metrics: &EventMetrics,
    shutdown: &CancellationToken,
) -> Ended {
    let per_lane = settings.batch.div_ceil(LANES).max(1);
    // Entries dealt to the lanes and not yet committed: a processor with some is not stalled.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    let mut senders = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        // Bounded: a lane that falls behind stops the reading, and Kafka keeps the rest.
        let (sender, receiver) = tokio::sync::mpsc::channel(2 * per_lane);
        senders.push(sender);
        lanes.spawn(lane(
            receiver,
            Arc::clone(&in_flight),
            Arc::clone(consumer),
            audience.clone(),
            settings.clone(),
            metrics.clone(),
        ));
    }
    let mut quiet_since = tokio::time::Instant::now();
    let mut watch = StallWatch::default();
    let born = tokio::time::Instant::now();
    let mut ended = Ended::Shutdown;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = tokio::time::timeout(REPOLL, consumer.recv()) => match message {
                Ok(message) => message,
                // Nothing for a while: poll again. A waiting `recv` is woken only when the
                // consumer's queue becomes non-empty, and group events (the rejoin after Kafka
                // came back) are served only by a poll.
                Err(_) => {
                    if quiet_since.elapsed() >= settings.stall_check.as_std()
                        && in_flight.load(Ordering::Acquire) == 0
                    {
                        quiet_since = tokio::time::Instant::now();
                        if quiet_look(consumer, audience, settings, &mut watch).await
                            && born.elapsed() >= JOIN_GRACE
                        {
                            tracing::warn!(
                                "the consumer of events looks stalled; replacing it (a new one joins the group)"
                            );
                            ended = Ended::Stalled;
                            break;
                        }
                    }
                    continue;
                }
            },
        };
        let entry = match message {
            Ok(message) => {
                quiet_since = tokio::time::Instant::now();
                watch.progressed();
                read(message, metrics)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the events topic failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let lane = entry.partition.rem_euclid(LANES as i32) as usize;
        in_flight.fetch_add(1, Ordering::AcqRel);
        if senders[lane].send(entry).await.is_err() {
            break;
        }
    }
    drop(senders);
    while lanes.join_next().await.is_some() {}
    ended
}

/// A look at the group's progress after `stall_check` without an entry: true when the
/// consumer is stalled. What it saw is logged when events wait or when it saw nothing, so that
/// a stall leaves a trail.
async fn quiet_look(
    consumer: &Arc<StreamConsumer>,
    audience: &MySqlAudience,
    settings: &ProcessorSettings,
    watch: &mut StallWatch,
) -> bool {
    match group_progress(consumer, audience, settings).await {
        Ok((progress, held)) => {
            if progress.waiting > 0 {
                tracing::info!(
                    recorded = progress.recorded,
                    waiting = progress.waiting,
                    caught_up = progress.caught_up,
                    partitions_held = held,
                    "no event for a while, and events wait"
                );
            }
            watch.check(progress.recorded, progress.waiting) && !progress.caught_up
        }
        Err(reason) => {
            tracing::info!(%reason, "no event for a while, and the group's progress is unknown");
            watch.blind()
        }
    }
}

/// One lane: takes the entries dealt to it in batches of up to `batch / LANES` (waiting at most
/// `batch_wait` to fill one) and commits each before the next, so a partition's entries are
/// committed in order. Partitions never share a person, so lanes never touch the same rows.
async fn lane(
    mut entries: tokio::sync::mpsc::Receiver<Positioned>,
    in_flight: Arc<AtomicUsize>,
    consumer: Arc<StreamConsumer>,
    audience: MySqlAudience,
    settings: ProcessorSettings,
    metrics: EventMetrics,
) {
    let per_lane = settings.batch.div_ceil(LANES).max(1);
    let mut batch = Vec::with_capacity(per_lane);
    while let Some(first) = entries.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.batch_wait.as_std();
        while batch.len() < per_lane {
            match tokio::time::timeout_at(deadline, entries.recv()).await {
                Ok(Some(entry)) => batch.push(entry),
                Ok(None) | Err(_) => break,
            }
        }
        commit(&audience, &settings, &metrics, &batch).await;
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for entry in &batch {
            let at = last.entry(entry.partition).or_default();
            *at = (*at).max(entry.offset);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &last {
            // Kafka's position is only where to start: the truth is in MySQL.
            let _ = offsets.add_partition_offset(
                &settings.topic,
                *partition,
                Offset::Offset(offset + 1),
            );
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(error = %e, "committing Kafka offsets failed (MySQL holds the truth)");
        }
        in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        batch.clear();
    }
}

/// The entry a message holds. An unreadable one is counted and passed over; its position is
/// committed all the same, so that what lies beyond the positions is exactly what is left to
/// read (what the stall watch counts as waiting).
fn read(message: rdkafka::message::BorrowedMessage<'_>, metrics: &EventMetrics) -> Positioned {
    let entry = message
        .payload()
        .and_then(|p| serde_json::from_slice::<LogEntry>(p).ok());
    if entry.is_none() {
        metrics.unreadable.inc();
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            "skipping an unreadable event log entry"
        );
    }
    Positioned {
        partition: message.partition(),
        offset: message.offset(),
        entry,
    }
}

/// Commits `batch`, retrying until it is in: the next batch must not pass it.
async fn commit(
    audience: &MySqlAudience,
    settings: &ProcessorSettings,
    metrics: &EventMetrics,
    batch: &[Positioned],
) {
    if batch.is_empty() {
        return;
    }
    let mut failures = 0;
    loop {
        let timer = metrics.batch_seconds.start_timer();
        match audience
            .process(&settings.group, &settings.topic, batch, Utc::now())
            .await
        {
            Ok(report) => {
                timer.observe_duration();
                metrics.record(&report);
                let now = Utc::now();
                for entry in batch.iter().filter_map(|p| p.entry.as_ref()) {
                    if matches!(
                        entry.queued.input,
                        ump_automation::event::Input::Event { .. }
                    ) {
                        let waited = (now - entry.queued.received_at)
                            .to_std()
                            .unwrap_or_default();
                        metrics.visible_seconds.observe(waited.as_secs_f64());
                    }
                }
                return;
            }
            Err(e) => {
                timer.stop_and_discard();
                metrics.failures.inc();
                failures += 1;
                if e.is_deadlock() && failures <= 3 {
                    // Nothing was written; the documented remedy is to run it again at once.
                    tracing::debug!(error = %e, entries = batch.len(), "a batch lost a deadlock; retrying");
                    continue;
                }
                tracing::warn!(error = %e, entries = batch.len(), "committing a batch of events failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// How long a claimed wake-up waits for its recheck before it is claimed again.
const WAKE_RETRY: chrono::Duration = chrono::Duration::seconds(30);

/// Puts a recheck of every person whose wake-up is due on the events topic.
async fn wake_ups(
    audience: MySqlAudience,
    log: KafkaEventLog,
    metrics: EventMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(crate::WAKE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let now = Utc::now();
            let claimed = match audience.claim_due(now, now + WAKE_RETRY, 1000).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming due wake-ups failed");
                    break;
                }
            };
            let mut by_tenant: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
            for (tenant, user) in &claimed {
                by_tenant
                    .entry(tenant.clone())
                    .or_default()
                    .push(Queued::recheck(user, now));
            }
            for (tenant, entries) in by_tenant {
                match log.append(&tenant, &entries).await {
                    Ok(()) => metrics.wakeups.inc_by(entries.len() as u64),
                    // The claims expire in WAKE_RETRY and are taken again.
                    Err(e) => tracing::warn!(error = %e, "queueing rechecks failed"),
                }
            }
            if claimed.len() < 1000 {
                break;
            }
        }
    }
}

/// Keeps `ump_event_backlog` at the lag of this processor's partitions.
async fn watch_lag(
    consumer: Arc<StreamConsumer>,
    topic: String,
    metrics: EventMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let consumer = Arc::clone(&consumer);
        let topic = topic.clone();
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = consumer.position().ok()?;
            let mut lag = 0;
            for element in positions.elements_for_topic(&topic) {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, element.partition(), Duration::from_secs(2))
                    .ok()?;
                if let Offset::Offset(at) = element.offset() {
                    lag += (high - at).max(0);
                }
            }
            Some(lag)
        })
        .await;
        if let Ok(Some(lag)) = lag {
            metrics.backlog.set(lag);
        }
    }
}

/// Creates the events topic when it is missing; a failure is logged, not fatal (an
/// administrator may own topic creation).
async fn ensure_topic(kafka: &KafkaSettings, settings: &ProcessorSettings) {
    let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
        Ok(admin) => admin,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a Kafka admin client");
            return;
        }
    };
    let topic = NewTopic::new(
        &settings.topic,
        settings.partitions,
        TopicReplication::Fixed(settings.replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics([&topic], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => tracing::info!(topic = %name, "created the events topic"),
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        tracing::warn!(topic = %name, error = %code, "cannot create the events topic")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot create the events topic"),
    }
}

#[derive(Clone)]
struct Probes {
    metrics: EventMetrics,
    mysql: sqlx::MySqlPool,
}

async fn readyz(State(probes): State<Probes>) -> Response {
    match sqlx::query("SELECT 1").execute(&probes.mysql).await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("mysql: {e}")).into_response(),
    }
}

async fn metrics_text(State(probes): State<Probes>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&probes.metrics.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_quiet_looks_without_progress_while_entries_wait_are_a_stall() {
        let mut watch = StallWatch::default();
        assert!(!watch.check(8_000, 8_000), "a first look only notes");
        assert!(
            watch.check(8_000, 8_000),
            "nothing recorded since, entries wait"
        );
        // The watch starts over after a stall: the new consumer gets its time.
        assert!(!watch.check(8_000, 8_000));
        assert!(watch.check(8_000, 8_000));
    }

    #[test]
    fn two_quiet_looks_in_a_row_that_see_nothing_are_a_stall() {
        let mut watch = StallWatch::default();
        assert!(!watch.blind());
        assert!(watch.blind(), "40 s quiet and unable to ask Kafka anything");
        // Seeing again in between starts the count over, and so does an entry.
        assert!(!watch.blind());
        assert!(!watch.check(8_000, 0));
        assert!(!watch.blind());
        watch.progressed();
        assert!(!watch.blind());
        // A blind look is no first look at the progress either.
        assert!(!watch.check(8_000, 8_000));
        assert!(!watch.blind());
        assert!(
            !watch.check(8_000, 8_000),
            "the blind look in between started it over"
        );
    }

    #[test]
    fn progress_or_an_empty_topic_is_no_stall() {
        let mut watch = StallWatch::default();
        assert!(!watch.check(8_000, 8_000));
        // Another processor recorded entries meanwhile.
        assert!(!watch.check(8_500, 7_500));
        // Nothing waits: an idle group is not a stalled one.
        assert!(!watch.check(16_000, 0));
        assert!(!watch.check(16_000, 0));
        // An entry arrived here between two looks: the watch starts over.
        watch.progressed();
        assert!(!watch.check(16_000, 10));
    }

    #[test]
    fn the_backlog_counts_each_partition_from_its_position() {
        let positions = BTreeMap::from([(0, 100), (1, 250)]);
        // Partition 2 has no position yet: all of it waits. A position past the watermark
        // (a topic recreated) counts as nothing waiting, not less than nothing.
        let highs = BTreeMap::from([(0, 120), (1, 240), (2, 5)]);
        let progress = progress(&positions, &highs, &BTreeMap::new());
        assert_eq!((progress.recorded, progress.waiting), (350, 25));
        assert!(
            !progress.caught_up,
            "a processor holding nothing has read nothing"
        );
    }

    #[test]
    fn a_processor_that_read_its_partitions_to_the_end_is_caught_up() {
        let positions = BTreeMap::from([(0, 100), (1, 250)]);
        let highs = BTreeMap::from([(0, 120), (1, 250)]);
        // Partition 0's last 20 entries were read and passed over (unreadable): no position
        // covers them, and no new consumer would.
        let read = BTreeMap::from([(0, Some(120)), (1, Some(250))]);
        assert!(progress(&positions, &highs, &read).caught_up);
        // Behind on a partition it holds, or not reading it at all: not caught up.
        let behind = BTreeMap::from([(0, Some(110)), (1, Some(250))]);
        assert!(!progress(&positions, &highs, &behind).caught_up);
        let idle = BTreeMap::from([(0, None), (1, Some(250))]);
        assert!(!progress(&positions, &highs, &idle).caught_up);
    }
}

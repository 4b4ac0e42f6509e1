//! The bulk path of one channel: consume the channel's Kafka topic in batches, run the pipeline,
//! make the outcome durable (history + parked messages in one MySQL transaction, dead letters in
//! Kafka), and only then commit the offsets. A crash anywhere before the commit means the batch is
//! consumed again, which the pipeline's dedupe keys and the history's idempotent writes absorb.
//!
//! The topic is a [`Transport`] settled in order (`transport::drive`): up to
//! `BatchSettings::in_flight` batches are delivered at once, so a batch's slowest calls do not
//! leave the provider idle, and a batch is made durable while the next ones are delivered, so the
//! history write overlaps the provider calls; batches are made durable and committed in the order
//! they were consumed.
//!
//! Once the group's committed offsets cover a batch, it is never consumed again, so the
//! per-message dedupe keys of its sent messages are deleted (`forget_committed`): Redis holds
//! the messages in flight, not every message of the last day.
//!
//! Beside it runs the scheduler: parked messages that are due go back onto the topic.

use crate::metrics::WorkerMetrics;
use crate::pause::until_available;
use crate::pipeline::{Aborted, BatchOutcome, DeliveryPipeline};
use crate::transport::{Batch, Shape, Transport, drive};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ump_core::history::{Claim, Claimed, HistoryStore};
use ump_core::model::Envelope;
use ump_core::queue::KafkaSettings;

/// How a consumer batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    pub max_messages: usize,
    pub max_wait: Duration,
    /// Batches delivered at once (at least 1).
    pub in_flight: usize,
}

/// The next offset of each (topic, partition).
type Offsets = BTreeMap<(String, i32), i64>;

pub struct ChannelConsumer {
    pipeline: Arc<DeliveryPipeline>,
    source: Arc<KafkaTopic>,
    /// The settled keys of each committed batch, for `forget_committed` (taken by `run`).
    settled: Option<mpsc::UnboundedReceiver<(Offsets, Vec<String>)>>,
}

/// A channel's topic as a [`Transport`]: batches consumed from it, settled by making their
/// outcome durable (history and parked messages in one MySQL transaction, dead letters in the
/// dead-letter topic) and then committing their offsets, in the order they were consumed.
struct KafkaTopic {
    consumer: Arc<StreamConsumer>,
    topic: String,
    batch: BatchSettings,
    /// The messages of the batch being gathered: kept here, not in `next_batch`'s future, so a
    /// call dropped mid-batch loses none of them.
    gathering: tokio::sync::Mutex<Gathering>,
    /// The next offset of each partition, as last committed (asynchronously): committed once more,
    /// synchronously, when the consumer stops.
    committed: std::sync::Mutex<Offsets>,
    producer: FutureProducer,
    history: Arc<dyn HistoryStore>,
    metrics: WorkerMetrics,
    dead_letter_topic: String,
    /// A committed batch's offsets and settled keys, for `forget_committed`.
    settled: mpsc::UnboundedSender<(Offsets, Vec<String>)>,
    /// Told when what a batch parked falls due.
    alarm: ParkingAlarm,
}

#[derive(Default)]
struct Gathering {
    messages: Vec<OwnedMessage>,
    /// When the batch is handed over however few messages it has (set by its first message).
    until: Option<tokio::time::Instant>,
}

/// What settles a consumed batch: the offsets it covers, and the messages that could not be
/// decoded (dead-lettered as they are).
struct Consumed {
    next_offsets: Offsets,
    undecodable: Vec<OwnedMessage>,
}

/// The longest the consume loop waits for a message before polling the consumer again.
const REPOLL: Duration = Duration::from_secs(1);

impl ChannelConsumer {
    pub fn new(
        pipeline: Arc<DeliveryPipeline>,
        kafka: &KafkaSettings,
        producer: FutureProducer,
        history: Arc<dyn HistoryStore>,
        metrics: WorkerMetrics,
        batch: BatchSettings,
        alarm: ParkingAlarm,
    ) -> anyhow::Result<Self> {
        let resource = &pipeline.channel.resource;
        let topic = resource.topic_name();
        let consumer: StreamConsumer = kafka
            .client_config_with(&[
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "2000"),
                // A fetch waits up to 10 ms for 64 KiB rather than returning each message on its
                // own: far fewer fetches for Kafka and the worker at a moderate rate, for ~10 ms
                // more bulk latency — cores the realtime path, sharing the machine, gets instead
                // (BENCHMARKS.md, "Realtime path").
                ("fetch.wait.max.ms", "10"),
                ("fetch.min.bytes", "65536"),
            ])
            // Offsets are committed by hand, after the outcome is recorded.
            .set("group.id", resource.consumer_group())
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let (settle, settled) = mpsc::unbounded_channel();
        let source = Arc::new(KafkaTopic {
            consumer: Arc::new(consumer),
            topic,
            batch,
            gathering: tokio::sync::Mutex::default(),
            committed: std::sync::Mutex::default(),
            producer,
            history,
            metrics,
            dead_letter_topic: resource.dead_letter_topic(),
            settled: settle,
            alarm,
        });
        Ok(Self {
            pipeline,
            source,
            settled: Some(settled),
        })
    }

    /// Consumes until `cancel` fires; the batches in hand are finished (recorded and committed)
    /// first, unless a dependency they wait for is down.
    pub async fn run(mut self, cancel: CancellationToken) {
        let consumer = Arc::clone(&self.source.consumer);
        let topic = self.source.topic.clone();
        let lag = tokio::spawn(report_lag(
            Arc::clone(&consumer),
            self.source.metrics.clone(),
            self.pipeline.channel.name(),
            cancel.clone(),
        ));
        let forgetting = self.settled.take().map(|batches| {
            tokio::spawn(forget_committed(
                Arc::clone(&self.pipeline),
                Arc::clone(&consumer),
                batches,
            ))
        });
        tracing::info!(%topic, "consuming");
        // Kafka's `next_batch` never fails: a consume error is retried there.
        let _ = drive(self.pipeline, self.source, &cancel).await;
        // The last commits are looked at once the batches stop coming (the transport, and with
        // it the sender of the settled batches, is gone with `drive`).
        if let Some(forgetting) = forgetting
            && tokio::time::timeout(Duration::from_secs(2), forgetting)
                .await
                .is_err()
        {
            tracing::debug!("settled keys of the last batches left to expire");
        }
        lag.abort();
        tracing::info!(%topic, "consumer stopped");
    }
}

#[async_trait::async_trait]
impl Transport for KafkaTopic {
    type Receipt = Consumed;

    fn shape(&self) -> Shape {
        Shape::InOrder {
            in_flight: self.batch.in_flight,
        }
    }

    fn home(&self) -> &str {
        &self.topic
    }

    /// Gathers up to `max_messages`, for at most `max_wait` after the first.
    async fn next_batch(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Batch<Consumed>>> {
        let mut gathering = self.gathering.lock().await;
        while gathering.messages.is_empty() {
            let first = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                message = tokio::time::timeout(REPOLL, self.consumer.recv()) => match message {
                    Ok(message) => message,
                    // Nothing for a while: poll again. A waiting `recv` is woken only when the
                    // consumer's queue becomes non-empty, and group events (a rebalance after the
                    // broker came back) are served only by a poll; in the Kafka-restart fault test
                    // a worker sometimes sat waiting after its session expired and never rejoined.
                    Err(_) => continue,
                },
            };
            match first {
                Ok(message) => {
                    gathering.messages.push(message.detach());
                    gathering.until = Some(tokio::time::Instant::now() + self.batch.max_wait);
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let until = gathering.until.unwrap_or_else(tokio::time::Instant::now);
        while gathering.messages.len() < self.batch.max_messages {
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Ok(Ok(message)) => gathering.messages.push(message.detach()),
                Ok(Err(e)) => tracing::warn!(error = %e, "Kafka consume error"),
                Err(_) => break,
            }
        }
        let messages = std::mem::take(&mut gathering.messages);
        Ok(Some(self.decode(messages)))
    }

    async fn settle(
        &self,
        outcome: BatchOutcome,
        consumed: Consumed,
        cancel: &CancellationToken,
    ) -> Result<(), Aborted> {
        let Consumed {
            next_offsets,
            undecodable,
        } = consumed;
        let started = Instant::now();
        until_available("mysql", &self.metrics, cancel, || {
            self.history.record(&outcome.record)
        })
        .await?;
        self.metrics
            .history_write_seconds
            .observe(started.elapsed().as_secs_f64());
        for deferred in &outcome.record.deferred {
            self.alarm.set(deferred.due_at);
        }

        for envelope in &outcome.dead_letters {
            let payload = serde_json::to_vec(envelope).unwrap_or_default();
            until_available("kafka", &self.metrics, cancel, || {
                self.publish(&envelope.to, &payload)
            })
            .await?;
        }
        for message in &undecodable {
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let payload = message.payload().unwrap_or_default();
            until_available("kafka", &self.metrics, cancel, || {
                self.publish(&key, payload)
            })
            .await?;
        }

        // Asynchronous: a synchronous commit has no timeout, and while the group coordinator is
        // away it would wait, with the consume loop waiting on it instead of polling, which the
        // consumer needs in order to rejoin its group. A commit that fails (a rebalance took the
        // partition) only means the batch is consumed again, and its dedupe keys turn it into
        // "already sent".
        let offsets = offset_list(&next_offsets);
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the batch will be consumed again");
        }
        if !outcome.settled_keys.is_empty() {
            let _ = self
                .settled
                .send((next_offsets.clone(), outcome.settled_keys));
        }
        if let Ok(mut committed) = self.committed.lock() {
            committed.extend(next_offsets);
        }
        Ok(())
    }

    /// Commits the last offsets of the partitions it still owns again, synchronously (5 s at
    /// most), so a consumer that stops leaves nothing it finished to be consumed again.
    async fn finish(&self) {
        let owned: BTreeSet<(String, i32)> = match self.consumer.assignment() {
            Ok(assignment) => assignment
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
            Err(_) => return,
        };
        let offsets = match self.committed.lock() {
            Ok(committed) => {
                let mine: Offsets = committed
                    .iter()
                    .filter(|(partition, _)| owned.contains(*partition))
                    .map(|(partition, offset)| (partition.clone(), *offset))
                    .collect();
                if mine.is_empty() {
                    return;
                }
                offset_list(&mine)
            }
            Err(_) => return,
        };
        let consumer = Arc::clone(&self.consumer);
        let commit =
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
        match tokio::time::timeout(Duration::from_secs(5), commit).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final offset commit failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "final offset commit task failed"),
            Err(_) => tracing::warn!("final offset commit took over 5 s; left to Kafka"),
        }
    }
}

impl KafkaTopic {
    /// Decodes a consumed batch: the envelopes, the offsets it covers, and what could not be
    /// decoded.
    fn decode(&self, messages: Vec<OwnedMessage>) -> Batch<Consumed> {
        self.metrics.batch_size.observe(messages.len() as f64);
        let mut next_offsets = Offsets::new();
        let mut envelopes = Vec::with_capacity(messages.len());
        let mut undecodable = Vec::new();
        for message in messages {
            let slot = next_offsets
                .entry((message.topic().to_owned(), message.partition()))
                .or_insert(0);
            *slot = (*slot).max(message.offset() + 1);
            match message.payload().map(serde_json::from_slice::<Envelope>) {
                Some(Ok(envelope)) => envelopes.push(envelope),
                other => {
                    let error = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "empty payload".to_owned(),
                    };
                    tracing::error!(partition = message.partition(), offset = message.offset(), %error, "undecodable message: dead-lettered");
                    undecodable.push(message);
                }
            }
        }
        Batch {
            envelopes,
            receipt: Consumed {
                next_offsets,
                undecodable,
            },
        }
    }

    async fn publish(&self, key: &str, payload: &[u8]) -> Result<(), rdkafka::error::KafkaError> {
        self.producer
            .send(
                FutureRecord::to(&self.dead_letter_topic)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

fn offset_list(next_offsets: &Offsets) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in next_offsets {
        if let Err(e) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::error!(error = %e, "building the offset commit");
        }
    }
    offsets
}

/// How long a committed batch's keys wait for the group's committed offsets to cover it. A
/// commit that never lands failed (its partition moved on): the batch comes back, and its keys
/// must stay.
const UNCONFIRMED_FOR: Duration = Duration::from_secs(600);
/// How often the committed offsets are read while batches wait.
const CHECK_COMMITS_EVERY: Duration = Duration::from_millis(500);

/// Deletes the settled keys of each batch once the group's committed offsets (read from the
/// coordinator: commits are asynchronous, and librdkafka reports a manual one to no one) cover
/// it. A committed offset covers every earlier batch of its partition, whoever committed it.
async fn forget_committed(
    pipeline: Arc<DeliveryPipeline>,
    consumer: Arc<StreamConsumer>,
    mut batches: mpsc::UnboundedReceiver<(Offsets, Vec<String>)>,
) {
    let mut pending: VecDeque<(Instant, Offsets, Vec<String>)> = VecDeque::new();
    let mut open = true;
    while open {
        if pending.is_empty() {
            match batches.recv().await {
                Some((offsets, keys)) => pending.push_back((Instant::now(), offsets, keys)),
                None => return,
            }
        }
        tokio::time::sleep(CHECK_COMMITS_EVERY).await;
        loop {
            match batches.try_recv() {
                Ok((offsets, keys)) => pending.push_back((Instant::now(), offsets, keys)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let Some(committed) = committed_offsets(&consumer, &pending).await else {
            continue;
        };
        let keys = covered_keys(&mut pending, &committed, Instant::now());
        if !keys.is_empty() {
            pipeline.forget(&keys, Duration::ZERO).await;
        }
    }
}

/// The group's committed offsets of the partitions `pending` batches came from.
async fn committed_offsets(
    consumer: &Arc<StreamConsumer>,
    pending: &VecDeque<(Instant, Offsets, Vec<String>)>,
) -> Option<Offsets> {
    let partitions: Offsets = pending
        .iter()
        .flat_map(|(_, offsets, _)| offsets.keys())
        .map(|partition| (partition.clone(), 0))
        .collect();
    let consumer = Arc::clone(consumer);
    let read = tokio::task::spawn_blocking(move || {
        consumer.committed_offsets(offset_list(&partitions), Duration::from_secs(5))
    });
    match read.await {
        Ok(Ok(list)) => Some(
            list.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(next) => Some(((e.topic().to_owned(), e.partition()), next)),
                    _ => None,
                })
                .collect(),
        ),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading the committed offsets failed");
            None
        }
        Err(_) => None,
    }
}

/// Takes out the keys of the batches whose every offset `committed` covers, and drops batches
/// waiting longer than `UNCONFIRMED_FOR` at `now` (their keys then expire on their own).
fn covered_keys(
    pending: &mut VecDeque<(Instant, Offsets, Vec<String>)>,
    committed: &Offsets,
    now: Instant,
) -> Vec<String> {
    let mut keys = Vec::new();
    pending.retain_mut(|(since, offsets, batch_keys)| {
        let covered = offsets
            .iter()
            .all(|(partition, next)| committed.get(partition).is_some_and(|c| c >= next));
        if covered {
            keys.append(batch_keys);
            false
        } else {
            now.saturating_duration_since(*since) < UNCONFIRMED_FOR
        }
    });
    keys
}

/// Publishes consumer lag over the assigned partitions (`ump_core::queue::total_lag`).
async fn report_lag(
    consumer: Arc<StreamConsumer>,
    metrics: WorkerMetrics,
    channel: String,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let consumer = Arc::clone(&consumer);
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let assignment = consumer.assignment().ok()?;
            let committed = consumer
                .committed_offsets(assignment, Duration::from_secs(5))
                .ok()?;
            // One topic: partitions are the keys.
            let (mut low, mut high, mut done) = (HashMap::new(), HashMap::new(), HashMap::new());
            for element in committed.elements() {
                let partition = element.partition();
                let (start, end) = consumer
                    .fetch_watermarks(element.topic(), partition, Duration::from_secs(5))
                    .ok()?;
                low.insert(partition, start);
                high.insert(partition, end);
                if let Offset::Offset(offset) = element.offset() {
                    done.insert(partition, offset);
                }
            }
            Some(ump_core::queue::total_lag(&low, &high, &done))
        })
        .await
        .ok()
        .flatten();
        if let Some(lag) = lag {
            metrics
                .consumer_lag
                .with_label_values(&[channel.as_str()])
                .set(lag);
        }
    }
}

/// Publishes parked messages that are due back onto their topics, and sweeps the parkings for
/// ones whose republished copy went missing.
pub struct Scheduler {
    pub history: Arc<dyn HistoryStore>,
    pub producer: FutureProducer,
    pub queues: Vec<String>,
    pub metrics: WorkerMetrics,
    /// When what this process parked falls due: the scheduler wakes then instead of at its next
    /// poll.
    pub alarm: ParkingAlarm,
    /// How often it looks for due messages it has no alarm for: parked by another process (one
    /// that stopped, or one whose alarm was full).
    pub poll: Duration,
}

/// How long a claim keeps other schedulers off a parked message.
const LEASE: Duration = Duration::from_secs(30);
/// How often the parkings are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long after its publication a parked message may go without an outcome before the sweep
/// parks it again: well past any consumer lag a healthy channel has, since the copy it publishes
/// then is a second one whenever the first was only slow (the dedupe absorbs it).
pub const REPARK_AFTER: Duration = Duration::from_secs(600);
/// The most messages one claim takes; a full claim is followed by the next at once.
const CLAIM_LIMIT: u32 = 500;

impl Scheduler {
    pub async fn run(self, cancel: CancellationToken) {
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_sweep {
                self.sweep().await;
                next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
            }
            // The claim below covers every parking due by now, those the alarm knows of too.
            self.alarm.clear_through(chrono::Utc::now());
            if self.publish_due().await >= CLAIM_LIMIT as usize {
                continue;
            }
            // A poll of zero would claim in a loop: at least 10 ms between polls.
            let poll = tokio::time::Instant::now() + self.poll.max(Duration::from_millis(10));
            // A parking that falls due before the poll moves the wake-up earlier; a later one
            // waits for the poll that finds it.
            loop {
                let wait = wake_in(chrono::Utc::now(), self.alarm.earliest())
                    .min(poll.saturating_duration_since(tokio::time::Instant::now()));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => break,
                    _ = self.alarm.rung() => {}
                }
            }
        }
    }

    /// Claims what is due, publishes it, and releases what was published; returns how many
    /// messages it claimed.
    async fn publish_due(&self) -> usize {
        let now = chrono::Utc::now();
        let claimed = match self
            .history
            .claim_due(&self.queues, now, LEASE, CLAIM_LIMIT)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "reading parked messages failed");
                return 0;
            }
        };
        if claimed.is_empty() {
            return 0;
        }
        for Claimed { deferred, .. } in &claimed {
            let late = (now - deferred.due_at).to_std().unwrap_or_default();
            self.metrics
                .parked_publish_delay_seconds
                .observe(late.as_secs_f64());
        }
        let sends = claimed.iter().map(|Claimed { deferred, claim }| {
            let payload = serde_json::to_vec(&deferred.envelope).unwrap_or_default();
            let producer = self.producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&deferred.queue)
                            .key(&deferred.envelope.to)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|_| *claim)
            }
        });
        let published: Vec<Claim> = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        // What failed to publish stays parked and is claimed again after the lease.
        if let Err(e) = self.history.release(&published).await {
            tracing::warn!(error = %e, "releasing published messages failed; they will be published again");
        }
        claimed.len()
    }

    async fn sweep(&self) {
        sweep_parking(self.history.as_ref(), &self.queues, &self.metrics).await;
    }
}

/// The due times of the messages this process parked (retries, `send_at`, quiet hours), so that
/// its scheduler publishes each when it falls due rather than at its next poll: with a 200 ms
/// backoff and a 250 ms poll, a retry would otherwise go out up to 450 ms after its failure.
/// Parkings by other processes are found by the poll. Cheap to clone (one shared state).
#[derive(Clone, Default)]
pub struct ParkingAlarm(Arc<AlarmState>);

#[derive(Default)]
struct AlarmState {
    due: std::sync::Mutex<BTreeSet<DateTime<Utc>>>,
    rung: tokio::sync::Notify,
}

/// The most due times an alarm keeps: past it, the latest are dropped and found by the poll.
const ALARM_CAPACITY: usize = 4096;
/// Due times within this of each other are one wake-up: one claim takes them all, so however
/// many retries fall due, the scheduler claims at most 50 times a second.
const ALARM_GRAIN_MICROS: i64 = 20_000;

impl ParkingAlarm {
    /// A message parked until `at` (recorded and committed).
    pub fn set(&self, at: DateTime<Utc>) {
        // Rounded up: woken at or after `at`, the claim finds the message due.
        let micros = at.timestamp_micros();
        let at = DateTime::from_timestamp_micros(
            micros.div_euclid(ALARM_GRAIN_MICROS) * ALARM_GRAIN_MICROS
                + if micros.rem_euclid(ALARM_GRAIN_MICROS) == 0 {
                    0
                } else {
                    ALARM_GRAIN_MICROS
                },
        )
        .unwrap_or(at);
        let earlier = {
            let Ok(mut due) = self.0.due.lock() else {
                return;
            };
            if due.contains(&at) {
                return;
            }
            if due.len() >= ALARM_CAPACITY {
                match due.last() {
                    Some(&latest) if at < latest => {
                        due.pop_last();
                    }
                    _ => return,
                }
            }
            let earlier = due.first().is_none_or(|&first| at < first);
            due.insert(at);
            earlier
        };
        if earlier {
            self.0.rung.notify_one();
        }
    }

    /// The earliest due time it knows of.
    fn earliest(&self) -> Option<DateTime<Utc>> {
        self.0.due.lock().ok().and_then(|due| due.first().copied())
    }

    /// Forgets the due times up to `now`: a claim at `now` covers them.
    fn clear_through(&self, now: DateTime<Utc>) {
        if let Ok(mut due) = self.0.due.lock() {
            due.retain(|&at| at > now);
        }
    }

    /// Completes when a parking earlier than every known one was set (at once when one was
    /// set since the last wait).
    async fn rung(&self) {
        self.0.rung.notified().await;
    }
}

/// How long the scheduler may sleep at `now` when `earliest` is the alarm's earliest due time.
fn wake_in(now: DateTime<Utc>, earliest: Option<DateTime<Utc>>) -> Duration {
    earliest.map_or(Duration::MAX, |at| (at - now).to_std().unwrap_or_default())
}

/// Sweeps the parked messages of `queues` once (`HistoryStore::sweep_parking`) and reports what
/// it found in the metrics and, for repairs, the log.
pub async fn sweep_parking(history: &dyn HistoryStore, queues: &[String], metrics: &WorkerMetrics) {
    match history
        .sweep_parking(queues, chrono::Utc::now(), REPARK_AFTER)
        .await
    {
        Ok(health) => {
            metrics
                .parked_overdue
                .set(i64::try_from(health.overdue).unwrap_or(i64::MAX));
            metrics
                .scheduled_unparked
                .set(i64::try_from(health.reparked).unwrap_or(i64::MAX));
            metrics.parking_repairs.inc_by(health.reparked);
            if health.reparked > 0 {
                tracing::warn!(
                    count = health.reparked,
                    "parked messages whose republished copy never came back were parked again"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweeping parked messages failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(list: &[(i32, i64)]) -> Offsets {
        list.iter()
            .map(|(partition, next)| (("t".to_owned(), *partition), *next))
            .collect()
    }

    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + millis).unwrap()
    }

    #[test]
    fn the_alarm_wakes_the_scheduler_at_the_earliest_parking_and_no_earlier() {
        let alarm = ParkingAlarm::default();
        assert_eq!(alarm.earliest(), None);
        alarm.set(at(400));
        alarm.set(at(200));
        alarm.set(at(900));
        assert_eq!(alarm.earliest(), Some(at(200)));
        // Rounded up to the grain: never woken before the message is due.
        alarm.set(at(101) + chrono::Duration::microseconds(300));
        assert_eq!(alarm.earliest(), Some(at(120)));
        assert_eq!(
            wake_in(at(20), alarm.earliest()),
            Duration::from_millis(100)
        );
        // Due already: no sleep. Nothing known: no wake-up of its own.
        assert_eq!(wake_in(at(300), alarm.earliest()), Duration::ZERO);
        assert_eq!(wake_in(at(0), None), Duration::MAX);
    }

    #[test]
    fn a_claim_clears_what_fell_due_and_the_next_parking_is_kept() {
        let alarm = ParkingAlarm::default();
        for millis in [200, 400, 900] {
            alarm.set(at(millis));
        }
        alarm.clear_through(at(400));
        assert_eq!(alarm.earliest(), Some(at(900)));
        alarm.clear_through(at(1000));
        assert_eq!(alarm.earliest(), None);
    }

    #[test]
    fn a_full_alarm_keeps_the_earliest_parkings() {
        let alarm = ParkingAlarm::default();
        let capacity = i64::try_from(ALARM_CAPACITY).unwrap();
        for i in 0..capacity {
            alarm.set(at(100 + 20 * i));
        }
        // Later than all it holds: left to the poll. One it holds already: nothing changes.
        alarm.set(at(100 + 20 * capacity));
        alarm.set(at(100));
        assert_eq!(alarm.0.due.lock().unwrap().len(), ALARM_CAPACITY);
        // Earlier: kept, and the latest goes.
        alarm.set(at(40));
        let due = alarm.0.due.lock().unwrap();
        assert_eq!(due.len(), ALARM_CAPACITY);
        assert_eq!(due.first(), Some(&at(40)));
        assert_eq!(due.last(), Some(&at(100 + 20 * (capacity - 2))));
    }

    #[tokio::test]
    async fn only_a_parking_earlier_than_every_known_one_rings() {
        let alarm = ParkingAlarm::default();
        alarm.set(at(500));
        // The permit of that first parking.
        tokio::time::timeout(Duration::from_secs(5), alarm.rung())
            .await
            .expect("the first parking rings");
        alarm.set(at(800));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), alarm.rung())
                .await
                .is_err(),
            "a later parking changes no wake-up"
        );
        let waiting = tokio::spawn({
            let alarm = alarm.clone();
            async move { alarm.rung().await }
        });
        alarm.set(at(300));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("an earlier parking wakes the waiting scheduler")
            .unwrap();
    }

    #[test]
    fn a_batch_is_forgotten_once_every_one_of_its_partitions_is_committed() {
        let now = Instant::now();
        let mut pending = VecDeque::from([
            (now, offsets(&[(0, 10), (1, 5)]), vec!["a".to_owned()]),
            (now, offsets(&[(0, 20)]), vec!["b".to_owned()]),
            (now, offsets(&[(1, 9)]), vec!["c".to_owned()]),
        ]);
        // Nothing of partition 1 is committed yet: only the batch of partition 0 alone goes.
        let committed = offsets(&[(0, 20)]);
        assert_eq!(covered_keys(&mut pending, &committed, now), vec!["b"]);
        // A commit covers the earlier batches of its partition too.
        let committed = offsets(&[(0, 20), (1, 9)]);
        assert_eq!(covered_keys(&mut pending, &committed, now), vec!["a", "c"]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_batch_never_confirmed_is_dropped_with_its_keys_kept() {
        let since = Instant::now();
        let mut pending = VecDeque::from([(since, offsets(&[(0, 10)]), vec!["a".to_owned()])]);
        let later = since + UNCONFIRMED_FOR - Duration::from_secs(1);
        assert!(covered_keys(&mut pending, &Offsets::new(), later).is_empty());
        assert_eq!(pending.len(), 1);
        let too_late = since + UNCONFIRMED_FOR + Duration::from_secs(1);
        assert!(covered_keys(&mut pending, &Offsets::new(), too_late).is_empty());
        assert!(pending.is_empty());
    }
}

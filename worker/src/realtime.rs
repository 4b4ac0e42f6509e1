//! The realtime path of a worker: the ActiveMQ queue of each realtime channel, consumed over AMQP
//! 1.0 beside the Kafka partitions, through the same delivery pipeline.
//!
//! **Never behind the bulk backlog.** The realtime consumers run on a thread and a tokio runtime
//! of their own, with their own Redis, MySQL and provider connections: bulk work, however much of
//! it is queued, never sits in front of a realtime message in a run queue or on a connection. The
//! two share only the OS scheduler and the channel's rate limit, in which realtime keeps a reserve
//! the bulk path cannot use ([`BulkShare`]).
//!
//! **Flow control** is AMQP link credit: the broker hands a worker at most `credit` unsettled
//! messages per queue (split over its [`LINKS`] links), and a message is settled only after its
//! outcome is recorded in MySQL:
//! - final (sent, failed, duplicate, expired) or parked in MySQL (send_at, quiet hours: the
//!   worker's scheduler, told of the parking, brings it back through the channel's topic when
//!   it falls due) → `accepted`;
//! - a retryable provider failure → held for the policy's backoff, then `modified`
//!   (delivery-failed): the broker redelivers it with its delivery-count raised by one;
//! - given up after the policy's `maxAttempts` → `rejected`: the broker moves it to its dead-letter
//!   queue (`DLQ.<queue>` with ActiveMQ's per-destination strategy, as `scripts/infra` configures);
//! - another worker is sending the same message right now → held a while, then `released`.
//!
//! **Why redelivery and not parking retries in MySQL** (as the bulk path does): the broker keeps
//! the message and its delivery-count until it is final, across worker crashes and restarts, so
//! the attempt count needs no bookkeeping of ours and a retry never leaves the realtime queue
//! (parked messages come back through Kafka, behind the bulk backlog). The price: a message in
//! backoff holds one unit of credit, and ActiveMQ Classic sends a modified message back at once, so
//! the backoff is a wait in the worker. A worker that dies during it hands the message back to the
//! broker, which redelivers it with a raised count: the attempt budget counts deliveries, crashes
//! included, and a message still gets a provider call on its last delivery.

use crate::consumer::ParkingAlarm;
use crate::dedupe::RedisDedupe;
use crate::fallback::FallbackRoute;
use crate::metrics::{DeliveryPath, WorkerMetrics};
use crate::pause::until_available;
use crate::pipeline::{Aborted, BatchOutcome, DeliveryPipeline, PipelineBuilder, Verdict};
use crate::providers::ProviderContext;
use crate::ratelimit::{LimiterUnavailable, RateLimiter, RedisRateLimiter};
use crate::transport::{Batch, Shape, Transport, drive};
use anyhow::Context;
use chrono::{DateTime, Utc};
use fe2o3_amqp::link::delivery::{Delivery, DeliveryInfo};
use fe2o3_amqp::link::receiver::{CreditMode, TerminalDeliveryState};
use fe2o3_amqp::types::definitions::{self, ErrorCondition};
use fe2o3_amqp::types::messaging::{Accepted, Body, Modified, Rejected, Released};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Session};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use ump_core::amqp::AmqpSettings;
use ump_core::config::ResolvedChannel;
use ump_core::history::{BatchRecord, HistoryStore, Transition};
use ump_core::model::{Envelope, MessageId, Status};
use ump_core::store::{MySqlHistory, connect_mysql};

/// Most deliveries handed to the pipeline at once (whatever has arrived; never waited for).
const MAX_BATCH: usize = 256;
/// At most this many acceptances in one `dispose_all` (the link's credit is of this order).
const MAX_SETTLE: usize = 1024;
/// Consumer links per queue, each on a connection of its own. ActiveMQ dispatches to and takes
/// settlements from one connection on one thread, one message after the other; two connections
/// halve that queue.
const LINKS: usize = 2;
/// Share of a channel's rate-limit burst that only realtime sends may use.
const REALTIME_RESERVE: f64 = 0.1;

/// What the realtime consumers need, from the worker's settings.
#[derive(Clone)]
pub struct RealtimeSettings {
    pub amqp: AmqpSettings,
    /// Unsettled messages a consumer may hold per queue (AMQP link credit).
    pub credit: u32,
    pub redis_url: String,
    pub mysql_url: String,
    pub secrets_dir: PathBuf,
    pub sandbox_outbox: PathBuf,
    pub lanes: usize,
    pub claim_lease: Duration,
}

impl RealtimeSettings {
    pub fn from_worker(worker: &crate::service::WorkerSettings) -> anyhow::Result<Self> {
        let url = worker.amqp_url.as_deref().context(
            "a channel enables realtime delivery but UMP_AMQP_URL (the ActiveMQ to consume) is not set",
        )?;
        Ok(Self {
            amqp: AmqpSettings::parse(url)?,
            credit: worker.realtime_credit,
            redis_url: worker.redis_url.clone(),
            mysql_url: worker.mysql_url.clone(),
            secrets_dir: worker.secrets_dir.clone(),
            sandbox_outbox: worker.sandbox_outbox.clone(),
            lanes: worker.lanes,
            claim_lease: worker.claim_lease.as_std(),
        })
    }
}

/// The realtime consumers' thread; `stopped` resolves once they have finished (after shutdown:
/// the messages in hand recorded and settled).
pub struct RealtimeHandle {
    done: oneshot::Receiver<()>,
}

impl RealtimeHandle {
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

/// Starts consuming the realtime queues of `channels` on a thread of their own. Returns once
/// their connections to Redis and MySQL are up and their providers built.
/// `alarm` is the worker scheduler's: what the consumers park, it publishes as it falls due.
pub async fn start(
    settings: RealtimeSettings,
    channels: Vec<(Arc<ResolvedChannel>, Option<FallbackRoute>)>,
    metrics: WorkerMetrics,
    alarm: ParkingAlarm,
    cancel: CancellationToken,
) -> anyhow::Result<RealtimeHandle> {
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ump-realtime".to_owned())
        .spawn(move || {
            // One thread, which runs everything of the realtime path: the AMQP links, Redis,
            // MySQL, the providers. A message then crosses no thread on its way through the
            // worker — each crossing is a wake-up, a context switch and a wait for a core when
            // the cores are busy. (At 1,000 realtime messages per second, two threads cost the
            // worker about a fifth more CPU: scripts/bench-realtime.)
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e).context("starting the realtime runtime"));
                    return;
                }
            };
            runtime.block_on(async move {
                let consumers =
                    match consumers(&settings, channels, metrics, alarm, cancel.clone()).await {
                        Ok(consumers) => consumers,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                let _ = ready_tx.send(Ok(()));
                futures::future::join_all(consumers.into_iter().map(|c| c.run(cancel.clone())))
                    .await;
            });
            let _ = done_tx.send(());
        })
        .context("starting the realtime thread")?;
    ready_rx
        .await
        .context("the realtime thread ended during start")??;
    Ok(RealtimeHandle { done: done_rx })
}

/// Builds, on the realtime runtime, everything the consumers use: their I/O then lives there.
async fn consumers(
    settings: &RealtimeSettings,
    channels: Vec<(Arc<ResolvedChannel>, Option<FallbackRoute>)>,
    metrics: WorkerMetrics,
    alarm: ParkingAlarm,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<RealtimeConsumer>> {
    let pool = connect_mysql(&settings.mysql_url, Recorder::WRITERS as u32).await?;
    let recorder = Recorder::start(
        Arc::new(MySqlHistory::new(pool)),
        metrics.clone(),
        alarm,
        cancel,
    );
    let redis = crate::dedupe::connect_redis(&settings.redis_url).await?;
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let builder = PipelineBuilder {
        path: DeliveryPath::Realtime,
        limiter: Arc::new(RedisRateLimiter::new(redis.clone())),
        metrics: &metrics,
        providers: ProviderContext {
            secrets_dir: &settings.secrets_dir,
            sandbox_outbox: &settings.sandbox_outbox,
        },
        lanes: settings.lanes,
        busy_retry: settings.claim_lease / 2,
    };
    let mut consumers = Vec::with_capacity(channels.len() * LINKS);
    for (channel, fallback) in channels {
        // Providers of its own: their connection pools live on this runtime. A failover
        // provider's circuit breakers are therefore separate from the bulk path's.
        let provider = builder.provider(&channel)?;
        let queue = channel.resource.realtime_queue();
        let topic = channel.resource.topic_name();
        for link in 0..LINKS {
            // Each link claims messages under an identity of its own: when one link's connection
            // breaks, the broker hands its unsettled messages to the other at once, possibly
            // while the first is still calling the provider for them; the other must then find
            // them busy, not its own to send again.
            let dedupe = Arc::new(RedisDedupe::new(
                redis.clone(),
                format!("{instance}-rt{link}"),
                settings.claim_lease,
            ));
            let pipeline =
                builder.with_provider(&channel, Arc::clone(&provider), dedupe, fallback.clone())?;
            consumers.push(RealtimeConsumer {
                shared: Arc::new(Shared {
                    pipeline: Arc::new(pipeline),
                    recorder: recorder.clone(),
                    topic: topic.clone(),
                }),
                amqp: settings.amqp.clone(),
                link_name: format!("ump-worker-{instance}-{link}-{queue}"),
                queue: queue.clone(),
                credit: (settings.credit / LINKS as u32).max(1),
            });
        }
    }
    Ok(consumers)
}

/// Records the outcomes of the realtime batches: whatever is waiting, and whatever arrives in the
/// next [`Recorder::GATHER`], goes into one transaction. Messages arrive one or a few at a time,
/// and a transaction each would make MySQL's commit rate the realtime path's throughput (and its
/// CPU a good part of the machine's); merged, a busy moment costs one commit. (A message's
/// provider call comes before its record, so this batching adds nothing to its latency.)
#[derive(Clone)]
struct Recorder(mpsc::UnboundedSender<(BatchRecord, oneshot::Sender<bool>)>);

impl Recorder {
    /// Most batch records merged into one transaction.
    const MERGE: usize = 64;
    /// Transactions under way at once (the MySQL pool's size).
    const WRITERS: usize = 2;
    /// How long a transaction waits for more outcomes to merge. At 1,000 realtime messages per
    /// second the batches come one or two messages at a time, and a commit each was ~900 MySQL
    /// commits per second; this delays only the settlement, never the provider call.
    const GATHER: Duration = Duration::from_millis(5);

    fn start(
        history: Arc<dyn HistoryStore>,
        metrics: WorkerMetrics,
        alarm: ParkingAlarm,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<(BatchRecord, oneshot::Sender<bool>)>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        // Two writers: one gathers the next group while the other commits.
        for _ in 0..Self::WRITERS {
            let (rx, history, metrics, alarm, cancel) = (
                Arc::clone(&rx),
                Arc::clone(&history),
                metrics.clone(),
                alarm.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { break };
                        let mut waiting = vec![first];
                        let until = tokio::time::Instant::now() + Self::GATHER;
                        while waiting.len() < Self::MERGE {
                            match tokio::time::timeout_at(until, rx.recv()).await {
                                Ok(Some(next)) => waiting.push(next),
                                Ok(None) | Err(_) => break,
                            }
                        }
                        waiting
                    };
                    let mut merged = BatchRecord::default();
                    let mut done = Vec::with_capacity(waiting.len());
                    for (record, reply) in waiting {
                        merged.transitions.extend(record.transitions);
                        merged.deferred.extend(record.deferred);
                        done.push(reply);
                    }
                    let started = std::time::Instant::now();
                    let recorded =
                        until_available("mysql", &metrics, &cancel, || history.record(&merged))
                            .await
                            .is_ok();
                    if recorded {
                        // Parked (send_at, quiet hours, a fallback copy): the scheduler wakes
                        // when it falls due rather than at its next poll.
                        for deferred in &merged.deferred {
                            alarm.set(deferred.due_at);
                        }
                    }
                    tracing::debug!(
                        batches = done.len(),
                        transitions = merged.transitions.len(),
                        ms = started.elapsed().as_secs_f64() * 1000.0,
                        "realtime outcomes recorded"
                    );
                    for reply in done {
                        let _ = reply.send(recorded);
                    }
                }
            });
        }
        Self(tx)
    }

    /// True once `record` is durable; false when it was given up (shutdown while MySQL is away).
    async fn record(&self, record: BatchRecord) -> bool {
        let (reply, recorded) = oneshot::channel();
        if self.0.send((record, reply)).is_err() {
            return false;
        }
        recorded.await.unwrap_or(false)
    }
}

/// What a consumer's links share.
struct Shared {
    pipeline: Arc<DeliveryPipeline>,
    recorder: Recorder,
    /// The channel's Kafka topic: where the pipeline parks messages for later.
    topic: String,
}

/// The consumer of one channel's realtime queue.
struct RealtimeConsumer {
    shared: Arc<Shared>,
    amqp: AmqpSettings,
    queue: String,
    link_name: String,
    credit: u32,
}

/// A settlement for the link's receiver to send (only `next_batch` may use the receiver).
struct Settlement {
    info: DeliveryInfo,
    state: TerminalDeliveryState,
}

/// A received message, decoded; `D` is how it is settled (the link's `DeliveryInfo`).
struct Incoming<D = DeliveryInfo> {
    info: D,
    /// How often the broker delivered it before (failed attempts, and deliveries lost to a crash).
    delivery_count: u32,
    envelope: Result<Envelope, String>,
}

impl Incoming {
    fn new(delivery: Delivery<Body<Value>>) -> Self {
        let info = DeliveryInfo::from(&delivery);
        let delivery_count = delivery
            .message()
            .header
            .as_ref()
            .map_or(0, |h| h.delivery_count);
        let envelope = ump_core::amqp::envelope_of(delivery.body());
        Self {
            info,
            delivery_count,
            envelope,
        }
    }
}

/// How a delivered message is settled once its outcome is recorded.
#[derive(Clone, Debug, PartialEq)]
enum Disposal {
    /// Final, or parked in MySQL (it goes on from there).
    Accept,
    /// Out of attempts: to the broker's dead-letter queue.
    DeadLetter(String),
    /// A retryable failure: back to the broker at `at`, as a failed delivery.
    Redeliver { at: DateTime<Utc> },
    /// Another worker is sending it right now: back to the broker at `at`, not counted.
    Release { at: DateTime<Utc> },
}

/// Splits a batch's outcome into what to record and how to settle each message, by the
/// pipeline's verdicts: a retry and a message another worker is sending stay with the broker
/// (redelivered later) instead of being parked; what is parked for a later time (send_at, quiet
/// hours) or handed to another channel stays parked, and goes on through the bulk path.
fn plan(outcome: BatchOutcome, topic: &str) -> (BatchRecord, HashMap<MessageId, Disposal>) {
    let BatchOutcome {
        mut record,
        verdicts,
        ..
    } = outcome;
    let mut disposals = HashMap::with_capacity(verdicts.len());
    let mut with_the_broker = HashSet::new();
    for (id, verdict) in verdicts {
        let disposal = match verdict {
            Verdict::Retry { at } => Disposal::Redeliver { at },
            Verdict::Busy { at } => Disposal::Release { at },
            Verdict::DeadLetter { reason } => Disposal::DeadLetter(reason),
            Verdict::Final | Verdict::Parked { .. } | Verdict::FellBack => Disposal::Accept,
        };
        if matches!(
            disposal,
            Disposal::Redeliver { .. } | Disposal::Release { .. }
        ) {
            with_the_broker.insert(id);
        }
        disposals.insert(id, disposal);
    }
    record
        .deferred
        .retain(|d| !(d.queue == topic && with_the_broker.contains(&d.envelope.id)));
    (record, disposals)
}

fn dead_letter_state(reason: &str) -> TerminalDeliveryState {
    TerminalDeliveryState::Rejected(Rejected {
        error: Some(definitions::Error::new(
            ErrorCondition::Custom(Symbol::from("ump:dead-lettered")),
            Some(reason.to_owned()),
            None,
        )),
    })
}

fn redeliver_state() -> TerminalDeliveryState {
    TerminalDeliveryState::Modified(Modified {
        delivery_failed: Some(true),
        undeliverable_here: Some(false),
        message_annotations: None,
    })
}

fn release_state() -> TerminalDeliveryState {
    TerminalDeliveryState::Released(Released {})
}

impl RealtimeConsumer {
    /// Consumes until `cancel` fires, reconnecting with backoff whenever the broker goes away.
    async fn run(self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        while !cancel.is_cancelled() {
            match self.consume(&cancel, &mut failures).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100)
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(5));
                    tracing::warn!(queue = %self.queue, broker = %self.amqp.endpoint(), error = %e, retry_in = ?wait, "realtime consumer disconnected");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        tracing::info!(queue = %self.queue, "realtime consumer stopped");
    }

    /// One connection's worth of consuming: `Ok` after a shutdown, `Err` when the connection or
    /// link failed.
    async fn consume(&self, cancel: &CancellationToken, failures: &mut u32) -> anyhow::Result<()> {
        // A fresh container id per connection: ActiveMQ refuses one it believes still connected.
        let container_id = format!("{}-{}", self.link_name, uuid::Uuid::new_v4().simple());
        let mut connection = self.amqp.connect(&container_id).await?;
        let mut session = Session::begin(&mut connection)
            .await
            .context("beginning a session")?;
        let receiver = Receiver::builder()
            .name(self.link_name.as_str())
            .source(self.queue.as_str())
            .credit_mode(CreditMode::Auto(self.credit))
            .attach(&mut session)
            .await
            .with_context(|| format!("attaching to {}", self.queue))?;
        *failures = 0;
        tracing::info!(queue = %self.queue, credit = self.credit, "consuming realtime queue");
        let link = Arc::new(AmqpLink::new(Arc::clone(&self.shared), receiver, cancel));
        let result = drive(Arc::clone(&self.shared.pipeline), Arc::clone(&link), cancel).await;
        // Whatever is still unsettled goes back to the broker with the link. (Every batch task
        // has ended with `drive`: the link is this consumer's alone again.)
        let close = async {
            if let Ok(link) = Arc::try_unwrap(link) {
                let _ = link.link.into_inner().receiver.close().await;
            }
            let _ = session.end().await;
            let _ = connection.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        result
    }
}

/// One connection's link to a realtime queue as a [`Transport`]: whatever deliveries have
/// arrived make a batch (nothing is waited for), and each message is settled on its own as soon
/// as its batch's outcome is recorded, or held until its retry is due (see the module's
/// documentation for the dispositions).
struct AmqpLink {
    shared: Arc<Shared>,
    /// Only `next_batch` uses the receiver: it receives, and sends the settlements that are
    /// waiting, in one loop.
    link: tokio::sync::Mutex<Link>,
    settlements: mpsc::UnboundedSender<Settlement>,
    /// Ends the backoff waits of held messages: at shutdown and when the link is gone.
    flush: CancellationToken,
    /// False once the link failed: what is left unsettled, the broker has back with the link.
    alive: AtomicBool,
}

struct Link {
    receiver: Receiver,
    waiting: mpsc::UnboundedReceiver<Settlement>,
}

/// What settles a received batch: each message's deliveries.
struct Received {
    /// Each message's deliveries (the same message twice in one batch is settled alike).
    deliveries: HashMap<MessageId, Vec<DeliveryInfo>>,
    /// `accepted` again for each redelivered message (see `Decoded`).
    redelivered: Vec<Transition>,
    count: usize,
    /// When the batch was received, and how long its oldest message had waited by then since
    /// its acceptance (broker and queue), for the debug log.
    received: Instant,
    waited_ms: f64,
}

impl AmqpLink {
    fn new(shared: Arc<Shared>, receiver: Receiver, cancel: &CancellationToken) -> Self {
        let (settlements, waiting) = mpsc::unbounded_channel();
        Self {
            shared,
            link: tokio::sync::Mutex::new(Link { receiver, waiting }),
            settlements,
            flush: cancel.child_token(),
            alive: AtomicBool::new(true),
        }
    }

    /// Queues a settlement for the receiver.
    fn send(&self, info: DeliveryInfo, state: TerminalDeliveryState) {
        // The receiver of the queue lives as long as the link: this cannot fail.
        let _ = self.settlements.send(Settlement { info, state });
    }

    /// The link failed: held messages stop waiting, and nothing more is settled on it.
    fn broken(&self, error: anyhow::Error) -> anyhow::Error {
        self.alive.store(false, Ordering::Relaxed);
        self.flush.cancel();
        error
    }

    fn release_all(&self, deliveries: HashMap<MessageId, Vec<DeliveryInfo>>) {
        for info in deliveries.into_values().flatten() {
            self.send(info, release_state());
        }
    }
}

#[async_trait::async_trait]
impl Transport for AmqpLink {
    type Receipt = Received;

    fn shape(&self) -> Shape {
        Shape::Unordered
    }

    /// What the pipeline parks for later goes through the bulk path (the channel's topic);
    /// retries and busy messages stay with the broker (`plan`).
    fn home(&self) -> &str {
        &self.shared.topic
    }

    /// Sends the waiting settlements while no delivery comes. (The unordered loop never drops a
    /// call, so a settlement taken from the queue is always sent.)
    async fn next_batch(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Batch<Received>>> {
        let mut link = self.link.lock().await;
        let Link { receiver, waiting } = &mut *link;
        loop {
            let first = tokio::select! {
                biased;
                Some(settlement) = waiting.recv() => {
                    if let Err(e) = dispose(receiver, settlement, waiting).await {
                        return Err(self.broken(anyhow::anyhow!("settling a delivery: {e}")));
                    }
                    continue;
                }
                _ = cancel.cancelled() => {
                    self.flush.cancel();
                    return Ok(None);
                }
                delivery = receiver.recv::<Body<Value>>() => match delivery {
                    Ok(delivery) => delivery,
                    Err(e) => return Err(self.broken(anyhow::anyhow!("receiving: {e}"))),
                },
            };
            // Whatever else has arrived goes along; nothing is waited for.
            let mut batch = vec![Incoming::new(first)];
            let mut failed = None;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(Duration::ZERO, receiver.recv::<Body<Value>>()).await {
                    Ok(Ok(delivery)) => batch.push(Incoming::new(delivery)),
                    Ok(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(e) = failed {
                // The deliveries in hand go back to the broker with the link.
                return Err(self.broken(anyhow::anyhow!("receiving: {e}")));
            }
            let Decoded {
                envelopes,
                deliveries,
                redelivered,
            } = decode(batch, &|info, state| self.send(info, state));
            if envelopes.is_empty() {
                continue;
            }
            let waited_ms = envelopes
                .iter()
                .map(|e| (Utc::now() - e.accepted_at).num_microseconds().unwrap_or(0))
                .max()
                .unwrap_or(0) as f64
                / 1000.0;
            let receipt = Received {
                deliveries,
                redelivered,
                count: envelopes.len(),
                received: Instant::now(),
                waited_ms,
            };
            return Ok(Some(Batch { envelopes, receipt }));
        }
    }

    /// Records the batch, then settles each message (or holds it, then settles it).
    async fn settle(
        &self,
        mut outcome: BatchOutcome,
        received: Received,
        _cancel: &CancellationToken,
    ) -> Result<(), Aborted> {
        let Received {
            mut deliveries,
            redelivered,
            count,
            received,
            waited_ms,
        } = received;
        let delivered = received.elapsed();
        let settled_keys = std::mem::take(&mut outcome.settled_keys);
        let (mut record, disposals) = plan(outcome, &self.shared.topic);
        record.transitions.extend(redelivered);
        if !self.shared.recorder.record(record).await {
            tracing::warn!(
                "realtime batch not recorded (shutting down while MySQL is away); released to the broker"
            );
            self.release_all(deliveries);
            return Err(Aborted("mysql"));
        }
        tracing::debug!(
            count,
            waited_ms,
            delivered_ms = delivered.as_secs_f64() * 1000.0,
            recorded_ms = (received.elapsed() - delivered).as_secs_f64() * 1000.0,
            "realtime batch delivered and recorded"
        );
        let send = |info, state| self.send(info, state);
        let held = settle_now(disposals, &mut deliveries, &send);
        // Every delivered message has a verdict; were one ever missing, the broker would get the
        // message back rather than keep it unsettled.
        if !deliveries.is_empty() {
            tracing::warn!("a realtime message without a verdict; released to the broker");
            self.release_all(deliveries);
        }
        self.shared
            .pipeline
            .forget(&settled_keys, ACCEPTED_MEMORY)
            .await;
        settle_when_due(held, &self.flush, &send).await;
        Ok(())
    }

    async fn give_back(&self, received: Received) {
        self.release_all(received.deliveries);
    }

    /// Sends the settlements left (every batch task has ended) while the link is alive; on a
    /// dead one the broker redelivers their messages (found sent, recorded as such, not sent
    /// again).
    async fn finish(&self) {
        let mut link = self.link.lock().await;
        let Link { receiver, waiting } = &mut *link;
        while let Ok(settlement) = waiting.try_recv() {
            if self.alive.load(Ordering::Relaxed)
                && let Err(e) = dispose(receiver, settlement, waiting).await
            {
                self.broken(anyhow::anyhow!("settling a delivery: {e}"));
            }
        }
    }
}

/// Sends the dispositions of `first` and of whatever other settlements are already waiting: the
/// accepted ones together (`dispose_all`: one disposition frame for each run of consecutive
/// deliveries, where one frame per message kept the broker and this link's loop waking for every
/// message), the rest (retries, releases, dead letters) one by one.
async fn dispose(
    receiver: &Receiver,
    first: Settlement,
    waiting: &mut mpsc::UnboundedReceiver<Settlement>,
) -> Result<(), fe2o3_amqp::link::DispositionError> {
    let mut accepted = Vec::new();
    let mut next = Some(first);
    while let Some(settlement) = next.take() {
        match settlement.state {
            TerminalDeliveryState::Accepted(_) => accepted.push(settlement.info),
            state => receiver.dispose(settlement.info, state).await?,
        }
        if accepted.len() < MAX_SETTLE {
            next = waiting.try_recv().ok();
        }
    }
    match accepted.len() {
        0 => Ok(()),
        1 => receiver.accept(accepted.remove(0)).await,
        _ => receiver.accept_all(accepted).await,
    }
}

/// How long a sent message's own dedupe key outlives its accept. The broker redelivers an
/// accepted message only when the accept was lost with its connection, and then as soon as it
/// sees the connection gone: at once when the worker dies, within two AMQP idle timeouts (2 × 30
/// s) when its network does. Until then the key turns the redelivery into "already sent".
pub const ACCEPTED_MEMORY: Duration = Duration::from_secs(120);

/// A batch of received messages, decoded.
struct Decoded<D> {
    /// The envelopes to deliver, each once.
    envelopes: Vec<Envelope>,
    /// Each message's deliveries (the same message twice in one batch is settled alike).
    deliveries: HashMap<MessageId, Vec<D>>,
    /// `accepted` again for each redelivered message: its first delivery's outcome may never
    /// have been recorded.
    redelivered: Vec<Transition>,
}

/// Decodes a received batch; an undecodable message is dead-lettered at once.
fn decode<D>(batch: Vec<Incoming<D>>, send: &impl Fn(D, TerminalDeliveryState)) -> Decoded<D> {
    let mut decoded = Decoded {
        envelopes: Vec::with_capacity(batch.len()),
        deliveries: HashMap::new(),
        redelivered: Vec::new(),
    };
    for incoming in batch {
        let mut envelope = match incoming.envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(%error, "undecodable realtime message: dead-lettered");
                send(
                    incoming.info,
                    dead_letter_state(&format!("undecodable: {error}")),
                );
                continue;
            }
        };
        if let Some(infos) = decoded.deliveries.get_mut(&envelope.id) {
            infos.push(incoming.info);
            continue;
        }
        if incoming.delivery_count > 0 {
            // The first delivery's outcome may never have been recorded (a crash before it was).
            decoded.redelivered.push(Transition::of(
                &envelope,
                Status::Accepted,
                envelope.accepted_at,
            ));
            // The broker's count is the attempt count: failed attempts and lost deliveries alike.
            envelope.attempts = envelope.attempts.max(incoming.delivery_count);
        }
        decoded.deliveries.insert(envelope.id, vec![incoming.info]);
        decoded.envelopes.push(envelope);
    }
    decoded
}

/// A message settled once its time comes: a retry or a message another worker holds goes back
/// to the broker at `at`.
type Held<D> = (DateTime<Utc>, Vec<D>, TerminalDeliveryState);

/// Settles each recorded message by its disposal (taking its deliveries out of `deliveries`):
/// accepted and dead-lettered at once; what goes back to the broker later is returned.
fn settle_now<D>(
    disposals: HashMap<MessageId, Disposal>,
    deliveries: &mut HashMap<MessageId, Vec<D>>,
    send: &impl Fn(D, TerminalDeliveryState),
) -> Vec<Held<D>> {
    let mut held = Vec::new();
    for (id, disposal) in disposals {
        let Some(infos) = deliveries.remove(&id) else {
            continue;
        };
        match disposal {
            Disposal::Accept => {
                for info in infos {
                    send(info, TerminalDeliveryState::Accepted(Accepted {}));
                }
            }
            Disposal::DeadLetter(reason) => {
                for info in infos {
                    send(info, dead_letter_state(&reason));
                }
            }
            Disposal::Redeliver { at } => held.push((at, infos, redeliver_state())),
            Disposal::Release { at } => held.push((at, infos, release_state())),
        }
    }
    held
}

/// Settles each held message when its time comes, or at once when `flush` fires (shutdown, or
/// the link is gone).
async fn settle_when_due<D>(
    held: Vec<Held<D>>,
    flush: &CancellationToken,
    send: &impl Fn(D, TerminalDeliveryState),
) {
    futures::future::join_all(held.into_iter().map(|(at, infos, state)| async move {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = flush.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        for info in infos {
            send(info, state.clone());
        }
    }))
    .await;
}

/// The bulk path's view of a channel's rate limit: it may not use the last tenth of the burst,
/// which is left to realtime sends, so a bulk backlog that keeps the limit saturated still lets a
/// realtime message through at once. (Both take from the same budget: the limit holds.)
pub struct BulkShare(pub Arc<dyn RateLimiter>);

#[async_trait::async_trait]
impl RateLimiter for BulkShare {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    async fn try_acquire(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterUnavailable> {
        self.0.try_acquire(key, per_second, bulk_burst(burst)).await
    }
}

/// The burst the bulk path may use: all but a reserve, when the burst is big enough to have one.
fn bulk_burst(burst: u32) -> u32 {
    let reserve = (f64::from(burst) * REALTIME_RESERVE).ceil() as u32;
    if burst > reserve + 1 {
        burst - reserve
    } else {
        burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ump_core::history::Deferred;
    use ump_core::model::{Content, Priority};

    fn envelope(attempts: u32) -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: "t".into(),
            channel: "sms".into(),
            to: "+821012345678".into(),
            content: Content {
                body: Some("hi".into()),
                ..Default::default()
            },
            priority: Priority::Realtime,
            send_at: None,
            tags: vec![],
            metadata: Default::default(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: Utc::now(),
            attempts,
            fallback: None,
        }
    }

    fn deferred(envelope: &Envelope, queue: &str, due_at: DateTime<Utc>) -> Deferred {
        Deferred {
            envelope: envelope.clone(),
            queue: queue.into(),
            due_at,
        }
    }

    #[test]
    fn plan_keeps_retries_and_busy_messages_with_the_broker_and_parks_the_rest() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(2);
        let sent = envelope(0);
        let retried = envelope(2);
        let busy = envelope(0);
        let quiet = envelope(0);
        let fallback = envelope(0);
        let dead = envelope(4);
        let outcome = BatchOutcome {
            record: BatchRecord {
                transitions: vec![
                    Transition::of(&sent, Status::Sent, now),
                    Transition::of(&retried, Status::Scheduled, now),
                    Transition::of(&quiet, Status::Scheduled, now),
                    Transition::of(&dead, Status::DeadLettered, now).detail("gave up"),
                ],
                deferred: vec![
                    deferred(&retried, "ump.ns.sms", later),
                    deferred(&busy, "ump.ns.sms", later),
                    deferred(&quiet, "ump.ns.sms", later),
                    deferred(&fallback, "ump.ns.other", now),
                ],
            },
            dead_letters: vec![dead.clone()],
            verdicts: vec![
                (sent.id, Verdict::Final),
                (retried.id, Verdict::Retry { at: later }),
                (busy.id, Verdict::Busy { at: later }),
                (quiet.id, Verdict::Parked { at: later }),
                (fallback.id, Verdict::FellBack),
                (
                    dead.id,
                    Verdict::DeadLetter {
                        reason: "gave up".into(),
                    },
                ),
            ],
            settled_keys: vec![format!("ump:sent:{}", sent.id)],
        };
        let (record, disposals) = plan(outcome, "ump.ns.sms");
        assert_eq!(disposals.len(), 6);
        assert_eq!(disposals[&sent.id], Disposal::Accept);
        assert_eq!(disposals[&retried.id], Disposal::Redeliver { at: later });
        assert_eq!(disposals[&busy.id], Disposal::Release { at: later });
        assert_eq!(disposals[&quiet.id], Disposal::Accept);
        assert_eq!(disposals[&fallback.id], Disposal::Accept);
        assert_eq!(disposals[&dead.id], Disposal::DeadLetter("gave up".into()));
        let parked: Vec<MessageId> = record.deferred.iter().map(|d| d.envelope.id).collect();
        assert_eq!(parked, vec![quiet.id, fallback.id]);
        assert_eq!(record.transitions.len(), 4);
    }

    /// What a settlement step sent, by delivery: `accepted`, `modified`, `released` or
    /// `rejected` (the state's kind).
    type Sent = std::cell::RefCell<Vec<(u32, &'static str)>>;

    fn kind(state: &TerminalDeliveryState) -> &'static str {
        match state {
            TerminalDeliveryState::Accepted(_) => "accepted",
            TerminalDeliveryState::Modified(_) => "modified",
            TerminalDeliveryState::Released(_) => "released",
            TerminalDeliveryState::Rejected(_) => "rejected",
        }
    }

    fn recording(sent: &Sent) -> impl Fn(u32, TerminalDeliveryState) + '_ {
        move |delivery, state| sent.borrow_mut().push((delivery, kind(&state)))
    }

    fn incoming(info: u32, delivery_count: u32, envelope: &Envelope) -> Incoming<u32> {
        Incoming {
            info,
            delivery_count,
            envelope: Ok(envelope.clone()),
        }
    }

    #[test]
    fn a_batch_is_decoded_once_per_message_and_what_cannot_be_read_is_dead_lettered() {
        let once = envelope(0);
        let again = envelope(1);
        let batch = vec![
            incoming(1, 0, &once),
            Incoming {
                info: 2,
                delivery_count: 0,
                envelope: Err("expected JSON".into()),
            },
            // The same message twice in one batch: delivered once, settled alike.
            incoming(3, 0, &once),
            // Delivered three times before: a crash may have lost its first outcome.
            incoming(4, 3, &again),
        ];
        let sent = Sent::default();
        let decoded = decode(batch, &recording(&sent));
        assert_eq!(sent.into_inner(), vec![(2, "rejected")]);
        let ids: Vec<MessageId> = decoded.envelopes.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![once.id, again.id]);
        assert_eq!(decoded.deliveries[&once.id], vec![1, 3]);
        assert_eq!(decoded.deliveries[&again.id], vec![4]);
        // The broker's count is the attempt count.
        assert_eq!(decoded.envelopes[1].attempts, 3);
        assert_eq!(decoded.envelopes[0].attempts, 0);
        let accepted: Vec<(MessageId, Status)> = decoded
            .redelivered
            .iter()
            .map(|t| (t.id, t.status))
            .collect();
        assert_eq!(accepted, vec![(again.id, Status::Accepted)]);
    }

    #[test]
    fn recorded_messages_are_settled_by_their_disposal_and_the_rest_left_alone() {
        let later = Utc::now() + chrono::Duration::seconds(2);
        let [sent_twice, dead, retried, busy, unknown] = [(); 5].map(|_| MessageId::new());
        let disposals = HashMap::from([
            (sent_twice, Disposal::Accept),
            (dead, Disposal::DeadLetter("gave up".into())),
            (retried, Disposal::Redeliver { at: later }),
            (busy, Disposal::Release { at: later }),
        ]);
        let mut deliveries = HashMap::from([
            (sent_twice, vec![1, 2]),
            (dead, vec![3]),
            (retried, vec![4]),
            (busy, vec![5]),
            (unknown, vec![6]),
        ]);
        let sent = Sent::default();
        let mut held = settle_now(disposals, &mut deliveries, &recording(&sent));
        let mut now = sent.into_inner();
        now.sort();
        assert_eq!(now, vec![(1, "accepted"), (2, "accepted"), (3, "rejected")]);
        held.sort_by_key(|(_, infos, _)| infos.clone());
        let held: Vec<(DateTime<Utc>, Vec<u32>, &str)> = held
            .iter()
            .map(|(at, infos, state)| (*at, infos.clone(), kind(state)))
            .collect();
        assert_eq!(
            held,
            vec![(later, vec![4], "modified"), (later, vec![5], "released")]
        );
        // A delivery without a disposal stays for the caller (which releases it).
        assert_eq!(deliveries, HashMap::from([(unknown, vec![6])]));
    }

    #[tokio::test]
    async fn held_messages_are_settled_when_due_or_at_once_on_flush() {
        let now = Utc::now();
        let held = |at| vec![(at, vec![7], redeliver_state())];
        let sent = Sent::default();
        let flush = CancellationToken::new();
        // Due: settled without a flush.
        tokio::time::timeout(
            Duration::from_secs(5),
            settle_when_due(held(now), &flush, &recording(&sent)),
        )
        .await
        .expect("a due message is settled at once");
        assert_eq!(sent.take(), vec![(7, "modified")]);
        // An hour away: settled when the link goes.
        flush.cancel();
        tokio::time::timeout(
            Duration::from_secs(5),
            settle_when_due(
                held(now + chrono::Duration::hours(1)),
                &flush,
                &recording(&sent),
            ),
        )
        .await
        .expect("a flush settles a held message at once");
        assert_eq!(sent.take(), vec![(7, "modified")]);
    }

    #[test]
    fn bulk_leaves_a_reserve_of_the_burst_when_there_is_one() {
        assert_eq!(bulk_burst(200), 180);
        assert_eq!(bulk_burst(10), 9);
        assert_eq!(bulk_burst(3), 2);
        assert_eq!(bulk_burst(2), 2);
        assert_eq!(bulk_burst(1), 1);
    }
}

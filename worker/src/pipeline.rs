//! The delivery pipeline of one channel: TTL → schedule (send_at, quiet hours) → dedupe → rate
//! limit → render → provider → outcome. It turns a batch of envelopes into what must be recorded,
//! parked and dead-lettered; the consumer makes that durable before it commits its offsets.
//!
//! Messages to the same recipient stay in order: a batch is split into lanes, one per recipient,
//! each lane delivered one message at a time, up to `lanes` lanes at once across every batch in
//! delivery (the provider's own concurrency limit then bounds the calls in flight). A transport
//! may deliver its next batch while the previous one finishes: lanes are admitted in batch order
//! (`admit`), and a recipient's lane waits for that recipient's lane of the batch before
//! (`crate::turns`). `process` admits no turns: for transports that promise no order between
//! batches delivered at once (realtime).

use crate::dedupe::{Claim, DedupeStore};
use crate::fallback::{FallbackRoute, fallback_envelope};
use crate::metrics::{DeliveryPath, WorkerMetrics};
use crate::pause::until_available;
use crate::providers::{self, ProviderContext};
use crate::ratelimit::RateLimiter;
use crate::turns::{Turn, Turns};
use chrono::{DateTime, Utc};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use ump_core::config::ResolvedChannel;
use ump_core::history::{BatchRecord, Deferred, Transition};
use ump_core::model::{Category, Envelope, MessageId, Status};
use ump_core::policy::{QuietWindow, backoff, jitter};
use ump_core::provider::{Answer, Outcome, Outgoing, Provider};
use ump_core::resources::{ChannelType, DedupeKey};

/// How long a per-message key (no dedupe) lives while its message is in flight: the transport
/// that settles the message lets it go sooner (`BatchOutcome::settled_keys`), so this bounds only
/// the keys of batches that never settle here (a crash, a lost partition), which come back.
const SENT_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Everything a batch leaves behind.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// What to record: the transitions, and the messages to park (`deferred`, each naming the
    /// queue it goes back to).
    pub record: BatchRecord,
    /// Messages that exhausted their attempts, for the dead-letter topic.
    pub dead_letters: Vec<Envelope>,
    /// The decision for each message of the batch, in batch order: how its transport settles it.
    pub verdicts: Vec<(MessageId, Verdict)>,
    /// The per-message dedupe keys (no dedupe window) of the messages this batch found sent.
    /// Such a key only guards against a redelivery of its message, so the transport lets it go
    /// once the batch is settled (`DedupeStore::forget`): Redis holds the messages in flight,
    /// not every message of the last day.
    pub settled_keys: Vec<String>,
}

/// What the pipeline decided for one message. The transports settle it their own way: the bulk
/// path records the batch and commits its offsets whatever the verdicts; the realtime path keeps
/// `Retry` and `Busy` with the broker (modified / released) and dead-letters there; the
/// all-in-one queue settles each in the recording transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Verdict {
    /// The outcome is final: sent (also "sent before a restart"), failed, duplicate, expired.
    #[default]
    Final,
    /// Parked until `at` on its home queue: `send_at`, quiet hours, Kakao's night ban.
    Parked { at: DateTime<Utc> },
    /// A retryable failure: the next attempt at `at` (on its home queue when parked).
    Retry { at: DateTime<Utc> },
    /// Another worker holds its claim: look again at `at`; not an attempt.
    Busy { at: DateTime<Utc> },
    /// Out of attempts: dead-lettered (`reason` is the recorded detail).
    DeadLetter { reason: String },
    /// Failed for good here and handed on to the policy's fallback channel's queue.
    FellBack,
}

/// The batch was abandoned (shutdown while a dependency was down): record and commit nothing, the
/// messages come back on restart.
#[derive(Debug, thiserror::Error)]
#[error("batch abandoned: shutting down while waiting for {0}")]
pub struct Aborted(pub &'static str);

/// The batch in lanes, one per recipient, each in the batch's order.
fn by_recipient(batch: Vec<Envelope>) -> Vec<Vec<Envelope>> {
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut lanes: Vec<Vec<Envelope>> = Vec::new();
    for envelope in batch {
        match index.get(&envelope.to) {
            Some(&lane) => lanes[lane].push(envelope),
            None => {
                index.insert(envelope.to.clone(), lanes.len());
                lanes.push(vec![envelope]);
            }
        }
    }
    lanes
}

/// A batch in lanes, each with its recipient's turn when the transport keeps their order across
/// batches (`DeliveryPipeline::admit`).
pub struct Admitted {
    lanes: Vec<(Vec<Envelope>, Option<Turn>)>,
}

pub struct DeliveryPipeline {
    pub channel: Arc<ResolvedChannel>,
    provider: Arc<dyn Provider>,
    dedupe: Arc<dyn DedupeStore>,
    limiter: Arc<dyn RateLimiter>,
    quiet: Option<QuietWindow>,
    metrics: WorkerMetrics,
    /// Lanes running at once, across every batch in delivery: what bounds the calls a crash can
    /// leave unrecorded.
    lanes: Semaphore,
    /// Each recipient's order across batches delivered at once.
    turns: Turns,
    rate_key: String,
    /// Where parked messages of this channel go back to.
    queue: String,
    /// How long a message waits when another worker is delivering it.
    busy_retry: Duration,
    /// Where messages the provider refuses for good go (the policy's `fallback`).
    fallback: Option<FallbackRoute>,
}

/// How every delivery path (the bulk consumer, the realtime consumers, the all-in-one queue)
/// builds a channel's pipeline, so that the paths cannot drift apart: the provider (its failover
/// circuits and concurrency limit published for `path`), the rate limit (the bulk path's share
/// when the channel also sends realtime), the policy's fallback route, the lanes.
pub struct PipelineBuilder<'a> {
    pub path: DeliveryPath,
    pub limiter: Arc<dyn RateLimiter>,
    pub metrics: &'a WorkerMetrics,
    pub providers: ProviderContext<'a>,
    /// Lanes running at once, across every batch of the channel in delivery.
    pub lanes: usize,
    /// How long a message waits when another worker is delivering it.
    pub busy_retry: Duration,
}

impl PipelineBuilder<'_> {
    /// The channel's provider for this path. A path that runs several pipelines of one channel
    /// (the realtime links) shares one: one connection pool, one set of circuits.
    pub fn provider(&self, channel: &ResolvedChannel) -> anyhow::Result<Arc<dyn Provider>> {
        Ok(providers::for_delivery(
            channel,
            &self.providers,
            self.metrics,
            self.path,
        )?)
    }

    /// The pipeline of `channel` with its own provider.
    pub fn build(
        &self,
        channel: &Arc<ResolvedChannel>,
        dedupe: Arc<dyn DedupeStore>,
        fallback: Option<FallbackRoute>,
    ) -> anyhow::Result<DeliveryPipeline> {
        self.with_provider(channel, self.provider(channel)?, dedupe, fallback)
    }

    /// The pipeline of `channel` calling `provider` and claiming messages in `dedupe`; messages
    /// its provider refuses for good go on by `fallback` (the policy's route,
    /// `FallbackRoute::of`).
    pub fn with_provider(
        &self,
        channel: &Arc<ResolvedChannel>,
        provider: Arc<dyn Provider>,
        dedupe: Arc<dyn DedupeStore>,
        fallback: Option<FallbackRoute>,
    ) -> anyhow::Result<DeliveryPipeline> {
        let limiter: Arc<dyn RateLimiter> =
            if self.path == DeliveryPath::Bulk && channel.resource.spec.realtime.enabled {
                Arc::new(crate::realtime::BulkShare(self.limiter.clone()))
            } else {
                self.limiter.clone()
            };
        Ok(DeliveryPipeline::new(
            Arc::clone(channel),
            provider,
            dedupe,
            limiter,
            self.metrics.clone(),
            self.lanes,
            self.busy_retry,
        )?
        .with_fallback(fallback))
    }
}

impl DeliveryPipeline {
    pub fn new(
        channel: Arc<ResolvedChannel>,
        provider: Arc<dyn Provider>,
        dedupe: Arc<dyn DedupeStore>,
        limiter: Arc<dyn RateLimiter>,
        metrics: WorkerMetrics,
        lanes: usize,
        busy_retry: Duration,
    ) -> Result<Self, ump_core::policy::QuietHoursError> {
        let quiet = channel
            .policy
            .quiet_hours
            .as_ref()
            .map(QuietWindow::parse)
            .transpose()?;
        let queue = channel.resource.topic_name();
        let rate_key = format!("ump:rate:{queue}");
        Ok(Self {
            channel,
            provider,
            dedupe,
            limiter,
            quiet,
            metrics,
            lanes: Semaphore::new(lanes.max(1)),
            turns: Turns::default(),
            rate_key,
            queue,
            busy_retry,
            fallback: None,
        })
    }

    /// Hands messages the provider refuses for good on to `route` (see `crate::fallback`).
    fn with_fallback(mut self, route: Option<FallbackRoute>) -> Self {
        self.fallback = route;
        self
    }

    /// Delivers `batch`; what it parks (schedules, retries, busy messages) goes back to `home`,
    /// the queue the batch came from (fallback copies go to their channel's queue).
    pub async fn process(
        &self,
        batch: Vec<Envelope>,
        home: &str,
        cancel: &CancellationToken,
    ) -> Result<BatchOutcome, Aborted> {
        let lanes = by_recipient(batch)
            .into_iter()
            .map(|lane| (lane, None))
            .collect();
        self.deliver_admitted(Admitted { lanes }, home, cancel)
            .await
    }

    /// Splits `batch` into lanes and gives each its recipient's turn, for a transport that
    /// delivers several batches at once and keeps a recipient's order across them (the bulk
    /// consumer; the realtime path promises no order between its batches and uses `process`).
    /// Synchronous, so that the transport admits batches in the order it consumed them.
    pub fn admit(&self, batch: Vec<Envelope>) -> Admitted {
        let lanes = by_recipient(batch);
        let turns = self
            .turns
            .admit(lanes.iter().map(|lane| lane[0].to.as_str()));
        Admitted {
            lanes: lanes.into_iter().zip(turns.into_iter().map(Some)).collect(),
        }
    }

    /// Delivers an admitted batch (see `process`).
    pub async fn deliver_admitted(
        &self,
        admitted: Admitted,
        home: &str,
        cancel: &CancellationToken,
    ) -> Result<BatchOutcome, Aborted> {
        let lanes = admitted
            .lanes
            .into_iter()
            .map(|(lane, mut turn)| async move {
                if let Some(turn) = &mut turn {
                    turn.wait().await;
                }
                let _running = self.lanes.acquire().await;
                let mut steps = Vec::with_capacity(lane.len());
                for envelope in lane {
                    let id = envelope.id;
                    steps.push((id, self.deliver(envelope, home, cancel).await?));
                }
                // The recipient's next lane goes once this one has ended.
                drop(turn);
                Ok::<_, Aborted>(steps)
            });
        let results = futures::future::join_all(lanes).await;
        let mut outcome = BatchOutcome::default();
        for lane in results {
            for (id, step) in lane? {
                outcome.record.transitions.extend(step.transitions);
                outcome.record.deferred.extend(step.deferred);
                outcome.dead_letters.extend(step.dead_letter);
                outcome.verdicts.push((id, step.verdict));
                outcome.settled_keys.extend(step.settled_key);
            }
        }
        Ok(outcome)
    }

    /// The message's dedupe key (see [`Keyed`]).
    fn dedupe_key(&self, envelope: &Envelope) -> Keyed {
        let policy = &self.channel.policy.dedupe;
        let scope = format!(
            "ump:dedupe:{}:{}",
            envelope.tenant,
            self.channel.resource.topic_name()
        );
        let window = policy.window.as_std();
        if envelope.fallback.is_some() {
            // Deduplicated on its own channel already; here only its own redelivery must be
            // recognised (see `crate::fallback`).
            return Keyed::own(format!("ump:sent:{}:{}", self.queue, envelope.id));
        }
        match (policy.key, &envelope.idempotency_key) {
            (DedupeKey::IdempotencyKeyOrContent | DedupeKey::IdempotencyKey, Some(key)) => {
                Keyed::shared(format!("{scope}:key:{key}"), window)
            }
            (DedupeKey::IdempotencyKeyOrContent, None) => {
                Keyed::shared(format!("{scope}:hash:{}", envelope.content_hash()), window)
            }
            _ => Keyed::own(format!("ump:sent:{}", envelope.id)),
        }
    }

    /// One message through the steps: TTL and holds → dedupe claim → rate limit → render →
    /// provider → what its answer means.
    async fn deliver(
        &self,
        envelope: Envelope,
        home: &str,
        cancel: &CancellationToken,
    ) -> Result<Step, Aborted> {
        let now = Utc::now();
        let mut step = Step::default();
        if envelope.attempts == 0 {
            // Recorded idempotently: a message parked and consumed again adds nothing here.
            step.transitions.push(Transition::of(
                &envelope,
                Status::Accepted,
                envelope.accepted_at,
            ));
        }
        match self.held_back(&envelope, now) {
            None => {}
            Some(Hold::Expired(reason)) => {
                self.metrics
                    .outcome(&envelope.channel, self.provider.name(), "expired");
                step.transitions
                    .push(Transition::of(&envelope, Status::Failed, now).detail(reason));
                return Ok(step);
            }
            Some(Hold::Until { at, why }) => {
                return Ok(self.park(step, envelope, home, at, now, why));
            }
        }

        let id = envelope.id.to_string();
        let keyed = self.dedupe_key(&envelope);
        let claim = until_available(self.dedupe.backend(), &self.metrics, cancel, || {
            self.dedupe.claim(&keyed.key, &id, keyed.ttl)
        })
        .await?;
        let (mut step, envelope) =
            match self.unless_claimed(claim, step, envelope, &keyed, home, now) {
                ControlFlow::Continue(go) => go,
                ControlFlow::Break(done) => return Ok(done),
            };

        self.within_rate_limit(cancel).await?;
        let outgoing = match render(&self.channel, &envelope) {
            Ok(outgoing) => outgoing,
            Err(reason) => {
                self.release(&keyed.key, &id).await;
                self.metrics
                    .outcome(&envelope.channel, self.provider.name(), "failed");
                step.transitions
                    .push(Transition::of(&envelope, Status::Failed, now).detail(reason));
                return Ok(step);
            }
        };
        let (envelope, Answer { provider, outcome }, done) = self.call(envelope, &outgoing).await;
        let call = Call {
            key: &keyed.key,
            id: &id,
            provider: &provider,
            done,
            home,
        };
        Ok(match outcome {
            Outcome::Sent {
                provider_message_id,
            } => {
                self.after_sent(step, &envelope, &call, provider_message_id, &keyed)
                    .await
            }
            Outcome::Retryable {
                reason,
                retry_after,
            } => {
                self.after_retryable(step, envelope, &call, reason, retry_after)
                    .await
            }
            Outcome::Permanent { reason } => {
                self.after_permanent(step, envelope, &outgoing, &call, reason)
                    .await
            }
        })
    }

    /// What the dedupe claim leaves to do: go on to the provider with the claim held, or the
    /// message's step is already decided (sent before a restart, another worker holds it, a
    /// duplicate of an earlier send).
    fn unless_claimed(
        &self,
        claim: Claim,
        mut step: Step,
        envelope: Envelope,
        keyed: &Keyed,
        home: &str,
        now: DateTime<Utc>,
    ) -> ControlFlow<Step, (Step, Envelope)> {
        match claim {
            Claim::Claimed => return ControlFlow::Continue((step, envelope)),
            Claim::AlreadySent => {
                let mut sent =
                    Transition::of(&envelope, Status::Sent, now).detail("sent before a restart");
                // Which member of a failover channel sent it is not known here: the first
                // record of the send (when it was written) keeps naming it.
                if let [only] = &self.channel.resource.spec.providers[..] {
                    sent = sent.provider(&only.name, None);
                }
                step.transitions.push(sent);
                step.settled_key = keyed.settled();
            }
            Claim::Busy => {
                let due = now + chrono::Duration::from_std(self.busy_retry).unwrap_or_default();
                step.deferred = Some(Deferred {
                    envelope,
                    queue: home.to_owned(),
                    due_at: due,
                });
                step.verdict = Verdict::Busy { at: due };
            }
            Claim::Duplicate { of } => {
                self.metrics
                    .outcome(&envelope.channel, self.provider.name(), "duplicate");
                step.transitions.push(
                    Transition::of(&envelope, Status::Duplicate, now)
                        .detail(format!("duplicate of {of}")),
                );
            }
        }
        ControlFlow::Break(step)
    }

    /// The provider's call, timed: the envelope comes back with the attempt counted, with the
    /// answer (on a failover channel, the member that took the call) and when it came.
    async fn call(
        &self,
        mut envelope: Envelope,
        outgoing: &Outgoing,
    ) -> (Envelope, Answer, DateTime<Utc>) {
        let started = Instant::now();
        let answer = self.provider.send_named(outgoing).await;
        self.metrics
            .provider_seconds
            .with_label_values(&[envelope.channel.as_str(), answer.provider.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let done = Utc::now();
        envelope.attempts += 1;
        // Not the provider's reason: providers quote the recipient back in their errors.
        let kind = match &answer.outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        };
        tracing::debug!(id = %envelope.id, channel = %envelope.channel, provider = %answer.provider,
            to = %ump_core::pii::Masked(&envelope.to), attempt = envelope.attempts, outcome = kind,
            "provider answered");
        (envelope, answer, done)
    }

    /// Sent: marked so in the dedupe store (a redelivery is then "sent before a restart"),
    /// counted, and recorded with the provider's id.
    async fn after_sent(
        &self,
        mut step: Step,
        envelope: &Envelope,
        call: &Call<'_>,
        provider_message_id: Option<String>,
        keyed: &Keyed,
    ) -> Step {
        if let Err(e) = self.dedupe.mark_sent(call.key, call.id, keyed.ttl).await {
            // The message is out; a missing mark only weakens protection against a redelivery
            // of this batch, so it must not hold the batch up.
            tracing::warn!(error = %e, "could not mark a message as sent");
        }
        step.settled_key = keyed.settled();
        let channel = envelope.channel.as_str();
        self.metrics.outcome(channel, call.provider, "sent");
        let latency = (call.done - envelope.accepted_at)
            .to_std()
            .unwrap_or_default();
        self.metrics
            .end_to_end_seconds
            .with_label_values(&[channel])
            .observe(latency.as_secs_f64());
        let mut sent = Transition::of(envelope, Status::Sent, call.done)
            .provider(call.provider, provider_message_id);
        if let Some(origin) = &envelope.fallback {
            sent = sent.detail(format!(
                "sent on fallback channel {channel} (from {})",
                origin.channel
            ));
        }
        step.transitions.push(sent);
        step
    }

    /// A retryable failure: the next attempt after the policy's backoff (parked on the home
    /// queue), or the dead-letter topic once the attempts are used up.
    async fn after_retryable(
        &self,
        mut step: Step,
        envelope: Envelope,
        call: &Call<'_>,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Step {
        let (channel, provider, done) = (envelope.channel.clone(), call.provider, call.done);
        let policy = &self.channel.policy.retry;
        // A fallback channel's retry budget starts when the message arrives there.
        let made = envelope
            .attempts
            .saturating_sub(envelope.fallback.as_ref().map_or(0, |f| f.attempts));
        if made >= policy.max_attempts {
            self.release(call.key, call.id).await;
            self.metrics.outcome(&channel, provider, "dead_lettered");
            let why = format!("gave up after {} attempts: {reason}", envelope.attempts);
            step.transitions.push(
                Transition::of(&envelope, Status::DeadLettered, done)
                    .provider(provider, None)
                    .detail(why.clone()),
            );
            step.dead_letter = Some(envelope);
            step.verdict = Verdict::DeadLetter { reason: why };
        } else {
            let wait = backoff(policy, made, retry_after, jitter());
            let due = done + chrono::Duration::from_std(wait).unwrap_or_default();
            self.metrics.outcome(&channel, provider, "retried");
            step.transitions.push(
                Transition::of(&envelope, Status::Scheduled, done)
                    .provider(provider, None)
                    .detail(format!(
                        "attempt {} failed ({reason}); retry at {}",
                        envelope.attempts,
                        due.to_rfc3339()
                    )),
            );
            step.deferred = Some(Deferred {
                envelope,
                queue: call.home.to_owned(),
                due_at: due,
            });
            step.verdict = Verdict::Retry { at: due };
        }
        step
    }

    /// A refusal for good: handed on to the policy's fallback channel when there is one (and
    /// this is not already the fallback), else failed.
    async fn after_permanent(
        &self,
        mut step: Step,
        envelope: Envelope,
        outgoing: &Outgoing,
        call: &Call<'_>,
        reason: String,
    ) -> Step {
        let (channel, provider, done) = (envelope.channel.clone(), call.provider, call.done);
        let handed_on = match (&self.fallback, &envelope.fallback) {
            (Some(route), None) => Some(
                fallback_envelope(&envelope, outgoing, &self.channel, route)
                    .map(|copy| (route, copy)),
            ),
            // Refused on the fallback channel too, or no fallback: final.
            _ => None,
        };
        match handed_on {
            Some(Ok((route, copy))) => {
                // The dedupe key stays claimed by this message: it was delivered (over the
                // fallback), so an identical send in the window is a duplicate.
                self.metrics.outcome(&channel, provider, "fallback");
                step.transitions.push(
                    Transition::of(&envelope, Status::Scheduled, done)
                        .provider(provider, None)
                        .detail(format!(
                            "attempt {} failed for good ({reason}); falling back to channel {}",
                            envelope.attempts, route.channel
                        )),
                );
                step.deferred = Some(Deferred {
                    envelope: copy,
                    queue: route.queue.clone(),
                    due_at: done,
                });
                step.verdict = Verdict::FellBack;
            }
            other => {
                self.release(call.key, call.id).await;
                self.metrics.outcome(&channel, provider, "failed");
                let detail = match other {
                    Some(Err(why)) => format!("{reason}; no fallback: {why}"),
                    _ => reason,
                };
                step.transitions.push(
                    Transition::of(&envelope, Status::Failed, done)
                        .provider(provider, None)
                        .detail(detail),
                );
            }
        }
        step
    }

    /// Whether `envelope` must not be sent at `now`: out of its time to live, or held until its
    /// `send_at`, the end of the policy's quiet hours or of Kakao's night-time advertising ban.
    fn held_back(&self, envelope: &Envelope, now: DateTime<Utc>) -> Option<Hold> {
        if let Some(ttl) = self.channel.policy.message_ttl {
            let start = envelope
                .send_at
                .map_or(envelope.accepted_at, |at| at.max(envelope.accepted_at));
            if now
                > start + chrono::Duration::from_std(ttl.as_std()).unwrap_or(chrono::Duration::MAX)
            {
                return Some(Hold::Expired(format!("expired: not sent within {ttl}")));
            }
        }
        if let Some(send_at) = envelope.send_at.filter(|at| *at > now) {
            return Some(Hold::Until {
                at: send_at,
                why: format!("send_at {}", send_at.to_rfc3339()),
            });
        }
        if let Some(end) = self.quiet.as_ref().and_then(|q| q.ends_after(now)) {
            return Some(Hold::Until {
                at: end,
                why: format!("quiet hours until {}", end.to_rfc3339()),
            });
        }
        ad_ban_ends(envelope, self.channel.channel_type(), now).map(|end| Hold::Until {
            at: end,
            why: format!(
                "FriendTalk advertising is not sent 20:50–08:00 KST (Kakao's rule): waits until {}",
                end.to_rfc3339()
            ),
        })
    }

    /// Waits until the channel's rate limit lets one more message through (none: at once).
    async fn within_rate_limit(&self, cancel: &CancellationToken) -> Result<(), Aborted> {
        let Some(rate) = &self.channel.policy.rate_limit else {
            return Ok(());
        };
        let burst = rate.burst.unwrap_or(rate.per_second);
        loop {
            let wait = until_available(self.limiter.backend(), &self.metrics, cancel, || {
                self.limiter
                    .try_acquire(&self.rate_key, rate.per_second, burst)
            })
            .await?;
            match wait {
                None => return Ok(()),
                Some(wait) => tokio::select! {
                    _ = cancel.cancelled() => return Err(Aborted("rate limit")),
                    _ = tokio::time::sleep(wait) => {}
                },
            }
        }
    }

    fn park(
        &self,
        mut step: Step,
        envelope: Envelope,
        home: &str,
        due_at: DateTime<Utc>,
        now: DateTime<Utc>,
        why: String,
    ) -> Step {
        self.metrics
            .outcome(&envelope.channel, self.provider.name(), "scheduled");
        step.transitions
            .push(Transition::of(&envelope, Status::Scheduled, now).detail(why));
        step.deferred = Some(Deferred {
            envelope,
            queue: home.to_owned(),
            due_at,
        });
        step.verdict = Verdict::Parked { at: due_at };
        step
    }

    /// Lets the per-message keys of a settled batch go (see `BatchOutcome::settled_keys`). A
    /// failure only leaves them to expire on their own.
    pub async fn forget(&self, keys: &[String], keep: Duration) {
        if let Err(e) = self.dedupe.forget(keys, keep).await {
            tracing::warn!(error = %e, count = keys.len(), "could not shorten settled dedupe keys");
        }
    }

    async fn release(&self, key: &str, id: &str) {
        if let Err(e) = self.dedupe.release(key, id).await {
            tracing::warn!(error = %e, "could not release a dedupe key");
        }
    }
}

/// What the provider gets of `envelope` on `channel`: the content rendered, and marked as
/// advertising when it is (the one place the markings are written; a retry renders again from
/// the unmarked envelope).
fn render(channel: &ResolvedChannel, envelope: &Envelope) -> Result<Outgoing, String> {
    let content = &envelope.content;
    let channel_type = channel.channel_type();
    let advertising = channel.resource.spec.advertising.as_ref();
    if envelope.category == Category::Marketing
        && let Some(why) = ump_core::advertising::unfit_for_advertising(
            &envelope.channel,
            channel_type,
            advertising,
        )
    {
        // Accepted before the channel changed, or handed over by a fallback: never sent
        // unmarked.
        return Err(format!("advertising not sent: {why}"));
    }
    let (subject, text, html, template) = match &content.template {
        Some(name) => {
            let rendered = channel
                .templates
                .render(name, content.locale.as_deref(), &content.data)
                .map_err(|e| e.to_string())?;
            (
                rendered.subject.or_else(|| content.subject.clone()),
                rendered.text,
                rendered.html,
                // What the provider knows the template by (AlimTalk: the variant's code).
                Some(rendered.code),
            )
        }
        None => (
            content.subject.clone(),
            content.body.clone().unwrap_or_default(),
            None,
            None,
        ),
    };
    let text = ump_core::advertising::mark(text, envelope.category, channel_type, advertising);
    Ok(Outgoing {
        id: envelope.id,
        tenant: envelope.tenant.clone(),
        channel: envelope.channel.clone(),
        channel_type,
        to: envelope.to.clone(),
        subject,
        text,
        html,
        template,
        data: content.data.clone(),
        metadata: envelope.metadata.clone(),
        category: envelope.category,
        attempt: envelope.attempts + 1,
    })
}

/// What an outcome handler needs of the call that produced it.
struct Call<'a> {
    /// The message's dedupe key and id (to release the key).
    key: &'a str,
    id: &'a str,
    /// The provider that answered (on a failover channel, the member).
    provider: &'a str,
    /// When it answered.
    done: DateTime<Utc>,
    /// The queue the message came from, where its retry is parked.
    home: &'a str,
}

/// Why a message is not sent now (`DeliveryPipeline::held_back`).
#[derive(Debug, PartialEq)]
enum Hold {
    /// Past its time to live: failed, with this reason.
    Expired(String),
    /// Parked until `at`, for the reason `why`.
    Until { at: DateTime<Utc>, why: String },
}

/// A message's dedupe key, how long it lives, and whether it is the message's own key
/// (`ump:sent:…`, no dedupe window) rather than one shared by identical sends.
struct Keyed {
    key: String,
    ttl: Duration,
    own: bool,
}

impl Keyed {
    fn own(key: String) -> Self {
        Self {
            key,
            ttl: SENT_MEMORY,
            own: true,
        }
    }

    fn shared(key: String, window: Duration) -> Self {
        Self {
            key,
            ttl: window,
            own: false,
        }
    }

    /// The key to let go once the message is settled: only a message's own key.
    fn settled(&self) -> Option<String> {
        self.own.then(|| self.key.clone())
    }
}

#[derive(Debug, Default)]
struct Step {
    transitions: Vec<Transition>,
    deferred: Option<Deferred>,
    dead_letter: Option<Envelope>,
    verdict: Verdict,
    settled_key: Option<String>,
}

/// When `envelope` is FriendTalk advertising inside Kakao's night-time ban at `now`, the moment
/// the ban ends.
fn ad_ban_ends(
    envelope: &Envelope,
    channel_type: ChannelType,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    (envelope.category == Category::Marketing && channel_type == ChannelType::Friendtalk)
        .then(|| ump_core::policy::friendtalk_ad_ban().ends_after(now))
        .flatten()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};
    use ump_core::config::ChannelRegistry;
    use ump_core::model::{Content, MessageId, Priority};
    use ump_core::resources::{DeliveryPolicy, MessageChannel};

    fn channel(channel_type: &str, advertising: Value) -> Arc<ResolvedChannel> {
        let mut spec =
            json!({"type": channel_type, "providers": [{"name": "sandbox", "type": "sandbox"}]});
        if !advertising.is_null() {
            spec["advertising"] = advertising;
        }
        let resource: MessageChannel = serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
            "metadata": {"name": "c"}, "spec": spec
        }))
        .expect("channel");
        let registry = ChannelRegistry::resolve(vec![resource], Vec::<DeliveryPolicy>::new())
            .expect("registry");
        registry.get("c").cloned().expect("the channel")
    }

    #[test]
    fn a_batch_has_one_lane_per_recipient_in_the_batchs_order() {
        let to = |to: &str, body: &str| Envelope {
            to: to.into(),
            ..envelope(Category::Transactional, body, 0)
        };
        let batch = vec![
            to("a", "1"),
            to("b", "2"),
            to("a", "3"),
            to("c", "4"),
            to("b", "5"),
        ];
        let lanes: Vec<Vec<(String, String)>> = by_recipient(batch)
            .into_iter()
            .map(|lane| {
                lane.into_iter()
                    .map(|e| (e.to, e.content.body.unwrap_or_default()))
                    .collect()
            })
            .collect();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            lanes,
            vec![
                vec![pair("a", "1"), pair("a", "3")],
                vec![pair("b", "2"), pair("b", "5")],
                vec![pair("c", "4")],
            ]
        );
    }

    pub(crate) fn envelope(category: Category, body: &str, attempts: u32) -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: "t".into(),
            channel: "c".into(),
            to: "+821012345678".into(),
            content: Content {
                body: Some(body.into()),
                ..Content::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: Vec::new(),
            metadata: Default::default(),
            idempotency_key: None,
            category,
            accepted_at: Utc::now(),
            attempts,
            fallback: None,
        }
    }

    /// A pipeline on the sandbox (every attempt fails, retryably), with three attempts at most,
    /// dedupe in a SQLite file of its own.
    pub(crate) async fn sandbox_pipeline(
        dir: &std::path::Path,
    ) -> (DeliveryPipeline, ump_core::sqlite::SqliteStore) {
        let yaml = r#"
kind: DeliveryPolicy
metadata: {name: p}
spec: {retry: {maxAttempts: 3, initialBackoff: 1s, maxBackoff: 1s}, dedupe: {key: None}, messageTtl: 1h}
---
kind: MessageChannel
metadata: {name: c}
spec:
  type: sms
  policyRef: p
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "100"}}]
"#;
        std::fs::write(dir.join("c.yaml"), yaml).expect("write");
        let registry = ChannelRegistry::load_dir(dir).expect("registry");
        let channel = registry.get("c").cloned().expect("c");
        let outbox = dir.join("outbox.jsonl");
        let context = crate::providers::ProviderContext {
            secrets_dir: dir,
            sandbox_outbox: &outbox,
        };
        let metrics = WorkerMetrics::new(prometheus::Registry::new()).expect("metrics");
        let provider = crate::providers::for_delivery(
            &channel,
            &context,
            &metrics,
            crate::metrics::DeliveryPath::AllInOne,
        )
        .expect("provider");
        let store = ump_core::sqlite::SqliteStore::open(&dir.join("ump.db"))
            .await
            .expect("store");
        let dedupe = Arc::new(crate::all_in_one::SqliteDedupe::new(
            store.clone(),
            "me".into(),
            Duration::from_secs(60),
        ));
        let pipeline = DeliveryPipeline::new(
            channel,
            provider,
            dedupe,
            Arc::new(crate::all_in_one::LocalRateLimiter::new()),
            metrics,
            4,
            Duration::from_secs(1),
        )
        .expect("pipeline");
        (pipeline, store)
    }

    #[tokio::test]
    async fn a_message_is_held_back_until_its_time_or_fails_past_its_ttl() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pipeline, _store) = sandbox_pipeline(dir.path()).await;
        let now = Utc::now();
        let hours = chrono::Duration::hours;
        let message = |accepted: DateTime<Utc>, send_at: Option<DateTime<Utc>>| {
            let mut e = envelope(Category::Transactional, "hello", 0);
            e.accepted_at = accepted;
            e.send_at = send_at;
            e
        };
        assert_eq!(pipeline.held_back(&message(now, None), now), None);
        let later = now + chrono::Duration::minutes(10);
        assert!(matches!(
            pipeline.held_back(&message(now, Some(later)), now),
            Some(Hold::Until { at, .. }) if at == later
        ));
        // The policy's time to live (1 h) counts from acceptance, or from a later send_at.
        assert_eq!(
            pipeline.held_back(&message(now - hours(2), None), now),
            Some(Hold::Expired("expired: not sent within 1h".into()))
        );
        let due_lately = message(now - hours(2), Some(now - chrono::Duration::minutes(30)));
        assert_eq!(pipeline.held_back(&due_lately, now), None);
    }

    #[tokio::test]
    async fn every_message_gets_the_verdict_its_transport_settles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pipeline, store) = sandbox_pipeline(dir.path()).await;
        let message = |body: &str, attempts: u32| {
            let mut e = envelope(Category::Transactional, body, attempts);
            e.channel = "c".into();
            e
        };
        let first = message("first attempt fails", 0);
        let second = message("sent before a restart", 1);
        let last = message("out of attempts", 3);
        let mut later = message("later", 0);
        let at = Utc::now() + chrono::Duration::hours(1);
        later.send_at = Some(at);
        let busy = message("another worker's", 1);
        // Another worker (a live lease) is sending `busy`; `second` was sent before a restart.
        let ttl = Duration::from_secs(60);
        crate::all_in_one::SqliteDedupe::new(store.clone(), "other".into(), ttl)
            .claim(&format!("ump:sent:{}", busy.id), &busy.id.to_string(), ttl)
            .await
            .expect("claim");
        crate::all_in_one::SqliteDedupe::new(store.clone(), "me".into(), ttl)
            .mark_sent(
                &format!("ump:sent:{}", second.id),
                &second.id.to_string(),
                ttl,
            )
            .await
            .expect("mark sent");
        let batch = vec![
            first.clone(),
            second.clone(),
            last.clone(),
            later.clone(),
            busy.clone(),
        ];
        let outcome = pipeline
            .process(batch, "home-queue", &CancellationToken::new())
            .await
            .expect("processed");
        let verdict = |id: MessageId| {
            outcome
                .verdicts
                .iter()
                .find(|(v, _)| *v == id)
                .map(|(_, verdict)| verdict.clone())
                .expect("a verdict")
        };
        assert_eq!(outcome.verdicts.len(), 5);
        assert!(matches!(verdict(first.id), Verdict::Retry { .. }));
        assert_eq!(verdict(second.id), Verdict::Final);
        assert!(
            matches!(verdict(last.id), Verdict::DeadLetter { reason } if reason.starts_with("gave up after")),
            "{:?}",
            verdict(last.id)
        );
        assert_eq!(verdict(later.id), Verdict::Parked { at });
        assert!(matches!(verdict(busy.id), Verdict::Busy { .. }));
        // What is parked goes back to the queue the batch came from.
        let mut parked: Vec<(MessageId, &str)> = outcome
            .record
            .deferred
            .iter()
            .map(|d| (d.envelope.id, d.queue.as_str()))
            .collect();
        parked.sort();
        let mut expected = vec![
            (first.id, "home-queue"),
            (later.id, "home-queue"),
            (busy.id, "home-queue"),
        ];
        expected.sort();
        assert_eq!(parked, expected);
        assert_eq!(outcome.dead_letters.len(), 1);
        // Only the message found sent holds an own key its transport may let go once settled.
        assert_eq!(outcome.settled_keys, [format!("ump:sent:{}", second.id)]);
    }

    #[test]
    fn advertising_is_marked_once_whatever_the_attempt() {
        let sms = channel(
            "sms",
            json!({"senderName": "UMP샵", "optOut": "080-123-4567"}),
        );
        let expected = "(광고) UMP샵\n세일\n무료수신거부 080-123-4567";
        for attempts in [0, 3] {
            let outgoing = render(&sms, &envelope(Category::Marketing, "세일", attempts));
            let outgoing = outgoing.expect("rendered");
            assert_eq!(outgoing.text, expected);
            assert_eq!(outgoing.category, Category::Marketing);
        }
        let info = render(&sms, &envelope(Category::Transactional, "세일", 0));
        assert_eq!(info.map(|o| o.text), Ok("세일".to_owned()));
    }

    #[test]
    fn advertising_on_an_sms_channel_without_an_opt_out_is_never_sent() {
        let plain = channel("sms", Value::Null);
        let refused = render(&plain, &envelope(Category::Marketing, "세일", 0));
        assert!(
            matches!(&refused, Err(why) if why.contains("spec.advertising.optOut")),
            "{refused:?}"
        );
        // FriendTalk: Kakao marks it (the ad flag); the text goes as written.
        let friendtalk = channel("friendtalk", Value::Null);
        let ad = render(&friendtalk, &envelope(Category::Marketing, "세일", 0));
        assert_eq!(ad.map(|o| o.text), Ok("세일".to_owned()));
    }

    #[test]
    fn friendtalk_advertising_waits_for_morning_and_information_does_not() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("time")
                .with_timezone(&Utc)
        };
        let ad = envelope(Category::Marketing, "세일", 0);
        let info = envelope(Category::Transactional, "주문 확인", 0);
        // 23:00 KST: FriendTalk advertising waits for 08:00; information and SMS do not.
        let night = at("2026-11-24T14:00:00Z");
        assert_eq!(
            ad_ban_ends(&ad, ChannelType::Friendtalk, night),
            Some(at("2026-11-24T23:00:00Z"))
        );
        assert_eq!(ad_ban_ends(&info, ChannelType::Friendtalk, night), None);
        assert_eq!(ad_ban_ends(&ad, ChannelType::Sms, night), None);
        // 12:00 KST: no wait.
        assert_eq!(
            ad_ban_ends(&ad, ChannelType::Friendtalk, at("2026-11-24T03:00:00Z")),
            None
        );
    }
}

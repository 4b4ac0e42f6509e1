//! The worker of the all-in-one mode: the same pipeline as the cluster mode, fed from the SQLite
//! queue instead of Kafka, with dedupe in the SQLite file and the rate limit in process.
//!
//! A consumed message leaves the queue only in the transaction that records its outcome (and
//! parks its retry, or dead-letters it), so a crash at any point leaves it queued: after a
//! restart it is delivered again, and its dedupe key (kept in the same file) turns an
//! already-sent message into "sent" without a second provider call. The crash window is the
//! cluster mode's: between the provider's answer and the `sent` mark.

use crate::dedupe::{Claim, DedupeStore, DedupeUnavailable};
use crate::metrics::WorkerMetrics;
use crate::pause::until_available;
use crate::pipeline::{Aborted, BatchOutcome, DeliveryPipeline};
use crate::transport::{Batch, Shape, Transport, drive};
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
pub use ump_core::ratelimit::LocalRateLimiter;
use ump_core::sqlite::SqliteStore;

/// Dedupe keys in the SQLite file, with the Redis store's semantics (see `dedupe`): the value is
/// `<message id>|sending|<instance>|<ms>` and then `<message id>|sent|<instance>|<s>`.
pub struct SqliteDedupe {
    store: SqliteStore,
    instance: String,
    lease: Duration,
    /// One process owns the file; this makes each read-modify-write atomic within it.
    lock: tokio::sync::Mutex<()>,
}

impl SqliteDedupe {
    pub fn new(store: SqliteStore, instance: String, lease: Duration) -> Self {
        Self {
            store,
            instance,
            lease,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn key(key: &str) -> String {
        format!("dedupe:{key}")
    }
}

fn unavailable(e: sqlx::Error) -> DedupeUnavailable {
    DedupeUnavailable(e.to_string())
}

fn ttl_from(now: chrono::DateTime<Utc>, ttl: Duration) -> chrono::DateTime<Utc> {
    now + chrono::Duration::from_std(ttl.max(Duration::from_secs(1)))
        .unwrap_or(chrono::Duration::days(1))
}

#[async_trait::async_trait]
impl DedupeStore for SqliteDedupe {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn claim(&self, key: &str, id: &str, ttl: Duration) -> Result<Claim, DedupeUnavailable> {
        let key = Self::key(key);
        let _guard = self.lock.lock().await;
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        if let Some(value) = self
            .store
            .get_expiring(&key, now)
            .await
            .map_err(unavailable)?
        {
            let mut parts = value.splitn(4, '|');
            let (owner, state, instance, at) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if owner != id {
                return Ok(Claim::Duplicate {
                    of: owner.to_owned(),
                });
            }
            if state == "sent" {
                return Ok(Claim::AlreadySent);
            }
            let since = now_ms - at.parse::<i64>().unwrap_or(0);
            if instance != self.instance && since < self.lease.as_millis() as i64 {
                return Ok(Claim::Busy);
            }
        }
        self.store
            .put_expiring(
                &key,
                &format!("{id}|sending|{}|{now_ms}", self.instance),
                ttl_from(now, ttl),
            )
            .await
            .map_err(unavailable)?;
        Ok(Claim::Claimed)
    }

    async fn mark_sent(&self, key: &str, id: &str, ttl: Duration) -> Result<(), DedupeUnavailable> {
        let key = Self::key(key);
        let _guard = self.lock.lock().await;
        let now = Utc::now();
        let value = format!("{id}|sent|{}|{}", self.instance, now.timestamp());
        match self
            .store
            .get_expiring(&key, now)
            .await
            .map_err(unavailable)?
        {
            // Someone else's key (it expired and was taken over): leave it alone.
            Some(current) if !current.starts_with(&format!("{id}|")) => Ok(()),
            Some(_) => self
                .store
                .replace_expiring(&key, &value)
                .await
                .map(|_| ())
                .map_err(unavailable),
            None => self
                .store
                .put_expiring(&key, &value, ttl_from(now, ttl))
                .await
                .map_err(unavailable),
        }
    }

    async fn release(&self, key: &str, id: &str) -> Result<(), DedupeUnavailable> {
        let key = Self::key(key);
        let _guard = self.lock.lock().await;
        let now = Utc::now();
        match self
            .store
            .get_expiring(&key, now)
            .await
            .map_err(unavailable)?
        {
            // Only this process's own claim (see the Redis script).
            Some(current) if current.starts_with(&format!("{id}|sending|{}|", self.instance)) => {
                self.store.delete_expiring(&key).await.map_err(unavailable)
            }
            _ => Ok(()),
        }
    }

    async fn forget(&self, keys: &[String], keep: Duration) -> Result<(), DedupeUnavailable> {
        let keys: Vec<String> = keys.iter().map(|k| Self::key(k)).collect();
        let until = (!keep.is_zero()).then(|| ttl_from(Utc::now(), keep));
        self.store
            .shorten_expiring(&keys, until)
            .await
            .map_err(unavailable)
    }
}

/// Consumes one queue of the SQLite file through a channel's pipeline.
pub struct LocalConsumer {
    pub pipeline: Arc<DeliveryPipeline>,
    pub store: SqliteStore,
    /// The queue consumed; parked messages (retries, send_at) come back to it.
    pub queue: String,
    pub wake: Arc<Notify>,
    pub batch: u32,
    pub metrics: WorkerMetrics,
}

impl LocalConsumer {
    pub async fn run(self, cancel: CancellationToken) {
        let queue = Arc::new(SqliteQueue::from(self));
        let pipeline = Arc::clone(&queue.pipeline);
        // The SQLite queue's `next_batch` never fails: a read error is retried there.
        let _ = drive(pipeline, queue, &cancel).await;
    }
}

/// A queue of the SQLite file as a [`Transport`]: due rows, oldest first, each batch settled
/// before the next is read, by one transaction that records its outcome and deletes its rows.
///
/// One batch at a time: every write of the mode (the API's accepts, the dedupe claims, the
/// settlements) goes through the file's one writer, so settling a batch while the next is
/// delivered (tried, with the rows in hand leased in memory) measured no faster end to end
/// (BENCHMARKS.md, "All-in-one"), and it needs the leases.
struct SqliteQueue {
    pipeline: Arc<DeliveryPipeline>,
    store: SqliteStore,
    queue: String,
    dead_letter_queue: String,
    wake: Arc<Notify>,
    batch: u32,
    metrics: WorkerMetrics,
}

impl From<LocalConsumer> for SqliteQueue {
    fn from(consumer: LocalConsumer) -> Self {
        Self {
            dead_letter_queue: format!("{}.dlq", consumer.queue),
            pipeline: consumer.pipeline,
            store: consumer.store,
            queue: consumer.queue,
            wake: consumer.wake,
            batch: consumer.batch.max(1),
            metrics: consumer.metrics,
        }
    }
}

#[async_trait::async_trait]
impl Transport for SqliteQueue {
    /// The batch's queue rows.
    type Receipt = Vec<i64>;

    fn shape(&self) -> Shape {
        Shape::OneAtATime
    }

    fn home(&self) -> &str {
        &self.queue
    }

    async fn next_batch(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Batch<Vec<i64>>>> {
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let due = match self.store.due(&self.queue, Utc::now(), self.batch).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "reading the queue failed");
                    Vec::new()
                }
            };
            if !due.is_empty() {
                self.metrics.batch_size.observe(due.len() as f64);
                let (receipt, envelopes) = due.into_iter().map(|q| (q.seq, q.envelope)).unzip();
                return Ok(Some(Batch { envelopes, receipt }));
            }
            self.idle(cancel).await;
        }
    }

    async fn settle(
        &self,
        outcome: BatchOutcome,
        seqs: Vec<i64>,
        cancel: &CancellationToken,
    ) -> Result<(), Aborted> {
        // Parked retries and schedules come back to this queue; fallback copies go to their
        // channel's.
        let dead: Vec<(String, _)> = outcome
            .dead_letters
            .into_iter()
            .map(|e| (self.dead_letter_queue.clone(), e))
            .collect();
        let started = Instant::now();
        until_available("sqlite", &self.metrics, cancel, || {
            self.store.settle(&seqs, &outcome.record, &dead)
        })
        .await?;
        self.metrics
            .history_write_seconds
            .observe(started.elapsed().as_secs_f64());
        // Off the queue, the messages never come back: their own keys can go.
        self.pipeline
            .forget(&outcome.settled_keys, Duration::ZERO)
            .await;
        Ok(())
    }
}

impl SqliteQueue {
    /// Sleeps until a message arrives, a parked one falls due, or shutdown.
    async fn idle(&self, cancel: &CancellationToken) {
        let next = self.store.next_due(&self.queue).await.ok().flatten();
        let wait = next
            .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::contract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn dedupe_keeps_the_contract() {
        let (_dir, store) = store().await;
        let make = |instance: &str, lease| SqliteDedupe::new(store.clone(), instance.into(), lease);
        contract::claims_follow_the_state_machine(&make, "k").await;
        contract::a_lapsed_claim_is_taken_over_and_its_release_changes_nothing(&make, "lapsed")
            .await;
        contract::a_settled_message_is_forgotten_after_what_is_kept(&make, ["now", "soon"]).await;
    }
}

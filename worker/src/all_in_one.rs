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
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
pub use ump_core::ratelimit::LocalRateLimiter;
use ump_core::sqlite::{Queued, SqliteStore};

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

/// A queue of the SQLite file as a [`Transport`]: due rows, oldest first, settled in order by
/// one transaction each that records the batch's outcome and deletes its rows.
///
/// A batch's rows stay in the queue until that transaction, so while it is delivered and settled
/// they are leased to it in memory: the next batch, read meanwhile, skips them. (One process owns
/// the file; after a crash the leases are gone with it, and every row is read again.)
struct SqliteQueue {
    pipeline: Arc<DeliveryPipeline>,
    store: SqliteStore,
    queue: String,
    dead_letter_queue: String,
    wake: Arc<Notify>,
    batch: u32,
    metrics: WorkerMetrics,
    leases: std::sync::Mutex<Leases>,
}

/// The rows of the batches in hand.
#[derive(Default)]
struct Leases {
    /// Rows of batches in delivery or being settled, and of settled ones a read may still see.
    held: HashSet<i64>,
    /// Rows deleted by a settlement since the last read began. A read under way may have seen
    /// them before the deletion committed, so they stay `held` until the next read begins.
    settled: Vec<i64>,
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
            leases: std::sync::Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl Transport for SqliteQueue {
    /// The batch's queue rows.
    type Receipt = Vec<i64>;

    fn shape(&self) -> Shape {
        // A batch is settled while the next one is delivered.
        Shape::InOrder { in_flight: 1 }
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
            // Enough rows that the leased ones among them leave a whole batch.
            let leased = self.begin_read();
            let due = match self
                .store
                .due(&self.queue, Utc::now(), self.batch.saturating_add(leased))
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "reading the queue failed");
                    Vec::new()
                }
            };
            let fresh = self.lease(due);
            if !fresh.is_empty() {
                self.metrics.batch_size.observe(fresh.len() as f64);
                let (receipt, envelopes) = fresh.into_iter().map(|q| (q.seq, q.envelope)).unzip();
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
        self.leases().settled.extend_from_slice(&seqs);
        // A retry parked here may be due before the wait `next_batch` is in ends.
        if outcome
            .record
            .deferred
            .iter()
            .any(|d| d.queue == self.queue)
        {
            self.wake.notify_one();
        }
        // Off the queue, the messages never come back: their own keys can go.
        self.pipeline
            .forget(&outcome.settled_keys, Duration::ZERO)
            .await;
        Ok(())
    }

    async fn give_back(&self, seqs: Vec<i64>) {
        // Still queued: read again.
        let mut leases = self.leases();
        for seq in &seqs {
            leases.held.remove(seq);
        }
    }
}

impl SqliteQueue {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        // Held for a few set operations, never across an await: a poisoned lock's sets are whole.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets go of the rows settled before this read begins (it cannot see them); returns how
    /// many rows are held.
    fn begin_read(&self) -> u32 {
        let mut leases = self.leases();
        for seq in std::mem::take(&mut leases.settled) {
            leases.held.remove(&seq);
        }
        leases.held.len() as u32
    }

    /// The rows of `due` no batch holds, at most a batch of them, leased to the next batch.
    fn lease(&self, due: Vec<Queued>) -> Vec<Queued> {
        let mut leases = self.leases();
        let fresh: Vec<Queued> = due
            .into_iter()
            .filter(|q| !leases.held.contains(&q.seq))
            .take(self.batch as usize)
            .collect();
        leases.held.extend(fresh.iter().map(|q| q.seq));
        fresh
    }

    /// Sleeps until a message arrives, a parked one falls due, or shutdown. (Due rows that are
    /// all leased leave nothing to read until a later one falls due or one is queued.)
    async fn idle(&self, cancel: &CancellationToken) {
        let now = Utc::now();
        let next = self.store.next_due(&self.queue, now).await.ok().flatten();
        let wait = next
            .map(|at| (at - now).to_std().unwrap_or_default())
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
    use ump_core::model::Envelope;

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

    #[tokio::test]
    async fn a_batch_in_hand_is_not_read_again_until_it_is_settled_or_given_back() {
        use crate::pipeline::tests::{envelope, sandbox_pipeline};
        use ump_core::model::Category;
        let dir = tempfile::tempdir().expect("temp dir");
        let (pipeline, store) = sandbox_pipeline(dir.path()).await;
        let pipeline = Arc::new(pipeline);
        let queued: Vec<Envelope> = (0..3)
            .map(|_| envelope(Category::Transactional, "hi", 0))
            .collect();
        for envelope in &queued {
            store
                .enqueue("q", envelope, Utc::now())
                .await
                .expect("enqueue");
        }
        let queue = SqliteQueue::from(LocalConsumer {
            pipeline: Arc::clone(&pipeline),
            store: store.clone(),
            queue: "q".into(),
            wake: Arc::default(),
            batch: 2,
            metrics: WorkerMetrics::new(prometheus::Registry::new()).expect("metrics"),
        });
        let cancel = CancellationToken::new();
        let next = || async {
            tokio::time::timeout(Duration::from_millis(300), queue.next_batch(&cancel))
                .await
                .ok()
                .map(|batch| batch.expect("read").expect("not cancelled"))
        };
        let ids =
            |batch: &Batch<Vec<i64>>| batch.envelopes.iter().map(|e| e.id).collect::<Vec<_>>();

        let first = next().await.expect("a batch");
        assert_eq!(ids(&first), [queued[0].id, queued[1].id]);
        // Read while the first is delivered: only the row it does not hold.
        let second = next().await.expect("a batch");
        assert_eq!(ids(&second), [queued[2].id]);
        assert!(
            next().await.is_none(),
            "every due row is in hand: nothing to read"
        );

        // A batch given back is read again; a settled one is gone.
        queue.give_back(second.receipt).await;
        let again = next().await.expect("given back");
        assert_eq!(ids(&again), [queued[2].id]);
        // Read as of now: the retries the sandbox's failures park fall due later.
        let now = Utc::now();
        let outcome = pipeline
            .process(first.envelopes, "q", &cancel)
            .await
            .expect("delivered");
        queue
            .settle(outcome, first.receipt, &cancel)
            .await
            .expect("settled");
        // A read that began before the settlement committed may have seen its rows: they stay
        // held until the next read begins.
        assert_eq!(queue.leases().settled.len(), 2);
        assert_eq!(queue.begin_read(), 1, "only the batch in hand is held");
        let due: Vec<_> = store.due("q", now, 10).await.expect("due");
        assert_eq!(
            due.iter().map(|q| q.envelope.id).collect::<Vec<_>>(),
            [queued[2].id],
            "the first batch's rows left the queue with its settlement"
        );
        cancel.cancel();
        assert!(queue.next_batch(&cancel).await.expect("read").is_none());
    }
}

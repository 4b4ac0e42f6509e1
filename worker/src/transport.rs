//! One delivery loop for every transport. A [`Transport`] brings batches of envelopes and settles
//! the pipeline's verdicts at its source; [`drive`], between the two, is the same for the Kafka
//! topics of the bulk path, the AMQP queues of the realtime path and the SQLite queues of the
//! all-in-one mode:
//!
//! ```text
//! next_batch ──▶ pipeline (verdict per message) ──▶ settle (durable, then acknowledged)
//! ```
//!
//! What differs is the order a source needs its batches settled in, its [`Shape`]:
//! - **in order** (Kafka): up to `in_flight` batches are delivered at once (the next batch's
//!   lanes start as the previous one's end, and one recipient's messages still go in order, by
//!   the pipeline's turns), and they are settled one after the other in the order they came, each
//!   while the next ones are delivered. A Kafka offset commit covers every earlier offset of its
//!   partition, so a later batch may never be committed before an earlier one.
//! - **one at a time** (SQLite): each batch is settled before the next is read; its messages
//!   stay in the source until its settlement takes them out.
//! - **unordered** (AMQP): each batch is delivered and settled on its own, message by message,
//!   as soon as its outcome is recorded; a slow batch never holds up the next.
//!
//! A batch whose settlement fails (shutdown while a dependency it waits for is down) stops an
//! in-order loop: nothing after it is settled, so its source delivers it and the later ones
//! again. A batch whose delivery is given up (shutdown mid-batch) is handed back to its source.

use crate::pipeline::{Aborted, BatchOutcome, DeliveryPipeline};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use ump_core::model::Envelope;

/// A batch from a transport: the envelopes to deliver, and what the transport needs to settle
/// them (Kafka offsets, SQLite queue rows, AMQP deliveries).
pub struct Batch<R> {
    pub envelopes: Vec<Envelope>,
    pub receipt: R,
}

/// The order a transport's batches are settled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Settled one after the other in the order they came; up to `in_flight` delivered at once.
    InOrder { in_flight: usize },
    /// Each settled before the next is read.
    OneAtATime,
    /// Each settled on its own as soon as it is delivered.
    Unordered,
}

/// Where a channel's messages come from, and how the pipeline's verdicts are settled there.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// What settles one batch at its source.
    type Receipt: Send + 'static;

    fn shape(&self) -> Shape;

    /// The queue the pipeline parks deferred messages on (send_at, quiet hours, retries): they
    /// come back through it.
    fn home(&self) -> &str;

    /// Waits for the next batch; `Ok(None)` once `cancel` fired, `Err` when the source is gone
    /// (a broken link: the caller reconnects). An in-order transport's must be cancel safe: that
    /// loop drops a waiting call when a delivery ends first, and calls again, and no message the
    /// call has taken from its source may be lost by that. (The other loops never drop a call.)
    async fn next_batch(
        &self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Batch<Self::Receipt>>>;

    /// Settles a delivered batch by its verdicts: its outcome made durable, then its messages
    /// acknowledged at the source. `Err` leaves the batch unsettled (shutdown while a dependency
    /// is down): the source delivers it again.
    async fn settle(
        &self,
        outcome: BatchOutcome,
        receipt: Self::Receipt,
        cancel: &CancellationToken,
    ) -> Result<(), Aborted>;

    /// Hands back a batch whose delivery was given up, unsettled (by default its source delivers
    /// it again once the consumer is gone).
    async fn give_back(&self, _receipt: Self::Receipt) {}

    /// Called once the loop has ended and every batch in hand is settled or given up.
    async fn finish(&self) {}
}

/// Delivers `transport`'s batches through `pipeline` and settles them there, until `cancel`
/// fires (the batches in hand are finished first) or the source fails (its `Err`).
pub async fn drive<T: Transport>(
    pipeline: Arc<DeliveryPipeline>,
    transport: Arc<T>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let result = match transport.shape() {
        Shape::InOrder { in_flight } => {
            InOrder {
                pipeline,
                transport: Arc::clone(&transport),
                cancel: cancel.clone(),
                settling: None,
            }
            .run(in_flight.max(1))
            .await
        }
        Shape::OneAtATime => one_at_a_time(&pipeline, &*transport, cancel).await,
        Shape::Unordered => unordered(pipeline, Arc::clone(&transport), cancel).await,
    };
    transport.finish().await;
    result
}

/// A batch in delivery: its outcome (or why it was given up) and its receipt.
type Delivering<R> = JoinHandle<(Result<BatchOutcome, Aborted>, R)>;

struct InOrder<T: Transport> {
    pipeline: Arc<DeliveryPipeline>,
    transport: Arc<T>,
    cancel: CancellationToken,
    /// The batch being settled: the next one starts settling once it is.
    settling: Option<JoinHandle<Result<(), Aborted>>>,
}

impl<T: Transport> InOrder<T> {
    async fn run(mut self, in_flight: usize) -> anyhow::Result<()> {
        let mut delivering: VecDeque<Delivering<T::Receipt>> = VecDeque::new();
        let (result, abandoned) = loop {
            if delivering.len() >= in_flight
                && let Some(oldest) = delivering.pop_front()
            {
                if !self.hand_over(oldest.await).await {
                    break (Ok(()), true);
                }
                continue;
            }
            let next = tokio::select! {
                // The oldest delivery ended while no batch came: it is settled now, not when the
                // next batch comes.
                done = async { delivering.front_mut().expect("not empty").await },
                    if !delivering.is_empty() => {
                    delivering.pop_front();
                    if !self.hand_over(done).await {
                        break (Ok(()), true);
                    }
                    continue;
                }
                next = self.transport.next_batch(&self.cancel) => next,
            };
            match next {
                Ok(Some(batch)) => delivering.push_back(self.deliver(batch)),
                Ok(None) => break (Ok(()), false),
                Err(e) => break (Err(e), false),
            }
        };
        // The batches in hand are finished in order. After one that was given up or not settled
        // none is settled (it comes first: they all come again); they are only waited for.
        let mut settling = !abandoned;
        while let Some(next) = delivering.pop_front() {
            let done = next.await;
            if settling {
                settling = self.hand_over(done).await;
            } else if let Ok((_, receipt)) = done {
                self.transport.give_back(receipt).await;
            }
        }
        if let Some(previous) = self.settling.take() {
            settled(previous.await);
        }
        result
    }

    /// Admits a batch to the pipeline (in the order batches come: recipients keep their order
    /// across batches) and delivers it in a task of its own.
    fn deliver(&self, batch: Batch<T::Receipt>) -> Delivering<T::Receipt> {
        let admitted = self.pipeline.admit(batch.envelopes);
        let pipeline = Arc::clone(&self.pipeline);
        let home = self.transport.home().to_owned();
        let cancel = self.cancel.clone();
        let receipt = batch.receipt;
        tokio::spawn(async move {
            let outcome = pipeline.deliver_admitted(admitted, &home, &cancel).await;
            (outcome, receipt)
        })
    }

    /// Starts settling a delivered batch once the batch before it is settled; false when the
    /// loop must stop (the batch was given up, or the one before it could not be settled).
    async fn hand_over(
        &mut self,
        delivered: Result<(Result<BatchOutcome, Aborted>, T::Receipt), JoinError>,
    ) -> bool {
        let (outcome, receipt) = match delivered {
            Ok((Ok(outcome), receipt)) => (outcome, receipt),
            Ok((Err(aborted), receipt)) => {
                tracing::warn!(%aborted, "batch given up; its source delivers it again");
                self.transport.give_back(receipt).await;
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "delivering a batch failed; its source delivers it again");
                return false;
            }
        };
        if let Some(previous) = self.settling.take()
            && !settled(previous.await)
        {
            self.transport.give_back(receipt).await;
            return false;
        }
        let (transport, cancel) = (Arc::clone(&self.transport), self.cancel.clone());
        self.settling = Some(tokio::spawn(async move {
            transport.settle(outcome, receipt, &cancel).await
        }));
        true
    }
}

/// Logs how a settlement ended; true when its batch is settled.
fn settled(result: Result<Result<(), Aborted>, JoinError>) -> bool {
    match result {
        Ok(Ok(())) => true,
        Ok(Err(aborted)) => {
            tracing::warn!(%aborted, "batch left unsettled; its source delivers it again");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "settling a batch failed; its source delivers it again");
            false
        }
    }
}

async fn one_at_a_time<T: Transport>(
    pipeline: &DeliveryPipeline,
    transport: &T,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let batch = match transport.next_batch(cancel).await? {
            Some(batch) => batch,
            None => return Ok(()),
        };
        match pipeline
            .process(batch.envelopes, transport.home(), cancel)
            .await
        {
            Ok(outcome) => {
                if let Err(aborted) = transport.settle(outcome, batch.receipt, cancel).await {
                    tracing::warn!(%aborted, "batch left unsettled; its source delivers it again");
                    return Ok(());
                }
            }
            Err(aborted) => {
                tracing::warn!(%aborted, "batch given up; its source delivers it again");
                transport.give_back(batch.receipt).await;
                return Ok(());
            }
        }
    }
}

async fn unordered<T: Transport>(
    pipeline: Arc<DeliveryPipeline>,
    transport: Arc<T>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut work: JoinSet<()> = JoinSet::new();
    let result = loop {
        while let Some(joined) = work.try_join_next() {
            reaped(joined);
        }
        let batch = match transport.next_batch(cancel).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (pipeline, transport, cancel) = (
            Arc::clone(&pipeline),
            Arc::clone(&transport),
            cancel.clone(),
        );
        work.spawn(async move {
            match pipeline
                .process(batch.envelopes, transport.home(), &cancel)
                .await
            {
                // A batch left unsettled is the transport's to hand back (it knows how).
                Ok(outcome) => {
                    let _ = transport.settle(outcome, batch.receipt, &cancel).await;
                }
                Err(aborted) => {
                    tracing::warn!(%aborted, "batch given up; handed back to its source");
                    transport.give_back(batch.receipt).await;
                }
            }
        });
    };
    while let Some(joined) = work.join_next().await {
        reaped(joined);
    }
    result
}

fn reaped(joined: Result<(), JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "a batch task failed; its source delivers its messages again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::{envelope, sandbox_pipeline};
    use std::sync::Mutex;
    use std::time::Duration;
    use ump_core::model::Category;

    /// What a scripted transport saw, in order.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// Batch n was read.
        Read(usize),
        /// Batch n began settling, with this many verdicts.
        Settling(usize, usize),
        Settled(usize),
        GivenBack(usize),
    }

    /// Hands out `batches` (numbered by position), then `Ok(None)`; settles batch `slow` slowly,
    /// and fails the settlement of batch `fails`.
    struct Script {
        shape: Shape,
        batches: Mutex<VecDeque<(usize, Vec<Envelope>)>>,
        slow: Option<usize>,
        fails: Option<usize>,
        seen: Mutex<Vec<Seen>>,
        finished: Mutex<bool>,
    }

    impl Script {
        fn new(shape: Shape, batches: usize, per_batch: usize) -> Self {
            let batches = (0..batches)
                .map(|n| {
                    let envelopes = (0..per_batch)
                        .map(|i| Envelope {
                            // One recipient per batch: each batch is one lane.
                            to: format!("+8210{n:04}{i:04}"),
                            ..envelope(Category::Transactional, "hi", 0)
                        })
                        .collect();
                    (n, envelopes)
                })
                .collect();
            Self {
                shape,
                batches: Mutex::new(batches),
                slow: None,
                fails: None,
                seen: Mutex::default(),
                finished: Mutex::new(false),
            }
        }

        fn seen(&self) -> Vec<Seen> {
            std::mem::take(&mut *self.seen.lock().unwrap())
        }
    }

    #[async_trait::async_trait]
    impl Transport for Script {
        type Receipt = usize;

        fn shape(&self) -> Shape {
            self.shape
        }

        fn home(&self) -> &str {
            "home"
        }

        async fn next_batch(
            &self,
            _cancel: &CancellationToken,
        ) -> anyhow::Result<Option<Batch<usize>>> {
            let next = self.batches.lock().unwrap().pop_front();
            if let Some((n, _)) = &next {
                self.seen.lock().unwrap().push(Seen::Read(*n));
            }
            Ok(next.map(|(receipt, envelopes)| Batch { envelopes, receipt }))
        }

        async fn settle(
            &self,
            outcome: BatchOutcome,
            n: usize,
            _cancel: &CancellationToken,
        ) -> Result<(), Aborted> {
            self.seen
                .lock()
                .unwrap()
                .push(Seen::Settling(n, outcome.verdicts.len()));
            if self.slow == Some(n) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if self.fails == Some(n) {
                return Err(Aborted("test"));
            }
            self.seen.lock().unwrap().push(Seen::Settled(n));
            Ok(())
        }

        async fn give_back(&self, n: usize) {
            self.seen.lock().unwrap().push(Seen::GivenBack(n));
        }

        async fn finish(&self) {
            *self.finished.lock().unwrap() = true;
        }
    }

    async fn run(script: Script) -> (Vec<Seen>, bool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pipeline, _store) = sandbox_pipeline(dir.path()).await;
        let script = Arc::new(script);
        drive(
            Arc::new(pipeline),
            Arc::clone(&script),
            &CancellationToken::new(),
        )
        .await
        .expect("drive");
        let finished = *script.finished.lock().unwrap();
        (script.seen(), finished)
    }

    /// What was settled and given back, in order, without the reads.
    fn settlements(seen: &[Seen]) -> Vec<&Seen> {
        seen.iter()
            .filter(|s| !matches!(s, Seen::Read(_)))
            .collect()
    }

    /// Where `event` happened in `seen`.
    fn at(seen: &[Seen], event: Seen) -> usize {
        seen.iter()
            .position(|s| *s == event)
            .unwrap_or_else(|| panic!("{event:?} in {seen:?}"))
    }

    #[tokio::test]
    async fn in_order_batches_are_settled_one_after_the_other_in_the_order_they_came() {
        // Batch 0 settles slowly while batches 1 and 2 are delivered: they wait for it.
        let mut script = Script::new(Shape::InOrder { in_flight: 2 }, 4, 3);
        script.slow = Some(0);
        let (seen, finished) = run(script).await;
        let expected: Vec<Seen> = (0..4)
            .flat_map(|n| [Seen::Settling(n, 3), Seen::Settled(n)])
            .collect();
        // Every batch of the source is settled, each with a verdict per message, although the
        // source ended (`Ok(None)`) while they were in hand.
        assert_eq!(settlements(&seen), expected.iter().collect::<Vec<_>>());
        // Batch 1 was read (and delivered) while batch 0 was settling.
        assert!(
            at(&seen, Seen::Read(1)) < at(&seen, Seen::Settled(0)),
            "{seen:?}"
        );
        assert!(finished, "the transport is told the loop ended");
    }

    #[tokio::test]
    async fn an_in_order_batch_left_unsettled_stops_every_later_one() {
        let mut script = Script::new(Shape::InOrder { in_flight: 1 }, 4, 2);
        script.fails = Some(1);
        script.slow = Some(1);
        let (seen, finished) = run(script).await;
        let seen = settlements(&seen);
        assert_eq!(
            seen[..3],
            [
                &Seen::Settling(0, 2),
                &Seen::Settled(0),
                &Seen::Settling(1, 2)
            ]
        );
        // The loop stops: batch 2 (delivered while batch 1 was settling) and any batch after it
        // are handed back, never settled, so the source delivers them again after batch 1.
        assert!(
            seen[3..]
                .iter()
                .all(|s| matches!(s, Seen::GivenBack(n) if *n >= 2)),
            "{seen:?}"
        );
        assert!(seen[3..].contains(&&Seen::GivenBack(2)), "{seen:?}");
        assert!(finished);
    }

    #[tokio::test]
    async fn one_at_a_time_each_batch_is_settled_before_the_next_is_read() {
        let mut script = Script::new(Shape::OneAtATime, 3, 2);
        script.slow = Some(0);
        let (seen, finished) = run(script).await;
        let expected: Vec<Seen> = (0..3)
            .flat_map(|n| [Seen::Read(n), Seen::Settling(n, 2), Seen::Settled(n)])
            .collect();
        assert_eq!(seen, expected);
        assert!(finished);
    }

    #[tokio::test]
    async fn one_at_a_time_a_batch_left_unsettled_ends_the_loop() {
        let mut script = Script::new(Shape::OneAtATime, 3, 2);
        script.fails = Some(1);
        let (seen, finished) = run(script).await;
        assert_eq!(
            seen,
            [
                Seen::Read(0),
                Seen::Settling(0, 2),
                Seen::Settled(0),
                Seen::Read(1),
                Seen::Settling(1, 2)
            ]
        );
        assert!(finished);
    }

    #[tokio::test]
    async fn unordered_batches_are_settled_each_on_its_own() {
        // Batch 0 settles slowly: the others do not wait for it.
        let mut script = Script::new(Shape::Unordered, 3, 2);
        script.slow = Some(0);
        let (seen, finished) = run(script).await;
        assert!(
            at(&seen, Seen::Settled(1)) < at(&seen, Seen::Settled(0)),
            "{seen:?}"
        );
        assert!(
            at(&seen, Seen::Settled(2)) < at(&seen, Seen::Settled(0)),
            "{seen:?}"
        );
        assert_eq!(settlements(&seen).len(), 6, "{seen:?}");
        assert!(finished);
    }
}

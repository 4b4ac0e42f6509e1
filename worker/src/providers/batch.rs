//! Sends that can share one provider request, coalesced: each message is submitted on its own
//! and awaits its own outcome, as with any provider, while the messages submitted together under
//! one key (e.g. an AlimTalk template) go out as one request of at most `max` recipients, once
//! the request is full or its first message has waited `linger`. The provider maps the answer
//! back to one outcome per message, in the order they were given.
//!
//! The pipeline sees no difference: dedupe, rate limits, quiet hours and history still act per
//! message before and after `send`. A single message (no campaign) leaves after the linger.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use ump_core::provider::Outcome;

/// How messages are grouped into requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most messages per request (the provider's own limit).
    pub max: usize,
    /// Longest wait of a request's first message for others to join it.
    pub linger: Duration,
}

type Request<K, I> = (K, I, oneshot::Sender<Outcome>);

/// One request being filled.
struct Filling<I> {
    items: Vec<I>,
    waiting: Vec<oneshot::Sender<Outcome>>,
    due: Instant,
}

/// Sends `items` under `key` as one request; answers one outcome per item, in their order.
pub trait SendMany<K, I>: Send + Sync + 'static {
    fn send_many(&self, key: K, items: Vec<I>) -> impl Future<Output = Vec<Outcome>> + Send;
}

pub struct Batcher<K, I, S> {
    limits: BatchLimits,
    sender: Arc<S>,
    /// The coalescing task, started with the first message (on the runtime that sends).
    queue: OnceLock<mpsc::UnboundedSender<Request<K, I>>>,
}

impl<K, I, S> Batcher<K, I, S>
where
    K: Clone + Eq + Hash + Send + 'static,
    I: Send + 'static,
    S: SendMany<K, I>,
{
    pub fn new(limits: BatchLimits, sender: Arc<S>) -> Self {
        Self {
            limits: BatchLimits {
                max: limits.max.max(1),
                linger: limits.linger,
            },
            sender,
            queue: OnceLock::new(),
        }
    }

    /// `item`'s outcome, once the request it joined is answered.
    pub async fn submit(&self, key: K, item: I) -> Outcome {
        let queue = self.queue.get_or_init(|| {
            let (queue, requests) = mpsc::unbounded_channel();
            tokio::spawn(coalesce(self.limits, Arc::clone(&self.sender), requests));
            queue
        });
        let (done, outcome) = oneshot::channel();
        if queue.send((key, item, done)).is_err() {
            return gone();
        }
        outcome.await.unwrap_or_else(|_| gone())
    }
}

fn gone() -> Outcome {
    Outcome::Retryable {
        reason: "the provider's request was dropped unanswered".into(),
        retry_after: None,
    }
}

/// Fills requests per key and sends each when full or due; ends (sending what it holds) when
/// the batcher is dropped.
async fn coalesce<K, I, S>(
    limits: BatchLimits,
    sender: Arc<S>,
    mut requests: mpsc::UnboundedReceiver<Request<K, I>>,
) where
    K: Clone + Eq + Hash + Send + 'static,
    I: Send + 'static,
    S: SendMany<K, I>,
{
    let mut filling: HashMap<K, Filling<I>> = HashMap::new();
    loop {
        let next_due = filling.values().map(|f| f.due).min();
        let received = match next_due {
            Some(due) => tokio::select! {
                received = requests.recv() => received,
                () = tokio::time::sleep_until(due) => {
                    let now = Instant::now();
                    let due: Vec<K> = filling
                        .iter()
                        .filter(|(_, f)| f.due <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        if let Some(f) = filling.remove(&key) {
                            dispatch(&sender, key, f);
                        }
                    }
                    continue;
                }
            },
            None => requests.recv().await,
        };
        let Some((key, item, done)) = received else {
            for (key, f) in filling.drain() {
                dispatch(&sender, key, f);
            }
            return;
        };
        let f = filling.entry(key.clone()).or_insert_with(|| Filling {
            items: Vec::new(),
            waiting: Vec::new(),
            due: Instant::now() + limits.linger,
        });
        f.items.push(item);
        f.waiting.push(done);
        if f.items.len() >= limits.max
            && let Some(full) = filling.remove(&key)
        {
            dispatch(&sender, key, full);
        }
    }
}

/// Sends one request in a task of its own and hands each message its outcome.
fn dispatch<K, I, S>(sender: &Arc<S>, key: K, filling: Filling<I>)
where
    K: Send + 'static,
    I: Send + 'static,
    S: SendMany<K, I>,
{
    let sender = Arc::clone(sender);
    tokio::spawn(async move {
        let count = filling.items.len();
        let mut outcomes = sender.send_many(key, filling.items).await.into_iter();
        for done in filling.waiting {
            let outcome = outcomes.next().unwrap_or_else(|| Outcome::Retryable {
                reason: format!("the provider answered fewer than the {count} messages sent"),
                retry_after: None,
            });
            // A message whose caller went away has nobody to tell.
            let _ = done.send(outcome);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers each item by its value: even sent, odd refused; records the requests.
    #[derive(Default)]
    struct Recorder {
        requests: Mutex<Vec<(&'static str, Vec<u32>)>>,
    }

    impl SendMany<&'static str, u32> for Recorder {
        async fn send_many(&self, key: &'static str, items: Vec<u32>) -> Vec<Outcome> {
            self.requests
                .lock()
                .expect("lock")
                .push((key, items.clone()));
            items
                .iter()
                .map(|i| {
                    if i % 2 == 0 {
                        Outcome::Sent {
                            provider_message_id: Some(i.to_string()),
                        }
                    } else {
                        Outcome::Permanent {
                            reason: format!("refused {i}"),
                        }
                    }
                })
                .collect()
        }
    }

    fn batcher(
        max: usize,
        linger_ms: u64,
    ) -> (Batcher<&'static str, u32, Recorder>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let limits = BatchLimits {
            max,
            linger: Duration::from_millis(linger_ms),
        };
        (Batcher::new(limits, Arc::clone(&recorder)), recorder)
    }

    #[tokio::test(start_paused = true)]
    async fn messages_together_share_requests_of_at_most_max_and_each_gets_its_own_outcome() {
        let (batcher, recorder) = batcher(100, 5);
        let sends = (0..250u32).map(|i| {
            let key = if i < 240 { "welcome" } else { "order" };
            let batcher = &batcher;
            async move { (i, batcher.submit(key, i).await) }
        });
        let outcomes = futures::future::join_all(sends).await;
        for (i, outcome) in outcomes {
            match outcome {
                Outcome::Sent {
                    provider_message_id,
                } => assert_eq!(provider_message_id, Some(i.to_string())),
                Outcome::Permanent { reason } => assert_eq!(reason, format!("refused {i}")),
                other => panic!("{other:?}"),
            }
        }
        let requests = recorder.requests.lock().expect("lock").clone();
        let mut sizes: Vec<(&str, usize)> = requests.iter().map(|(k, v)| (*k, v.len())).collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            vec![
                ("order", 10),
                ("welcome", 40),
                ("welcome", 100),
                ("welcome", 100)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_leaves_after_the_linger() {
        let (batcher, recorder) = batcher(1000, 5);
        let started = Instant::now();
        let outcome = batcher.submit("welcome", 2).await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert_eq!(recorder.requests.lock().expect("lock").len(), 1);
    }

    /// Answers nothing for its last item.
    struct Short;

    impl SendMany<&'static str, u32> for Short {
        async fn send_many(&self, _: &'static str, items: Vec<u32>) -> Vec<Outcome> {
            items
                .iter()
                .skip(1)
                .map(|_| Outcome::Sent {
                    provider_message_id: None,
                })
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_the_answer_leaves_out_is_retried_not_lost() {
        let limits = BatchLimits {
            max: 2,
            linger: Duration::from_millis(1),
        };
        let batcher = Batcher::new(limits, Arc::new(Short));
        let (a, b) = tokio::join!(batcher.submit("k", 1), batcher.submit("k", 2));
        assert!(matches!(a, Outcome::Sent { .. }));
        assert!(matches!(b, Outcome::Retryable { .. }), "{b:?}");
    }
}

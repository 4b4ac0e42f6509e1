//! Whose turn it is to send to a recipient, when several batches are delivered at once.
//!
//! A consumer delivers its next batch while the previous one is still finishing, so that a batch's
//! slowest calls do not leave the provider idle. One recipient's messages must still go out in
//! the order they were consumed: each lane (a recipient's messages within one batch) is admitted
//! in batch order, synchronously, and waits for the lane admitted before it for the same
//! recipient to finish. Lanes of other recipients never wait on each other.
//!
//! The registry holds only recipients with a lane running or waiting: a lane that ends (or is
//! dropped, on shutdown) takes its entry out unless a later lane has replaced it.

use futures::FutureExt;
use futures::future::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Finished = Shared<oneshot::Receiver<()>>;

/// The recipients with a lane admitted and not yet finished: the last such lane of each.
#[derive(Clone, Default)]
pub struct Turns {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    last: HashMap<String, (u64, Finished)>,
}

/// One admitted lane's place in its recipient's order.
pub struct Turn {
    /// Finishes when the lane admitted before this one for the same recipient has ended.
    after: Option<Finished>,
    /// Held while the lane runs; dropping it lets the next lane of the recipient go.
    _ends: Ending,
}

struct Ending {
    turns: Turns,
    to: String,
    seq: u64,
    /// Dropped with the lane: the next lane's `after` resolves.
    _finished: oneshot::Sender<()>,
}

impl Turns {
    /// Admits one lane per recipient, in the order given (a batch's order). Call it for batches
    /// in the order they were consumed.
    pub fn admit<'a>(&self, recipients: impl IntoIterator<Item = &'a str>) -> Vec<Turn> {
        let mut registry = match self.inner.lock() {
            Ok(registry) => registry,
            Err(poisoned) => poisoned.into_inner(),
        };
        recipients
            .into_iter()
            .map(|to| {
                let seq = registry.next;
                registry.next += 1;
                let (finished, done) = oneshot::channel();
                let after = registry
                    .last
                    .insert(to.to_owned(), (seq, done.shared()))
                    .map(|(_, previous)| previous);
                Turn {
                    after,
                    _ends: Ending {
                        turns: self.clone(),
                        to: to.to_owned(),
                        seq,
                        _finished: finished,
                    },
                }
            })
            .collect()
    }

    /// Recipients with a lane running or waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|r| r.last.len()).unwrap_or_default()
    }
}

impl Turn {
    /// Waits until the recipient's previous lane has ended (at once when there is none).
    /// Cancel-safe: dropped before the end, it waits again when called again.
    pub async fn wait(&mut self) {
        if let Some(after) = &self.after {
            // Ended or dropped: either way it is no longer sending.
            let _ = after.clone().await;
            self.after = None;
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        let mut registry = match self.turns.inner.lock() {
            Ok(registry) => registry,
            Err(poisoned) => poisoned.into_inner(),
        };
        if registry
            .last
            .get(&self.to)
            .is_some_and(|(seq, _)| *seq == self.seq)
        {
            registry.last.remove(&self.to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ended(turn: &mut Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(20), turn.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_recipients_next_lane_waits_for_the_one_before_and_others_do_not() {
        let turns = Turns::default();
        let mut first = turns.admit(["alice", "bob"]);
        let mut second = turns.admit(["carol", "alice"]);
        // Nothing before the first batch's lanes, nor before carol's.
        assert!(ended(&mut first[0]).await);
        assert!(ended(&mut first[1]).await);
        assert!(ended(&mut second[0]).await);
        // alice's second lane waits for her first one to end.
        let mut alice_again = second.pop().expect("alice's second lane");
        assert!(!ended(&mut alice_again).await);
        drop(first);
        assert!(ended(&mut alice_again).await);
    }

    #[tokio::test]
    async fn three_batches_in_a_row_go_one_after_another_for_one_recipient() {
        let turns = Turns::default();
        let mut one = turns.admit(["alice"]);
        let mut two = turns.admit(["alice"]);
        let mut three = turns.admit(["alice"]);
        assert!(ended(&mut one[0]).await);
        assert!(!ended(&mut two[0]).await);
        assert!(!ended(&mut three[0]).await);
        drop(one);
        assert!(ended(&mut two[0]).await);
        assert!(!ended(&mut three[0]).await);
        drop(two);
        assert!(ended(&mut three[0]).await);
    }

    #[tokio::test]
    async fn the_registry_keeps_only_recipients_in_flight() {
        let turns = Turns::default();
        let first = turns.admit(["alice", "bob"]);
        let second = turns.admit(["alice"]);
        assert_eq!(turns.len(), 2);
        // bob's only lane ended; alice's first ended but her second still runs.
        drop(first);
        assert_eq!(turns.len(), 1);
        drop(second);
        assert_eq!(turns.len(), 0);
    }
}

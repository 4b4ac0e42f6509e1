//! The processor of the all-in-one mode: the same fold over the SQLite file's event log. One
//! process owns the file; a batch's entries are deleted in the transaction that stores what they
//! changed, so a crash loses none and counts none twice.

use crate::{EventMetrics, backoff};
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use ump_core::sqlite::SqliteStore;

/// Entries folded per transaction.
pub const BATCH: u32 = 500;

pub struct LocalProcessor {
    pub store: SqliteStore,
    /// Notified when events are appended.
    pub wake: Arc<Notify>,
    pub metrics: EventMetrics,
}

impl LocalProcessor {
    /// Runs until `cancel` fires; the batch in hand is committed first.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0;
        let mut wake_ups = tokio::time::interval(crate::WAKE_EVERY);
        wake_ups.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let timer = self.metrics.batch_seconds.start_timer();
            match self.store.process_events(BATCH, Utc::now()).await {
                Ok(Some(report)) => {
                    timer.observe_duration();
                    self.metrics.record(&report);
                    failures = 0;
                    continue;
                }
                Ok(None) => {
                    timer.stop_and_discard();
                    failures = 0;
                }
                Err(e) => {
                    timer.stop_and_discard();
                    self.metrics.failures.inc();
                    tracing::warn!(error = %e, "processing events failed; retrying");
                    failures += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff(failures)) => continue,
                    }
                }
            }
            if let Ok(n) = self.store.event_backlog().await {
                self.metrics
                    .backlog
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = wake_ups.tick() => {
                    match self.store.queue_due(Utc::now()).await {
                        Ok(n) => self.metrics.wakeups.inc_by(n),
                        Err(e) => tracing::warn!(error = %e, "queueing due wake-ups failed"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use ump_automation::event::EventInput;
    use ump_core::audience::{EventLog, SegmentStore};
    use ump_core::audience_sqlite::SqliteEventLog;

    #[tokio::test]
    async fn appended_events_reach_the_segments_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let segment = serde_json::from_value(serde_json::json!({"id": "buyers",
            "condition": {"performed": {"event": "purchase", "within": "7d"}}}))
        .unwrap();
        store.put_segment("t", segment, Utc::now()).await.unwrap();
        let wake = Arc::new(Notify::new());
        let metrics = EventMetrics::new(prometheus::Registry::new()).unwrap();
        let processor = LocalProcessor {
            store: store.clone(),
            wake: Arc::clone(&wake),
            metrics: metrics.clone(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(processor.run(cancel.clone()));
        let log = SqliteEventLog::new(store.clone(), wake);
        let event = serde_json::from_value::<EventInput>(
            serde_json::json!({"user_id": "u-1", "event": "purchase"}),
        )
        .unwrap()
        .check("", Utc::now())
        .unwrap();
        log.append("t", &[event]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.segment_size("t", "buyers").await.unwrap() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the member never appeared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(metrics.entries.with_label_values(&["counted"]).get(), 1);
    }
}

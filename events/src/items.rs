//! Keeps the recommendations' model current (`ump_core::recommendations`): takes the item
//! changes the processor staged into the counts, rebuilds stale neighbour lists, and ranks
//! popular and trending items. One loop per processor process; several processes share the work
//! (staged changes are claimed with `SKIP LOCKED`, a rebuild is idempotent).

use crate::backoff;
use chrono::Utc;
use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ump_core::recommendations::ItemModel;

/// Staged batches taken per transaction.
const TAKE: u32 = 200;
/// Neighbour lists rebuilt per round.
const REBUILD: u32 = 500;
/// How long an item's list waits after the first change not yet in it: changes to a popular
/// item within this make one rebuild, so the rebuilds per second are bounded by the items, not
/// by the events.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often the loop looks for work when there was none.
const IDLE: Duration = Duration::from_millis(500);
/// How often popular and trending items are ranked when nothing changed (the windows move on).
pub const RANK_EVERY: Duration = Duration::from_secs(60);
/// How soon after the last ranking changes taken in are ranked.
pub const RANK_AFTER_CHANGE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ItemMetrics {
    /// Staged batches of item changes taken into the counts.
    pub taken: IntCounter,
    /// Neighbour lists rebuilt.
    pub rebuilt: IntCounter,
    /// Work waiting, by `kind`: staged (batches of changes), stale (neighbour lists).
    pub backlog: IntGaugeVec,
}

impl ItemMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let taken = IntCounter::new(
            "ump_item_changes_taken_total",
            "Staged batches of item changes (views, purchases) taken into the recommendation counts",
        )?;
        let rebuilt = IntCounter::new(
            "ump_item_neighbours_rebuilt_total",
            "Item neighbour lists rebuilt after their co-occurrence counts changed",
        )?;
        let backlog = IntGaugeVec::new(
            Opts::new(
                "ump_item_model_backlog",
                "Recommendation upkeep waiting, by kind (staged: batches of item changes; \
                 stale: neighbour lists to rebuild)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(taken.clone()))?;
        registry.register(Box::new(rebuilt.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        Ok(Self {
            taken,
            rebuilt,
            backlog,
        })
    }
}

/// Runs until `cancel` fires: changes taken as they come, stale lists rebuilt after each take,
/// rankings `RANK_AFTER_CHANGE` after changes came in, and at least every `RANK_EVERY`.
pub async fn run(model: Arc<dyn ItemModel>, metrics: ItemMetrics, cancel: CancellationToken) {
    let mut failures = 0;
    let mut ranked_at: Option<Instant> = None;
    let mut changed = true;
    loop {
        match round(model.as_ref(), &metrics).await {
            Ok((busy, took)) => {
                failures = 0;
                changed |= took;
                let since = ranked_at.map(|at| at.elapsed());
                let due = since.is_none_or(|since| {
                    since >= RANK_EVERY || (changed && since >= RANK_AFTER_CHANGE)
                });
                if due {
                    ranked_at = Some(Instant::now());
                    changed = false;
                    if let Err(e) = model.rank(Utc::now()).await {
                        tracing::warn!(error = %e, "ranking popular and trending items failed");
                    }
                }
                if busy {
                    continue;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(IDLE) => {}
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "keeping the recommendation model failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
            }
        }
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// One round: take what is staged, rebuild what went stale. Whether there was work, and
/// whether changes were taken.
async fn round(
    model: &dyn ItemModel,
    metrics: &ItemMetrics,
) -> Result<(bool, bool), ump_core::history::HistoryError> {
    let taken = model.take_changes(TAKE, Utc::now()).await?;
    metrics.taken.inc_by(taken);
    let now = Utc::now();
    let settled = now - chrono::Duration::from_std(SETTLE).unwrap_or_default();
    let rebuilt = model.rebuild_neighbours(REBUILD, settled, now).await?;
    metrics.rebuilt.inc_by(rebuilt);
    let (staged, stale) = model.backlog().await?;
    metrics
        .backlog
        .with_label_values(&["staged"])
        .set(i64::try_from(staged).unwrap_or(i64::MAX));
    metrics
        .backlog
        .with_label_values(&["stale"])
        .set(i64::try_from(stale).unwrap_or(i64::MAX));
    Ok((taken > 0 || rebuilt > 0, taken > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ump_automation::event::EventInput;
    use ump_automation::recommend::Ranking;
    use ump_core::audience::EventLog;
    use ump_core::audience_sqlite::SqliteEventLog;
    use ump_core::recommendations::SqliteItemModel;
    use ump_core::sqlite::SqliteStore;

    #[tokio::test]
    async fn views_reach_the_neighbour_lists_and_rankings_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let log = SqliteEventLog::new(store.clone(), Arc::default());
        let events: Vec<_> = [("u-1", "a"), ("u-1", "b"), ("u-2", "a"), ("u-2", "b")]
            .into_iter()
            .map(|(user, item)| {
                serde_json::from_value::<EventInput>(serde_json::json!({"user_id": user,
                    "event": "product_viewed", "properties": {"item_id": item}}))
                .unwrap()
                .check("", Utc::now())
                .unwrap()
            })
            .collect();
        log.append("t", &events).await.unwrap();
        while store
            .process_events(100, Utc::now())
            .await
            .unwrap()
            .is_some()
        {}
        let model = Arc::new(SqliteItemModel::new(store.clone()));
        let registry = Registry::new();
        let metrics = ItemMetrics::new(&registry).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(model.clone(), metrics.clone(), cancel.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lists = model.neighbours("t", &["a".into()]).await.unwrap();
            let ranked = model.ranking("t", Ranking::Popular, None).await.unwrap();
            if lists.get("a").is_some_and(|l| !l.is_empty()) && !ranked.is_empty() {
                assert_eq!(lists["a"][0].0, "b");
                assert_eq!(ranked[0].0, "a");
                break;
            }
            assert!(Instant::now() < deadline, "the model never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(metrics.taken.get(), 1);
        assert_eq!(metrics.rebuilt.get(), 2);
        assert_eq!(metrics.backlog.with_label_values(&["stale"]).get(), 0);
    }
}

//! Segments, people's state and the event log of the all-in-one mode, in its SQLite file. One
//! process owns the file, so the processor's transaction is simpler than MySQL's: it deletes the
//! entries it takes from `event_log` in the transaction that stores what they changed.

use crate::audience::{
    Automation, BatchReport, EventLog, Loaded, LogEntry, Member, PersonChange, SIZE_HISTORY,
    SegmentError, SegmentStore, SizePoint, StoredSegment, decode, encode, fold, minute,
    segment_set,
};
use crate::history::HistoryError;
use crate::person_codec;
use crate::queue::EnqueueError;
use crate::sqlite::{SqliteStore, micros};
use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use ump_automation::event::Queued;
use ump_automation::person::PersonRecord;
use ump_automation::segment::{Segment, with_segment, without_segment};

fn from_micros(us: i64) -> Result<DateTime<Utc>, HistoryError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| HistoryError::Corrupt(format!("time {us}")))
}

/// The event log in the SQLite file; `wake` tells the processor there is work.
#[derive(Clone)]
pub struct SqliteEventLog {
    store: SqliteStore,
    wake: Arc<Notify>,
}

impl SqliteEventLog {
    pub fn new(store: SqliteStore, wake: Arc<Notify>) -> Self {
        Self { store, wake }
    }
}

#[async_trait::async_trait]
impl EventLog for SqliteEventLog {
    async fn append(&self, tenant: &str, entries: &[Queued]) -> Result<(), EnqueueError> {
        let unavailable = |e: sqlx::Error| EnqueueError::Unavailable(e.to_string());
        let mut tx = self.store.pool().begin().await.map_err(unavailable)?;
        for queued in entries {
            let entry = LogEntry {
                tenant: tenant.to_owned(),
                queued: queued.clone(),
            };
            let text =
                serde_json::to_string(&entry).map_err(|e| EnqueueError::Rejected(e.to_string()))?;
            sqlx::query("INSERT INTO event_log (tenant_id, entry) VALUES (?, ?)")
                .bind(tenant)
                .bind(text)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        self.wake.notify_one();
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(self.store.pool())
            .await
            .map(|_| ())
            .map_err(|e| format!("SQLite: {e}"))
    }
}

impl SqliteStore {
    /// Takes up to `limit` entries of the event log, oldest first, folds them in and stores the
    /// result; the entries are gone in the same transaction. `None` when the log is empty.
    pub async fn process_events(
        &self,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<BatchReport>, HistoryError> {
        let mut tx = self.pool().begin().await?;
        // A write first: the transaction holds the file's write lock from here on.
        let rows = sqlx::query(
            "DELETE FROM event_log WHERE seq IN \
             (SELECT seq FROM event_log ORDER BY seq LIMIT ?) RETURNING seq, entry",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut taken: Vec<(i64, LogEntry)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            taken.push((
                seq,
                decode("event log entry", &row.try_get::<String, _>(1)?)?,
            ));
        }
        taken.sort_by_key(|(seq, _)| *seq);
        let entries: Vec<LogEntry> = taken.into_iter().map(|(_, e)| e).collect();
        let mut people: BTreeMap<(String, String), Loaded> = BTreeMap::new();
        let mut segments = BTreeMap::new();
        for entry in &entries {
            let key = (entry.tenant.clone(), entry.queued.user_id.clone());
            if let std::collections::btree_map::Entry::Vacant(slot) = people.entry(key) {
                let (tenant, user) = slot.key();
                let loaded = load_person(&mut tx, tenant, user).await?;
                slot.insert(loaded);
            }
            if !segments.contains_key(&entry.tenant) {
                let stored = load_segments(&mut *tx, &entry.tenant).await?;
                let automation = Automation {
                    segments: segment_set(
                        &entry.tenant,
                        stored.into_iter().map(|s| s.segment).collect(),
                    )?,
                    journeys: crate::journeys::load_set_sqlite(&mut tx, &entry.tenant).await?,
                };
                segments.insert(entry.tenant.clone(), automation);
            }
        }
        let (changes, report) = fold(&entries, people, &segments, now);
        write_changes(&mut tx, &changes, now).await?;
        crate::journeys::write_effects_sqlite(&mut tx, &changes, &report, now).await?;
        crate::recommendations::stage_sqlite(&mut tx, &report.items, now).await?;
        tx.commit().await?;
        Ok(Some(report))
    }

    /// Puts a recheck of every person whose wake-up is due on the event log and clears their
    /// wake-up, in one transaction; the processor's step sets the next one. Returns how many.
    pub async fn queue_due(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        let mut tx = self.pool().begin().await?;
        let due = sqlx::query(
            "UPDATE person_state SET next_wake = NULL WHERE next_wake <= ? \
             RETURNING tenant_id, user_id",
        )
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await?;
        for row in &due {
            let tenant: String = row.try_get(0)?;
            let user: String = row.try_get(1)?;
            let entry = LogEntry {
                tenant: tenant.clone(),
                queued: Queued::recheck(&user, now),
            };
            sqlx::query("INSERT INTO event_log (tenant_id, entry) VALUES (?, ?)")
                .bind(&tenant)
                .bind(encode("event log entry", &entry)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(due.len() as u64)
    }

    /// Entries waiting in the event log.
    pub async fn event_backlog(&self) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_log")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }
}

async fn load_person(
    tx: &mut Transaction<'_, Sqlite>,
    tenant: &str,
    user: &str,
) -> Result<Loaded, HistoryError> {
    let profile: Option<String> =
        sqlx::query_scalar("SELECT profile FROM profiles WHERE tenant_id = ? AND user_id = ?")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    let record: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT record FROM person_state WHERE tenant_id = ? AND user_id = ?")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    let erased_at: Option<i64> =
        sqlx::query_scalar("SELECT erased_at FROM erasures WHERE tenant_id = ? AND user_key = ?")
            .bind(tenant)
            .bind(crate::profiles::erasure_key(user))
            .fetch_optional(&mut **tx)
            .await?;
    Ok(Loaded {
        erased_at: erased_at.map(crate::sqlite::from_micros).transpose()?,
        profile: profile
            .as_deref()
            .map(crate::profiles::decode)
            .transpose()?,
        record: record.as_deref().map(person_codec::decode).transpose()?,
    })
}

async fn load_segments<'e, E>(executor: E, tenant: &str) -> Result<Vec<StoredSegment>, HistoryError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT definition, created_at, updated_at FROM segments WHERE tenant_id = ? \
         ORDER BY segment_id",
    )
    .bind(tenant)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredSegment {
                segment: decode("segment", &row.try_get::<String, _>(0)?)?,
                created_at: from_micros(row.try_get(1)?)?,
                updated_at: from_micros(row.try_get(2)?)?,
            })
        })
        .collect()
}

async fn write_changes(
    tx: &mut Transaction<'_, Sqlite>,
    changes: &[PersonChange],
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    for c in changes {
        sqlx::query(
            "INSERT INTO person_state (tenant_id, user_id, record, next_wake, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, user_id) DO UPDATE SET \
             record = excluded.record, next_wake = excluded.next_wake, \
             updated_at = excluded.updated_at",
        )
        .bind(&c.tenant)
        .bind(&c.user_id)
        .bind(person_codec::encode(&c.record)?)
        .bind(c.record.next_wake.map(micros))
        .bind(micros(now))
        .execute(&mut **tx)
        .await?;
        if let Some(profile) = &c.new_profile {
            sqlx::query(
                "INSERT OR IGNORE INTO profiles \
                 (tenant_id, user_id, profile, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&c.tenant)
            .bind(&c.user_id)
            .bind(crate::profiles::encode(profile)?)
            .bind(micros(now))
            .bind(micros(now))
            .execute(&mut **tx)
            .await?;
        }
        for segment in &c.entered {
            sqlx::query(
                "INSERT OR IGNORE INTO segment_members (tenant_id, segment_id, user_id, since) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(&c.tenant)
            .bind(segment)
            .bind(&c.user_id)
            .bind(micros(now))
            .execute(&mut **tx)
            .await?;
        }
        for segment in &c.left {
            sqlx::query(
                "DELETE FROM segment_members WHERE tenant_id = ? AND segment_id = ? AND user_id = ?",
            )
            .bind(&c.tenant)
            .bind(segment)
            .bind(&c.user_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Every person of the tenant is looked at again (a segment changed): a recheck of each goes on
/// the event log.
pub(crate) async fn recheck_all(
    tx: &mut Transaction<'_, Sqlite>,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM profiles WHERE tenant_id = ? \
         UNION SELECT user_id FROM person_state WHERE tenant_id = ?",
    )
    .bind(tenant)
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    for user in users {
        let entry = LogEntry {
            tenant: tenant.to_owned(),
            queued: Queued::recheck(&user, now),
        };
        sqlx::query("INSERT INTO event_log (tenant_id, entry) VALUES (?, ?)")
            .bind(tenant)
            .bind(encode("event log entry", &entry)?)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Begins a change of the tenant's segments holding the file's write lock, and reads them.
async fn lock_segments(
    store: &SqliteStore,
    tenant: &str,
) -> Result<(Transaction<'static, Sqlite>, Vec<Segment>), HistoryError> {
    let mut tx = store.pool().begin().await?;
    // A write first: the transaction holds the file's write lock from here on.
    sqlx::query("UPDATE segments SET updated_at = updated_at WHERE 0")
        .execute(&mut *tx)
        .await?;
    let existing = load_segments(&mut *tx, tenant)
        .await?
        .into_iter()
        .map(|s| s.segment)
        .collect();
    Ok((tx, existing))
}

#[async_trait::async_trait]
impl SegmentStore for SqliteStore {
    async fn segments(&self, tenant: &str) -> Result<Vec<StoredSegment>, HistoryError> {
        load_segments(self.pool(), tenant).await
    }

    async fn put_segment(
        &self,
        tenant: &str,
        segment: Segment,
        now: DateTime<Utc>,
    ) -> Result<bool, SegmentError> {
        let (mut tx, existing) = lock_segments(self, tenant).await?;
        let new = !existing.iter().any(|s| s.id == segment.id);
        with_segment(existing, segment.clone()).map_err(SegmentError::Invalid)?;
        sqlx::query(
            "INSERT INTO segments (tenant_id, segment_id, definition, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, segment_id) DO UPDATE SET \
             definition = excluded.definition, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(&segment.id)
        .bind(encode("segment", &segment)?)
        .bind(micros(now))
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(HistoryError::from)?;
        recheck_all(&mut tx, tenant, now).await?;
        tx.commit().await.map_err(HistoryError::from)?;
        Ok(new)
    }

    async fn delete_segment(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SegmentError> {
        let (mut tx, existing) = lock_segments(self, tenant).await?;
        if !existing.iter().any(|s| s.id == id) {
            return Ok(false);
        }
        without_segment(existing, id).map_err(SegmentError::InUse)?;
        for statement in [
            "DELETE FROM segments WHERE tenant_id = ? AND segment_id = ?",
            "DELETE FROM segment_members WHERE tenant_id = ? AND segment_id = ?",
        ] {
            sqlx::query(statement)
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(HistoryError::from)?;
        }
        recheck_all(&mut tx, tenant, now).await?;
        tx.commit().await.map_err(HistoryError::from)?;
        Ok(true)
    }

    async fn segment_size(&self, tenant: &str, id: &str) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM segment_members WHERE tenant_id = ? AND segment_id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        Ok(n as u64)
    }

    async fn members(
        &self,
        tenant: &str,
        id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Member>, HistoryError> {
        let rows = sqlx::query(
            "SELECT user_id, since FROM segment_members \
             WHERE tenant_id = ? AND segment_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
        )
        .bind(tenant)
        .bind(id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user_id: r.try_get(0)?,
                    since: from_micros(r.try_get(1)?)?,
                })
            })
            .collect()
    }

    async fn sizes(
        &self,
        tenant: &str,
        id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<SizePoint>, HistoryError> {
        let rows = sqlx::query(
            "SELECT at, size FROM segment_sizes \
             WHERE tenant_id = ? AND segment_id = ? AND at >= ? ORDER BY at",
        )
        .bind(tenant)
        .bind(id)
        .bind(micros(since))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SizePoint {
                    at: from_micros(r.try_get(0)?)?,
                    size: r.try_get::<i64, _>(1)?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn sample_sizes(&self, now: DateTime<Utc>) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT OR IGNORE INTO segment_sizes (tenant_id, segment_id, at, size) \
             SELECT s.tenant_id, s.segment_id, ?, \
               (SELECT COUNT(*) FROM segment_members m \
                WHERE m.tenant_id = s.tenant_id AND m.segment_id = s.segment_id) \
             FROM segments s",
        )
        .bind(micros(minute(now)))
        .execute(self.pool())
        .await?;
        sqlx::query("DELETE FROM segment_sizes WHERE at < ?")
            .bind(micros(now - SIZE_HISTORY))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn person(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<PersonRecord>, HistoryError> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM person_state WHERE tenant_id = ? AND user_id = ?",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        bytes.as_deref().map(person_codec::decode).transpose()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use ump_automation::event::EventInput;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    fn event(user: &str, name: &str, id: &str) -> Queued {
        serde_json::from_value::<EventInput>(
            json!({"user_id": user, "event": name, "message_id": id}),
        )
        .unwrap()
        .check("", now())
        .unwrap()
    }

    #[tokio::test]
    async fn segments_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let process = processor(store.clone());
        crate::testing::audience::segments_members_sizes_and_erasure(&store, &store, &process)
            .await;
    }

    /// Folds entries the way the all-in-one processor does: through the SQLite event log.
    pub(crate) fn processor(
        store: SqliteStore,
    ) -> impl Fn(Vec<LogEntry>, DateTime<Utc>) -> futures::future::BoxFuture<'static, ()> {
        move |entries, now| {
            let store = store.clone();
            Box::pin(async move {
                let log = SqliteEventLog::new(store.clone(), Arc::default());
                let mut by_tenant: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
                for e in entries {
                    by_tenant.entry(e.tenant).or_default().push(e.queued);
                }
                for (tenant, queued) in by_tenant {
                    log.append(&tenant, &queued).await.unwrap();
                }
                while store.process_events(100, now).await.unwrap().is_some() {}
            })
        }
    }

    #[tokio::test]
    async fn events_in_memberships_out_and_the_log_emptied_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let segment: Segment = serde_json::from_value(json!({"id": "buyers",
            "condition": {"performed": {"event": "purchase", "within": "1h"}}}))
        .unwrap();
        assert!(
            store
                .put_segment("t1", segment.clone(), now())
                .await
                .unwrap()
        );
        assert!(!store.put_segment("t1", segment, now()).await.unwrap());
        let log = SqliteEventLog::new(store.clone(), Arc::default());
        log.append(
            "t1",
            &[
                event("u-1", "purchase", "m1"),
                event("u-1", "purchase", "m1"),
                event("u-2", "page_viewed", "m2"),
            ],
        )
        .await
        .unwrap();
        log.append("t2", &[event("u-1", "purchase", "m1")])
            .await
            .unwrap();
        let report = store.process_events(100, now()).await.unwrap().unwrap();
        assert_eq!((report.counted, report.repeated, report.entered), (3, 1, 1));
        assert_eq!(store.event_backlog().await.unwrap(), 0);
        assert!(store.process_events(100, now()).await.unwrap().is_none());
        assert_eq!(store.segment_size("t1", "buyers").await.unwrap(), 1);
        assert_eq!(store.segment_size("t2", "buyers").await.unwrap(), 0);
        let members = store.members("t1", "buyers", None, 10).await.unwrap();
        assert_eq!(members[0].user_id, "u-1");
        // An anonymous profile was made for each unknown person, per tenant.
        use crate::profiles::ProfileStore;
        let anonymous = store.profile("t2", "u-1").await.unwrap().unwrap();
        assert!(anonymous.anonymous);

        store.sample_sizes(now()).await.unwrap();

        // The hour passes: the wake-up rechecks the person, who leaves.
        let later = now() + chrono::Duration::hours(1);
        assert_eq!(store.queue_due(later).await.unwrap(), 1);
        let report = store.process_events(100, later).await.unwrap().unwrap();
        assert_eq!((report.rechecks, report.left), (1, 1));
        assert_eq!(store.segment_size("t1", "buyers").await.unwrap(), 0);
        let record = store.person("t1", "u-1").await.unwrap().unwrap();
        assert_eq!(record.recent[0].event, ump_automation::event::SEGMENT_LEFT);

        // Sizes are sampled once a minute, whoever asks.
        store.sample_sizes(later).await.unwrap();
        store.sample_sizes(later).await.unwrap();
        let sizes = store.sizes("t1", "buyers", now()).await.unwrap();
        let counts: Vec<u64> = sizes.iter().map(|p| p.size).collect();
        assert_eq!(counts, [1, 0]);

        // Erasure removes the state and the memberships.
        let erased = store.erase("t1", "u-1", later).await.unwrap();
        assert!(erased.profile && erased.automation_state);
        assert!(store.person("t1", "u-1").await.unwrap().is_none());
    }
}

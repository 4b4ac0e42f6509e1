//! Segments, people's state and the event processor's transaction in MySQL.
//!
//! A batch of the events topic is committed in one transaction: the rows of the batch's
//! partitions in `event_offsets` are locked first, entries below the stored position are dropped
//! (taken before a crash or by the partition's previous owner), then the people are loaded, the
//! pure fold runs, and their state, their memberships, any new profile and the new positions are
//! written together. Kafka's own committed offsets only say where to start reading.

use crate::audience::{
    Automation, BatchReport, Loaded, LogEntry, Member, PersonChange, SIZE_HISTORY, SegmentError,
    SegmentStore, SizePoint, StoredSegment, decode, encode, fold, minute, segment_set,
};
use crate::history::HistoryError;
use crate::person_codec;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::MySqlPool;
use sqlx::{MySql, QueryBuilder, Row, Transaction};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use ump_automation::person::PersonRecord;
use ump_automation::profile::Profile;
use ump_automation::segment::{Segment, SegmentSet, with_segment, without_segment};

/// Rows per multi-row statement (MySQL takes at most 65,535 placeholders).
const CHUNK: usize = 500;

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

/// An entry of the events topic, where it was read.
#[derive(Clone, Debug)]
pub struct Positioned {
    pub partition: i32,
    pub offset: i64,
    /// `None`: the record could not be read. It is passed over, and its position committed
    /// like any other, so that the positions say exactly what is left to read.
    pub entry: Option<LogEntry>,
}

#[derive(Clone, Debug)]
pub struct MySqlAudience {
    pool: MySqlPool,
}

impl MySqlAudience {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Folds a batch of the events topic read by `group` and commits it with the partitions'
    /// new positions. Entries at positions already committed are skipped (counted as repeated).
    pub async fn process(
        &self,
        group: &str,
        topic: &str,
        batch: &[Positioned],
        now: DateTime<Utc>,
    ) -> Result<BatchReport, HistoryError> {
        // Read committed: the locking reads below take no gap locks (lanes insert new people
        // side by side), and each read sees what an erasure committed while this one waited.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let partitions: BTreeSet<i32> = batch.iter().map(|p| p.partition).collect();
        // Makes the rows exist so they can be locked: concurrent owners of a partition (a
        // rebalance in progress) take turns here.
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO event_offsets \
             (consumer_group, topic, partition_id, next_offset, updated_at) ",
        );
        q.push_values(&partitions, |mut row, partition| {
            row.push_bind(group)
                .push_bind(topic)
                .push_bind(*partition)
                .push_bind(0i64)
                .push_bind(naive(now));
        });
        q.build().execute(&mut *tx).await?;
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT partition_id, next_offset FROM event_offsets WHERE consumer_group = ",
        );
        q.push_bind(group)
            .push(" AND topic = ")
            .push_bind(topic)
            .push(" AND partition_id IN (");
        let mut list = q.separated(", ");
        for partition in &partitions {
            list.push_bind(*partition);
        }
        q.push(") ORDER BY partition_id FOR UPDATE");
        let mut positions = BTreeMap::new();
        for row in q.build().fetch_all(&mut *tx).await? {
            positions.insert(row.try_get::<i32, _>(0)?, row.try_get::<i64, _>(1)?);
        }
        let fresh: Vec<&Positioned> = batch
            .iter()
            .filter(|p| p.offset >= positions[&p.partition])
            .collect();
        let skipped = (batch.len() - fresh.len()) as u64;
        let entries: Vec<&LogEntry> = fresh.iter().filter_map(|p| p.entry.as_ref()).collect();
        let people = load_people(&mut tx, &entries).await?;
        let erased: BTreeMap<(String, String), DateTime<Utc>> = people
            .iter()
            .filter_map(|(key, p)| p.erased_at.map(|at| (key.clone(), at)))
            .collect();
        let mut tenants = BTreeMap::new();
        for tenant in entries.iter().map(|e| &e.tenant).collect::<BTreeSet<_>>() {
            let automation = Automation {
                segments: load_segment_set(&mut tx, tenant).await?,
                journeys: crate::journeys::load_set_mysql(&mut tx, tenant).await?,
            };
            tenants.insert(tenant.clone(), automation);
        }
        let (changes, mut report) = fold(entries.iter().copied(), people, &tenants, now);
        report.repeated += skipped;
        write_changes(&mut tx, &changes, now).await?;
        let shard = partitions.first().copied().unwrap_or(0);
        crate::journeys::write_effects_mysql(&mut tx, &changes, &report, shard, now).await?;
        crate::recommendations::stage_mysql(&mut tx, &report.items, now).await?;
        // An erasure that committed while this batch was folded (it waited for none of our
        // locks: its person had no rows yet) must win: fold again with it.
        if erasures(&mut tx, &entries).await? != erased {
            return Err(HistoryError::Conflict(
                "a person of the batch was erased meanwhile".into(),
            ));
        }
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO event_offsets \
             (consumer_group, topic, partition_id, next_offset, updated_at) ",
        );
        q.push_values(&partitions, |mut row, partition| {
            let last = batch
                .iter()
                .filter(|p| p.partition == *partition)
                .map(|p| p.offset)
                .max()
                .expect("a partition of the batch");
            row.push_bind(group)
                .push_bind(topic)
                .push_bind(*partition)
                .push_bind(last + 1)
                .push_bind(naive(now));
        });
        q.push(
            " ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset)), \
             updated_at = VALUES(updated_at)",
        );
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// The committed position of each partition of `topic` for `group`.
    pub async fn positions(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, HistoryError> {
        let rows = sqlx::query(
            "SELECT partition_id, next_offset FROM event_offsets \
             WHERE consumer_group = ? AND topic = ?",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Claims up to `limit` people whose wake-up is due: each claim moves the wake-up to
    /// `retry_at`, so a recheck that never arrives is asked for again then. The caller puts a
    /// recheck of each on the events topic.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        retry_at: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, HistoryError> {
        crate::history::again_on_deadlock(|| self.claim_due_once(now, retry_at, limit)).await
    }

    async fn claim_due_once(
        &self,
        now: DateTime<Utc>,
        retry_at: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, HistoryError> {
        // One transaction for the lot: the due rows are locked as they are read (people a lane
        // holds are skipped; they come round again) and moved on together in one commit.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let rows = sqlx::query(
            "SELECT tenant_id, user_id FROM person_state \
             WHERE next_wake <= ? ORDER BY next_wake LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(naive(now))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let claimed = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<(String, String)>, sqlx::Error>>()?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(claimed);
        }
        let mut q = QueryBuilder::<MySql>::new("UPDATE person_state SET next_wake = ");
        q.push_bind(naive(retry_at))
            .push(" WHERE (tenant_id, user_id) IN (");
        let mut people = q.separated(", ");
        for (tenant, user) in &claimed {
            people
                .push("(")
                .push_bind_unseparated(tenant)
                .push_unseparated(", ")
                .push_bind_unseparated(user)
                .push_unseparated(")");
        }
        q.push(")");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// People whose wake-up is past `before` (for the overdue metric).
    pub async fn overdue(&self, before: DateTime<Utc>) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM person_state WHERE next_wake < ?")
            .bind(naive(before))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}

async fn load_people(
    tx: &mut Transaction<'_, MySql>,
    entries: &[&LogEntry],
) -> Result<BTreeMap<(String, String), Loaded>, HistoryError> {
    let mut by_tenant: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in entries {
        by_tenant
            .entry(&e.tenant)
            .or_default()
            .insert(&e.queued.user_id);
    }
    let mut people: BTreeMap<(String, String), Loaded> = BTreeMap::new();
    for (tenant, users) in by_tenant {
        let users: Vec<&str> = users.into_iter().collect();
        for chunk in users.chunks(CHUNK) {
            for (table, column) in [("profiles", "profile"), ("person_state", "record")] {
                let mut q = QueryBuilder::<MySql>::new(format!(
                    "SELECT user_id, {column} FROM {table} WHERE tenant_id = "
                ));
                q.push_bind(tenant).push(" AND user_id IN (");
                let mut list = q.separated(", ");
                for user in chunk {
                    list.push_bind(*user);
                }
                // Locked: an erasure of one of them waits for this batch, or this batch for it.
                q.push(") FOR UPDATE");
                for row in q.build().fetch_all(&mut **tx).await? {
                    let user: String = row.try_get(0)?;
                    let person = people.entry((tenant.to_owned(), user)).or_default();
                    if table == "profiles" {
                        person.profile = Some(crate::profiles::decode(row.try_get(1)?)?);
                    } else {
                        person.record = Some(person_codec::decode(row.try_get(1)?)?);
                    }
                }
            }
        }
    }
    for ((tenant, user), at) in erasures(tx, entries).await? {
        people.entry((tenant, user)).or_default().erased_at = Some(at);
    }
    Ok(people)
}

/// When each person of `entries` who was ever erased was last erased. Few people are, so this
/// reads a small index.
async fn erasures(
    tx: &mut Transaction<'_, MySql>,
    entries: &[&LogEntry],
) -> Result<BTreeMap<(String, String), DateTime<Utc>>, HistoryError> {
    let mut by_tenant: BTreeMap<&str, HashMap<Vec<u8>, &str>> = BTreeMap::new();
    for e in entries {
        by_tenant.entry(&e.tenant).or_default().insert(
            crate::profiles::erasure_key(&e.queued.user_id),
            &e.queued.user_id,
        );
    }
    let mut erased = BTreeMap::new();
    for (tenant, keys) in by_tenant {
        let keys: Vec<(Vec<u8>, &str)> = keys.into_iter().collect();
        for chunk in keys.chunks(CHUNK) {
            let mut q = QueryBuilder::<MySql>::new(
                "SELECT user_key, erased_at FROM erasures WHERE tenant_id = ",
            );
            q.push_bind(tenant).push(" AND user_key IN (");
            let mut list = q.separated(", ");
            for (key, _) in chunk {
                list.push_bind(key);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                let key: Vec<u8> = row.try_get(0)?;
                if let Some((_, user)) = chunk.iter().find(|(k, _)| *k == key) {
                    erased.insert(
                        ((*tenant).to_owned(), (*user).to_owned()),
                        utc(row.try_get(1)?),
                    );
                }
            }
        }
    }
    Ok(erased)
}

async fn load_segments<'e, E>(executor: E, tenant: &str) -> Result<Vec<StoredSegment>, HistoryError>
where
    E: sqlx::Executor<'e, Database = MySql>,
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
                created_at: utc(row.try_get(1)?),
                updated_at: utc(row.try_get(2)?),
            })
        })
        .collect()
}

async fn load_segment_set(
    tx: &mut Transaction<'_, MySql>,
    tenant: &str,
) -> Result<SegmentSet, HistoryError> {
    let stored = load_segments(&mut **tx, tenant).await?;
    segment_set(tenant, stored.into_iter().map(|s| s.segment).collect())
}

async fn write_changes(
    tx: &mut Transaction<'_, MySql>,
    changes: &[PersonChange],
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    for chunk in changes.chunks(CHUNK) {
        // New profiles first: an erasure holding the place of one makes this wait before
        // anything else of the person is locked.
        let created: Vec<(&PersonChange, &Profile)> = chunk
            .iter()
            .filter_map(|c| c.new_profile.as_ref().map(|p| (c, p)))
            .collect();
        if !created.is_empty() {
            let mut texts = Vec::with_capacity(created.len());
            for (_, profile) in &created {
                texts.push(crate::profiles::encode(profile)?);
            }
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT IGNORE INTO profiles (tenant_id, user_id, profile, created_at, updated_at) ",
            );
            q.push_values(created.iter().zip(&texts), |mut row, ((c, _), text)| {
                row.push_bind(&c.tenant)
                    .push_bind(&c.user_id)
                    .push_bind(text)
                    .push_bind(naive(now))
                    .push_bind(naive(now));
            });
            q.build().execute(&mut **tx).await?;
        }

        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO person_state (tenant_id, user_id, record, next_wake, updated_at) ",
        );
        let mut encoded = Vec::with_capacity(chunk.len());
        for c in chunk {
            encoded.push(person_codec::encode(&c.record)?);
        }
        q.push_values(chunk.iter().zip(&encoded), |mut row, (c, text)| {
            row.push_bind(&c.tenant)
                .push_bind(&c.user_id)
                .push_bind(text)
                .push_bind(c.record.next_wake.map(naive))
                .push_bind(naive(now));
        });
        q.push(
            " ON DUPLICATE KEY UPDATE record = VALUES(record), next_wake = VALUES(next_wake), \
             updated_at = VALUES(updated_at)",
        );
        q.build().execute(&mut **tx).await?;

        let entered: Vec<(&PersonChange, &String)> = chunk
            .iter()
            .flat_map(|c| c.entered.iter().map(move |s| (c, s)))
            .collect();
        if !entered.is_empty() {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT IGNORE INTO segment_members (tenant_id, segment_id, user_id, since) ",
            );
            q.push_values(&entered, |mut row, (c, segment)| {
                row.push_bind(&c.tenant)
                    .push_bind(*segment)
                    .push_bind(&c.user_id)
                    .push_bind(naive(now));
            });
            q.build().execute(&mut **tx).await?;
        }
        let mut left: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for c in chunk {
            for segment in &c.left {
                left.entry((&c.tenant, segment))
                    .or_default()
                    .push(&c.user_id);
            }
        }
        for ((tenant, segment), users) in left {
            let mut q =
                QueryBuilder::<MySql>::new("DELETE FROM segment_members WHERE tenant_id = ");
            q.push_bind(tenant)
                .push(" AND segment_id = ")
                .push_bind(segment)
                .push(" AND user_id IN (");
            let mut list = q.separated(", ");
            for user in users {
                list.push_bind(user);
            }
            q.push(")");
            q.build().execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Every person of the tenant is looked at again: people with a profile and no state yet get
/// one, and every wake-up becomes now.
pub(crate) async fn recheck_all(
    tx: &mut Transaction<'_, MySql>,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    sqlx::query(
        "INSERT IGNORE INTO person_state (tenant_id, user_id, record, next_wake, updated_at) \
         SELECT tenant_id, user_id, '{}', ?, ? FROM profiles WHERE tenant_id = ?",
    )
    .bind(naive(now))
    .bind(naive(now))
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE person_state SET next_wake = ? WHERE tenant_id = ?")
        .bind(naive(now))
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks the tenant's segments (and the gap where new ones would go) for a change.
async fn lock_segments(
    tx: &mut Transaction<'_, MySql>,
    tenant: &str,
) -> Result<Vec<Segment>, HistoryError> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT definition FROM segments WHERE tenant_id = ? FOR UPDATE")
            .bind(tenant)
            .fetch_all(&mut **tx)
            .await?;
    rows.iter().map(|t| decode("segment", t)).collect()
}

#[async_trait::async_trait]
impl SegmentStore for MySqlAudience {
    async fn segments(&self, tenant: &str) -> Result<Vec<StoredSegment>, HistoryError> {
        load_segments(&self.pool, tenant).await
    }

    async fn put_segment(
        &self,
        tenant: &str,
        segment: Segment,
        now: DateTime<Utc>,
    ) -> Result<bool, SegmentError> {
        let mut tx = self.pool.begin().await.map_err(HistoryError::from)?;
        let existing = lock_segments(&mut tx, tenant).await?;
        let new = !existing.iter().any(|s| s.id == segment.id);
        with_segment(existing, segment.clone()).map_err(SegmentError::Invalid)?;
        sqlx::query(
            "INSERT INTO segments (tenant_id, segment_id, definition, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE definition = VALUES(definition), updated_at = VALUES(updated_at)",
        )
        .bind(tenant)
        .bind(&segment.id)
        .bind(encode("segment", &segment)?)
        .bind(naive(now))
        .bind(naive(now))
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
        let mut tx = self.pool.begin().await.map_err(HistoryError::from)?;
        let existing = lock_segments(&mut tx, tenant).await?;
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
        // Records still list the segment until their next step drops it.
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
        .fetch_one(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user_id: r.try_get(0)?,
                    since: utc(r.try_get(1)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
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
        .bind(naive(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SizePoint {
                    at: utc(r.try_get(0)?),
                    size: r.try_get::<i64, _>(1)?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn sample_sizes(&self, now: DateTime<Utc>) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT IGNORE INTO segment_sizes (tenant_id, segment_id, at, size) \
             SELECT s.tenant_id, s.segment_id, ?, \
               (SELECT COUNT(*) FROM segment_members m \
                WHERE m.tenant_id = s.tenant_id AND m.segment_id = s.segment_id) \
             FROM segments s",
        )
        .bind(naive(minute(now)))
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM segment_sizes WHERE at < ?")
            .bind(naive(now - SIZE_HISTORY))
            .execute(&self.pool)
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
        .fetch_optional(&self.pool)
        .await?;
        bytes.as_deref().map(person_codec::decode).transpose()
    }
}

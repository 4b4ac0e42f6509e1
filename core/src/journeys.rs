//! Journeys as stored: the port that keeps their definitions (every version), status, the
//! tenant's frequency caps and live counts, and the outbox of journey messages; MySQL and SQLite
//! implementations. The processor loads a tenant's `JourneySet` and writes its counts and
//! messages in the transaction that commits the people's state and the log position
//! (`load_set_*`, `write_effects_*`), so a message is in the outbox exactly when its step was
//! taken. The API's relay claims outbox rows for a lease, enqueues them through the normal send
//! path with a message id derived from the send's key, and deletes them: a relay that dies
//! before deleting lets the lease run out, and the next enqueues the same ids, which the delivery
//! dedupe drops.

use crate::audience::{BatchReport, PersonChange, decode, encode};
use crate::history::{HistoryError, again_on_deadlock};
use crate::sqlite::{SqliteStore, from_micros, micros};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, QueryBuilder, Row, Sqlite, Transaction};
use std::collections::BTreeMap;
use std::time::Duration;
use ump_automation::FieldError;
use ump_automation::journey::{Cap, Journey, JourneySend, JourneySet, Live, Status};

/// Counts are spread over this many rows per counter, so the processor's lanes (each its own
/// transaction) do not queue on one hot row; reads add them up.
pub const STAT_SHARDS: i32 = 8;

/// A journey as stored: its current version's definition and where it is in its life.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredJourney {
    #[serde(flatten)]
    pub journey: Journey,
    pub status: Status,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One count of a journey's version and step (`step` empty: the journey as a whole; a split
/// arm's name for its assignments and conversions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatRow {
    pub version: u32,
    pub step: String,
    pub counter: String,
    pub value: i64,
}

/// A journey message waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedSend {
    pub id: i64,
    pub tenant: String,
    pub user_id: String,
    pub send: JourneySend,
    /// When the processor put it in the outbox (its batch's time).
    pub queued_at: DateTime<Utc>,
}

/// Why a journey change was refused.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    #[error("invalid journey")]
    Invalid(Vec<FieldError>),
    #[error("no such journey")]
    NotFound,
    /// The change does not fit where the journey is (an archived journey edited, a draft
    /// paused).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] HistoryError),
}

impl From<sqlx::Error> for JourneyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What `put_journey` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub created: bool,
    pub version: u32,
}

#[async_trait::async_trait]
pub trait JourneyStore: Send + Sync {
    async fn journeys(&self, tenant: &str) -> Result<Vec<StoredJourney>, HistoryError>;
    async fn journey(&self, tenant: &str, id: &str) -> Result<Option<StoredJourney>, HistoryError>;
    /// Creates a draft, or changes one: a draft in place, an active or paused journey by a new
    /// version that people enter from now on (those inside finish on theirs). The same
    /// definition again changes nothing.
    async fn put_journey(
        &self,
        tenant: &str,
        journey: Journey,
        now: DateTime<Utc>,
    ) -> Result<Written, JourneyError>;
    /// Moves the journey to `status` (`Status::may_become`); a journey active again has its
    /// people looked at at once, so timers that came due while it was paused fire.
    async fn set_status(
        &self,
        tenant: &str,
        id: &str,
        status: Status,
        now: DateTime<Utc>,
    ) -> Result<StoredJourney, JourneyError>;
    async fn caps(&self, tenant: &str) -> Result<Vec<Cap>, HistoryError>;
    async fn put_caps(
        &self,
        tenant: &str,
        caps: &[Cap],
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError>;
    /// The journey's counts, every version, shards added up.
    async fn stats(&self, tenant: &str, id: &str) -> Result<Vec<StatRow>, HistoryError>;
    /// Takes up to `limit` outbox messages whose lease (if any) ran out, oldest first, for
    /// `lease`.
    async fn claim_sends(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<QueuedSend>, HistoryError>;
    /// Deletes outbox messages that were enqueued (or can never be).
    async fn sends_done(&self, owner: &str, ids: &[i64]) -> Result<(), HistoryError>;
    /// Gives back messages `owner` took but may not send yet (a journey's send rate): another
    /// relay may take them from `until`.
    async fn release_sends(
        &self,
        owner: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<(), HistoryError>;
    /// Messages in the outbox (the relay's backlog).
    async fn outbox_len(&self) -> Result<u64, HistoryError>;
}

/// A journey version as the processor loads it: id, status, current version, since (the
/// journey's last change: its activation or its current version), version, definition.
type VersionRow = (String, String, u32, DateTime<Utc>, u32, String);

/// The stored journeys' versions of a tenant as the processor runs them.
fn assemble(rows: Vec<VersionRow>, caps: Option<String>) -> Result<JourneySet, HistoryError> {
    let mut journeys: BTreeMap<String, Live> = BTreeMap::new();
    for (id, status, current, since, version, definition) in rows {
        let status = Status::parse(&status)
            .ok_or_else(|| HistoryError::Corrupt(format!("journey status {status:?}")))?;
        let journey: Journey = decode("journey", &definition)?;
        journeys
            .entry(id)
            .or_insert_with(|| Live {
                status,
                current,
                versions: BTreeMap::new(),
                since,
            })
            .versions
            .insert(version, journey);
    }
    let caps = match caps {
        Some(text) => decode("caps", &text)?,
        None => Vec::new(),
    };
    Ok(JourneySet { journeys, caps })
}

/// Which of a definition's changes `put_journey` makes.
enum Change {
    Create,
    Replace(u32),
    NewVersion(u32),
    Same(u32),
}

fn change(existing: Option<(Status, u32, &str)>, definition: &str) -> Result<Change, JourneyError> {
    Ok(match existing {
        None => Change::Create,
        Some((_, version, current)) if current == definition => Change::Same(version),
        Some((Status::Archived, _, _)) => {
            return Err(JourneyError::Conflict(
                "an archived journey does not change: create a new one".into(),
            ));
        }
        Some((Status::Draft, version, _)) => Change::Replace(version),
        Some((_, version, _)) => Change::NewVersion(version + 1),
    })
}

fn transition(from: Status, to: Status) -> Result<bool, JourneyError> {
    if from == to {
        return Ok(false);
    }
    if !from.may_become(to) {
        return Err(JourneyError::Conflict(format!(
            "a {} journey cannot become {}",
            from.as_str(),
            to.as_str()
        )));
    }
    Ok(true)
}

/// The counts of a batch, their shard, without those that add up to nothing.
fn stat_rows(report: &BatchReport) -> Vec<(&str, &str, u32, &str, &str, i64)> {
    report
        .journey_stats
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|((tenant, k), n)| {
            (
                tenant.as_str(),
                k.journey.as_str(),
                k.version,
                k.step.as_str(),
                k.counter,
                *n,
            )
        })
        .collect()
}

/// ` IN (…)` with `ids`, for either backend.
fn push_ids<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, ids: impl IntoIterator<Item = i64>)
where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push(" IN (");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    q.push(")");
}

fn sends_of(changes: &[PersonChange]) -> Vec<(&PersonChange, &JourneySend)> {
    changes
        .iter()
        .flat_map(|c| c.sends.iter().map(move |s| (c, s)))
        .collect()
}

/// Every version of a tenant's active and paused journeys (the same text for both backends).
const VERSIONS: &str = "SELECT j.journey_id, j.status, j.current_version, j.updated_at, \
     v.version, v.definition FROM journeys j JOIN journey_versions v \
     ON v.tenant_id = j.tenant_id AND v.journey_id = j.journey_id \
     WHERE j.tenant_id = ? AND j.status IN ('active', 'paused')";

// ---- MySQL ----

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// The tenant's journeys (those not draft or archived) and caps, read in the processor's
/// transaction.
pub async fn load_set_mysql(
    tx: &mut Transaction<'_, MySql>,
    tenant: &str,
) -> Result<JourneySet, HistoryError> {
    let rows = sqlx::query(VERSIONS)
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get::<i32, _>(2)? as u32,
                r.try_get::<NaiveDateTime, _>(3)?.and_utc(),
                r.try_get::<i32, _>(4)? as u32,
                r.try_get(5)?,
            ))
        })
        .collect::<Result<Vec<VersionRow>, HistoryError>>()?;
    let caps: Option<String> = if rows.is_empty() {
        None
    } else {
        sqlx::query_scalar("SELECT caps FROM journey_caps WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
    };
    assemble(rows, caps)
}

/// Writes a batch's journey counts (into `shard`) and messages.
pub async fn write_effects_mysql(
    tx: &mut Transaction<'_, MySql>,
    changes: &[PersonChange],
    report: &BatchReport,
    shard: i32,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    let stats = stat_rows(report);
    if !stats.is_empty() {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO journey_stats (tenant_id, journey_id, version, step, counter, shard, value) ",
        );
        q.push_values(
            &stats,
            |mut row, (tenant, journey, version, step, counter, n)| {
                row.push_bind(*tenant)
                    .push_bind(*journey)
                    .push_bind(*version as i32)
                    .push_bind(*step)
                    .push_bind(*counter)
                    .push_bind(shard.rem_euclid(STAT_SHARDS))
                    .push_bind(*n);
            },
        );
        q.push(" ON DUPLICATE KEY UPDATE value = value + VALUES(value)");
        q.build().execute(&mut **tx).await?;
    }
    let sends = sends_of(changes);
    for chunk in sends.chunks(500) {
        let mut texts = Vec::with_capacity(chunk.len());
        for (_, send) in chunk {
            texts.push(encode("journey send", send)?);
        }
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO journey_sends (tenant_id, user_id, send, created_at) ",
        );
        q.push_values(chunk.iter().zip(&texts), |mut row, ((c, _), text)| {
            row.push_bind(&c.tenant)
                .push_bind(&c.user_id)
                .push_bind(text)
                .push_bind(naive(now));
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

const JOURNEY_COLUMNS: &str = "j.journey_id, j.status, j.current_version, v.definition, \
     j.created_at, j.updated_at";

fn stored(
    status: String,
    version: i64,
    definition: &str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> Result<StoredJourney, HistoryError> {
    Ok(StoredJourney {
        journey: decode("journey", definition)?,
        status: Status::parse(&status)
            .ok_or_else(|| HistoryError::Corrupt(format!("journey status {status:?}")))?,
        version: version as u32,
        created_at,
        updated_at,
    })
}

/// Journeys in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlJourneys {
    pool: sqlx::MySqlPool,
}

impl MySqlJourneys {
    pub fn new(pool: sqlx::MySqlPool) -> Self {
        Self { pool }
    }

    async fn select(
        &self,
        tenant: &str,
        id: Option<&str>,
    ) -> Result<Vec<StoredJourney>, HistoryError> {
        let mut q = QueryBuilder::<MySql>::new(format!(
            "SELECT {JOURNEY_COLUMNS} FROM journeys j JOIN journey_versions v \
             ON v.tenant_id = j.tenant_id AND v.journey_id = j.journey_id \
             AND v.version = j.current_version WHERE j.tenant_id = "
        ));
        q.push_bind(tenant);
        if let Some(id) = id {
            q.push(" AND j.journey_id = ").push_bind(id);
        }
        q.push(" ORDER BY j.journey_id");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                stored(
                    r.try_get(1)?,
                    i64::from(r.try_get::<i32, _>(2)?),
                    &r.try_get::<String, _>(3)?,
                    r.try_get::<NaiveDateTime, _>(4)?.and_utc(),
                    r.try_get::<NaiveDateTime, _>(5)?.and_utc(),
                )
            })
            .collect()
    }

    async fn lock(
        tx: &mut Transaction<'_, MySql>,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(Status, u32, String)>, HistoryError> {
        let row = sqlx::query(
            "SELECT j.status, j.current_version, v.definition FROM journeys j \
             JOIN journey_versions v ON v.tenant_id = j.tenant_id \
             AND v.journey_id = j.journey_id AND v.version = j.current_version \
             WHERE j.tenant_id = ? AND j.journey_id = ? FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| {
            let status: String = r.try_get(0)?;
            Ok((
                Status::parse(&status)
                    .ok_or_else(|| HistoryError::Corrupt(format!("journey status {status:?}")))?,
                r.try_get::<i32, _>(1)? as u32,
                r.try_get(2)?,
            ))
        })
        .transpose()
    }

    async fn claim_once(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<QueuedSend>, HistoryError> {
        // Read committed: the scan past messages other relays hold takes no gap locks, which
        // would hold up (and deadlock with) the processor's inserts of new ones. In id order on
        // the primary key, stopping at `limit`: through the lease index the server would read
        // and lock every free message to sort them, and other relays would find none.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, user_id, send, \
             TIMESTAMPDIFF(MICROSECOND, '1970-01-01', created_at) \
             FROM journey_sends FORCE INDEX (PRIMARY) \
             WHERE lease_until IS NULL OR lease_until < ? ORDER BY id LIMIT ? \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(naive(now))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let claimed = queued(&rows)?;
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut q = QueryBuilder::<MySql>::new("UPDATE journey_sends SET owner = ");
        q.push_bind(owner)
            .push(", lease_until = ")
            .push_bind(naive(until))
            .push(" WHERE id");
        push_ids(&mut q, claimed.iter().map(|c| c.id));
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn done_once(&self, owner: &str, ids: &[i64]) -> Result<(), HistoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Read committed, as the claims: whatever plan the server picks, rows it passes over
        // are not locked (a scan at repeatable read would lock the whole outbox and deadlock
        // with the claims and the processor's inserts).
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut q = QueryBuilder::<MySql>::new("DELETE FROM journey_sends WHERE owner = ");
        q.push_bind(owner).push(" AND id");
        push_ids(&mut q, ids.iter().copied());
        q.build().execute(&mut *conn).await?;
        Ok(())
    }

    async fn release_once(
        &self,
        owner: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new("UPDATE journey_sends SET lease_until = ");
        q.push_bind(naive(until))
            .push(" WHERE owner = ")
            .push_bind(owner)
            .push(" AND id");
        push_ids(&mut q, ids.iter().copied());
        let mut conn = crate::store::read_committed(&self.pool).await?;
        q.build().execute(&mut *conn).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl JourneyStore for MySqlJourneys {
    async fn journeys(&self, tenant: &str) -> Result<Vec<StoredJourney>, HistoryError> {
        self.select(tenant, None).await
    }

    async fn journey(&self, tenant: &str, id: &str) -> Result<Option<StoredJourney>, HistoryError> {
        Ok(self.select(tenant, Some(id)).await?.into_iter().next())
    }

    async fn put_journey(
        &self,
        tenant: &str,
        journey: Journey,
        now: DateTime<Utc>,
    ) -> Result<Written, JourneyError> {
        let definition = encode("journey", &journey)?;
        let mut tx = self.pool.begin().await?;
        let existing = Self::lock(&mut tx, tenant, &journey.id).await?;
        let change = change(
            existing.as_ref().map(|(s, v, d)| (*s, *v, d.as_str())),
            &definition,
        )?;
        let written = match change {
            Change::Same(version) => {
                return Ok(Written {
                    created: false,
                    version,
                });
            }
            Change::Create => {
                sqlx::query(
                    "INSERT INTO journeys (tenant_id, journey_id, status, current_version, \
                     created_at, updated_at) VALUES (?, ?, 'draft', 1, ?, ?)",
                )
                .bind(tenant)
                .bind(&journey.id)
                .bind(naive(now))
                .bind(naive(now))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO journey_versions (tenant_id, journey_id, version, definition, \
                     created_at) VALUES (?, ?, 1, ?, ?)",
                )
                .bind(tenant)
                .bind(&journey.id)
                .bind(&definition)
                .bind(naive(now))
                .execute(&mut *tx)
                .await?;
                Written {
                    created: true,
                    version: 1,
                }
            }
            Change::Replace(version) => {
                sqlx::query(
                    "UPDATE journey_versions SET definition = ? \
                     WHERE tenant_id = ? AND journey_id = ? AND version = ?",
                )
                .bind(&definition)
                .bind(tenant)
                .bind(&journey.id)
                .bind(version as i32)
                .execute(&mut *tx)
                .await?;
                Written {
                    created: false,
                    version,
                }
            }
            Change::NewVersion(version) => {
                sqlx::query(
                    "INSERT INTO journey_versions (tenant_id, journey_id, version, definition, \
                     created_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(tenant)
                .bind(&journey.id)
                .bind(version as i32)
                .bind(&definition)
                .bind(naive(now))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE journeys SET current_version = ? \
                     WHERE tenant_id = ? AND journey_id = ?",
                )
                .bind(version as i32)
                .bind(tenant)
                .bind(&journey.id)
                .execute(&mut *tx)
                .await?;
                Written {
                    created: false,
                    version,
                }
            }
        };
        sqlx::query("UPDATE journeys SET updated_at = ? WHERE tenant_id = ? AND journey_id = ?")
            .bind(naive(now))
            .bind(tenant)
            .bind(&journey.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn set_status(
        &self,
        tenant: &str,
        id: &str,
        status: Status,
        now: DateTime<Utc>,
    ) -> Result<StoredJourney, JourneyError> {
        let mut tx = self.pool.begin().await?;
        let (from, _, _) = Self::lock(&mut tx, tenant, id)
            .await?
            .ok_or(JourneyError::NotFound)?;
        if transition(from, status)? {
            sqlx::query(
                "UPDATE journeys SET status = ?, updated_at = ? \
                 WHERE tenant_id = ? AND journey_id = ?",
            )
            .bind(status.as_str())
            .bind(naive(now))
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if from == Status::Paused && status == Status::Active {
                crate::audience_mysql::recheck_all(&mut tx, tenant, now).await?;
            }
        }
        tx.commit().await?;
        self.journey(tenant, id)
            .await?
            .ok_or(JourneyError::NotFound)
    }

    async fn caps(&self, tenant: &str) -> Result<Vec<Cap>, HistoryError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT caps FROM journey_caps WHERE tenant_id = ?")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        text.map_or(Ok(Vec::new()), |t| decode("caps", &t))
    }

    async fn put_caps(
        &self,
        tenant: &str,
        caps: &[Cap],
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT INTO journey_caps (tenant_id, caps, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE caps = VALUES(caps), updated_at = VALUES(updated_at)",
        )
        .bind(tenant)
        .bind(encode("caps", &caps)?)
        .bind(naive(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn stats(&self, tenant: &str, id: &str) -> Result<Vec<StatRow>, HistoryError> {
        let rows = sqlx::query(
            "SELECT version, step, counter, CAST(SUM(value) AS SIGNED) FROM journey_stats \
             WHERE tenant_id = ? AND journey_id = ? GROUP BY version, step, counter \
             ORDER BY version, step, counter",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StatRow {
                    version: r.try_get::<i32, _>(0)? as u32,
                    step: r.try_get(1)?,
                    counter: r.try_get(2)?,
                    value: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn claim_sends(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<QueuedSend>, HistoryError> {
        again_on_deadlock(|| self.claim_once(owner, now, lease, limit)).await
    }

    async fn sends_done(&self, owner: &str, ids: &[i64]) -> Result<(), HistoryError> {
        again_on_deadlock(|| self.done_once(owner, ids)).await
    }

    async fn release_sends(
        &self,
        owner: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        again_on_deadlock(|| self.release_once(owner, ids, until)).await
    }

    async fn outbox_len(&self) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journey_sends")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}

fn queued<R: Row>(rows: &[R]) -> Result<Vec<QueuedSend>, HistoryError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            Ok(QueuedSend {
                id: r.try_get(0)?,
                tenant: r.try_get(1)?,
                user_id: r.try_get(2)?,
                send: decode("journey send", &r.try_get::<String, _>(3)?)?,
                queued_at: crate::sqlite::from_micros(r.try_get(4)?)?,
            })
        })
        .collect()
}

// ---- SQLite ----

/// The tenant's journeys and caps, read in the all-in-one processor's transaction.
pub async fn load_set_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    tenant: &str,
) -> Result<JourneySet, HistoryError> {
    let rows = sqlx::query(VERSIONS)
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get::<i64, _>(2)? as u32,
                from_micros(r.try_get(3)?)?,
                r.try_get::<i64, _>(4)? as u32,
                r.try_get(5)?,
            ))
        })
        .collect::<Result<Vec<VersionRow>, HistoryError>>()?;
    let caps: Option<String> = if rows.is_empty() {
        None
    } else {
        sqlx::query_scalar("SELECT caps FROM journey_caps WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
    };
    assemble(rows, caps)
}

/// Writes a batch's journey counts and messages in the all-in-one processor's transaction.
pub async fn write_effects_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    changes: &[PersonChange],
    report: &BatchReport,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    for (tenant, journey, version, step, counter, n) in stat_rows(report) {
        sqlx::query(
            "INSERT INTO journey_stats (tenant_id, journey_id, version, step, counter, value) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, journey_id, version, step, counter) \
             DO UPDATE SET value = value + excluded.value",
        )
        .bind(tenant)
        .bind(journey)
        .bind(i64::from(version))
        .bind(step)
        .bind(counter)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    }
    for (change, send) in sends_of(changes) {
        sqlx::query(
            "INSERT INTO journey_sends (tenant_id, user_id, send, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&change.tenant)
        .bind(&change.user_id)
        .bind(encode("journey send", send)?)
        .bind(micros(now))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Journeys in the all-in-one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteJourneys {
    store: SqliteStore,
}

impl SqliteJourneys {
    pub fn new(store: SqliteStore) -> Self {
        Self { store }
    }

    async fn select(
        &self,
        tenant: &str,
        id: Option<&str>,
    ) -> Result<Vec<StoredJourney>, HistoryError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {JOURNEY_COLUMNS} FROM journeys j JOIN journey_versions v \
             ON v.tenant_id = j.tenant_id AND v.journey_id = j.journey_id \
             AND v.version = j.current_version WHERE j.tenant_id = "
        ));
        q.push_bind(tenant);
        if let Some(id) = id {
            q.push(" AND j.journey_id = ").push_bind(id);
        }
        q.push(" ORDER BY j.journey_id");
        let rows = q.build().fetch_all(self.store.pool()).await?;
        rows.iter()
            .map(|r| {
                stored(
                    r.try_get(1)?,
                    r.try_get(2)?,
                    &r.try_get::<String, _>(3)?,
                    from_micros(r.try_get(4)?)?,
                    from_micros(r.try_get(5)?)?,
                )
            })
            .collect()
    }

    /// Begins a change holding the file's write lock, and reads the journey.
    async fn lock(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(Transaction<'static, Sqlite>, Option<(Status, u32, String)>), HistoryError> {
        let mut tx = self.store.pool().begin().await?;
        // A write first: the transaction holds the write lock from here on.
        sqlx::query("UPDATE journeys SET updated_at = ? WHERE tenant_id = ? AND journey_id = ?")
            .bind(micros(now))
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT j.status, j.current_version, v.definition FROM journeys j \
             JOIN journey_versions v ON v.tenant_id = j.tenant_id \
             AND v.journey_id = j.journey_id AND v.version = j.current_version \
             WHERE j.tenant_id = ? AND j.journey_id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let existing = row
            .map(|r| {
                let status: String = r.try_get(0)?;
                Ok::<_, HistoryError>((
                    Status::parse(&status).ok_or_else(|| {
                        HistoryError::Corrupt(format!("journey status {status:?}"))
                    })?,
                    r.try_get::<i64, _>(1)? as u32,
                    r.try_get(2)?,
                ))
            })
            .transpose()?;
        Ok((tx, existing))
    }
}

#[async_trait::async_trait]
impl JourneyStore for SqliteJourneys {
    async fn journeys(&self, tenant: &str) -> Result<Vec<StoredJourney>, HistoryError> {
        self.select(tenant, None).await
    }

    async fn journey(&self, tenant: &str, id: &str) -> Result<Option<StoredJourney>, HistoryError> {
        Ok(self.select(tenant, Some(id)).await?.into_iter().next())
    }

    async fn put_journey(
        &self,
        tenant: &str,
        journey: Journey,
        now: DateTime<Utc>,
    ) -> Result<Written, JourneyError> {
        let definition = encode("journey", &journey)?;
        let (mut tx, existing) = self.lock(tenant, &journey.id, now).await?;
        let change = change(
            existing.as_ref().map(|(s, v, d)| (*s, *v, d.as_str())),
            &definition,
        )?;
        let (version, created) = match change {
            Change::Same(version) => {
                tx.rollback().await?;
                return Ok(Written {
                    created: false,
                    version,
                });
            }
            Change::Create => {
                sqlx::query(
                    "INSERT INTO journeys (tenant_id, journey_id, status, current_version, \
                     created_at, updated_at) VALUES (?, ?, 'draft', 1, ?, ?)",
                )
                .bind(tenant)
                .bind(&journey.id)
                .bind(micros(now))
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
                (1, true)
            }
            Change::Replace(version) => {
                sqlx::query(
                    "DELETE FROM journey_versions \
                     WHERE tenant_id = ? AND journey_id = ? AND version = ?",
                )
                .bind(tenant)
                .bind(&journey.id)
                .bind(i64::from(version))
                .execute(&mut *tx)
                .await?;
                (version, false)
            }
            Change::NewVersion(version) => {
                sqlx::query(
                    "UPDATE journeys SET current_version = ? WHERE tenant_id = ? AND journey_id = ?",
                )
                .bind(i64::from(version))
                .bind(tenant)
                .bind(&journey.id)
                .execute(&mut *tx)
                .await?;
                (version, false)
            }
        };
        sqlx::query(
            "INSERT INTO journey_versions (tenant_id, journey_id, version, definition, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(tenant)
        .bind(&journey.id)
        .bind(i64::from(version))
        .bind(&definition)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Written { created, version })
    }

    async fn set_status(
        &self,
        tenant: &str,
        id: &str,
        status: Status,
        now: DateTime<Utc>,
    ) -> Result<StoredJourney, JourneyError> {
        let (mut tx, existing) = self.lock(tenant, id, now).await?;
        let (from, _, _) = existing.ok_or(JourneyError::NotFound)?;
        if transition(from, status)? {
            sqlx::query("UPDATE journeys SET status = ? WHERE tenant_id = ? AND journey_id = ?")
                .bind(status.as_str())
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if from == Status::Paused && status == Status::Active {
                crate::audience_sqlite::recheck_all(&mut tx, tenant, now).await?;
            }
        }
        tx.commit().await?;
        self.journey(tenant, id)
            .await?
            .ok_or(JourneyError::NotFound)
    }

    async fn caps(&self, tenant: &str) -> Result<Vec<Cap>, HistoryError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT caps FROM journey_caps WHERE tenant_id = ?")
                .bind(tenant)
                .fetch_optional(self.store.pool())
                .await?;
        text.map_or(Ok(Vec::new()), |t| decode("caps", &t))
    }

    async fn put_caps(
        &self,
        tenant: &str,
        caps: &[Cap],
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT INTO journey_caps (tenant_id, caps, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET caps = excluded.caps, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(encode("caps", &caps)?)
        .bind(micros(now))
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    async fn stats(&self, tenant: &str, id: &str) -> Result<Vec<StatRow>, HistoryError> {
        let rows = sqlx::query(
            "SELECT version, step, counter, value FROM journey_stats \
             WHERE tenant_id = ? AND journey_id = ? ORDER BY version, step, counter",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StatRow {
                    version: r.try_get::<i64, _>(0)? as u32,
                    step: r.try_get(1)?,
                    counter: r.try_get(2)?,
                    value: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn claim_sends(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<QueuedSend>, HistoryError> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let rows = sqlx::query(
            "UPDATE journey_sends SET owner = ?, lease_until = ? WHERE id IN \
             (SELECT id FROM journey_sends WHERE lease_until IS NULL OR lease_until < ? \
              ORDER BY id LIMIT ?) RETURNING id, tenant_id, user_id, send, created_at",
        )
        .bind(owner)
        .bind(micros(until))
        .bind(micros(now))
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        let mut claimed = queued(&rows)?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    async fn sends_done(&self, owner: &str, ids: &[i64]) -> Result<(), HistoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM journey_sends WHERE owner = ");
        q.push_bind(owner).push(" AND id");
        push_ids(&mut q, ids.iter().copied());
        q.build().execute(self.store.pool()).await?;
        Ok(())
    }

    async fn release_sends(
        &self,
        owner: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new("UPDATE journey_sends SET lease_until = ");
        q.push_bind(micros(until))
            .push(" WHERE owner = ")
            .push_bind(owner)
            .push(" AND id");
        push_ids(&mut q, ids.iter().copied());
        q.build().execute(self.store.pool()).await?;
        Ok(())
    }

    async fn outbox_len(&self) -> Result<u64, HistoryError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journey_sends")
            .fetch_one(self.store.pool())
            .await?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn journeys_keep_the_contract_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let process = crate::audience_sqlite::tests::processor(store.clone());
        crate::testing::journeys::versions_outbox_and_erasure(
            &SqliteJourneys::new(store.clone()),
            &store,
            &process,
        )
        .await;
    }
}

//! Broadcasts to a segment: the port that keeps them (MySQL in the cluster mode, SQLite
//! all-in-one) and both implementations. A broadcast is sent by whichever API process holds its
//! lease, members in `user_id` order; the cursor (the last member enqueued) and the counts move
//! together after each page is durable. A sender that dies loses its lease, and the next one
//! resumes from the cursor: the members of the unfinished page are enqueued again with the same
//! message ids, which the delivery dedupe drops.

use crate::history::HistoryError;
use crate::sqlite::{SqliteStore, micros};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::time::Duration;

/// Where a broadcast is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastStatus {
    /// Being sent (or waiting for a sender).
    Running,
    /// Every member was enqueued or skipped.
    Done,
    /// Stopped: the request cannot make a message (`last_error` says why).
    Failed,
}

impl BroadcastStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, HistoryError> {
        match text {
            "running" => Ok(Self::Running),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            other => Err(HistoryError::Corrupt(format!("broadcast status {other:?}"))),
        }
    }
}

/// A broadcast as stored.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Broadcast {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub segment_id: String,
    /// The message every member gets (`POST /v1/messages` without `to` / `user`).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub status: BroadcastStatus,
    /// The last member enqueued (members go in `user_id` order).
    pub cursor: Option<String>,
    /// Messages enqueued so far.
    pub enqueued: u64,
    /// Members given no message: no consent, no contact point for the channel.
    pub skipped: u64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Progress after a page of members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub cursor: String,
    pub enqueued: u64,
    pub skipped: u64,
}

#[async_trait::async_trait]
pub trait BroadcastStore: Send + Sync {
    /// Stores a new running broadcast; `Ok(false)` when the id exists in the tenant (the existing
    /// one stands: a retried request creates nothing).
    async fn create(&self, broadcast: &Broadcast) -> Result<bool, HistoryError>;
    async fn broadcast(&self, tenant: &str, id: &str) -> Result<Option<Broadcast>, HistoryError>;
    /// The tenant's broadcasts, newest first, at most `limit`.
    async fn broadcasts(&self, tenant: &str, limit: u32) -> Result<Vec<Broadcast>, HistoryError>;
    /// Takes a running broadcast nobody holds (or whose holder's lease ran out) for `lease`.
    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Broadcast>, HistoryError>;
    /// Records a page sent and renews the lease; `Ok(false)` when `owner` no longer holds it.
    async fn advance(
        &self,
        broadcast: &Broadcast,
        owner: &str,
        progress: &Progress,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, HistoryError>;
    /// Ends the broadcast (done or failed) if `owner` holds it.
    async fn finish(
        &self,
        broadcast: &Broadcast,
        owner: &str,
        status: BroadcastStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError>;
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

fn request_text(broadcast: &Broadcast) -> Result<String, HistoryError> {
    serde_json::to_string(&broadcast.request)
        .map_err(|e| HistoryError::Corrupt(format!("broadcast request: {e}")))
}

const COLUMNS: &str = "tenant_id, broadcast_id, segment_id, request, status, cursor_user, \
    enqueued, skipped, last_error, created_at, updated_at";

/// Reads a row of `COLUMNS`; `time` converts the backend's time column.
fn from_row<R: Row>(
    row: &R,
    time: impl Fn(&R, usize) -> Result<DateTime<Utc>, HistoryError>,
) -> Result<Broadcast, HistoryError>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let request: String = row.try_get(3)?;
    Ok(Broadcast {
        tenant: row.try_get(0)?,
        id: row.try_get(1)?,
        segment_id: row.try_get(2)?,
        request: serde_json::from_str(&request)
            .map_err(|e| HistoryError::Corrupt(format!("broadcast request: {e}")))?,
        status: BroadcastStatus::parse(&row.try_get::<String, _>(4)?)?,
        cursor: row.try_get(5)?,
        enqueued: row.try_get::<i64, _>(6)?.max(0) as u64,
        skipped: row.try_get::<i64, _>(7)?.max(0) as u64,
        last_error: row.try_get(8)?,
        created_at: time(row, 9)?,
        updated_at: time(row, 10)?,
    })
}

fn mysql_time(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<DateTime<Utc>, HistoryError> {
    Ok(row.try_get::<NaiveDateTime, _>(i)?.and_utc())
}

fn sqlite_time(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<DateTime<Utc>, HistoryError> {
    let us: i64 = row.try_get(i)?;
    DateTime::from_timestamp_micros(us).ok_or_else(|| HistoryError::Corrupt(format!("time {us}")))
}

/// Broadcasts in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlBroadcasts {
    pool: sqlx::MySqlPool,
}

impl MySqlBroadcasts {
    pub fn new(pool: sqlx::MySqlPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl BroadcastStore for MySqlBroadcasts {
    async fn create(&self, b: &Broadcast) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "INSERT IGNORE INTO broadcasts (tenant_id, broadcast_id, segment_id, request, status, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(&b.segment_id)
        .bind(request_text(b)?)
        .bind(b.status.as_str())
        .bind(b.created_at.naive_utc())
        .bind(b.updated_at.naive_utc())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn broadcast(&self, tenant: &str, id: &str) -> Result<Option<Broadcast>, HistoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE tenant_id = ? AND broadcast_id = ?"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| from_row(&r, mysql_time)).transpose()
    }

    async fn broadcasts(&self, tenant: &str, limit: u32) -> Result<Vec<Broadcast>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE tenant_id = ? \
             ORDER BY created_at DESC, broadcast_id LIMIT ?"
        )))
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_row(r, mysql_time)).collect()
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Broadcast>, HistoryError> {
        let candidates = sqlx::query(
            "SELECT tenant_id, broadcast_id FROM broadcasts WHERE status = 'running' \
             AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT 5",
        )
        .bind(now.naive_utc())
        .fetch_all(&self.pool)
        .await?;
        for row in candidates {
            let (tenant, id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let taken = sqlx::query(
                "UPDATE broadcasts SET owner = ?, lease_until = ? WHERE tenant_id = ? \
                 AND broadcast_id = ? AND status = 'running' \
                 AND (lease_until IS NULL OR lease_until < ?)",
            )
            .bind(owner)
            .bind(lease_end(now, lease).naive_utc())
            .bind(&tenant)
            .bind(&id)
            .bind(now.naive_utc())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if taken == 1 {
                return self.broadcast(&tenant, &id).await;
            }
        }
        Ok(None)
    }

    async fn advance(
        &self,
        b: &Broadcast,
        owner: &str,
        progress: &Progress,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE broadcasts SET cursor_user = ?, enqueued = ?, skipped = ?, lease_until = ?, \
             updated_at = ? WHERE tenant_id = ? AND broadcast_id = ? AND owner = ? \
             AND status = 'running'",
        )
        .bind(&progress.cursor)
        .bind(progress.enqueued as i64)
        .bind(progress.skipped as i64)
        .bind(lease_end(now, lease).naive_utc())
        .bind(now.naive_utc())
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish(
        &self,
        b: &Broadcast,
        owner: &str,
        status: BroadcastStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE broadcasts SET status = ?, last_error = ?, owner = NULL, lease_until = NULL, \
             updated_at = ? WHERE tenant_id = ? AND broadcast_id = ? AND owner = ? \
             AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now.naive_utc())
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl SqliteStore {
    /// Frees every broadcast's lease: one process owns the file, so a lease found at start is
    /// from a process that is gone, and its broadcasts resume now rather than when it runs out.
    pub async fn release_broadcasts(&self) -> Result<(), HistoryError> {
        sqlx::query(
            "UPDATE broadcasts SET owner = NULL, lease_until = NULL WHERE status = 'running'",
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BroadcastStore for SqliteStore {
    async fn create(&self, b: &Broadcast) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "INSERT OR IGNORE INTO broadcasts (tenant_id, broadcast_id, segment_id, request, \
             status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(&b.segment_id)
        .bind(request_text(b)?)
        .bind(b.status.as_str())
        .bind(micros(b.created_at))
        .bind(micros(b.updated_at))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn broadcast(&self, tenant: &str, id: &str) -> Result<Option<Broadcast>, HistoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE tenant_id = ? AND broadcast_id = ?"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| from_row(&r, sqlite_time)).transpose()
    }

    async fn broadcasts(&self, tenant: &str, limit: u32) -> Result<Vec<Broadcast>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE tenant_id = ? \
             ORDER BY created_at DESC, broadcast_id LIMIT ?"
        )))
        .bind(tenant)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| from_row(r, sqlite_time)).collect()
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Broadcast>, HistoryError> {
        let taken = sqlx::query(
            "UPDATE broadcasts SET owner = ?, lease_until = ? WHERE rowid = \
             (SELECT rowid FROM broadcasts WHERE status = 'running' \
              AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT 1) \
             RETURNING tenant_id, broadcast_id",
        )
        .bind(owner)
        .bind(micros(lease_end(now, lease)))
        .bind(micros(now))
        .fetch_optional(self.pool())
        .await?;
        match taken {
            Some(row) => {
                self.broadcast(&row.try_get::<String, _>(0)?, &row.try_get::<String, _>(1)?)
                    .await
            }
            None => Ok(None),
        }
    }

    async fn advance(
        &self,
        b: &Broadcast,
        owner: &str,
        progress: &Progress,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE broadcasts SET cursor_user = ?, enqueued = ?, skipped = ?, lease_until = ?, \
             updated_at = ? WHERE tenant_id = ? AND broadcast_id = ? AND owner = ? \
             AND status = 'running'",
        )
        .bind(&progress.cursor)
        .bind(progress.enqueued as i64)
        .bind(progress.skipped as i64)
        .bind(micros(lease_end(now, lease)))
        .bind(micros(now))
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish(
        &self,
        b: &Broadcast,
        owner: &str,
        status: BroadcastStatus,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE broadcasts SET status = ?, last_error = ?, owner = NULL, lease_until = NULL, \
             updated_at = ? WHERE tenant_id = ? AND broadcast_id = ? AND owner = ? \
             AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(micros(now))
        .bind(&b.tenant)
        .bind(&b.id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn broadcasts_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::sqlite::SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .unwrap();
        crate::testing::broadcast::one_sender_at_a_time_and_takeover_after_the_lease(&store).await;
    }
}

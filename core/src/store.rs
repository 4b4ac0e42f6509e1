//! MySQL/MariaDB storage of the cluster mode: message history, parked messages and API keys.

use crate::history::{
    BatchRecord, Claim, Claimed, Deferred, HistoryError, HistoryStore, MessageFilter, MessagePage,
    MessageView, OVERDUE_AFTER, ParkingHealth, Receipt, ReceiptFor, ReceiptOutcome, Transition,
    again_on_deadlock, encode_cursor, latest_per_message, stored_detail,
};
use crate::model::{Event, MessageId, Priority, Status};
use crate::stats::{Stats, StatsCount, bucket_millis};
use crate::webhooks_store::Outbox;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row};
use std::str::FromStr;
use std::time::Duration;

/// The MySQL schema, embedded from `migrations/mysql` at compile time.
pub static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

/// Rows per multi-row statement: well under MySQL's 65,535 placeholders per statement.
const ROWS_PER_STATEMENT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid MySQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot connect to MySQL at {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the MySQL schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("taking the MySQL schema migration lock failed: {0}")]
    MigrationLock(#[source] sqlx::Error),
}

/// Opens a pool to the history database. The URL may carry credentials, so errors name only the
/// host and port, never the URL itself. Sessions run in UTC: every DATETIME column holds UTC.
pub async fn connect_mysql(url: &str, max_connections: u32) -> Result<MySqlPool, StoreError> {
    let options = MySqlConnectOptions::from_str(url)
        .map_err(StoreError::InvalidUrl)?
        .timezone(Some(String::from("+00:00")));
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { host, port, source })
}

/// A connection whose next transaction runs at READ COMMITTED: its locking reads take no gap
/// locks, so a claim that scans a queue table (outboxes, webhook deliveries, wake-ups) never
/// holds up the inserts of new rows beside it, and each read sees what others committed.
pub async fn read_committed(
    pool: &MySqlPool,
) -> Result<sqlx::pool::PoolConnection<MySql>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    Ok(conn)
}

/// Brings the schema up to date; safe to run from several processes at once. They take turns
/// under a named lock of the server (`GET_LOCK`) held by the migrating session: the first applies
/// what is missing, the others then find nothing to do. sqlx's own lock is not enough here: it
/// asks `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL when the lock is taken (a
/// negative timeout means "wait forever" only to MySQL), and goes ahead regardless.
pub async fn migrate_mysql(pool: &MySqlPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(StoreError::MigrationLock)?;
    let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::MigrationLock)?;
    // Lock names are server-wide: one per database, within MySQL's 64 characters.
    let name: String = format!("ump-migrate:{}", database.unwrap_or_default())
        .chars()
        .take(64)
        .collect();
    let waiting_since = std::time::Instant::now();
    let mut said = false;
    loop {
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 5)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::MigrationLock)?;
        if got == Some(1) {
            break;
        }
        // A schema change of a large table may take long; the holder's session ending (it
        // finished, or its process died) frees the lock at once.
        if !said || waiting_since.elapsed().as_secs() % 60 < 5 {
            tracing::info!(lock = %name, waited_s = waiting_since.elapsed().as_secs(),
                "another process is migrating the schema; waiting for it");
            said = true;
        }
    }
    let migrated = match repair_dirty(&mut conn).await {
        Ok(()) => MYSQL_MIGRATIONS.run(&mut *conn).await,
        Err(e) => Err(e),
    };
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&name)
        .execute(&mut *conn)
        .await;
    migrated?;
    released.map_err(StoreError::MigrationLock)?;
    Ok(())
}

/// Errors of a schema statement whose change is there already (a table, column or key that
/// exists, a key or column that is gone).
const ALREADY_APPLIED: [u16; 4] = [1050, 1060, 1061, 1091];

/// Finishes a migration that an earlier attempt left half-recorded (sqlx marks a migration
/// `success = 0` before running it and 1 after: a process that died or failed in between leaves
/// it so, and sqlx then refuses every start). Under the migration lock nobody else is migrating;
/// a migration of one statement is applied whole or not at all (atomic DDL in MariaDB 10.6+ and
/// MySQL 8), so running it again either applies it or says it is there already, and either way
/// it is recorded done. A dirty migration of several statements is left for a person, as sqlx
/// says.
async fn repair_dirty(conn: &mut sqlx::MySqlConnection) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    let dirty: Option<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success = FALSE ORDER BY version LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    {
        Ok(dirty) => dirty,
        // No bookkeeping table yet: a fresh database.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => None,
        Err(e) => return Err(MigrateError::Execute(e)),
    };
    let Some(version) = dirty else {
        return Ok(());
    };
    let Some(migration) = MYSQL_MIGRATIONS.iter().find(|m| m.version == version) else {
        return Err(MigrateError::Dirty(version));
    };
    if statements(migration.sql.as_str()) != 1 {
        return Err(MigrateError::Dirty(version));
    }
    match sqlx::raw_sql(migration.sql.clone())
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e))
            if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| ALREADY_APPLIED.contains(&e.number())) => {}
        Err(e) => return Err(MigrateError::ExecuteMigration(e, version)),
    }
    sqlx::query("UPDATE _sqlx_migrations SET success = TRUE WHERE version = ?")
        .bind(version)
        .execute(&mut *conn)
        .await
        .map_err(MigrateError::Execute)?;
    tracing::warn!(
        version,
        "finished a migration an earlier start had left half-recorded"
    );
    Ok(())
}

/// Statements in a migration's text (comment lines aside).
fn statements(sql: &str) -> usize {
    let code: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';').filter(|s| !s.trim().is_empty()).count()
}

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// History in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlHistory {
    pool: MySqlPool,
}

impl MySqlHistory {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Deletes the history of messages accepted before `cutoff` (ids are time-ordered, so this is
    /// a primary-key range), in chunks so no statement holds locks for long. Returns the number of
    /// messages deleted.
    pub async fn prune(&self, cutoff: DateTime<Utc>, chunk: u32) -> Result<u64, HistoryError> {
        let bound = MessageId::lower_bound(cutoff.timestamp_millis().max(0) as u64);
        let bound = bound.as_bytes().as_slice();
        loop {
            let done = sqlx::query("DELETE FROM message_events WHERE message_id < ? LIMIT ?")
                .bind(bound)
                .bind(chunk)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 0 {
                break;
            }
        }
        loop {
            let done = sqlx::query("DELETE FROM webhook_messages WHERE message_id < ? LIMIT ?")
                .bind(bound)
                .bind(chunk)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 0 {
                break;
            }
        }
        // Finished webhook deliveries of those messages: event ids carry the message's time.
        let before = format!(
            "msg_{}",
            MessageId::lower_bound(cutoff.timestamp_millis().max(0) as u64)
                .0
                .simple()
        );
        let endpoints: Vec<String> =
            sqlx::query_scalar("SELECT endpoint_id FROM webhook_endpoints")
                .fetch_all(&self.pool)
                .await?;
        // A batch goes once its newest event does.
        let finished = [
            "DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND event_id < ? \
             AND state <> 'pending' LIMIT ?",
            "DELETE FROM webhook_batches WHERE endpoint_id = ? AND last_event < ? \
             AND state <> 'pending' LIMIT ?",
        ];
        for endpoint in endpoints {
            for sql in finished {
                loop {
                    let done = sqlx::query(sql)
                        .bind(&endpoint)
                        .bind(&before)
                        .bind(chunk)
                        .execute(&self.pool)
                        .await?;
                    if done.rows_affected() == 0 {
                        break;
                    }
                }
            }
        }
        let mut deleted = 0;
        loop {
            let done = sqlx::query("DELETE FROM messages WHERE id < ? LIMIT ?")
                .bind(bound)
                .bind(chunk)
                .execute(&self.pool)
                .await?;
            deleted += done.rows_affected();
            if done.rows_affected() == 0 {
                return Ok(deleted);
            }
        }
    }
}

fn parse_row(row: &MySqlRow) -> Result<MessageView, HistoryError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| HistoryError::Corrupt(format!("{what}: {e}"));
    let id: Vec<u8> = row.try_get("id")?;
    let id = uuid::Uuid::from_slice(&id).map_err(|e| corrupt("id", &e))?;
    let status: String = row.try_get("status")?;
    let priority: String = row.try_get("priority")?;
    Ok(MessageView {
        id: MessageId(id),
        channel: row.try_get("channel")?,
        to: row.try_get("recipient")?,
        status: status.parse().map_err(|e: String| corrupt("status", &e))?,
        priority: if priority == "realtime" {
            Priority::Realtime
        } else {
            Priority::Bulk
        },
        attempts: row.try_get("attempts")?,
        provider: row.try_get("provider")?,
        provider_message_id: row.try_get("provider_message_id")?,
        created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
        updated_at: row.try_get::<NaiveDateTime, _>("updated_at")?.and_utc(),
        detail: row.try_get("detail")?,
        events: None,
    })
}

/// The latest event's detail comes from the timeline's primary key (message_id, ...): a few rows
/// per message, read only for the messages of the page.
const MESSAGE_COLUMNS: &str = "id, channel, recipient, status, priority, attempts, provider, \
                               provider_message_id, created_at, updated_at, \
                               (SELECT e.detail FROM message_events e WHERE e.message_id = messages.id \
                                ORDER BY e.at DESC, e.attempt DESC LIMIT 1) AS detail";

/// The history writes that share the parking table, each run again at once when it loses to a
/// deadlock (`again_on_deadlock`): a deadlock rolls the whole transaction back and a batch's
/// write is idempotent, so trying again is safe, where the worker would otherwise pause as if
/// MySQL were down.
impl MySqlHistory {
    async fn record_once(&self, batch: &BatchRecord) -> Result<(), HistoryError> {
        if batch.transitions.is_empty() && batch.deferred.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let outbox = Outbox::load_mysql(&mut tx, &batch.transitions).await?;
        let labels = outbox.labels(&batch.transitions)?;

        for chunk in latest_per_message(&batch.transitions).chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO messages (id, tenant_id, channel, recipient, status, priority, attempts, \
                 provider, provider_message_id, idempotency_key, send_at, created_at, updated_at, \
                 webhook_labels) ",
            );
            q.push_values(chunk, |mut b, t| {
                b.push_bind(t.id.as_bytes().as_slice())
                    .push_bind(&t.tenant)
                    .push_bind(&t.channel)
                    .push_bind(&t.to)
                    .push_bind(t.status.as_str())
                    .push_bind(t.priority.as_str())
                    .push_bind(t.attempt)
                    .push_bind(&t.provider)
                    .push_bind(&t.provider_message_id)
                    .push_bind(&t.idempotency_key)
                    .push_bind(t.send_at.map(naive))
                    .push_bind(naive(t.accepted_at))
                    .push_bind(naive(t.at))
                    .push_bind(labels.get(&t.id).map(String::as_str));
            });
            // Assignments run left to right and see earlier ones, so every comparison with the
            // stored updated_at comes before updated_at itself changes. An older transition
            // (a batch recorded again after a crash) never overwrites a newer state, and
            // `delivered` (set by a receipt) is final: a batch consumed again after it, whatever
            // its times, never undoes it.
            q.push(
                " ON DUPLICATE KEY UPDATE \
                 status = IF(VALUES(updated_at) >= updated_at AND status <> 'delivered', \
                     VALUES(status), status), \
                 provider = IF(VALUES(updated_at) >= updated_at, COALESCE(VALUES(provider), provider), provider), \
                 provider_message_id = IF(VALUES(updated_at) >= updated_at, \
                     COALESCE(VALUES(provider_message_id), provider_message_id), provider_message_id), \
                 attempts = GREATEST(attempts, VALUES(attempts)), \
                 webhook_labels = COALESCE(VALUES(webhook_labels), webhook_labels), \
                 updated_at = GREATEST(updated_at, VALUES(updated_at))",
            );
            q.build().execute(&mut *tx).await?;
        }

        let mut events: Vec<&Transition> = batch.transitions.iter().collect();
        events.sort_by_key(|t| (t.id, t.attempt, t.status.as_str()));
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT IGNORE INTO message_events (message_id, attempt, status, at, detail) ",
            );
            q.push_values(chunk, |mut b, t| {
                b.push_bind(t.id.as_bytes().as_slice())
                    .push_bind(t.attempt)
                    .push_bind(t.status.as_str())
                    .push_bind(naive(t.at))
                    .push_bind(t.detail.as_deref().map(stored_detail));
            });
            q.build().execute(&mut *tx).await?;
        }

        let mut deferred: Vec<&Deferred> = batch.deferred.iter().collect();
        deferred.sort_by_key(|d| d.envelope.id);
        for chunk in deferred.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("INSERT INTO deferred_messages (id, queue, due_at, envelope) ");
            let mut encoded = Vec::with_capacity(chunk.len());
            for d in chunk {
                encoded.push(
                    serde_json::to_vec(&d.envelope)
                        .map_err(|e| HistoryError::Corrupt(e.to_string()))?,
                );
            }
            q.push_values(chunk.iter().zip(&encoded), |mut b, (d, body)| {
                b.push_bind(d.envelope.id.as_bytes().as_slice())
                    .push_bind(&d.queue)
                    .push_bind(naive(d.due_at))
                    .push_bind(body.as_slice());
            });
            // Parked again (e.g. the next retry): the new due time and envelope win, and any
            // claim of the old parking ends, so its claimer's `release` no longer matches.
            q.push(
                " ON DUPLICATE KEY UPDATE due_at = VALUES(due_at), envelope = VALUES(envelope), \
                 queue = VALUES(queue), claimed_by = NULL, claimed_until = NULL, published_at = NULL",
            );
            q.build().execute(&mut *tx).await?;
        }

        outbox
            .write_mysql(&mut tx, &batch.transitions, Utc::now())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_due_once(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, HistoryError> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::new_v4();
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        // Read committed, and `SKIP LOCKED`: the scan takes no gap locks and passes over the rows
        // a batch is parking right now (and those another scheduler is claiming). A single
        // `UPDATE … ORDER BY due_at LIMIT` at the pool's repeatable read took next-key locks on
        // the due-time index and waited for those rows: it deadlocked with batches parking their
        // retries beside it (BENCHMARKS.md, "Providers").
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT id, envelope, queue, due_at FROM deferred_messages WHERE queue IN (",
        );
        let mut list = q.separated(", ");
        for queue in queues {
            list.push_bind(queue);
        }
        q.push(") AND published_at IS NULL AND due_at <= ")
            .push_bind(naive(now))
            .push(" AND (claimed_until IS NULL OR claimed_until < ")
            .push_bind(naive(now))
            .push(") ORDER BY due_at LIMIT ")
            .push_bind(limit)
            .push(" FOR UPDATE SKIP LOCKED");
        let rows = q.build().fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("UPDATE deferred_messages SET claimed_by = ");
        q.push_bind(token.as_bytes().as_slice())
            .push(", claimed_until = ")
            .push_bind(naive(until))
            .push(" WHERE id IN (");
        let mut list = q.separated(", ");
        for row in &rows {
            list.push_bind(row.try_get::<Vec<u8>, _>("id")?);
        }
        q.push(")");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.try_get("envelope")?;
                let envelope: crate::model::Envelope = serde_json::from_slice(&body)
                    .map_err(|e| HistoryError::Corrupt(format!("deferred envelope: {e}")))?;
                Ok(Claimed {
                    claim: Claim {
                        id: envelope.id,
                        token: token.as_u128(),
                    },
                    deferred: Deferred {
                        envelope,
                        queue: row.try_get("queue")?,
                        due_at: row.try_get::<NaiveDateTime, _>("due_at")?.and_utc(),
                    },
                })
            })
            .collect()
    }

    async fn release_once(&self, claims: &[Claim]) -> Result<(), HistoryError> {
        let now = naive(Utc::now());
        // One claim_due call hands out one token: group by it, then one statement per chunk.
        let mut by_token: std::collections::BTreeMap<u128, Vec<MessageId>> = Default::default();
        for claim in claims {
            by_token.entry(claim.token).or_default().push(claim.id);
        }
        // Read committed, as `claim_due`: no gap locks where batches park messages.
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        for (token, mut ids) in by_token {
            ids.sort();
            let token = uuid::Uuid::from_u128(token);
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                // Kept as a published parking (see sweep_parking), and only where the claim still
                // holds: a message parked anew since has claimed_by NULL and keeps its parking.
                let mut q: QueryBuilder<MySql> =
                    QueryBuilder::new("UPDATE deferred_messages SET published_at = ");
                q.push_bind(now)
                    .push(" WHERE claimed_by = ")
                    .push_bind(token.as_bytes().to_vec())
                    .push(" AND published_at IS NULL AND id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_bytes().to_vec());
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl HistoryStore for MySqlHistory {
    async fn record(&self, batch: &BatchRecord) -> Result<(), HistoryError> {
        again_on_deadlock(|| self.record_once(batch)).await
    }

    async fn get(&self, tenant: &str, id: MessageId) -> Result<Option<MessageView>, HistoryError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_bytes().as_slice())
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut view = parse_row(&row)?;
        let events = sqlx::query(
            "SELECT status, at, detail FROM message_events WHERE message_id = ? ORDER BY at, attempt",
        )
        .bind(id.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(Event {
                status: status.parse().map_err(HistoryError::Corrupt)?,
                at: row.try_get::<NaiveDateTime, _>("at")?.and_utc(),
                detail: row.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, HistoryError>>()?;
        view.events = Some(events);
        Ok(Some(view))
    }

    async fn list(
        &self,
        tenant: &str,
        filter: &MessageFilter,
    ) -> Result<MessagePage, HistoryError> {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = "
        ));
        q.push_bind(tenant);
        if let Some(to) = &filter.to {
            q.push(" AND recipient = ").push_bind(to);
        }
        if let Some(channel) = &filter.channel {
            q.push(" AND channel = ").push_bind(channel);
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        // Ids are UUIDv7: a time range is an id range, served by the same indexes as the filters.
        if let Some(since) = filter.since {
            let bound = MessageId::lower_bound(since.timestamp_millis().max(0) as u64);
            q.push(" AND id >= ").push_bind(bound.as_bytes().to_vec());
        }
        if let Some(until) = filter.until {
            let bound = MessageId::lower_bound(until.timestamp_millis().max(0) as u64);
            q.push(" AND id < ").push_bind(bound.as_bytes().to_vec());
        }
        if let Some(before) = filter.before {
            q.push(" AND id < ").push_bind(before.as_bytes().to_vec());
        }
        let limit = filter.limit.clamp(1, 1000);
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(parse_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|m| encode_cursor(m.id))
        } else {
            None
        };
        Ok(MessagePage { items, next_cursor })
    }

    async fn claim_due(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, HistoryError> {
        again_on_deadlock(|| self.claim_due_once(queues, now, lease, limit)).await
    }

    async fn sweep_parking(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        grace: std::time::Duration,
    ) -> Result<ParkingHealth, HistoryError> {
        let mut health = ParkingHealth::default();
        if queues.is_empty() {
            return Ok(health);
        }
        let ago = |d: std::time::Duration| {
            naive(now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
        };
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new("SELECT COUNT(*) FROM deferred_messages WHERE queue IN (");
        let mut list = q.separated(", ");
        for queue in queues {
            list.push_bind(queue);
        }
        q.push(") AND published_at IS NULL AND due_at < ")
            .push_bind(ago(OVERDUE_AFTER));
        let overdue: i64 = q.build_query_scalar().fetch_one(&self.pool).await?;
        health.overdue = u64::try_from(overdue).unwrap_or(0);

        // A published parking whose message has no outcome long after: the copy went missing.
        // One statement, so two sweeping workers never park the same message twice; read
        // committed, so that its scan locks no gaps where batches park messages (`claim_due`).
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "UPDATE deferred_messages d JOIN messages m ON m.id = d.id \
             SET d.published_at = NULL, d.claimed_by = NULL, d.claimed_until = NULL, d.due_at = ",
        );
        q.push_bind(naive(now)).push(" WHERE d.queue IN (");
        let mut list = q.separated(", ");
        for queue in queues {
            list.push_bind(queue);
        }
        q.push(") AND d.published_at < ")
            .push_bind(ago(grace))
            .push(" AND m.status IN ('accepted', 'scheduled', 'sending')");
        let mut conn = read_committed(&self.pool).await?;
        health.reparked = q.build().execute(&mut *conn).await?.rows_affected();
        drop(conn);

        // Published parkings of messages that reached an outcome (or whose history was pruned)
        // have served their purpose.
        loop {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "SELECT d.id FROM deferred_messages d LEFT JOIN messages m ON m.id = d.id \
                 WHERE d.published_at IS NOT NULL AND d.published_at < ",
            );
            q.push_bind(ago(OVERDUE_AFTER)).push(" AND d.queue IN (");
            let mut list = q.separated(", ");
            for queue in queues {
                list.push_bind(queue);
            }
            q.push(
                ") AND (m.id IS NULL OR m.status NOT IN ('accepted', 'scheduled', 'sending')) \
                 LIMIT ",
            )
            .push_bind(ROWS_PER_STATEMENT as u32);
            let done: Vec<Vec<u8>> = q.build_query_scalar().fetch_all(&self.pool).await?;
            if done.is_empty() {
                break;
            }
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                // Still published: a parking made since the SELECT is not touched.
                "DELETE FROM deferred_messages WHERE published_at IS NOT NULL AND id IN (",
            );
            let mut list = q.separated(", ");
            for id in &done {
                list.push_bind(id.as_slice());
            }
            q.push(")");
            health.collected += q.build().execute(&self.pool).await?.rows_affected();
            if done.len() < ROWS_PER_STATEMENT {
                break;
            }
        }
        Ok(health)
    }

    async fn stats(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
        bucket: std::time::Duration,
    ) -> Result<Stats, HistoryError> {
        let until = Utc::now();
        let width = bucket_millis(bucket);
        let bound = MessageId::lower_bound(since.timestamp_millis().max(0) as u64);
        // The bucket comes from the id's first 48 bits (its millisecond timestamp), so the count
        // reads messages_by_time (tenant_id, id, channel, status) alone: a covering range scan.
        let rows = sqlx::query(
            "SELECT channel, status, \
                    CAST(CONV(HEX(LEFT(id, 6)), 16, 10) AS SIGNED) DIV ? AS bucket, \
                    COUNT(*) AS n \
             FROM messages FORCE INDEX (messages_by_time) \
             WHERE tenant_id = ? AND id >= ? \
             GROUP BY channel, status, bucket",
        )
        .bind(width)
        .bind(tenant)
        .bind(bound.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?;
        let counts = rows
            .iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let bucket: i64 = row.try_get("bucket")?;
                let count: i64 = row.try_get("n")?;
                Ok(StatsCount {
                    channel: row.try_get("channel")?,
                    status: status.parse::<Status>().map_err(HistoryError::Corrupt)?,
                    bucket_start_ms: bucket.saturating_mul(width),
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, HistoryError>>()?;
        let overdue: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deferred_messages d JOIN messages m ON m.id = d.id \
             WHERE d.published_at IS NULL AND d.due_at < ? AND m.tenant_id = ?",
        )
        .bind(naive(until - overdue_after()))
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        let mut stats = Stats::from_counts(since, until, bucket, counts);
        stats.overdue = u64::try_from(overdue).unwrap_or(0);
        Ok(stats)
    }

    async fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, HistoryError> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE: a receipt and a batch write of the same message take turns.
        let row = match &receipt.message {
            ReceiptFor::ProviderMessageId(provider_id) => sqlx::query(
                "SELECT id, status, attempts FROM messages \
                 WHERE provider_message_id = ? AND provider = ? LIMIT 1 FOR UPDATE",
            )
            .bind(provider_id),
            ReceiptFor::Message(id) => sqlx::query(
                "SELECT id, status, attempts FROM messages WHERE id = ? AND provider = ? FOR UPDATE",
            )
            .bind(id.as_bytes().as_slice()),
        }
        .bind(&receipt.provider)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(ReceiptOutcome::Unknown);
        };
        let id: Vec<u8> = row.try_get("id")?;
        let id = MessageId(
            uuid::Uuid::from_slice(&id).map_err(|e| HistoryError::Corrupt(format!("id: {e}")))?,
        );
        let status: String = row.try_get("status")?;
        let status: Status = status.parse().map_err(HistoryError::Corrupt)?;
        if status != Status::Sent {
            return Ok(ReceiptOutcome::Unchanged { id, status });
        }
        let attempt: u32 = row.try_get("attempts")?;
        sqlx::query(
            "UPDATE messages SET status = ?, updated_at = GREATEST(updated_at, ?) WHERE id = ?",
        )
        .bind(receipt.status.as_str())
        .bind(naive(receipt.at))
        .bind(id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT IGNORE INTO message_events (message_id, attempt, status, at, detail) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.as_bytes().as_slice())
        .bind(attempt)
        .bind(receipt.status.as_str())
        .bind(naive(receipt.at))
        .bind(receipt.detail.as_deref().map(stored_detail))
        .execute(&mut *tx)
        .await?;
        crate::webhooks_store::mysql_receipt_outbox(
            &mut tx,
            id,
            receipt.status,
            attempt,
            receipt.at,
            receipt.detail.clone(),
        )
        .await?;
        tx.commit().await?;
        Ok(ReceiptOutcome::Applied(id))
    }

    async fn release(&self, claims: &[Claim]) -> Result<(), HistoryError> {
        again_on_deadlock(|| self.release_once(claims)).await
    }
}

fn overdue_after() -> chrono::Duration {
    chrono::Duration::from_std(OVERDUE_AFTER).unwrap_or(chrono::Duration::minutes(1))
}

#[async_trait::async_trait]
impl crate::profiles::ProfileStore for MySqlHistory {
    async fn profile(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<ump_automation::profile::Profile>, HistoryError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT profile FROM profiles WHERE tenant_id = ? AND user_id = ?")
                .bind(tenant)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        text.as_deref().map(crate::profiles::decode).transpose()
    }

    async fn profiles(
        &self,
        tenant: &str,
        user_ids: &[String],
    ) -> Result<std::collections::HashMap<String, ump_automation::profile::Profile>, HistoryError>
    {
        let mut found = std::collections::HashMap::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(1000) {
            let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
                "SELECT user_id, profile FROM profiles WHERE tenant_id = ",
            );
            q.push_bind(tenant).push(" AND user_id IN (");
            let mut list = q.separated(", ");
            for user in chunk {
                list.push_bind(user);
            }
            q.push(")");
            for row in q.build().fetch_all(&self.pool).await? {
                let text: String = row.try_get(1)?;
                found.insert(row.try_get(0)?, crate::profiles::decode(&text)?);
            }
        }
        Ok(found)
    }

    async fn save_profile(
        &self,
        tenant: &str,
        profile: &ump_automation::profile::Profile,
    ) -> Result<(), HistoryError> {
        let now = naive(Utc::now());
        sqlx::query(
            "INSERT INTO profiles (tenant_id, user_id, profile, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE profile = VALUES(profile), updated_at = VALUES(updated_at)",
        )
        .bind(tenant)
        .bind(&profile.user_id)
        .bind(crate::profiles::encode(profile)?)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn erase(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<crate::profiles::Erasure, HistoryError> {
        let mut tx = self.pool.begin().await?;
        let text: Option<String> = sqlx::query_scalar(
            "SELECT profile FROM profiles WHERE tenant_id = ? AND user_id = ? FOR UPDATE",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Also with no profile yet: the person's first events may still be on their way.
        sqlx::query(
            "INSERT INTO erasures (tenant_id, user_key, erased_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE erased_at = GREATEST(erased_at, VALUES(erased_at))",
        )
        .bind(tenant)
        .bind(crate::profiles::erasure_key(user_id))
        .bind(now.naive_utc())
        .execute(&mut *tx)
        .await?;
        let Some(text) = text else {
            tx.commit().await?;
            return Ok(crate::profiles::Erasure::default());
        };
        let profile = crate::profiles::decode(&text)?;
        let recipients = crate::profiles::recipients(&profile);
        // The person's messages, found by their recipient before it is masked: the webhook
        // outbox keys its events by message.
        let mut messages = crate::webhooks_erasure::Messages::new();
        let mut oldest: Option<chrono::NaiveDateTime> = None;
        for recipient in &recipients {
            let rows: Vec<(Vec<u8>, chrono::NaiveDateTime)> = sqlx::query_as(
                "SELECT id, created_at FROM messages WHERE tenant_id = ? AND recipient = ?",
            )
            .bind(tenant)
            .bind(recipient)
            .fetch_all(&mut *tx)
            .await?;
            for (id, created_at) in rows {
                let id: [u8; 16] = id
                    .try_into()
                    .map_err(|_| HistoryError::Corrupt("message id".into()))?;
                messages.insert(id);
                oldest = Some(oldest.map_or(created_at, |o| o.min(created_at)));
            }
        }
        let mut masked = 0;
        for recipient in &recipients {
            // Providers quote the recipient back in their errors, which the timeline keeps.
            sqlx::query(
                "UPDATE message_events e JOIN messages m ON m.id = e.message_id \
                 SET e.detail = REPLACE(e.detail, ?, ?) \
                 WHERE m.tenant_id = ? AND m.recipient = ? AND e.detail IS NOT NULL",
            )
            .bind(recipient)
            .bind(crate::profiles::masked(recipient))
            .bind(tenant)
            .bind(recipient)
            .execute(&mut *tx)
            .await?;
            masked += sqlx::query(
                "UPDATE messages SET recipient = ?, webhook_labels = NULL \
                 WHERE tenant_id = ? AND recipient = ?",
            )
            .bind(crate::profiles::masked(recipient))
            .bind(tenant)
            .bind(recipient)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let webhook_events = match oldest {
            Some(oldest) => {
                crate::webhooks_erasure::mysql(
                    &mut tx,
                    tenant,
                    &messages,
                    oldest,
                    &crate::webhooks_erasure::Redaction::new(&recipients),
                )
                .await?
            }
            None => 0,
        };
        let mut deleted = [0; 4];
        for (n, statement) in [
            "DELETE FROM profiles WHERE tenant_id = ? AND user_id = ?",
            "DELETE FROM segment_members WHERE tenant_id = ? AND user_id = ?",
            "DELETE FROM person_state WHERE tenant_id = ? AND user_id = ?",
            // Journey messages not sent yet: their data came from the person.
            "DELETE FROM journey_sends WHERE tenant_id = ? AND user_id = ?",
        ]
        .into_iter()
        .enumerate()
        {
            deleted[n] = sqlx::query(statement)
                .bind(tenant)
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let automation_state = deleted[1] + deleted[2] + deleted[3] > 0;
        tx.commit().await?;
        Ok(crate::profiles::Erasure {
            profile: true,
            messages_masked: masked,
            automation_state,
            webhook_events_redacted: webhook_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_after_the_first_are_one_statement_each() {
        // What `repair_dirty` relies on to finish a half-recorded migration by itself.
        for migration in MYSQL_MIGRATIONS.iter().filter(|m| m.version > 1) {
            assert_eq!(
                statements(migration.sql.as_str()),
                1,
                "{}",
                migration.version
            );
        }
        assert_eq!(
            statements("-- a; comment\nCREATE TABLE a (x INT);\nDROP TABLE b;"),
            2
        );
    }
}

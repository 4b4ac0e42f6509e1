//! SQLite storage of the all-in-one mode: one file holds the message history, the durable queue
//! (what Kafka holds in the cluster mode), API keys, and the dedupe and Idempotency-Key memory
//! (what Redis holds). The same ports as MySQL (`HistoryStore`, `ApiKeyStore`) plus the queue.
//!
//! Durability: the file is in WAL mode. Writes that carry a promise (an accepted message, a batch
//! outcome, a key) go through a pool with `synchronous=FULL`, so a `202` survives a power cut; the
//! short-lived keys go through a second pool with `synchronous=NORMAL`, which survives a process
//! crash (kill -9) but may lose the last moments on a power cut, like Redis' `appendfsync
//! everysec`. Only one process may use a file at a time (`DataDirLock`).

use crate::history::{
    BatchRecord, Claim, Claimed, Deferred, HistoryError, HistoryStore, MessageFilter, MessagePage,
    MessageView, OVERDUE_AFTER, ParkingHealth, Receipt, ReceiptFor, ReceiptOutcome, Transition,
    encode_cursor, latest_per_message, stored_detail,
};
use crate::keys::{ApiKeyStore, KeyError, StoredKey, hash_key};
use crate::model::{Envelope, Event, MessageId, Priority, Status};
use crate::stats::{Stats, StatsCount, bucket_millis};
use crate::webhooks_store::Outbox;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The SQLite schema, embedded from `migrations/sqlite` at compile time.
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Rows per multi-row statement (SQLite allows 32,766 placeholders per statement).
const ROWS_PER_STATEMENT: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another UMP process is using {0}: stop it, or give this one its own UMP_DATA_DIR")]
    Locked(PathBuf),
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("migrating the SQLite schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Held for the life of the process: a second process on the same data folder would consume the
/// same queue and send messages twice.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Folder {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("ump.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| OpenError::Folder {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(dir.to_owned())),
            Err(std::fs::TryLockError::Error(source)) => Err(OpenError::Folder { path, source }),
        }
    }
}

/// Microseconds since the epoch, the unit of every time column.
pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>, HistoryError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| HistoryError::Corrupt(format!("time {us}")))
}

/// A message in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub seq: i64,
    pub envelope: Envelope,
}

/// The all-in-one store. Cheap to clone (pools are handles).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    durable: SqlitePool,
    fast: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let open_error = |source| OpenError::Open {
            path: path.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory");
        let durable = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().synchronous(SqliteSynchronous::Full))
            .await
            .map_err(open_error)?;
        SQLITE_MIGRATIONS.run(&durable).await?;
        let fast = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(open_error)?;
        Ok(Self { durable, fast })
    }

    /// The pool for short-lived keys (dedupe, idempotency).
    pub fn fast_pool(&self) -> &SqlitePool {
        &self.fast
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.durable
    }

    /// Deletes the history of messages accepted before `cutoff`, as `MySqlHistory::prune` does
    /// (ids are time-ordered: a primary-key range), with their finished webhook deliveries and
    /// the labels kept for their receipts; `chunk` rows per statement, each its own short
    /// transaction, so the all-in-one process keeps writing meanwhile. Returns the number of
    /// messages deleted.
    pub async fn prune(&self, cutoff: DateTime<Utc>, chunk: u32) -> Result<u64, HistoryError> {
        let lower = MessageId::lower_bound(cutoff.timestamp_millis().max(0) as u64);
        let bound = lower.as_bytes().to_vec();
        // Finished deliveries of those messages: event ids carry the message's time.
        let before = format!("msg_{}", lower.0.simple());
        let endpoints: Vec<String> =
            sqlx::query_scalar("SELECT endpoint_id FROM webhook_endpoints")
                .fetch_all(&self.durable)
                .await?;
        for endpoint in &endpoints {
            while sqlx::query(
                "DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND event_id IN \
                 (SELECT event_id FROM webhook_deliveries WHERE endpoint_id = ? \
                  AND event_id < ? AND state <> 'pending' LIMIT ?)",
            )
            .bind(endpoint)
            .bind(endpoint)
            .bind(&before)
            .bind(chunk)
            .execute(&self.durable)
            .await?
            .rows_affected()
                > 0
            {}
        }
        // Then the rows keyed by message id, the messages themselves last (the count returned).
        let mut deleted = 0;
        for sql in [
            "DELETE FROM webhook_messages WHERE message_id IN \
             (SELECT message_id FROM webhook_messages WHERE message_id < ? LIMIT ?)",
            "DELETE FROM message_events WHERE (message_id, attempt, status) IN \
             (SELECT message_id, attempt, status FROM message_events WHERE message_id < ? \
              LIMIT ?)",
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id < ? LIMIT ?)",
        ] {
            deleted = 0;
            loop {
                let done = sqlx::query(sql)
                    .bind(&bound)
                    .bind(chunk)
                    .execute(&self.durable)
                    .await?
                    .rows_affected();
                deleted += done;
                if done == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// Makes `envelope` durable on `queue`, due at `due_at`.
    pub async fn enqueue(
        &self,
        queue: &str,
        envelope: &Envelope,
        due_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let body = serde_json::to_string(envelope).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query("INSERT INTO queue (queue, message_id, envelope, due_at) VALUES (?, ?, ?, ?)")
            .bind(queue)
            .bind(envelope.id.as_bytes().as_slice())
            .bind(body)
            .bind(micros(due_at))
            .execute(&self.durable)
            .await?;
        Ok(())
    }

    /// The next `limit` messages of `queue` due by `now`, oldest first. They stay in the queue
    /// until `settle` removes them.
    pub async fn due(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Queued>, HistoryError> {
        let rows = sqlx::query(
            "SELECT seq, envelope FROM queue WHERE queue = ? AND due_at <= ? \
             ORDER BY due_at, seq LIMIT ?",
        )
        .bind(queue)
        .bind(micros(now))
        .bind(limit)
        .fetch_all(&self.durable)
        .await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get("envelope")?;
                Ok(Queued {
                    seq: row.try_get("seq")?,
                    envelope: serde_json::from_str(&body)
                        .map_err(|e| HistoryError::Corrupt(format!("queued envelope: {e}")))?,
                })
            })
            .collect()
    }

    /// When the next message of `queues` falls due, if any is waiting.
    pub async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>, HistoryError> {
        let next: Option<i64> = sqlx::query_scalar("SELECT MIN(due_at) FROM queue WHERE queue = ?")
            .bind(queue)
            .fetch_one(&self.durable)
            .await?;
        next.map(from_micros).transpose()
    }

    /// Records a batch's outcome and removes the consumed messages from the queue in one
    /// transaction: parked messages become new queue rows, dead letters move to their table.
    pub async fn settle(
        &self,
        consumed: &[i64],
        batch: &BatchRecord,
        dead_letters: &[(String, Envelope)],
    ) -> Result<(), HistoryError> {
        if consumed.is_empty() && batch.transitions.is_empty() && batch.deferred.is_empty() {
            return Ok(());
        }
        let mut tx = self.durable.begin().await?;
        for chunk in consumed.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM queue WHERE seq IN (");
            let mut list = q.separated(", ");
            for seq in chunk {
                list.push_bind(*seq);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        let outbox = Outbox::load_sqlite(&mut tx, &batch.transitions).await?;
        let labels = outbox.labels(&batch.transitions)?;
        write_transitions(&mut tx, &batch.transitions, &labels).await?;
        outbox
            .write_sqlite(&mut tx, &batch.transitions, Utc::now())
            .await?;
        for chunk in batch.deferred.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO queue (queue, message_id, envelope, due_at) ");
            let encoded = chunk
                .iter()
                .map(|d| serde_json::to_string(&d.envelope))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HistoryError::Corrupt(e.to_string()))?;
            q.push_values(chunk.iter().zip(encoded), |mut b, (d, body)| {
                b.push_bind(d.queue.clone())
                    .push_bind(d.envelope.id.as_bytes().to_vec())
                    .push_bind(body)
                    .push_bind(micros(d.due_at));
            });
            q.build().execute(&mut *tx).await?;
        }
        let now = micros(Utc::now());
        for (queue, envelope) in dead_letters {
            let body = serde_json::to_string(envelope)
                .map_err(|e| HistoryError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO dead_letters (queue, message_id, envelope, at) VALUES (?, ?, ?, ?)",
            )
            .bind(queue)
            .bind(envelope.id.as_bytes().as_slice())
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many messages exhausted their attempts on `queue`.
    pub async fn dead_letter_count(&self, queue: &str) -> Result<i64, HistoryError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE queue = ?")
                .bind(queue)
                .fetch_one(&self.durable)
                .await?,
        )
    }

    /// Deletes expired short-lived keys; returns how many.
    pub async fn sweep_expired(&self, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM expiring_keys WHERE expires_at < ?")
                .bind(micros(now))
                .execute(&self.fast)
                .await?
                .rows_affected(),
        )
    }

    /// A short-lived key's value, unless it expired.
    pub async fn get_expiring(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM expiring_keys WHERE key = ? AND expires_at >= ?")
            .bind(key)
            .bind(micros(now))
            .fetch_optional(&self.fast)
            .await
    }

    pub async fn put_expiring(
        &self,
        key: &str,
        value: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO expiring_keys (key, value, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        )
        .bind(key)
        .bind(value)
        .bind(micros(expires_at))
        .execute(&self.fast)
        .await?;
        Ok(())
    }

    /// Changes a key's value, keeping its expiry (Redis' `KEEPTTL`); false when it is gone.
    pub async fn replace_expiring(&self, key: &str, value: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("UPDATE expiring_keys SET value = ? WHERE key = ?")
                .bind(value)
                .bind(key)
                .execute(&self.fast)
                .await?
                .rows_affected()
                > 0,
        )
    }

    pub async fn delete_expiring(&self, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM expiring_keys WHERE key = ?")
            .bind(key)
            .execute(&self.fast)
            .await?;
        Ok(())
    }

    /// Makes `keys` expire by `until` at the latest (Redis' `PEXPIRE` on a shorter time), or
    /// deletes them when `until` is `None`.
    pub async fn shorten_expiring(
        &self,
        keys: &[String],
        until: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        for chunk in keys.chunks(500) {
            let mut q: QueryBuilder<Sqlite> = match until {
                None => QueryBuilder::new("DELETE FROM expiring_keys WHERE key IN ("),
                Some(until) => {
                    let mut q =
                        QueryBuilder::new("UPDATE expiring_keys SET expires_at = MIN(expires_at, ");
                    q.push_bind(micros(until)).push(") WHERE key IN (");
                    q
                }
            };
            let mut list = q.separated(", ");
            for key in chunk {
                list.push_bind(key);
            }
            q.push(")");
            q.build().execute(&self.fast).await?;
        }
        Ok(())
    }
}

/// Wakes a queue's consumer when a message arrives, so it need not poll for new work.
#[derive(Clone, Debug, Default)]
pub struct Wakers {
    queues: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Notify>>>,
    >,
}

impl Wakers {
    /// The waker of `queue` (the same one for every caller).
    pub fn of(&self, queue: &str) -> std::sync::Arc<tokio::sync::Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        std::sync::Arc::clone(queues.entry(queue.to_owned()).or_default())
    }
}

/// The all-in-one mode's queue: `202` once the message is in the SQLite file. Bulk and realtime
/// messages go to separate queues of the channel, so a bulk backlog never delays realtime ones.
///
/// Group commit: one writer task takes every enqueue waiting at that moment (up to
/// `GROUP_COMMIT_MAX`) into one transaction, so concurrent accepts share one fsync instead of
/// each paying its own; a lone request still commits at once.
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    store: SqliteStore,
    writer: tokio::sync::mpsc::Sender<PendingEnqueue>,
}

const GROUP_COMMIT_MAX: usize = 2000;

#[derive(Debug)]
struct PendingEnqueue {
    queue: String,
    id: MessageId,
    body: String,
    due_at: i64,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl SqliteQueue {
    /// Starts the writer task (on the current tokio runtime).
    pub fn new(store: SqliteStore, wakers: Wakers) -> Self {
        let (writer, requests) = tokio::sync::mpsc::channel(GROUP_COMMIT_MAX * 4);
        tokio::spawn(write_groups(store.clone(), wakers, requests));
        Self { store, writer }
    }

    /// The queue a message of `channel` with `priority` goes to.
    pub fn queue_name(channel: &crate::resources::MessageChannel, priority: Priority) -> String {
        match priority {
            Priority::Bulk => channel.topic_name(),
            Priority::Realtime => channel.realtime_queue(),
        }
    }
}

async fn write_groups(
    store: SqliteStore,
    wakers: Wakers,
    mut requests: tokio::sync::mpsc::Receiver<PendingEnqueue>,
) {
    let mut group = Vec::with_capacity(GROUP_COMMIT_MAX);
    while requests.recv_many(&mut group, GROUP_COMMIT_MAX).await > 0 {
        let written = insert_group(&store, &group)
            .await
            .map_err(|e| e.to_string());
        let mut queues: Vec<&str> = group.iter().map(|p| p.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        if written.is_ok() {
            for queue in queues {
                wakers.of(queue).notify_one();
            }
        }
        for pending in group.drain(..) {
            let _ = pending.done.send(written.clone());
        }
    }
}

async fn insert_group(store: &SqliteStore, group: &[PendingEnqueue]) -> Result<(), sqlx::Error> {
    let mut tx = store.durable.begin().await?;
    for chunk in group.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO queue (queue, message_id, envelope, due_at) ");
        q.push_values(chunk, |mut b, p| {
            b.push_bind(p.queue.clone())
                .push_bind(p.id.as_bytes().to_vec())
                .push_bind(p.body.clone())
                .push_bind(p.due_at);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[async_trait::async_trait]
impl crate::queue::MessageQueue for SqliteQueue {
    async fn enqueue(
        &self,
        channel: &crate::resources::MessageChannel,
        envelope: &Envelope,
    ) -> Result<(), crate::queue::EnqueueError> {
        use crate::queue::EnqueueError;
        let body =
            serde_json::to_string(envelope).map_err(|e| EnqueueError::Rejected(e.to_string()))?;
        let (done, written) = tokio::sync::oneshot::channel();
        let pending = PendingEnqueue {
            queue: Self::queue_name(channel, envelope.priority),
            id: envelope.id,
            body,
            due_at: micros(envelope.accepted_at),
            done,
        };
        self.writer
            .send(pending)
            .await
            .map_err(|_| EnqueueError::Unavailable("the SQLite writer stopped".into()))?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EnqueueError::Unavailable(e)),
            Err(_) => Err(EnqueueError::Unavailable(
                "the SQLite writer stopped".into(),
            )),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.store.durable)
            .await
            .map(|_| ())
            .map_err(|e| format!("SQLite: {e}"))
    }
}

/// Writes `transitions` into the history: each message's row (with the `labels` a webhook
/// receipt event will need, by message) and its events.
async fn write_transitions(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    transitions: &[Transition],
    labels: &HashMap<MessageId, String>,
) -> Result<(), HistoryError> {
    for chunk in latest_per_message(transitions).chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO messages (id, tenant_id, channel, recipient, status, priority, attempts, \
             provider, provider_message_id, idempotency_key, send_at, created_at, updated_at, \
             webhook_labels) ",
        );
        q.push_values(chunk, |mut b, t| {
            b.push_bind(t.id.as_bytes().to_vec())
                .push_bind(t.tenant.clone())
                .push_bind(t.channel.clone())
                .push_bind(t.to.clone())
                .push_bind(t.status.as_str())
                .push_bind(t.priority.as_str())
                .push_bind(t.attempt)
                .push_bind(t.provider.clone())
                .push_bind(t.provider_message_id.clone())
                .push_bind(t.idempotency_key.clone())
                .push_bind(t.send_at.map(micros))
                .push_bind(micros(t.accepted_at))
                .push_bind(micros(t.at))
                .push_bind(labels.get(&t.id).cloned());
        });
        // Every expression sees the row as it was: an older transition (a batch recorded again
        // after a crash) never overwrites a newer state, and `delivered` (set by a receipt) is
        // final.
        q.push(
            " ON CONFLICT (id) DO UPDATE SET \
             status = CASE WHEN excluded.updated_at >= messages.updated_at \
                 AND messages.status <> 'delivered' THEN excluded.status ELSE messages.status END, \
             provider = CASE WHEN excluded.updated_at >= messages.updated_at \
                 THEN COALESCE(excluded.provider, messages.provider) ELSE messages.provider END, \
             provider_message_id = CASE WHEN excluded.updated_at >= messages.updated_at \
                 THEN COALESCE(excluded.provider_message_id, messages.provider_message_id) \
                 ELSE messages.provider_message_id END, \
             attempts = MAX(messages.attempts, excluded.attempts), \
             webhook_labels = COALESCE(excluded.webhook_labels, messages.webhook_labels), \
             updated_at = MAX(messages.updated_at, excluded.updated_at)",
        );
        q.build().execute(&mut **tx).await?;
    }
    for chunk in transitions.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO message_events (message_id, attempt, status, at, detail) ",
        );
        q.push_values(chunk, |mut b, t| {
            b.push_bind(t.id.as_bytes().to_vec())
                .push_bind(t.attempt)
                .push_bind(t.status.as_str())
                .push_bind(micros(t.at))
                .push_bind(t.detail.as_deref().map(stored_detail));
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn message_id(row: &SqliteRow) -> Result<MessageId, HistoryError> {
    let id: Vec<u8> = row.try_get("id")?;
    uuid::Uuid::from_slice(&id)
        .map(MessageId)
        .map_err(|e| HistoryError::Corrupt(format!("id: {e}")))
}

fn parse_row(row: &SqliteRow) -> Result<MessageView, HistoryError> {
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
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        detail: row.try_get("detail")?,
        events: None,
    })
}

/// The latest event's detail comes from the timeline's primary key, for the page's messages only.
const MESSAGE_COLUMNS: &str = "id, channel, recipient, status, priority, attempts, provider, \
                               provider_message_id, created_at, updated_at, \
                               (SELECT e.detail FROM message_events e WHERE e.message_id = messages.id \
                                ORDER BY e.at DESC, e.attempt DESC LIMIT 1) AS detail";

#[async_trait::async_trait]
impl HistoryStore for SqliteStore {
    async fn record(&self, batch: &BatchRecord) -> Result<(), HistoryError> {
        self.settle(&[], batch, &[]).await
    }

    async fn get(&self, tenant: &str, id: MessageId) -> Result<Option<MessageView>, HistoryError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_bytes().as_slice())
            .bind(tenant)
            .fetch_optional(&self.durable)
            .await?
        else {
            return Ok(None);
        };
        let mut view = parse_row(&row)?;
        let events = sqlx::query(
            "SELECT status, at, detail FROM message_events WHERE message_id = ? ORDER BY at, attempt",
        )
        .bind(id.as_bytes().as_slice())
        .fetch_all(&self.durable)
        .await?
        .iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(Event {
                status: status.parse().map_err(HistoryError::Corrupt)?,
                at: from_micros(row.try_get("at")?)?,
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
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = "
        ));
        q.push_bind(tenant.to_owned());
        if let Some(to) = &filter.to {
            q.push(" AND recipient = ").push_bind(to.clone());
        }
        if let Some(channel) = &filter.channel {
            q.push(" AND channel = ").push_bind(channel.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
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
        let rows = q.build().fetch_all(&self.durable).await?;
        let mut items = rows.iter().map(parse_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|m| encode_cursor(m.id))
        } else {
            None
        };
        Ok(MessagePage { items, next_cursor })
    }

    async fn stats(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
        bucket: Duration,
    ) -> Result<Stats, HistoryError> {
        let until = Utc::now();
        let width = bucket_millis(bucket);
        let bound = MessageId::lower_bound(since.timestamp_millis().max(0) as u64);
        // Read from messages_by_time alone (a covering range scan); created_at is in µs.
        let rows = sqlx::query(
            "SELECT channel, status, (created_at / 1000) / ? AS bucket, COUNT(*) AS n \
             FROM messages INDEXED BY messages_by_time \
             WHERE tenant_id = ? AND id >= ? GROUP BY channel, status, bucket",
        )
        .bind(width)
        .bind(tenant)
        .bind(bound.as_bytes().as_slice())
        .fetch_all(&self.durable)
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
        // The queue holds only what is waiting, so the scan is short; capped all the same.
        let overdue: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM queue \
             WHERE due_at < ? AND json_extract(envelope, '$.tenant') = ? LIMIT 100000)",
        )
        .bind(micros(until - overdue_after()))
        .bind(tenant)
        .fetch_one(&self.durable)
        .await?;
        let mut stats = Stats::from_counts(since, until, bucket, counts);
        stats.overdue = u64::try_from(overdue).unwrap_or(0);
        Ok(stats)
    }

    async fn claim_due(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, HistoryError> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let until = micros(
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30)),
        );
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE queue SET claimed_until = ");
        q.push_bind(until)
            .push(" WHERE seq IN (SELECT seq FROM queue WHERE queue IN (");
        let mut list = q.separated(", ");
        for queue in queues {
            list.push_bind(queue.clone());
        }
        q.push(") AND due_at <= ")
            .push_bind(micros(now))
            .push(" AND claimed_until < ")
            .push_bind(micros(now))
            .push(" ORDER BY due_at LIMIT ")
            .push_bind(limit)
            .push(") RETURNING seq, envelope, queue, due_at");
        let rows = q.build().fetch_all(&self.durable).await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get("envelope")?;
                let envelope: Envelope = serde_json::from_str(&body)
                    .map_err(|e| HistoryError::Corrupt(format!("deferred envelope: {e}")))?;
                let seq: i64 = row.try_get("seq")?;
                Ok(Claimed {
                    // The row (a re-park is a new row) and this lease (a later claim of the same
                    // row after the lease ran out has another).
                    claim: Claim {
                        id: envelope.id,
                        token: (u128::from(seq as u64) << 64) | u128::from(until as u64),
                    },
                    deferred: Deferred {
                        envelope,
                        queue: row.try_get("queue")?,
                        due_at: from_micros(row.try_get("due_at")?)?,
                    },
                })
            })
            .collect()
    }

    async fn sweep_parking(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        _grace: Duration,
    ) -> Result<ParkingHealth, HistoryError> {
        // A re-park is a new row written in the same transaction that consumes the old one, so
        // nothing is ever published without its row: there is nothing to repair or collect.
        if queues.is_empty() {
            return Ok(ParkingHealth::default());
        }
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT COUNT(*) FROM queue WHERE queue IN (");
        let mut list = q.separated(", ");
        for queue in queues {
            list.push_bind(queue.clone());
        }
        q.push(") AND due_at < ")
            .push_bind(micros(now - overdue_after()));
        let overdue: i64 = q.build_query_scalar().fetch_one(&self.durable).await?;
        Ok(ParkingHealth {
            overdue: u64::try_from(overdue).unwrap_or(0),
            ..ParkingHealth::default()
        })
    }

    async fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, HistoryError> {
        // One statement changes the row only when it is `sent`, so the transaction starts with a
        // write: no other writer can slip in between a read and the write.
        let filter = match &receipt.message {
            ReceiptFor::ProviderMessageId(_) => "provider_message_id = ?",
            ReceiptFor::Message(_) => "id = ?",
        };
        let mut tx = self.durable.begin().await?;
        let update = format!(
            "UPDATE messages SET status = ?, updated_at = MAX(updated_at, ?) \
             WHERE id = (SELECT id FROM messages WHERE {filter} AND provider = ? LIMIT 1) \
             AND status = 'sent' RETURNING id, attempts"
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(receipt.status.as_str())
            .bind(micros(receipt.at));
        let q = match &receipt.message {
            ReceiptFor::ProviderMessageId(provider_id) => q.bind(provider_id.clone()),
            ReceiptFor::Message(id) => q.bind(id.as_bytes().to_vec()),
        };
        let updated = q
            .bind(receipt.provider.clone())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = updated else {
            tx.rollback().await?;
            let select =
                format!("SELECT id, status FROM messages WHERE {filter} AND provider = ? LIMIT 1");
            let q = sqlx::query(sqlx::AssertSqlSafe(select));
            let q = match &receipt.message {
                ReceiptFor::ProviderMessageId(provider_id) => q.bind(provider_id.clone()),
                ReceiptFor::Message(id) => q.bind(id.as_bytes().to_vec()),
            };
            let found = q
                .bind(receipt.provider.clone())
                .fetch_optional(&self.durable)
                .await?;
            return match found {
                None => Ok(ReceiptOutcome::Unknown),
                Some(row) => {
                    let status: String = row.try_get("status")?;
                    Ok(ReceiptOutcome::Unchanged {
                        id: message_id(&row)?,
                        status: status.parse().map_err(HistoryError::Corrupt)?,
                    })
                }
            };
        };
        let id = message_id(&row)?;
        let attempt: i64 = row.try_get("attempts")?;
        sqlx::query(
            "INSERT OR IGNORE INTO message_events (message_id, attempt, status, at, detail) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.as_bytes().as_slice())
        .bind(attempt)
        .bind(receipt.status.as_str())
        .bind(micros(receipt.at))
        .bind(receipt.detail.as_deref().map(stored_detail))
        .execute(&mut *tx)
        .await?;
        crate::webhooks_store::sqlite_receipt_outbox(
            &mut tx,
            id,
            receipt.status,
            u32::try_from(attempt).unwrap_or(0),
            receipt.at,
            receipt.detail.clone(),
        )
        .await?;
        tx.commit().await?;
        Ok(ReceiptOutcome::Applied(id))
    }

    async fn release(&self, claims: &[Claim]) -> Result<(), HistoryError> {
        let mut tx = self.durable.begin().await?;
        for claim in claims {
            let (seq, until) = ((claim.token >> 64) as u64 as i64, claim.token as u64 as i64);
            sqlx::query("DELETE FROM queue WHERE seq = ? AND claimed_until = ?")
                .bind(seq)
                .bind(until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn overdue_after() -> chrono::Duration {
    chrono::Duration::from_std(OVERDUE_AFTER).unwrap_or(chrono::Duration::minutes(1))
}

fn stored_key(row: &SqliteRow) -> Result<StoredKey, KeyError> {
    let time = |us: i64| {
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| KeyError::Database(sqlx::Error::Decode(format!("time {us}").into())))
    };
    Ok(StoredKey {
        key_id: row.try_get("key_id")?,
        tenant: row.try_get("tenant_id")?,
        hash: row.try_get("secret_hash")?,
        description: row.try_get("description")?,
        created_at: time(row.try_get("created_at")?)?,
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(time)
            .transpose()?,
    })
}

#[async_trait::async_trait]
impl ApiKeyStore for SqliteStore {
    async fn put(
        &self,
        key_id: &str,
        tenant: &str,
        key: &str,
        description: &str,
    ) -> Result<(), KeyError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, tenant_id, secret_hash, description, created_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET \
             tenant_id = excluded.tenant_id, secret_hash = excluded.secret_hash, \
             description = excluded.description, revoked_at = NULL",
        )
        .bind(key_id)
        .bind(tenant)
        .bind(hash_key(key).as_slice())
        .bind(description)
        .bind(micros(Utc::now()))
        .execute(&self.durable)
        .await?;
        Ok(())
    }

    async fn revoke(&self, key_id: &str) -> Result<(), KeyError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
        )
        .bind(micros(Utc::now()))
        .bind(key_id)
        .execute(&self.durable)
        .await?;
        if done.rows_affected() == 0 && self.find(key_id).await?.is_none() {
            return Err(KeyError::NotFound(key_id.to_owned()));
        }
        Ok(())
    }

    async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, KeyError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = ?")
            .bind(key_id)
            .fetch_optional(&self.durable)
            .await?;
        row.as_ref().map(stored_key).transpose()
    }

    async fn active(&self) -> Result<Vec<StoredKey>, KeyError> {
        let rows = sqlx::query("SELECT * FROM api_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.durable)
            .await?;
        rows.iter().map(stored_key).collect()
    }
}

#[async_trait::async_trait]
impl crate::profiles::ProfileStore for SqliteStore {
    async fn profile(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<ump_automation::profile::Profile>, HistoryError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT profile FROM profiles WHERE tenant_id = ? AND user_id = ?")
                .bind(tenant)
                .bind(user_id)
                .fetch_optional(&self.durable)
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
        for chunk in user_ids.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, profile FROM profiles WHERE tenant_id = ",
            );
            q.push_bind(tenant).push(" AND user_id IN (");
            let mut list = q.separated(", ");
            for user in chunk {
                list.push_bind(user);
            }
            q.push(")");
            for row in q.build().fetch_all(&self.durable).await? {
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
        let now = micros(Utc::now());
        sqlx::query(
            "INSERT INTO profiles (tenant_id, user_id, profile, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET profile = excluded.profile, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(&profile.user_id)
        .bind(crate::profiles::encode(profile)?)
        .bind(now)
        .bind(now)
        .execute(&self.durable)
        .await?;
        Ok(())
    }

    async fn erase(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<crate::profiles::Erasure, HistoryError> {
        let mut tx = self.durable.begin().await?;
        // A write first: the transaction holds the file's write lock from here on. Also with no
        // profile yet: the person's first events may still be in the event log.
        sqlx::query(
            "INSERT INTO erasures (tenant_id, user_key, erased_at) VALUES (?, ?, ?) \
             ON CONFLICT (tenant_id, user_key) DO UPDATE SET \
             erased_at = max(erased_at, excluded.erased_at)",
        )
        .bind(tenant)
        .bind(crate::profiles::erasure_key(user_id))
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        let text: Option<String> = sqlx::query_scalar(
            "DELETE FROM profiles WHERE tenant_id = ? AND user_id = ? RETURNING profile",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(&mut *tx)
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
        for recipient in &recipients {
            let ids: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT id FROM messages WHERE tenant_id = ? AND recipient = ?")
                    .bind(tenant)
                    .bind(recipient)
                    .fetch_all(&mut *tx)
                    .await?;
            for id in ids {
                messages.insert(
                    id.try_into()
                        .map_err(|_| HistoryError::Corrupt("message id".into()))?,
                );
            }
        }
        let mut masked = 0;
        for recipient in &recipients {
            // Providers quote the recipient back in their errors, which the timeline keeps.
            sqlx::query(
                "UPDATE message_events SET detail = replace(detail, ?, ?) \
                 WHERE message_id IN (SELECT id FROM messages WHERE tenant_id = ? AND recipient = ?) \
                 AND detail IS NOT NULL",
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
        let webhook_events = crate::webhooks_erasure::sqlite(
            &mut tx,
            tenant,
            &messages,
            &crate::webhooks_erasure::Redaction::new(&recipients),
        )
        .await?;
        let mut automation_state = false;
        for statement in [
            "DELETE FROM segment_members WHERE tenant_id = ? AND user_id = ?",
            "DELETE FROM person_state WHERE tenant_id = ? AND user_id = ?",
            // Journey messages not sent yet: their data came from the person.
            "DELETE FROM journey_sends WHERE tenant_id = ? AND user_id = ?",
        ] {
            let deleted = sqlx::query(statement)
                .bind(tenant)
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            automation_state |= deleted > 0;
        }
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
    use crate::model::Content;

    fn envelope(to: &str) -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: "default".into(),
            channel: "sms".into(),
            to: to.into(),
            content: Content {
                body: Some("hello".into()),
                ..Default::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: Vec::new(),
            metadata: Default::default(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: Utc::now(),
            attempts: 0,
            fallback: None,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn parked_messages_keep_the_contract() {
        use crate::testing::parking;
        let (_a, one) = store().await;
        parking::claims_hold_for_their_lease(&one).await;
        let (_b, two) = store().await;
        parking::a_release_never_removes_a_newer_parking(&two).await;
        let (_c, three) = store().await;
        parking::overdue_parkings_are_counted(&three).await;
    }

    #[tokio::test]
    async fn event_details_keep_the_contract() {
        let (_dir, store) = store().await;
        crate::testing::history::details_are_kept_to_their_first_bytes(&store).await;
    }

    /// Reads a queue as `LocalConsumer` does: due rows, oldest first (not settled: a cursor
    /// past the last row read stands in for the settlement).
    struct SqliteReader {
        store: SqliteStore,
        queue: String,
        after: i64,
    }

    #[async_trait::async_trait]
    impl crate::testing::queue::QueueReader for SqliteReader {
        async fn read(&mut self, count: usize, wait: std::time::Duration) -> Vec<Envelope> {
            let deadline = tokio::time::Instant::now() + wait;
            let mut read = Vec::new();
            while read.len() < count {
                let due = self
                    .store
                    .due(&self.queue, Utc::now(), 10_000)
                    .await
                    .expect("due");
                let after = self.after;
                for queued in due.into_iter().filter(|q| q.seq > after) {
                    if read.len() == count {
                        break;
                    }
                    self.after = queued.seq;
                    read.push(queued.envelope);
                }
                if read.len() == count || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            read
        }
    }

    #[tokio::test]
    async fn both_queues_keep_the_queue_contract() {
        use crate::testing::queue;
        let (_dir, store) = store().await;
        let sqlite = SqliteQueue::new(store.clone(), Wakers::default());
        let channel = queue::channel("contract");
        for priority in [Priority::Bulk, Priority::Realtime] {
            let mut reader = SqliteReader {
                store: store.clone(),
                queue: SqliteQueue::queue_name(&channel, priority),
                after: 0,
            };
            queue::accepted_messages_come_back_whole_once_and_in_order(
                &sqlite,
                &channel,
                priority,
                &mut reader,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn api_keys_keep_the_contract() {
        let (_dir, store) = store().await;
        crate::testing::keys::keys_are_hashed_replaced_and_revoked(&store, "t1").await;
    }

    #[tokio::test]
    async fn prune_keeps_the_contract() {
        let (_dir, store) = store().await;
        let pool = store.pool().clone();
        crate::testing::history::prune_deletes_only_history_older_than_the_cutoff(
            &store,
            &store,
            |cutoff, chunk| store.prune(cutoff, chunk),
            || async move {
                sqlx::query_scalar("SELECT COUNT(*) FROM message_events")
                    .fetch_one(&pool)
                    .await
                    .expect("count")
            },
        )
        .await;
    }

    #[tokio::test]
    async fn profiles_keep_the_contract() {
        let (_dir, store) = store().await;
        crate::testing::profiles::profiles_are_per_tenant_and_erasure_leaves_nothing(&store).await;
    }

    #[tokio::test]
    async fn a_settled_batch_leaves_the_queue_and_lands_in_history_at_once() {
        let (_dir, store) = store().await;
        let first = envelope("+821011112222");
        let second = envelope("+821033334444");
        let now = Utc::now();
        store.enqueue("q", &first, now).await.unwrap();
        store.enqueue("q", &second, now).await.unwrap();
        let due = store.due("q", Utc::now(), 10).await.unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].envelope, first);

        let batch = BatchRecord {
            transitions: vec![
                Transition::of(&first, Status::Accepted, first.accepted_at),
                Transition::of(&first, Status::Sent, Utc::now()),
            ],
            deferred: vec![Deferred {
                envelope: second.clone(),
                queue: "q".into(),
                due_at: Utc::now() + chrono::Duration::hours(1),
            }],
        };
        let seqs: Vec<i64> = due.iter().map(|q| q.seq).collect();
        store.settle(&seqs, &batch, &[]).await.unwrap();
        // Recording the same batch again (a crash before the offsets moved) changes nothing.
        store.record(&batch).await.unwrap();

        assert!(store.due("q", Utc::now(), 10).await.unwrap().is_empty());
        let parked = store.next_due("q").await.unwrap().expect("parked");
        assert!(parked > Utc::now());
        let view = store.get("default", first.id).await.unwrap().unwrap();
        assert_eq!(view.status, Status::Sent);
        assert_eq!(view.events.unwrap().len(), 2);
        assert!(store.get("other", first.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_older_transition_never_overwrites_a_newer_state() {
        let (_dir, store) = store().await;
        let e = envelope("+821055556666");
        let sent = Transition::of(&e, Status::Sent, Utc::now());
        let older = Transition::of(
            &e,
            Status::Sending,
            Utc::now() - chrono::Duration::seconds(5),
        );
        store
            .record(&BatchRecord {
                transitions: vec![sent],
                deferred: vec![],
            })
            .await
            .unwrap();
        store
            .record(&BatchRecord {
                transitions: vec![older],
                deferred: vec![],
            })
            .await
            .unwrap();
        let view = store.get("default", e.id).await.unwrap().unwrap();
        assert_eq!(view.status, Status::Sent);
    }

    #[tokio::test]
    async fn list_pages_newest_first_within_a_tenant() {
        let (_dir, store) = store().await;
        let mut transitions = Vec::new();
        for i in 0..5 {
            let e = envelope(&format!("+8210000000{i:02}"));
            transitions.push(Transition::of(&e, Status::Accepted, e.accepted_at));
        }
        store
            .record(&BatchRecord {
                transitions: transitions.clone(),
                deferred: vec![],
            })
            .await
            .unwrap();
        let page = store
            .list(
                "default",
                &MessageFilter {
                    limit: 3,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.items.len(), 3);
        assert_eq!(page.items[0].id, transitions[4].id);
        let next = crate::history::decode_cursor(page.next_cursor.as_deref().unwrap());
        let rest = store
            .list(
                "default",
                &MessageFilter {
                    limit: 3,
                    before: next,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(rest.items.len(), 2);
        assert!(rest.next_cursor.is_none());
        let to = store
            .list(
                "default",
                &MessageFilter {
                    to: Some(transitions[1].to.clone()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(to.items.len(), 1);
    }

    #[tokio::test]
    async fn stats_count_the_window_by_channel_and_status() {
        let (_dir, store) = store().await;
        let sent = envelope("+821000000001");
        let failed = envelope("+821000000002");
        store
            .record(&BatchRecord {
                transitions: vec![
                    Transition::of(&sent, Status::Sent, Utc::now()),
                    Transition::of(&failed, Status::Failed, Utc::now()).detail("bad number"),
                ],
                deferred: vec![],
            })
            .await
            .unwrap();
        let stats = store
            .stats(
                "default",
                Utc::now() - chrono::Duration::hours(1),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(stats.totals.total, 2);
        assert_eq!(stats.totals.sent, 1);
        assert_eq!(stats.totals.failed, 1);
        assert_eq!(stats.success_rate, Some(0.5));
        assert_eq!(stats.channels.len(), 1);
        let other = store
            .stats(
                "other",
                Utc::now() - chrono::Duration::hours(1),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(other.totals.total, 0);
        let failed_view = store.get("default", failed.id).await.unwrap().unwrap();
        assert_eq!(failed_view.detail.as_deref(), Some("bad number"));
    }

    #[tokio::test]
    async fn a_receipt_moves_a_sent_message_once_and_only_its_providers() {
        let (_dir, store) = store().await;
        let e = envelope("+821077778888");
        store
            .record(&BatchRecord {
                transitions: vec![
                    Transition::of(&e, Status::Sent, Utc::now())
                        .provider("twilio", Some("SM123".into())),
                ],
                deferred: vec![],
            })
            .await
            .unwrap();
        let receipt = |provider: &str, message| Receipt {
            provider: provider.into(),
            message,
            status: Status::Delivered,
            at: Utc::now(),
            detail: Some("delivered".into()),
        };
        let by_sid = ReceiptFor::ProviderMessageId("SM123".into());
        assert_eq!(
            store
                .apply_receipt(&receipt("nhn", by_sid.clone()))
                .await
                .unwrap(),
            ReceiptOutcome::Unknown,
            "another provider's receipt"
        );
        assert_eq!(
            store
                .apply_receipt(&receipt("twilio", by_sid.clone()))
                .await
                .unwrap(),
            ReceiptOutcome::Applied(e.id)
        );
        assert_eq!(
            store
                .apply_receipt(&receipt("twilio", ReceiptFor::Message(e.id)))
                .await
                .unwrap(),
            ReceiptOutcome::Unchanged {
                id: e.id,
                status: Status::Delivered
            }
        );
        // A batch recorded again after the receipt never undoes the delivery.
        store
            .record(&BatchRecord {
                transitions: vec![Transition::of(&e, Status::Sent, Utc::now())],
                deferred: vec![],
            })
            .await
            .unwrap();
        let view = store.get("default", e.id).await.unwrap().unwrap();
        assert_eq!(view.status, Status::Delivered);
        assert_eq!(view.events.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn keys_are_stored_hashed_and_revocable() {
        let (_dir, store) = store().await;
        store
            .put("k1", "acme", "ump_k1_secret", "test")
            .await
            .unwrap();
        let stored = store.find("k1").await.unwrap().unwrap();
        assert_eq!(stored.tenant, "acme");
        assert_ne!(stored.hash, b"ump_k1_secret".to_vec());
        assert_eq!(store.active().await.unwrap().len(), 1);
        store.revoke("k1").await.unwrap();
        assert!(store.active().await.unwrap().is_empty());
        assert!(matches!(
            store.revoke("nope").await,
            Err(KeyError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_second_process_cannot_take_the_same_folder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        // Another open file description of the same lock file conflicts, as another process would.
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(OpenError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn expiring_keys_vanish_after_their_time() {
        let (_dir, store) = store().await;
        let now = Utc::now();
        store
            .put_expiring("a", "1", now + chrono::Duration::seconds(60))
            .await
            .unwrap();
        store
            .put_expiring("b", "2", now - chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(
            store.get_expiring("a", now).await.unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(store.get_expiring("b", now).await.unwrap(), None);
        assert!(store.replace_expiring("a", "3").await.unwrap());
        assert_eq!(store.sweep_expired(now).await.unwrap(), 1);
        store.delete_expiring("a").await.unwrap();
        assert_eq!(store.get_expiring("a", now).await.unwrap(), None);
    }
}

//! The webhook endpoints and outbox in MySQL (cluster) and SQLite (all-in-one), and the outbox
//! writer both history stores call inside the transaction of a batch or a receipt. The behaviour
//! both keep is in `testing::webhooks`.

use crate::history::{HistoryError, Transition};
use crate::model::{MessageId, Priority, Status};
use crate::sqlite::{SqliteStore, micros};
use crate::webhooks::{
    Attempt, AttemptResult, ClaimedDelivery, DELIVERED, DeliveryView, Endpoint, EventFilter,
    EventType, GAVE_UP, NewDelivery, PENDING, RetryPolicy, SigningSecrets, Subscriber, Target,
    WebhookStore, deliveries_for, events_for,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySql, QueryBuilder, Row, Sqlite};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

const ROWS_PER_STATEMENT: usize = 500;

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Corrupt(format!("{what}: {e}"))
}

fn filter_text(filter: &EventFilter) -> Result<String, HistoryError> {
    serde_json::to_string(filter).map_err(|e| corrupt("webhook filter", e))
}

fn parse_filter(text: &str) -> Result<EventFilter, HistoryError> {
    serde_json::from_str(text).map_err(|e| corrupt("webhook filter", e))
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub(crate) fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn earlier(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

/// Tenants of the batch that an event could concern.
fn tenants_with_events(transitions: &[Transition]) -> BTreeSet<&str> {
    transitions
        .iter()
        .filter(|t| EventType::of(t.status).is_some())
        .map(|t| t.tenant.as_str())
        .collect()
}

/// `sent` messages of tenants with an endpoint that a receipt's event could reach, and with tags
/// or metadata: their labels are kept for the receipt (a message without any needs nothing kept:
/// its receipt's event has empty labels either way).
fn labels_to_keep<'a>(
    transitions: &'a [Transition],
    subscribers: &[Subscriber],
) -> Vec<&'a Transition> {
    let receipt_events = [EventType::MessageDelivered, EventType::MessageFailed];
    let mut keep: Vec<&Transition> = transitions
        .iter()
        .filter(|t| t.status == Status::Sent)
        .filter(|t| !t.tags.is_empty() || !t.metadata.is_empty())
        .filter(|t| {
            subscribers.iter().any(|s| {
                s.tenant == t.tenant
                    && receipt_events
                        .iter()
                        .any(|e| s.filter.event_types.contains(e))
            })
        })
        .collect();
    keep.sort_by_key(|t| t.id);
    keep.dedup_by_key(|t| t.id);
    keep
}

/// A message's tags and metadata as kept with its history row for its receipt's event.
#[derive(serde::Serialize)]
struct LabelsRef<'a> {
    tags: &'a [String],
    metadata: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Default, serde::Deserialize)]
struct Labels {
    tags: Vec<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl Labels {
    fn parse(json: &str) -> Result<Self, HistoryError> {
        serde_json::from_str(json).map_err(|e| corrupt("webhook labels", e))
    }

    /// Labels as `webhook_messages` keeps them: tags and metadata, each a JSON text.
    fn from_columns(
        tags: Option<String>,
        metadata: Option<String>,
    ) -> Result<Option<Self>, HistoryError> {
        let (Some(tags), Some(metadata)) = (tags, metadata) else {
            return Ok(None);
        };
        Ok(Some(Self {
            tags: serde_json::from_str(&tags).map_err(|e| corrupt("webhook tags", e))?,
            metadata: serde_json::from_str(&metadata)
                .map_err(|e| corrupt("webhook metadata", e))?,
        }))
    }
}

/// The transition a receipt made, as far as its event needs one.
fn receipt_transition(
    id: MessageId,
    row: (String, String, String, Option<String>),
    labels: Option<Labels>,
    status: Status,
    attempt: u32,
    at: DateTime<Utc>,
    detail: Option<String>,
) -> Result<Transition, HistoryError> {
    let (tenant, channel, to, provider) = row;
    let Labels { tags, metadata } = labels.unwrap_or_default();
    Ok(Transition {
        id,
        tenant,
        channel,
        to,
        priority: Priority::Bulk,
        idempotency_key: None,
        send_at: None,
        accepted_at: at,
        status,
        attempt,
        provider,
        provider_message_id: None,
        at,
        detail,
        tags,
        metadata,
    })
}

/// Per endpoint, what a set of attempts means for it.
enum Verdict {
    Gone,
    Works,
    Failing(DateTime<Utc>),
}

fn verdicts(attempts: &[Attempt]) -> BTreeMap<&str, Verdict> {
    let mut out: BTreeMap<&str, Verdict> = BTreeMap::new();
    for a in attempts {
        let next = match &a.result {
            AttemptResult::Skipped => continue,
            AttemptResult::Gone => Verdict::Gone,
            AttemptResult::Delivered { .. } => Verdict::Works,
            AttemptResult::Failed { .. } => Verdict::Failing(a.at),
        };
        let merged = match (out.remove(a.endpoint_id.as_str()), next) {
            (Some(Verdict::Gone), _) | (_, Verdict::Gone) => Verdict::Gone,
            (Some(Verdict::Works), _) | (_, Verdict::Works) => Verdict::Works,
            (Some(Verdict::Failing(x)), Verdict::Failing(y)) => Verdict::Failing(x.min(y)),
            (None, v) => v,
        };
        out.insert(a.endpoint_id.as_str(), merged);
    }
    out
}

/// Ends a claim on a delivery that was not attempted: it stays due as it was.
const RELEASE: &str = "UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL \
    WHERE endpoint_id = ? AND event_id = ? AND claimed_by = ?";

const GONE_REASON: &str = "the receiver answered 410 Gone";

fn failing_reason(policy: &RetryPolicy) -> String {
    format!(
        "every delivery failed for {}",
        humantime::format_duration(policy.disable_after)
    )
}

pub(crate) struct AttemptRow<'a> {
    pub(crate) state: &'static str,
    pub(crate) due_at: Option<DateTime<Utc>>,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) a: &'a Attempt,
}

pub(crate) fn attempt_row(a: &Attempt) -> AttemptRow<'_> {
    let (state, due_at, status, error) = match &a.result {
        AttemptResult::Delivered { status } => (DELIVERED, None, Some(*status), None),
        AttemptResult::Gone => (
            if a.retry_at.is_some() {
                PENDING
            } else {
                GAVE_UP
            },
            a.retry_at,
            Some(410),
            Some("410 Gone".to_owned()),
        ),
        AttemptResult::Failed { status, error } => (
            if a.retry_at.is_some() {
                PENDING
            } else {
                GAVE_UP
            },
            a.retry_at,
            *status,
            Some(truncate(error, 500)),
        ),
        // Not attempted: stays due as it was.
        AttemptResult::Skipped => (PENDING, None, None, None),
    };
    AttemptRow {
        state,
        due_at,
        status,
        error,
        a,
    }
}

// ---------------------------------------------------------------------------------------------
// MySQL

/// The webhook side of a history transaction: the enabled endpoints of its tenants, read first,
/// so that the message rows the transaction writes carry the labels receipts will need (in
/// `messages.webhook_labels`, not a row of their own), and then the events themselves.
pub(crate) struct Outbox {
    subscribers: Vec<Subscriber>,
}

fn subscribers<R: Row>(rows: &[R]) -> Result<Vec<Subscriber>, HistoryError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(Subscriber {
                endpoint_id: r.try_get(0)?,
                tenant: r.try_get(1)?,
                filter: parse_filter(&r.try_get::<String, _>(2)?)?,
            })
        })
        .collect()
}

impl Outbox {
    pub(crate) async fn load_mysql(
        tx: &mut sqlx::Transaction<'_, MySql>,
        transitions: &[Transition],
    ) -> Result<Self, HistoryError> {
        let tenants = tenants_with_events(transitions);
        if tenants.is_empty() {
            return Ok(Self {
                subscribers: Vec::new(),
            });
        }
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT endpoint_id, tenant_id, filter FROM webhook_endpoints \
             WHERE enabled = TRUE AND tenant_id IN (",
        );
        let mut list = q.separated(", ");
        for tenant in &tenants {
            list.push_bind(*tenant);
        }
        q.push(")");
        let rows = q.build().fetch_all(&mut **tx).await?;
        Ok(Self {
            subscribers: subscribers(&rows)?,
        })
    }

    pub(crate) async fn load_sqlite(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        transitions: &[Transition],
    ) -> Result<Self, HistoryError> {
        let tenants = tenants_with_events(transitions);
        if tenants.is_empty() {
            return Ok(Self {
                subscribers: Vec::new(),
            });
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT endpoint_id, tenant_id, filter FROM webhook_endpoints \
             WHERE enabled = 1 AND tenant_id IN (",
        );
        let mut list = q.separated(", ");
        for tenant in &tenants {
            list.push_bind(tenant.to_string());
        }
        q.push(")");
        let rows = q.build().fetch_all(&mut **tx).await?;
        Ok(Self {
            subscribers: subscribers(&rows)?,
        })
    }

    /// The labels (JSON) to store with the message rows of `transitions`, by message.
    pub(crate) fn labels(
        &self,
        transitions: &[Transition],
    ) -> Result<HashMap<MessageId, String>, HistoryError> {
        labels_to_keep(transitions, &self.subscribers)
            .into_iter()
            .map(|t| {
                let labels = LabelsRef {
                    tags: &t.tags,
                    metadata: &t.metadata,
                };
                let json = serde_json::to_string(&labels).map_err(|e| corrupt("labels", e))?;
                Ok((t.id, json))
            })
            .collect()
    }

    /// Writes the deliveries `transitions` produce: batches of events in MySQL.
    pub(crate) async fn write_mysql(
        &self,
        tx: &mut sqlx::Transaction<'_, MySql>,
        transitions: &[Transition],
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if self.subscribers.is_empty() {
            return Ok(());
        }
        let events = events_for(transitions, &self.subscribers);
        crate::webhooks_batches::insert(tx, &events, now).await
    }

    /// Writes the deliveries `transitions` produce: a row each in SQLite.
    pub(crate) async fn write_sqlite(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        transitions: &[Transition],
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if self.subscribers.is_empty() {
            return Ok(());
        }
        sqlite_insert(tx, &deliveries_for(transitions, &self.subscribers, now)).await
    }
}

async fn mysql_insert(
    tx: &mut sqlx::Transaction<'_, MySql>,
    deliveries: &[NewDelivery],
) -> Result<(), HistoryError> {
    for chunk in deliveries.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO webhook_deliveries (endpoint_id, event_id, tenant_id, event_type, \
             message_id, payload, state, created_at, retry_since, due_at) ",
        );
        q.push_values(chunk, |mut b, d| {
            b.push_bind(&d.endpoint_id)
                .push_bind(&d.event_id)
                .push_bind(&d.tenant)
                .push_bind(&d.event_type)
                .push_bind(d.message_id.map(|id| id.as_bytes().to_vec()))
                .push_bind(&d.payload)
                .push_bind(PENDING)
                .push_bind(d.created_at.naive_utc())
                .push_bind(d.created_at.naive_utc())
                .push_bind(d.created_at.naive_utc());
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The event of a receipt that moved message `id` to `status`, inside the receipt's `tx`.
pub(crate) async fn mysql_receipt_outbox(
    tx: &mut sqlx::Transaction<'_, MySql>,
    id: MessageId,
    status: Status,
    attempt: u32,
    at: DateTime<Utc>,
    detail: Option<String>,
) -> Result<(), HistoryError> {
    // Labels kept before `messages.webhook_labels` existed are in `webhook_messages`.
    let row = sqlx::query(
        "SELECT m.tenant_id, m.channel, m.recipient, m.provider, m.webhook_labels, w.tags, \
         w.metadata FROM messages m LEFT JOIN webhook_messages w ON w.message_id = m.id \
         WHERE m.id = ?",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_one(&mut **tx)
    .await?;
    let labels = match row.try_get::<Option<String>, _>(4)? {
        Some(json) => Some(Labels::parse(&json)?),
        None => Labels::from_columns(row.try_get(5)?, row.try_get(6)?)?,
    };
    let row = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    let t = receipt_transition(id, row, labels, status, attempt, at, detail)?;
    let outbox = Outbox::load_mysql(tx, std::slice::from_ref(&t)).await?;
    outbox.write_mysql(tx, &[t], Utc::now()).await
}

/// Leases rows of an outbox table (`key` in `ids`, of the endpoint) to the claim `token` until
/// `until`.
pub(crate) fn mysql_lease(
    table: &str,
    key: &str,
    token: uuid::Uuid,
    until: DateTime<Utc>,
    endpoint_id: &str,
    ids: &[String],
) -> QueryBuilder<MySql> {
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(format!("UPDATE {table} SET claimed_by = "));
    q.push_bind(token.as_bytes().to_vec())
        .push(", claimed_until = ")
        .push_bind(until.naive_utc())
        .push(" WHERE endpoint_id = ")
        .push_bind(endpoint_id)
        .push(format_args!(" AND {key} IN ("));
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    q.push(")");
    q
}

fn mysql_time(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<DateTime<Utc>, HistoryError> {
    Ok(row.try_get::<NaiveDateTime, _>(i)?.and_utc())
}

fn mysql_opt_time(
    row: &sqlx::mysql::MySqlRow,
    i: usize,
) -> Result<Option<DateTime<Utc>>, HistoryError> {
    Ok(row
        .try_get::<Option<NaiveDateTime>, _>(i)?
        .map(|t| t.and_utc()))
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, tenant_id, url, description, filter, enabled, \
    disabled_reason, failing_since, previous_secret_until, created_at, updated_at";

fn mysql_endpoint(row: &sqlx::mysql::MySqlRow) -> Result<Endpoint, HistoryError> {
    Ok(Endpoint {
        id: row.try_get(0)?,
        tenant: row.try_get(1)?,
        url: row.try_get(2)?,
        description: row.try_get(3)?,
        filter: parse_filter(&row.try_get::<String, _>(4)?)?,
        enabled: row.try_get(5)?,
        disabled_reason: row.try_get(6)?,
        failing_since: mysql_opt_time(row, 7)?,
        previous_secret_expires_at: mysql_opt_time(row, 8)?,
        created_at: mysql_time(row, 9)?,
        updated_at: mysql_time(row, 10)?,
    })
}

const DELIVERY_COLUMNS: &str = "event_id, event_type, message_id, state, attempts, created_at, \
    due_at, last_attempt_at, last_status, last_latency_ms, last_error";

fn message_id(bytes: Option<Vec<u8>>) -> Result<Option<MessageId>, HistoryError> {
    bytes
        .map(|b| {
            uuid::Uuid::from_slice(&b)
                .map(MessageId)
                .map_err(|e| corrupt("message id", e))
        })
        .transpose()
}

fn mysql_delivery(row: &sqlx::mysql::MySqlRow) -> Result<DeliveryView, HistoryError> {
    let state: String = row.try_get(3)?;
    Ok(DeliveryView {
        id: row.try_get(0)?,
        event_type: row.try_get(1)?,
        message_id: message_id(row.try_get(2)?)?,
        next_attempt_at: if state == PENDING {
            Some(mysql_time(row, 6)?)
        } else {
            None
        },
        state,
        attempts: row.try_get(4)?,
        created_at: mysql_time(row, 5)?,
        last_attempt_at: mysql_opt_time(row, 7)?,
        last_status_code: row.try_get(8)?,
        last_latency_ms: row.try_get::<Option<u32>, _>(9)?.map(u64::from),
        last_error: row.try_get(10)?,
    })
}

/// Webhook endpoints and the outbox in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlWebhooks {
    pool: sqlx::MySqlPool,
}

impl MySqlWebhooks {
    pub fn new(pool: sqlx::MySqlPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl WebhookStore for MySqlWebhooks {
    async fn create_endpoint(&self, e: &Endpoint, secret: &str) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (endpoint_id, tenant_id, url, description, filter, \
             secret, enabled, disabled_reason, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(&e.tenant)
        .bind(&e.url)
        .bind(&e.description)
        .bind(filter_text(&e.filter)?)
        .bind(secret)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(e.created_at.naive_utc())
        .bind(e.updated_at.naive_utc())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = ? \
             ORDER BY endpoint_id LIMIT 1000"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mysql_endpoint).collect()
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, HistoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(mysql_endpoint).transpose()
    }

    async fn update_endpoint(&self, e: &Endpoint) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET url = ?, description = ?, filter = ?, enabled = ?, \
             disabled_reason = ?, failing_since = IF(?, NULL, failing_since), updated_at = ? \
             WHERE tenant_id = ? AND endpoint_id = ?",
        )
        .bind(&e.url)
        .bind(&e.description)
        .bind(filter_text(&e.filter)?)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(e.enabled)
        .bind(e.updated_at.naive_utc())
        .bind(&e.tenant)
        .bind(&e.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, HistoryError> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?")
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        for table in ["webhook_deliveries", "webhook_batches"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE endpoint_id = ?"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &str,
        grace_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError> {
        // Assignments run left to right: previous_secret takes the old value of secret.
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?, \
             secret = ?, updated_at = ? WHERE tenant_id = ? AND endpoint_id = ?",
        )
        .bind(grace_until.naive_utc())
        .bind(secret)
        .bind(now.naive_utc())
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), HistoryError> {
        let mut tx = self.pool.begin().await?;
        mysql_insert(&mut tx, deliveries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ? \
             AND tenant_id = ? AND event_id < ? ORDER BY event_id DESC LIMIT ?"
        )))
        .bind(endpoint_id)
        .bind(tenant)
        .bind(before.unwrap_or("~"))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(mysql_delivery)
            .collect::<Result<Vec<_>, _>>()?;
        crate::webhooks_batches::log(
            &self.pool,
            tenant,
            endpoint_id,
            before.unwrap_or("~"),
            limit as usize,
            &mut out,
        )
        .await?;
        Ok(out)
    }

    async fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError> {
        // As for claims: no gap locks that would hold up the history's writes of new events.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, due_at = ?, retry_since = ? \
             WHERE endpoint_id = ? AND tenant_id = ? AND created_at >= ?",
        )
        .bind(PENDING)
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(endpoint_id)
        .bind(tenant)
        .bind(since.naive_utc())
        .execute(&mut *conn)
        .await?;
        drop(conn);
        let batched =
            crate::webhooks_batches::replay(&self.pool, tenant, endpoint_id, since, now).await?;
        Ok(done.rows_affected() + batched)
    }

    async fn due_targets(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Target>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT e.endpoint_id, e.url, e.secret, e.previous_secret, e.previous_secret_until \
             FROM webhook_endpoints e WHERE e.enabled = TRUE AND (EXISTS (\
               SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.endpoint_id \
               AND d.state = 'pending' AND d.due_at <= ? \
               AND (d.claimed_until IS NULL OR d.claimed_until < ?)) OR {}) \
             LIMIT ?",
            crate::webhooks_batches::DUE_BATCH
        )))
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let previous: Option<String> = r.try_get(3)?;
                let until = mysql_opt_time(r, 4)?;
                Ok(Target {
                    endpoint_id: r.try_get(0)?,
                    url: r.try_get(1)?,
                    secrets: SigningSecrets {
                        current: r.try_get(2)?,
                        previous: previous.zip(until),
                    },
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, HistoryError> {
        let token = uuid::Uuid::new_v4();
        // Read committed: no gap locks, so claiming never holds up the history's inserts of new
        // events; SKIP LOCKED: dispatchers (and one dispatcher's rounds) claiming the same
        // endpoint at once take different rows instead of queueing behind each other.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT d.event_id FROM webhook_deliveries d \
             WHERE d.endpoint_id = ? AND d.state = 'pending' AND d.due_at <= ? \
             AND (d.claimed_until IS NULL OR d.claimed_until < ?) \
             AND EXISTS (SELECT 1 FROM webhook_endpoints e \
                         WHERE e.endpoint_id = d.endpoint_id AND e.enabled = TRUE) \
             ORDER BY d.due_at LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(endpoint_id)
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.commit().await?;
            // No event of its own due: the batches' turn, on a connection of their own once this
            // one is back in the pool (holding both, lanes would wait on each other's).
            drop(conn);
            return crate::webhooks_batches::claim(&self.pool, endpoint_id, now, lease, limit)
                .await;
        }
        mysql_lease(
            "webhook_deliveries",
            "event_id",
            token,
            later(now, lease),
            endpoint_id,
            &ids,
        )
        .build()
        .execute(&mut *tx)
        .await?;
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT event_id, payload, attempts, retry_since, created_at FROM webhook_deliveries \
             WHERE endpoint_id = ",
        );
        q.push_bind(endpoint_id).push(" AND event_id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(id);
        }
        q.push(") ORDER BY due_at");
        let rows = q.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    endpoint_id: endpoint_id.to_owned(),
                    event_id: r.try_get(0)?,
                    payload: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                    retry_since: mysql_time(r, 3)?,
                    created_at: mysql_time(r, 4)?,
                    claim: token,
                    batch: None,
                })
            })
            .collect()
    }

    async fn settle(
        &self,
        attempts: &[Attempt],
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut sorted: Vec<&Attempt> = attempts.iter().collect();
        sorted.sort_by(|a, b| (&a.endpoint_id, &a.event_id).cmp(&(&b.endpoint_id, &b.event_id)));
        let mut tx = self.pool.begin().await?;
        let (batched, sorted): (Vec<&Attempt>, Vec<&Attempt>) =
            sorted.into_iter().partition(|a| a.batch.is_some());
        crate::webhooks_batches::settle(&mut tx, &batched, now).await?;
        // Deliveries that went through (most of them): one statement per claim.
        let (delivered, others): (Vec<&Attempt>, Vec<&Attempt>) = sorted
            .into_iter()
            .partition(|a| matches!(a.result, AttemptResult::Delivered { .. }));
        let mut by_claim: BTreeMap<(&str, uuid::Uuid), Vec<&Attempt>> = BTreeMap::new();
        for a in delivered {
            by_claim
                .entry((a.endpoint_id.as_str(), a.claim))
                .or_default()
                .push(a);
        }
        for ((endpoint, claim), group) in by_claim {
            for chunk in group.chunks(ROWS_PER_STATEMENT) {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, \
                     last_error = NULL, claimed_by = NULL, claimed_until = NULL",
                );
                let columns: [(&str, &dyn Fn(&Attempt, &mut QueryBuilder<MySql>)); 3] = [
                    ("last_attempt_at", &|a, q| {
                        q.push_bind(a.at.naive_utc());
                    }),
                    ("last_status", &|a, q| {
                        let status = match a.result {
                            AttemptResult::Delivered { status } => status,
                            _ => 0,
                        };
                        q.push_bind(status);
                    }),
                    ("last_latency_ms", &|a, q| {
                        q.push_bind(u32::try_from(a.latency.as_millis()).unwrap_or(u32::MAX));
                    }),
                ];
                for (column, value) in columns {
                    q.push(format_args!(", {column} = CASE event_id"));
                    for a in chunk {
                        q.push(" WHEN ").push_bind(&a.event_id).push(" THEN ");
                        value(a, &mut q);
                    }
                    q.push(format_args!(" ELSE {column} END"));
                }
                q.push(" WHERE endpoint_id = ")
                    .push_bind(endpoint)
                    .push(" AND claimed_by = ")
                    .push_bind(claim.as_bytes().to_vec())
                    .push(" AND event_id IN (");
                let mut list = q.separated(", ");
                for a in chunk {
                    list.push_bind(&a.event_id);
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
        }
        for a in others {
            if a.result == AttemptResult::Skipped {
                sqlx::query(RELEASE)
                    .bind(&a.endpoint_id)
                    .bind(&a.event_id)
                    .bind(a.claim.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            let row = attempt_row(a);
            sqlx::query(
                "UPDATE webhook_deliveries SET state = ?, due_at = COALESCE(?, due_at), \
                 attempts = attempts + 1, last_attempt_at = ?, last_status = ?, \
                 last_latency_ms = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL \
                 WHERE endpoint_id = ? AND event_id = ? AND claimed_by = ?",
            )
            .bind(row.state)
            .bind(row.due_at.map(|t| t.naive_utc()))
            .bind(row.a.at.naive_utc())
            .bind(row.status)
            .bind(u32::try_from(row.a.latency.as_millis()).unwrap_or(u32::MAX))
            .bind(row.error)
            .bind(&row.a.endpoint_id)
            .bind(&row.a.event_id)
            .bind(row.a.claim.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
        }
        for (endpoint, verdict) in verdicts(attempts) {
            let q = match verdict {
                Verdict::Gone => sqlx::query(
                    "UPDATE webhook_endpoints SET enabled = FALSE, disabled_reason = ?, \
                     updated_at = ? WHERE endpoint_id = ? AND enabled = TRUE",
                )
                .bind(GONE_REASON)
                .bind(now.naive_utc()),
                Verdict::Works => sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since = NULL \
                     WHERE endpoint_id = ? AND failing_since IS NOT NULL",
                ),
                Verdict::Failing(since) => {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since = ? \
                         WHERE endpoint_id = ? AND failing_since IS NULL",
                    )
                    .bind(since.naive_utc())
                    .bind(endpoint)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE webhook_endpoints SET enabled = FALSE, disabled_reason = ?, \
                         updated_at = ? WHERE endpoint_id = ? AND enabled = TRUE \
                         AND failing_since <= ?",
                    )
                    .bind(failing_reason(policy))
                    .bind(now.naive_utc())
                    .bind(endpoint)
                    .bind(earlier(now, policy.disable_after).naive_utc())
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
            };
            q.bind(endpoint).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

async fn sqlite_insert(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    deliveries: &[NewDelivery],
) -> Result<(), HistoryError> {
    for chunk in deliveries.chunks(ROWS_PER_STATEMENT / 2) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO webhook_deliveries (endpoint_id, event_id, tenant_id, \
             event_type, message_id, payload, state, created_at, retry_since, due_at) ",
        );
        q.push_values(chunk, |mut b, d| {
            b.push_bind(d.endpoint_id.clone())
                .push_bind(d.event_id.clone())
                .push_bind(d.tenant.clone())
                .push_bind(d.event_type.clone())
                .push_bind(d.message_id.map(|id| id.as_bytes().to_vec()))
                .push_bind(d.payload.clone())
                .push_bind(PENDING)
                .push_bind(micros(d.created_at))
                .push_bind(micros(d.created_at))
                .push_bind(micros(d.created_at));
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The event of a receipt that moved message `id` to `status`, inside the receipt's `tx`.
pub(crate) async fn sqlite_receipt_outbox(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    id: MessageId,
    status: Status,
    attempt: u32,
    at: DateTime<Utc>,
    detail: Option<String>,
) -> Result<(), HistoryError> {
    // Labels kept before `messages.webhook_labels` existed are in `webhook_messages`.
    let row = sqlx::query(
        "SELECT m.tenant_id, m.channel, m.recipient, m.provider, m.webhook_labels, w.tags, \
         w.metadata FROM messages m LEFT JOIN webhook_messages w ON w.message_id = m.id \
         WHERE m.id = ?",
    )
    .bind(id.as_bytes().to_vec())
    .fetch_one(&mut **tx)
    .await?;
    let labels = match row.try_get::<Option<String>, _>(4)? {
        Some(json) => Some(Labels::parse(&json)?),
        None => Labels::from_columns(row.try_get(5)?, row.try_get(6)?)?,
    };
    let row = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    let t = receipt_transition(id, row, labels, status, attempt, at, detail)?;
    let outbox = Outbox::load_sqlite(tx, std::slice::from_ref(&t)).await?;
    outbox.write_sqlite(tx, &[t], Utc::now()).await
}

fn sqlite_time(us: i64) -> Result<DateTime<Utc>, HistoryError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("time", us))
}

fn sqlite_opt_time(
    row: &sqlx::sqlite::SqliteRow,
    i: usize,
) -> Result<Option<DateTime<Utc>>, HistoryError> {
    row.try_get::<Option<i64>, _>(i)?
        .map(sqlite_time)
        .transpose()
}

fn sqlite_endpoint(row: &sqlx::sqlite::SqliteRow) -> Result<Endpoint, HistoryError> {
    Ok(Endpoint {
        id: row.try_get(0)?,
        tenant: row.try_get(1)?,
        url: row.try_get(2)?,
        description: row.try_get(3)?,
        filter: parse_filter(&row.try_get::<String, _>(4)?)?,
        enabled: row.try_get::<i64, _>(5)? != 0,
        disabled_reason: row.try_get(6)?,
        failing_since: sqlite_opt_time(row, 7)?,
        previous_secret_expires_at: sqlite_opt_time(row, 8)?,
        created_at: sqlite_time(row.try_get(9)?)?,
        updated_at: sqlite_time(row.try_get(10)?)?,
    })
}

fn sqlite_delivery(row: &sqlx::sqlite::SqliteRow) -> Result<DeliveryView, HistoryError> {
    let state: String = row.try_get(3)?;
    Ok(DeliveryView {
        id: row.try_get(0)?,
        event_type: row.try_get(1)?,
        message_id: message_id(row.try_get(2)?)?,
        next_attempt_at: if state == PENDING {
            Some(sqlite_time(row.try_get(6)?)?)
        } else {
            None
        },
        state,
        attempts: u32::try_from(row.try_get::<i64, _>(4)?).unwrap_or(0),
        created_at: sqlite_time(row.try_get(5)?)?,
        last_attempt_at: sqlite_opt_time(row, 7)?,
        last_status_code: row
            .try_get::<Option<i64>, _>(8)?
            .and_then(|s| u16::try_from(s).ok()),
        last_latency_ms: row
            .try_get::<Option<i64>, _>(9)?
            .and_then(|l| u64::try_from(l).ok()),
        last_error: row.try_get(10)?,
    })
}

#[async_trait::async_trait]
impl WebhookStore for SqliteStore {
    async fn create_endpoint(&self, e: &Endpoint, secret: &str) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (endpoint_id, tenant_id, url, description, filter, \
             secret, enabled, disabled_reason, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(&e.tenant)
        .bind(&e.url)
        .bind(&e.description)
        .bind(filter_text(&e.filter)?)
        .bind(secret)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(micros(e.created_at))
        .bind(micros(e.updated_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = ? \
             ORDER BY endpoint_id LIMIT 1000"
        )))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sqlite_endpoint).collect()
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, HistoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(sqlite_endpoint).transpose()
    }

    async fn update_endpoint(&self, e: &Endpoint) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET url = ?, description = ?, filter = ?, enabled = ?, \
             disabled_reason = ?, failing_since = CASE WHEN ? THEN NULL ELSE failing_since END, \
             updated_at = ? WHERE tenant_id = ? AND endpoint_id = ?",
        )
        .bind(&e.url)
        .bind(&e.description)
        .bind(filter_text(&e.filter)?)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(e.enabled)
        .bind(micros(e.updated_at))
        .bind(&e.tenant)
        .bind(&e.id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, HistoryError> {
        let mut tx = self.pool().begin().await?;
        let done =
            sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?")
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &str,
        grace_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError> {
        // Every expression sees the row as it was: previous_secret takes the old secret.
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?, \
             secret = ?, updated_at = ? WHERE tenant_id = ? AND endpoint_id = ?",
        )
        .bind(micros(grace_until))
        .bind(secret)
        .bind(micros(now))
        .bind(tenant)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), HistoryError> {
        let mut tx = self.pool().begin().await?;
        sqlite_insert(&mut tx, deliveries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ? \
             AND tenant_id = ? AND event_id < ? ORDER BY event_id DESC LIMIT ?"
        )))
        .bind(endpoint_id)
        .bind(tenant)
        .bind(before.unwrap_or("~"))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sqlite_delivery).collect()
    }

    async fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, due_at = ?, retry_since = ? \
             WHERE endpoint_id = ? AND tenant_id = ? AND created_at >= ?",
        )
        .bind(PENDING)
        .bind(micros(now))
        .bind(micros(now))
        .bind(endpoint_id)
        .bind(tenant)
        .bind(micros(since))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn due_targets(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Target>, HistoryError> {
        let rows = sqlx::query(
            "SELECT e.endpoint_id, e.url, e.secret, e.previous_secret, e.previous_secret_until \
             FROM webhook_endpoints e WHERE e.enabled = 1 AND EXISTS (\
               SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.endpoint_id \
               AND d.state = 'pending' AND d.due_at <= ? \
               AND (d.claimed_until IS NULL OR d.claimed_until < ?)) \
             LIMIT ?",
        )
        .bind(micros(now))
        .bind(micros(now))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let previous: Option<String> = r.try_get(3)?;
                let until = sqlite_opt_time(r, 4)?;
                Ok(Target {
                    endpoint_id: r.try_get(0)?,
                    url: r.try_get(1)?,
                    secrets: SigningSecrets {
                        current: r.try_get(2)?,
                        previous: previous.zip(until),
                    },
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, HistoryError> {
        let token = uuid::Uuid::new_v4();
        // One statement: SQLite has one writer at a time, so the claim is atomic.
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? \
             WHERE endpoint_id = ? AND event_id IN (\
               SELECT event_id FROM webhook_deliveries WHERE endpoint_id = ? \
               AND state = 'pending' AND due_at <= ? \
               AND (claimed_until IS NULL OR claimed_until < ?) \
               AND EXISTS (SELECT 1 FROM webhook_endpoints e \
                           WHERE e.endpoint_id = webhook_deliveries.endpoint_id AND e.enabled = 1) \
               ORDER BY due_at LIMIT ?) \
             RETURNING event_id, payload, attempts, retry_since, created_at",
        )
        .bind(token.as_bytes().to_vec())
        .bind(micros(later(now, lease)))
        .bind(endpoint_id)
        .bind(endpoint_id)
        .bind(micros(now))
        .bind(micros(now))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    endpoint_id: endpoint_id.to_owned(),
                    event_id: r.try_get(0)?,
                    payload: r.try_get(1)?,
                    attempts: u32::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
                    retry_since: sqlite_time(r.try_get(3)?)?,
                    created_at: sqlite_time(r.try_get(4)?)?,
                    claim: token,
                    batch: None,
                })
            })
            .collect()
    }

    async fn settle(
        &self,
        attempts: &[Attempt],
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for a in attempts {
            if a.result == AttemptResult::Skipped {
                sqlx::query(RELEASE)
                    .bind(&a.endpoint_id)
                    .bind(&a.event_id)
                    .bind(a.claim.as_bytes().to_vec())
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            let row = attempt_row(a);
            sqlx::query(
                "UPDATE webhook_deliveries SET state = ?, due_at = COALESCE(?, due_at), \
                 attempts = attempts + 1, last_attempt_at = ?, last_status = ?, \
                 last_latency_ms = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL \
                 WHERE endpoint_id = ? AND event_id = ? AND claimed_by = ?",
            )
            .bind(row.state)
            .bind(row.due_at.map(micros))
            .bind(micros(row.a.at))
            .bind(row.status.map(i64::from))
            .bind(i64::try_from(row.a.latency.as_millis()).unwrap_or(i64::MAX))
            .bind(row.error)
            .bind(&row.a.endpoint_id)
            .bind(&row.a.event_id)
            .bind(row.a.claim.as_bytes().to_vec())
            .execute(&mut *tx)
            .await?;
        }
        for (endpoint, verdict) in verdicts(attempts) {
            match verdict {
                Verdict::Gone => {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, \
                         updated_at = ? WHERE endpoint_id = ? AND enabled = 1",
                    )
                    .bind(GONE_REASON)
                    .bind(micros(now))
                    .bind(endpoint)
                    .execute(&mut *tx)
                    .await?;
                }
                Verdict::Works => {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since = NULL \
                         WHERE endpoint_id = ? AND failing_since IS NOT NULL",
                    )
                    .bind(endpoint)
                    .execute(&mut *tx)
                    .await?;
                }
                Verdict::Failing(since) => {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since = ? \
                         WHERE endpoint_id = ? AND failing_since IS NULL",
                    )
                    .bind(micros(since))
                    .bind(endpoint)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, \
                         updated_at = ? WHERE endpoint_id = ? AND enabled = 1 \
                         AND failing_since <= ?",
                    )
                    .bind(failing_reason(policy))
                    .bind(micros(now))
                    .bind(endpoint)
                    .bind(micros(earlier(now, policy.disable_after)))
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Subscriber, labels_to_keep};
    use crate::history::Transition;
    use crate::model::Status;
    use crate::sqlite::SqliteStore;
    use crate::testing::parking::envelope;
    use crate::testing::webhooks;
    use crate::webhooks::{EventFilter, EventType};

    #[test]
    fn labels_are_kept_for_sent_labelled_messages_of_tenants_that_want_receipts() {
        let wants = |tenant: &str, types: &[EventType]| Subscriber {
            endpoint_id: format!("ep_{tenant}"),
            tenant: tenant.into(),
            filter: EventFilter {
                event_types: types.to_vec(),
                ..Default::default()
            },
        };
        let subscribers = [
            wants("receipts", &[EventType::MessageDelivered]),
            wants("failures", &[EventType::MessageFailed]),
            wants(
                "sends",
                &[EventType::MessageSent, EventType::MessageAccepted],
            ),
        ];
        let labelled = |tenant: &str| {
            let mut e = envelope(tenant, "+821012345678");
            e.tags = vec!["order".into()];
            e
        };
        let with_metadata = {
            let mut e = envelope("receipts", "+821012345678");
            e.metadata.insert("k".into(), "v".into());
            e
        };
        let at = chrono::Utc::now();
        let sent = |e: &crate::model::Envelope| Transition::of(e, Status::Sent, at);
        let (a, b, c) = (
            labelled("receipts"),
            labelled("failures"),
            labelled("sends"),
        );
        let transitions = [
            sent(&a),
            sent(&a), // the same message twice: kept once
            Transition::of(&a, Status::Accepted, at),
            sent(&b),
            sent(&c),                                     // no receipts wanted
            sent(&labelled("nobody")),                    // no endpoint
            sent(&envelope("receipts", "+821012345678")), // nothing to keep
            Transition::of(&labelled("receipts"), Status::Accepted, at), // not sent
            sent(&with_metadata),
        ];
        let mut kept: Vec<_> = labels_to_keep(&transitions, &subscribers)
            .iter()
            .map(|t| t.id)
            .collect();
        kept.sort();
        let mut expected = vec![a.id, b.id, with_metadata.id];
        expected.sort();
        assert_eq!(kept, expected);
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn events_are_written_with_their_status_change() {
        let (_dir, s) = store().await;
        webhooks::events_are_written_with_their_status_change(&s, &s).await;
    }

    #[tokio::test]
    async fn receipts_find_the_labels_wherever_they_were_kept() {
        let (_dir, s) = store().await;
        let pool = s.pool().clone();
        webhooks::receipts_find_the_labels_wherever_they_were_kept(&s, &s, |id, tags, metadata| {
            keep_the_old_way(pool, id, tags, metadata)
        })
        .await;
    }

    /// Moves a message's labels to where versions before `messages.webhook_labels` kept them.
    async fn keep_the_old_way(
        pool: sqlx::SqlitePool,
        id: crate::model::MessageId,
        tags: &str,
        metadata: &str,
    ) {
        sqlx::query("UPDATE messages SET webhook_labels = NULL WHERE id = ?")
            .bind(id.as_bytes().to_vec())
            .execute(&pool)
            .await
            .expect("forget");
        sqlx::query("INSERT INTO webhook_messages (message_id, tags, metadata) VALUES (?, ?, ?)")
            .bind(id.as_bytes().to_vec())
            .bind(tags)
            .bind(metadata)
            .execute(&pool)
            .await
            .expect("keep the old way");
    }

    #[tokio::test]
    async fn erasure_redacts_the_persons_webhook_events() {
        let (_dir, s) = store().await;
        let pool = s.pool().clone();
        webhooks::erasure_redacts_the_persons_webhook_events(&s, &s, |id, tags, metadata| {
            keep_the_old_way(pool, id, tags, metadata)
        })
        .await;
    }

    #[tokio::test]
    async fn deliveries_are_leased_and_settled_by_their_claimer() {
        let (_dir, s) = store().await;
        webhooks::deliveries_are_leased_and_settled_by_their_claimer(&s, &s).await;
    }

    #[tokio::test]
    async fn a_round_records_each_delivery_and_the_log_pages_through_them() {
        let (_dir, s) = store().await;
        webhooks::a_round_records_each_delivery_and_the_log_pages_through_them(&s, &s).await;
    }

    #[tokio::test]
    async fn an_endpoint_failing_for_days_is_disabled() {
        let (_dir, s) = store().await;
        webhooks::an_endpoint_failing_for_days_is_disabled(&s, &s).await;
    }

    #[tokio::test]
    async fn endpoints_are_per_tenant_and_rotation_keeps_the_old_secret_for_a_while() {
        let (_dir, s) = store().await;
        webhooks::endpoints_are_per_tenant_and_rotation_keeps_the_old_secret_for_a_while(&s, &s)
            .await;
    }
}

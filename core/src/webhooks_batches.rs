//! The MySQL outbox's common case: a status transaction's events for one endpoint kept in one
//! row (`webhook_batches`), up to `BATCH_EVENTS` of them, instead of a row per event.
//!
//! An event costs the history transaction a share of one insert, and a delivery that goes
//! through the first time costs a share of one update. Everything else (an event whose first
//! attempt failed, or that the round did not get to) moves to the per-event rows of
//! `webhook_deliveries`, where retries, backoff and the log work one event at a time. What a
//! user sees (claims, the log, replay) is the same either way: the rules of `testing::webhooks`
//! hold for both stores.
//!
//! A batch is written with `INSERT IGNORE` under a key made of its first event id and a digest
//! of all its ids: the same batch recorded again (a worker that died before committing its
//! offsets) is one row; a batch of other events that happens to start with the same one is
//! another row (its events may then go out twice, under the same `webhook-id`: at least once).

use crate::history::HistoryError;
use crate::model::MessageId;
use crate::model::Status;
use crate::pii::Masked;
use crate::webhooks::{
    Attempt, AttemptResult, BatchRef, ClaimedDelivery, DeliveryView, EventBody, EventType,
    OutboxEvent, PENDING, event_id,
};
use crate::webhooks_erasure::{Messages, Redaction};
use crate::webhooks_store::{attempt_row, corrupt, later, mysql_lease};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{MySql, QueryBuilder, Row};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Events in one batch row at most: big enough that the outbox costs the history transaction a
/// few rows per thousand messages, small enough that a round delivers a batch well within its
/// lease.
pub const BATCH_EVENTS: usize = 256;

/// Batch bodies: the fields each event's JSON body is made of (`StoredEvent`), encoded
/// (postcard), then compressed (LZ4): a batch's events repeat their channel, provider and
/// labels, and the bytes are what the history transaction waits on. The JSON itself and the
/// event ids are made when the batch is read (claimed, logged, replayed), off the send path.
const BODY_VERSION: u8 = 3;
const OUTCOME_VERSION: u8 = 1;

/// One event of a batch as the dispatcher, the log and replay see it.
#[derive(Clone, Debug, PartialEq)]
struct BatchEvent {
    event_id: String,
    event_type: String,
    message_id: Option<[u8; 16]>,
    payload: String,
}

/// One event of a batch as its row keeps it: what identifies it (message, status, attempt) and
/// what its body says. (Written as `StoredEventRef`, rewritten by an erasure as itself: the
/// same fields in the same order.)
#[derive(Debug, Deserialize, Serialize)]
struct StoredEvent {
    message_id: [u8; 16],
    status: Status,
    attempt: u32,
    at_micros: i64,
    channel: String,
    provider: Option<String>,
    /// Masked.
    to: String,
    detail: Option<String>,
    tags: Vec<String>,
    /// The metadata as JSON text; empty for none.
    metadata: String,
}

/// `StoredEvent` as written: borrowed, encoded the same way.
#[derive(Serialize)]
struct StoredEventRef<'a> {
    message_id: [u8; 16],
    status: Status,
    attempt: u32,
    at_micros: i64,
    channel: &'a str,
    provider: Option<&'a str>,
    to: String,
    detail: Option<&'a str>,
    tags: &'a [String],
    metadata: String,
}

impl StoredEvent {
    fn read(self) -> Result<BatchEvent, HistoryError> {
        let id = MessageId(uuid::Uuid::from_bytes(self.message_id));
        let event = EventType::of(self.status)
            .ok_or_else(|| corrupt("webhook batch", "a status without an event"))?;
        let metadata = if self.metadata.is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_str(&self.metadata).map_err(|e| corrupt("webhook batch", e))?
        };
        let body = EventBody {
            id,
            status: self.status,
            attempt: self.attempt,
            at: DateTime::from_timestamp_micros(self.at_micros)
                .ok_or_else(|| corrupt("webhook batch", self.at_micros))?,
            channel: &self.channel,
            provider: self.provider.as_deref(),
            to: std::borrow::Cow::Borrowed(&self.to),
            detail: self.detail.as_deref(),
            tags: &self.tags,
            metadata: &metadata,
        };
        Ok(BatchEvent {
            event_id: event_id(id, self.status, self.attempt),
            event_type: event.as_str().to_owned(),
            message_id: Some(self.message_id),
            payload: body
                .payload()
                .ok_or_else(|| corrupt("webhook batch", "an event without a body"))?,
        })
    }
}

/// What became of one event of a batch once its round was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Slot {
    /// Delivered at the first attempt.
    Delivered {
        status: u16,
        latency_ms: u32,
        at_micros: i64,
    },
    /// Kept from then on as a row of its own in `webhook_deliveries`.
    Moved,
}

fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, HistoryError> {
    let mut out = vec![version];
    out.extend(postcard::to_allocvec(value).map_err(|e| corrupt("webhook batch", e))?);
    Ok(out)
}

fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, HistoryError> {
    let plain = postcard::to_allocvec(value).map_err(|e| corrupt("webhook batch", e))?;
    let mut out = vec![BODY_VERSION];
    out.extend(lz4_flex::compress_prepend_size(&plain));
    Ok(out)
}

fn decode_stored(bytes: &[u8]) -> Result<Vec<StoredEvent>, HistoryError> {
    match bytes.split_first() {
        Some((v, rest)) if *v == BODY_VERSION => {
            let plain = lz4_flex::decompress_size_prepended(rest)
                .map_err(|e| corrupt("webhook batch", e))?;
            postcard::from_bytes(&plain).map_err(|e| corrupt("webhook batch", e))
        }
        _ => Err(corrupt("webhook batch", "unknown encoding")),
    }
}

fn decode_body(bytes: &[u8]) -> Result<Vec<BatchEvent>, HistoryError> {
    decode_stored(bytes)?
        .into_iter()
        .map(StoredEvent::read)
        .collect()
}

/// Whether a batch body holds an event about one of `messages`.
pub(crate) fn mentions(body: &[u8], messages: &Messages) -> Result<bool, HistoryError> {
    Ok(decode_stored(body)?
        .iter()
        .any(|e| messages.contains(&e.message_id)))
}

/// A batch body with the events about `messages` redacted (`Redaction`: no tags, no metadata,
/// the detail masked); the others, and every event's identity, as they were. Also returns how
/// the ids of the events that were about `messages`.
pub(crate) fn redact(
    body: &[u8],
    messages: &Messages,
    redaction: &Redaction,
) -> Result<(Vec<u8>, Vec<String>), HistoryError> {
    let mut stored = decode_stored(body)?;
    let mut found = Vec::new();
    for e in stored
        .iter_mut()
        .filter(|e| messages.contains(&e.message_id))
    {
        found.push(event_id(
            MessageId(uuid::Uuid::from_bytes(e.message_id)),
            e.status,
            e.attempt,
        ));
        e.tags.clear();
        e.metadata.clear();
        e.detail = e.detail.as_deref().map(|d| redaction.detail(d));
        e.to = redaction.detail(&e.to);
    }
    Ok((encode_body(&stored)?, found))
}

fn decode<T: for<'de> Deserialize<'de>>(version: u8, bytes: &[u8]) -> Result<T, HistoryError> {
    match bytes.split_first() {
        Some((v, rest)) if *v == version => {
            postcard::from_bytes(rest).map_err(|e| corrupt("webhook batch", e))
        }
        _ => Err(corrupt("webhook batch", "unknown encoding")),
    }
}

/// The row key of a batch: its first event id, then a digest of every id in it.
fn batch_key(events: &[&OutboxEvent]) -> String {
    let mut digest = Sha256::new();
    for d in events {
        digest.update(d.event_id.as_bytes());
        digest.update(b"\n");
    }
    let digest = digest.finalize();
    let first = events.first().map(|d| d.event_id.as_str()).unwrap_or("");
    format!("{first}.{}", hex(&digest[..8]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A batch to write: one endpoint's events of a transaction, at most `BATCH_EVENTS`.
struct NewBatch<'a, 'b> {
    key: String,
    events: Vec<&'b OutboxEvent<'a>>,
}

/// Groups events (as `events_for` returns them) into batches of one endpoint each, in event id
/// order.
fn batches<'a, 'b>(all: &'b [OutboxEvent<'a>]) -> Vec<NewBatch<'a, 'b>> {
    let mut by_endpoint: BTreeMap<&str, Vec<&OutboxEvent>> = BTreeMap::new();
    for e in all {
        by_endpoint.entry(e.endpoint_id).or_default().push(e);
    }
    let mut out = Vec::new();
    for (_, mut events) in by_endpoint {
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        events.dedup_by(|a, b| a.event_id == b.event_id);
        for chunk in events.chunks(BATCH_EVENTS) {
            out.push(NewBatch {
                key: batch_key(chunk),
                events: chunk.to_vec(),
            });
        }
    }
    out
}

fn body(events: &[&OutboxEvent]) -> Result<Vec<u8>, HistoryError> {
    let mut stored = Vec::with_capacity(events.len());
    for e in events {
        let t = e.transition;
        stored.push(StoredEventRef {
            message_id: *t.id.as_bytes(),
            status: t.status,
            attempt: t.attempt,
            at_micros: t.at.timestamp_micros(),
            channel: &t.channel,
            provider: t.provider.as_deref(),
            to: Masked(&t.to).to_string(),
            detail: t.detail.as_deref(),
            tags: &t.tags,
            metadata: if t.metadata.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&t.metadata).map_err(|e| corrupt("webhook batch", e))?
            },
        });
    }
    encode_body(&stored)
}

/// The slots of a batch of `len` events after a round: delivered at the first attempt, or moved
/// to a row of its own (failed, or not attempted: an attempt missing from the round counts as
/// not made).
fn slots(len: usize, attempts: &[&Attempt]) -> Vec<Slot> {
    let mut out = vec![Slot::Moved; len];
    for a in attempts {
        let (Some(batch), AttemptResult::Delivered { status }) = (&a.batch, &a.result) else {
            continue;
        };
        if let Some(slot) = out.get_mut(batch.index as usize) {
            *slot = Slot::Delivered {
                status: *status,
                latency_ms: u32::try_from(a.latency.as_millis()).unwrap_or(u32::MAX),
                at_micros: a.at.timestamp_micros(),
            };
        }
    }
    out
}

/// What the delivery log shows for event `e` of a batch in `slot` (`None`: not attempted yet);
/// nothing for a moved event, whose own row says it.
fn view(
    e: &BatchEvent,
    slot: Option<Slot>,
    created_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
) -> Option<DeliveryView> {
    let message_id = e.message_id.map(|b| MessageId(uuid::Uuid::from_bytes(b)));
    let pending = DeliveryView {
        id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        message_id,
        state: PENDING.to_owned(),
        attempts: 0,
        created_at,
        next_attempt_at: Some(due_at),
        last_attempt_at: None,
        last_status_code: None,
        last_latency_ms: None,
        last_error: None,
    };
    match slot {
        None => Some(pending),
        Some(Slot::Moved) => None,
        Some(Slot::Delivered {
            status,
            latency_ms,
            at_micros,
        }) => Some(DeliveryView {
            state: crate::webhooks::DELIVERED.to_owned(),
            attempts: 1,
            next_attempt_at: None,
            last_attempt_at: DateTime::from_timestamp_micros(at_micros),
            last_status_code: Some(status),
            last_latency_ms: Some(u64::from(latency_ms)),
            ..pending
        }),
    }
}

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

fn time(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<DateTime<Utc>, HistoryError> {
    Ok(row.try_get::<NaiveDateTime, _>(i)?.and_utc())
}

// ---------------------------------------------------------------------------------------------
// MySQL

/// Writes `events` (of a status transaction) as batch rows inside its `tx`.
pub(crate) async fn insert(
    tx: &mut sqlx::Transaction<'_, MySql>,
    events: &[OutboxEvent<'_>],
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    let batches = batches(events);
    // A few rows of up to a few hundred KiB: a statement for every 8 keeps each packet small.
    for group in batches.chunks(8) {
        let mut rows = Vec::with_capacity(group.len());
        for b in group {
            let first = b.events[0];
            let last = b.events[b.events.len() - 1];
            rows.push((b, first, last, body(&b.events)?));
        }
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO webhook_batches (endpoint_id, batch_key, tenant_id, last_event, \
             events, body, state, created_at, due_at) ",
        );
        q.push_values(rows, |mut r, (b, first, last, body)| {
            r.push_bind(first.endpoint_id.to_owned())
                .push_bind(b.key.clone())
                .push_bind(first.transition.tenant.clone())
                .push_bind(last.event_id.clone())
                .push_bind(b.events.len() as u32)
                .push_bind(body)
                .push_bind(PENDING)
                .push_bind(naive(now))
                .push_bind(naive(now));
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The condition "endpoint `e` has a batch due at `?` that nobody holds" (binds: now, now).
pub(crate) const DUE_BATCH: &str = "EXISTS (SELECT 1 FROM webhook_batches b \
    WHERE b.endpoint_id = e.endpoint_id AND b.state = 'pending' AND b.due_at <= ? \
    AND (b.claimed_until IS NULL OR b.claimed_until < ?))";

/// Takes due batches of the endpoint for `lease`: whole batches, as many as fit in `limit`
/// events, and at least one.
pub(crate) async fn claim(
    pool: &sqlx::MySqlPool,
    endpoint_id: &str,
    now: DateTime<Utc>,
    lease: Duration,
    limit: u32,
) -> Result<Vec<ClaimedDelivery>, HistoryError> {
    let token = uuid::Uuid::new_v4();
    // As for the per-event rows: read committed (no gap locks that would hold up the history's
    // inserts) and SKIP LOCKED (lanes and dispatchers take different batches).
    let mut conn = crate::store::read_committed(pool).await?;
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    // The candidates are read without locks, and only the batches taken are then locked: a
    // batch locked but not taken would look held to the other lanes for the moment, and a lane
    // that finds nothing free ends.
    let due = sqlx::query(
        "SELECT b.batch_key, b.events FROM webhook_batches b \
         WHERE b.endpoint_id = ? AND b.state = 'pending' AND b.due_at <= ? \
         AND (b.claimed_until IS NULL OR b.claimed_until < ?) \
         AND EXISTS (SELECT 1 FROM webhook_endpoints e \
                     WHERE e.endpoint_id = b.endpoint_id AND e.enabled = TRUE) \
         ORDER BY b.due_at LIMIT 16",
    )
    .bind(endpoint_id)
    .bind(naive(now))
    .bind(naive(now))
    .fetch_all(&mut *tx)
    .await?;
    // Each candidate in turn, oldest first, locked unless another lane or dispatcher holds it
    // (SKIP LOCKED): lanes that read the same candidates take different batches instead of all
    // but one finding their first choice taken, and ending.
    let mut keys: Vec<String> = Vec::new();
    let mut taken = 0u32;
    for row in &due {
        let events: u32 = row.try_get(1)?;
        if !keys.is_empty() && taken + events > limit {
            break;
        }
        let key: String = row.try_get(0)?;
        let free: Option<String> = sqlx::query_scalar(
            "SELECT batch_key FROM webhook_batches WHERE endpoint_id = ? AND batch_key = ? \
             AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < ?) \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(endpoint_id)
        .bind(&key)
        .bind(naive(now))
        .fetch_optional(&mut *tx)
        .await?;
        if free.is_some() {
            taken += events;
            keys.push(key);
        }
    }
    if keys.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    mysql_lease(
        "webhook_batches",
        "batch_key",
        token,
        later(now, lease),
        endpoint_id,
        &keys,
    )
    .build()
    .execute(&mut *tx)
    .await?;
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT batch_key, body, created_at FROM webhook_batches WHERE endpoint_id = ",
    );
    q.push_bind(endpoint_id).push(" AND batch_key IN (");
    let mut list = q.separated(", ");
    for key in &keys {
        list.push_bind(key);
    }
    q.push(") ORDER BY due_at");
    let rows = q.build().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut out = Vec::new();
    for row in &rows {
        let key: String = row.try_get(0)?;
        let events: Vec<BatchEvent> = decode_body(&row.try_get::<Vec<u8>, _>(1)?)?;
        let created_at = time(row, 2)?;
        let len = events.len() as u32;
        for (index, e) in events.into_iter().enumerate() {
            out.push(ClaimedDelivery {
                endpoint_id: endpoint_id.to_owned(),
                event_id: e.event_id,
                payload: e.payload,
                attempts: 0,
                retry_since: created_at,
                created_at,
                claim: token,
                batch: Some(BatchRef {
                    key: key.clone(),
                    index: index as u32,
                    len,
                }),
            });
        }
    }
    Ok(out)
}

/// Records the rounds of batch deliveries inside the settlement's `tx`: a batch whose claim still
/// holds is done, its delivered events kept in it, every other event moved to a row of its own
/// (a failed attempt counted there with its retry time; an event not attempted due at `now`).
pub(crate) async fn settle(
    tx: &mut sqlx::Transaction<'_, MySql>,
    attempts: &[&Attempt],
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    let mut by_batch: BTreeMap<(&str, &str, uuid::Uuid), Vec<&Attempt>> = BTreeMap::new();
    for a in attempts {
        if let Some(batch) = &a.batch {
            by_batch
                .entry((a.endpoint_id.as_str(), batch.key.as_str(), a.claim))
                .or_default()
                .push(a);
        }
    }
    for ((endpoint, key, claim), group) in by_batch {
        let len = group[0].batch.as_ref().map(|b| b.len).unwrap_or(0) as usize;
        let slots = slots(len, &group);
        let done = sqlx::query(
            "UPDATE webhook_batches SET state = 'done', outcome = ?, claimed_by = NULL, \
             claimed_until = NULL WHERE endpoint_id = ? AND batch_key = ? AND claimed_by = ?",
        )
        .bind(encode(OUTCOME_VERSION, &slots)?)
        .bind(endpoint)
        .bind(key)
        .bind(claim.as_bytes().as_slice())
        .execute(&mut **tx)
        .await?;
        // Another claimer holds it now (this round outlived its lease): its word counts.
        if done.rows_affected() == 0 || slots.iter().all(|s| *s != Slot::Moved) {
            continue;
        }
        move_out(tx, endpoint, key, &slots, &group, now).await?;
    }
    Ok(())
}

/// Writes the moved events of a settled batch as rows of their own.
async fn move_out(
    tx: &mut sqlx::Transaction<'_, MySql>,
    endpoint: &str,
    key: &str,
    slots: &[Slot],
    group: &[&Attempt],
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    let row = sqlx::query(
        "SELECT tenant_id, body, created_at FROM webhook_batches \
         WHERE endpoint_id = ? AND batch_key = ?",
    )
    .bind(endpoint)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    let tenant: String = row.try_get(0)?;
    let events: Vec<BatchEvent> = decode_body(&row.try_get::<Vec<u8>, _>(1)?)?;
    let created_at = time(&row, 2)?;
    let by_index: BTreeMap<u32, &Attempt> = group
        .iter()
        .filter_map(|a| a.batch.as_ref().map(|b| (b.index, *a)))
        .collect();
    let moved: Vec<(&BatchEvent, Option<&Attempt>)> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| slots.get(*i) == Some(&Slot::Moved))
        .map(|(i, e)| (e, by_index.get(&(i as u32)).copied()))
        .collect();
    for chunk in moved.chunks(64) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO webhook_deliveries (endpoint_id, event_id, tenant_id, event_type, \
             message_id, payload, state, attempts, created_at, retry_since, due_at, \
             last_attempt_at, last_status, last_latency_ms, last_error) ",
        );
        q.push_values(chunk, |mut r, (e, attempt)| {
            r.push_bind(endpoint)
                .push_bind(&e.event_id)
                .push_bind(&tenant)
                .push_bind(&e.event_type)
                .push_bind(e.message_id.map(|b| b.to_vec()))
                .push_bind(&e.payload);
            match attempt.filter(|a| a.result != AttemptResult::Skipped) {
                Some(a) => {
                    let row = attempt_row(a);
                    r.push_bind(row.state)
                        .push_bind(1u32)
                        .push_bind(naive(created_at))
                        .push_bind(naive(created_at))
                        .push_bind(naive(row.due_at.unwrap_or(a.at)))
                        .push_bind(Some(naive(a.at)))
                        .push_bind(row.status)
                        .push_bind(Some(
                            u32::try_from(a.latency.as_millis()).unwrap_or(u32::MAX),
                        ))
                        .push_bind(row.error);
                }
                None => {
                    r.push_bind(PENDING)
                        .push_bind(0u32)
                        .push_bind(naive(created_at))
                        .push_bind(naive(created_at))
                        .push_bind(naive(now))
                        .push_bind(None::<NaiveDateTime>)
                        .push_bind(None::<u16>)
                        .push_bind(None::<u32>)
                        .push_bind(None::<String>);
                }
            }
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Adds the endpoint's batch events with ids below `before` to the delivery log `out` (which
/// holds the per-event rows' views; an id already there is not added again), so that `out`
/// then holds the newest `limit` of both. Batches are read newest last event first, a page at a
/// time, until no further batch can hold one of the newest `limit`.
pub(crate) async fn log(
    pool: &sqlx::MySqlPool,
    tenant: &str,
    endpoint_id: &str,
    before: &str,
    limit: usize,
    out: &mut Vec<DeliveryView>,
) -> Result<(), HistoryError> {
    const PAGE: u32 = 32;
    if limit == 0 {
        out.clear();
        return Ok(());
    }
    let mut seen: HashSet<String> = out.iter().map(|v| v.id.clone()).collect();
    let mut cursor: Option<(String, String)> = None;
    loop {
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out.truncate(limit);
        let threshold = (out.len() >= limit).then(|| out[limit - 1].id.clone());
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT batch_key, last_event, body, outcome, created_at, due_at FROM webhook_batches \
             WHERE endpoint_id = ",
        );
        q.push_bind(endpoint_id)
            .push(" AND tenant_id = ")
            .push_bind(tenant)
            .push(" AND batch_key < ")
            .push_bind(before);
        if let Some(threshold) = &threshold {
            q.push(" AND last_event > ").push_bind(threshold.clone());
        }
        if let Some((last, key)) = &cursor {
            q.push(" AND (last_event < ")
                .push_bind(last.clone())
                .push(" OR (last_event = ")
                .push_bind(last.clone())
                .push(" AND batch_key < ")
                .push_bind(key.clone())
                .push("))");
        }
        q.push(" ORDER BY last_event DESC, batch_key DESC LIMIT ")
            .push_bind(PAGE);
        let rows = q.build().fetch_all(pool).await?;
        for row in &rows {
            let events: Vec<BatchEvent> = decode_body(&row.try_get::<Vec<u8>, _>(2)?)?;
            let outcome: Option<Vec<u8>> = row.try_get(3)?;
            let slots: Option<Vec<Slot>> =
                outcome.map(|o| decode(OUTCOME_VERSION, &o)).transpose()?;
            let (created_at, due_at) = (time(row, 4)?, time(row, 5)?);
            for (i, e) in events.iter().enumerate() {
                if e.event_id.as_str() >= before || seen.contains(&e.event_id) {
                    continue;
                }
                let slot = slots
                    .as_ref()
                    .map(|slots| slots.get(i).copied().unwrap_or(Slot::Moved));
                if let Some(v) = view(e, slot, created_at, due_at) {
                    seen.insert(v.id.clone());
                    out.push(v);
                }
            }
            cursor = Some((row.try_get(1)?, row.try_get(0)?));
        }
        if rows.len() < PAGE as usize {
            break;
        }
    }
    out.sort_by(|a, b| b.id.cmp(&a.id));
    out.truncate(limit);
    Ok(())
}

/// Replay of the endpoint's batch events since `since`: each event still kept in a batch (the
/// moved ones are replayed with the per-event rows) gets a row of its own, due at `now` and
/// retried from then. Returns how many.
pub(crate) async fn replay(
    pool: &sqlx::MySqlPool,
    tenant: &str,
    endpoint_id: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, HistoryError> {
    let rows = sqlx::query(
        "SELECT body, outcome, created_at FROM webhook_batches \
         WHERE endpoint_id = ? AND tenant_id = ? AND created_at >= ?",
    )
    .bind(endpoint_id)
    .bind(tenant)
    .bind(naive(since))
    .fetch_all(pool)
    .await?;
    let mut again = Vec::new();
    for row in &rows {
        let events: Vec<BatchEvent> = decode_body(&row.try_get::<Vec<u8>, _>(0)?)?;
        let outcome: Option<Vec<u8>> = row.try_get(1)?;
        let slots: Option<Vec<Slot>> = outcome.map(|o| decode(OUTCOME_VERSION, &o)).transpose()?;
        let created_at = time(row, 2)?;
        for (i, e) in events.into_iter().enumerate() {
            let moved = slots
                .as_ref()
                .is_some_and(|s| s.get(i).copied().unwrap_or(Slot::Moved) == Slot::Moved);
            if !moved {
                again.push((e, created_at));
            }
        }
    }
    let mut conn = crate::store::read_committed(pool).await?;
    for chunk in again.chunks(64) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id, event_type, \
             message_id, payload, state, created_at, retry_since, due_at) ",
        );
        q.push_values(chunk, |mut r, (e, created_at)| {
            r.push_bind(endpoint_id)
                .push_bind(&e.event_id)
                .push_bind(tenant)
                .push_bind(&e.event_type)
                .push_bind(e.message_id.map(|b| b.to_vec()))
                .push_bind(&e.payload)
                .push_bind(PENDING)
                .push_bind(naive(*created_at))
                .push_bind(naive(now))
                .push_bind(naive(now));
        });
        q.push(
            " ON DUPLICATE KEY UPDATE state = VALUES(state), due_at = VALUES(due_at), \
             retry_since = VALUES(retry_since)",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(again.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Transition;
    use crate::webhooks::AttemptResult;

    fn transition(i: usize) -> Transition {
        let mut e = crate::testing::parking::envelope("t1", &format!("+8210{i:08}"));
        e.tags = vec!["order".into()];
        if i.is_multiple_of(2) {
            e.metadata.insert("n".into(), i.into());
        }
        e.attempts = 1;
        Transition::of(&e, Status::Sent, Utc::now()).provider("sandbox", Some(format!("sb-{i}")))
    }

    /// Endpoint `ep_a` of tenant `t1`, subscribed to every event.
    fn every_event() -> crate::webhooks::Subscriber {
        crate::webhooks::Subscriber {
            endpoint_id: "ep_a".into(),
            tenant: "t1".into(),
            filter: crate::testing::webhooks::all_events(),
        }
    }

    fn event<'a>(endpoint: &'a str, event: &str, t: &'a Transition) -> OutboxEvent<'a> {
        OutboxEvent {
            endpoint_id: endpoint,
            event_id: event.into(),
            event: EventType::MessageSent,
            transition: t,
        }
    }

    #[test]
    fn a_batch_is_one_endpoints_events_and_its_key_names_them_all() {
        let t = transition(1);
        let mut all: Vec<OutboxEvent> = (0..BATCH_EVENTS + 3)
            .map(|i| event("ep_a", &format!("msg_{i:05}"), &t))
            .collect();
        all.push(event("ep_b", "msg_00001", &t));
        let made = batches(&all);
        let sizes: Vec<(&str, usize)> = made
            .iter()
            .map(|b| (b.events[0].endpoint_id, b.events.len()))
            .collect();
        assert_eq!(sizes, [("ep_a", BATCH_EVENTS), ("ep_a", 3), ("ep_b", 1)]);
        assert!(made[0].key.starts_with("msg_00000."));
        // The same events make the same key (a batch recorded again is one row); other events
        // that start with the same one make another.
        assert_eq!(batches(&all)[0].key, made[0].key);
        let fewer = batches(&all[..10]);
        assert!(fewer[0].key.starts_with("msg_00000."));
        assert_ne!(fewer[0].key, made[0].key);
    }

    #[test]
    fn bodies_read_back_as_the_events_the_transitions_make() {
        let mut transitions: Vec<Transition> = (0..BATCH_EVENTS).map(transition).collect();
        transitions[1].detail = Some("a \"quoted\" detail".into());
        transitions[2].provider = None;
        let subscribers = [every_event()];
        let events = crate::webhooks::events_for(&transitions, &subscribers);
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let bytes = body(&refs).unwrap();
        let read = decode_body(&bytes).unwrap();
        assert_eq!(read.len(), events.len());
        for (r, e) in read.iter().zip(&events) {
            let t = e.transition;
            // The same body, id and type as a per-event row of the same change would have.
            assert_eq!(
                Some(&r.payload),
                crate::webhooks::message_payload(t).as_ref()
            );
            assert_eq!(r.event_id, event_id(t.id, t.status, t.attempt));
            assert_eq!(r.event_id, e.event_id);
            assert_eq!(r.event_type, "message.sent");
            assert_eq!(r.message_id, Some(*t.id.as_bytes()));
        }
        assert!(decode_body(&bytes[1..]).is_err());
        // The body keeps the fields, not the JSON, and a batch's events repeat most of theirs:
        // a fraction of the bodies it stands for.
        let plain: usize = read
            .iter()
            .map(|r| r.payload.len() + r.event_id.len())
            .sum();
        assert!(bytes.len() < plain / 4, "{} of {plain}", bytes.len());
        assert!(decode::<Vec<Slot>>(OUTCOME_VERSION, &bytes).is_err());
        assert!(decode::<Vec<Slot>>(OUTCOME_VERSION, &[]).is_err());
    }

    #[test]
    fn an_erasure_redacts_only_the_events_about_the_persons_messages() {
        let mut transitions: Vec<Transition> = (0..4).map(transition).collect();
        transitions[1].detail = Some(format!("{} is unreachable", transitions[1].to));
        let subscribers = [every_event()];
        let events = crate::webhooks::events_for(&transitions, &subscribers);
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let bytes = body(&refs).unwrap();
        let person = transitions[1].to.clone();
        let theirs: Messages = [*transitions[1].id.as_bytes()].into();
        assert!(mentions(&bytes, &theirs).unwrap());
        assert!(!mentions(&bytes, &[[7u8; 16]].into()).unwrap());

        let (redacted, found) = redact(
            &bytes,
            &theirs,
            &Redaction::new(std::slice::from_ref(&person)),
        )
        .unwrap();
        let t = &transitions[1];
        assert_eq!(found, [event_id(t.id, t.status, t.attempt)]);
        let before = decode_body(&bytes).unwrap();
        let after = decode_body(&redacted).unwrap();
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            // Every event keeps its identity: the receiver still learns what became of it.
            assert_eq!(
                (&b.event_id, &b.event_type, b.message_id),
                (&a.event_id, &a.event_type, a.message_id)
            );
            let data = &serde_json::from_str::<serde_json::Value>(&a.payload).unwrap()["data"];
            if a.message_id == Some(*transitions[1].id.as_bytes()) {
                assert!(!a.payload.contains(&person), "{}", a.payload);
                assert_eq!(
                    data["detail"],
                    format!("{} is unreachable", Masked(&person))
                );
                assert_eq!(data["tags"], serde_json::json!([]));
                assert_eq!(data["metadata"], serde_json::json!({}));
            } else {
                assert_eq!(a.payload, b.payload);
                assert_eq!(data["tags"], serde_json::json!(["order"]));
            }
        }
    }

    #[test]
    fn only_first_attempts_that_went_through_stay_in_the_batch() {
        let at = Utc::now();
        let attempt = |index: u32, result: AttemptResult| Attempt {
            endpoint_id: "ep_a".into(),
            event_id: format!("msg_{index}"),
            claim: uuid::Uuid::nil(),
            result,
            latency: Duration::from_millis(7),
            at,
            retry_at: None,
            batch: Some(BatchRef {
                key: "k".into(),
                index,
                len: 4,
            }),
        };
        let made = [
            attempt(0, AttemptResult::Delivered { status: 204 }),
            attempt(
                1,
                AttemptResult::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                },
            ),
            attempt(2, AttemptResult::Skipped),
        ];
        let refs: Vec<&Attempt> = made.iter().collect();
        // Index 3 is missing from the round: not attempted.
        assert_eq!(
            slots(4, &refs),
            [
                Slot::Delivered {
                    status: 204,
                    latency_ms: 7,
                    at_micros: at.timestamp_micros()
                },
                Slot::Moved,
                Slot::Moved,
                Slot::Moved
            ]
        );
        let e = BatchEvent {
            event_id: "msg_0".into(),
            event_type: "message.sent".into(),
            message_id: None,
            payload: "{}".into(),
        };
        let due = at + chrono::Duration::seconds(1);
        let pending = view(&e, None, at, due).unwrap();
        assert_eq!((pending.state.as_str(), pending.attempts), ("pending", 0));
        assert_eq!(pending.next_attempt_at, Some(due));
        let delivered = view(&e, Some(slots(4, &refs)[0]), at, due).unwrap();
        assert_eq!(
            (
                delivered.state.as_str(),
                delivered.attempts,
                delivered.last_status_code,
                delivered.last_latency_ms
            ),
            ("delivered", 1, Some(204), Some(7))
        );
        assert!(view(&e, Some(Slot::Moved), at, due).is_none());
    }
}

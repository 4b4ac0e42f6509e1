//! Message history: the port the api (reads) and the worker (writes) use, and its data types. The
//! cluster mode stores it in MySQL (`store`), the all-in-one mode in SQLite.

use crate::model::{Envelope, Event, MessageId, Priority, Status};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// One status change of one message, with what the history needs to create the message's row
/// when it is the first one seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub id: MessageId,
    pub tenant: String,
    pub channel: String,
    pub to: String,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub accepted_at: DateTime<Utc>,
    pub status: Status,
    /// The attempt the change belongs to (0 for acceptance and scheduling before the first try).
    pub attempt: u32,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub at: DateTime<Utc>,
    pub detail: Option<String>,
    /// The message's tags and metadata: webhook endpoints filter on the tags and receive both.
    pub tags: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Transition {
    pub fn of(envelope: &Envelope, status: Status, at: DateTime<Utc>) -> Self {
        Self {
            id: envelope.id,
            tenant: envelope.tenant.clone(),
            channel: envelope.channel.clone(),
            to: envelope.to.clone(),
            priority: envelope.priority,
            idempotency_key: envelope.idempotency_key.clone(),
            send_at: envelope.send_at,
            accepted_at: envelope.accepted_at,
            status,
            attempt: envelope.attempts,
            provider: None,
            provider_message_id: None,
            at,
            detail: None,
            tags: envelope.tags.clone(),
            metadata: envelope.metadata.clone(),
        }
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn provider(mut self, provider: &str, provider_message_id: Option<String>) -> Self {
        self.provider = Some(provider.to_owned());
        self.provider_message_id = provider_message_id;
        self
    }
}

/// A message parked until `due_at` (send_at, quiet hours, retry backoff), to be published again
/// to `queue` (its channel's topic, unique across namespaces).
#[derive(Clone, Debug, PartialEq)]
pub struct Deferred {
    pub envelope: Envelope,
    pub queue: String,
    pub due_at: DateTime<Utc>,
}

/// A parked message handed out by `HistoryStore::claim_due`, with the claim `release` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub deferred: Deferred,
    pub claim: Claim,
}

/// Which parking of a message a claim took. `release` ends exactly that parking and never a newer
/// one: between the claimer's publish and its release, the republished message may be consumed,
/// fail again and be parked anew, and that parking must survive the release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    pub id: MessageId,
    /// Store-specific: the claim's own token (MySQL), the row and its lease (SQLite).
    pub(crate) token: u128,
}

/// What a sweep of the parked messages found and repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParkingHealth {
    /// Parked messages due more than `OVERDUE_AFTER` ago and still waiting to be published (or,
    /// all-in-one, consumed): a scheduler or consumer is not keeping up, or not running.
    pub overdue: u64,
    /// Messages still `scheduled` whose parking was published longer than the grace ago and never
    /// came back (the republished copy was lost): parked again, due now.
    pub reparked: u64,
    /// Published parkings whose message moved on, removed.
    pub collected: u64,
}

/// How long past its due time a parked message counts as overdue.
pub const OVERDUE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What the worker writes after a batch, atomically: nothing of it is visible unless all is.
#[derive(Clone, Debug, Default)]
pub struct BatchRecord {
    pub transitions: Vec<Transition>,
    pub deferred: Vec<Deferred>,
}

/// A message as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: MessageId,
    pub channel: String,
    pub to: String,
    pub status: Status,
    pub priority: Priority,
    pub attempts: u32,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The detail of the latest event, e.g. why the message failed or was deferred.
    pub detail: Option<String>,
    /// The timeline (in `GET /v1/messages/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

/// Filters of `GET /v1/messages`; every one is served by an index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageFilter {
    pub to: Option<String>,
    pub channel: Option<String>,
    pub status: Option<Status>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: only messages older than this id.
    pub before: Option<MessageId>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub items: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

/// Which message a delivery receipt is about.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiptFor {
    /// The id the provider gave the message when it took it (Twilio's SID, NHN's requestId).
    ProviderMessageId(String),
    /// UMP's own id, for callbacks that carry it (the webhook channel's acknowledgements).
    Message(MessageId),
}

/// The most of an event's `detail` a history keeps, in bytes (a provider's error can be a whole
/// HTML page).
pub const DETAIL_MAX_BYTES: usize = 1024;

/// What a history stores of an event's `detail`: its first [`DETAIL_MAX_BYTES`] bytes, cut at
/// a character boundary. Every backend stores this and nothing else.
pub fn stored_detail(detail: &str) -> &str {
    if detail.len() <= DETAIL_MAX_BYTES {
        return detail;
    }
    let mut end = DETAIL_MAX_BYTES;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail[..end]
}

/// A provider's word on a message it took: delivered after all, or failed after all.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    /// The provider that sent the message (the message's `provider`). A receipt only ever
    /// touches that provider's messages: whoever holds one provider's callback secret cannot
    /// change the history of messages another provider sent.
    pub provider: String,
    pub message: ReceiptFor,
    /// `Delivered` or `Failed`.
    pub status: Status,
    pub at: DateTime<Utc>,
    pub detail: Option<String>,
}

/// What a receipt did.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiptOutcome {
    /// No message of that provider matches: nothing changed.
    Unknown,
    /// The message moved from `sent` to the receipt's status, with an event in its timeline.
    Applied(MessageId),
    /// The message is not `sent` (delivered or failed already, or not sent yet): nothing changed.
    Unchanged { id: MessageId, status: Status },
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("history store: corrupt row: {0}")]
    Corrupt(String),
    /// Another transaction changed what this one decided on; nothing was written, try again.
    #[error("history store: {0}; nothing written, try again")]
    Conflict(String),
}

impl HistoryError {
    /// The database chose this transaction as a deadlock's victim (or gave up waiting for a
    /// lock): nothing was written, and running it again at once is the documented remedy.
    pub fn is_deadlock(&self) -> bool {
        match self {
            // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
            Self::Database(sqlx::Error::Database(e)) => e
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| matches!(e.number(), 1205 | 1213)),
            _ => false,
        }
    }
}

/// Runs `op`, again at once (three times in all) while it loses to a deadlock; claims and
/// deletes on a shared queue table may, and waiting would only add latency.
pub async fn again_on_deadlock<T, F, Fut>(mut op: F) -> Result<T, HistoryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HistoryError>>,
{
    let mut tries = 1;
    loop {
        match op().await {
            Err(e) if e.is_deadlock() && tries < 3 => tries += 1,
            result => return result,
        }
    }
}

#[async_trait::async_trait]
pub trait HistoryStore: Send + Sync {
    /// Writes a batch: transitions (idempotently: recording the same batch twice changes nothing)
    /// and parked messages.
    async fn record(&self, batch: &BatchRecord) -> Result<(), HistoryError>;
    async fn get(&self, tenant: &str, id: MessageId) -> Result<Option<MessageView>, HistoryError>;
    async fn list(&self, tenant: &str, filter: &MessageFilter)
    -> Result<MessagePage, HistoryError>;
    /// Claims up to `limit` parked messages of `queues` that are due, for `lease`: no other caller gets them
    /// until the lease runs out. They stop being parked only through `release`, after they were
    /// re-published; a caller that dies in between lets the lease expire and another one publishes
    /// them again (the worker's dedupe absorbs the second copy).
    async fn claim_due(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, HistoryError>;
    /// Ends the parkings these claims took, once their messages were published. A message parked
    /// anew since its claim (its republished copy already failed again) keeps its new parking.
    async fn release(&self, claims: &[Claim]) -> Result<(), HistoryError>;
    /// Checks the parked messages of `queues` at `now`: counts the overdue ones, parks again a
    /// `scheduled` message whose published parking is older than `grace` (its republished copy
    /// never arrived), and removes published parkings whose message moved on. Safe to run from
    /// every worker at once.
    async fn sweep_parking(
        &self,
        queues: &[String],
        now: DateTime<Utc>,
        grace: std::time::Duration,
    ) -> Result<ParkingHealth, HistoryError>;
    /// The tenant's messages accepted since `since`, counted by channel and current status, with
    /// a series in buckets of `bucket` (the dashboard's overview). Served by an index: ids are
    /// time-ordered, so the window is an id range.
    async fn stats(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
        bucket: std::time::Duration,
    ) -> Result<crate::stats::Stats, HistoryError>;

    /// Applies a delivery receipt, atomically: a `sent` message of `receipt.provider` moves to
    /// `receipt.status` (`delivered` or `failed`) and gets an event (at `receipt.at`, of its
    /// current attempt) in its timeline; a message in any other state is left alone, so a
    /// repeated or late receipt changes nothing. Messages are found across tenants: the caller
    /// has authenticated the provider, and a receipt names no tenant. `delivered` is final:
    /// `record` never changes the status of a `delivered` message.
    async fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, HistoryError>;
}

/// The newest transition of each message in the batch, in id order: rows are always written in
/// the same order, so concurrent batches never deadlock on each other's row locks.
pub(crate) fn latest_per_message(transitions: &[Transition]) -> Vec<&Transition> {
    let mut latest: BTreeMap<MessageId, &Transition> = BTreeMap::new();
    for t in transitions {
        latest
            .entry(t.id)
            .and_modify(|cur| {
                if (t.at, t.attempt) >= (cur.at, cur.attempt) {
                    *cur = t;
                }
            })
            .or_insert(t);
    }
    latest.into_values().collect()
}

/// Opaque cursor of a page: the last id shown.
pub fn encode_cursor(id: MessageId) -> String {
    id.0.simple().to_string()
}

pub fn decode_cursor(cursor: &str) -> Option<MessageId> {
    if cursor.len() != 32 {
        return None;
    }
    uuid::Uuid::try_parse(cursor).ok().map(MessageId)
}

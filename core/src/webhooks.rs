//! Outbound webhooks (Standard Webhooks): a tenant's endpoints, which events of its messages each
//! one gets, how a delivery is signed and retried, and which addresses UMP refuses to call. Pure
//! rules here, every one taking an explicit `now`; the stores are in `webhooks_store`.

use crate::history::{HistoryError, Transition};
use crate::model::{MessageId, Status};
use crate::pii::Masked;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// What an endpoint can subscribe to. The names are part of the public API.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    #[serde(rename = "message.accepted")]
    MessageAccepted,
    #[serde(rename = "message.sent")]
    MessageSent,
    #[serde(rename = "message.delivered")]
    MessageDelivered,
    #[serde(rename = "message.failed")]
    MessageFailed,
    #[serde(rename = "message.dead_lettered")]
    MessageDeadLettered,
    #[serde(rename = "message.duplicate")]
    MessageDuplicate,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::MessageAccepted,
        EventType::MessageSent,
        EventType::MessageDelivered,
        EventType::MessageFailed,
        EventType::MessageDeadLettered,
        EventType::MessageDuplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageAccepted => "message.accepted",
            EventType::MessageSent => "message.sent",
            EventType::MessageDelivered => "message.delivered",
            EventType::MessageFailed => "message.failed",
            EventType::MessageDeadLettered => "message.dead_lettered",
            EventType::MessageDuplicate => "message.duplicate",
        }
    }

    /// The event a status change produces; `scheduled` and `sending` produce none (a retry in
    /// waiting is not news to the application).
    pub fn of(status: Status) -> Option<Self> {
        match status {
            Status::Accepted => Some(EventType::MessageAccepted),
            Status::Sent => Some(EventType::MessageSent),
            Status::Delivered => Some(EventType::MessageDelivered),
            Status::Failed => Some(EventType::MessageFailed),
            Status::DeadLettered => Some(EventType::MessageDeadLettered),
            Status::Duplicate => Some(EventType::MessageDuplicate),
            Status::Scheduled | Status::Sending => None,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// The event type of "send a test event": never subscribed to, sent only on request.
pub const TEST_EVENT: &str = "webhook.test";

/// Which events an endpoint gets: every listed type, of the listed channels (all when empty), of
/// messages carrying at least one of the listed tags (all when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventFilter {
    pub event_types: Vec<EventType>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl EventFilter {
    pub fn wants(&self, event: EventType, channel: &str, tags: &[String]) -> bool {
        self.event_types.contains(&event)
            && (self.channels.is_empty() || self.channels.iter().any(|c| c == channel))
            && (self.tags.is_empty() || self.tags.iter().any(|t| tags.contains(t)))
    }
}

/// An endpoint as the API shows it: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// `ep_` and 32 hex digits.
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub url: String,
    pub description: String,
    #[serde(flatten)]
    pub filter: EventFilter,
    pub enabled: bool,
    /// Why it is disabled: by a person, or by UMP (the receiver answered 410, or failed for days).
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed (null while deliveries succeed).
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret replaced by the last rotation still signs deliveries.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint id.
pub fn new_endpoint_id() -> String {
    format!("ep_{}", uuid::Uuid::now_v7().simple())
}

/// A new signing secret: `whsec_` and 32 random bytes in base64, as Standard Webhooks has it.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    // A v4 UUID has 122 random bits; the two fixed nibbles per UUID cost 12 of 256 bits.
    format!("whsec_{}", BASE64.encode(bytes))
}

/// The secrets that sign an endpoint's deliveries at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    pub previous: Option<(String, DateTime<Utc>)>,
}

impl SigningSecrets {
    /// The secrets valid at `now`: the current one, and the previous one during its grace.
    pub fn valid_at(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.current.as_str()];
        if let Some((previous, until)) = &self.previous
            && now < *until
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// The `X-UMP-Signature` of a webhook *channel*'s request and of its receiver's acknowledgement
/// (not the Standard Webhooks status events above): `sha256=` and the hex HMAC-SHA256 of `body`
/// keyed with the provider's signing secret. The worker signs with it, the API checks with
/// `receipt_signature_matches`.
pub fn receipt_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(receipt_mac(secret, body)))
}

/// Whether `header` is `body`'s `receipt_signature` under `secret` (compared in constant time).
pub fn receipt_signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    header
        .strip_prefix("sha256=")
        .and_then(|digest| hex::decode(digest).ok())
        .is_some_and(|digest| bool::from(digest.ct_eq(&receipt_mac(secret, body))))
}

fn receipt_mac(secret: &[u8], body: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// One signature: `v1,` and the base64 HMAC-SHA256, keyed with the secret's base64-decoded bytes
/// (after `whsec_`), of `id.timestamp.body`. `None` for a secret that is not base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    use hmac::{Hmac, KeyInit, Mac};
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header at `now`: one signature per valid secret, space-separated, so a
/// receiver that has the old or the new secret accepts it during a rotation's grace.
pub fn signature_header(
    secrets: &SigningSecrets,
    now: DateTime<Utc>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .valid_at(now)
        .into_iter()
        .filter_map(|secret| sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A delivery to be made, as the outbox stores it: the body is fixed when the event happens, so
/// every retry sends the same bytes under the same id.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDelivery {
    pub endpoint_id: String,
    pub tenant: String,
    /// The `webhook-id`: the same for the event on every attempt and after every restart.
    pub event_id: String,
    pub event_type: String,
    pub message_id: Option<MessageId>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// The `webhook-id` of a message's status change: derived from what identifies the change in the
/// history (message, status, attempt), so recording the same batch again produces the same id.
pub fn event_id(message: MessageId, status: Status, attempt: u32) -> String {
    let millis = message.unix_millis().unwrap_or(0);
    let derived = MessageId::derived(millis, &format!("webhook/{message}/{status}/{attempt}"));
    format!("msg_{}", derived.0.simple())
}

/// What a message event's body says: a status change of a message, the recipient already
/// masked. Borrowed, so that the outbox can render it from a transition or from the fields it
/// stored, with the same result.
#[derive(Clone, Debug, PartialEq)]
pub struct EventBody<'a> {
    pub id: MessageId,
    pub status: Status,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub channel: &'a str,
    pub provider: Option<&'a str>,
    /// Masked (`pii::Masked`).
    pub to: std::borrow::Cow<'a, str>,
    pub detail: Option<&'a str>,
    pub tags: &'a [String],
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> EventBody<'a> {
    pub fn of(t: &'a Transition) -> Self {
        Self {
            id: t.id,
            status: t.status,
            attempt: t.attempt,
            at: t.at,
            channel: &t.channel,
            provider: t.provider.as_deref(),
            to: std::borrow::Cow::Owned(Masked(&t.to).to_string()),
            detail: t.detail.as_deref(),
            tags: &t.tags,
            metadata: &t.metadata,
        }
    }

    /// The JSON body: `type`, `timestamp` and `data`. `None` for a status that makes no event.
    pub fn payload(&self) -> Option<String> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            event: &'static str,
            timestamp: String,
            data: Data<'a>,
        }
        #[derive(Serialize)]
        struct Data<'a> {
            id: MessageId,
            channel: &'a str,
            status: Status,
            provider: Option<&'a str>,
            to: &'a str,
            attempt: u32,
            detail: Option<&'a str>,
            tags: &'a [String],
            metadata: &'a serde_json::Map<String, serde_json::Value>,
        }
        let event = EventType::of(self.status)?;
        let body = Body {
            event: event.as_str(),
            timestamp: self.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            data: Data {
                id: self.id,
                channel: self.channel,
                status: self.status,
                provider: self.provider,
                to: &self.to,
                attempt: self.attempt,
                detail: self.detail,
                tags: self.tags,
                metadata: self.metadata,
            },
        };
        serde_json::to_string(&body).ok()
    }
}

/// The JSON body of a message event: `type`, `timestamp` and `data`, the recipient masked.
pub fn message_payload(t: &Transition) -> Option<String> {
    EventBody::of(t).payload()
}

/// An enabled endpoint as the outbox writer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscriber {
    pub endpoint_id: String,
    pub tenant: String,
    pub filter: EventFilter,
}

/// One event a batch of status changes makes for one endpoint, its body not yet rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent<'a> {
    pub endpoint_id: &'a str,
    /// The `webhook-id` (`event_id`).
    pub event_id: String,
    pub event: EventType,
    pub transition: &'a Transition,
}

/// The events a batch of status changes makes: one per (change, endpoint of its tenant that
/// wants it), ordered by endpoint, then event id, each once. Pure: the stores write exactly these
/// in the transaction of the changes.
pub fn events_for<'a>(
    transitions: &'a [Transition],
    subscribers: &'a [Subscriber],
) -> Vec<OutboxEvent<'a>> {
    let mut out = Vec::new();
    for t in transitions {
        let Some(event) = EventType::of(t.status) else {
            continue;
        };
        for s in subscribers {
            if s.tenant == t.tenant && s.filter.wants(event, &t.channel, &t.tags) {
                out.push(OutboxEvent {
                    endpoint_id: &s.endpoint_id,
                    event_id: event_id(t.id, t.status, t.attempt),
                    event,
                    transition: t,
                });
            }
        }
    }
    // Always the same row order: concurrent batches never deadlock on each other's rows.
    out.sort_by(|a, b| (a.endpoint_id, &a.event_id).cmp(&(b.endpoint_id, &b.event_id)));
    out.dedup_by(|a, b| a.endpoint_id == b.endpoint_id && a.event_id == b.event_id);
    out
}

/// The deliveries a batch of status changes produces (`events_for`), their bodies rendered.
pub fn deliveries_for(
    transitions: &[Transition],
    subscribers: &[Subscriber],
    now: DateTime<Utc>,
) -> Vec<NewDelivery> {
    events_for(transitions, subscribers)
        .into_iter()
        .filter_map(|e| {
            Some(NewDelivery {
                endpoint_id: e.endpoint_id.to_owned(),
                tenant: e.transition.tenant.clone(),
                event_id: e.event_id,
                event_type: e.event.as_str().to_owned(),
                message_id: Some(e.transition.id),
                payload: message_payload(e.transition)?,
                created_at: now,
            })
        })
        .collect()
}

/// The body of "send a test event".
pub fn test_delivery(endpoint: &Endpoint, now: DateTime<Utc>) -> NewDelivery {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let body = serde_json::json!({
        "type": TEST_EVENT,
        "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": {"endpoint_id": endpoint.id, "message": "a test event from UMP"},
    });
    NewDelivery {
        endpoint_id: endpoint.id.clone(),
        tenant: endpoint.tenant.clone(),
        event_id: id,
        event_type: TEST_EVENT.to_owned(),
        message_id: None,
        payload: body.to_string(),
        created_at: now,
    }
}

/// How deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; it doubles with each further one…
    pub first: Duration,
    /// …up to this.
    pub max: Duration,
    /// A delivery is retried until this long after its event (or its replay), then given up.
    pub retry_for: Duration,
    /// An endpoint whose every delivery failed for this long is disabled.
    pub disable_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(5),
            max: Duration::from_secs(3600),
            retry_for: Duration::from_secs(3 * 24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// When to try again after `attempts` failed attempts, or `None` when the delivery has been
    /// retried for `retry_for` since `since`. `jitter` (0 to 1, random in production) spreads
    /// the retries of many deliveries that failed together over the later half of the wait.
    pub fn next_attempt(
        &self,
        attempts: u32,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Option<DateTime<Utc>> {
        let retry_for = chrono::Duration::from_std(self.retry_for).unwrap_or(chrono::Duration::MAX);
        if now >= since + retry_for {
            return None;
        }
        let doublings = attempts.saturating_sub(1).min(32);
        let wait = self
            .first
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max);
        let wait = wait.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
    }

    /// Whether an endpoint failing since `failing_since` is to be disabled at `now`.
    pub fn disable(&self, failing_since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let after = chrono::Duration::from_std(self.disable_after).unwrap_or(chrono::Duration::MAX);
        failing_since.is_some_and(|since| now >= since + after)
    }
}

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// 410 Gone: the receiver asks never to be called again; the endpoint is disabled.
    Gone,
    /// Any other answer, a refused or timed-out connection, a forbidden address.
    Failed { status: Option<u16>, error: String },
    /// Not attempted: the round ended before it (an earlier attempt of the round failed, half its
    /// lease had gone, or the dispatcher is stopping). Due again at once; no attempt is counted.
    Skipped,
}

/// Where a claimed delivery is kept when the store keeps a transaction's events for an endpoint
/// together (MySQL's batches): the batch, the delivery's place in it and the batch's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRef {
    pub key: String,
    pub index: u32,
    pub len: u32,
}

/// One attempt's outcome, for the store to settle.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub endpoint_id: String,
    pub event_id: String,
    pub claim: uuid::Uuid,
    pub result: AttemptResult,
    pub latency: Duration,
    pub at: DateTime<Utc>,
    /// For failures: when to try again (`None`: given up).
    pub retry_at: Option<DateTime<Utc>>,
    /// The claimed delivery's batch, as `ClaimedDelivery::batch`.
    pub batch: Option<BatchRef>,
}

/// A delivery handed out by `WebhookStore::claim`, with what the dispatcher needs to make it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedDelivery {
    pub endpoint_id: String,
    pub event_id: String,
    pub payload: String,
    pub attempts: u32,
    /// Since when the delivery is retried (its event, or its replay).
    pub retry_since: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claim: uuid::Uuid,
    /// Set when the delivery is one of a batch (see `BatchRef`); its attempt carries it back.
    pub batch: Option<BatchRef>,
}

/// An endpoint as the dispatcher needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub endpoint_id: String,
    pub url: String,
    pub secrets: SigningSecrets,
}

/// A delivery as the delivery log shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub message_id: Option<MessageId>,
    /// `pending` (waiting for its next attempt), `delivered`, or `failed` (given up).
    pub state: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status_code: Option<u16>,
    pub last_latency_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Delivery states as stored.
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const GAVE_UP: &str = "failed";

/// Endpoints and the outbox of deliveries. The outbox is written by the history store's `record`
/// and `apply_receipt`, in the transaction of the status changes.
#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_endpoint(&self, endpoint: &Endpoint, secret: &str) -> Result<(), HistoryError>;
    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, HistoryError>;
    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, HistoryError>;
    /// Replaces url, description, filter and enabled/reason (and clears `failing_since` when it
    /// is enabled again); `Ok(false)` when the tenant has no such endpoint.
    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<bool, HistoryError>;
    /// Deletes the endpoint and its outbox.
    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, HistoryError>;
    /// A new current secret; the old one keeps signing until `grace_until`.
    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &str,
        grace_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, HistoryError>;
    /// Adds deliveries (test events), due at once; a delivery already there is left alone.
    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), HistoryError>;
    /// The endpoint's deliveries by event id (which starts with the message's time), newest
    /// first, those before `before` (an event id).
    async fn deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, HistoryError>;
    /// Sends again every delivery of the endpoint made since `since` (delivered or given up
    /// included), due at `now`, under the same ids. Returns how many.
    async fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError>;
    /// Enabled endpoints (of every tenant) with deliveries due at `now` and nobody holding them.
    async fn due_targets(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Target>, HistoryError>;
    /// Takes up to `limit` due deliveries of the endpoint for `lease`: nobody else gets them
    /// until it runs out, so a dispatcher that died leaves them to the next.
    async fn claim(
        &self,
        endpoint_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, HistoryError>;
    /// Records attempts (only where the claim still holds) and what they mean for their
    /// endpoints: a success clears `failing_since`, a failure sets it, 410 disables the endpoint,
    /// and so does failing for `policy.disable_after`.
    async fn settle(
        &self,
        attempts: &[Attempt],
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), HistoryError>;
}

/// Why an address is not one UMP calls, or `None` for a public unicast address.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        (0, _, _) => "this network (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (169, 254, 169) if ip.octets()[3] == 254 => "cloud metadata",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match segments[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0 if segments[..5].iter().all(|s| *s == 0) => "IPv4-compatible or reserved",
        0x64 if segments[1] == 0xff9b => {
            // NAT64: the IPv4 address it stands for decides.
            let [_, _, _, _, _, _, hi, lo] = segments;
            let v4 = Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            return forbidden_v4(v4);
        }
        s if s & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if segments[1] == 0x0db8 => "documentation",
        0x2002 => {
            // 6to4: the embedded IPv4 address decides.
            let v4 = Ipv4Addr::new(
                (segments[1] >> 8) as u8,
                segments[1] as u8,
                (segments[2] >> 8) as u8,
                segments[2] as u8,
            );
            return forbidden_v4(v4);
        }
        _ => return None,
    })
}

/// Which URLs and addresses the dispatcher may call. The defaults are production's; tests (and
/// only tests) allow `http` and loopback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UrlRules {
    /// Plain `http` URLs (`UMP_WEBHOOKS_ALLOW_HTTP`).
    pub allow_http: bool,
    /// Loopback addresses (`UMP_WEBHOOKS_ALLOW_LOOPBACK`); every other forbidden class stays
    /// forbidden.
    pub allow_loopback: bool,
}

impl UrlRules {
    /// Why `ip` may not be called under these rules.
    pub fn refuse(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allow_loopback && ip.is_loopback() {
            return None;
        }
        forbidden_address(ip)
    }

    /// Checks an endpoint URL: absolute, `https` (or `http` when allowed), a host, no
    /// credentials, at most 2048 bytes, and not a literal forbidden address. Names are checked
    /// again at every connection, when they are resolved.
    pub fn check_url(&self, text: &str) -> Result<url::Url, String> {
        if text.len() > 2048 {
            return Err("must be at most 2048 bytes".into());
        }
        let url = url::Url::parse(text).map_err(|e| format!("not an absolute URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err("must be an https URL".into()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let ip = match url.host() {
            None => return Err("must name a host".into()),
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = ip
            && let Some(why) = self.refuse(ip)
        {
            return Err(format!("must not point to a {why} address"));
        }
        Ok(url)
    }
}

/// Which endpoint URLs are allowed. Both the API (when endpoints are written) and the dispatcher
/// (at every connection) apply them.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct WebhookUrlSettings {
    /// Allow plain `http` endpoint URLs. For tests and local development only.
    #[arg(long = "webhooks-allow-http", env = "UMP_WEBHOOKS_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_http: bool,
    /// Allow endpoints on loopback addresses (127.0.0.0/8, ::1). For tests only: every other
    /// private, link-local or metadata address stays refused.
    #[arg(long = "webhooks-allow-loopback", env = "UMP_WEBHOOKS_ALLOW_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_loopback: bool,
}

impl WebhookUrlSettings {
    pub fn rules(&self) -> UrlRules {
        UrlRules {
            allow_http: self.allow_http,
            allow_loopback: self.allow_loopback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Content, Envelope, Priority};
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_764_000_000 + secs, 0).unwrap()
    }

    fn envelope(tenant: &str, channel: &str) -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: tenant.into(),
            channel: channel.into(),
            to: "+821012345678".into(),
            content: Content::default(),
            priority: Priority::Bulk,
            send_at: None,
            tags: vec![],
            metadata: Default::default(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: at(0),
            attempts: 0,
            fallback: None,
        }
    }

    fn subscriber(id: &str, tenant: &str, filter: EventFilter) -> Subscriber {
        Subscriber {
            endpoint_id: id.into(),
            tenant: tenant.into(),
            filter,
        }
    }

    #[test]
    fn event_types_round_trip_and_only_news_makes_an_event() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::Value::String(t.as_str().into())
            );
        }
        assert_eq!(EventType::of(Status::Scheduled), None);
        assert_eq!(EventType::of(Status::Sending), None);
        assert_eq!(
            EventType::of(Status::DeadLettered),
            Some(EventType::MessageDeadLettered)
        );
        assert_eq!(EventType::parse("message.scheduled"), None);
    }

    #[test]
    fn a_filter_wants_its_types_channels_and_tags() {
        let all_sms = EventFilter {
            event_types: vec![EventType::MessageSent],
            channels: vec!["sms".into()],
            tags: vec![],
        };
        assert!(all_sms.wants(EventType::MessageSent, "sms", &[]));
        assert!(!all_sms.wants(EventType::MessageFailed, "sms", &[]));
        assert!(!all_sms.wants(EventType::MessageSent, "email", &[]));
        let tagged = EventFilter {
            event_types: EventType::ALL.to_vec(),
            channels: vec![],
            tags: vec!["otp".into(), "signup".into()],
        };
        assert!(tagged.wants(EventType::MessageSent, "email", &["signup".into()]));
        assert!(!tagged.wants(EventType::MessageSent, "email", &["promo".into()]));
        assert!(!tagged.wants(EventType::MessageSent, "email", &[]));
    }

    #[test]
    fn deliveries_go_to_matching_endpoints_of_the_same_tenant_only() {
        let e = envelope("t1", "sms");
        let accepted = Transition::of(&e, Status::Accepted, at(0));
        let scheduled = Transition::of(&e, Status::Scheduled, at(1));
        let mut tried = e.clone();
        tried.attempts = 1;
        let sent = Transition::of(&tried, Status::Sent, at(2)).provider("sandbox", None);
        let batch = vec![accepted, scheduled, sent];
        let subscribers = vec![
            subscriber(
                "ep_all",
                "t1",
                EventFilter {
                    event_types: EventType::ALL.to_vec(),
                    ..Default::default()
                },
            ),
            subscriber(
                "ep_sent_email",
                "t1",
                EventFilter {
                    event_types: vec![EventType::MessageSent],
                    channels: vec!["email".into()],
                    tags: vec![],
                },
            ),
            subscriber(
                "ep_other_tenant",
                "t2",
                EventFilter {
                    event_types: EventType::ALL.to_vec(),
                    ..Default::default()
                },
            ),
        ];
        let out = deliveries_for(&batch, &subscribers, at(3));
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|d| (d.endpoint_id.as_str(), d.event_type.as_str()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&("ep_all", "message.accepted")));
        assert!(got.contains(&("ep_all", "message.sent")));
        // The same change always gets the same id; another change another.
        let again = deliveries_for(&batch, &subscribers, at(9));
        assert_eq!(
            out.iter().map(|d| &d.event_id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.event_id).collect::<Vec<_>>()
        );
        assert_ne!(out[0].event_id, out[1].event_id);
        assert!(out[0].event_id.starts_with("msg_"));
    }

    #[test]
    fn the_body_masks_the_recipient_and_carries_labels() {
        let mut e = envelope("t1", "sms");
        e.attempts = 2;
        e.tags = vec!["otp".into()];
        e.metadata.insert("order".into(), "A-1".into());
        let t = Transition::of(&e, Status::Failed, at(5)).detail("bad number");
        let body: serde_json::Value = serde_json::from_str(&message_payload(&t).unwrap()).unwrap();
        assert_eq!(body["type"], "message.failed");
        assert_eq!(body["timestamp"], "2025-11-24T16:00:05.000Z");
        assert_eq!(body["data"]["id"], e.id.to_string());
        assert_eq!(body["data"]["to"], "+8210****5678");
        assert_eq!(body["data"]["status"], "failed");
        assert_eq!(body["data"]["attempt"], 2);
        assert_eq!(body["data"]["tags"][0], "otp");
        assert_eq!(body["data"]["metadata"]["order"], "A-1");
        assert!(!body.to_string().contains("12345678"));
        assert!(message_payload(&Transition::of(&e, Status::Scheduled, at(1))).is_none());
    }

    #[test]
    fn receipt_signatures_are_checked_against_the_body_and_secret() {
        let signed = receipt_signature(b"secret", b"{\"id\":1}");
        // As Python's hmac.new(b"secret", b'{"id":1}', hashlib.sha256).hexdigest() makes it.
        assert_eq!(
            signed,
            "sha256=03def589620c813f198fd03d7967e292b163ef0435ebf43071ce0e9519763cb7"
        );
        assert!(receipt_signature_matches(b"secret", b"{\"id\":1}", &signed));
        assert!(!receipt_signature_matches(b"other", b"{\"id\":1}", &signed));
        assert!(!receipt_signature_matches(
            b"secret",
            b"{\"id\":2}",
            &signed
        ));
        assert!(!receipt_signature_matches(
            b"secret",
            b"{\"id\":1}",
            &signed[7..]
        ));
        assert!(!receipt_signature_matches(
            b"secret",
            b"{\"id\":1}",
            "sha256=zz"
        ));
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The specification's published example.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("whsec_not base64!", "id", 1, body), None);
    }

    #[test]
    fn a_rotated_secret_signs_beside_the_new_one_during_its_grace() {
        let secrets = SigningSecrets {
            current: new_secret(),
            previous: Some((new_secret(), at(100))),
        };
        let during = signature_header(&secrets, at(99), "msg_1", 7, b"{}");
        let parts: Vec<&str> = during.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            Some(parts[0]),
            sign(&secrets.current, "msg_1", 7, b"{}").as_deref()
        );
        let after = signature_header(&secrets, at(100), "msg_1", 7, b"{}");
        assert_eq!(after, parts[0]);
    }

    #[test]
    fn secrets_are_random_base64_of_32_bytes() {
        let a = new_secret();
        assert!(a.starts_with("whsec_"));
        assert_eq!(BASE64.decode(&a[6..]).unwrap().len(), 32);
        assert_ne!(a, new_secret());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_gives_up_after_the_window() {
        let policy = RetryPolicy::default();
        let since = at(0);
        assert_eq!(policy.next_attempt(1, since, at(0), 1.0), Some(at(5)));
        // Jitter only shortens, to at least half.
        assert_eq!(
            policy.next_attempt(1, since, at(0), 0.0),
            Some(at(0) + chrono::Duration::milliseconds(2500))
        );
        assert_eq!(policy.next_attempt(2, since, at(0), 1.0), Some(at(10)));
        assert_eq!(policy.next_attempt(5, since, at(0), 1.0), Some(at(80)));
        assert_eq!(policy.next_attempt(13, since, at(0), 1.0), Some(at(3600)));
        assert_eq!(policy.next_attempt(400, since, at(0), 1.0), Some(at(3600)));
        // Still retried a day later; given up only once the window (3 days) is over.
        assert!(policy.next_attempt(40, since, at(24 * 3600), 0.5).is_some());
        assert_eq!(policy.next_attempt(80, since, at(3 * 24 * 3600), 0.5), None);
    }

    #[test]
    fn the_schedule_keeps_trying_for_at_least_a_day() {
        let policy = RetryPolicy::default();
        let (mut now, mut attempts) = (at(0), 0);
        // Worst case: every wait as short as the jitter allows.
        while let Some(next) = policy.next_attempt(attempts + 1, at(0), now, 0.0) {
            attempts += 1;
            now = next;
            assert!(attempts < 1000, "bounded");
        }
        assert!(now - at(0) >= chrono::Duration::hours(24), "{now}");
        assert!(attempts > 20, "{attempts} attempts");
    }

    #[test]
    fn an_endpoint_failing_for_days_is_disabled() {
        let policy = RetryPolicy::default();
        assert!(!policy.disable(None, at(10_000_000)));
        assert!(!policy.disable(Some(at(0)), at(4 * 24 * 3600)));
        assert!(policy.disable(Some(at(0)), at(5 * 24 * 3600)));
    }

    #[test]
    fn every_forbidden_address_class_is_refused() {
        for (ip, why) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade"),
            ("100.127.255.255", "carrier-grade"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::a00:1", "private"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::", "private"),
        ] {
            let reason = forbidden_address(ip.parse().unwrap());
            assert!(
                reason.is_some_and(|r| r.contains(why)),
                "{ip}: {reason:?}, expected {why}"
            );
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert_eq!(forbidden_address(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_loopback_setting_allows_loopback_and_nothing_else() {
        let tests = UrlRules {
            allow_http: true,
            allow_loopback: true,
        };
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(tests.refuse(ip.parse().unwrap()), None, "{ip}");
        }
        for ip in ["10.0.0.1", "169.254.169.254", "0.0.0.0", "fd00::1"] {
            assert!(tests.refuse(ip.parse().unwrap()).is_some(), "{ip}");
        }
        assert!(
            UrlRules::default()
                .refuse("127.0.0.1".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn urls_must_be_https_with_a_host_and_no_credentials() {
        let production = UrlRules::default();
        assert!(
            production
                .check_url("https://hooks.example.com/ump")
                .is_ok()
        );
        for (url, why) in [
            ("http://hooks.example.com/", "https"),
            ("ftp://hooks.example.com/", "https"),
            ("hooks.example.com/x", "absolute"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://127.0.0.1/", "loopback"),
            ("https://[::1]:8443/", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://10.0.0.8/", "private"),
        ] {
            let e = production.check_url(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(production.check_url(&long).is_err());
        let tests = UrlRules {
            allow_http: true,
            allow_loopback: true,
        };
        assert!(tests.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(tests.check_url("http://10.0.0.1/x").is_err());
    }
}

//! The message as UMP sees it: the request a client sends, the envelope that travels through the
//! queues, and the statuses and events of its history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A message id: a UUIDv7, so ids sort by acceptance time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct MessageId(pub Uuid);

impl MessageId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    /// Milliseconds since the epoch at which the id was minted.
    pub fn unix_millis(&self) -> Option<u64> {
        self.0.get_timestamp().map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
    }
    /// The smallest id minted at or after `millis`: turns a time bound into an id bound.
    pub fn lower_bound(millis: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        Self(Uuid::from_bytes(bytes))
    }
    /// An id minted at `millis` that is the same every time for the same `seed`: a send made
    /// again after a crash (a broadcast resumed) gets the id of the first, so the dedupe drops
    /// it. A version 7 UUID like the others, its random part a SHA-256 of the seed.
    pub fn derived(millis: u64, seed: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(seed.as_bytes());
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Self(Uuid::from_bytes(bytes))
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where a message is in its life. The names are part of the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Scheduled,
    Sending,
    /// The provider took it.
    Sent,
    /// The provider confirmed delivery to the recipient.
    Delivered,
    Failed,
    Duplicate,
    DeadLettered,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Accepted,
        Status::Scheduled,
        Status::Sending,
        Status::Sent,
        Status::Delivered,
        Status::Failed,
        Status::Duplicate,
        Status::DeadLettered,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Scheduled => "scheduled",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
            Status::DeadLettered => "dead_lettered",
        }
    }

    /// A final status: nothing more happens to the message (a delivery receipt aside).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Status::Sent
                | Status::Delivered
                | Status::Failed
                | Status::Duplicate
                | Status::DeadLettered
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Through Kafka: throughput first.
    #[default]
    Bulk,
    /// Through ActiveMQ: latency first (one-time passwords, security alerts).
    Realtime,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Bulk => "bulk",
            Priority::Realtime => "realtime",
        }
    }
}

/// What a message is, for the consent rules and the advertising markings: `marketing` goes only
/// to a person who consented to advertising on the channel's kind, and is marked as advertising
/// (SMS: "(광고)" and an opt-out line; FriendTalk: Kakao's ad flag).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    #[default]
    Transactional,
    /// Advertising (영리목적 광고성 정보).
    Marketing,
}

impl Category {
    pub fn is_transactional(&self) -> bool {
        *self == Category::Transactional
    }
}

/// What to send: inline text, or a stored template and its variables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// Which of the template's locale variants to render (BCP 47, e.g. `en-US`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// Where a message delivered on a fallback channel came from (a DeliveryPolicy's `fallback`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackOrigin {
    /// The channel whose provider refused the message.
    pub channel: String,
    /// Attempts made there: the fallback channel's retry budget starts after them.
    pub attempts: u32,
}

/// An accepted message on its way through the queues. Everything the worker needs is here, so
/// delivery never reads the API's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    pub tenant: String,
    pub channel: String,
    pub to: String,
    pub content: Content,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Left out when transactional, so envelopes of before the field read the same.
    #[serde(default, skip_serializing_if = "Category::is_transactional")]
    pub category: Category,
    pub accepted_at: DateTime<Utc>,
    /// Delivery attempts made so far (0 on the first try).
    #[serde(default)]
    pub attempts: u32,
    /// Set when the message is on its way over a fallback channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackOrigin>,
}

impl Envelope {
    /// Hash of channel + recipient + content: two messages with the same hash are duplicates
    /// within the dedupe window when no `Idempotency-Key` says otherwise.
    pub fn content_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.tenant.as_str(),
            self.channel.as_str(),
            self.to.as_str(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        // serde_json::Map keeps keys sorted, so equal content serializes equally.
        let content = serde_json::to_vec(&self.content).unwrap_or_default();
        hasher.update(&content);
        hex::encode(hasher.finalize())
    }
}

/// One status change in a message's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub status: Status,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).expect("json"),
                Value::String(status.as_str().to_owned())
            );
        }
    }

    #[test]
    fn derived_ids_repeat_for_their_seed_and_keep_their_time() {
        let a = MessageId::derived(1_764_000_000_000, "t/b1/kim");
        assert_eq!(a, MessageId::derived(1_764_000_000_000, "t/b1/kim"));
        assert_ne!(a, MessageId::derived(1_764_000_000_000, "t/b1/lee"));
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a.unix_millis(), Some(1_764_000_000_000));
    }

    #[test]
    fn ids_sort_by_time_and_time_maps_to_an_id_bound() {
        let first = MessageId::new();
        let millis = first.unix_millis().expect("v7 timestamp");
        assert!(MessageId::lower_bound(millis) <= first);
        assert!(MessageId::lower_bound(millis + 1) > first);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(MessageId::new() > first);
    }

    fn envelope(body: &str) -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: "t".into(),
            channel: "sms".into(),
            to: "+821012345678".into(),
            content: Content {
                body: Some(body.into()),
                ..Default::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: vec![],
            metadata: Map::new(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: Utc::now(),
            attempts: 0,
            fallback: None,
        }
    }

    #[test]
    fn content_hash_ignores_id_and_time_but_not_content() {
        assert_eq!(envelope("hi").content_hash(), envelope("hi").content_hash());
        assert_ne!(
            envelope("hi").content_hash(),
            envelope("hi!").content_hash()
        );
        let mut other_tenant = envelope("hi");
        other_tenant.tenant = "u".into();
        assert_ne!(other_tenant.content_hash(), envelope("hi").content_hash());
    }
}

//! Behaviour events as clients report them (`POST /v1/events`), checked at `now`, and what the
//! event log carries to the processor: an event of a person, or a request to look at a person
//! again (their profile changed, a segment changed, a time window may have expired).

use crate::FieldError;
use crate::state::Event;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest user id, in characters (as `PUT /v1/users/{user_id}`).
pub const MAX_USER_ID: usize = 255;
/// The longest event name and message id, in characters.
pub const MAX_NAME: usize = 128;
pub const MAX_MESSAGE_ID: usize = 255;
/// The largest `properties` object, as JSON bytes.
pub const MAX_PROPERTIES: usize = 8 * 1024;
/// How far in the future a timestamp may be (clocks of phones drift).
pub const MAX_AHEAD: Duration = Duration::hours(1);
/// How far back a timestamp may be: older behaviour says nothing about a person now.
pub const MAX_AGE: Duration = Duration::days(365);
/// Events of the processor itself start with this; clients may not send them.
pub const RESERVED_PREFIX: &str = "ump.";
/// What the processor records when a person enters or leaves a segment.
pub const SEGMENT_ENTERED: &str = "ump.segment_entered";
pub const SEGMENT_LEFT: &str = "ump.segment_left";

/// One event as a client sends it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    pub user_id: String,
    pub event: String,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
    /// When it happened; when UMP received it if not given.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// The client's id of the event: an event sent again with the same id is counted once.
    #[serde(default)]
    pub message_id: Option<String>,
}

/// A user id as the API takes it (path or body).
pub fn check_user_id(field: &str, id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.chars().count() > MAX_USER_ID || id.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("1 to {MAX_USER_ID} characters, no control characters"),
        ));
    }
    Ok(())
}

impl EventInput {
    /// Checks the event received at `now`; `at` is its field path (`events[3]`), empty for a
    /// single event.
    pub fn check(self, at: &str, now: DateTime<Utc>) -> Result<Queued, Vec<FieldError>> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let mut errors = Vec::new();
        if let Err(e) = check_user_id(&field("user_id"), &self.user_id) {
            errors.push(e);
        }
        let name_ok = !self.event.is_empty()
            && self.event.chars().count() <= MAX_NAME
            && self
                .event
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !name_ok {
            errors.push(FieldError::new(
                field("event"),
                format!("1 to {MAX_NAME} letters, digits, '_', '.', ':' or '-'"),
            ));
        } else if self.event.starts_with(RESERVED_PREFIX) {
            errors.push(FieldError::new(
                field("event"),
                format!("names starting with {RESERVED_PREFIX:?} are UMP's own"),
            ));
        }
        let properties = self.properties.unwrap_or_default();
        let size = serde_json::to_vec(&properties).map_or(usize::MAX, |b| b.len());
        if size > MAX_PROPERTIES {
            errors.push(FieldError::new(
                field("properties"),
                format!("{size} bytes of JSON; at most {MAX_PROPERTIES}"),
            ));
        }
        let timestamp = self.timestamp.unwrap_or(now);
        if timestamp > now + MAX_AHEAD {
            errors.push(FieldError::new(
                field("timestamp"),
                "more than an hour in the future: check the sender's clock",
            ));
        } else if timestamp < now - MAX_AGE {
            errors.push(FieldError::new(
                field("timestamp"),
                "more than 365 days ago: too old to say anything about the person now",
            ));
        }
        if let Some(id) = &self.message_id
            && (id.is_empty()
                || id.chars().count() > MAX_MESSAGE_ID
                || id.chars().any(char::is_control))
        {
            errors.push(FieldError::new(
                field("message_id"),
                format!("1 to {MAX_MESSAGE_ID} characters, no control characters"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Queued {
            user_id: self.user_id,
            input: Input::Event {
                event: Event {
                    event: self.event,
                    properties,
                    timestamp,
                },
                message_id: self.message_id,
            },
            received_at: now,
        })
    }
}

/// What the processor is asked to do about a person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// Fold an event in.
    Event {
        event: Event,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    /// Evaluate the person again: their profile or the tenant's segments changed, or a window
    /// may have expired.
    Recheck,
}

/// An entry of the event log (one Kafka record, one SQLite row), without its tenant, which the
/// log keeps beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub user_id: String,
    #[serde(flatten)]
    pub input: Input,
    pub received_at: DateTime<Utc>,
}

impl Queued {
    pub fn recheck(user_id: &str, now: DateTime<Utc>) -> Self {
        Self {
            user_id: user_id.to_owned(),
            input: Input::Recheck,
            received_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    fn input(value: Value) -> EventInput {
        serde_json::from_value(value).expect("parses")
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_event_is_queued_with_the_time_it_was_received_when_it_has_none() {
        let queued = input(json!({"user_id": "u-1", "event": "product_viewed",
            "properties": {"item_id": "sku-1"}}))
        .check("", now())
        .unwrap();
        let Input::Event { event, message_id } = &queued.input else {
            panic!("an event")
        };
        assert_eq!(event.timestamp, now());
        assert_eq!(event.properties["item_id"], "sku-1");
        assert_eq!(message_id, &None);
        // The log's form reads back.
        let text = serde_json::to_string(&queued).unwrap();
        assert!(text.contains(r#""kind":"event""#), "{text}");
        assert_eq!(serde_json::from_str::<Queued>(&text).unwrap(), queued);
    }

    #[test]
    fn each_bad_field_is_named_with_its_place_in_the_batch() {
        let errors = input(json!({"user_id": "", "event": "has space",
            "timestamp": "2026-12-04T14:00:00Z", "message_id": ""}))
        .check("events[3]", now())
        .unwrap_err();
        assert_eq!(
            fields(errors),
            [
                "events[3].user_id",
                "events[3].event",
                "events[3].timestamp",
                "events[3].message_id"
            ]
        );
        let old = input(json!({"user_id": "u", "event": "e", "timestamp": "2025-01-01T00:00:00Z"}))
            .check("", now())
            .unwrap_err();
        assert_eq!(fields(old), ["timestamp"]);
        let reserved = input(json!({"user_id": "u", "event": "ump.segment_entered"}))
            .check("", now())
            .unwrap_err();
        assert_eq!(fields(reserved), ["event"]);
        let big = input(json!({"user_id": "u", "event": "e",
            "properties": {"blob": "x".repeat(MAX_PROPERTIES)}}))
        .check("", now())
        .unwrap_err();
        assert_eq!(fields(big), ["properties"]);
        assert!(
            serde_json::from_value::<EventInput>(json!({"user_id": "u", "event": "e", "extra": 1}))
                .is_err(),
            "unknown fields are refused"
        );
    }
}

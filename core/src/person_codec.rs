//! The stored form of a person's record (`PersonRecord`), the same in MySQL and SQLite. The
//! processor reads and rewrites a person's record with every event, so its size is paid on every
//! event: in the database's buffer pool, its redo log and its page writes, and in the processor's
//! decoding. The stored form is compact binary (a version byte, then `postcard`: variable-length
//! integers, no field names, times as seconds and nanoseconds) at about a third of the record's
//! JSON. Records written as JSON before are still read. A person inside journeys has a second
//! form: version 2 is version 1 followed by the journeys' JSON (instances carry their entry
//! event's properties, free-form), so people in no journey pay nothing for them. Version 3 is
//! for people with an item history (views and purchases, for recommendations): version 1, then
//! the items in `postcard`, then the journeys' JSON (empty when in none).

use crate::history::HistoryError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use ump_automation::journey::JourneyRecord;
use ump_automation::person::PersonRecord;
use ump_automation::recommend::ItemHistory;
use ump_automation::state::{Event, PersonState, ViewedItem};

/// The first byte of the binary form (JSON starts with `{`).
const VERSION: u8 = 1;
/// The first byte of the binary form with journeys.
const WITH_JOURNEYS: u8 = 2;
/// The first byte of the binary form with an item history (and journeys, if any).
const WITH_ITEMS: u8 = 3;

/// The record's bytes to store.
pub fn encode(record: &PersonRecord) -> Result<Vec<u8>, HistoryError> {
    let PersonRecord {
        state,
        segments,
        recent,
        seen,
        next_wake,
        journeys,
        items,
    } = record;
    let PersonState {
        occurrences,
        last_seen,
        recently_viewed,
    } = state;
    let stored = Stored {
        occurrences: occurrences
            .iter()
            .map(|(key, times)| (key.as_str(), times.iter().map(Time::from).collect()))
            .collect(),
        last_seen: last_seen
            .iter()
            .map(|(event, at)| (event.as_str(), Time::from(at)))
            .collect(),
        recently_viewed: recently_viewed
            .iter()
            .map(|v| (v.item_id.as_str(), Time::from(&v.at)))
            .collect(),
        segments: segments.iter().map(String::as_str).collect(),
        recent: recent.iter().map(StoredEvent::from).collect(),
        seen: seen.iter().map(String::as_str).collect(),
        next_wake: next_wake.as_ref().map(Time::from),
    };
    let corrupt = |e: &dyn std::fmt::Display| HistoryError::Corrupt(format!("person record: {e}"));
    let no_journeys = *journeys == JourneyRecord::default();
    if *items != ItemHistory::default() {
        let journeys = if no_journeys {
            Vec::new()
        } else {
            serde_json::to_vec(journeys).map_err(|e| corrupt(&e))?
        };
        let mut bytes = vec![WITH_ITEMS];
        postcard::to_io(&(stored, items, journeys.as_slice()), &mut bytes)
            .map_err(|e| corrupt(&e))?;
        return Ok(bytes);
    }
    if no_journeys {
        let mut bytes = vec![VERSION];
        postcard::to_io(&stored, &mut bytes).map_err(|e| corrupt(&e))?;
        return Ok(bytes);
    }
    let journeys = serde_json::to_vec(journeys).map_err(|e| corrupt(&e))?;
    let mut bytes = vec![WITH_JOURNEYS];
    postcard::to_io(&(stored, journeys.as_slice()), &mut bytes).map_err(|e| corrupt(&e))?;
    Ok(bytes)
}

/// The record stored as `bytes`: the binary form, or JSON written before it.
pub fn decode(bytes: &[u8]) -> Result<PersonRecord, HistoryError> {
    let corrupt = |e: &dyn std::fmt::Display| HistoryError::Corrupt(format!("person record: {e}"));
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            let stored: Stored<'_> = postcard::from_bytes(rest).map_err(|e| corrupt(&e))?;
            stored.into_record().map_err(|e| corrupt(&e))
        }
        Some((&WITH_JOURNEYS, rest)) => {
            let (stored, journeys): (Stored<'_>, &[u8]) =
                postcard::from_bytes(rest).map_err(|e| corrupt(&e))?;
            let mut record = stored.into_record().map_err(|e| corrupt(&e))?;
            record.journeys = serde_json::from_slice(journeys).map_err(|e| corrupt(&e))?;
            Ok(record)
        }
        Some((&WITH_ITEMS, rest)) => {
            let (stored, items, journeys): (Stored<'_>, ItemHistory, &[u8]) =
                postcard::from_bytes(rest).map_err(|e| corrupt(&e))?;
            let mut record = stored.into_record().map_err(|e| corrupt(&e))?;
            record.items = items;
            if !journeys.is_empty() {
                record.journeys = serde_json::from_slice(journeys).map_err(|e| corrupt(&e))?;
            }
            Ok(record)
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| corrupt(&e)),
        Some((other, _)) => Err(corrupt(&format!("unknown format {other}"))),
        None => Err(corrupt(&"empty")),
    }
}

#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    occurrences: Vec<(&'a str, Vec<Time>)>,
    #[serde(borrow)]
    last_seen: Vec<(&'a str, Time)>,
    #[serde(borrow)]
    recently_viewed: Vec<(&'a str, Time)>,
    #[serde(borrow)]
    segments: Vec<&'a str>,
    #[serde(borrow)]
    recent: Vec<StoredEvent<'a>>,
    #[serde(borrow)]
    seen: Vec<&'a str>,
    next_wake: Option<Time>,
}

impl Stored<'_> {
    fn into_record(self) -> Result<PersonRecord, String> {
        Ok(PersonRecord {
            state: PersonState {
                occurrences: self
                    .occurrences
                    .into_iter()
                    .map(|(key, times)| {
                        let times = times.into_iter().map(Time::at).collect::<Result<_, _>>()?;
                        Ok((key.to_owned(), times))
                    })
                    .collect::<Result<_, String>>()?,
                last_seen: self
                    .last_seen
                    .into_iter()
                    .map(|(event, at)| Ok((event.to_owned(), at.at()?)))
                    .collect::<Result<_, String>>()?,
                recently_viewed: self
                    .recently_viewed
                    .into_iter()
                    .map(|(item, at)| {
                        Ok(ViewedItem {
                            item_id: item.to_owned(),
                            at: at.at()?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            },
            segments: self.segments.into_iter().map(str::to_owned).collect(),
            recent: self
                .recent
                .into_iter()
                .map(StoredEvent::into_event)
                .collect::<Result<_, _>>()?,
            seen: self.seen.into_iter().map(str::to_owned).collect(),
            next_wake: self.next_wake.map(Time::at).transpose()?,
            journeys: JourneyRecord::default(),
            items: ItemHistory::default(),
        })
    }
}

/// An instant to the nanosecond, as seconds since 1970 and nanoseconds.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Time(i64, u32);

impl From<&DateTime<Utc>> for Time {
    fn from(at: &DateTime<Utc>) -> Self {
        Time(at.timestamp(), at.timestamp_subsec_nanos())
    }
}

impl Time {
    fn at(self) -> Result<DateTime<Utc>, String> {
        DateTime::from_timestamp(self.0, self.1)
            .ok_or_else(|| format!("time {} out of range", self.0))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredEvent<'a> {
    event: &'a str,
    #[serde(borrow)]
    properties: Vec<(&'a str, Scalar<'a>)>,
    timestamp: Time,
}

impl<'a> From<&'a Event> for StoredEvent<'a> {
    fn from(e: &'a Event) -> Self {
        StoredEvent {
            event: &e.event,
            properties: e
                .properties
                .iter()
                .map(|(k, v)| (k.as_str(), Scalar::from(v)))
                .collect(),
            timestamp: Time::from(&e.timestamp),
        }
    }
}

impl StoredEvent<'_> {
    fn into_event(self) -> Result<Event, String> {
        let mut properties = Map::new();
        for (key, value) in self.properties {
            properties.insert(key.to_owned(), value.into_value()?);
        }
        Ok(Event {
            event: self.event.to_owned(),
            properties,
            timestamp: self.timestamp.at()?,
        })
    }
}

/// A property value of a recent event. Recent events keep scalars only; anything else is kept
/// as its JSON text, so nothing is lost.
#[derive(Serialize, Deserialize)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Text(&'a str),
    Json(String),
}

impl<'a> From<&'a Value> for Scalar<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Scalar::Int(i),
                (None, Some(u), _) => Scalar::Unsigned(u),
                (None, None, Some(f)) => Scalar::Float(f),
                _ => Scalar::Json(n.to_string()),
            },
            Value::String(text) => Scalar::Text(text),
            other => Scalar::Json(other.to_string()),
        }
    }
}

impl Scalar<'_> {
    fn into_value(self) -> Result<Value, String> {
        Ok(match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::from(i),
            Scalar::Unsigned(u) => Value::from(u),
            Scalar::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Scalar::Text(text) => Value::String(text.to_owned()),
            Scalar::Json(text) => serde_json::from_str(&text).map_err(|e| e.to_string())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(seconds: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + seconds, nanos).unwrap()
    }

    /// Every field set, with values of every kind.
    fn full() -> PersonRecord {
        let properties = |v: Value| v.as_object().unwrap().clone();
        PersonRecord {
            state: PersonState {
                occurrences: [
                    (
                        "product_viewed".to_owned(),
                        vec![at(30, 123_456_789), at(2, 0)],
                    ),
                    ("purchase|item_id=sku-1".to_owned(), vec![at(1, 1)]),
                ]
                .into(),
                last_seen: [
                    ("product_viewed".to_owned(), at(30, 123_456_789)),
                    ("purchase".to_owned(), at(1, 1)),
                ]
                .into(),
                recently_viewed: vec![
                    ViewedItem {
                        item_id: "sku-7".into(),
                        at: at(30, 123_456_789),
                    },
                    ViewedItem {
                        item_id: "상품-1".into(),
                        at: at(2, 0),
                    },
                ],
            },
            segments: ["browsers".to_owned(), "vip".to_owned()].into(),
            recent: vec![
                Event {
                    event: "product_viewed".into(),
                    properties: properties(json!({
                        "item_id": "sku-7", "price": 12900, "big": u64::MAX, "ratio": 0.25,
                        "negative": -3, "gift": false, "note": null, "nested": {"a": [1, 2]},
                    })),
                    timestamp: at(30, 123_456_789),
                },
                Event {
                    event: "ump.segment_entered".into(),
                    properties: properties(json!({"segment_id": "vip"})),
                    timestamp: at(-86_400 * 400, 999_999_999),
                },
            ],
            seen: vec!["m-2".into(), "m-1".into()],
            next_wake: Some(at(86_400 * 7, 5)),
            journeys: JourneyRecord::default(),
            items: ItemHistory::default(),
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let record = full();
        assert_eq!(decode(&encode(&record).unwrap()).unwrap(), record);
        let empty = PersonRecord::default();
        assert_eq!(decode(&encode(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn a_person_inside_a_journey_keeps_it_in_the_second_form() {
        use ump_automation::journey::{Entries, Instance, Past, Sent};
        let mut record = full();
        record.journeys = JourneyRecord {
            inside: vec![Instance {
                journey: "viewed-not-bought".into(),
                version: 2,
                entry: 1,
                entered_at: at(1, 5),
                step: "wait".into(),
                since: at(1, 5),
                seq: 1,
                until: Some(at(301, 5)),
                context: json!({"item_id": "sku-1", "price": 12900})
                    .as_object()
                    .cloned()
                    .unwrap(),
                arm: Some("a".into()),
            }],
            entries: [(
                "viewed-not-bought".to_owned(),
                Entries {
                    count: 1,
                    last: at(1, 5),
                },
            )]
            .into(),
            sent: vec![Sent {
                at: at(0, 0),
                channel: "sms".into(),
            }],
            past: vec![Past {
                journey: "welcome".into(),
                version: 1,
                entry: 1,
                entered_at: at(0, 0),
                left_at: at(0, 7),
                step: "tips".into(),
                converted: true,
            }],
        };
        let bytes = encode(&record).unwrap();
        assert_eq!(bytes[0], WITH_JOURNEYS);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(encode(&full()).unwrap()[0], VERSION, "no journeys, no cost");
    }

    #[test]
    fn a_person_with_an_item_history_keeps_it_in_the_third_form() {
        use ump_automation::recommend::Seen;
        let seen = |item: &str, at| Seen {
            item: item.into(),
            at,
        };
        let mut record = full();
        record.items = ItemHistory {
            views: vec![seen("sku-7", at(30, 123_456_789)), seen("상품-1", at(2, 0))],
            purchases: vec![seen("sku-7", at(31, 0))],
        };
        let bytes = encode(&record).unwrap();
        assert_eq!(bytes[0], WITH_ITEMS);
        assert_eq!(decode(&bytes).unwrap(), record);
        // With journeys as well.
        record.journeys.sent = vec![ump_automation::journey::Sent {
            at: at(0, 0),
            channel: "sms".into(),
        }];
        let bytes = encode(&record).unwrap();
        assert_eq!(bytes[0], WITH_ITEMS);
        assert_eq!(decode(&bytes).unwrap(), record);
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
    }

    #[test]
    fn records_stored_as_json_are_still_read() {
        let record = full();
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(decode(&json).unwrap(), record);
        assert_eq!(decode(b"{}").unwrap(), PersonRecord::default());
    }

    #[test]
    fn the_binary_form_is_much_smaller_than_json() {
        let record = full();
        let binary = encode(&record).unwrap().len();
        let json = serde_json::to_vec(&record).unwrap().len();
        assert!(binary * 2 < json, "{binary} bytes binary, {json} JSON");
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        let bytes = encode(&full()).unwrap();
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[7, 1, 2]).is_err());
        assert!(decode(&bytes[..bytes.len() / 2]).is_err());
    }
}

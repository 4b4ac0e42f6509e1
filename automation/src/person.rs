//! Everything the processor keeps of one person besides their profile, and the step that folds
//! one input in: the event counted (once, even when the client sends it again), segment
//! membership re-evaluated, and the moment to look again set. A pure function of the record, the
//! profile, the input, the tenant's segments and `now`.

use crate::event::{Input, SEGMENT_ENTERED, SEGMENT_LEFT};
use crate::journey::{Happening, JourneyOutput, JourneyRecord, JourneySet, Subject};
use crate::profile::Profile;
use crate::recommend::{ItemChanges, ItemEvents, ItemHistory};
use crate::segment::{Person, SegmentSet};
use crate::state::{Event, PersonState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// How many recent events a person's record shows (`GET /v1/users/{id}`). The record is
/// rewritten with every event, so what it carries is paid for on every write.
pub const RECENT_EVENTS: usize = 10;
/// Of a recent event's properties: how many are kept, and how long a text may be.
pub const RECENT_PROPERTIES: usize = 8;
pub const RECENT_TEXT: usize = 100;
/// How many client message ids a record remembers to count a repeated event once.
pub const SEEN_IDS: usize = 100;
/// Which events view and buy items (`product_viewed`, `purchase`, by `item_id`).
static ITEM_EVENTS: std::sync::LazyLock<ItemEvents> = std::sync::LazyLock::new(ItemEvents::default);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonRecord {
    #[serde(default)]
    pub state: PersonState,
    /// The segments the person is in.
    #[serde(default)]
    pub segments: BTreeSet<String>,
    /// Newest first: the person's events and their segment entries and exits.
    #[serde(default)]
    pub recent: Vec<Event>,
    /// Client message ids of the newest events, newest first.
    #[serde(default)]
    pub seen: Vec<String>,
    /// When time alone could change a membership or move a journey: look at the person again
    /// then.
    #[serde(default)]
    pub next_wake: Option<DateTime<Utc>>,
    /// The journeys the person is in, and what they entered and were sent before.
    #[serde(default)]
    pub journeys: JourneyRecord,
    /// The items the person viewed and bought, for recommendations.
    #[serde(default)]
    pub items: ItemHistory,
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// The event was folded in (false: a repeat of a message id already counted, or a recheck).
    pub counted: bool,
    pub entered: Vec<String>,
    pub left: Vec<String>,
    /// The journeys' sends and counts.
    pub journeys: JourneyOutput,
    /// What the event adds to the tenant's item counts (a view or purchase of an item).
    pub items: ItemChanges,
}

impl PersonRecord {
    /// Folds `input` into the record of the person `profile` describes, at `now`: segments
    /// first, then the journeys (which see the segments just entered).
    pub fn step(
        &mut self,
        profile: &Profile,
        input: &Input,
        segments: &SegmentSet,
        journeys: &JourneySet,
        now: DateTime<Utc>,
    ) -> Step {
        let mut step = Step::default();
        match input {
            Input::Event { event, message_id } => {
                if let Some(id) = message_id {
                    if self.seen.contains(id) {
                        return step;
                    }
                    self.seen.insert(0, id.clone());
                    self.seen.truncate(SEEN_IDS);
                }
                self.state.apply(event, segments.tracking(), now);
                self.remember(Event {
                    event: event.event.clone(),
                    properties: summary(&event.properties),
                    timestamp: event.timestamp,
                });
                if let Some(observed) = ITEM_EVENTS.read(event) {
                    step.items.record(&mut self.items, &observed);
                }
                step.counted = true;
            }
            Input::Recheck => self.state.trim(segments.tracking(), now),
        }
        let change = segments.update(
            &mut self.segments,
            &Person {
                profile,
                state: &self.state,
            },
            now,
        );
        for (name, ids) in [
            (SEGMENT_ENTERED, &change.entered),
            (SEGMENT_LEFT, &change.left),
        ] {
            for id in ids {
                let mut properties = Map::new();
                properties.insert("segment_id".into(), Value::String(id.clone()));
                self.remember(Event {
                    event: name.into(),
                    properties,
                    timestamp: now,
                });
            }
        }
        if !journeys.is_empty() || !self.journeys.inside.is_empty() {
            let subject = Subject {
                profile,
                state: &self.state,
                segments: &self.segments,
            };
            let mut out = match input {
                Input::Event { event, .. } => {
                    self.journeys
                        .step(journeys, &subject, Happening::Event(event), now)
                }
                Input::Recheck => self.journeys.step(journeys, &subject, Happening::Time, now),
            };
            if !change.entered.is_empty() {
                let more = self.journeys.step(
                    journeys,
                    &subject,
                    Happening::Entered(&change.entered),
                    now,
                );
                out.sends.extend(more.sends);
                out.stats.extend(more.stats);
            }
            step.journeys = out;
        }
        self.next_wake = match (change.next_change, self.journeys.next_wake(journeys)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        step.entered = change.entered;
        step.left = change.left;
        step
    }

    fn remember(&mut self, event: Event) {
        let at = self
            .recent
            .partition_point(|e| e.timestamp > event.timestamp);
        self.recent.insert(at, event);
        self.recent.truncate(RECENT_EVENTS);
    }
}

/// What a recent event keeps of its properties: the first `RECENT_PROPERTIES` of the scalar
/// ones, texts cut to `RECENT_TEXT` characters (the whole event went to the segments already).
fn summary(properties: &Map<String, Value>) -> Map<String, Value> {
    properties
        .iter()
        .filter(|(_, v)| !(v.is_object() || v.is_array()))
        .take(RECENT_PROPERTIES)
        .map(|(k, v)| {
            let v = match v {
                Value::String(text) if text.chars().count() > RECENT_TEXT => {
                    Value::String(text.chars().take(RECENT_TEXT).collect::<String>() + "…")
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::JourneySet;
    use crate::segment::Segment;
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
    }

    fn segments(defs: Value) -> SegmentSet {
        let list: Vec<Segment> = serde_json::from_value(defs).unwrap();
        SegmentSet::new(list).unwrap()
    }

    fn viewed(item: &str, at: DateTime<Utc>, id: Option<&str>) -> Input {
        Input::Event {
            event: Event {
                event: "product_viewed".into(),
                properties: json!({"item_id": item}).as_object().cloned().unwrap(),
                timestamp: at,
            },
            message_id: id.map(str::to_owned),
        }
    }

    fn browsers() -> SegmentSet {
        segments(json!([{"id": "browsers", "condition":
            {"performed": {"event": "product_viewed", "at_least": 2, "within": "1h"}}}]))
    }

    #[test]
    fn views_go_into_the_item_history_and_the_tenants_counts_once() {
        let profile = Profile {
            user_id: "u-1".into(),
            ..Profile::default()
        };
        let none = SegmentSet::default();
        let journeys = JourneySet::default();
        let mut record = PersonRecord::default();
        let first = record.step(
            &profile,
            &viewed("a", t0(), Some("m-1")),
            &none,
            &journeys,
            t0(),
        );
        assert_eq!(first.items.people.get("a"), Some(&1));
        let later = t0() + Duration::minutes(1);
        let second = record.step(&profile, &viewed("b", later, None), &none, &journeys, later);
        assert_eq!(
            second.items.pairs.keys().collect::<Vec<_>>(),
            [&("a".to_owned(), "b".to_owned())]
        );
        // The same event again (its message id) changes nothing; nor does a recheck.
        let again = record.step(
            &profile,
            &viewed("a", t0(), Some("m-1")),
            &none,
            &journeys,
            later,
        );
        assert!(!again.counted && again.items.is_empty());
        let recheck = record.step(&profile, &Input::Recheck, &none, &journeys, later);
        assert!(recheck.items.is_empty());
        let seen: Vec<&str> = record.items.views.iter().map(|s| s.item.as_str()).collect();
        assert_eq!(seen, ["b", "a"]);
    }

    #[test]
    fn an_event_moves_a_person_into_a_segment_and_time_moves_them_out() {
        let segments = browsers();
        let profile = Profile {
            user_id: "u-1".into(),
            ..Profile::default()
        };
        let mut record = PersonRecord::default();
        let first = record.step(
            &profile,
            &viewed("a", t0(), None),
            &segments,
            &JourneySet::default(),
            t0(),
        );
        assert!(first.counted && first.entered.is_empty());
        let later = t0() + Duration::minutes(10);
        let second = record.step(
            &profile,
            &viewed("b", later, None),
            &segments,
            &JourneySet::default(),
            later,
        );
        assert_eq!(second.entered, ["browsers"]);
        assert!(record.segments.contains("browsers"));
        // The first view leaves the hour at 10:00: that is when to look again.
        assert_eq!(record.next_wake, Some(t0() + Duration::hours(1)));
        let wake = record.next_wake.unwrap();
        let recheck = record.step(
            &profile,
            &Input::Recheck,
            &segments,
            &JourneySet::default(),
            wake,
        );
        assert_eq!(recheck.left, ["browsers"]);
        assert!(!recheck.counted);
        assert!(record.segments.is_empty());
        // The entry and the exit are in the record's recent events, newest first.
        let names: Vec<&str> = record.recent.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names,
            [
                SEGMENT_LEFT,
                SEGMENT_ENTERED,
                "product_viewed",
                "product_viewed"
            ]
        );
        assert_eq!(record.recent[0].properties["segment_id"], "browsers");
    }

    /// An event folded a moment before its own time (the processor's clock read before the
    /// event was accepted, or a device clock ahead) counts from its time on: the person is looked
    /// at again then, not left out until some other event comes.
    #[test]
    fn an_event_timed_after_now_makes_a_member_when_its_time_comes() {
        let viewers = segments(json!([{"id": "viewers", "condition":
            {"performed": {"event": "product_viewed", "within": "1d"}}}]));
        let profile = Profile::default();
        let mut record = PersonRecord::default();
        let ahead = t0() + Duration::milliseconds(4);
        let step = record.step(
            &profile,
            &viewed("a", ahead, None),
            &viewers,
            &JourneySet::default(),
            t0(),
        );
        assert!(step.counted && step.entered.is_empty());
        assert_eq!(record.next_wake, Some(ahead));
        let recheck = record.step(
            &profile,
            &Input::Recheck,
            &viewers,
            &JourneySet::default(),
            ahead,
        );
        assert_eq!(recheck.entered, ["viewers"]);
        assert_eq!(record.next_wake, Some(ahead + Duration::days(1)));
    }

    #[test]
    fn an_event_sent_again_with_its_message_id_is_counted_once() {
        let segments = browsers();
        let profile = Profile::default();
        let mut record = PersonRecord::default();
        let event = viewed("a", t0(), Some("evt-1"));
        assert!(
            record
                .step(&profile, &event, &segments, &JourneySet::default(), t0())
                .counted
        );
        let again = record.step(&profile, &event, &segments, &JourneySet::default(), t0());
        assert_eq!(again, Step::default());
        assert!(record.segments.is_empty(), "one view is not two");
        assert_eq!(record.recent.len(), 1);
        // Memory of ids is bounded.
        for i in 0..(SEEN_IDS + 10) {
            let id = format!("evt-{}", i + 2);
            record.step(
                &profile,
                &viewed("x", t0(), Some(&id)),
                &segments,
                &JourneySet::default(),
                t0(),
            );
        }
        assert_eq!(record.seen.len(), SEEN_IDS);
        assert_eq!(record.recent.len(), RECENT_EVENTS);
    }

    #[test]
    fn a_profile_change_is_seen_at_the_next_recheck() {
        let segments = segments(json!([{"id": "vip", "condition":
            {"trait": {"path": "tier", "equals": "vip"}}}]));
        let mut profile = Profile::default();
        let mut record = PersonRecord::default();
        assert!(
            record
                .step(
                    &profile,
                    &Input::Recheck,
                    &segments,
                    &JourneySet::default(),
                    t0()
                )
                .entered
                .is_empty()
        );
        profile.traits.insert("tier".into(), json!("vip"));
        let step = record.step(
            &profile,
            &Input::Recheck,
            &segments,
            &JourneySet::default(),
            t0(),
        );
        assert_eq!(step.entered, ["vip"]);
        assert_eq!(record.next_wake, None, "nothing time-bound");
        // A segment deleted from the tenant is left.
        let none = SegmentSet::new(Vec::new()).unwrap();
        assert_eq!(
            record
                .step(
                    &profile,
                    &Input::Recheck,
                    &none,
                    &JourneySet::default(),
                    t0()
                )
                .left,
            ["vip"]
        );
    }

    #[test]
    fn recent_events_keep_a_summary_of_their_properties() {
        let mut properties = Map::new();
        for i in 0..12 {
            properties.insert(format!("p{i:02}"), json!(i));
        }
        properties.insert("a-long".into(), json!("x".repeat(500)));
        properties.insert("a-nested".into(), json!({"deep": [1, 2, 3]}));
        let input = Input::Event {
            event: Event {
                event: "product_viewed".into(),
                properties,
                timestamp: t0(),
            },
            message_id: None,
        };
        let mut record = PersonRecord::default();
        record.step(
            &Profile::default(),
            &input,
            &browsers(),
            &JourneySet::default(),
            t0(),
        );
        let kept = &record.recent[0].properties;
        assert_eq!(kept.len(), RECENT_PROPERTIES);
        assert!(!kept.contains_key("a-nested"));
        assert_eq!(
            kept["a-long"].as_str().unwrap().chars().count(),
            RECENT_TEXT + 1
        );
    }

    #[test]
    fn records_read_back_from_their_stored_form() {
        let mut record = PersonRecord::default();
        record.step(
            &Profile::default(),
            &viewed("a", t0(), Some("m")),
            &browsers(),
            &JourneySet::default(),
            t0(),
        );
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<PersonRecord>(&text).unwrap(), record);
        assert_eq!(
            serde_json::from_str::<PersonRecord>("{}").unwrap(),
            PersonRecord::default()
        );
    }
}

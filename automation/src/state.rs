//! What a person did, kept incrementally as their events arrive: for each event pattern a
//! tenant's segments ask about (an event name and property filters), the times of its most recent
//! occurrences, as many as the most demanding condition needs and no older than its longest
//! window; the last time of every event; the items they viewed most recently. `apply` folds one
//! event in; nothing here depends on when it runs except through `now`.

use crate::Window;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How many recently viewed items a person's state keeps.
pub const RECENTLY_VIEWED: usize = 50;
/// The event whose `item_id` property feeds `recently_viewed`.
pub const VIEW_EVENT: &str = "product_viewed";

/// A behaviour event as the processor hands it over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    pub timestamp: DateTime<Utc>,
}

/// An event name with property filters (each property equal to the given value).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventPattern {
    pub event: String,
    pub filters: BTreeMap<String, String>,
}

impl EventPattern {
    /// Filters are compared with the property's JSON text when it is not a string, so
    /// `{"qty": "2"}` matches `"qty": 2`.
    pub fn new(event: &str, filters: &Map<String, Value>) -> Self {
        Self {
            event: event.to_owned(),
            filters: filters.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        }
    }

    /// The pattern's name in a person's state: stable, readable.
    pub fn key(&self) -> String {
        let mut key = self.event.clone();
        for (name, value) in &self.filters {
            key.push('|');
            key.push_str(name);
            key.push('=');
            key.push_str(value);
        }
        key
    }

    pub fn matches(&self, event: &Event) -> bool {
        event.event == self.event
            && self
                .filters
                .iter()
                .all(|(name, value)| event.properties.get(name).map(text).as_deref() == Some(value))
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What to keep of one pattern: its last `keep` occurrences within `horizon`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub pattern: EventPattern,
    pub keep: usize,
    pub horizon: Window,
}

/// The patterns a tenant's segments need, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracking(pub BTreeMap<String, Tracked>);

impl Tracking {
    /// Asks for `keep` occurrences of `pattern` within `horizon`; several asks of one pattern
    /// keep the most of each.
    pub fn ask(&mut self, pattern: EventPattern, keep: usize, horizon: Window) {
        let entry = self.0.entry(pattern.key()).or_insert_with(|| Tracked {
            pattern,
            keep: 0,
            horizon: Window::default(),
        });
        entry.keep = entry.keep.max(keep);
        entry.horizon = entry.horizon.max(horizon);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewedItem {
    pub item_id: String,
    pub at: DateTime<Utc>,
}

/// A person's behaviour as the segments see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonState {
    /// Per tracked pattern key: occurrence times, newest first.
    #[serde(default)]
    pub occurrences: BTreeMap<String, Vec<DateTime<Utc>>>,
    /// Per event name: when it last happened.
    #[serde(default)]
    pub last_seen: BTreeMap<String, DateTime<Utc>>,
    /// Newest first, each item once.
    #[serde(default)]
    pub recently_viewed: Vec<ViewedItem>,
}

impl PersonState {
    /// Folds `event` in. Events may arrive out of order (a phone that was offline): each lands
    /// where its time puts it.
    pub fn apply(&mut self, event: &Event, tracking: &Tracking, now: DateTime<Utc>) {
        let last = self
            .last_seen
            .entry(event.event.clone())
            .or_insert(event.timestamp);
        *last = (*last).max(event.timestamp);
        for (key, tracked) in &tracking.0 {
            if tracked.pattern.matches(event) {
                let times = self.occurrences.entry(key.clone()).or_default();
                let at = times.partition_point(|t| *t > event.timestamp);
                times.insert(at, event.timestamp);
            }
        }
        if event.event == VIEW_EVENT
            && let Some(item) = event.properties.get("item_id").map(text)
        {
            self.recently_viewed.retain(|v| v.item_id != item);
            let at = self
                .recently_viewed
                .partition_point(|v| v.at > event.timestamp);
            self.recently_viewed.insert(
                at,
                ViewedItem {
                    item_id: item,
                    at: event.timestamp,
                },
            );
            self.recently_viewed.truncate(RECENTLY_VIEWED);
        }
        self.trim(tracking, now);
    }

    /// Drops what no segment can ask about any more: occurrences beyond what is kept or older
    /// than the horizon, patterns no longer tracked.
    pub fn trim(&mut self, tracking: &Tracking, now: DateTime<Utc>) {
        self.occurrences.retain(|key, times| {
            let Some(tracked) = tracking.0.get(key) else {
                return false;
            };
            let oldest = now - tracked.horizon.span();
            times.truncate(tracked.keep);
            times.retain(|t| *t > oldest);
            !times.is_empty()
        });
    }

    /// Occurrences of `pattern` in `(now - within, now]`, counting at most `cap`.
    pub fn count_within(
        &self,
        pattern: &EventPattern,
        within: Window,
        now: DateTime<Utc>,
        cap: usize,
    ) -> usize {
        let since = now - within.span();
        self.occurrences.get(&pattern.key()).map_or(0, |times| {
            times
                .iter()
                .filter(|t| **t > since && **t <= now)
                .take(cap)
                .count()
        })
    }

    /// When the count of `pattern` within `within` next changes by time alone, if it can: a
    /// counted occurrence leaves the window, or one timed after `now` enters it (a device clock
    /// ahead, or an event folded a moment before its own time).
    pub fn next_count_change(
        &self,
        pattern: &EventPattern,
        within: Window,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let since = now - within.span();
        self.occurrences
            .get(&pattern.key())?
            .iter()
            .filter_map(|t| {
                if *t > now {
                    Some(*t)
                } else {
                    (*t > since).then(|| *t + within.span())
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    }

    fn event(name: &str, props: Value, at: DateTime<Utc>) -> Event {
        Event {
            event: name.into(),
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp: at,
        }
    }

    fn purchases(keep: usize) -> (EventPattern, Tracking) {
        let pattern = EventPattern::new("purchase", &Map::new());
        let mut tracking = Tracking::default();
        tracking.ask(pattern.clone(), keep, "7d".parse().unwrap());
        (pattern, tracking)
    }

    #[test]
    fn occurrences_are_counted_within_their_window() {
        let (pattern, tracking) = purchases(5);
        let mut state = PersonState::default();
        for days in [0, 2, 5] {
            let at = t0() + Duration::days(days);
            state.apply(&event("purchase", json!({}), at), &tracking, at);
        }
        let week: Window = "7d".parse().unwrap();
        let now = t0() + Duration::days(6);
        assert_eq!(state.count_within(&pattern, week, now, 10), 3);
        // The first leaves the window at day 7.
        assert_eq!(
            state.next_count_change(&pattern, week, now),
            Some(t0() + Duration::days(7))
        );
        let later = t0() + Duration::days(8);
        assert_eq!(state.count_within(&pattern, week, later, 10), 2);
        assert_eq!(
            state.count_within(&pattern, "1d".parse().unwrap(), later, 10),
            0
        );
    }

    #[test]
    fn an_occurrence_timed_after_now_counts_from_its_time_on() {
        let (pattern, tracking) = purchases(5);
        let mut state = PersonState::default();
        let ahead = t0() + Duration::milliseconds(3);
        state.apply(&event("purchase", json!({}), ahead), &tracking, t0());
        let week: Window = "7d".parse().unwrap();
        assert_eq!(state.count_within(&pattern, week, t0(), 10), 0);
        assert_eq!(state.next_count_change(&pattern, week, t0()), Some(ahead));
        assert_eq!(state.count_within(&pattern, week, ahead, 10), 1);
        assert_eq!(
            state.next_count_change(&pattern, week, ahead),
            Some(ahead + Duration::days(7))
        );
    }

    #[test]
    fn state_keeps_only_what_segments_ask_for() {
        let (pattern, tracking) = purchases(2);
        let mut state = PersonState::default();
        for hours in 0..5 {
            let at = t0() + Duration::hours(hours);
            state.apply(&event("purchase", json!({}), at), &tracking, at);
        }
        assert_eq!(
            state.occurrences[&pattern.key()].len(),
            2,
            "only the newest two"
        );
        assert_eq!(
            state.occurrences[&pattern.key()][0],
            t0() + Duration::hours(4)
        );
        // Past the horizon they go entirely; untracked patterns go too.
        state.trim(&tracking, t0() + Duration::days(30));
        assert!(state.occurrences.is_empty());
        // The last time of every event is kept regardless.
        assert_eq!(state.last_seen["purchase"], t0() + Duration::hours(4));
    }

    #[test]
    fn late_events_land_in_time_order_and_filters_compare_text() {
        let pattern = EventPattern::new("purchase", json!({"item_id": 42}).as_object().unwrap());
        let mut tracking = Tracking::default();
        tracking.ask(pattern.clone(), 3, "30d".parse().unwrap());
        let mut state = PersonState::default();
        let now = t0() + Duration::days(3);
        state.apply(
            &event(
                "purchase",
                json!({"item_id": "42"}),
                t0() + Duration::days(2),
            ),
            &tracking,
            now,
        );
        state.apply(
            &event("purchase", json!({"item_id": 42}), t0()),
            &tracking,
            now,
        );
        state.apply(
            &event("purchase", json!({"item_id": 7}), t0() + Duration::days(1)),
            &tracking,
            now,
        );
        assert_eq!(
            state.occurrences[&pattern.key()],
            vec![t0() + Duration::days(2), t0()]
        );
        assert_eq!(state.last_seen["purchase"], t0() + Duration::days(2));
        assert_eq!(pattern.key(), "purchase|item_id=42");
    }

    #[test]
    fn recently_viewed_items_are_newest_first_and_unique() {
        let tracking = Tracking::default();
        let mut state = PersonState::default();
        for (i, item) in ["a", "b", "a", "c"].iter().enumerate() {
            let at = t0() + Duration::minutes(i as i64);
            state.apply(
                &event(VIEW_EVENT, json!({"item_id": item}), at),
                &tracking,
                at,
            );
        }
        let items: Vec<&str> = state
            .recently_viewed
            .iter()
            .map(|v| v.item_id.as_str())
            .collect();
        assert_eq!(items, ["c", "a", "b"]);
        for i in 0..100 {
            let at = t0() + Duration::hours(1) + Duration::minutes(i);
            state.apply(&event(VIEW_EVENT, json!({"item_id": i}), at), &tracking, at);
        }
        assert_eq!(state.recently_viewed.len(), RECENTLY_VIEWED);
        assert_eq!(state.recently_viewed[0].item_id, "99");
    }
}

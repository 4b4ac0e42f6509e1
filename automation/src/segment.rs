//! Segments: who is in them, decided from a person's profile and state at `now`. A segment is a
//! boolean tree (`all`, `any`, `not`) over trait conditions, event conditions (performed at least
//! or at most N times within a window, last performed longer ago than a span), consent, a stable
//! random bucket (for holdouts) and membership of another segment. The same definition is JSON in
//! the API and YAML in a file:
//!
//! ```yaml
//! id: vip-buyers
//! name: VIP customers who bought this month
//! condition:
//!   all:
//!     - trait: {path: tier, equals: vip}
//!     - performed: {event: purchase, at_least: 1, within: 30d}
//! ```
//!
//! Membership is kept incrementally by the processor: `Membership::update` after each event or
//! profile change, and again at `next_change`, the moment a time window could flip it.

use crate::profile::{ChannelKind, Profile, Purpose};
use crate::state::{EventPattern, PersonState, Tracking};
use crate::{FieldError, Window};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Nesting deeper than this is refused (and is no segment anyone could read).
pub const MAX_DEPTH: usize = 16;
/// The largest N of `at_least` / `at_most`: a person's state keeps that many times per pattern.
pub const MAX_COUNT: u32 = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Lowercase letters, digits and dashes; unique in the tenant.
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub condition: Condition,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Trait(TraitCondition),
    Performed(Performed),
    LastPerformed(LastPerformed),
    Consent(ConsentCondition),
    /// In `[from, to)` of 100 buckets, by a stable hash of the segment and the person.
    Bucket(Bucket),
    InSegment(String),
}

/// A trait (a dotted path into the traits) compared with every operator given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraitCondition {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    /// The trait is a date (RFC 3339) no longer ago than this (and not in the future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Window>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Performed {
    pub event: String,
    /// Properties the event must have, each equal to the value given.
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub filters: Map<String, Value>,
    /// At least this many times (1 when neither bound is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<u32>,
    /// At most this many times (`at_most: 0`: not performed within the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<u32>,
    pub within: Window,
}

/// Performed at least once, and the last time longer ago than `older_than` (a lapsed buyer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastPerformed {
    pub event: String,
    pub older_than: Window,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentCondition {
    pub channel: ChannelKind,
    #[serde(default = "marketing")]
    pub purpose: Purpose,
}

fn marketing() -> Purpose {
    Purpose::Marketing
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub from: u8,
    pub to: u8,
}

impl Performed {
    fn pattern(&self) -> EventPattern {
        EventPattern::new(&self.event, &self.filters)
    }

    fn bounds(&self) -> (u32, Option<u32>) {
        match (self.at_least, self.at_most) {
            (None, None) => (1, None),
            (least, most) => (least.unwrap_or(0), most),
        }
    }
}

/// A person as segments see them.
pub struct Person<'a> {
    pub profile: &'a Profile,
    pub state: &'a PersonState,
}

/// The bucket (0–99) of a person in a segment: FNV-1a of `segment/user`, the same on every
/// machine and in every version.
pub fn bucket_of(segment: &str, user_id: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in segment.bytes().chain([b'/']).chain(user_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % 100) as u8
}

pub(crate) fn lookup<'v>(traits: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut value = traits.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

impl TraitCondition {
    fn holds(&self, traits: &Map<String, Value>, now: DateTime<Utc>) -> bool {
        let value = lookup(traits, &self.path).filter(|v| !v.is_null());
        if let Some(wanted) = self.exists
            && wanted != value.is_some()
        {
            return false;
        }
        let Some(value) = value else {
            // Only `exists: false` (checked above) holds for a missing trait.
            return self.exists == Some(false);
        };
        if self.equals.as_ref().is_some_and(|want| want != value) {
            return false;
        }
        if self.one_of.as_ref().is_some_and(|set| !set.contains(value)) {
            return false;
        }
        let number = value.as_f64();
        let compare = |bound: Option<f64>, ok: fn(f64, f64) -> bool| {
            bound.is_none_or(|b| number.is_some_and(|n| ok(n, b)))
        };
        if !(compare(self.gt, |n, b| n > b)
            && compare(self.gte, |n, b| n >= b)
            && compare(self.lt, |n, b| n < b)
            && compare(self.lte, |n, b| n <= b))
        {
            return false;
        }
        if let Some(within) = self.within {
            let Some(at) = date(value) else {
                return false;
            };
            return at <= now && at > now - within.span();
        }
        true
    }

    fn operators(&self) -> usize {
        [
            self.equals.is_some(),
            self.one_of.is_some(),
            self.exists.is_some(),
            self.gt.is_some(),
            self.gte.is_some(),
            self.lt.is_some(),
            self.lte.is_some(),
            self.within.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

pub(crate) fn date(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

impl Condition {
    /// Whether the condition holds for `person` at `now`; `member` answers `in_segment`.
    pub fn holds(
        &self,
        segment: &str,
        person: &Person<'_>,
        now: DateTime<Utc>,
        member: &dyn Fn(&str) -> bool,
    ) -> bool {
        match self {
            Condition::All(all) => all.iter().all(|c| c.holds(segment, person, now, member)),
            Condition::Any(any) => any.iter().any(|c| c.holds(segment, person, now, member)),
            Condition::Not(inner) => !inner.holds(segment, person, now, member),
            Condition::Trait(t) => t.holds(&person.profile.traits, now),
            Condition::Performed(p) => {
                let (least, most) = p.bounds();
                let cap = most.map_or(least, |m| m + 1).max(least) as usize;
                let count = person.state.count_within(&p.pattern(), p.within, now, cap);
                count >= least as usize && most.is_none_or(|m| count <= m as usize)
            }
            Condition::LastPerformed(l) => person
                .state
                .last_seen
                .get(&l.event)
                .is_some_and(|last| *last <= now - l.older_than.span()),
            Condition::Consent(c) => person
                .profile
                .consent(c.purpose, c.channel)
                .is_some_and(|consent| consent.granted),
            Condition::Bucket(b) => {
                let bucket = bucket_of(segment, &person.profile.user_id);
                b.from <= bucket && bucket < b.to
            }
            Condition::InSegment(other) => member(other),
        }
    }

    /// The earliest moment after `now` at which the passage of time alone could change whether
    /// the condition holds (a counted occurrence leaves its window or one timed after `now`
    /// enters it, a date trait ages out, a last occurrence becomes old enough), if any. It may be early (nothing changes then), never late.
    pub fn next_change(&self, person: &Person<'_>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let later = |at: DateTime<Utc>| (at > now).then_some(at);
        match self {
            Condition::All(cs) | Condition::Any(cs) => {
                cs.iter().filter_map(|c| c.next_change(person, now)).min()
            }
            Condition::Not(inner) => inner.next_change(person, now),
            Condition::Trait(t) => {
                let within = t.within?;
                let at = date(lookup(&person.profile.traits, &t.path)?)?;
                // It enters when the date comes (a future date) and leaves when it ages out.
                later(at).or_else(|| later(at + within.span()))
            }
            Condition::Performed(p) => person.state.next_count_change(&p.pattern(), p.within, now),
            Condition::LastPerformed(l) => {
                later(*person.state.last_seen.get(&l.event)? + l.older_than.span())
            }
            Condition::Consent(_) | Condition::Bucket(_) | Condition::InSegment(_) => None,
        }
    }

    /// Adds the event patterns the condition counts to `tracking`.
    pub fn track(&self, tracking: &mut Tracking) {
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| c.track(tracking)),
            Condition::Not(inner) => inner.track(tracking),
            Condition::Performed(p) => {
                let (least, most) = p.bounds();
                let keep = most.map_or(least, |m| m + 1).max(least).max(1);
                tracking.ask(p.pattern(), keep as usize, p.within);
            }
            _ => {}
        }
    }

    fn references<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| c.references(out)),
            Condition::Not(inner) => inner.references(out),
            Condition::InSegment(other) => out.push(other),
            _ => {}
        }
    }

    pub(crate) fn validate(&self, field: &str, depth: usize, errors: &mut Vec<FieldError>) {
        if depth > MAX_DEPTH {
            errors.push(FieldError::new(
                field,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
            return;
        }
        match self {
            Condition::All(cs) | Condition::Any(cs) => {
                let kind = if matches!(self, Condition::All(_)) {
                    "all"
                } else {
                    "any"
                };
                if cs.is_empty() {
                    errors.push(FieldError::new(
                        format!("{field}.{kind}"),
                        "needs at least one condition",
                    ));
                }
                for (i, c) in cs.iter().enumerate() {
                    c.validate(&format!("{field}.{kind}[{i}]"), depth + 1, errors);
                }
            }
            Condition::Not(inner) => inner.validate(&format!("{field}.not"), depth + 1, errors),
            Condition::Trait(t) => {
                let field = format!("{field}.trait");
                if t.path.trim().is_empty() || t.path.split('.').any(str::is_empty) {
                    errors.push(FieldError::new(
                        format!("{field}.path"),
                        "a trait name, or a dotted path such as address.city",
                    ));
                }
                if t.operators() == 0 {
                    errors.push(FieldError::new(
                        field.clone(),
                        "needs an operator: equals, in, exists, gt, gte, lt, lte or within",
                    ));
                }
                if t.within.is_some_and(|w| w.is_zero()) {
                    errors.push(FieldError::new(
                        format!("{field}.within"),
                        "must be longer than 0",
                    ));
                }
            }
            Condition::Performed(p) => {
                let field = format!("{field}.performed");
                if p.event.trim().is_empty() {
                    errors.push(FieldError::new(format!("{field}.event"), "an event name"));
                }
                if p.within.is_zero() {
                    errors.push(FieldError::new(
                        format!("{field}.within"),
                        "must be longer than 0",
                    ));
                }
                for (name, bound) in [("at_least", p.at_least), ("at_most", p.at_most)] {
                    if bound.is_some_and(|n| n > MAX_COUNT) {
                        errors.push(FieldError::new(
                            format!("{field}.{name}"),
                            format!("at most {MAX_COUNT}"),
                        ));
                    }
                }
                if let (Some(least), Some(most)) = (p.at_least, p.at_most)
                    && least > most
                {
                    errors.push(FieldError::new(
                        format!("{field}.at_least"),
                        format!("{least} is more than at_most ({most}): no one could match"),
                    ));
                }
            }
            Condition::LastPerformed(l) => {
                let field = format!("{field}.last_performed");
                if l.event.trim().is_empty() {
                    errors.push(FieldError::new(format!("{field}.event"), "an event name"));
                }
                if l.older_than.is_zero() {
                    errors.push(FieldError::new(
                        format!("{field}.older_than"),
                        "must be longer than 0",
                    ));
                }
            }
            Condition::Bucket(b) => {
                if b.from >= b.to || b.to > 100 {
                    errors.push(FieldError::new(
                        format!("{field}.bucket"),
                        "from and to are percentages with from < to <= 100",
                    ));
                }
            }
            Condition::Consent(_) | Condition::InSegment(_) => {}
        }
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// Checks a tenant's segments together: each on its own, and their references (known, no cycle).
pub fn validate(segments: &[Segment]) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let by_id: BTreeMap<&str, &Segment> = segments.iter().map(|s| (s.id.as_str(), s)).collect();
    for (i, segment) in segments.iter().enumerate() {
        let prefix = if segments.len() == 1 {
            String::new()
        } else {
            format!("segments[{i}].")
        };
        if !valid_id(&segment.id) {
            errors.push(FieldError::new(
                format!("{prefix}id"),
                "1 to 63 lowercase letters, digits and dashes",
            ));
        }
        segment
            .condition
            .validate(&format!("{prefix}condition"), 0, &mut errors);
        let mut refs = Vec::new();
        segment.condition.references(&mut refs);
        for other in refs {
            if !by_id.contains_key(other) {
                errors.push(FieldError::new(
                    format!("{prefix}condition"),
                    format!("in_segment names {other:?}, which does not exist"),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&by_id) {
        errors.push(FieldError::new(
            "condition",
            format!(
                "segments refer to each other in a cycle: {}",
                cycle.join(" → ")
            ),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn find_cycle(by_id: &BTreeMap<&str, &Segment>) -> Option<Vec<String>> {
    fn visit<'a>(
        id: &'a str,
        by_id: &BTreeMap<&'a str, &'a Segment>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| *p == id) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(id.to_owned());
            return Some(cycle);
        }
        if done.contains(id) {
            return None;
        }
        let segment = by_id.get(id)?;
        path.push(id);
        let mut refs = Vec::new();
        segment.condition.references(&mut refs);
        for next in refs {
            if let Some(cycle) = visit(next, by_id, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(id);
        None
    }
    let mut done = BTreeSet::new();
    for id in by_id.keys() {
        if let Some(cycle) = visit(id, by_id, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// The tenant's segments with `segment` created or replaced, checked together: the new
/// definition's own problems are named as if it stood alone (`condition.all[0]...`), a cycle it
/// closes as `condition`.
pub fn with_segment(
    existing: Vec<Segment>,
    segment: Segment,
) -> Result<SegmentSet, Vec<FieldError>> {
    let mut all: Vec<Segment> = existing
        .into_iter()
        .filter(|s| s.id != segment.id)
        .collect();
    let last = format!("segments[{}].", all.len());
    all.push(segment);
    SegmentSet::new(all).map_err(|errors| {
        errors
            .into_iter()
            .filter_map(|e| match e.field.strip_prefix(&last) {
                Some(rest) => Some(FieldError::new(rest, e.detail)),
                // Another stored segment's own problem is not this request's.
                None if e.field.starts_with("segments[") => None,
                None => Some(e),
            })
            .collect()
    })
}

/// The tenant's segments without `id`, refused while another segment refers to it.
pub fn without_segment(existing: Vec<Segment>, id: &str) -> Result<Vec<Segment>, String> {
    let rest: Vec<Segment> = existing.into_iter().filter(|s| s.id != id).collect();
    for other in &rest {
        let mut refs = Vec::new();
        other.condition.references(&mut refs);
        if refs.contains(&id) {
            return Err(format!(
                "segment {:?} refers to it (in_segment): change or delete that one first",
                other.id
            ));
        }
    }
    Ok(rest)
}

/// A tenant's segments, checked, in an order where every segment comes after those it refers to.
#[derive(Clone, Debug, Default)]
pub struct SegmentSet {
    ordered: Vec<Segment>,
    tracking: Tracking,
}

/// What a membership update changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub entered: Vec<String>,
    pub left: Vec<String>,
    /// When to look again even if nothing happens: a window could flip a membership then.
    pub next_change: Option<DateTime<Utc>>,
}

impl SegmentSet {
    pub fn new(segments: Vec<Segment>) -> Result<Self, Vec<FieldError>> {
        validate(&segments)?;
        let mut by_id: BTreeMap<String, Segment> =
            segments.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut ordered = Vec::with_capacity(by_id.len());
        // No cycles (validated): repeatedly take the segments whose references are all placed.
        while !by_id.is_empty() {
            let placed: BTreeSet<String> = ordered.iter().map(|s: &Segment| s.id.clone()).collect();
            let ready: Vec<String> = by_id
                .values()
                .filter(|s| {
                    let mut refs = Vec::new();
                    s.condition.references(&mut refs);
                    refs.iter().all(|r| placed.contains(*r))
                })
                .map(|s| s.id.clone())
                .collect();
            for id in ready {
                ordered.extend(by_id.remove(&id));
            }
        }
        let mut tracking = Tracking::default();
        for segment in &ordered {
            segment.condition.track(&mut tracking);
        }
        Ok(Self { ordered, tracking })
    }

    /// The event patterns the segments count: what a person's state must keep.
    pub fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    pub fn segments(&self) -> &[Segment] {
        &self.ordered
    }

    /// The segments `person` is in at `now`, and when that could next change by time alone.
    pub fn evaluate(
        &self,
        person: &Person<'_>,
        now: DateTime<Utc>,
    ) -> (BTreeSet<String>, Option<DateTime<Utc>>) {
        let mut members = BTreeSet::new();
        let mut next: Option<DateTime<Utc>> = None;
        for segment in &self.ordered {
            let member = |id: &str| members.contains(id);
            if segment.condition.holds(&segment.id, person, now, &member) {
                members.insert(segment.id.clone());
            }
            if let Some(at) = segment.condition.next_change(person, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (members, next)
    }

    /// Re-evaluates `person` against what they were in (`current`, updated in place).
    pub fn update(
        &self,
        current: &mut BTreeSet<String>,
        person: &Person<'_>,
        now: DateTime<Utc>,
    ) -> MembershipChange {
        let (members, next_change) = self.evaluate(person, now);
        let entered = members.difference(current).cloned().collect();
        let left = current
            .iter()
            .filter(|id| !members.contains(*id))
            .cloned()
            .collect();
        *current = members;
        MembershipChange {
            entered,
            left,
            next_change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Consent;
    use crate::state::Event;
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
    }

    fn segment(yaml: &str) -> Segment {
        serde_json::from_value(yaml_value(yaml)).expect("segment")
    }

    /// The tests write segments as JSON values shaped like the YAML files.
    fn yaml_value(json_text: &str) -> Value {
        serde_json::from_str(json_text).expect("JSON")
    }

    fn set(segments: &[&str]) -> SegmentSet {
        SegmentSet::new(segments.iter().map(|s| segment(s)).collect()).expect("valid")
    }

    fn profile(traits: Value) -> Profile {
        Profile {
            user_id: "u-1".into(),
            traits: traits.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn did(
        state: &mut PersonState,
        segments: &SegmentSet,
        name: &str,
        props: Value,
        at: DateTime<Utc>,
    ) {
        let event = Event {
            event: name.into(),
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp: at,
        };
        state.apply(&event, segments.tracking(), at);
    }

    #[test]
    fn trait_conditions() {
        let p = profile(
            json!({"tier": "vip", "age": 34, "address": {"city": "Seoul"},
                               "signed_up": "2026-11-28T00:00:00Z", "nothing": null}),
        );
        let state = PersonState::default();
        let person = Person {
            profile: &p,
            state: &state,
        };
        let holds = |c: Value| {
            let condition: Condition = serde_json::from_value(json!({"trait": c})).unwrap();
            condition.holds("s", &person, t0(), &|_| false)
        };
        assert!(holds(json!({"path": "tier", "equals": "vip"})));
        assert!(!holds(json!({"path": "tier", "equals": "gold"})));
        assert!(holds(json!({"path": "tier", "in": ["gold", "vip"]})));
        assert!(holds(json!({"path": "address.city", "equals": "Seoul"})));
        assert!(holds(json!({"path": "age", "gte": 30, "lt": 40})));
        assert!(!holds(json!({"path": "age", "gt": 34})));
        assert!(!holds(json!({"path": "tier", "gt": 1})), "not a number");
        assert!(holds(json!({"path": "tier", "exists": true})));
        assert!(
            holds(json!({"path": "nothing", "exists": false})),
            "null is absent"
        );
        assert!(holds(json!({"path": "missing", "exists": false})));
        assert!(!holds(json!({"path": "missing", "equals": 1})));
        assert!(holds(json!({"path": "signed_up", "within": "7d"})));
        assert!(!holds(json!({"path": "signed_up", "within": "2d"})));
    }

    #[test]
    fn event_conditions_follow_their_windows_with_a_controlled_clock() {
        let segments = set(&[
            r#"{"id": "frequent", "condition": {"performed": {"event": "purchase", "at_least": 2, "within": "7d"}}}"#,
            r#"{"id": "quiet", "condition": {"performed": {"event": "purchase", "at_most": 0, "within": "30d"}}}"#,
            r#"{"id": "lapsed", "condition": {"last_performed": {"event": "purchase", "older_than": "14d"}}}"#,
            r#"{"id": "shoes", "condition": {"performed": {"event": "product_viewed", "where": {"category": "shoes"}, "within": "1d"}}}"#,
        ]);
        let p = profile(json!({}));
        let mut state = PersonState::default();
        let mut current = BTreeSet::new();
        let check = |state: &PersonState, current: &mut BTreeSet<String>, now| {
            segments.update(current, &Person { profile: &p, state }, now)
        };

        let change = check(&state, &mut current, t0());
        assert_eq!(change.entered, ["quiet"]);
        assert_eq!(
            change.next_change, None,
            "nothing counted: nothing will expire"
        );

        did(&mut state, &segments, "purchase", json!({}), t0());
        did(
            &mut state,
            &segments,
            "purchase",
            json!({}),
            t0() + Duration::days(1),
        );
        did(
            &mut state,
            &segments,
            "product_viewed",
            json!({"category": "bags"}),
            t0(),
        );
        let change = check(&state, &mut current, t0() + Duration::days(1));
        assert_eq!(change.entered, ["frequent"]);
        assert_eq!(change.left, ["quiet"]);
        // The first purchase leaves the 7-day window at day 7: that is when to look again.
        assert_eq!(change.next_change, Some(t0() + Duration::days(7)));

        let change = check(&state, &mut current, t0() + Duration::days(7));
        assert_eq!(change.left, ["frequent"]);
        assert!(change.entered.is_empty());
        let change = check(&state, &mut current, t0() + Duration::days(15));
        assert_eq!(change.entered, ["lapsed"]);
        let change = check(&state, &mut current, t0() + Duration::days(31));
        assert_eq!(change.entered, ["quiet"]);
        assert_eq!(
            current,
            BTreeSet::from(["lapsed".to_owned(), "quiet".to_owned()])
        );

        // Property filters: only shoes count.
        let later = t0() + Duration::days(40);
        did(
            &mut state,
            &segments,
            "product_viewed",
            json!({"category": "shoes"}),
            later,
        );
        let change = check(&state, &mut current, later);
        assert_eq!(change.entered, ["shoes"]);
        assert_eq!(change.next_change, Some(later + Duration::days(1)));
    }

    #[test]
    fn boolean_trees_consent_buckets_and_references() {
        let segments = set(&[
            r#"{"id": "vip", "condition": {"trait": {"path": "tier", "equals": "vip"}}}"#,
            r#"{"id": "reachable-vip", "condition": {"all": [
                 {"in_segment": "vip"},
                 {"consent": {"channel": "sms"}},
                 {"not": {"bucket": {"from": 0, "to": 10}}}]}}"#,
            r#"{"id": "vip-or-new", "condition": {"any": [{"in_segment": "vip"}, {"trait": {"path": "new", "equals": true}}]}}"#,
        ]);
        // Referenced segments are evaluated first whatever the order given.
        assert_eq!(segments.segments()[0].id, "vip");
        let mut p = profile(json!({"tier": "vip"}));
        let state = PersonState::default();
        let (members, _) = segments.evaluate(
            &Person {
                profile: &p,
                state: &state,
            },
            t0(),
        );
        assert!(members.contains("vip") && members.contains("vip-or-new"));
        assert!(!members.contains("reachable-vip"), "no consent");
        p.record_consent(Consent {
            purpose: Purpose::Marketing,
            channel: ChannelKind::Sms,
            granted: true,
            at: t0(),
            source: "test".into(),
        });
        let in_holdout = bucket_of("reachable-vip", &p.user_id) < 10;
        let (members, _) = segments.evaluate(
            &Person {
                profile: &p,
                state: &state,
            },
            t0(),
        );
        assert_eq!(members.contains("reachable-vip"), !in_holdout);
    }

    #[test]
    fn buckets_are_stable_and_spread_evenly() {
        assert_eq!(
            bucket_of("holdout", "user-1"),
            bucket_of("holdout", "user-1")
        );
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[usize::from(bucket_of("holdout", &format!("user-{i}")) / 10)] += 1;
        }
        for count in counts {
            assert!((850..1150).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let errors = |json_text: &str| -> Vec<FieldError> {
            let segments: Vec<Segment> = serde_json::from_str(json_text).expect("parses");
            validate(&segments).expect_err("invalid")
        };
        let e =
            errors(r#"[{"id": "a", "condition": {"performed": {"event": "x", "within": "0s"}}}]"#);
        assert_eq!(e[0].field, "condition.performed.within");
        let e = errors(r#"[{"id": "a", "condition": {"all": [{"trait": {"path": "t"}}]}}]"#);
        assert_eq!(e[0].field, "condition.all[0].trait");
        let e = errors(
            r#"[{"id": "a", "condition": {"performed": {"event": "x", "at_least": 3, "at_most": 1, "within": "1d"}}}]"#,
        );
        assert_eq!(e[0].field, "condition.performed.at_least");
        let e = errors(r#"[{"id": "Bad Id", "condition": {"any": []}}]"#);
        assert_eq!(e[0].field, "id");
        assert_eq!(e[1].field, "condition.any");
        let e = errors(
            r#"[{"id": "a", "condition": {"in_segment": "b"}}, {"id": "b", "condition": {"not": {"in_segment": "a"}}}]"#,
        );
        assert!(e[0].detail.contains("cycle"), "{e:?}");
        let e = errors(r#"[{"id": "a", "condition": {"in_segment": "ghost"}}]"#);
        assert!(e[0].detail.contains("ghost"));
        let e = errors(r#"[{"id": "a", "condition": {"bucket": {"from": 50, "to": 50}}}]"#);
        assert_eq!(e[0].field, "condition.bucket");
        let mut deep = json!({"trait": {"path": "t", "exists": true}});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        let deep: Vec<Segment> =
            serde_json::from_value(json!([{"id": "a", "condition": deep}])).unwrap();
        assert!(validate(&deep).unwrap_err()[0].detail.contains("deeper"));
        // Unknown operators and fields are refused when parsing.
        for bad in [
            r#"{"id": "a", "condition": {"maybe": []}}"#,
            r#"{"id": "a", "condition": {"trait": {"path": "t", "like": "x"}}}"#,
            r#"{"id": "a", "condition": {"performed": {"event": "x", "within": "7 fortnights"}}}"#,
        ] {
            assert!(serde_json::from_str::<Segment>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_state_keeps_what_the_most_demanding_condition_needs() {
        let segments = set(&[
            r#"{"id": "a", "condition": {"performed": {"event": "purchase", "at_least": 3, "within": "7d"}}}"#,
            r#"{"id": "b", "condition": {"performed": {"event": "purchase", "at_most": 4, "within": "1d"}}}"#,
        ]);
        let tracked = &segments.tracking().0["purchase"];
        assert_eq!(tracked.keep, 5);
        assert_eq!(tracked.horizon, "7d".parse().unwrap());
    }

    #[test]
    fn a_change_is_checked_against_the_tenants_other_segments() {
        let a = segment(r#"{"id": "a", "condition": {"trait": {"path": "tier", "exists": true}}}"#);
        let b = segment(r#"{"id": "b", "condition": {"in_segment": "a"}}"#);
        let set = with_segment(vec![a.clone()], b.clone()).expect("valid");
        assert_eq!(set.segments().len(), 2);
        // Closing a cycle is refused, naming the cycle.
        let a_on_b = segment(r#"{"id": "a", "condition": {"in_segment": "b"}}"#);
        let errors = with_segment(vec![a.clone(), b.clone()], a_on_b).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].detail.contains("cycle"), "{errors:?}");
        // The new definition's problems are named as if it stood alone.
        let bad =
            segment(r#"{"id": "c", "condition": {"performed": {"event": "e", "within": "0s"}}}"#);
        let errors = with_segment(vec![a.clone()], bad).unwrap_err();
        assert_eq!(errors[0].field, "condition.performed.within");
        // A referenced segment stays.
        assert!(
            without_segment(vec![a.clone(), b.clone()], "a")
                .unwrap_err()
                .contains("\"b\"")
        );
        assert_eq!(without_segment(vec![a, b], "b").unwrap().len(), 1);
    }
}

//! Journeys: what UMP does for a person after something they did ("viewed a product → 5 minutes →
//! a coupon for it, unless they bought it"), as a definition and a pure step function. The
//! definition is JSON in the API and YAML in a file:
//!
//! ```yaml
//! id: viewed-not-bought
//! entry: {event: product_viewed}
//! goal: {event: purchase, match: [item_id]}
//! steps:
//!   - id: wait-for-purchase
//!     wait: {event: purchase, match: [item_id], timeout: 5m,
//!            on_event: bought, on_timeout: coupon}
//!   - id: coupon
//!     send: {channel: sms, template: coupon, data: {item_id: $entry.item_id}}
//!   - id: bought
//!     exit: {}
//! ```
//!
//! `JourneyRecord::step` takes what happened to a person (an event, segments entered, or only the
//! passing of time) and `now`, moves each journey they are in as far as it goes, and returns the
//! sends and counts that produced. Every send carries a key made of journey, version, entry and
//! the step's place in that entry, so the same step taken again after a crash makes the same
//! message, which the delivery dedupe drops.

use crate::profile::Profile;
use crate::recommend::{Wanted, check_references, data_reference};
use crate::segment::{Condition, Person, lookup, valid_id};
use crate::state::{Event, EventPattern, PersonState};
use crate::{FieldError, Window};
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The most steps a journey may have.
pub const MAX_STEPS: usize = 100;
/// Of the entry event's properties, what an instance keeps (for `$entry.…` and `match`).
pub const CONTEXT_PROPERTIES: usize = 16;
pub const CONTEXT_TEXT: usize = 256;
/// How many marketing sends a person's record remembers for the frequency caps.
pub const SENT_REMEMBERED: usize = 50;
/// The quiet hours of a marketing send when the journey gives none: the Korean night-time rule
/// (advertising between 21:00 and 08:00 needs a consent most people never give).
pub const NIGHT: QuietHours = QuietHours {
    start: Clock(21 * 60),
    end: Clock(8 * 60),
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journey {
    /// Lowercase letters, digits and dashes; unique in the tenant.
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub entry: Entry,
    #[serde(default)]
    pub reentry: Reentry,
    /// How many times one person may enter, ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u32>,
    /// An event that ends the journey for the person wherever they are, as a conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<EventMatch>,
    /// When marketing sends wait (in the person's time zone); 21:00–08:00 when not given. The
    /// same start and end: none (a marketing send at night then needs the person's night-time
    /// consent, checked when it is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// At most this many of the journey's messages a second, over every API process (a
    /// campaign's pace, or a landing page's capacity); the rest wait their turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_rate: Option<u32>,
    /// The first step is where people enter.
    pub steps: Vec<Step>,
}

/// How people enter: an event (with property filters), or entering a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub filters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// Whether a person who left the journey may enter it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reentry {
    #[default]
    Never,
    Always,
    /// Once this long has passed since they last entered.
    After(Window),
}

/// An event with property filters, and properties that must equal the entry event's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMatch {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub filters: Map<String, Value>,
    /// Properties of this event that must equal the entry event's (`item_id`: the same item).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub same: Vec<String>,
}

/// A local time of day, `HH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clock(u16);

impl Clock {
    fn time(self) -> NaiveTime {
        NaiveTime::from_hms_opt(u32::from(self.0 / 60), u32::from(self.0 % 60), 0)
            .unwrap_or(NaiveTime::MIN)
    }
}

impl std::str::FromStr for Clock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a time of day: use HH:MM, e.g. 09:30");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 || s.trim().len() != 5 {
            return Err(bad());
        }
        Ok(Self(h * 60 + m))
    }
}

impl Serialize for Clock {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:02}:{:02}", self.0 / 60, self.0 % 60))
    }
}

impl<'de> Deserialize<'de> for Clock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// From `start` to `end` local time (across midnight when `end` is earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: Clock,
    pub end: Clock,
}

impl QuietHours {
    fn contains(&self, local: NaiveTime) -> bool {
        let (start, end) = (self.start.time(), self.end.time());
        if start <= end {
            start <= local && local < end
        } else {
            local >= start || local < end
        }
    }

    /// When the quiet hours around `at` end, if `at` is inside them.
    pub fn end_after(&self, at: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        if self.start == self.end || !self.contains(at.with_timezone(&tz).time()) {
            return None;
        }
        Some(next_local(at, self.end, tz))
    }
}

/// The first moment after `at` when the clock in `tz` shows `clock`.
fn next_local(at: DateTime<Utc>, clock: Clock, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    for days in 0..3 {
        let date = local.date_naive() + chrono::Duration::days(days);
        // A time skipped by a daylight-saving jump is taken an hour later.
        let candidate = tz
            .from_local_datetime(&date.and_time(clock.time()))
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(date.and_time(clock.time()) + chrono::Duration::hours(1)))
                    .earliest()
            });
        if let Some(candidate) = candidate.map(|c| c.with_timezone(&Utc))
            && candidate > at
        {
            return candidate;
        }
    }
    at + chrono::Duration::days(1)
}

/// One step: its id, exactly one kind, and where to go after it (the journey ends when no
/// `next` is given). `wait`, `branch` and `split` name their own ways on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Branch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Send>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
}

/// What a step does.
#[derive(Clone, Copy, Debug)]
pub enum Kind<'a> {
    Delay(&'a Delay),
    Wait(&'a Wait),
    Branch(&'a Branch),
    Split(&'a Split),
    Send(&'a Send),
    Exit,
}

impl Step {
    /// The step's kind; `None` unless exactly one is given (`validate` says so).
    pub fn kind(&self) -> Option<Kind<'_>> {
        let kinds: Vec<Kind<'_>> = [
            self.delay.as_ref().map(Kind::Delay),
            self.wait.as_ref().map(Kind::Wait),
            self.branch.as_ref().map(Kind::Branch),
            self.split.as_ref().map(Kind::Split),
            self.send.as_ref().map(Kind::Send),
            self.exit.as_ref().map(|_| Kind::Exit),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The steps this one can lead to.
    fn successors(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.next.iter().map(String::as_str).collect();
        if let Some(w) = &self.wait {
            out.extend([w.on_event.as_str(), w.on_timeout.as_str()]);
        }
        if let Some(b) = &self.branch {
            out.extend([b.then.as_str(), b.otherwise.as_str()]);
        }
        if let Some(s) = &self.split {
            out.extend(s.arms.iter().map(|a| a.next.as_str()));
        }
        out
    }

    /// Whether a person stays on this step for a while (a cycle needs one).
    fn holds(&self) -> bool {
        self.delay.is_some() || self.wait.is_some()
    }
}

/// Waits a span, until a local time of day, or until a date in a trait or the entry event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub span: Option<Window>,
    /// The next time the person's clock shows this (`09:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_time: Option<Clock>,
    /// A date (RFC 3339) read from the person: `$traits.renewal_at` or `$entry.departs_at`. A
    /// date missing or past does not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_date: Option<String>,
}

/// Waits for an event (matched to the entry event), at most `timeout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    #[serde(flatten)]
    pub event: EventMatch,
    pub timeout: Window,
    pub on_event: String,
    pub on_timeout: String,
}

/// Goes `then` when the condition holds for the person, `else` otherwise. The condition is a
/// segment condition over traits, consent, buckets and segment membership (`in_segment`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub condition: Condition,
    pub then: String,
    #[serde(rename = "else")]
    pub otherwise: String,
}

/// A random split by weights; `holdout` (a weight too) sends nothing more and is counted as the
/// baseline of the arms' conversions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub arms: Vec<Arm>,
    #[serde(default)]
    pub holdout: u32,
    /// How long the holdout stays inside (sending nothing) so its conversions count.
    #[serde(default = "holdout_for")]
    pub holdout_for: Window,
}

fn holdout_for() -> Window {
    Window::from_secs(3 * 86_400)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    pub weight: u32,
    pub next: String,
}

/// The name of the holdout arm in counts.
pub const HOLDOUT: &str = "holdout";

/// A message to the person: `POST /v1/messages` to `user` with these fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    pub channel: String,
    pub template: String,
    /// The template's variables: values as given, or read from the person when a text is
    /// `$entry.<property>`, `$traits.<path>` or `$user_id`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// `marketing` (the default: consent, caps, quiet hours) or `transactional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `bulk` (the default) or `realtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Recommended items for the message, made when it is sent: in `data` as
    /// `recommendations`, and for values written `$recommendations.<i>.<field>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendations: Option<Wanted>,
}

impl Send {
    pub fn is_marketing(&self) -> bool {
        self.category.as_deref() != Some("transactional")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {}

/// A tenant's frequency cap: at most `max` marketing messages per person within `per`, on one
/// channel or (no `channel`) over all, across every journey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub max: u32,
    pub per: Window,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Checks a tenant's caps; fields are named `caps[i].…`.
pub fn validate_caps(caps: &[Cap]) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    for (i, cap) in caps.iter().enumerate() {
        if cap.per.is_zero() {
            errors.push(FieldError::new(
                format!("caps[{i}].per"),
                "must be longer than 0",
            ));
        }
        if cap.channel.as_deref().is_some_and(str::is_empty) {
            errors.push(FieldError::new(
                format!("caps[{i}].channel"),
                "a channel name, or leave it out for all channels",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A reference into the person (`$entry.item_id`, `$traits.address.city`, `$user_id`).
enum Reference<'a> {
    Entry(&'a str),
    Trait(&'a str),
    UserId,
    /// `$recommendations.<i>.<field>`: filled in when the message is sent.
    Recommended,
}

fn reference(text: &str) -> Option<Result<Reference<'_>, String>> {
    if let Some(recommended) = data_reference(text) {
        return Some(recommended.map(|_| Reference::Recommended));
    }
    let rest = text.strip_prefix('$')?;
    Some(if rest == "user_id" {
        Ok(Reference::UserId)
    } else if let Some(name) = rest.strip_prefix("entry.").filter(|n| !n.is_empty()) {
        Ok(Reference::Entry(name))
    } else if let Some(path) = rest
        .strip_prefix("traits.")
        .filter(|p| !p.is_empty() && !p.split('.').any(str::is_empty))
    {
        Ok(Reference::Trait(path))
    } else {
        Err(format!(
            "{text:?}: a reference is $entry.<property>, $traits.<path>, $user_id or \
             $recommendations.<index>.<field>"
        ))
    })
}

impl Journey {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The event patterns and segments the journey reacts to.
    fn entry_pattern(&self) -> Option<EventPattern> {
        self.entry
            .event
            .as_ref()
            .map(|e| EventPattern::new(e, &self.entry.filters))
    }

    /// Checks the journey on its own: every field, every reference between steps, no step
    /// unreachable, no cycle a person could go round without waiting. Fields are named as in
    /// the definition (`steps[2].wait.timeout`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, detail: String| errors.push(FieldError::new(field, detail));
        if !valid_id(&self.id) {
            err(
                "id".into(),
                "1 to 63 lowercase letters, digits and dashes".into(),
            );
        }
        match (&self.entry.event, &self.entry.segment) {
            (Some(event), None) => {
                if event.trim().is_empty() {
                    err("entry.event".into(), "an event name".into());
                }
            }
            (None, Some(segment)) => {
                if !valid_id(segment) {
                    err("entry.segment".into(), "a segment id".into());
                }
                if !self.entry.filters.is_empty() {
                    err(
                        "entry.where".into(),
                        "filters apply to an entry event, not a segment".into(),
                    );
                }
            }
            _ => err(
                "entry".into(),
                "give either event (with optional where) or segment".into(),
            ),
        }
        if matches!(self.reentry, Reentry::After(w) if w.is_zero()) {
            err("reentry.after".into(), "must be longer than 0".into());
        }
        if self.send_rate == Some(0) {
            err(
                "send_rate".into(),
                "at least 1 a second (leave it out for no limit)".into(),
            );
        }
        if self.max_entries == Some(0) {
            err(
                "max_entries".into(),
                "at least 1 (leave it out for no limit)".into(),
            );
        }
        if let Some(goal) = &self.goal {
            check_match(goal, "goal", self.entry.event.is_some(), &mut err);
        }
        if self.steps.is_empty() {
            err("steps".into(), "a journey needs at least one step".into());
        }
        if self.steps.len() > MAX_STEPS {
            err("steps".into(), format!("at most {MAX_STEPS} steps"));
        }
        let mut seen = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("steps[{i}]");
            if !valid_id(&step.id) {
                err(
                    format!("{at}.id"),
                    "1 to 63 lowercase letters, digits and dashes".into(),
                );
            } else if !seen.insert(step.id.as_str()) {
                err(
                    format!("{at}.id"),
                    format!("{:?} is used by an earlier step", step.id),
                );
            }
            let Some(kind) = step.kind() else {
                err(
                    at,
                    "give exactly one of delay, wait, branch, split, send or exit".into(),
                );
                continue;
            };
            let own_ways = matches!(kind, Kind::Wait(_) | Kind::Branch(_) | Kind::Split(_));
            if (own_ways || matches!(kind, Kind::Exit)) && step.next.is_some() {
                err(
                    format!("{at}.next"),
                    "this step names where it goes itself; next is not used".into(),
                );
            }
            match kind {
                Kind::Delay(d) => {
                    let given = [
                        d.span.is_some(),
                        d.until_time.is_some(),
                        d.until_date.is_some(),
                    ]
                    .iter()
                    .filter(|b| **b)
                    .count();
                    if given != 1 {
                        err(
                            format!("{at}.delay"),
                            "give exactly one of for, until_time or until_date".into(),
                        );
                    }
                    if d.span.is_some_and(|s| s.is_zero()) {
                        err(format!("{at}.delay.for"), "must be longer than 0".into());
                    }
                    if let Some(source) = &d.until_date {
                        match reference(source) {
                            Some(Ok(Reference::Entry(_) | Reference::Trait(_))) => {}
                            Some(Err(e)) => err(format!("{at}.delay.until_date"), e),
                            _ => err(
                                format!("{at}.delay.until_date"),
                                "a date read from the person: $traits.<path> or $entry.<property>"
                                    .into(),
                            ),
                        }
                    }
                }
                Kind::Wait(w) => {
                    check_match(
                        &w.event,
                        &format!("{at}.wait"),
                        self.entry.event.is_some(),
                        &mut err,
                    );
                    if w.timeout.is_zero() {
                        err(format!("{at}.wait.timeout"), "must be longer than 0".into());
                    }
                }
                Kind::Branch(b) => {
                    let mut inner = Vec::new();
                    b.condition
                        .validate(&format!("{at}.branch.condition"), 0, &mut inner);
                    if counts_events(&b.condition) {
                        inner.push(FieldError::new(
                            format!("{at}.branch.condition"),
                            "a branch reads traits, consent, buckets and in_segment; to branch \
                             on what the person did, define a segment and use in_segment",
                        ));
                    }
                    for e in inner {
                        err(e.field, e.detail);
                    }
                }
                Kind::Split(s) => {
                    if s.arms.is_empty() {
                        err(format!("{at}.split.arms"), "at least one arm".into());
                    }
                    let mut names = BTreeSet::new();
                    for (j, arm) in s.arms.iter().enumerate() {
                        if arm.name.is_empty() || arm.name == HOLDOUT || !names.insert(&arm.name) {
                            err(
                                format!("{at}.split.arms[{j}].name"),
                                format!("a name unique in the split, not {HOLDOUT:?}"),
                            );
                        }
                    }
                    let total: u64 = s.arms.iter().map(|a| u64::from(a.weight)).sum::<u64>()
                        + u64::from(s.holdout);
                    if total == 0 || total > 1_000_000 {
                        err(
                            format!("{at}.split"),
                            "weights (arms and holdout) add up to between 1 and 1000000".into(),
                        );
                    }
                }
                Kind::Send(send) => {
                    if send.channel.trim().is_empty() {
                        err(format!("{at}.send.channel"), "a channel name".into());
                    }
                    if send.template.trim().is_empty() {
                        err(format!("{at}.send.template"), "a template name".into());
                    }
                    if !matches!(
                        send.category.as_deref(),
                        None | Some("marketing" | "transactional")
                    ) {
                        err(
                            format!("{at}.send.category"),
                            "marketing or transactional".into(),
                        );
                    }
                    if !matches!(send.priority.as_deref(), None | Some("bulk" | "realtime")) {
                        err(format!("{at}.send.priority"), "bulk or realtime".into());
                    }
                    if let Some(wanted) = &send.recommendations {
                        for e in wanted.check(&format!("{at}.send.recommendations")) {
                            err(e.field, e.detail);
                        }
                    }
                    for e in check_references(
                        &send.data,
                        send.recommendations.as_ref(),
                        &format!("{at}.send.data"),
                    ) {
                        err(e.field, e.detail);
                    }
                    for (name, value) in &send.data {
                        if let Some(Err(e)) = value.as_str().and_then(reference) {
                            err(format!("{at}.send.data.{name}"), e);
                        } else if let Some(Ok(Reference::Entry(_))) =
                            value.as_str().and_then(reference)
                            && self.entry.event.is_none()
                        {
                            err(
                                format!("{at}.send.data.{name}"),
                                "$entry reads the entry event; this journey is entered from a \
                                 segment"
                                    .into(),
                            );
                        }
                    }
                }
                Kind::Exit => {}
            }
            for (field, target) in ways(step) {
                if self.step(target).is_none() {
                    err(
                        format!("{at}.{field}"),
                        format!("no step has the id {target:?}"),
                    );
                }
            }
        }
        if errors.is_empty() {
            self.check_graph(&mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Unreachable steps, and cycles without a delay or a wait (a person would go round them
    /// forever in one moment).
    fn check_graph(&self, errors: &mut Vec<FieldError>) {
        let index: BTreeMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let mut reached = BTreeSet::from([0usize]);
        let mut todo = vec![0usize];
        while let Some(i) = todo.pop() {
            for next in self.steps[i].successors() {
                let j = index[next];
                if reached.insert(j) {
                    todo.push(j);
                }
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if !reached.contains(&i) {
                errors.push(FieldError::new(
                    format!("steps[{i}]"),
                    format!(
                        "step {:?} is unreachable: no step leads to it (people enter at the first step)",
                        step.id
                    ),
                ));
            }
        }
        // Among the steps that move on at once, any cycle is one without a wait.
        let instant: Vec<usize> = (0..self.steps.len())
            .filter(|i| !self.steps[*i].holds())
            .collect();
        let mut state = vec![0u8; self.steps.len()]; // 0 new, 1 on the path, 2 done
        fn visit(
            i: usize,
            steps: &[Step],
            index: &BTreeMap<&str, usize>,
            state: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            state[i] = 1;
            path.push(i);
            for next in steps[i].successors() {
                let j = index[next];
                if steps[j].holds() {
                    continue;
                }
                if state[j] == 1 {
                    let start = path.iter().position(|p| *p == j).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(j);
                    return Some(cycle);
                }
                if state[j] == 0
                    && let Some(cycle) = visit(j, steps, index, state, path)
                {
                    return Some(cycle);
                }
            }
            path.pop();
            state[i] = 2;
            None
        }
        for i in instant {
            if state[i] == 0
                && let Some(cycle) = visit(i, &self.steps, &index, &mut state, &mut Vec::new())
            {
                errors.push(FieldError::new(
                    format!("steps[{}]", cycle[0]),
                    format!(
                        "the steps go round without a delay or a wait: {}",
                        cycle
                            .iter()
                            .map(|i| self.steps[*i].id.as_str())
                            .collect::<Vec<_>>()
                            .join(" → ")
                    ),
                ));
                return;
            }
        }
    }
}

fn check_match(
    m: &EventMatch,
    at: &str,
    entered_by_event: bool,
    err: &mut impl FnMut(String, String),
) {
    if m.event.trim().is_empty() {
        err(format!("{at}.event"), "an event name".into());
    }
    if !m.same.is_empty() && !entered_by_event {
        err(
            format!("{at}.match"),
            "match compares with the entry event; this journey is entered from a segment".into(),
        );
    }
    if m.same.iter().any(|p| p.is_empty()) {
        err(format!("{at}.match"), "property names".into());
    }
}

fn counts_events(condition: &Condition) -> bool {
    match condition {
        Condition::All(cs) | Condition::Any(cs) => cs.iter().any(counts_events),
        Condition::Not(inner) => counts_events(inner),
        Condition::Performed(_) | Condition::LastPerformed(_) => true,
        _ => false,
    }
}

/// The steps a step names, with the field that names each.
fn ways(step: &Step) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(next) = &step.next {
        out.push(("next", next.as_str()));
    }
    if let Some(w) = &step.wait {
        out.push(("wait.on_event", w.on_event.as_str()));
        out.push(("wait.on_timeout", w.on_timeout.as_str()));
    }
    if let Some(b) = &step.branch {
        out.push(("branch.then", b.then.as_str()));
        out.push(("branch.else", b.otherwise.as_str()));
    }
    if let Some(s) = &step.split {
        for arm in &s.arms {
            out.push(("split.arms.next", arm.next.as_str()));
        }
    }
    out
}

/// Where a journey is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being written: nobody enters.
    Draft,
    Active,
    /// Nobody enters and the people inside stay where they are until it is active again (a
    /// goal still ends their journey).
    Paused,
    /// Over: the people inside leave it.
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Draft, Self::Active, Self::Paused, Self::Archived]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether a journey may go from `self` to `to`.
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Draft, Active)
                | (Active, Paused)
                | (Paused, Active)
                | (Draft | Active | Paused, Archived)
        )
    }
}

/// One journey as the processor sees it: its status, the version people enter now, and every
/// version someone may still be inside.
#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    pub status: Status,
    pub current: u32,
    pub versions: BTreeMap<u32, Journey>,
    /// When the current version became active: an event older than this enters nobody (a
    /// journey made today does not act on last week's behaviour, nor on events a device sends
    /// late from before it), while the processor's lag does not keep anyone out.
    pub since: DateTime<Utc>,
}

/// A tenant's journeys and frequency caps, as the step function reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JourneySet {
    pub journeys: BTreeMap<String, Live>,
    pub caps: Vec<Cap>,
}

impl JourneySet {
    pub fn is_empty(&self) -> bool {
        self.journeys.is_empty()
    }

    fn version(&self, id: &str, version: u32) -> Option<(&Live, &Journey)> {
        let live = self.journeys.get(id)?;
        Some((live, live.versions.get(&version)?))
    }
}

/// A person inside a journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub journey: String,
    pub version: u32,
    /// Which entry of the person this is (1 for the first).
    pub entry: u32,
    pub entered_at: DateTime<Utc>,
    /// The step the person is on.
    pub step: String,
    /// When they came to it (the moment its delay or timeout counts from).
    pub since: DateTime<Utc>,
    /// How many steps they took in this entry (a loop takes a step again: each time is another
    /// message).
    pub seq: u32,
    /// When the step lets them go on (a delay's end, a wait's timeout, quiet hours' end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The entry event's properties (scalars, cut short).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
    /// The split arm they were put in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// How often and when a person entered a journey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    pub count: u32,
    pub last: DateTime<Utc>,
}

/// A marketing message a journey sent the person (for the frequency caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub at: DateTime<Utc>,
    pub channel: String,
}

/// What the processor keeps of a person's journeys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JourneyRecord {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inside: Vec<Instance>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, Entries>,
    /// Newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<Sent>,
    /// The journeys the person left, newest first, at most `KEEP_PAST`: their timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<Past>,
}

/// How many journeys a person left their record keeps for their timeline.
pub const KEEP_PAST: usize = 10;

/// A journey a person took part in and left.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Past {
    pub journey: String,
    pub version: u32,
    pub entry: u32,
    pub entered_at: DateTime<Utc>,
    /// When the step that let them go ran (a timer's run, an event's processing).
    pub left_at: DateTime<Utc>,
    /// The step they left from.
    pub step: String,
    /// They reached the journey's goal.
    pub converted: bool,
}

/// A message a send step makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JourneySend {
    pub journey: String,
    pub version: u32,
    pub entry: u32,
    pub step: String,
    pub seq: u32,
    pub entered_at: DateTime<Utc>,
    pub channel: String,
    pub template: String,
    pub data: Map<String, Value>,
    pub marketing: bool,
    pub realtime: bool,
    /// The journey's `send_rate`, which the relay keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_rate: Option<u32>,
    /// Recommendations the relay adds to `data` when it sends the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendations: Option<Wanted>,
}

impl JourneySend {
    /// What makes the message one: the same step of the same entry is the same message.
    pub fn key(&self) -> String {
        format!(
            "journey/{}/v{}/{}/{}#{}",
            self.journey, self.version, self.entry, self.step, self.seq
        )
    }
}

/// A count of a journey version's step (`step` empty: the journey as a whole).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatKey {
    pub journey: String,
    pub version: u32,
    pub step: String,
    pub counter: &'static str,
}

/// The counters a step moves.
pub mod counter {
    /// People who entered (journey-level).
    pub const ENTERED: &str = "entered";
    /// People who came to the step.
    pub const REACHED: &str = "reached";
    /// People on the step now (a delay, a wait, a send held by quiet hours): +1 / −1.
    pub const WAITING: &str = "waiting";
    pub const SENT: &str = "sent";
    pub const SUPPRESSED_CAP: &str = "suppressed_cap";
    /// A marketing send held until quiet hours ended.
    pub const HELD_QUIET: &str = "held_quiet";
    /// A wait ended by its event, or by its timeout.
    pub const MATCHED: &str = "matched";
    pub const TIMED_OUT: &str = "timed_out";
    /// The goal reached (journey-level, and per split arm under the arm's name).
    pub const CONVERTED: &str = "converted";
    /// People who finished the journey (journey-level).
    pub const EXITED: &str = "exited";
    /// People put in a split arm (the arm's name is the step).
    pub const ASSIGNED: &str = "assigned";
}

/// What one step of a person's journeys produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JourneyOutput {
    pub sends: Vec<JourneySend>,
    pub stats: Vec<(StatKey, i64)>,
    /// Who left which journey in this step, for the timeline (journey, version, entry,
    /// entered, last step, converted).
    left: Vec<Past>,
}

impl JourneyOutput {
    fn count(&mut self, inst: &Instance, step: &str, counter: &'static str, delta: i64) {
        if counter == counter::EXITED || counter == counter::CONVERTED {
            let known = self
                .left
                .iter()
                .position(|p| p.journey == inst.journey && p.entry == inst.entry);
            let past = match known {
                Some(i) => &mut self.left[i],
                None => {
                    self.left.push(Past {
                        journey: inst.journey.clone(),
                        version: inst.version,
                        entry: inst.entry,
                        entered_at: inst.entered_at,
                        left_at: inst.since, // the step's `now`, set by `step`
                        step: inst.step.clone(),
                        converted: false,
                    });
                    self.left.last_mut().expect("just pushed")
                }
            };
            past.converted |= counter == counter::CONVERTED;
        }
        self.stats.push((
            StatKey {
                journey: inst.journey.clone(),
                version: inst.version,
                step: step.to_owned(),
                counter,
            },
            delta,
        ));
    }
}

/// The person the journeys act for.
pub struct Subject<'a> {
    pub profile: &'a Profile,
    pub state: &'a PersonState,
    pub segments: &'a BTreeSet<String>,
}

/// The person and the tenant's caps, as the steps read them.
struct Cx<'a> {
    subject: &'a Subject<'a>,
    caps: &'a [Cap],
    /// When the step runs: a message goes out now, whatever moment its step stands for.
    now: DateTime<Utc>,
}

/// What to fold into a person's journeys.
pub enum Happening<'a> {
    /// An event they did (counted for the first time).
    Event(&'a Event),
    /// Segments they entered just now.
    Entered(&'a [String]),
    /// Nothing but time passing.
    Time,
}

/// The split arm (or holdout) of a person's entry: a stable hash of journey, version, person and
/// entry into the total weight.
fn pick_arm<'a>(split: &'a Split, key: &str) -> Option<&'a Arm> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let total: u64 =
        split.arms.iter().map(|a| u64::from(a.weight)).sum::<u64>() + u64::from(split.holdout);
    let mut point = hash % total.max(1);
    for arm in &split.arms {
        if point < u64::from(arm.weight) {
            return Some(arm);
        }
        point -= u64::from(arm.weight);
    }
    None
}

fn matches_entry(m: &EventMatch, event: &Event, context: &Map<String, Value>) -> bool {
    EventPattern::new(&m.event, &m.filters).matches(event)
        && m.same.iter().all(|p| {
            event
                .properties
                .get(p)
                .is_some_and(|v| context.get(p) == Some(v))
        })
}

/// What an instance keeps of the entry event's properties.
fn context_of(properties: &Map<String, Value>) -> Map<String, Value> {
    properties
        .iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .take(CONTEXT_PROPERTIES)
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s.chars().count() > CONTEXT_TEXT => {
                    Value::String(s.chars().take(CONTEXT_TEXT).collect())
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn resolve(text: &str, inst: &Instance, subject: &Subject<'_>) -> Option<Value> {
    match reference(text) {
        None => Some(Value::String(text.to_owned())),
        Some(Ok(Reference::Entry(name))) => inst.context.get(name).cloned(),
        Some(Ok(Reference::Trait(path))) => lookup(&subject.profile.traits, path).cloned(),
        Some(Ok(Reference::UserId)) => Some(Value::String(subject.profile.user_id.clone())),
        // The relay fills it in with the recommendations it makes.
        Some(Ok(Reference::Recommended)) => Some(Value::String(text.to_owned())),
        Some(Err(_)) => None,
    }
}

/// Why an instance stopped moving.
enum Stop {
    /// It waits on its step (until `until`, or for an event).
    Waits,
    /// It left the journey.
    Left,
}

impl JourneyRecord {
    /// Folds `happening` into the person's journeys at `now`: due timers fire (those due before
    /// an event's time first, so a purchase made in time counts even when it is processed after
    /// the timeout), waits and goals see the event, new entries start. Returns the sends and
    /// counts; `next_wake` says when to look again.
    pub fn step(
        &mut self,
        set: &JourneySet,
        subject: &Subject<'_>,
        happening: Happening<'_>,
        now: DateTime<Utc>,
    ) -> JourneyOutput {
        let mut out = JourneyOutput::default();
        let cx = Cx {
            subject,
            caps: &set.caps,
            now,
        };
        let cx = &cx;
        // A journey archived or deleted takes its people with it.
        self.inside.retain(|i| {
            set.version(&i.journey, i.version)
                .is_some_and(|(live, _)| live.status != Status::Archived)
        });
        if let Happening::Event(event) = happening {
            self.fire(set, cx, event.timestamp.min(now), &mut out);
            self.see(set, cx, event, now, &mut out);
        }
        self.fire(set, cx, now, &mut out);
        match happening {
            Happening::Event(event) => {
                for (id, live) in &set.journeys {
                    let Some(journey) = live.versions.get(&live.current) else {
                        continue;
                    };
                    if journey.entry_pattern().is_some_and(|p| p.matches(event)) {
                        let at = event.timestamp.min(now);
                        self.enter(id, live, cx, context_of(&event.properties), at, &mut out);
                    }
                }
            }
            Happening::Entered(segments) => {
                for (id, live) in &set.journeys {
                    let Some(journey) = live.versions.get(&live.current) else {
                        continue;
                    };
                    if journey
                        .entry
                        .segment
                        .as_ref()
                        .is_some_and(|s| segments.contains(s))
                    {
                        self.enter(id, live, cx, Map::new(), now, &mut out);
                    }
                }
            }
            Happening::Time => {}
        }
        // An entry at an event's own time (processed late) may be due already.
        self.fire(set, cx, now, &mut out);
        let keep = set.caps.iter().map(|c| c.per.span()).max();
        match keep {
            Some(keep) => {
                self.sent.retain(|s| s.at > now - keep);
                self.sent.truncate(SENT_REMEMBERED);
            }
            None => self.sent.clear(),
        }
        self.entries.retain(|id, _| set.journeys.contains_key(id));
        for mut left in out.left.drain(..) {
            left.left_at = now;
            self.past.insert(0, left);
        }
        self.past.truncate(KEEP_PAST);
        out
    }

    /// When a timer of an active journey comes due.
    pub fn next_wake(&self, set: &JourneySet) -> Option<DateTime<Utc>> {
        self.inside
            .iter()
            .filter(|i| {
                set.journeys
                    .get(&i.journey)
                    .is_some_and(|l| l.status == Status::Active)
            })
            .filter_map(|i| i.until)
            .min()
    }

    /// Moves on every instance of an active journey whose timer is due at `at`.
    fn fire(&mut self, set: &JourneySet, cx: &Cx<'_>, at: DateTime<Utc>, out: &mut JourneyOutput) {
        let mut i = 0;
        while i < self.inside.len() {
            let inst = &self.inside[i];
            let due = inst.until.is_some_and(|u| u <= at);
            let Some((live, journey)) = set.version(&inst.journey, inst.version) else {
                i += 1;
                continue;
            };
            if !due || live.status != Status::Active {
                i += 1;
                continue;
            }
            let mut inst = self.inside.remove(i);
            let until = inst.until.take().unwrap_or(at);
            // A timer fires at its own time: a delay that ended at 12:05 moves on from 12:05 even
            // when looked at later.
            let stop = match journey.step(&inst.step).and_then(Step::kind) {
                Some(Kind::Wait(w)) => {
                    out.count(&inst, &inst.step.clone(), counter::WAITING, -1);
                    out.count(&inst, &inst.step.clone(), counter::TIMED_OUT, 1);
                    let next = w.on_timeout.clone();
                    self.run(journey, &mut inst, Some(next), cx, until, out)
                }
                Some(Kind::Delay(_)) => {
                    out.count(&inst, &inst.step.clone(), counter::WAITING, -1);
                    let next = journey.step(&inst.step).and_then(|s| s.next.clone());
                    self.go_on(journey, &mut inst, next, cx, until, out)
                }
                // The holdout's time is up.
                Some(Kind::Split(_)) => {
                    out.count(&inst, &inst.step.clone(), counter::WAITING, -1);
                    out.count(&inst, "", counter::EXITED, 1);
                    Stop::Left
                }
                // A send held by quiet hours: tried again now.
                Some(Kind::Send(_)) => {
                    out.count(&inst, &inst.step.clone(), counter::WAITING, -1);
                    self.run(journey, &mut inst, None, cx, until, out)
                }
                _ => Stop::Left,
            };
            if let Stop::Waits = stop {
                self.inside.insert(i, inst);
                i += 1;
            }
        }
    }

    /// Shows `event` to every instance: a goal ends the journey as a conversion, a wait for it
    /// moves on.
    fn see(
        &mut self,
        set: &JourneySet,
        cx: &Cx<'_>,
        event: &Event,
        now: DateTime<Utc>,
        out: &mut JourneyOutput,
    ) {
        let at = event.timestamp.min(now);
        let mut i = 0;
        while i < self.inside.len() {
            let inst = &self.inside[i];
            let Some((live, journey)) = set.version(&inst.journey, inst.version) else {
                i += 1;
                continue;
            };
            if journey
                .goal
                .as_ref()
                .is_some_and(|g| matches_entry(g, event, &inst.context))
            {
                let inst = self.inside.remove(i);
                if inst.until.is_some() {
                    out.count(&inst, &inst.step, counter::WAITING, -1);
                }
                out.count(&inst, "", counter::CONVERTED, 1);
                if let Some(arm) = &inst.arm {
                    out.count(&inst, arm, counter::CONVERTED, 1);
                }
                out.count(&inst, "", counter::EXITED, 1);
                continue;
            }
            let waited = match journey.step(&inst.step).and_then(Step::kind) {
                Some(Kind::Wait(w))
                    if live.status == Status::Active
                        && matches_entry(&w.event, event, &inst.context) =>
                {
                    Some(w.on_event.clone())
                }
                _ => None,
            };
            let Some(next) = waited else {
                i += 1;
                continue;
            };
            let mut inst = self.inside.remove(i);
            inst.until = None;
            out.count(&inst, &inst.step.clone(), counter::WAITING, -1);
            out.count(&inst, &inst.step.clone(), counter::MATCHED, 1);
            if let Stop::Waits = self.run(journey, &mut inst, Some(next), cx, at, out) {
                self.inside.insert(i, inst);
                i += 1;
            }
        }
    }

    /// Enters the person into `id` if it is active, they are not inside it, and its re-entry
    /// rules and entry limit let them.
    #[allow(clippy::too_many_arguments)]
    fn enter(
        &mut self,
        id: &str,
        live: &Live,
        cx: &Cx<'_>,
        context: Map<String, Value>,
        at: DateTime<Utc>,
        out: &mut JourneyOutput,
    ) {
        if live.status != Status::Active
            || at < live.since
            || self.inside.iter().any(|i| i.journey == id)
        {
            return;
        }
        let Some(journey) = live.versions.get(&live.current) else {
            return;
        };
        let before = self.entries.get(id);
        if let Some(before) = before {
            let again = match journey.reentry {
                Reentry::Never => false,
                Reentry::Always => true,
                Reentry::After(w) => at >= before.last + w.span(),
            };
            if !again || journey.max_entries.is_some_and(|m| before.count >= m) {
                return;
            }
        }
        let entry = before.map_or(1, |b| b.count + 1);
        self.entries.insert(
            id.to_owned(),
            Entries {
                count: entry,
                last: at,
            },
        );
        let mut inst = Instance {
            journey: id.to_owned(),
            version: live.current,
            entry,
            entered_at: at,
            step: String::new(),
            since: at,
            seq: 0,
            until: None,
            context,
            arm: None,
        };
        out.count(&inst, "", counter::ENTERED, 1);
        let first = journey.steps.first().map(|s| s.id.clone());
        if let Stop::Waits = self.go_on(journey, &mut inst, first, cx, at, out) {
            self.inside.push(inst);
        }
    }

    /// Takes the person to `next` (the journey ends without one) and runs from there.
    fn go_on(
        &mut self,
        journey: &Journey,
        inst: &mut Instance,
        next: Option<String>,
        cx: &Cx<'_>,
        at: DateTime<Utc>,
        out: &mut JourneyOutput,
    ) -> Stop {
        match next {
            Some(next) => self.run(journey, inst, Some(next), cx, at, out),
            None => {
                out.count(inst, "", counter::EXITED, 1);
                Stop::Left
            }
        }
    }

    /// Runs the person's journey from `to` (or, with `None`, their current step again) at `at`
    /// until a step holds them or they leave.
    fn run(
        &mut self,
        journey: &Journey,
        inst: &mut Instance,
        mut to: Option<String>,
        cx: &Cx<'_>,
        at: DateTime<Utc>,
        out: &mut JourneyOutput,
    ) -> Stop {
        // Validation refuses cycles without a wait, so a run passes each step at most once
        // before something holds it; the bound is a second line of defence.
        for _ in 0..=journey.steps.len() {
            if let Some(next) = to.take() {
                inst.step = next;
                inst.since = at;
                inst.seq += 1;
                out.count(inst, &inst.step.clone(), counter::REACHED, 1);
            }
            let Some(step) = journey.step(&inst.step) else {
                return Stop::Left;
            };
            let here = step.id.clone();
            let next = match step.kind() {
                None | Some(Kind::Exit) => {
                    out.count(inst, "", counter::EXITED, 1);
                    return Stop::Left;
                }
                Some(Kind::Delay(d)) => {
                    let due = delay_end(d, inst, cx.subject, at);
                    if due > at {
                        inst.until = Some(due);
                        out.count(inst, &here, counter::WAITING, 1);
                        return Stop::Waits;
                    }
                    step.next.clone()
                }
                Some(Kind::Wait(w)) => {
                    inst.until = Some(inst.since + w.timeout.span());
                    out.count(inst, &here, counter::WAITING, 1);
                    return Stop::Waits;
                }
                Some(Kind::Branch(b)) => {
                    let person = Person {
                        profile: cx.subject.profile,
                        state: cx.subject.state,
                    };
                    let member = |id: &str| cx.subject.segments.contains(id);
                    let bucket = format!("{}/{}", inst.journey, here);
                    if b.condition.holds(&bucket, &person, at, &member) {
                        Some(b.then.clone())
                    } else {
                        Some(b.otherwise.clone())
                    }
                }
                Some(Kind::Split(s)) => {
                    let key = format!(
                        "{}/{}/{}/{}",
                        inst.journey, inst.version, cx.subject.profile.user_id, inst.entry
                    );
                    match pick_arm(s, &key) {
                        Some(arm) => {
                            inst.arm = Some(arm.name.clone());
                            out.count(inst, &arm.name, counter::ASSIGNED, 1);
                            Some(arm.next.clone())
                        }
                        None => {
                            // The holdout gets nothing but stays inside for `holdout_for`, so
                            // that the goal counts its conversions: the arms' baseline.
                            inst.arm = Some(HOLDOUT.into());
                            inst.until = Some(at + s.holdout_for.span());
                            out.count(inst, HOLDOUT, counter::ASSIGNED, 1);
                            out.count(inst, &here, counter::WAITING, 1);
                            return Stop::Waits;
                        }
                    }
                }
                Some(Kind::Send(send)) => {
                    // Quiet hours and caps are about when the person gets it: now, even for a
                    // step that stands for an earlier moment (an event processed late).
                    let sent_at = at.max(cx.now);
                    if send.is_marketing() {
                        let quiet = journey.quiet_hours.unwrap_or(NIGHT);
                        if let Some(end) = quiet.end_after(sent_at, cx.subject.profile.tz()) {
                            inst.until = Some(end);
                            out.count(inst, &here, counter::HELD_QUIET, 1);
                            out.count(inst, &here, counter::WAITING, 1);
                            return Stop::Waits;
                        }
                    }
                    if send.is_marketing() && self.capped(cx.caps, &send.channel, sent_at) {
                        out.count(inst, &here, counter::SUPPRESSED_CAP, 1);
                    } else {
                        let data = send
                            .data
                            .iter()
                            .filter_map(|(k, v)| {
                                let value = match v {
                                    Value::String(text) => resolve(text, inst, cx.subject)?,
                                    other => other.clone(),
                                };
                                Some((k.clone(), value))
                            })
                            .collect();
                        if send.is_marketing() {
                            self.sent.insert(
                                0,
                                Sent {
                                    at: sent_at,
                                    channel: send.channel.clone(),
                                },
                            );
                        }
                        out.sends.push(JourneySend {
                            journey: inst.journey.clone(),
                            version: inst.version,
                            entry: inst.entry,
                            step: here.clone(),
                            seq: inst.seq,
                            entered_at: inst.entered_at,
                            channel: send.channel.clone(),
                            template: send.template.clone(),
                            data,
                            marketing: send.is_marketing(),
                            realtime: send.priority.as_deref() == Some("realtime"),
                            send_rate: journey.send_rate,
                            recommendations: send.recommendations.clone(),
                        });
                        out.count(inst, &here, counter::SENT, 1);
                    }
                    step.next.clone()
                }
            };
            match next {
                Some(next) => to = Some(next),
                None => {
                    out.count(inst, "", counter::EXITED, 1);
                    return Stop::Left;
                }
            }
        }
        Stop::Left
    }

    /// Whether one more marketing message on `channel` at `at` would break a tenant cap.
    fn capped(&self, caps: &[Cap], channel: &str, at: DateTime<Utc>) -> bool {
        caps.iter().any(|cap| {
            let since = at - cap.per.span();
            let sent = self
                .sent
                .iter()
                .filter(|s| s.at > since && cap.channel.as_deref().is_none_or(|c| c == s.channel))
                .count();
            cap.channel.as_deref().is_none_or(|c| c == channel) && sent >= cap.max as usize
        })
    }
}

/// When a delay that began at `since` ends.
fn delay_end(
    d: &Delay,
    inst: &Instance,
    subject: &Subject<'_>,
    at: DateTime<Utc>,
) -> DateTime<Utc> {
    if let Some(span) = d.span {
        return inst.since + span.span();
    }
    if let Some(clock) = d.until_time {
        return next_local(inst.since, clock, subject.profile.tz());
    }
    d.until_date
        .as_deref()
        .and_then(|source| resolve(source, inst, subject))
        .and_then(|v| crate::segment::date(&v))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    /// 12:00 in Seoul.
    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 3, 0, 0).unwrap()
    }

    fn mins(n: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(n)
    }

    fn journey(value: Value) -> Journey {
        let journey: Journey = serde_json::from_value(value).expect("a journey");
        journey.validate().expect("valid");
        journey
    }

    /// The founding brief's journey: a coupon five minutes after a product view, unless bought.
    fn coupon() -> Journey {
        journey(json!({
            "id": "viewed-not-bought",
            "entry": {"event": "product_viewed"},
            "reentry": {"after": "1d"},
            "steps": [
                {"id": "wait-for-purchase", "wait": {"event": "purchase", "match": ["item_id"],
                  "timeout": "5m", "on_event": "bought", "on_timeout": "coupon"}},
                {"id": "coupon", "send": {"channel": "sms", "template": "coupon",
                  "data": {"item": "$entry.item_id", "name": "$traits.first_name", "pct": 10}}},
                {"id": "bought", "exit": {}}
            ]
        }))
    }

    fn set(journeys: Vec<Journey>) -> JourneySet {
        JourneySet {
            journeys: journeys
                .into_iter()
                .map(|j| {
                    (
                        j.id.clone(),
                        Live {
                            status: Status::Active,
                            current: 1,
                            versions: BTreeMap::from([(1, j)]),
                            since: t0() - Duration::days(1),
                        },
                    )
                })
                .collect(),
            caps: Vec::new(),
        }
    }

    struct Person {
        profile: Profile,
        state: PersonState,
        segments: BTreeSet<String>,
        record: JourneyRecord,
    }

    impl Person {
        fn new() -> Self {
            Self {
                profile: Profile {
                    user_id: "u-1".into(),
                    traits: json!({"first_name": "Minji", "tier": "vip",
                        "renews_at": "2026-12-10T00:00:00Z"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                    timezone: Some("Asia/Seoul".into()),
                    ..Profile::default()
                },
                state: PersonState::default(),
                segments: BTreeSet::new(),
                record: JourneyRecord::default(),
            }
        }

        fn step(
            &mut self,
            set: &JourneySet,
            h: Happening<'_>,
            now: DateTime<Utc>,
        ) -> JourneyOutput {
            let subject = Subject {
                profile: &self.profile,
                state: &self.state,
                segments: &self.segments,
            };
            self.record.step(set, &subject, h, now)
        }

        fn did(
            &mut self,
            set: &JourneySet,
            name: &str,
            props: Value,
            at: DateTime<Utc>,
        ) -> JourneyOutput {
            let event = Event {
                event: name.into(),
                properties: props.as_object().cloned().unwrap_or_default(),
                timestamp: at,
            };
            self.step(set, Happening::Event(&event), at)
        }

        fn tick(&mut self, set: &JourneySet, now: DateTime<Utc>) -> JourneyOutput {
            self.step(set, Happening::Time, now)
        }
    }

    fn total(out: &[&JourneyOutput], step: &str, counter: &str) -> i64 {
        out.iter()
            .flat_map(|o| o.stats.iter())
            .filter(|(k, _)| k.step == step && k.counter == counter)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn a_send_step_asks_for_recommendations_which_the_relay_fills_in() {
        let with_recs = journey(json!({"id": "recs", "entry": {"event": "product_viewed"},
            "steps": [{"id": "coupon", "send": {"channel": "alimtalk", "template": "coupon",
                "recommendations": {"strategy": "viewed_not_purchased", "limit": 2},
                "data": {"item": "$recommendations.0.name", "other": "$recommendations.1.url",
                         "viewed": "$entry.item_id"}}}]}));
        let set = set(vec![with_recs]);
        let mut p = Person::new();
        let out = p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let send = &out.sends[0];
        // References to the recommendations wait for the relay; the others are read now.
        assert_eq!(send.data["item"], "$recommendations.0.name");
        assert_eq!(send.data["other"], "$recommendations.1.url");
        assert_eq!(send.data["viewed"], "sku-1");
        let wanted = send.recommendations.as_ref().expect("asked");
        assert_eq!(
            (wanted.strategy, wanted.limit),
            (crate::recommend::Strategy::ViewedNotPurchased, 2)
        );
        // A reference without the ask, past the limit, or malformed: named.
        let refused = |send: Value| {
            let j: Journey = serde_json::from_value(json!({"id": "x", "entry": {"event": "e"},
                "steps": [{"id": "a", "send": send}]}))
            .unwrap();
            j.validate()
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            refused(json!({"channel": "sms", "template": "t",
                "data": {"x": "$recommendations.0.name"}})),
            ["steps[0].send.data.x"]
        );
        assert_eq!(
            refused(json!({"channel": "sms", "template": "t",
                "recommendations": {"strategy": "popular", "limit": 1},
                "data": {"x": "$recommendations.1.name", "y": "$recommendations.name"}})),
            ["steps[0].send.data.x", "steps[0].send.data.y"]
        );
        assert_eq!(
            refused(json!({"channel": "sms", "template": "t",
                "recommendations": {"strategy": "popular", "limit": 51}})),
            ["steps[0].send.recommendations.limit"]
        );
    }

    #[test]
    fn a_viewer_who_does_not_buy_gets_the_coupon_five_minutes_later_once() {
        let set = set(vec![coupon()]);
        let mut p = Person::new();
        let entered = p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        assert!(entered.sends.is_empty());
        assert_eq!(p.record.next_wake(&set), Some(mins(5)));
        // Nothing before the five minutes are up; another item's purchase is not this one.
        assert!(p.tick(&set, mins(4)).sends.is_empty());
        let other = p.did(&set, "purchase", json!({"item_id": "sku-2"}), mins(4));
        assert!(other.sends.is_empty());
        let fired = p.tick(&set, mins(5));
        assert_eq!(fired.sends.len(), 1);
        let send = &fired.sends[0];
        assert_eq!(
            send.data,
            *json!({"item": "sku-1", "name": "Minji", "pct": 10})
                .as_object()
                .unwrap()
        );
        assert_eq!(
            (send.channel.as_str(), send.template.as_str()),
            ("sms", "coupon")
        );
        assert!(send.marketing && !send.realtime);
        assert_eq!(send.key(), "journey/viewed-not-bought/v1/1/coupon#2");
        assert!(p.record.inside.is_empty(), "done after the send");
        assert_eq!(p.record.next_wake(&set), None);
        // A second look sends nothing more.
        assert!(p.tick(&set, mins(6)).sends.is_empty());
        assert_eq!(total(&[&entered, &fired], "", counter::ENTERED), 1);
        assert_eq!(total(&[&entered, &fired], "", counter::EXITED), 1);
        assert_eq!(
            total(&[&entered, &fired], "wait-for-purchase", counter::WAITING),
            0
        );
        assert_eq!(total(&[&fired], "wait-for-purchase", counter::TIMED_OUT), 1);
    }

    #[test]
    fn a_viewer_who_buys_in_time_gets_nothing_even_when_the_purchase_is_processed_late() {
        let set = set(vec![coupon()]);
        let mut p = Person::new();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let bought = p.did(&set, "purchase", json!({"item_id": "sku-1"}), mins(2));
        assert!(bought.sends.is_empty());
        assert!(p.record.inside.is_empty());
        assert_eq!(total(&[&bought], "wait-for-purchase", counter::MATCHED), 1);
        assert!(p.tick(&set, mins(10)).sends.is_empty());

        // The purchase at 4:59 reaches the processor at 6:00, before any timer fired.
        let mut late = Person::new();
        late.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let event = Event {
            event: "purchase".into(),
            properties: json!({"item_id": "sku-1"}).as_object().cloned().unwrap(),
            timestamp: mins(5) - Duration::seconds(1),
        };
        let out = late.step(&set, Happening::Event(&event), mins(6));
        assert!(out.sends.is_empty(), "bought in time: {out:?}");
        // A purchase after the timeout, processed late: the coupon had its time.
        let mut slow = Person::new();
        slow.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let after = Event {
            timestamp: mins(5) + Duration::seconds(1),
            ..event
        };
        assert_eq!(
            slow.step(&set, Happening::Event(&after), mins(6))
                .sends
                .len(),
            1
        );
    }

    #[test]
    fn replaying_a_step_from_the_same_record_makes_the_same_message() {
        let set = set(vec![coupon()]);
        let mut p = Person::new();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let saved = p.record.clone();
        let first = p.tick(&set, mins(5));
        p.record = saved;
        let again = p.tick(&set, mins(5) + Duration::seconds(30));
        assert_eq!(first.sends[0].key(), again.sends[0].key());
        assert_eq!(first.sends[0].entered_at, again.sends[0].entered_at);
    }

    #[test]
    fn reentry_policies_and_the_entry_limit() {
        let mut never = coupon();
        never.reentry = Reentry::Never;
        let mut limited = coupon();
        limited.id = "limited".into();
        limited.reentry = Reentry::Always;
        limited.max_entries = Some(2);
        let cooled = coupon();
        let set = set(vec![never.clone()]);
        let view = |p: &mut Person, set: &JourneySet, at| {
            p.did(set, "product_viewed", json!({"item_id": "sku-1"}), at);
            p.tick(set, at + Duration::minutes(5)).sends.len()
        };
        let mut p = Person::new();
        assert_eq!(view(&mut p, &set, t0()), 1);
        assert_eq!(view(&mut p, &set, mins(60)), 0, "never again");

        let set2 = self::set(vec![limited]);
        let mut q = Person::new();
        assert_eq!(
            [t0(), mins(10), mins(20)].map(|at| view(&mut q, &set2, at)),
            [1, 1, 0]
        );
        // Inside already: a second view while waiting does not start a second entry.
        let set3 = self::set(vec![cooled]);
        let mut r = Person::new();
        r.did(&set3, "product_viewed", json!({"item_id": "sku-1"}), t0());
        r.did(
            &set3,
            "product_viewed",
            json!({"item_id": "sku-2"}),
            mins(1),
        );
        assert_eq!(r.record.inside.len(), 1);
        assert_eq!(r.record.inside[0].context["item_id"], "sku-1");
        r.tick(&set3, mins(5));
        assert_eq!(view(&mut r, &set3, mins(60)), 0, "the cool-down is a day");
        assert_eq!(view(&mut r, &set3, t0() + Duration::days(1)), 1);
    }

    #[test]
    fn a_goal_ends_the_journey_wherever_the_person_is_and_counts_a_conversion() {
        let series = journey(json!({
            "id": "welcome",
            "entry": {"event": "signed_up"},
            "goal": {"event": "purchase"},
            "steps": [
                {"id": "hello", "send": {"channel": "email", "template": "welcome",
                  "category": "transactional"}, "next": "two-days"},
                {"id": "two-days", "delay": {"for": "2d"}, "next": "tips"},
                {"id": "tips", "send": {"channel": "email", "template": "tips"}}
            ]
        }));
        let set = set(vec![series]);
        let mut p = Person::new();
        let start = p.did(&set, "signed_up", json!({}), t0());
        assert_eq!(start.sends.len(), 1);
        assert!(!start.sends[0].marketing);
        let bought = p.did(&set, "purchase", json!({"item_id": "x"}), mins(60));
        assert!(p.record.inside.is_empty());
        assert_eq!(total(&[&bought], "", counter::CONVERTED), 1);
        assert_eq!(total(&[&bought], "two-days", counter::WAITING), -1);
        assert!(p.tick(&set, t0() + Duration::days(3)).sends.is_empty());
    }

    #[test]
    fn the_journeys_a_person_left_are_their_timeline_newest_first_and_bounded() {
        let set = set(vec![journey(json!({
            "id": "viewed-not-bought",
            "entry": {"event": "product_viewed"},
            "reentry": "always",
            "goal": {"event": "purchase", "match": ["item_id"]},
            "steps": [
                {"id": "wait-for-purchase", "wait": {"event": "purchase", "match": ["item_id"],
                  "timeout": "5m", "on_event": "bought", "on_timeout": "coupon"}},
                {"id": "coupon", "send": {"channel": "sms", "template": "coupon"}},
                {"id": "bought", "exit": {}}
            ]
        }))]);
        let mut p = Person::new();
        // One entry times out into the coupon; the next ends at the goal.
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        p.tick(&set, mins(5));
        assert!(p.record.inside.is_empty());
        let first = Past {
            journey: "viewed-not-bought".into(),
            version: 1,
            entry: 1,
            entered_at: t0(),
            left_at: mins(5),
            step: "coupon".into(),
            converted: false,
        };
        assert_eq!(p.record.past, vec![first.clone()]);
        p.did(
            &set,
            "product_viewed",
            json!({"item_id": "sku-2"}),
            mins(10),
        );
        p.did(&set, "purchase", json!({"item_id": "sku-2"}), mins(11));
        assert_eq!(p.record.past.len(), 2, "{:?}", p.record.past);
        let second = &p.record.past[0];
        assert_eq!(
            (second.entry, second.converted, second.left_at),
            (2, true, mins(11))
        );
        assert_eq!(
            second.step, "wait-for-purchase",
            "where the goal found them"
        );
        assert_eq!(p.record.past[1], first);
        // Only the latest KEEP_PAST are kept.
        for n in 0..KEEP_PAST as i64 {
            let at = mins(20 + 10 * n);
            p.did(&set, "product_viewed", json!({"item_id": "sku-9"}), at);
            p.did(&set, "purchase", json!({"item_id": "sku-9"}), at);
        }
        assert_eq!(p.record.past.len(), KEEP_PAST);
        assert!(p.record.past.iter().all(|past| past.converted));
        assert_eq!(p.record.past[0].entry, 2 + KEEP_PAST as u32);
    }

    #[test]
    fn delays_for_a_span_until_a_local_time_and_until_a_date_from_the_person() {
        let j = journey(json!({
            "id": "delays",
            "entry": {"event": "signed_up"},
            "steps": [
                {"id": "a", "delay": {"for": "1h"}, "next": "b"},
                {"id": "b", "delay": {"until_time": "09:00"}, "next": "c"},
                {"id": "c", "delay": {"until_date": "$traits.renews_at"}, "next": "d"},
                {"id": "d", "delay": {"until_date": "$traits.missing"}, "next": "e"},
                {"id": "e", "send": {"channel": "sms", "template": "renew", "category": "transactional"}}
            ]
        }));
        let set = set(vec![j]);
        let mut p = Person::new();
        p.did(&set, "signed_up", json!({}), t0()); // 12:00 Seoul
        assert_eq!(p.record.next_wake(&set), Some(mins(60)));
        p.tick(&set, mins(60));
        // The next 09:00 in Seoul is 00:00 UTC the next day.
        let nine = Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap();
        assert_eq!(p.record.next_wake(&set), Some(nine));
        p.tick(&set, nine);
        let renews = Utc.with_ymd_and_hms(2026, 12, 10, 0, 0, 0).unwrap();
        assert_eq!(p.record.next_wake(&set), Some(renews));
        // Looked at late, the delay still ends at its own time, and a missing date does not wait.
        let out = p.tick(&set, renews + Duration::hours(2));
        assert_eq!(out.sends.len(), 1);
        assert!(p.record.inside.is_empty());
    }

    #[test]
    fn branches_read_segments_and_traits() {
        let j = journey(json!({
            "id": "vip",
            "entry": {"event": "app_opened"},
            "steps": [
                {"id": "is-vip", "branch": {"condition": {"any": [
                    {"in_segment": "vip"}, {"trait": {"path": "tier", "equals": "gold"}}]},
                  "then": "offer", "else": "end"}},
                {"id": "offer", "send": {"channel": "push", "template": "vip-offer", "category": "transactional"}},
                {"id": "end", "exit": {}}
            ]
        }));
        let mut j2 = j.clone();
        j2.reentry = Reentry::Always;
        let set = set(vec![j2]);
        let mut p = Person::new();
        assert!(p.did(&set, "app_opened", json!({}), t0()).sends.is_empty());
        p.segments.insert("vip".into());
        assert_eq!(p.did(&set, "app_opened", json!({}), mins(1)).sends.len(), 1);
        p.segments.clear();
        p.profile.traits.insert("tier".into(), json!("gold"));
        assert_eq!(p.did(&set, "app_opened", json!({}), mins(2)).sends.len(), 1);
    }

    #[test]
    fn splits_are_stable_weighted_and_the_holdout_counts_conversions() {
        let j = journey(json!({
            "id": "ab",
            "entry": {"event": "signed_up"},
            "goal": {"event": "purchase"},
            "steps": [
                {"id": "split", "split": {"arms": [
                    {"name": "a", "weight": 45, "next": "send-a"},
                    {"name": "b", "weight": 45, "next": "send-b"}], "holdout": 10,
                    "holdout_for": "1d"}},
                {"id": "send-a", "send": {"channel": "sms", "template": "a", "category": "transactional"}, "next": "wait"},
                {"id": "send-b", "send": {"channel": "sms", "template": "b", "category": "transactional"}, "next": "wait"},
                {"id": "wait", "delay": {"for": "1d"}}
            ]
        }));
        let set = set(vec![j]);
        let mut arms: BTreeMap<String, u32> = BTreeMap::new();
        let mut converted: BTreeMap<String, i64> = BTreeMap::new();
        for n in 0..2000 {
            let mut p = Person::new();
            p.profile.user_id = format!("u-{n}");
            let out = p.did(&set, "signed_up", json!({}), t0());
            let arm = p.record.inside[0].arm.clone().unwrap();
            assert_eq!(out.sends.len(), usize::from(arm != HOLDOUT));
            *arms.entry(arm.clone()).or_default() += 1;
            // The same person and entry always land in the same arm.
            let mut again = Person::new();
            again.profile.user_id = format!("u-{n}");
            again.did(&set, "signed_up", json!({}), mins(3));
            assert_eq!(again.record.inside[0].arm.as_deref(), Some(arm.as_str()));
            if n % 2 == 0 {
                let bought = p.did(&set, "purchase", json!({}), mins(30));
                *converted.entry(arm).or_default() += total(&[&bought], "", counter::CONVERTED);
            }
        }
        assert!((800..1000).contains(&arms["a"]), "{arms:?}");
        assert!((800..1000).contains(&arms["b"]), "{arms:?}");
        assert!((140..260).contains(&arms[HOLDOUT]), "{arms:?}");
        assert!(
            converted[HOLDOUT] > 0,
            "the holdout's conversions count: {converted:?}"
        );
        // The holdout leaves when its time is up.
        let mut p = (0..)
            .map(|n| {
                let mut p = Person::new();
                p.profile.user_id = format!("h-{n}");
                p.did(&set, "signed_up", json!({}), t0());
                p
            })
            .find(|p| p.record.inside[0].arm.as_deref() == Some(HOLDOUT))
            .unwrap();
        let out = p.tick(&set, t0() + Duration::days(1));
        assert!(p.record.inside.is_empty() && out.sends.is_empty());
        assert_eq!(total(&[&out], "", counter::EXITED), 1);
    }

    #[test]
    fn marketing_waits_for_the_end_of_the_night_in_the_persons_time_zone() {
        let mut j = coupon();
        j.steps[0].wait.as_mut().unwrap().timeout = Window::from_secs(10 * 3600);
        let set = set(vec![j]);
        let mut p = Person::new();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        // Ten hours after noon is 22:00 in Seoul: held until 08:00.
        let night = t0() + Duration::hours(10);
        let held = p.tick(&set, night);
        assert!(held.sends.is_empty());
        assert_eq!(total(&[&held], "coupon", counter::HELD_QUIET), 1);
        let eight = Utc.with_ymd_and_hms(2026, 12, 4, 23, 0, 0).unwrap();
        assert_eq!(p.record.next_wake(&set), Some(eight));
        let sent = p.tick(&set, eight);
        assert_eq!(sent.sends.len(), 1);
        assert_eq!(total(&[&held, &sent], "coupon", counter::WAITING), 0);
        // The same moment in Berlin is 14:00: sent at once.
        let mut berlin = Person::new();
        berlin.profile.timezone = Some("Europe/Berlin".into());
        berlin.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        assert_eq!(berlin.tick(&set, night).sends.len(), 1);
    }

    #[test]
    fn a_step_processed_late_at_night_waits_for_the_morning() {
        let set = set(vec![coupon()]);
        let mut p = Person::new();
        // Viewed at noon in Seoul; the processor only gets to it at 22:00 (a long outage).
        let event = Event {
            event: "product_viewed".into(),
            properties: json!({"item_id": "sku-1"}).as_object().cloned().unwrap(),
            timestamp: t0(),
        };
        let late = t0() + Duration::hours(10);
        let out = p.step(&set, Happening::Event(&event), late);
        assert!(out.sends.is_empty(), "not at 22:00: {out:?}");
        let eight = Utc.with_ymd_and_hms(2026, 12, 4, 23, 0, 0).unwrap();
        assert_eq!(p.record.next_wake(&set), Some(eight));
    }

    #[test]
    fn frequency_caps_hold_across_journeys_per_channel_and_overall() {
        let mk = |id: &str, channel: &str| {
            let mut j = coupon();
            j.id = id.into();
            j.reentry = Reentry::Always;
            j.steps[1].send.as_mut().unwrap().channel = channel.into();
            j
        };
        let mut set = set(vec![
            mk("one", "sms"),
            mk("two", "sms"),
            mk("three", "push"),
        ]);
        set.caps = vec![
            Cap {
                max: 2,
                per: Window::from_secs(86_400),
                channel: None,
            },
            Cap {
                max: 1,
                per: Window::from_secs(86_400),
                channel: Some("sms".into()),
            },
        ];
        let mut p = Person::new();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let out = p.tick(&set, mins(5));
        let sent: Vec<&str> = out.sends.iter().map(|s| s.journey.as_str()).collect();
        // One SMS (the SMS cap) and the push: two in all (the overall cap).
        assert_eq!(sent, ["one", "three"]);
        assert_eq!(total(&[&out], "coupon", counter::SUPPRESSED_CAP), 1);
        p.did(
            &set,
            "product_viewed",
            json!({"item_id": "sku-1"}),
            mins(10),
        );
        let capped = p.tick(&set, mins(15));
        assert!(capped.sends.is_empty(), "{capped:?}");
        // A day later the caps have room again.
        p.did(
            &set,
            "product_viewed",
            json!({"item_id": "sku-1"}),
            t0() + Duration::days(1),
        );
        let next = p.tick(&set, t0() + Duration::days(1) + Duration::minutes(5));
        assert_eq!(next.sends.len(), 2);
    }

    #[test]
    fn people_finish_on_the_version_they_entered_and_archiving_takes_them_out() {
        let v1 = coupon();
        let mut v2 = coupon();
        v2.steps[1].send.as_mut().unwrap().template = "coupon-v2".into();
        let mut set = set(vec![v1]);
        let mut p = Person::new();
        let mut q = Person::new();
        q.profile.user_id = "u-2".into();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        let live = set.journeys.get_mut("viewed-not-bought").unwrap();
        live.versions.insert(2, v2);
        live.current = 2;
        q.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        assert_eq!(p.tick(&set, mins(5)).sends[0].template, "coupon");
        let newer = q.tick(&set, mins(5));
        assert_eq!(
            (newer.sends[0].template.as_str(), newer.sends[0].version),
            ("coupon-v2", 2)
        );

        let mut r = Person::new();
        r.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        set.journeys.get_mut("viewed-not-bought").unwrap().status = Status::Archived;
        assert!(r.tick(&set, mins(5)).sends.is_empty());
        assert!(r.record.inside.is_empty());
    }

    #[test]
    fn a_paused_journey_takes_nobody_in_and_holds_its_people_until_resumed() {
        let mut set = set(vec![coupon()]);
        let mut p = Person::new();
        p.did(&set, "product_viewed", json!({"item_id": "sku-1"}), t0());
        set.journeys.get_mut("viewed-not-bought").unwrap().status = Status::Paused;
        assert_eq!(
            p.record.next_wake(&set),
            None,
            "no timer fires while paused"
        );
        assert!(p.tick(&set, mins(10)).sends.is_empty());
        let mut q = Person::new();
        q.did(
            &set,
            "product_viewed",
            json!({"item_id": "sku-1"}),
            mins(10),
        );
        assert!(q.record.inside.is_empty());
        set.journeys.get_mut("viewed-not-bought").unwrap().status = Status::Active;
        assert_eq!(
            p.tick(&set, mins(20)).sends.len(),
            1,
            "resumed: the overdue timer fires"
        );
    }

    #[test]
    fn events_from_before_the_journey_was_activated_enter_nobody() {
        let mut set = set(vec![coupon()]);
        set.journeys.get_mut("viewed-not-bought").unwrap().since = mins(10);
        let mut p = Person::new();
        // Viewed before the journey existed, reported (or processed) after.
        let event = Event {
            event: "product_viewed".into(),
            properties: json!({"item_id": "sku-1"}).as_object().cloned().unwrap(),
            timestamp: mins(5),
        };
        p.step(&set, Happening::Event(&event), mins(11));
        assert!(p.record.inside.is_empty());
        // A view after it, processed late, enters at its own time.
        p.did(
            &set,
            "product_viewed",
            json!({"item_id": "sku-1"}),
            mins(12),
        );
        assert_eq!(p.record.inside[0].entered_at, mins(12));
    }

    #[test]
    fn segment_entry_starts_a_journey() {
        let j = journey(json!({
            "id": "vip-welcome",
            "entry": {"segment": "vip"},
            "steps": [{"id": "hi", "send": {"channel": "push", "template": "vip",
                "data": {"who": "$user_id"}, "category": "transactional"}}]
        }));
        let set = set(vec![j]);
        let mut p = Person::new();
        let out = p.step(&set, Happening::Entered(&["vip".into()]), t0());
        assert_eq!(out.sends.len(), 1);
        assert_eq!(out.sends[0].data["who"], "u-1");
        assert!(
            p.step(&set, Happening::Entered(&["other".into()]), t0())
                .sends
                .is_empty()
        );
    }

    fn problems(value: Value) -> Vec<(String, String)> {
        let journey: Journey = serde_json::from_value(value).expect("parses");
        journey
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.detail))
            .collect()
    }

    fn fields(value: Value) -> Vec<String> {
        problems(value).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_step_and_field() {
        assert_eq!(
            fields(json!({"id": "x", "entry": {"event": "e"}, "steps": [
                {"id": "a", "next": "nowhere", "delay": {"for": "1h"}},
                {"id": "b", "send": {"channel": "", "template": "t", "category": "spam"}},
                {"id": "c", "wait": {"event": "p", "timeout": "0s", "on_event": "a", "on_timeout": "a"}},
                {"id": "d"},
                {"id": "e", "delay": {"for": "1h", "until_time": "09:00"}}
            ]})),
            [
                "steps[0].next",
                "steps[1].send.channel",
                "steps[1].send.category",
                "steps[2].wait.timeout",
                "steps[3]",
                "steps[4].delay"
            ]
        );
        let unreachable = problems(json!({"id": "x", "entry": {"event": "e"}, "steps": [
            {"id": "a", "exit": {}}, {"id": "b", "exit": {}}]}));
        assert_eq!(unreachable[0].0, "steps[1]");
        assert!(unreachable[0].1.contains("unreachable"), "{unreachable:?}");
        let cycle = problems(json!({"id": "x", "entry": {"event": "e"}, "steps": [
            {"id": "a", "send": {"channel": "sms", "template": "t"}, "next": "b"},
            {"id": "b", "branch": {"condition": {"in_segment": "s"}, "then": "a", "else": "c"}},
            {"id": "c", "exit": {}}]}));
        assert!(cycle[0].1.contains("a → b → a"), "{cycle:?}");
        // A loop with a delay in it is a series, not a cycle.
        journey(json!({"id": "x", "entry": {"event": "e"}, "steps": [
            {"id": "a", "send": {"channel": "sms", "template": "t"}, "next": "b"},
            {"id": "b", "delay": {"for": "7d"}, "next": "a"}]}));
        assert_eq!(
            fields(
                json!({"id": "Bad", "entry": {"segment": "s", "where": {"a": 1}},
                "reentry": {"after": "0s"}, "max_entries": 0,
                "goal": {"event": "buy", "match": ["item_id"]},
                "steps": [{"id": "a", "branch": {"condition": {"performed": {"event": "e", "within": "1d"}},
                    "then": "b", "else": "b"}},
                    {"id": "b", "send": {"channel": "sms", "template": "t", "data": {"x": "$entry.id", "y": "$nope"}}}]})
            ),
            [
                "id",
                "entry.where",
                "reentry.after",
                "max_entries",
                "goal.match",
                "steps[0].branch.condition",
                "steps[1].send.data.x",
                "steps[1].send.data.y"
            ]
        );
        assert!(
            serde_json::from_value::<Journey>(json!({"id": "x", "entry": {"event": "e"},
            "steps": [{"id": "a", "exit": {}, "sned": {}}]}))
            .is_err(),
            "unknown fields are refused"
        );
        assert!("25:00".parse::<Clock>().is_err() && "9:00".parse::<Clock>().is_err());
        assert!(Status::Draft.may_become(Status::Active));
        assert!(!Status::Archived.may_become(Status::Active));
        assert!(!Status::Active.may_become(Status::Draft));
    }

    #[test]
    fn the_definition_reads_back_as_written() {
        let j = coupon();
        let text = serde_json::to_value(&j).unwrap();
        assert_eq!(serde_json::from_value::<Journey>(text.clone()).unwrap(), j);
        assert_eq!(text["steps"][0]["wait"]["match"], json!(["item_id"]));
        assert_eq!(text["reentry"], json!({"after": "1day"}));
    }
}

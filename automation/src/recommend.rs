//! Product recommendations as pure functions: catalog items and their checks, a person's item
//! history, item-to-item co-occurrence kept incrementally, popularity and trending from hourly
//! counts, and the strategies that rank catalog items for a person at `now`.
//!
//! The event processor's part, for each event: `ItemEvents::read` says whether it views or buys
//! an item; `pairs`, on the person's history as it was, gives the co-occurrence pairs it adds;
//! `ItemHistory::observe` records it and says whether it counts for the item's people (`n`) and
//! its popularity. Neighbour lists are rebuilt from co-occurrence rows (`Neighbours::from_row`)
//! for the items whose rows changed; `recommend` reads them through `Lookup`.

use crate::FieldError;
use crate::state::{Event, VIEW_EVENT};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// The longest item id, in characters.
pub const MAX_ITEM_ID: usize = 128;
/// The longest item name, in characters.
pub const MAX_ITEM_NAME: usize = 500;
/// The longest category, in characters.
pub const MAX_CATEGORY: usize = 128;
/// The longest `url` or `image`, in bytes.
pub const MAX_URL: usize = 2048;
/// The largest `attributes` object, as JSON bytes.
pub const MAX_ATTRIBUTES: usize = 8 * 1024;

/// How many distinct viewed items a person's history keeps, newest first.
pub const KEEP_VIEWS: usize = 50;
/// How many distinct bought items a person's history keeps, newest first.
pub const KEEP_PURCHASES: usize = 50;

/// Two items co-occur for a person when they were seen within this time of each other.
pub const PAIR_WINDOW: Duration = Duration::days(7);
/// A new item pairs with at most this many of the person's items, the nearest in time: a
/// person who browsed hundreds of items in a week would otherwise add thousands of weak pairs.
pub const PAIR_PARTNERS: usize = 20;
/// The λ of the shrinkage `co / (co + λ)`: a similarity resting on a handful of people counts
/// less than the same cosine resting on hundreds.
pub const SHRINKAGE: f64 = 5.0;
/// How many neighbours an item keeps: memory is at most `TOP_K` entries per item.
pub const TOP_K: usize = 50;
/// How many partners an item keeps with their co-occurrence counts (`Partners`), among which
/// its `TOP_K` neighbours are chosen: the stored counts are at most this many per item.
pub const KEEP_PARTNERS: usize = 200;

/// How far back `popular` counts.
pub const POPULAR_WINDOW: Duration = Duration::days(7);
/// `trending` compares this recent span ...
pub const TRENDING_RECENT: Duration = Duration::days(1);
/// ... with the rate of this span before it.
pub const TRENDING_BASELINE: Duration = Duration::days(7);
/// The pseudo-count α added to both sides of trending's ratio.
pub const TRENDING_PRIOR: f64 = 10.0;

/// `similar_items` starts from this many of the person's latest items.
pub const SEEDS: usize = 5;
/// The weight of a seed (and the score of a recently viewed item) halves with each this much
/// of its age.
pub const RECENCY_HALF_LIFE: Duration = Duration::days(1);

/// The most items one recommendation returns.
pub const MAX_LIMIT: usize = 50;

const HOUR: i64 = 3600;

/// A product as a tenant's catalog holds it (`PUT /v1/catalog/items/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogItem {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// ISO 4217 (`KRW`, `USD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The product's page, http or https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default = "in_stock")]
    pub in_stock: bool,
    /// Anything else the tenant's messages use (brand, colour, rating).
    #[serde(default)]
    pub attributes: Map<String, Value>,
}

fn in_stock() -> bool {
    true
}

/// An item id as the catalog and events carry it: 1 to `MAX_ITEM_ID` characters, no control
/// characters.
pub fn valid_item_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ITEM_ID && !id.chars().any(char::is_control)
}

/// An absolute http or https URL with a host, no spaces or control characters.
fn valid_url(url: &str) -> bool {
    if url.len() > MAX_URL || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    ["http://", "https://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
            && url[scheme.len()..]
                .split(['/', '?', '#'])
                .next()
                .is_some_and(|host| !host.is_empty() && !host.starts_with(':'))
    })
}

impl CatalogItem {
    /// Checks the item; `at` is its place in a batch (`items[3]`), empty for a single item.
    /// Every bad field is named.
    pub fn validate(&self, at: &str) -> Result<(), Vec<FieldError>> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let mut errors = Vec::new();
        if !valid_item_id(&self.id) {
            errors.push(FieldError::new(
                field("id"),
                format!("1 to {MAX_ITEM_ID} characters, no control characters"),
            ));
        }
        if self.name.trim().is_empty()
            || self.name.chars().count() > MAX_ITEM_NAME
            || self.name.chars().any(char::is_control)
        {
            errors.push(FieldError::new(
                field("name"),
                format!("1 to {MAX_ITEM_NAME} characters, no control characters"),
            ));
        }
        if let Some(price) = self.price
            && !(price.is_finite() && price >= 0.0)
        {
            errors.push(FieldError::new(field("price"), "a number, 0 or more"));
        }
        if let Some(currency) = &self.currency
            && !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()))
        {
            errors.push(FieldError::new(
                field("currency"),
                "an ISO 4217 code: three capital letters such as KRW or USD",
            ));
        }
        for (name, url) in [("url", &self.url), ("image", &self.image)] {
            if let Some(url) = url
                && !valid_url(url)
            {
                errors.push(FieldError::new(
                    field(name),
                    format!("an http or https URL of at most {MAX_URL} bytes"),
                ));
            }
        }
        if let Some(category) = &self.category
            && (category.trim().is_empty()
                || category.chars().count() > MAX_CATEGORY
                || category.chars().any(char::is_control))
        {
            errors.push(FieldError::new(
                field("category"),
                format!("1 to {MAX_CATEGORY} characters, no control characters"),
            ));
        }
        let size = serde_json::to_vec(&self.attributes).map_or(usize::MAX, |b| b.len());
        if size > MAX_ATTRIBUTES {
            errors.push(FieldError::new(
                field("attributes"),
                format!("{size} bytes of JSON; at most {MAX_ATTRIBUTES}"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// What a person did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interaction {
    View,
    Purchase,
}

/// Which events view and buy items, and which property names the item (one item per event: a
/// purchase of several items is sent as one event per item).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemEvents {
    #[serde(default = "default_views")]
    pub views: Vec<String>,
    #[serde(default = "default_purchases")]
    pub purchases: Vec<String>,
    #[serde(default = "default_item_property")]
    pub item_property: String,
}

fn default_views() -> Vec<String> {
    vec![VIEW_EVENT.to_owned()]
}

fn default_purchases() -> Vec<String> {
    vec!["purchase".to_owned()]
}

fn default_item_property() -> String {
    "item_id".to_owned()
}

impl Default for ItemEvents {
    /// `product_viewed` and `purchase` with `item_id`, as the example journeys and segments use.
    fn default() -> Self {
        Self {
            views: default_views(),
            purchases: default_purchases(),
            item_property: default_item_property(),
        }
    }
}

/// An event read as a view or purchase of `item` at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub kind: Interaction,
    pub item: String,
    pub at: DateTime<Utc>,
}

impl ItemEvents {
    /// The view or purchase `event` is, if it is one: its name is listed (views checked first)
    /// and its item property is a valid item id, as text or a number (`42` is item `"42"`).
    pub fn read(&self, event: &Event) -> Option<Observed> {
        let kind = if self.views.contains(&event.event) {
            Interaction::View
        } else if self.purchases.contains(&event.event) {
            Interaction::Purchase
        } else {
            return None;
        };
        let item = match event.properties.get(&self.item_property)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        valid_item_id(&item).then_some(Observed {
            kind,
            item,
            at: event.timestamp,
        })
    }
}

/// One item a person saw or bought, and when they last did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub item: String,
    #[serde(with = "compact_time")]
    pub at: DateTime<Utc>,
}

/// `at` as RFC 3339 text in JSON; in binary forms (postcard, which is not human readable) as
/// seconds and nanoseconds: a few bytes instead of thirty, in the record rewritten with every
/// event.
mod compact_time {
    use chrono::{DateTime, Utc};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            at.serialize(serializer)
        } else {
            (at.timestamp(), at.timestamp_subsec_nanos()).serialize(serializer)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        if deserializer.is_human_readable() {
            DateTime::deserialize(deserializer)
        } else {
            let (secs, nanos) = <(i64, u32)>::deserialize(deserializer)?;
            DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| D::Error::custom(format!("time {secs} out of range")))
        }
    }
}

/// The items a person viewed and bought, each list newest first with each item once (at the
/// time they last did it), at most `KEEP_VIEWS` and `KEEP_PURCHASES` long. Every field is always
/// written (no skipped fields), so the binary record, which is not self-describing, reads back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemHistory {
    #[serde(default)]
    pub views: Vec<Seen>,
    #[serde(default)]
    pub purchases: Vec<Seen>,
}

/// What recording an interaction means for the tenant's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The person had neither viewed nor bought the item (in the kept history): the item's
    /// people count `n` goes up by one, and `pairs` gave its pairs.
    pub first: bool,
    /// The person's first interaction with the item on this UTC day: the item's popularity
    /// goes up by one in the hour of the event.
    pub popular: bool,
}

impl ItemHistory {
    /// Whether the person viewed or bought `item` (in the kept history).
    pub fn contains(&self, item: &str) -> bool {
        self.views
            .iter()
            .chain(&self.purchases)
            .any(|s| s.item == item)
    }

    /// When the person last viewed or bought `item`.
    pub fn last(&self, item: &str) -> Option<DateTime<Utc>> {
        self.views
            .iter()
            .chain(&self.purchases)
            .filter(|s| s.item == item)
            .map(|s| s.at)
            .max()
    }

    /// When the person last bought `item`.
    pub fn bought(&self, item: &str) -> Option<DateTime<Utc>> {
        self.purchases.iter().find(|s| s.item == item).map(|s| s.at)
    }

    /// The person's `n` latest distinct items, viewed or bought, newest first (ties by id).
    pub fn recent(&self, n: usize) -> Vec<(&str, DateTime<Utc>)> {
        let mut latest: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for s in self.views.iter().chain(&self.purchases) {
            let at = latest.entry(s.item.as_str()).or_insert(s.at);
            *at = (*at).max(s.at);
        }
        let mut items: Vec<_> = latest.into_iter().collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        items.truncate(n);
        items
    }

    fn list(&self, kind: Interaction) -> (&Vec<Seen>, usize) {
        match kind {
            Interaction::View => (&self.views, KEEP_VIEWS),
            Interaction::Purchase => (&self.purchases, KEEP_PURCHASES),
        }
    }

    /// Whether `observed` stays in the history once recorded: an item already in its list
    /// stays; a new one unless it is older than everything in a full list.
    fn keeps(&self, observed: &Observed) -> bool {
        let (list, keep) = self.list(observed.kind);
        list.iter().any(|s| s.item == observed.item)
            || list.partition_point(|s| s.at > observed.at) < keep
    }

    /// The rule of "counted once per person": the item is new to the person and stays in the
    /// history. An interaction older than a full list counts for nothing, or it would count
    /// again the next time.
    fn is_first(&self, observed: &Observed) -> bool {
        !self.contains(&observed.item) && self.keeps(observed)
    }

    /// Records `observed`. Events may arrive out of order: each lands where its time puts it,
    /// and a late one never moves an item back behind an interaction newer than itself.
    pub fn observe(&mut self, observed: &Observed) -> Recorded {
        if !self.keeps(observed) {
            return Recorded::default();
        }
        let previous = self.last(&observed.item);
        let recorded = Recorded {
            first: previous.is_none(),
            popular: previous.is_none_or(|p| p.date_naive() != observed.at.date_naive()),
        };
        let (list, keep) = match observed.kind {
            Interaction::View => (&mut self.views, KEEP_VIEWS),
            Interaction::Purchase => (&mut self.purchases, KEEP_PURCHASES),
        };
        let mut at = observed.at;
        if let Some(i) = list.iter().position(|s| s.item == observed.item) {
            at = at.max(list.remove(i).at);
        }
        let place = list.partition_point(|s| s.at > at);
        list.insert(
            place,
            Seen {
                item: observed.item.clone(),
                at,
            },
        );
        list.truncate(keep);
        recorded
    }
}

/// The item pairs `observed` adds to the tenant's co-occurrence counts, each as `(a, b)` with
/// `a < b`, given the person's history before it is recorded.
///
/// The rule, so that co-occurrence counts people rather than clicks: a pair is added when the
/// second of its two items enters a person's history while the first is within `window` of it
/// (before or after: a late event pairs with what came after it too). An item already in the
/// history adds nothing (a repeat view, or buying what was viewed), so a person adds at most one
/// to a pair while both items stay in the kept history. The new item pairs with the
/// `max_partners` distinct items nearest to it in time (ties by id).
pub fn pairs(
    history_before: &ItemHistory,
    observed: &Observed,
    window: Duration,
    max_partners: usize,
) -> Vec<(String, String)> {
    if !history_before.is_first(observed) {
        return Vec::new();
    }
    let mut near: Vec<(Duration, &str)> = history_before
        .views
        .iter()
        .chain(&history_before.purchases)
        .map(|s| ((s.at - observed.at).abs(), s.item.as_str()))
        .filter(|(gap, _)| *gap <= window)
        .collect();
    // Each item once, at its nearest time.
    near.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    near.dedup_by(|later, first| later.1 == first.1);
    near.sort();
    near.truncate(max_partners);
    near.into_iter()
        .map(|(_, partner)| {
            let item = observed.item.as_str();
            let (a, b) = if partner < item {
                (partner, item)
            } else {
                (item, partner)
            };
            (a.to_owned(), b.to_owned())
        })
        .collect()
}

/// What events add to a tenant's item counts: the processor folds a batch's views and purchases
/// into one of these per tenant, stores it with the batch, and the counts take it in later.
/// Sums are order-free, so changes of batches taken in any order add up to the same counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemChanges {
    /// People who saw an item for the first time (`Recorded::first`), by item.
    pub people: BTreeMap<String, u32>,
    /// People who saw both items of a pair, `a < b` (`pairs`).
    pub pairs: BTreeMap<(String, String), u32>,
    /// Popularity (`Recorded::popular`) by item and hour since 1970.
    pub hourly: BTreeMap<(String, i64), u32>,
}

impl ItemChanges {
    pub fn is_empty(&self) -> bool {
        self.people.is_empty() && self.pairs.is_empty() && self.hourly.is_empty()
    }

    /// Records `observed` in the person's `history` and adds what it does to the counts.
    pub fn record(&mut self, history: &mut ItemHistory, observed: &Observed) {
        for pair in pairs(history, observed, PAIR_WINDOW, PAIR_PARTNERS) {
            add(&mut self.pairs, pair, 1);
        }
        let recorded = history.observe(observed);
        if recorded.first {
            add(&mut self.people, observed.item.clone(), 1);
        }
        if recorded.popular {
            add(
                &mut self.hourly,
                (observed.item.clone(), hour(observed.at)),
                1,
            );
        }
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: ItemChanges) {
        for (k, n) in other.people {
            add(&mut self.people, k, n);
        }
        for (k, n) in other.pairs {
            add(&mut self.pairs, k, n);
        }
        for (k, n) in other.hourly {
            add(&mut self.hourly, k, n);
        }
    }

    /// The items whose neighbour lists these changes make stale: both items of every pair, and
    /// every item whose people count changed (its similarities all change with it).
    pub fn touched(&self) -> BTreeSet<&str> {
        self.pairs
            .keys()
            .flat_map(|(a, b)| [a.as_str(), b.as_str()])
            .chain(self.people.keys().map(String::as_str))
            .collect()
    }
}

impl ItemChanges {
    /// Each pair as both of its items count it: item → (partner, people added), in key order.
    pub fn partners_added(&self) -> BTreeMap<&str, Vec<(&str, u32)>> {
        let mut added: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
        for ((a, b), n) in &self.pairs {
            if a == b {
                continue;
            }
            added.entry(a).or_default().push((b, *n));
            added.entry(b).or_default().push((a, *n));
        }
        added
    }
}

/// An item's partners: the items seen with it and by how many people, at most `KEEP_PARTNERS`,
/// most first (ties by id). Kept as the Space-Saving algorithm keeps heavy hitters (Metwally,
/// Agrawal and El Abbadi, 2005): when the list is full a new partner takes the place of the
/// least counted one, with that count added to its own, so a partner that comes often enough
/// gets in, and a kept count is over its true count by at most the count it displaced. While
/// an item has fewer partners than that, every count is exact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partners(Vec<(String, u32)>);

impl Partners {
    /// Reads the stored form: one `partner<TAB>count` a line. (Item ids have no control
    /// characters, so neither separator can be part of one.)
    pub fn decode(text: &str) -> Result<Self, String> {
        let list = text
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (id, n) = line
                    .split_once('\t')
                    .ok_or_else(|| format!("partners: {line:?} has no count"))?;
                let n = n
                    .parse::<u32>()
                    .map_err(|e| format!("partners: {line:?}: {e}"))?;
                Ok((id.to_owned(), n))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut partners = Self(list);
        partners.sort();
        Ok(partners)
    }

    /// The list of counts `(partner, people)`, a partner given more than once counted once with
    /// their sum; nothing dropped.
    pub fn from_counts(mut counts: Vec<(&str, u32)>) -> Self {
        counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut list: Vec<(String, u32)> = Vec::with_capacity(counts.len());
        for (id, n) in counts {
            match list.last_mut() {
                Some(last) if last.0 == id => last.1 = last.1.saturating_add(n),
                _ => list.push((id.to_owned(), n)),
            }
        }
        let mut partners = Self(list);
        partners.sort();
        partners
    }

    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.0.iter().map(|(id, _)| id.len() + 8).sum());
        for (id, n) in &self.0 {
            // Writing into a String cannot fail.
            let _ = writeln!(text, "{id}\t{n}");
        }
        text
    }

    /// Adds people seen with each partner (`added`, each partner once), keeping at most `keep`.
    pub fn add(&mut self, added: &[(&str, u32)], keep: usize) {
        // A list is short (`KEEP_PARTNERS`): looking each partner up in it beats an index.
        let mut newcomers: Vec<(&str, u32)> = Vec::new();
        for (id, n) in added {
            match self.0.iter_mut().find(|(kept, _)| kept == id) {
                Some(kept) => kept.1 = kept.1.saturating_add(*n),
                None => newcomers.push((id, *n)),
            }
        }
        // The strongest newcomers first, so that they are the ones a full list takes in.
        newcomers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (id, n) in newcomers {
            if self.0.len() < keep {
                self.0.push((id.to_owned(), n));
                continue;
            }
            // The least counted (the last id of those) gives its place and its count.
            let Some((i, _)) = self
                .0
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            else {
                break; // `keep` is 0
            };
            let floor = self.0[i].1;
            self.0[i] = (id.to_owned(), floor.saturating_add(n));
        }
        self.sort();
    }

    fn sort(&mut self) {
        self.0.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    }

    /// (partner, people seen with it), most first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(id, n)| (id.as_str(), *n))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn add<K: Ord>(counts: &mut BTreeMap<K, u32>, key: K, n: u32) {
    let count = counts.entry(key).or_insert(0);
    *count = count.saturating_add(n);
}

/// The similarity of two items from the people who saw each (`n_a`, `n_b`) and both (`co`):
/// the cosine of their binary person vectors (the Ochiai coefficient), `co / sqrt(n_a * n_b)`,
/// times the shrinkage `co / (co + SHRINKAGE)` (as Koren's neighbourhood models shrink
/// similarities of little support), so that two items seen together by one person only
/// do not outrank items seen together by hundreds. 0 when any count is 0.
pub fn similarity(co: u32, n_a: u32, n_b: u32) -> f64 {
    if co == 0 || n_a == 0 || n_b == 0 {
        return 0.0;
    }
    let co = f64::from(co);
    // Eviction from the bounded history can count a person twice; a cosine stays at most 1.
    let cosine = (co / (f64::from(n_a) * f64::from(n_b)).sqrt()).min(1.0);
    cosine * co / (co + SHRINKAGE)
}

/// The tenant's item counts in memory: per item the people who saw it (`n`), per pair the
/// people who saw both (`co`), each pair kept in both items' rows.
#[derive(Clone, Debug, Default)]
pub struct ItemCounts {
    people: HashMap<String, u32>,
    co: HashMap<String, HashMap<String, u32>>,
}

impl ItemCounts {
    /// One more person saw `item` (`Recorded::first`).
    pub fn add_person(&mut self, item: &str) {
        increment(&mut self.people, item);
    }

    /// One more person saw both (from `pairs`); an item does not pair with itself.
    pub fn add_pair(&mut self, a: &str, b: &str) {
        if a == b {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            match self.co.get_mut(x) {
                Some(row) => increment(row, y),
                None => {
                    self.co
                        .insert(x.to_owned(), HashMap::from([(y.to_owned(), 1)]));
                }
            }
        }
    }

    /// Takes in a batch's changes.
    pub fn apply(&mut self, changes: &ItemChanges) {
        for (item, n) in &changes.people {
            let count = self.people.entry(item.clone()).or_insert(0);
            *count = count.saturating_add(*n);
        }
        for ((a, b), n) in &changes.pairs {
            for _ in 0..*n {
                self.add_pair(a, b);
            }
        }
    }

    /// `n(item)`.
    pub fn people(&self, item: &str) -> u32 {
        self.people.get(item).copied().unwrap_or(0)
    }

    /// `co(a, b)`.
    pub fn co(&self, a: &str, b: &str) -> u32 {
        self.co
            .get(a)
            .and_then(|row| row.get(b))
            .copied()
            .unwrap_or(0)
    }

    pub fn similarity(&self, a: &str, b: &str) -> f64 {
        similarity(self.co(a, b), self.people(a), self.people(b))
    }

    /// The items with a count, in no particular order.
    pub fn items(&self) -> impl Iterator<Item = &str> {
        self.people.keys().map(String::as_str)
    }

    /// The items `item` co-occurred with, and how many people saw both.
    pub fn row(&self, item: &str) -> impl Iterator<Item = (&str, u32)> {
        self.co
            .get(item)
            .into_iter()
            .flat_map(|row| row.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    /// How many distinct pairs have a count.
    pub fn pair_count(&self) -> usize {
        self.co.values().map(HashMap::len).sum::<usize>() / 2
    }

    /// The item's `k` nearest neighbours now.
    pub fn neighbours(&self, item: &str, k: usize) -> Neighbours {
        Neighbours::from_row(
            item,
            self.people(item),
            self.row(item),
            |p| self.people(p),
            k,
        )
    }
}

fn increment(counts: &mut HashMap<String, u32>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n = n.saturating_add(1),
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
}

/// Best first: higher score, then lower id (so equal scores always come out in one order).
fn best_first<S: AsRef<str>>(a: &(S, f64), b: &(S, f64)) -> Ordering {
    b.1.total_cmp(&a.1)
        .then_with(|| a.0.as_ref().cmp(b.0.as_ref()))
}

/// The `k` best of `scored` with a score above 0, best first.
fn top<S: AsRef<str>>(mut scored: Vec<(S, f64)>, k: usize) -> Vec<(S, f64)> {
    scored.retain(|(_, s)| *s > 0.0);
    if k == 0 {
        return Vec::new();
    }
    if scored.len() > k {
        scored.select_nth_unstable_by(k, best_first);
        scored.truncate(k);
    }
    scored.sort_by(best_first);
    scored
}

/// An item's most similar items, best first, at most `TOP_K`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    pub item: String,
    pub list: Vec<(String, f64)>,
}

impl Neighbours {
    /// Rebuilds `item`'s list from its co-occurrence row (`(partner, co)`), its people count and
    /// its partners' (`people_of`): the `k` most similar, ties by id, none with similarity 0.
    /// Similarities change with every count, so a list is rebuilt whole, not patched.
    pub fn from_row<'a>(
        item: &str,
        people: u32,
        row: impl IntoIterator<Item = (&'a str, u32)>,
        people_of: impl Fn(&str) -> u32,
        k: usize,
    ) -> Self {
        let scored = row
            .into_iter()
            .filter(|(partner, _)| *partner != item)
            .map(|(partner, co)| (partner, similarity(co, people, people_of(partner))))
            .collect();
        Self {
            item: item.to_owned(),
            list: top(scored, k)
                .into_iter()
                .map(|(p, s)| (p.to_owned(), s))
                .collect(),
        }
    }
}

/// An item's popularity: distinct people a day (`Recorded::popular`), by hour since 1970.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hourly(pub BTreeMap<i64, u32>);

fn hour(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(HOUR)
}

/// A span in whole hours, at least one.
fn hours(span: Duration) -> i64 {
    (span.num_seconds() + HOUR - 1).div_euclid(HOUR).max(1)
}

impl Hourly {
    pub fn add(&mut self, at: DateTime<Utc>) {
        let count = self.0.entry(hour(at)).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Adds `n` to the hour `hour` (hours since 1970, as `ItemChanges::hourly` keys them).
    pub fn add_hour(&mut self, hour: i64, n: u32) {
        let count = self.0.entry(hour).or_insert(0);
        *count = count.saturating_add(n);
    }

    /// The count over `span` up to `now`, to the hour: the hour of `now` and the whole hours
    /// before it, `span` of them in all.
    pub fn count(&self, span: Duration, now: DateTime<Utc>) -> u32 {
        let last = hour(now);
        self.sum(last - hours(span) + 1, last)
    }

    fn sum(&self, first: i64, last: i64) -> u32 {
        if first > last {
            return 0;
        }
        self.0
            .range(first..=last)
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }

    /// Drops the hours before the hour of `before`: nothing asks about them any more.
    pub fn forget_before(&mut self, before: DateTime<Utc>) {
        self.0 = self.0.split_off(&hour(before));
    }
}

/// The `limit` items most people interacted with over `window` up to `now` (distinct people a
/// day, summed), best first, ties by id. The caller passes a category's items for a category.
pub fn popular<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a Hourly)>,
    window: Duration,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<(String, f64)> {
    let scored = items
        .into_iter()
        .map(|(id, counts)| (id, f64::from(counts.count(window, now))))
        .collect();
    top(scored, limit)
        .into_iter()
        .map(|(id, s)| (id.to_owned(), s))
        .collect()
}

/// The `limit` items rising most: with `r` the count over `recent` up to `now` and `b` the count
/// over `baseline` before that, the ratio of observed to expected recent counts with additive
/// (Laplace) smoothing, `(r + α) / (b · recent/baseline + α)`, α = `TRENDING_PRIOR`. The
/// pseudo-counts keep a new item with two views (1.2) below an item going from 10 a day to 20
/// (1.5), while a new item many people discover at once (30 today: 4.0) still tops the list. Items with no recent
/// count are left out; ties by id.
pub fn trending<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a Hourly)>,
    recent: Duration,
    baseline: Duration,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<(String, f64)> {
    let (recent_h, baseline_h) = (hours(recent), hours(baseline));
    let last = hour(now);
    let scored = items
        .into_iter()
        .filter_map(|(id, counts)| {
            let r = counts.sum(last - recent_h + 1, last);
            if r == 0 {
                return None;
            }
            let b = counts.sum(last - recent_h - baseline_h + 1, last - recent_h);
            let expected = f64::from(b) * recent_h as f64 / baseline_h as f64;
            Some((
                id,
                (f64::from(r) + TRENDING_PRIOR) / (expected + TRENDING_PRIOR),
            ))
        })
        .collect();
    top(scored, limit)
        .into_iter()
        .map(|(id, s)| (id.to_owned(), s))
        .collect()
}

/// How long hourly counts matter: the longest span `popular` and `trending` look back over.
pub fn counts_kept() -> Duration {
    POPULAR_WINDOW.max(TRENDING_RECENT + TRENDING_BASELINE)
}

/// How many items a stored ranking keeps (enough for `MAX_LIMIT` after a person's purchases
/// and out-of-stock items are left out).
pub const RANKED: usize = 100;

/// Which stored ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ranking {
    Popular,
    Trending,
}

impl Ranking {
    pub fn as_str(&self) -> &'static str {
        match self {
            Ranking::Popular => "popular",
            Ranking::Trending => "trending",
        }
    }
}

/// One stored ranking: of a category's items, or of all (`category: None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub kind: Ranking,
    pub category: Option<String>,
    pub list: Vec<(String, f64)>,
}

/// Every ranking a tenant's hourly counts give at `now`: `popular` and `trending` of all items,
/// and of each category's (`category_of`, from the catalog; an item not in the catalog counts in
/// the overall rankings only), each up to `RANKED` items. Rankings that come out empty are left
/// out; the caller replaces the tenant's stored rankings with these.
pub fn rankings<'a>(
    hourly: &'a BTreeMap<String, Hourly>,
    category_of: impl Fn(&str) -> Option<&'a str>,
    now: DateTime<Utc>,
) -> Vec<Ranked> {
    let mut groups: BTreeMap<Option<&'a str>, Vec<(&'a str, &'a Hourly)>> = BTreeMap::new();
    for (id, counts) in hourly {
        groups.entry(None).or_default().push((id.as_str(), counts));
        if let Some(category) = category_of(id) {
            groups
                .entry(Some(category))
                .or_default()
                .push((id.as_str(), counts));
        }
    }
    let mut out = Vec::new();
    for (category, items) in groups {
        let lists = [
            (
                Ranking::Popular,
                popular(items.iter().copied(), POPULAR_WINDOW, now, RANKED),
            ),
            (
                Ranking::Trending,
                trending(
                    items.iter().copied(),
                    TRENDING_RECENT,
                    TRENDING_BASELINE,
                    now,
                    RANKED,
                ),
            ),
        ];
        for (kind, list) in lists {
            if !list.is_empty() {
                out.push(Ranked {
                    kind,
                    category: category.map(str::to_owned),
                    list,
                });
            }
        }
    }
    out
}

/// The hour `at` falls in, in hours since 1970 (as `ItemChanges::hourly` keys them).
pub fn hour_of(at: DateTime<Utc>) -> i64 {
    hour(at)
}

/// How a list of recommendations is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RecentlyViewed,
    ViewedNotPurchased,
    SimilarItems,
    Popular,
    Trending,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::RecentlyViewed,
        Strategy::ViewedNotPurchased,
        Strategy::SimilarItems,
        Strategy::Popular,
        Strategy::Trending,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::RecentlyViewed => "recently_viewed",
            Strategy::ViewedNotPurchased => "viewed_not_purchased",
            Strategy::SimilarItems => "similar_items",
            Strategy::Popular => "popular",
            Strategy::Trending => "trending",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(Strategy::as_str).collect();
                format!("unknown strategy {s:?}: use one of {}", names.join(", "))
            })
    }
}

/// A `limit` as the API takes it: 1 to `MAX_LIMIT`.
pub fn check_limit(limit: usize) -> Result<usize, FieldError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(FieldError::new("limit", format!("1 to {MAX_LIMIT}")))
    }
}

/// What `recommend` reads from the tenant's store, which the caller loads beforehand (a cache of
/// the catalog, neighbour lists and ranked lists) so that the ranking stays pure.
pub trait Lookup {
    /// The catalog's item.
    fn item(&self, id: &str) -> Option<&CatalogItem>;
    /// The item's neighbours, best first (empty when it has none).
    fn neighbours(&self, id: &str) -> &[(String, f64)];
    /// The `popular` ranking of a category, or of all items, best first.
    fn popular(&self, category: Option<&str>) -> &[(String, f64)];
    /// The `trending` ranking of a category, or of all items, best first.
    fn trending(&self, category: Option<&str>) -> &[(String, f64)];
}

/// Whom to recommend for and how much.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub history: &'a ItemHistory,
    /// Clamped to 1..=`MAX_LIMIT` (`check_limit` for the API's error).
    pub limit: usize,
    /// Only items of this category.
    pub category: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// One recommended item, with its score under the strategy that produced it (scores of
/// different strategies do not compare). Written flat: `{"id", "name", …, "score", "strategy"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    #[serde(flatten)]
    pub item: CatalogItem,
    pub score: f64,
    pub strategy: Strategy,
}

/// What a message asks of recommendations: a journey's send step (`recommendations:
/// {strategy, limit, category}`). The list goes into the message's `data` as `recommendations`
/// (templates: `{{ recommendations[0].name }}`), and `data` values written
/// `$recommendations.<i>.<field>` take the field's value (AlimTalk templates, which take only
/// their approved variables: `item: $recommendations.0.name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wanted {
    pub strategy: Strategy,
    #[serde(default = "default_wanted")]
    pub limit: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Whether a short list is filled from `popular` (the cold start). `false` for a message
    /// whose words are about the strategy ("the product you viewed"): only its own items.
    #[serde(default = "filled", skip_serializing_if = "is_filled")]
    pub fallback: bool,
}

fn default_wanted() -> usize {
    3
}

fn filled() -> bool {
    true
}

fn is_filled(fallback: &bool) -> bool {
    *fallback
}

impl Wanted {
    /// `list` as the ask takes it: without the cold start's fill unless `fallback`.
    pub fn keep(&self, mut list: Vec<Recommendation>) -> Vec<Recommendation> {
        if !self.fallback {
            list.retain(|r| r.strategy == self.strategy);
        }
        list
    }

    /// Each field at fault, named under `at` (`steps[2].send.recommendations`).
    pub fn check(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(e) = check_limit(self.limit) {
            errors.push(FieldError::new(format!("{at}.{}", e.field), e.detail));
        }
        if self.category.as_deref().is_some_and(|c| !valid_item_id(c)) {
            errors.push(FieldError::new(
                format!("{at}.category"),
                format!("1 to {MAX_CATEGORY} characters, no control characters"),
            ));
        }
        errors
    }
}

/// A `data` value naming a recommended item's field: `$recommendations.<i>.<path>` (`path`
/// dotted: `name`, `price`, `attributes.brand`). `None` for any other text; an error for a
/// malformed reference.
pub fn data_reference(text: &str) -> Option<Result<(usize, &str), String>> {
    let rest = text.strip_prefix("$recommendations")?;
    let parsed = rest.strip_prefix('.').and_then(|rest| {
        let (index, path) = rest.split_once('.')?;
        let index: usize = index.parse().ok()?;
        (!path.is_empty() && !path.split('.').any(str::is_empty)).then_some((index, path))
    });
    Some(parsed.ok_or_else(|| {
        format!("{text:?}: a recommended item's field is $recommendations.<index>.<field>")
    }))
}

/// The `$recommendations.<i>.<field>` values of a message's `data` against what it asks for:
/// each needs an ask (`wanted`) with more than `i` items. Named `<at>.<name>` (`at`: where the
/// data is, `steps[2].send.data`); malformed references are `data_reference`'s to report.
pub fn check_references(
    data: &Map<String, Value>,
    wanted: Option<&Wanted>,
    at: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (name, value) in data {
        let Some(Ok((index, _))) = value.as_str().and_then(data_reference) else {
            continue;
        };
        match wanted {
            None => errors.push(FieldError::new(
                format!("{at}.{name}"),
                "ask for recommendations (recommendations: {strategy, limit}) to use them",
            )),
            Some(w) if index >= w.limit => errors.push(FieldError::new(
                format!("{at}.{name}"),
                format!("{} recommendations are asked for", w.limit),
            )),
            Some(_) => {}
        }
    }
    errors
}

/// Puts `list` into a message's `data` as `recommendations`, and replaces each value that is a
/// `data_reference` with what it names. The error names the first value the list cannot give
/// (too short, or an item without the field): the message is not made.
pub fn fill_data(data: &mut Map<String, Value>, list: &[Recommendation]) -> Result<(), String> {
    let items = serde_json::to_value(list).unwrap_or(Value::Array(Vec::new()));
    for (name, value) in data.iter_mut() {
        let Some(found) = value.as_str().and_then(data_reference) else {
            continue;
        };
        let (index, path) = found?;
        let field = items
            .get(index)
            .and_then(|item| path.split('.').try_fold(item, |v, key| v.get(key)))
            .filter(|v| !v.is_null())
            .ok_or_else(|| {
                format!(
                    "data.{name}: {} recommended items, none with {path} at {index}",
                    list.len()
                )
            })?;
        *value = field.clone();
    }
    data.insert("recommendations".into(), items);
    Ok(())
}

/// `0.5^(age / RECENCY_HALF_LIFE)`; 1 for a time at or after `now`.
fn recency(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    let age = (now - at).num_milliseconds().max(0) as f64;
    0.5f64.powf(age / RECENCY_HALF_LIFE.num_milliseconds() as f64)
}

/// Up to `request.limit` catalog items for the person, best first. Every strategy leaves out
/// items not in the catalog, out of stock, or outside `request.category`; then:
///
/// - `recently_viewed`: viewed items, newest view first, without those bought at or after
///   their last view (bought, then viewed again: shown);
/// - `viewed_not_purchased`: viewed items never bought (in the kept history), newest view first;
/// - `similar_items`: from the person's `SEEDS` latest items, each weighted by recency (half
///   life `RECENCY_HALF_LIFE`), the sum of weight × similarity over the seeds' neighbours,
///   without items the person viewed or bought;
/// - `popular`, `trending`: the lookup's ranking (of the category when one is asked), without
///   bought items.
///
/// Cold start: a list shorter than the limit is filled from `popular` (the category's, or all
/// items'), by popular's rules and never repeating an item; each item says which strategy
/// produced it. Ties go by score, then id.
pub fn recommend(
    strategy: Strategy,
    request: &Request<'_>,
    lookup: &dyn Lookup,
) -> Vec<Recommendation> {
    pick(&candidates(strategy, request, lookup), request, |id| {
        lookup.item(id)
    })
}

/// A possible recommendation before the catalog is asked: the item, its score, and the strategy
/// that produced it (`popular` for the cold start's fill).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub score: f64,
    pub by: Strategy,
}

/// `recommend`'s first half, which needs no catalog: the strategy's items best first, then
/// popular's fill, each item once, without what the person bought. `pick` keeps those the
/// catalog has in stock (and of the category), so a caller can ask the catalog for only as many
/// as the list needs.
pub fn candidates<'a>(
    strategy: Strategy,
    request: &Request<'a>,
    lookup: &'a dyn Lookup,
) -> Vec<Candidate<'a>> {
    let history = request.history;
    let now = request.now;
    let bought: HashSet<&str> = history.purchases.iter().map(|s| s.item.as_str()).collect();
    let own: Vec<(&'a str, f64)> = match strategy {
        Strategy::RecentlyViewed => history
            .views
            .iter()
            .filter(|v| history.bought(&v.item).is_none_or(|b| b < v.at))
            .map(|v| (v.item.as_str(), recency(v.at, now)))
            .collect(),
        Strategy::ViewedNotPurchased => history
            .views
            .iter()
            .filter(|v| !bought.contains(v.item.as_str()))
            .map(|v| (v.item.as_str(), recency(v.at, now)))
            .collect(),
        Strategy::SimilarItems => similar(history, lookup, now),
        Strategy::Popular => ranked(lookup.popular(request.category), &bought),
        Strategy::Trending => ranked(lookup.trending(request.category), &bought),
    };
    // Cold start: then popular's items, by its rules.
    let fill = if strategy == Strategy::Popular {
        &[][..]
    } else {
        lookup.popular(request.category)
    };
    let fill = fill
        .iter()
        .filter(|(id, _)| !bought.contains(id.as_str()))
        .map(|(id, score)| ((id.as_str(), *score), Strategy::Popular));
    let mut seen = HashSet::new();
    own.into_iter()
        .map(|c| (c, strategy))
        .chain(fill)
        .filter(|((id, _), _)| seen.insert(*id))
        .map(|((id, score), by)| Candidate { id, score, by })
        .collect()
}

/// `recommend`'s second half: up to `request.limit` of `candidates`, in order, that the catalog
/// (`item`) has, in stock and of `request.category`.
pub fn pick<'c>(
    candidates: &[Candidate<'_>],
    request: &Request<'_>,
    item: impl Fn(&str) -> Option<&'c CatalogItem>,
) -> Vec<Recommendation> {
    let limit = request.limit.clamp(1, MAX_LIMIT);
    candidates
        .iter()
        .filter_map(|c| {
            let found = item(c.id)?;
            let fits = found.in_stock
                && request
                    .category
                    .is_none_or(|cat| found.category.as_deref() == Some(cat));
            fits.then(|| Recommendation {
                item: found.clone(),
                score: c.score,
                strategy: c.by,
            })
        })
        .take(limit)
        .collect()
}

fn ranked<'a>(list: &'a [(String, f64)], bought: &HashSet<&str>) -> Vec<(&'a str, f64)> {
    list.iter()
        .filter(|(id, _)| !bought.contains(id.as_str()))
        .map(|(id, score)| (id.as_str(), *score))
        .collect()
}

fn similar<'a>(
    history: &ItemHistory,
    lookup: &'a dyn Lookup,
    now: DateTime<Utc>,
) -> Vec<(&'a str, f64)> {
    let seen: HashSet<&str> = history
        .views
        .iter()
        .chain(&history.purchases)
        .map(|s| s.item.as_str())
        .collect();
    let mut scores: HashMap<&'a str, f64> = HashMap::new();
    for (seed, at) in history.recent(SEEDS) {
        let weight = recency(at, now);
        for (candidate, similarity) in lookup.neighbours(seed) {
            if !seen.contains(candidate.as_str()) {
                *scores.entry(candidate.as_str()).or_default() += weight * similarity;
            }
        }
    }
    let mut ranked: Vec<(&str, f64)> = scores.into_iter().collect();
    ranked.sort_by(best_first);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
    }

    fn mins(m: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(m)
    }

    fn seen(kind: Interaction, item: &str, at: DateTime<Utc>) -> Observed {
        Observed {
            kind,
            item: item.into(),
            at,
        }
    }

    fn view(item: &str, at: DateTime<Utc>) -> Observed {
        seen(Interaction::View, item, at)
    }

    fn buy(item: &str, at: DateTime<Utc>) -> Observed {
        seen(Interaction::Purchase, item, at)
    }

    fn history(steps: &[Observed]) -> ItemHistory {
        let mut h = ItemHistory::default();
        for o in steps {
            h.observe(o);
        }
        h
    }

    fn ids(list: &[Seen]) -> Vec<&str> {
        list.iter().map(|s| s.item.as_str()).collect()
    }

    fn item(id: &str, category: &str) -> CatalogItem {
        CatalogItem {
            id: id.into(),
            name: format!("Item {id}"),
            price: Some(1000.0),
            currency: Some("KRW".into()),
            url: Some(format!("https://shop.example/{id}")),
            image: None,
            category: Some(category.into()),
            in_stock: true,
            attributes: Map::new(),
        }
    }

    #[derive(Default)]
    struct Store {
        items: HashMap<String, CatalogItem>,
        neighbours: HashMap<String, Vec<(String, f64)>>,
        popular: HashMap<Option<String>, Vec<(String, f64)>>,
        trending: Vec<(String, f64)>,
    }

    impl Store {
        fn with(items: &[(&str, &str)]) -> Self {
            Store {
                items: items
                    .iter()
                    .map(|(id, c)| (id.to_string(), item(id, c)))
                    .collect(),
                ..Default::default()
            }
        }
    }

    fn scored(list: &[(&str, f64)]) -> Vec<(String, f64)> {
        list.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    impl Lookup for Store {
        fn item(&self, id: &str) -> Option<&CatalogItem> {
            self.items.get(id)
        }
        fn neighbours(&self, id: &str) -> &[(String, f64)] {
            self.neighbours.get(id).map_or(&[], Vec::as_slice)
        }
        fn popular(&self, category: Option<&str>) -> &[(String, f64)] {
            self.popular
                .get(&category.map(str::to_owned))
                .map_or(&[], Vec::as_slice)
        }
        fn trending(&self, _: Option<&str>) -> &[(String, f64)] {
            &self.trending
        }
    }

    fn run(
        strategy: Strategy,
        h: &ItemHistory,
        limit: usize,
        category: Option<&str>,
        store: &Store,
    ) -> Vec<(String, Strategy)> {
        let request = Request {
            history: h,
            limit,
            category,
            now: mins(600),
        };
        recommend(strategy, &request, store)
            .into_iter()
            .map(|r| (r.item.id, r.strategy))
            .collect()
    }

    fn names(list: &[(String, Strategy)]) -> Vec<&str> {
        list.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn catalog_items_read_with_defaults_and_refuse_unknown_fields() {
        let item: CatalogItem =
            serde_json::from_value(json!({"id": "sku-1", "name": "Mug", "price": 12000})).unwrap();
        assert!(item.in_stock);
        assert!(item.attributes.is_empty());
        assert_eq!(item.validate(""), Ok(()));
        let text = serde_json::to_string(&item).unwrap();
        assert!(text.contains(r#""in_stock":true"#), "{text}");
        assert!(!text.contains("currency"), "{text}");
        assert!(
            serde_json::from_value::<CatalogItem>(
                json!({"id": "a", "name": "b", "instock": false})
            )
            .is_err()
        );
    }

    #[test]
    fn each_bad_catalog_field_is_named_with_its_place_in_the_batch() {
        let bad = CatalogItem {
            id: "a\u{7}b".into(),
            name: " ".into(),
            price: Some(-1.0),
            currency: Some("krw".into()),
            url: Some("ftp://shop.example/a".into()),
            image: Some("https:///no-host".into()),
            category: Some(String::new()),
            in_stock: true,
            attributes: json!({"blob": "x".repeat(MAX_ATTRIBUTES)})
                .as_object()
                .cloned()
                .unwrap(),
        };
        assert_eq!(
            fields(bad.validate("items[2]").unwrap_err()),
            [
                "items[2].id",
                "items[2].name",
                "items[2].price",
                "items[2].currency",
                "items[2].url",
                "items[2].image",
                "items[2].category",
                "items[2].attributes"
            ]
        );
        let mut long = item("x", "c");
        long.id = "i".repeat(MAX_ITEM_ID + 1);
        long.name = "n".repeat(MAX_ITEM_NAME + 1);
        long.price = Some(f64::NAN);
        assert_eq!(
            fields(long.validate("").unwrap_err()),
            ["id", "name", "price"]
        );
        let mut fine = item("i".repeat(MAX_ITEM_ID).as_str(), "c");
        fine.price = Some(0.0);
        fine.url = Some("HTTP://shop.example:8080/a?b=c".into());
        assert_eq!(fine.validate(""), Ok(()));
    }

    #[test]
    fn events_read_as_views_and_purchases_of_an_item() {
        let events = ItemEvents::default();
        let event = |name: &str, props: Value| Event {
            event: name.into(),
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp: t0(),
        };
        assert_eq!(
            events.read(&event("product_viewed", json!({"item_id": "sku-1"}))),
            Some(view("sku-1", t0()))
        );
        assert_eq!(
            events.read(&event("purchase", json!({"item_id": 42}))),
            Some(buy("42", t0()))
        );
        for (name, props) in [
            ("signed_up", json!({"item_id": "a"})),
            ("purchase", json!({})),
            ("purchase", json!({"item_id": ""})),
            ("purchase", json!({"item_id": ["a"]})),
        ] {
            assert_eq!(events.read(&event(name, props.clone())), None, "{props}");
        }
        let custom: ItemEvents =
            serde_json::from_value(json!({"purchases": ["order_placed"], "item_property": "sku"}))
                .unwrap();
        assert_eq!(custom.views, ["product_viewed"]);
        assert_eq!(
            custom.read(&event("order_placed", json!({"sku": "b"}))),
            Some(buy("b", t0()))
        );
    }

    #[test]
    fn history_is_newest_first_with_each_item_once() {
        let h = history(&[
            view("a", mins(0)),
            view("b", mins(1)),
            view("a", mins(2)),
            view("c", mins(3)),
            buy("b", mins(4)),
        ]);
        assert_eq!(ids(&h.views), ["c", "a", "b"]);
        assert_eq!(h.views[1].at, mins(2), "a repeat view moves the item up");
        assert_eq!(ids(&h.purchases), ["b"]);
        assert_eq!(h.recent(2), [("b", mins(4)), ("c", mins(3))]);
        assert_eq!(h.last("b"), Some(mins(4)));
    }

    #[test]
    fn history_is_bounded() {
        let mut h = ItemHistory::default();
        for i in 0..(KEEP_VIEWS as i64 + 20) {
            h.observe(&view(&format!("v{i}"), mins(i)));
            h.observe(&buy(&format!("p{i}"), mins(i)));
        }
        assert_eq!(h.views.len(), KEEP_VIEWS);
        assert_eq!(h.purchases.len(), KEEP_PURCHASES);
        assert_eq!(h.views[0].item, format!("v{}", KEEP_VIEWS + 19));
        assert_eq!(h.views[KEEP_VIEWS - 1].item, "v20");
    }

    #[test]
    fn late_events_land_in_time_order_and_never_move_an_item_back() {
        let h = history(&[
            view("a", mins(10)),
            view("c", mins(30)),
            view("b", mins(20)),
            // A late view of `c` older than its last one keeps the newer time.
            view("c", mins(5)),
        ]);
        assert_eq!(ids(&h.views), ["c", "b", "a"]);
        assert_eq!(h.views[0].at, mins(30));
    }

    #[test]
    fn an_event_older_than_a_full_history_counts_for_nothing() {
        let mut h = ItemHistory::default();
        for i in 0..KEEP_VIEWS as i64 {
            h.observe(&view(&format!("v{i}"), mins(100 + i)));
        }
        let old = view("old", mins(0));
        assert!(pairs(&h, &old, PAIR_WINDOW, PAIR_PARTNERS).is_empty());
        assert_eq!(h.observe(&old), Recorded::default());
        assert!(!h.contains("old"));
        // As old as the oldest kept: it takes that one's place.
        let tie = view("tie", mins(100));
        assert!(h.observe(&tie).first);
        assert_eq!(h.views.last().unwrap().item, "tie");
    }

    #[test]
    fn a_person_counts_once_for_an_item_and_once_a_day_for_its_popularity() {
        let mut h = ItemHistory::default();
        let first = h.observe(&view("a", mins(0)));
        assert_eq!(
            first,
            Recorded {
                first: true,
                popular: true
            }
        );
        // Again the same day, viewed or bought: nothing new.
        assert_eq!(h.observe(&view("a", mins(60))), Recorded::default());
        assert_eq!(h.observe(&buy("a", mins(90))), Recorded::default());
        // The next day: popular again, still not a new person.
        let next_day = h.observe(&view("a", t0() + Duration::days(1)));
        assert_eq!(
            next_day,
            Recorded {
                first: false,
                popular: true
            }
        );
    }

    #[test]
    fn history_reads_back_from_json_with_readable_times() {
        let h = history(&[view("a", mins(0)), buy("a", mins(1))]);
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.contains(r#""at":"2026-12-01T09:00:00Z""#), "{text}");
        assert_eq!(serde_json::from_str::<ItemHistory>(&text).unwrap(), h);
        assert_eq!(
            serde_json::from_str::<ItemHistory>("{}").unwrap(),
            ItemHistory::default()
        );
    }

    #[test]
    fn a_new_item_pairs_with_the_persons_items_within_the_window() {
        let h = history(&[
            view("old", t0() - Duration::days(8)),
            view("z", mins(0)),
            buy("b", mins(10)),
        ]);
        let p = pairs(&h, &view("m", mins(20)), PAIR_WINDOW, PAIR_PARTNERS);
        // Nearest first; each in canonical order; `old` is outside the window.
        assert_eq!(
            p,
            [("b".into(), "m".into()), ("m".into(), "z".into())] as [(String, String); 2]
        );
        assert!(
            pairs(
                &ItemHistory::default(),
                &view("m", mins(0)),
                PAIR_WINDOW,
                20
            )
            .is_empty()
        );
    }

    #[test]
    fn a_new_item_pairs_with_at_most_the_nearest_partners() {
        let mut h = ItemHistory::default();
        for i in 0..30 {
            h.observe(&view(&format!("i{i:02}"), mins(i)));
        }
        let p = pairs(&h, &view("new", mins(30)), PAIR_WINDOW, 3);
        let partners: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(partners, ["i29", "i28", "i27"]);
        assert!(pairs(&h, &view("new", mins(30)), PAIR_WINDOW, 0).is_empty());
    }

    #[test]
    fn a_person_adds_at_most_one_to_a_pair() {
        let mut h = history(&[view("a", mins(0)), view("b", mins(1))]);
        for again in [view("a", mins(2)), view("b", mins(3)), buy("a", mins(4))] {
            assert!(pairs(&h, &again, PAIR_WINDOW, PAIR_PARTNERS).is_empty());
            h.observe(&again);
        }
        // Viewed and bought in the window: the item pairs with it once, at its nearest time.
        let p = pairs(&h, &view("c", mins(5)), PAIR_WINDOW, PAIR_PARTNERS);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn a_late_event_pairs_with_what_came_after_it() {
        let h = history(&[
            view("later", t0() + Duration::days(6)),
            view("far", mins(0)),
        ]);
        let late = view("late", t0() - Duration::days(2));
        let p = pairs(&h, &late, PAIR_WINDOW, PAIR_PARTNERS);
        assert_eq!(p, [("far".into(), "late".into())] as [(String, String); 1]);
    }

    #[test]
    fn similarity_is_shrunk_cosine() {
        // co 10 of 20 and 80 people: cosine 10/40 = 0.25, shrunk by 10/15.
        assert!((similarity(10, 20, 80) - 0.25 * 10.0 / 15.0).abs() < 1e-12);
        // One shared person out of one each: cosine 1 but little support.
        assert!((similarity(1, 1, 1) - 1.0 / 6.0).abs() < 1e-12);
        assert!(similarity(1, 1, 1) < similarity(50, 100, 100));
        assert_eq!(similarity(0, 5, 5), 0.0);
        assert_eq!(similarity(3, 0, 5), 0.0);
        assert!(similarity(9, 3, 3) <= 1.0);
    }

    #[test]
    fn counts_are_symmetric_and_an_item_does_not_pair_with_itself() {
        let mut counts = ItemCounts::default();
        for item in ["a", "b", "a"] {
            counts.add_person(item);
        }
        counts.add_pair("a", "b");
        counts.add_pair("b", "a");
        counts.add_pair("a", "a");
        assert_eq!((counts.people("a"), counts.people("b")), (2, 1));
        assert_eq!((counts.co("a", "b"), counts.co("b", "a")), (2, 2));
        assert_eq!(counts.co("a", "a"), 0);
        assert_eq!(counts.pair_count(), 1);
        assert!((counts.similarity("a", "b") - similarity(2, 2, 1)).abs() < 1e-12);
    }

    #[test]
    fn neighbours_keep_the_best_k_and_break_ties_by_id() {
        let people = |p: &str| if p == "far" { 400 } else { 10 };
        let row = [
            ("d", 5),
            ("b", 5),
            ("c", 5),
            ("a", 5),
            ("far", 5),
            ("none", 0),
        ];
        let n = Neighbours::from_row("x", 10, row, people, 3);
        let list: Vec<&str> = n.list.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(list, ["a", "b", "c"]);
        assert_eq!(n.item, "x");
        let all = Neighbours::from_row("x", 10, row, people, TOP_K);
        let list: Vec<&str> = all.list.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            list,
            ["a", "b", "c", "d", "far"],
            "similarity 0 is left out"
        );
        let from_counts = {
            let mut counts = ItemCounts::default();
            counts.add_person("x");
            counts.add_person("y");
            counts.add_pair("x", "y");
            counts.neighbours("x", TOP_K)
        };
        assert_eq!(from_counts.list, [("y".to_owned(), similarity(1, 1, 1))]);
    }

    #[test]
    fn popularity_counts_the_window_to_the_hour() {
        let mut a = Hourly::default();
        for at in [
            t0() - Duration::days(8),
            t0() - Duration::hours(2),
            t0(),
            t0() + Duration::minutes(59),
        ] {
            a.add(at);
        }
        let now = t0() + Duration::minutes(30);
        assert_eq!(a.count(POPULAR_WINDOW, now), 3);
        assert_eq!(a.count(Duration::hours(1), now), 2);
        let mut b = Hourly::default();
        b.add(t0());
        let mut c = b.clone();
        c.add(t0());
        c.add(t0());
        let ranked = popular([("b", &b), ("a", &a), ("c", &c)], POPULAR_WINDOW, now, 10);
        assert_eq!(ranked, scored(&[("a", 3.0), ("c", 3.0), ("b", 1.0)]));
        assert!(popular([("a", &a)], POPULAR_WINDOW, now, 0).is_empty());
        a.forget_before(t0() - Duration::days(7));
        assert_eq!(a.0.len(), 2);
    }

    #[test]
    fn trending_smooths_so_a_new_item_with_two_views_does_not_top_the_list() {
        let now = t0();
        let mut fresh = Hourly::default();
        for _ in 0..2 {
            fresh.add(now);
        }
        // 10 a day for the past week, 20 today: doubling.
        let mut rising = Hourly::default();
        for day in 1..=7 {
            for _ in 0..10 {
                rising.add(now - Duration::days(day));
            }
        }
        for _ in 0..20 {
            rising.add(now);
        }
        let mut steady = Hourly::default();
        for day in 0..=7 {
            for _ in 0..10 {
                steady.add(now - Duration::days(day));
            }
        }
        let quiet = Hourly::default();
        let ranked = trending(
            [
                ("fresh", &fresh),
                ("rising", &rising),
                ("steady", &steady),
                ("quiet", &quiet),
            ],
            TRENDING_RECENT,
            TRENDING_BASELINE,
            now,
            10,
        );
        let order: Vec<&str> = ranked.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["rising", "fresh", "steady"]);
        assert!((ranked[0].1 - 30.0 / 20.0).abs() < 1e-12);
        assert!((ranked[1].1 - 12.0 / 10.0).abs() < 1e-12);
        assert!((ranked[2].1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn strategies_parse_by_name_and_a_wrong_one_lists_them() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        let err = "best".parse::<Strategy>().unwrap_err();
        assert!(err.contains("\"best\""), "{err}");
        assert!(
            err.contains("recently_viewed, viewed_not_purchased, similar_items, popular, trending"),
            "{err}"
        );
    }

    #[test]
    fn limit_is_1_to_50() {
        assert_eq!(check_limit(1), Ok(1));
        assert_eq!(check_limit(MAX_LIMIT), Ok(MAX_LIMIT));
        for bad in [0, MAX_LIMIT + 1] {
            assert_eq!(check_limit(bad).unwrap_err().field, "limit");
        }
        let store = Store::with(&[("a", "c")]);
        let h = history(&[view("a", mins(0))]);
        assert_eq!(run(Strategy::RecentlyViewed, &h, 0, None, &store).len(), 1);
    }

    #[test]
    fn recently_viewed_leaves_out_what_was_bought_after_out_of_stock_and_unknown() {
        let mut store = Store::with(&[("a", "c"), ("b", "c"), ("c", "c"), ("d", "c"), ("e", "c")]);
        store.items.get_mut("d").unwrap().in_stock = false;
        let h = history(&[
            view("a", mins(0)),
            view("b", mins(1)),
            buy("b", mins(2)),
            buy("c", mins(3)),
            view("c", mins(4)),
            view("d", mins(5)),
            view("unknown", mins(6)),
            view("e", mins(7)),
            view("a", mins(8)),
        ]);
        let list = run(Strategy::RecentlyViewed, &h, 10, None, &store);
        // `b` bought after its view; `c` bought before it was viewed again: shown.
        assert_eq!(names(&list), ["a", "e", "c"]);
        let request = Request {
            history: &h,
            limit: 10,
            category: None,
            now: mins(8),
        };
        let scores: Vec<f64> = recommend(Strategy::RecentlyViewed, &request, &store)
            .iter()
            .map(|r| r.score)
            .collect();
        assert_eq!(scores[0], 1.0);
        assert!(scores[1] < 1.0 && scores[1] > scores[2]);
    }

    #[test]
    fn viewed_not_purchased_leaves_out_anything_bought() {
        let store = Store::with(&[("a", "c"), ("b", "c"), ("c", "c")]);
        let h = history(&[
            view("a", mins(0)),
            buy("c", mins(1)),
            view("b", mins(2)),
            view("c", mins(3)),
        ]);
        let list = run(Strategy::ViewedNotPurchased, &h, 10, None, &store);
        assert_eq!(names(&list), ["b", "a"]);
        assert!(list.iter().all(|(_, s)| *s == Strategy::ViewedNotPurchased));
    }

    #[test]
    fn similar_items_weigh_recent_seeds_and_leave_out_what_the_person_saw() {
        let mut store = Store::with(&[
            ("old", "c"),
            ("new", "c"),
            ("x", "c"),
            ("y", "c"),
            ("z", "c"),
            ("gone", "c"),
        ]);
        store.items.get_mut("gone").unwrap().in_stock = false;
        store.neighbours.insert(
            "old".into(),
            scored(&[("x", 0.9), ("new", 0.9), ("gone", 0.9)]),
        );
        store
            .neighbours
            .insert("new".into(), scored(&[("y", 0.5), ("z", 0.2), ("x", 0.1)]));
        // `old` a day before `new`: half the weight.
        let h = history(&[
            view("old", mins(600) - Duration::days(1)),
            buy("new", mins(600)),
        ]);
        let request = Request {
            history: &h,
            limit: 3,
            category: None,
            now: mins(600),
        };
        let list = recommend(Strategy::SimilarItems, &request, &store);
        let got: Vec<(&str, f64)> = list.iter().map(|r| (r.item.id.as_str(), r.score)).collect();
        assert_eq!(got[0].0, "x");
        assert!((got[0].1 - (0.5 * 0.9 + 0.1)).abs() < 1e-9);
        assert_eq!(&got[1..], [("y", 0.5), ("z", 0.2)]);
    }

    #[test]
    fn similar_items_tie_by_id() {
        let mut store = Store::with(&[("s", "c"), ("b", "c"), ("a", "c"), ("c", "c")]);
        store
            .neighbours
            .insert("s".into(), scored(&[("c", 0.3), ("b", 0.3), ("a", 0.3)]));
        let h = history(&[view("s", mins(600))]);
        let list = run(Strategy::SimilarItems, &h, 3, None, &store);
        assert_eq!(names(&list), ["a", "b", "c"]);
    }

    #[test]
    fn cold_start_fills_from_popular_without_repeating_an_item() {
        let mut store = Store::with(&[("a", "c"), ("b", "c"), ("p", "c"), ("q", "c"), ("r", "c")]);
        store.popular.insert(
            None,
            scored(&[("a", 9.0), ("b", 8.0), ("p", 7.0), ("q", 6.0), ("r", 5.0)]),
        );
        let h = history(&[view("a", mins(0)), buy("b", mins(1))]);
        let list = run(Strategy::RecentlyViewed, &h, 3, None, &store);
        // `a` once; `b` bought, so popular leaves it out too.
        assert_eq!(
            list,
            [
                ("a".into(), Strategy::RecentlyViewed),
                ("p".into(), Strategy::Popular),
                ("q".into(), Strategy::Popular)
            ]
        );
        let stranger = run(
            Strategy::SimilarItems,
            &ItemHistory::default(),
            2,
            None,
            &store,
        );
        assert_eq!(names(&stranger), ["a", "b"]);
        assert!(stranger.iter().all(|(_, s)| *s == Strategy::Popular));
    }

    #[test]
    fn a_category_filters_every_strategy_and_its_fill() {
        let mut store = Store::with(&[
            ("a", "shoes"),
            ("b", "hats"),
            ("s1", "shoes"),
            ("h1", "hats"),
        ]);
        store
            .popular
            .insert(Some("shoes".into()), scored(&[("s1", 3.0)]));
        store
            .popular
            .insert(None, scored(&[("h1", 5.0), ("s1", 3.0)]));
        let h = history(&[view("a", mins(0)), view("b", mins(1))]);
        let list = run(Strategy::RecentlyViewed, &h, 5, Some("shoes"), &store);
        assert_eq!(
            list,
            [
                ("a".into(), Strategy::RecentlyViewed),
                ("s1".into(), Strategy::Popular)
            ]
        );
        assert_eq!(
            names(&run(Strategy::RecentlyViewed, &h, 5, None, &store)),
            ["b", "a", "h1", "s1"]
        );
    }

    #[test]
    fn popular_and_trending_leave_out_what_the_person_bought() {
        let mut store = Store::with(&[("a", "c"), ("b", "c"), ("t", "c")]);
        store
            .popular
            .insert(None, scored(&[("a", 9.0), ("b", 8.0)]));
        store.trending = scored(&[("t", 2.0), ("a", 1.5)]);
        let h = history(&[buy("a", mins(0))]);
        assert_eq!(
            run(Strategy::Popular, &h, 5, None, &store),
            [("b".into(), Strategy::Popular)]
        );
        assert_eq!(
            run(Strategy::Trending, &h, 5, None, &store),
            [
                ("t".into(), Strategy::Trending),
                ("b".into(), Strategy::Popular)
            ]
        );
    }

    #[test]
    fn a_recommendation_is_written_flat_for_templates() {
        let r = Recommendation {
            item: item("a", "c"),
            score: 0.5,
            strategy: Strategy::SimilarItems,
        };
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(value["name"], "Item a");
        assert_eq!(value["price"], 1000.0);
        assert_eq!(value["strategy"], "similar_items");
        assert_eq!(value["score"], 0.5);
    }

    #[test]
    fn changes_of_batches_add_up_to_the_counts_of_their_events_in_any_order() {
        // Two people, two batches each; the counts folded event by event are the reference.
        let events = [
            (0, view("a", mins(0))),
            (0, view("b", mins(1))),
            (1, view("b", mins(2))),
            (0, view("a", mins(3))),
            (1, buy("c", mins(4))),
            (1, view("a", mins(5))),
            (0, buy("b", mins(6))),
        ];
        let mut histories = [ItemHistory::default(), ItemHistory::default()];
        let mut reference = ItemCounts::default();
        for (person, o) in &events {
            let h = &mut histories[*person];
            for (a, b) in pairs(h, o, PAIR_WINDOW, PAIR_PARTNERS) {
                reference.add_pair(&a, &b);
            }
            if h.observe(o).first {
                reference.add_person(&o.item);
            }
        }
        let mut histories = [ItemHistory::default(), ItemHistory::default()];
        let mut batches = [ItemChanges::default(), ItemChanges::default()];
        for (i, (person, o)) in events.iter().enumerate() {
            batches[i / 4].record(&mut histories[*person], o);
        }
        assert!(batches.iter().all(|b| !b.is_empty()));
        let mut forward = ItemChanges::default();
        forward.merge(batches[0].clone());
        forward.merge(batches[1].clone());
        let mut backward = ItemChanges::default();
        backward.merge(batches[1].clone());
        backward.merge(batches[0].clone());
        assert_eq!(forward, backward);
        let mut counts = ItemCounts::default();
        counts.apply(&forward);
        for a in ["a", "b", "c"] {
            assert_eq!(counts.people(a), reference.people(a), "n({a})");
            for b in ["a", "b", "c"] {
                assert_eq!(counts.co(a, b), reference.co(a, b), "co({a}, {b})");
            }
        }
        assert_eq!((counts.people("a"), counts.co("a", "b")), (2, 2));
        // a, b and c each popular once per person and day: a twice, b twice, c once.
        let popular: u32 = forward.hourly.values().sum();
        assert_eq!(popular, 5);
        assert_eq!(
            forward.touched().into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        // A repeat view adds nothing.
        let mut again = ItemChanges::default();
        again.record(&mut histories[0], &view("a", mins(7)));
        assert!(again.is_empty());
    }

    #[test]
    fn rankings_cover_all_items_and_each_category_and_skip_empty_lists() {
        let now = mins(0);
        let mut hourly: BTreeMap<String, Hourly> = BTreeMap::new();
        for (id, views, days_ago) in [("a", 5, 0), ("b", 3, 0), ("c", 9, 3), ("x", 1, 0)] {
            let h = hourly.entry(id.to_owned()).or_default();
            for _ in 0..views {
                h.add(now - Duration::days(days_ago));
            }
        }
        let category = |id: &str| match id {
            "a" | "c" => Some("shoes"),
            "b" => Some("bags"),
            _ => None,
        };
        let ranked = rankings(&hourly, category, now);
        let find = |kind, category: Option<&str>| {
            ranked
                .iter()
                .find(|r| r.kind == kind && r.category.as_deref() == category)
                .map(|r| r.list.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        };
        assert_eq!(find(Ranking::Popular, None).unwrap(), ["c", "a", "b", "x"]);
        assert_eq!(find(Ranking::Popular, Some("shoes")).unwrap(), ["c", "a"]);
        assert_eq!(find(Ranking::Popular, Some("bags")).unwrap(), ["b"]);
        // Trending looks at the last day: c's views are three days old.
        assert_eq!(find(Ranking::Trending, Some("shoes")).unwrap(), ["a"]);
        assert_eq!(find(Ranking::Trending, None).unwrap(), ["a", "b", "x"]);
        // Nine days on, nothing is in any window: no rankings at all.
        assert!(rankings(&hourly, category, now + Duration::days(9)).is_empty());
        assert_eq!(counts_kept(), Duration::days(8));
        assert_eq!(hour_of(now), now.timestamp() / 3600);
    }

    #[test]
    fn a_message_gets_its_recommendations_and_the_fields_its_data_names() {
        let list = vec![Recommendation {
            item: item("sku-1", "shoes"),
            score: 0.5,
            strategy: Strategy::ViewedNotPurchased,
        }];
        let mut data: Map<String, Value> = serde_json::from_value(json!({
            "item": "$recommendations.0.name", "link": "$recommendations.0.url",
            "pct": 10, "note": "$entry-like text stays"}))
        .unwrap();
        fill_data(&mut data, &list).unwrap();
        assert_eq!(data["item"], "Item sku-1");
        assert_eq!(data["link"], "https://shop.example/sku-1");
        assert_eq!(data["pct"], 10);
        assert_eq!(data["recommendations"][0]["id"], "sku-1");
        assert_eq!(
            data["recommendations"][0]["strategy"],
            "viewed_not_purchased"
        );
        // The list is too short, or the item lacks the field: named, and no message.
        let mut data: Map<String, Value> =
            serde_json::from_value(json!({"second": "$recommendations.1.name"})).unwrap();
        let e = fill_data(&mut data, &list).unwrap_err();
        assert!(e.starts_with("data.second: 1 recommended items"), "{e}");
        let mut data: Map<String, Value> =
            serde_json::from_value(json!({"img": "$recommendations.0.image"})).unwrap();
        assert!(fill_data(&mut data, &list).is_err());
        // References read.
        assert_eq!(
            data_reference("$recommendations.2.attributes.brand"),
            Some(Ok((2, "attributes.brand")))
        );
        for bad in [
            "$recommendations",
            "$recommendations.x.name",
            "$recommendations.0",
            "$recommendations.0..a",
        ] {
            assert!(matches!(data_reference(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(data_reference("$entry.item_id"), None);
        // What a step may ask.
        let wanted: Wanted = serde_json::from_value(json!({"strategy": "similar_items"})).unwrap();
        assert_eq!(wanted.limit, 3);
        assert!(wanted.check("s").is_empty());
        assert!(wanted.fallback, "filled from popular unless asked not to");
        let wanted = Wanted {
            strategy: Strategy::Popular,
            limit: 0,
            category: Some(String::new()),
            fallback: true,
        };
        let fields: Vec<String> = wanted.check("s").into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["s.limit", "s.category"]);
    }

    #[test]
    fn partners_sum_exactly_until_full_then_keep_the_heavy_hitters() {
        let mut p = Partners::default();
        p.add(&[("b", 2), ("c", 1)], 3);
        p.add(&[("c", 2), ("d", 1)], 3);
        let list: Vec<(&str, u32)> = p.iter().collect();
        assert_eq!(list, [("c", 3), ("b", 2), ("d", 1)], "sums, most first");
        // Full: a newcomer takes the least counted place (of equals, the last id), with its
        // count on top, so one seen often enough gets in; the total is kept.
        p.add(&[("e", 1)], 3);
        assert_eq!(p.iter().collect::<Vec<_>>(), [("c", 3), ("b", 2), ("e", 2)]);
        p.add(&[("f", 5), ("g", 1)], 3);
        assert_eq!(p.iter().collect::<Vec<_>>(), [("f", 7), ("c", 3), ("g", 3)]);
        assert_eq!(p.len(), 3);
        // Stored and read back as it was; ids with spaces and non-ASCII letters too.
        let mut q = Partners::default();
        q.add(&[("운동화 1", 4), ("sku-2", 4), ("a b", 1)], KEEP_PARTNERS);
        let text = q.encode();
        assert_eq!(text, "sku-2\t4\n운동화 1\t4\na b\t1\n");
        assert_eq!(Partners::decode(&text), Ok(q));
        assert_eq!(Partners::decode(""), Ok(Partners::default()));
        assert_eq!(
            Partners::from_counts(vec![("b", 1), ("a", 2), ("b", 2)]),
            Partners::decode("b\t3\na\t2\n").unwrap()
        );
        assert!(Partners::decode("x\n").is_err());
        assert!(Partners::decode("x\tmany\n").is_err());
    }

    #[test]
    fn partners_added_counts_each_pair_in_both_items() {
        let mut changes = ItemChanges::default();
        changes.pairs.insert(("a".into(), "b".into()), 2);
        changes.pairs.insert(("a".into(), "c".into()), 1);
        let added = changes.partners_added();
        assert_eq!(added["a"], [("b", 2), ("c", 1)]);
        assert_eq!(added["b"], [("a", 2)]);
        assert_eq!(added["c"], [("a", 1)]);
        // Taken into partner lists, they give the exact counts a reference keeps.
        let mut reference = ItemCounts::default();
        for _ in 0..2 {
            reference.add_pair("a", "b");
        }
        reference.add_pair("a", "c");
        for (item, added) in &added {
            let mut p = Partners::default();
            p.add(added, KEEP_PARTNERS);
            for (partner, n) in p.iter() {
                assert_eq!(n, reference.co(item, partner));
            }
        }
    }

    #[test]
    fn an_ask_without_fallback_keeps_only_the_strategys_own_items() {
        let item = |id: &str, strategy| Recommendation {
            item: CatalogItem {
                id: id.into(),
                name: id.into(),
                price: None,
                currency: None,
                url: None,
                image: None,
                category: None,
                in_stock: true,
                attributes: Map::new(),
            },
            score: 1.0,
            strategy,
        };
        let list = vec![
            item("a", Strategy::ViewedNotPurchased),
            item("b", Strategy::Popular),
        ];
        let mut wanted: Wanted =
            serde_json::from_value(json!({"strategy": "viewed_not_purchased"})).unwrap();
        assert_eq!(wanted.keep(list.clone()), list);
        wanted.fallback = false;
        assert_eq!(wanted.keep(list.clone()), list[..1]);
        // Written back as given: the default left out.
        assert_eq!(
            serde_json::to_value(&wanted).unwrap()["fallback"],
            json!(false)
        );
        wanted.fallback = true;
        assert_eq!(serde_json::to_value(&wanted).unwrap().get("fallback"), None);
    }
}

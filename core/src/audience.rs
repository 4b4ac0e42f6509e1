//! The data behind marketing automation, as ports: the event log (where `POST /v1/events` makes
//! events durable: a Kafka topic keyed by tenant and person in the cluster mode, an SQLite table
//! all-in-one), the tenant's segments and their members, and the batch step the event processor
//! commits. The decisions are `ump_automation`'s pure functions; `fold` runs them over a batch.
//! The MySQL implementation is in `audience_mysql`, the SQLite one in `sqlite`.

use crate::history::HistoryError;
use crate::queue::{EnqueueError, KafkaSettings};
use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use ump_automation::FieldError;
use ump_automation::event::{Input, Queued};
use ump_automation::journey::{JourneySend, JourneySet, StatKey};
use ump_automation::person::PersonRecord;
use ump_automation::profile::Profile;
use ump_automation::recommend::ItemChanges;
use ump_automation::segment::{Segment, SegmentSet};

pub use crate::resources::{DEFAULT_EVENTS_GROUP, DEFAULT_EVENTS_TOPIC};

/// One entry of the event log: a `Queued` input of a person of `tenant`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub tenant: String,
    #[serde(flatten)]
    pub queued: Queued,
}

impl LogEntry {
    /// The Kafka key: one person's entries go to one partition, in order.
    pub fn key(&self) -> String {
        partition_key(&self.tenant, &self.queued.user_id)
    }
}

/// Tenant ids and user ids hold no control characters: a newline separates them unambiguously.
pub fn partition_key(tenant: &str, user_id: &str) -> String {
    format!("{tenant}\n{user_id}")
}

/// Where accepted events become durable. `202` is answered only after `append` returns `Ok`.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync {
    async fn append(&self, tenant: &str, entries: &[Queued]) -> Result<(), EnqueueError>;
    async fn ready(&self) -> Result<(), String>;
}

/// The event log on Kafka: every entry acknowledged by all in-sync replicas through an
/// idempotent producer before `append` returns.
pub struct KafkaEventLog {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaEventLog {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer: FutureProducer = settings
            .client_config_with(&[
                // A batch of events is many records at once: a short linger packs them into few
                // requests without delaying a lone event noticeably.
                ("linger.ms", "2"),
                ("compression.type", "lz4"),
            ])
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl EventLog for KafkaEventLog {
    async fn append(&self, tenant: &str, entries: &[Queued]) -> Result<(), EnqueueError> {
        let mut sends = Vec::with_capacity(entries.len());
        for queued in entries {
            let entry = LogEntry {
                tenant: tenant.to_owned(),
                queued: queued.clone(),
            };
            let payload =
                serde_json::to_vec(&entry).map_err(|e| EnqueueError::Rejected(e.to_string()))?;
            let key = entry.key();
            let producer = &self.producer;
            let topic = &self.topic;
            let timeout = self.timeout;
            sends.push(async move {
                let record = FutureRecord::to(topic).key(&key).payload(&payload);
                producer.send(record, timeout).await
            });
        }
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                return Err(EnqueueError::Unavailable(e.to_string()));
            }
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        crate::queue::kafka_ready(&self.producer).await
    }
}

/// A segment as stored: its definition and when it was written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredSegment {
    #[serde(flatten)]
    pub segment: Segment,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A member of a segment, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub since: DateTime<Utc>,
}

/// A segment's size at a moment (sampled once a minute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SizePoint {
    pub at: DateTime<Utc>,
    pub size: u64,
}

/// How long size samples are kept.
pub const SIZE_HISTORY: chrono::Duration = chrono::Duration::days(7);

/// The minute `at` falls in: samples of one minute from several processors are one row.
pub fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp() - at.timestamp().rem_euclid(60), 0).unwrap_or(at)
}

/// Why a segment change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("invalid segment")]
    Invalid(Vec<FieldError>),
    /// Deleting a segment another refers to.
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Store(#[from] HistoryError),
}

/// Segments and the processor's view of people, per tenant.
#[async_trait::async_trait]
pub trait SegmentStore: Send + Sync {
    async fn segments(&self, tenant: &str) -> Result<Vec<StoredSegment>, HistoryError>;
    /// Creates or replaces `segment`, checked against the tenant's other segments under a lock
    /// of the tenant's segments; every person of the tenant is then looked at again. `Ok(true)`
    /// when it is new.
    async fn put_segment(
        &self,
        tenant: &str,
        segment: Segment,
        now: DateTime<Utc>,
    ) -> Result<bool, SegmentError>;
    /// Deletes the segment and its memberships; `Ok(false)` when there was none.
    async fn delete_segment(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SegmentError>;
    async fn segment_size(&self, tenant: &str, id: &str) -> Result<u64, HistoryError>;
    /// Members in `user_id` order after `after`, at most `limit`.
    async fn members(
        &self,
        tenant: &str,
        id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Member>, HistoryError>;
    /// The segment's size samples since `since`, oldest first.
    async fn sizes(
        &self,
        tenant: &str,
        id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<SizePoint>, HistoryError>;
    /// Records every segment's size now (once per minute, whoever asks) and forgets samples
    /// older than `SIZE_HISTORY`.
    async fn sample_sizes(&self, now: DateTime<Utc>) -> Result<(), HistoryError>;
    /// What the processor keeps of the person.
    async fn person(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<PersonRecord>, HistoryError>;
}

pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<String, HistoryError> {
    serde_json::to_string(value).map_err(|e| HistoryError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, HistoryError> {
    serde_json::from_str(text).map_err(|e| HistoryError::Corrupt(format!("{what}: {e}")))
}

/// The segments of a tenant as the processor uses them. Stored segments were checked together
/// when written, so a failure here is a corrupt store.
pub(crate) fn segment_set(
    tenant: &str,
    segments: Vec<Segment>,
) -> Result<SegmentSet, HistoryError> {
    SegmentSet::new(segments).map_err(|errors| {
        HistoryError::Corrupt(format!("the segments of tenant {tenant:?}: {errors:?}"))
    })
}

/// A person as a batch loads them.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub profile: Option<Profile>,
    pub record: Option<PersonRecord>,
    /// When the person was last erased: their events accepted up to then are discarded.
    pub erased_at: Option<DateTime<Utc>>,
}

/// What a batch changed of one person: the record to store, a profile to create (an event of a
/// person nobody identified yet), and the segments entered and left over the whole batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PersonChange {
    pub tenant: String,
    pub user_id: String,
    pub record: PersonRecord,
    pub new_profile: Option<Profile>,
    pub entered: Vec<String>,
    pub left: Vec<String>,
    /// Messages the person's journeys sent, in the order they were made.
    pub sends: Vec<JourneySend>,
}

/// What a batch did, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events folded in.
    pub counted: u64,
    /// Events already counted (the same client message id, or an entry the store had already
    /// taken before a crash or a rebalance).
    pub repeated: u64,
    pub rechecks: u64,
    /// Events accepted before their person was erased, discarded.
    pub erased: u64,
    pub entered: u64,
    pub left: u64,
    /// The journeys' counts, by tenant and counter (stored with the batch).
    pub journey_stats: BTreeMap<(String, StatKey), i64>,
    /// Journey messages made.
    pub journey_sends: u64,
    /// What the batch's views and purchases add to each tenant's item counts.
    pub items: BTreeMap<String, ItemChanges>,
}

/// What the processor runs for a tenant: their segments and their journeys.
#[derive(Clone, Debug, Default)]
pub struct Automation {
    pub segments: SegmentSet,
    pub journeys: JourneySet,
}

/// Runs the batch's entries, in order, over the people they concern. Pure: the stores load
/// `people` and the segments before and write the changes after, in one transaction.
pub fn fold<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    mut people: BTreeMap<(String, String), Loaded>,
    tenants: &BTreeMap<String, Automation>,
    now: DateTime<Utc>,
) -> (Vec<PersonChange>, BatchReport) {
    let mut report = BatchReport::default();
    let mut before: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut created: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sends: BTreeMap<(String, String), Vec<JourneySend>> = BTreeMap::new();
    let empty = Automation::default();
    for entry in entries {
        let key = (entry.tenant.clone(), entry.queued.user_id.clone());
        let person = people.entry(key.clone()).or_default();
        if person
            .erased_at
            .is_some_and(|erased| entry.queued.received_at <= erased)
        {
            // Still on its way when the person was erased: it must not bring them back.
            report.erased += 1;
            continue;
        }
        if person.profile.is_none() {
            if matches!(entry.queued.input, Input::Recheck) {
                // Nobody to look at (erased since the recheck was asked for).
                continue;
            }
            person.profile = Some(Profile {
                user_id: entry.queued.user_id.clone(),
                anonymous: true,
                ..Profile::default()
            });
            created.insert(key.clone());
        }
        let record = person.record.get_or_insert_with(PersonRecord::default);
        before
            .entry(key.clone())
            .or_insert_with(|| record.segments.clone());
        let profile = person.profile.as_ref().expect("set above");
        let automation = tenants.get(&entry.tenant).unwrap_or(&empty);
        // An entry is never looked at before it was accepted: a batch whose clock was read
        // before it took its entries (waiting for the store's lock meanwhile) may hold newer ones,
        // and a journey activated in between must still see them as newer than itself.
        let at = now.max(entry.queued.received_at);
        let step = record.step(
            profile,
            &entry.queued.input,
            &automation.segments,
            &automation.journeys,
            at,
        );
        for (stat, delta) in step.journeys.stats {
            *report
                .journey_stats
                .entry((entry.tenant.clone(), stat))
                .or_default() += delta;
        }
        if !step.items.is_empty() {
            report
                .items
                .entry(entry.tenant.clone())
                .or_default()
                .merge(step.items);
        }
        if !step.journeys.sends.is_empty() {
            report.journey_sends += step.journeys.sends.len() as u64;
            sends.entry(key).or_default().extend(step.journeys.sends);
        }
        match entry.queued.input {
            Input::Recheck => report.rechecks += 1,
            Input::Event { .. } if step.counted => report.counted += 1,
            Input::Event { .. } => report.repeated += 1,
        }
        report.entered += step.entered.len() as u64;
        report.left += step.left.len() as u64;
    }
    let changes = before
        .into_iter()
        .map(|(key, was)| {
            let person = people.remove(&key).expect("loaded");
            let record = person.record.expect("stepped");
            let entered = record.segments.difference(&was).cloned().collect();
            let left = was.difference(&record.segments).cloned().collect();
            PersonChange {
                sends: sends.remove(&key).unwrap_or_default(),
                new_profile: if created.contains(&key) {
                    person.profile
                } else {
                    None
                },
                tenant: key.0,
                user_id: key.1,
                record,
                entered,
                left,
            }
        })
        .collect();
    (changes, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use ump_automation::state::Event;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    fn entry(tenant: &str, user: &str, event: Option<&str>, id: Option<&str>) -> LogEntry {
        let input = match event {
            Some(name) => Input::Event {
                event: Event {
                    event: name.into(),
                    properties: Default::default(),
                    timestamp: now(),
                },
                message_id: id.map(str::to_owned),
            },
            None => Input::Recheck,
        };
        LogEntry {
            tenant: tenant.into(),
            queued: Queued {
                user_id: user.into(),
                input,
                received_at: now(),
            },
        }
    }

    fn buyers() -> SegmentSet {
        let segment: Segment = serde_json::from_value(json!({"id": "buyers",
            "condition": {"performed": {"event": "purchase", "within": "7d"}}}))
        .unwrap();
        SegmentSet::new(vec![segment]).unwrap()
    }

    #[test]
    fn a_batch_creates_unknown_people_and_reports_net_membership_changes() {
        let segments = BTreeMap::from([(
            "t1".to_owned(),
            Automation {
                segments: buyers(),
                ..Automation::default()
            },
        )]);
        let known = Loaded {
            profile: Some(Profile {
                user_id: "known".into(),
                ..Profile::default()
            }),
            record: None,
            erased_at: None,
        };
        let people = BTreeMap::from([(("t1".to_owned(), "known".to_owned()), known)]);
        let entries = [
            entry("t1", "new", Some("purchase"), Some("m1")),
            entry("t1", "new", Some("purchase"), Some("m1")),
            entry("t1", "known", Some("page_viewed"), None),
            entry("t2", "new", Some("purchase"), None),
            entry("t1", "gone", None, None),
        ];
        let (changes, report) = fold(&entries, people, &segments, now());
        assert_eq!(
            report,
            BatchReport {
                counted: 3,
                repeated: 1,
                rechecks: 0,
                erased: 0,
                entered: 1,
                left: 0,
                ..BatchReport::default()
            }
        );
        let by_key: BTreeMap<(String, String), &PersonChange> = changes
            .iter()
            .map(|c| ((c.tenant.clone(), c.user_id.clone()), c))
            .collect();
        assert_eq!(
            by_key.len(),
            3,
            "the erased person is not recreated by a recheck"
        );
        let new = by_key[&("t1".to_owned(), "new".to_owned())];
        assert_eq!(new.entered, ["buyers"]);
        assert!(new.new_profile.as_ref().is_some_and(|p| p.anonymous));
        let known = by_key[&("t1".to_owned(), "known".to_owned())];
        assert!(known.new_profile.is_none() && known.entered.is_empty());
        // Tenant t2 has no segments: the same user id there is another person.
        let other = by_key[&("t2".to_owned(), "new".to_owned())];
        assert!(other.entered.is_empty() && other.new_profile.is_some());
    }

    #[test]
    fn events_accepted_before_an_erasure_never_bring_the_person_back() {
        let segments = BTreeMap::from([(
            "t1".to_owned(),
            Automation {
                segments: buyers(),
                ..Automation::default()
            },
        )]);
        let erased_at = now() + chrono::Duration::seconds(1);
        let erased = || Loaded {
            erased_at: Some(erased_at),
            ..Loaded::default()
        };
        let at = |mut e: LogEntry, received: DateTime<Utc>| {
            e.queued.received_at = received;
            e
        };
        // In the log, an event accepted after the erasure may come before one accepted just
        // before it (their appends raced): the older one is discarded wherever it lands.
        let entries = [
            at(entry("t1", "gone", Some("purchase"), None), erased_at),
            at(
                entry("t1", "gone", Some("purchase"), None),
                erased_at + chrono::Duration::milliseconds(5),
            ),
            at(
                entry("t1", "gone", Some("purchase"), None),
                erased_at - chrono::Duration::milliseconds(5),
            ),
            at(entry("t1", "only-old", Some("purchase"), None), now()),
        ];
        let people = BTreeMap::from([
            (("t1".to_owned(), "gone".to_owned()), erased()),
            (("t1".to_owned(), "only-old".to_owned()), erased()),
        ]);
        let (changes, report) = fold(&entries, people, &segments, now());
        assert_eq!((report.erased, report.counted), (3, 1));
        assert_eq!(changes.len(), 1, "only-old is not recreated: {changes:?}");
        let gone = &changes[0];
        assert_eq!(gone.user_id, "gone");
        assert!(gone.new_profile.as_ref().is_some_and(|p| p.anonymous));
        assert_eq!(
            gone.record
                .state
                .occurrences
                .values()
                .map(Vec::len)
                .sum::<usize>(),
            1
        );
    }

    #[test]
    fn an_event_newer_than_the_batchs_clock_enters_a_journey_activated_before_it() {
        use ump_automation::journey::{Journey, JourneySet, Live, Status};
        // The batch read its clock at `now()`, then waited for the store while the journey was
        // activated and the event accepted.
        let activated = now() + chrono::Duration::milliseconds(300);
        let accepted = activated + chrono::Duration::milliseconds(20);
        let journey: Journey = serde_json::from_value(json!({"id": "hello",
            "entry": {"event": "signed_up"},
            "steps": [{"id": "hi", "send": {"channel": "sms", "template": "hi",
                "category": "transactional"}}]}))
        .unwrap();
        let tenants = BTreeMap::from([(
            "t1".to_owned(),
            Automation {
                journeys: JourneySet {
                    journeys: BTreeMap::from([(
                        "hello".to_owned(),
                        Live {
                            status: Status::Active,
                            current: 1,
                            versions: BTreeMap::from([(1, journey)]),
                            since: activated,
                        },
                    )]),
                    caps: Vec::new(),
                },
                ..Automation::default()
            },
        )]);
        let mut e = entry("t1", "kim", Some("signed_up"), None);
        e.queued.received_at = accepted;
        if let Input::Event { event, .. } = &mut e.queued.input {
            event.timestamp = accepted;
        }
        let (_, report) = fold([&e], BTreeMap::new(), &tenants, now());
        assert_eq!(report.journey_sends, 1, "{report:?}");
    }

    #[test]
    fn samples_fall_on_whole_minutes() {
        let at = Utc.with_ymd_and_hms(2026, 12, 4, 12, 34, 56).unwrap();
        assert_eq!(
            minute(at),
            Utc.with_ymd_and_hms(2026, 12, 4, 12, 34, 0).unwrap()
        );
        assert_eq!(minute(minute(at)), minute(at));
    }

    #[test]
    fn log_entries_are_keyed_by_tenant_and_person() {
        let e = entry("t1", "u-1", Some("purchase"), None);
        assert_eq!(e.key(), "t1\nu-1");
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<LogEntry>(&text).unwrap(), e);
    }
}

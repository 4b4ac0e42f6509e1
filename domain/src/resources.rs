//! `MessageChannel` and `DeliveryPolicy`: UMP's configuration language. The operator reads them
//! from the cluster (these types generate the CRDs); the all-in-one mode reads the same YAML from a
//! folder; the worker receives the effective pair as its configuration.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::duration::Duration;

/// The events topic when none is configured.
pub const DEFAULT_EVENTS_TOPIC: &str = "ump.events";
/// The processors' consumer group when none is configured (the operator scales the processor
/// from this group's lag).
pub const DEFAULT_EVENTS_GROUP: &str = "ump-events";

/// API group of UMP's resources.
pub const GROUP: &str = "ump.dev";

/// A channel UMP can send on: what it delivers, through which providers, and how its workers run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ump.dev",
    version = "v1alpha1",
    kind = "MessageChannel",
    namespaced,
    shortname = "mc",
    status = "MessageChannelStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.consumerLag"}"#,
    printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".status.topic","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// A transition rule (it sees `oldSelf`): the topic a channel writes to must never move under it,
// because the operator would otherwise orphan the old topic and its unconsumed messages.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.topic) && has(self.topic.name) ? self.topic.name : '') == (has(oldSelf.topic) && has(oldSelf.topic.name) ? oldSelf.topic.name : '')",
    "message": "spec.topic.name is immutable: it names the channel's Kafka topic (create a new MessageChannel to use another topic)",
    "reason": "FieldValueForbidden",
    "fieldPath": ".topic.name"
}]))]
pub struct MessageChannelSpec {
    /// What the channel delivers; decides how recipients are validated.
    #[serde(rename = "type")]
    pub channel_type: ChannelType,
    /// Providers in order of preference: the first is the primary, the next ones take over when it
    /// fails (failover).
    #[schemars(length(min = 1))]
    pub providers: Vec<ProviderSpec>,
    /// The Kafka topic of the channel's bulk traffic.
    #[serde(default)]
    pub topic: TopicSpec,
    /// The ActiveMQ queue of the channel's realtime traffic.
    #[serde(default)]
    pub realtime: RealtimeSpec,
    /// How many workers deliver this channel.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Compute resources of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Name of the `DeliveryPolicy` (same namespace) that governs this channel; defaults apply
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<String>,
    /// What happens to the Kafka topic when the channel is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stored templates a send can name instead of inline content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateSpec>,
    /// Locale whose template variant is used when a send names no locale or one a template has
    /// no variant for (e.g. `ko`); a template without that variant uses its default parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"),
        length(max = 35)
    )]
    pub fallback_locale: Option<String>,
    /// How advertising (`category: marketing`) on this channel is marked. SMS: "(광고)" and
    /// `senderName` first, "무료수신거부" and `optOut` last; an SMS channel without `optOut` takes
    /// no advertising. FriendTalk is marked by Kakao itself (the message's ad flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertising: Option<AdvertisingSpec>,
}

/// The markings Korean law asks of advertising (Act on Promotion of Information and
/// Communications Network Utilization, art. 50): on SMS, the text starts with "(광고)" and the
/// sender's name and ends with a free way to opt out (`(광고) UMP샵 ... 무료수신거부 080-123-4567`).
/// FriendTalk is marked by Kakao itself (the message's ad flag: "(광고)" and the channel-block
/// opt-out), so there these settings are not written into the text.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdvertisingSpec {
    /// The sender's (brand's) name, written after "(광고)" on the first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\r\n]*\S[^\r\n]*$"), length(max = 40))]
    pub sender_name: Option<String>,
    /// The free opt-out number (usually an 080 number), written on the last line after
    /// "무료수신거부". Required before an SMS channel takes advertising.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9][0-9-]{6,19}$"))]
    pub opt_out: Option<String>,
}

/// A stored template, rendered with the send's `data` (Jinja syntax: `{{ name }}`). Its own parts
/// are the default; `locales` holds translations a send picks with its `locale`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    pub name: String,
    /// The provider's id of the template (AlimTalk: the Kakao-approved template code); the
    /// template's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    /// HTML body (email); variables are HTML-escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Variants by locale (a BCP 47 tag: `en`, `ja`, `zh-TW`). A variant is a whole translation:
    /// the parts it leaves out are absent, not taken from the default (its `code` aside).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locales: BTreeMap<String, TemplateVariant>,
}

/// One locale's version of a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVariant {
    /// The provider's id of this variant (e.g. the AlimTalk template approved in this language);
    /// the template's `code` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    Email,
    Sms,
    Push,
    /// Kakao AlimTalk: informational messages on approved templates.
    Alimtalk,
    /// Kakao FriendTalk: free-form messages, advertising included, to the channel's friends.
    Friendtalk,
    Webhook,
}

/// One provider of a channel. Credentials never appear here: they come from `secretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// A name for metrics, logs and the message's `provider` field.
    pub name: String,
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Secret holding the provider's credentials (mounted into the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Non-secret settings of the provider (endpoint, sender id, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    /// Records what would be sent instead of sending it.
    Sandbox,
    Smtp,
    Twilio,
    NhnSms,
    Fcm,
    Apns,
    NhnAlimtalk,
    NhnFriendtalk,
    Webhook,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name; defaults to `ump.<namespace>.<channel>` and cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"), length(max = 249))]
    pub name: Option<String>,
    /// Partitions; can grow, never shrink.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replicas of each partition; fixed once the topic exists (a change is reported, not applied).
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1))]
    pub replication_factor: i32,
    /// Topic configuration (e.g. `retention.ms`), converged on the broker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    12
}
fn default_replication_factor() -> i32 {
    1
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            name: None,
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            config: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeSpec {
    /// Accept `"priority": "realtime"` sends on this channel (through ActiveMQ).
    #[serde(default)]
    pub enabled: bool,
    /// Queue name; defaults to `ump.realtime.<namespace>.<channel>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    "message": "scaling.minReplicas must be less than or equal to scaling.maxReplicas",
    "fieldPath": ".minReplicas"
}]))]
pub struct ScalingSpec {
    /// Fewest workers, whatever the lag (0 lets an idle channel run none).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most workers; the partition count caps it too (an extra consumer would sit idle).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Consumer lag one worker is expected to absorb.
    #[serde(default = "default_lag_per_replica")]
    #[schemars(range(min = 1))]
    pub lag_per_replica: i64,
    /// How long a lower replica count must hold before workers are removed.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_lag_per_replica() -> i64 {
    1000
}
fn default_scale_down_stabilization() -> Duration {
    Duration::from_secs(300)
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_per_replica: default_lag_per_replica(),
            scale_down_stabilization: default_scale_down_stabilization(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the Kafka topic (and what is in it) when the channel is deleted.
    #[default]
    Retain,
    /// Delete the Kafka topic with the channel.
    Delete,
}

/// Observed state of a `MessageChannel`, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageChannelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `TopicReady` and `WorkersReady`; one entry per type (a list-map, so server-side
    /// apply merges entries by `type`).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,
}

/// Observed state of a `DeliveryPolicy`, written by the operator: whether the policy is usable
/// (`Valid`: a time zone or backoff the schema cannot check is reported here).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// How messages of the channels that reference this policy are delivered.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ump.dev",
    version = "v1alpha1",
    kind = "DeliveryPolicy",
    namespaced,
    shortname = "dp",
    status = "DeliveryPolicyStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicySpec {
    /// Sends per second for the whole channel, shared by all its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub dedupe: DedupePolicy,
    /// A daily window in which messages wait (status `scheduled`) instead of going out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Where a message goes when it fails permanently on its channel (e.g. AlimTalk → SMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// A message not sent within this time of its acceptance fails with reason `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[schemars(range(min = 1))]
    pub per_second: u32,
    /// Sends allowed at once above the steady rate; defaults to `perSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delivery attempts before the message is dead-lettered (first try included).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupePolicy {
    /// How long a sent message blocks an identical one.
    #[serde(default = "default_dedupe_window")]
    pub window: Duration,
    #[serde(default)]
    pub key: DedupeKey,
}

fn default_dedupe_window() -> Duration {
    Duration::from_secs(600)
}

impl Default for DedupePolicy {
    fn default() -> Self {
        Self {
            window: default_dedupe_window(),
            key: DedupeKey::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DedupeKey {
    /// The request's `Idempotency-Key` when given, else a hash of channel + recipient + content.
    #[default]
    IdempotencyKeyOrContent,
    /// Only the `Idempotency-Key`.
    IdempotencyKey,
    /// No deduplication.
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuietHours {
    /// Start of the quiet window, `HH:MM` local time.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End of the quiet window, `HH:MM` local time (may be earlier than `start`: overnight).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone, e.g. `Asia/Seoul`.
    pub timezone: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// The `MessageChannel` to fall back to.
    pub channel: String,
    /// Text sent on the fallback channel; the original body when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl MessageChannel {
    fn namespace_or_default(&self) -> String {
        kube::ResourceExt::namespace(self).unwrap_or_else(|| "default".to_owned())
    }

    /// Kafka topic of the channel's bulk traffic: `spec.topic.name`, else `ump.<namespace>.<name>`.
    pub fn topic_name(&self) -> String {
        self.spec.topic.name.clone().unwrap_or_else(|| {
            format!(
                "ump.{}.{}",
                self.namespace_or_default(),
                kube::ResourceExt::name_any(self)
            )
        })
    }

    /// Topic of messages that exhausted their attempts.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic_name())
    }

    /// Consumer group shared by the channel's workers.
    pub fn consumer_group(&self) -> String {
        format!(
            "ump-worker.{}.{}",
            self.namespace_or_default(),
            kube::ResourceExt::name_any(self)
        )
    }

    /// ActiveMQ queue of the channel's realtime traffic.
    pub fn realtime_queue(&self) -> String {
        self.spec.realtime.queue.clone().unwrap_or_else(|| {
            format!(
                "ump.realtime.{}.{}",
                self.namespace_or_default(),
                kube::ResourceExt::name_any(self)
            )
        })
    }
}

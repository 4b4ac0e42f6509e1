//! The `MessageChannel` reconciler, a pipeline: read (caches, Kafka) → validate (pure) → plan and
//! converge the topic → replicas from lag → build the worker objects (pure) → apply what differs
//! (server-side apply) → write the status if it says something new. Deletion goes through kube's
//! finalizer helper, which keeps or deletes the topic per `deletionPolicy`.

use crate::builders;
use crate::conditions::{self, Observation, READY, TOPIC_READY, WORKERS_READY};
use crate::error::{Error, Result};
use crate::kafka::{self, KafkaAdmin};
use crate::metrics::Metrics;
use crate::scaling::{Stabilizer, recommended_replicas};
use crate::settings::{FIELD_MANAGER, Settings};
use crate::status;
use crate::topic::{self, DesiredTopic, ObservedTopic, TopicAction};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ump_domain::resources::{DeliveryPolicy, MessageChannel, MessageChannelStatus};
use ump_domain::validate;

/// Finalizer guarding the topic: the channel goes only after `deletionPolicy` has been honoured.
pub const FINALIZER: &str = "ump.dev/topic";
const CONTROLLER: &str = "channel";
/// Next look when the lag could not be read (typically a partition leader being elected).
const LAG_RETRY: Duration = Duration::from_secs(2);

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub kafka: KafkaAdmin,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub stabilizer: Mutex<Stabilizer>,
    pub config_maps: Store<ConfigMap>,
    pub deployments: Store<Deployment>,
    pub policies: Store<DeserializeGuard<DeliveryPolicy>>,
}

/// The policy a channel runs with, as far as its reference can be resolved.
#[derive(Clone, Debug)]
pub enum PolicyState {
    NotReferenced,
    Found(Box<DeliveryPolicy>),
    Missing(String),
    Invalid { name: String, why: String },
}

pub fn resolve_policy(
    channel: &MessageChannel,
    policies: &Store<DeserializeGuard<DeliveryPolicy>>,
) -> PolicyState {
    let Some(name) = channel.spec.policy_ref.clone() else {
        return PolicyState::NotReferenced;
    };
    let key = ObjectRef::new(&name).within(&channel.namespace().unwrap_or_default());
    match policies.get(&key) {
        None => PolicyState::Missing(name),
        Some(guard) => match &guard.0 {
            Err(invalid) => PolicyState::Invalid {
                name,
                why: invalid.error.clone(),
            },
            Ok(policy) => {
                let problems = validate::policy_problems(&policy.spec);
                if problems.is_empty() {
                    PolicyState::Found(Box::new(policy.clone()))
                } else {
                    PolicyState::Invalid {
                        name,
                        why: problems.join("; "),
                    }
                }
            }
        },
    }
}

/// `WorkersReady` from the Deployment's own conditions (pure). Pods are the Deployment's business:
/// this reports the rollout failures it states, not pod-by-pod availability.
pub fn workers_observation(deployment: &Deployment, replicas: i32) -> Observation {
    let name = deployment.name_any();
    let status_conditions = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    for c in status_conditions {
        if c.type_ == "ReplicaFailure" && c.status == "True" {
            return Observation::failure(
                WORKERS_READY,
                "ReplicaFailure",
                format!(
                    "Deployment {name}: {}",
                    c.message.clone().unwrap_or_default()
                ),
            );
        }
        if c.type_ == "Progressing" && c.status == "False" {
            return Observation::failure(
                WORKERS_READY,
                "ProgressDeadlineExceeded",
                format!(
                    "Deployment {name}: {}",
                    c.message.clone().unwrap_or_default()
                ),
            );
        }
    }
    Observation::truth(
        WORKERS_READY,
        "DeploymentApplied",
        format!("Deployment {name} runs {replicas} worker(s)"),
    )
}

/// The status a reconcile arrived at, before it is merged with the object's current one.
struct Outcome {
    observations: Vec<Observation>,
    topic: Option<String>,
    replicas: Option<i32>,
    lag: Option<i64>,
}

pub async fn reconcile(
    object: Arc<DeserializeGuard<MessageChannel>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let namespace = object
        .namespace()
        .ok_or_else(|| Error::NoNamespace(object.name_any()))?;
    let channel = match &object.0 {
        Ok(channel) => Arc::new(channel.clone()),
        Err(invalid) => {
            return status::report_invalid::<MessageChannel>(
                &ctx.client,
                &ctx.recorder,
                &ctx.metrics,
                &object,
                FINALIZER,
                &invalid.error,
            )
            .await;
        }
    };
    let api: Api<MessageChannel> = Api::namespaced(ctx.client.clone(), &namespace);
    if channel.meta().deletion_timestamp.is_none()
        && !channel.finalizers().iter().any(|f| f == FINALIZER)
    {
        ctx.metrics.api_write("MessageChannel", "finalizer");
    }
    finalizer(&api, FINALIZER, channel, |event| async {
        match event {
            finalizer::Event::Apply(channel) => apply(&channel, &ctx).await,
            finalizer::Event::Cleanup(channel) => cleanup(&channel, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(
    _object: Arc<DeserializeGuard<MessageChannel>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(%error, "channel reconcile failed");
    ctx.metrics
        .reconcile_failed(CONTROLLER, error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

/// What one step of a reconcile found: its condition, what it observed, and an error that makes
/// the reconcile retry once the status (which reports it too) is written.
struct Converged<T = ()> {
    observation: Observation,
    observed: T,
    retry: Option<Error>,
}

async fn apply(channel: &MessageChannel, ctx: &Context) -> Result<Action> {
    let name = channel.name_any();
    let namespace = channel.namespace().unwrap_or_default();
    let previous = channel.status.clone().unwrap_or_default();

    let problems = validate::channel_problems(channel);
    if !problems.is_empty() {
        let invalid = Observation::failure(READY, "InvalidSpec", problems.join("; "));
        let outcome = Outcome {
            observations: vec![invalid],
            topic: None,
            replicas: previous.replicas,
            lag: previous.consumer_lag,
        };
        write_status(channel, &previous, outcome, ctx).await?;
        return Ok(Action::await_change());
    }

    let desired_topic = DesiredTopic::of(channel);
    let topic = converge_topic(channel, &desired_topic, &previous, ctx).await;
    let key = ObjectRef::<Deployment>::new(&builders::worker_name(channel)).within(&namespace);
    let observed_deployment = ctx.deployments.get(&key);
    let current = observed_deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let lag = read_lag(channel, &desired_topic, topic.observed.as_ref(), ctx).await;
    let replicas = match (lag, &topic.observed) {
        (Lag::Known(lag), Some(observed)) => scale(channel, lag, observed, current, ctx),
        // Lag unknown: hold what runs (or start at the minimum) rather than guess.
        _ => current.unwrap_or(channel.spec.scaling.min_replicas),
    };
    let workers = workers_for_policy(channel, replicas, current, observed_deployment, ctx).await;

    let ready = conditions::ready(&[&topic.observation, &workers.observation]);
    let lag_now = match lag {
        Lag::Known(lag) => Some(lag),
        Lag::NoTopic | Lag::Unavailable => None,
    };
    let outcome = Outcome {
        observations: vec![topic.observation, workers.observation, ready],
        topic: Some(desired_topic.name.clone()),
        replicas: Some(replicas),
        lag: lag_now.or(previous.consumer_lag),
    };
    ctx.metrics
        .channel_observed(&namespace, &name, replicas, lag_now);
    write_status(channel, &previous, outcome, ctx).await?;

    if let Some(error) = topic.retry.or(workers.retry) {
        return Err(error);
    }
    if lag == Lag::Unavailable {
        return Ok(Action::requeue(LAG_RETRY.min(ctx.settings.resync)));
    }
    Ok(Action::requeue(resync_of(&ctx.settings, &name)))
}

/// The consumer lag of a channel's group on its topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lag {
    /// No topic to read it from.
    NoTopic,
    Known(i64),
    /// Kafka could not say: not fatal, the workers keep their count and it is read again soon.
    Unavailable,
}

async fn read_lag(
    channel: &MessageChannel,
    desired_topic: &DesiredTopic,
    observed_topic: Option<&ObservedTopic>,
    ctx: &Context,
) -> Lag {
    let Some(observed) = observed_topic else {
        return Lag::NoTopic;
    };
    match ctx
        .kafka
        .consumer_lag(
            &desired_topic.name,
            &channel.consumer_group(),
            observed.partitions,
        )
        .await
    {
        Ok(lag) => Lag::Known(lag),
        Err(e) => {
            tracing::info!(error = %e, channel = %channel.name_any(), "consumer lag unavailable");
            Lag::Unavailable
        }
    }
}

/// The replicas `lag` calls for, held against flapping by the scale-down stabilization window.
fn scale(
    channel: &MessageChannel,
    lag: i64,
    observed: &ObservedTopic,
    current: Option<i32>,
    ctx: &Context,
) -> i32 {
    let scaling = &channel.spec.scaling;
    let recommended = recommended_replicas(lag, scaling, observed.partitions);
    let mut stabilizer = ctx.stabilizer.lock().unwrap_or_else(|p| p.into_inner());
    stabilizer.stabilize(
        &format!(
            "{}/{}",
            channel.namespace().unwrap_or_default(),
            channel.name_any()
        ),
        current,
        recommended,
        scaling.scale_down_stabilization.as_std(),
        Instant::now(),
    )
}

/// The workers, as far as the channel's policy allows: none applied while the policy is missing
/// or invalid (the workers keep their last configuration), else the Deployment and ConfigMap.
async fn workers_for_policy(
    channel: &MessageChannel,
    replicas: i32,
    current: Option<i32>,
    observed_deployment: Option<Arc<Deployment>>,
    ctx: &Context,
) -> Converged {
    let held = |reason: &'static str, message: String| Converged {
        observation: Observation::failure(WORKERS_READY, reason, message),
        observed: (),
        retry: None,
    };
    match resolve_policy(channel, &ctx.policies) {
        PolicyState::Missing(policy) => held(
            "PolicyNotFound",
            format!(
                "DeliveryPolicy {policy} does not exist in namespace {}; workers keep their last \
                 configuration until it does",
                channel.namespace().unwrap_or_default()
            ),
        ),
        PolicyState::Invalid { name: policy, why } => held(
            "PolicyInvalid",
            format!("DeliveryPolicy {policy} is invalid: {why}"),
        ),
        PolicyState::NotReferenced => {
            converge_workers(channel, None, replicas, current, observed_deployment, ctx).await
        }
        PolicyState::Found(policy) => {
            converge_workers(
                channel,
                Some(&policy),
                replicas,
                current,
                observed_deployment,
                ctx,
            )
            .await
        }
    }
}

/// Spreads the periodic look at each channel over a fifth of the resync period, so a thousand
/// channels created at once do not all come back in the same second.
fn resync_of(settings: &Settings, name: &str) -> Duration {
    let spread = settings.resync.as_millis() as u64 / 5;
    let hash = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    settings.resync + Duration::from_millis(if spread == 0 { 0 } else { hash % spread })
}

/// Brings the topic to the spec as far as Kafka allows: `TopicReady`, the topic as it is
/// afterwards, and an error to retry (Kafka unreachable); a shrink or rejected request is a
/// condition only.
async fn converge_topic(
    channel: &MessageChannel,
    desired: &DesiredTopic,
    previous: &MessageChannelStatus,
    ctx: &Context,
) -> Converged<Option<ObservedTopic>> {
    let observed = match ctx.kafka.observe(&desired.name).await {
        Ok(observed) => observed,
        Err(e) => return kafka_failure(channel, previous, ctx, e).await,
    };
    let plan = topic::plan(desired, observed.as_ref());
    for action in &plan.actions {
        let (result, reason, note) = match action {
            TopicAction::Create => (
                ctx.kafka.create(desired).await,
                "TopicCreated",
                format!(
                    "created Kafka topic {} with {} partitions",
                    desired.name, desired.partitions
                ),
            ),
            TopicAction::GrowPartitions(total) => (
                ctx.kafka.grow_partitions(&desired.name, *total).await,
                "PartitionsAdded",
                format!(
                    "Kafka topic {} grew from {} to {total} partitions",
                    desired.name,
                    observed.as_ref().map_or(0, |o| o.partitions)
                ),
            ),
            TopicAction::ReplaceConfig(config) => (
                ctx.kafka.replace_config(&desired.name, config).await,
                "TopicConfigUpdated",
                format!("Kafka topic {} config set to {config:?}", desired.name),
            ),
        };
        if let Err(e) = result {
            return kafka_failure(channel, previous, ctx, e).await;
        }
        ctx.metrics.kafka_actions.with_label_values(&[reason]).inc();
        publish(
            ctx,
            channel,
            EventType::Normal,
            reason,
            "ReconcileTopic",
            note,
        )
        .await;
    }
    // Read back what Kafka now has: partitions for scaling, and proof the change landed.
    let observed = if plan.actions.is_empty() {
        observed
    } else {
        match ctx.kafka.observe(&desired.name).await {
            Ok(observed) => observed,
            Err(e) => return kafka_failure(channel, previous, ctx, e).await,
        }
    };
    let observation = if plan.unsupported.is_empty() {
        Observation::truth(
            TOPIC_READY,
            "TopicReady",
            format!(
                "Kafka topic {} has {} partitions",
                desired.name,
                observed.as_ref().map_or(0, |o| o.partitions)
            ),
        )
    } else {
        Observation::failure(TOPIC_READY, "NotSupported", plan.unsupported.join("; "))
    };
    if !observation.is_true() && became(previous, &observation) {
        publish(
            ctx,
            channel,
            EventType::Warning,
            "TopicChangeNotSupported",
            "ReconcileTopic",
            observation.message.clone(),
        )
        .await;
    }
    Converged {
        observation,
        observed,
        retry: None,
    }
}

async fn kafka_failure(
    channel: &MessageChannel,
    previous: &MessageChannelStatus,
    ctx: &Context,
    error: Error,
) -> Converged<Option<ObservedTopic>> {
    let (reason, message, retry) = if kafka::is_rejection(&error) {
        (
            "KafkaRejected",
            format!("Kafka refused the topic change; fix the spec: {error}"),
            None,
        )
    } else {
        ("KafkaUnavailable", error.to_string(), Some(error))
    };
    let observation = Observation::failure(TOPIC_READY, reason, message);
    if became(previous, &observation) {
        publish(
            ctx,
            channel,
            EventType::Warning,
            reason,
            "ReconcileTopic",
            observation.message.clone(),
        )
        .await;
    }
    Converged {
        observation,
        observed: None,
        retry,
    }
}

/// Whether `observation` is news compared with the status already written (so its event is sent
/// once, not on every resync).
fn became(previous: &MessageChannelStatus, observation: &Observation) -> bool {
    conditions::find(&previous.conditions, observation.type_)
        .is_none_or(|c| c.status != observation.status || c.reason != observation.reason)
}

async fn converge_workers(
    channel: &MessageChannel,
    policy: Option<&DeliveryPolicy>,
    replicas: i32,
    current: Option<i32>,
    observed_deployment: Option<Arc<Deployment>>,
    ctx: &Context,
) -> Converged {
    match apply_workers(channel, policy, replicas, current, observed_deployment, ctx).await {
        Ok(observation) => Converged {
            observation,
            observed: (),
            retry: None,
        },
        Err(e) => Converged {
            observation: Observation::failure(WORKERS_READY, "ApplyFailed", e.to_string()),
            observed: (),
            retry: Some(e),
        },
    }
}

async fn apply_workers(
    channel: &MessageChannel,
    policy: Option<&DeliveryPolicy>,
    replicas: i32,
    current: Option<i32>,
    observed_deployment: Option<Arc<Deployment>>,
    ctx: &Context,
) -> Result<Observation> {
    let namespace = channel.namespace().unwrap_or_default();
    let name = builders::worker_name(channel);
    let config_map = builders::config_map(channel, policy)?;
    let hash = builders::config_hash(&config_map);
    let deployment = builders::deployment(channel, &ctx.settings, replicas, &hash)?;

    let observed_config = ctx
        .config_maps
        .get(&ObjectRef::new(&name).within(&namespace));
    if apply_if_changed(ctx, &namespace, &config_map, observed_config.as_deref())
        .await?
        .is_some()
        && observed_config.is_some()
    {
        publish(
            ctx,
            channel,
            EventType::Normal,
            "ConfigUpdated",
            "ApplyWorkers",
            format!("ConfigMap {name} holds the new channel/policy configuration"),
        )
        .await;
    }

    let applied =
        apply_if_changed(ctx, &namespace, &deployment, observed_deployment.as_deref()).await?;
    if applied.is_some() {
        let note = match current {
            None => format!("created Deployment {name} with {replicas} worker(s)"),
            Some(before) if before != replicas => {
                format!("scaled Deployment {name} from {before} to {replicas} worker(s)")
            }
            Some(_) => format!("updated Deployment {name}"),
        };
        let reason = match current {
            None => "WorkersCreated",
            Some(before) if before != replicas => "WorkersScaled",
            Some(_) => "WorkersUpdated",
        };
        publish(
            ctx,
            channel,
            EventType::Normal,
            reason,
            "ApplyWorkers",
            note,
        )
        .await;
    }
    let live = applied
        .or(observed_deployment.map(|d| (*d).clone()))
        .unwrap_or(deployment);
    Ok(workers_observation(&live, replicas))
}

/// Server-side applies `desired` unless the cached `observed` object already has every field of
/// it. Returns the object the apiserver answered with when it applied.
async fn apply_if_changed<K>(
    ctx: &Context,
    namespace: &str,
    desired: &K,
    observed: Option<&K>,
) -> Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let serialize = |value: &K| {
        serde_json::to_value(value).map_err(|e| Error::Serialize {
            what: "object",
            detail: e.to_string(),
        })
    };
    let want = serialize(desired)?;
    if let Some(observed) = observed
        && builders::is_applied(&want, &serialize(observed)?)
    {
        return Ok(None);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let kind = K::kind(&()).to_string();
    ctx.metrics.api_write(&kind, "apply");
    let applied = api
        .patch(
            &desired.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&want),
        )
        .await?;
    Ok(Some(applied))
}

async fn write_status(
    channel: &MessageChannel,
    previous: &MessageChannelStatus,
    outcome: Outcome,
    ctx: &Context,
) -> Result<()> {
    let generation = channel.meta().generation;
    let status = MessageChannelStatus {
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &outcome.observations,
            generation,
            k8s_openapi::jiff::Timestamp::now(),
        ),
        topic: outcome.topic,
        replicas: outcome.replicas,
        consumer_lag: outcome.lag,
    };
    if status.observed_generation == previous.observed_generation
        && status.topic == previous.topic
        && status.replicas == previous.replicas
        && status.consumer_lag == previous.consumer_lag
        && conditions::same_ignoring_timestamps(&status.conditions, &previous.conditions)
    {
        return Ok(());
    }
    let api: Api<MessageChannel> =
        Api::namespaced(ctx.client.clone(), &channel.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": MessageChannel::api_version(&()),
        "kind": MessageChannel::kind(&()),
        "status": status,
    });
    ctx.metrics.api_write("MessageChannel", "status");
    api.patch_status(
        &channel.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn cleanup(channel: &MessageChannel, ctx: &Context) -> Result<Action> {
    let topic = channel.topic_name();
    match channel.spec.deletion_policy {
        ump_domain::resources::DeletionPolicy::Delete => {
            ctx.kafka.delete(&topic).await?;
            ctx.metrics
                .kafka_actions
                .with_label_values(&["TopicDeleted"])
                .inc();
            publish(
                ctx,
                channel,
                EventType::Normal,
                "TopicDeleted",
                "Cleanup",
                format!("deleted Kafka topic {topic} (deletionPolicy: Delete)"),
            )
            .await;
        }
        ump_domain::resources::DeletionPolicy::Retain => {
            publish(
                ctx,
                channel,
                EventType::Normal,
                "TopicRetained",
                "Cleanup",
                format!("kept Kafka topic {topic} (deletionPolicy: Retain)"),
            )
            .await;
        }
    }
    let namespace = channel.namespace().unwrap_or_default();
    ctx.stabilizer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(&format!("{namespace}/{}", channel.name_any()));
    ctx.metrics.channel_deleted(&namespace, &channel.name_any());
    Ok(Action::await_change())
}

/// Publishes an event about `channel`; a failure to publish is logged, never fatal.
async fn publish(
    ctx: &Context,
    channel: &MessageChannel,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    ctx.metrics.api_write("Event", "create");
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &channel.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentCondition;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    #[test]
    fn workers_ready_reflects_deployment_failures() {
        let mut d = Deployment::default();
        d.metadata.name = Some("ump-worker-sms".into());
        let ok = workers_observation(&d, 2);
        assert!(ok.is_true());
        assert_eq!(ok.message, "Deployment ump-worker-sms runs 2 worker(s)");
        d.status = Some(DeploymentStatus {
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                message: Some("exceeded its progress deadline".into()),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        });
        let failed = workers_observation(&d, 2);
        assert_eq!(
            (failed.status, failed.reason),
            ("False", "ProgressDeadlineExceeded")
        );
    }

    #[test]
    fn resync_is_spread_but_bounded() {
        let settings =
            Settings::from_lookup(|k| (k == "UMP_KAFKA_BOOTSTRAP").then(|| "k:9092".to_owned()))
                .expect("settings");
        let a = resync_of(&settings, "alpha");
        let b = resync_of(&settings, "bravo");
        assert_ne!(a, b);
        for d in [a, b] {
            assert!(d >= settings.resync && d < settings.resync + settings.resync / 5);
        }
    }
}

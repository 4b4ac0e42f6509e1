//! The operator against the real kube-apiserver and the real Kafka: each test runs in a namespace
//! of its own with the operator reconciling only that namespace.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{KafkaProbe, RunningOperator, eventually};
use ump_domain::resources::{DeliveryPolicy, MessageChannel};
use ump_testkit::infra;

const WAIT: Duration = Duration::from_secs(60);

fn channel(name: &str, spec: serde_json::Value) -> MessageChannel {
    serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("channel fixture")
}

fn policy(name: &str, spec: serde_json::Value) -> DeliveryPolicy {
    serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "DeliveryPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("policy fixture")
}

async fn patch_spec(api: &Api<MessageChannel>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .expect("patch channel spec");
}

/// The channel's condition of `type_` as (status, reason), once it reflects the latest generation.
async fn condition(api: &Api<MessageChannel>, name: &str, type_: &str) -> Option<(String, String)> {
    let channel = api.get(name).await.ok()?;
    let status = channel.status.as_ref()?;
    if status.observed_generation != channel.metadata.generation {
        return None;
    }
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

async fn wait_condition(
    api: &Api<MessageChannel>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) {
    eventually(
        &format!("{name}: {type_}={status} ({reason})"),
        WAIT,
        || async {
            let found = condition(api, name, type_).await?;
            (found.0 == status && found.1 == reason).then_some(())
        },
    )
    .await;
}

async fn deployment_replicas(client: &Client, ns: &str, channel: &str) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .get_opt(&format!("ump-worker-{channel}"))
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
}

fn reconcile_errors(operator: &RunningOperator) -> u64 {
    use prometheus::core::Collector;
    operator
        .metrics
        .errors
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

async fn setup(prefix: &str) -> (Client, String, RunningOperator) {
    let client = support::client().await;
    support::apply_crds(&client).await;
    let ns = support::namespace(&client, prefix).await;
    let operator = RunningOperator::start(&client, &ns).await;
    (client, ns, operator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_lifecycle_topic_workers_partitions_and_delete() {
    let (client, ns, operator) = setup("ump-op-life").await;
    let kafka = KafkaProbe::new();
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    let policies: Api<DeliveryPolicy> = Api::namespaced(client.clone(), &ns);

    policies
        .create(
            &PostParams::default(),
            &policy("standard", json!({"rateLimit": {"perSecond": 10}})),
        )
        .await
        .expect("create policy");
    let created = channels
        .create(
            &PostParams::default(),
            &channel(
                "sms",
                json!({
                    "type": "sms", "policyRef": "standard", "deletionPolicy": "Delete",
                    "providers": [{"name": "nhn", "type": "nhn-sms", "secretRef": {"name": "nhn-credentials"}}],
                    "topic": {"partitions": 2, "config": {"retention.ms": "3600000"}},
                    "scaling": {"minReplicas": 1, "maxReplicas": 3},
                }),
            ),
        )
        .await
        .expect("create channel");
    let topic = format!("ump.{ns}.sms");

    wait_condition(&channels, "sms", "Ready", "True", "Ready").await;
    assert_eq!(kafka.partitions(&topic), Some(2));
    assert_eq!(
        kafka
            .config(&topic)
            .await
            .get("retention.ms")
            .map(String::as_str),
        Some("3600000")
    );
    let status = channels
        .get("sms")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(status.replicas, Some(1));
    assert_eq!(status.consumer_lag, Some(0));
    for t in ["TopicReady", "WorkersReady"] {
        assert_eq!(
            condition(&channels, "sms", t).await.map(|c| c.0),
            Some("True".into())
        );
    }

    // The worker objects, owned by the channel.
    let uid = created.uid().expect("uid");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = config_maps
        .get("ump-worker-sms")
        .await
        .expect("ConfigMap exists");
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        (uid.as_str(), Some(true))
    );
    let data = cm.data.expect("data");
    assert!(data["channel.yaml"].contains("nhn-credentials"));
    assert!(data["policy.yaml"].contains("perSecond: 10"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = deployments
        .get("ump-worker-sms")
        .await
        .expect("Deployment exists");
    assert_eq!(deployment.owner_references()[0].uid, uid);
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/etc/ump/secrets/nhn-credentials")
    );

    // Steady: several resyncs later, not one more write to the API.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = operator.metrics.api_writes_total();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        operator.metrics.api_writes_total(),
        writes,
        "a steady operator writes nothing:\n{}",
        operator.metrics.render()
    );

    // More partitions: Kafka grows.
    patch_spec(&channels, "sms", json!({"topic": {"partitions": 4}})).await;
    eventually("topic grows to 4 partitions", WAIT, || async {
        (kafka.partitions(&topic) == Some(4)).then_some(())
    })
    .await;
    wait_condition(&channels, "sms", "TopicReady", "True", "TopicReady").await;

    // Fewer: reported, Kafka untouched, no error loop (no errors, no writes once reported).
    let errors_before = reconcile_errors(&operator);
    patch_spec(&channels, "sms", json!({"topic": {"partitions": 3}})).await;
    wait_condition(&channels, "sms", "TopicReady", "False", "NotSupported").await;
    wait_condition(&channels, "sms", "Ready", "False", "NotSupported").await;
    assert_eq!(kafka.partitions(&topic), Some(4));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = operator.metrics.api_writes_total();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.metrics.api_writes_total(),
        writes,
        "{}",
        operator.metrics.render()
    );
    assert_eq!(
        reconcile_errors(&operator),
        errors_before,
        "{}",
        operator.metrics.render()
    );

    // Config converges to exactly the declared set (the merge patch below removes retention.ms).
    patch_spec(
        &channels,
        "sms",
        json!({"topic": {"partitions": 4, "config": {"retention.ms": null, "cleanup.policy": "compact"}}}),
    )
    .await;
    eventually("topic config replaced", WAIT, || async {
        let config = kafka.config(&topic).await;
        (config.get("cleanup.policy").map(String::as_str) == Some("compact")
            && !config.contains_key("retention.ms"))
        .then_some(())
    })
    .await;
    wait_condition(&channels, "sms", "Ready", "True", "Ready").await;

    // A policy change reaches the channel's worker configuration.
    policies
        .patch(
            "standard",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rateLimit": {"perSecond": 25}}})),
        )
        .await
        .expect("patch policy");
    eventually("ConfigMap carries the new policy", WAIT, || async {
        let cm = config_maps.get("ump-worker-sms").await.ok()?;
        cm.data?
            .get("policy.yaml")?
            .contains("perSecond: 25")
            .then_some(())
    })
    .await;

    // Delete with deletionPolicy Delete: the channel goes, and so does its topic.
    channels
        .delete("sms", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("channel gone", WAIT, || async {
        channels.get_opt("sms").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("topic deleted", WAIT, || async {
        kafka.partitions(&topic).is_none().then_some(())
    })
    .await;

    operator.stop().await;
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_policy_is_a_condition_and_retain_keeps_the_topic() {
    let (client, ns, operator) = setup("ump-op-retain").await;
    let kafka = KafkaProbe::new();
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    let policies: Api<DeliveryPolicy> = Api::namespaced(client.clone(), &ns);
    channels
        .create(
            &PostParams::default(),
            &channel(
                "mail",
                json!({"type": "email", "policyRef": "later",
                       "providers": [{"name": "s", "type": "sandbox"}], "topic": {"partitions": 1}}),
            ),
        )
        .await
        .expect("create channel");
    let topic = format!("ump.{ns}.mail");

    wait_condition(&channels, "mail", "WorkersReady", "False", "PolicyNotFound").await;
    wait_condition(&channels, "mail", "Ready", "False", "PolicyNotFound").await;
    assert_eq!(
        kafka.partitions(&topic),
        Some(1),
        "the topic does not wait for the policy"
    );
    assert_eq!(
        deployment_replicas(&client, &ns, "mail").await,
        None,
        "no workers without their policy"
    );

    // An invalid policy is reported on the policy and on the channel.
    policies
        .create(
            &PostParams::default(),
            &policy("later", json!({"quietHours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}})),
        )
        .await
        .expect("create policy");
    wait_condition(&channels, "mail", "WorkersReady", "False", "PolicyInvalid").await;
    eventually("policy Valid=False", WAIT, || async {
        let p = policies.get("later").await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Valid")?;
        (c.status == "False" && c.message.contains("Mars/Olympus")).then_some(())
    })
    .await;

    // Fixed: the channel follows.
    policies
        .patch(
            "later",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quietHours": {"timezone": "Asia/Seoul"}}})),
        )
        .await
        .expect("fix policy");
    wait_condition(&channels, "mail", "Ready", "True", "Ready").await;
    assert_eq!(deployment_replicas(&client, &ns, "mail").await, Some(1));

    channels
        .delete("mail", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("channel gone", WAIT, || async {
        channels.get_opt("mail").await.ok()?.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(kafka.partitions(&topic), Some(1), "Retain keeps the topic");
    kafka.delete(&topic).await;

    operator.stop().await;
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_scales_workers_to_the_bound_then_back_after_draining() {
    let (client, ns, operator) = setup("ump-op-scale").await;
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    channels
        .create(
            &PostParams::default(),
            &channel(
                "push",
                json!({"type": "push", "deletionPolicy": "Delete",
                       "providers": [{"name": "s", "type": "sandbox"}],
                       "topic": {"partitions": 3},
                       "scaling": {"minReplicas": 1, "maxReplicas": 5, "lagPerReplica": 10,
                                   "scaleDownStabilization": "4s"}}),
            ),
        )
        .await
        .expect("create channel");
    wait_condition(&channels, "push", "Ready", "True", "Ready").await;
    assert_eq!(deployment_replicas(&client, &ns, "push").await, Some(1));
    let topic = format!("ump.{ns}.push");
    let bootstrap = infra().kafka_bootstrap();

    // A backlog of 100 and nobody consuming: ceil(100 / 10) = 10, capped by max (5) and the
    // partition count (3).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for i in 0..100 {
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("x"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    eventually("scaled up to the partition bound", WAIT, || async {
        (deployment_replicas(&client, &ns, "push").await == Some(3)).then_some(())
    })
    .await;
    // The status shows the whole backlog once a reconcile has seen it: one that ran while the
    // messages were still being produced may have scaled up on part of it (30 already reach the
    // bound) and written that.
    eventually("the whole backlog in the status", WAIT, || async {
        let status = channels.get("push").await.ok()?.status?;
        (status.consumer_lag == Some(100) && status.replicas == Some(3)).then_some(())
    })
    .await;

    // The workers' group commits everything: the lag drains.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("ump-worker.{ns}.push"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    for partition in 0..3 {
        let (_, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        offsets
            .add_partition_offset(&topic, partition, Offset::Offset(high))
            .expect("offset");
    }
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    let drained = Instant::now();

    eventually("lag reported as drained", WAIT, || async {
        let status = channels.get("push").await.ok()?.status?;
        (status.consumer_lag == Some(0)).then_some(())
    })
    .await;
    // Within the stabilization window the workers stay...
    assert_eq!(
        deployment_replicas(&client, &ns, "push").await,
        Some(3),
        "no flapping"
    );
    // ...and go once the lower count has held for the window.
    eventually("scaled back down to the minimum", WAIT, || async {
        (deployment_replicas(&client, &ns, "push").await == Some(1)).then_some(())
    })
    .await;
    assert!(
        drained.elapsed() >= Duration::from_secs(4),
        "scale-down waited for the window ({:?})",
        drained.elapsed()
    );

    channels
        .delete("push", &DeleteParams::default())
        .await
        .expect("delete");
    operator.stop().await;
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_processor_follows_its_lag_once_labelled_as_the_processor() {
    let client = support::client().await;
    support::apply_crds(&client).await;
    let ns = support::namespace(&client, "ump-op-events").await;
    let topic = format!("ump.{ns}.events");
    let group = format!("ump-events.{ns}");
    let bootstrap = infra().kafka_bootstrap();

    // The events topic as the processor creates it, with a backlog of 100 nobody has read.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
        .into_iter()
        .for_each(|r| {
            r.expect("topic created");
        });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for i in 0..100 {
        let key = format!("person-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    // A Deployment of the processor's name, but not labelled as the processor (yet).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let unlabelled: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ump-events", "labels": {"app.kubernetes.io/name": "ump"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "ump-events"}},
            "template": {
                "metadata": {"labels": {"app": "ump-events"}},
                "spec": {"containers": [{"name": "events", "image": "ump:test", "command": ["ump-events"]}]},
            },
        },
    }))
    .expect("deployment fixture");
    deployments
        .create(&PostParams::default(), &unlabelled)
        .await
        .expect("create deployment");
    let operator = RunningOperator::start_with(
        &client,
        &ns,
        &[
            ("UMP_EVENTS_DEPLOYMENT", "ump-events"),
            ("UMP_EVENTS_NAMESPACE", &ns),
            ("UMP_EVENTS_TOPIC", &topic),
            ("UMP_EVENTS_GROUP", &group),
            ("UMP_EVENTS_MIN_REPLICAS", "1"),
            ("UMP_EVENTS_MAX_REPLICAS", "5"),
            ("UMP_EVENTS_LAG_PER_REPLICA", "10"),
            ("UMP_EVENTS_SCALE_DOWN_STABILIZATION", "4s"),
        ],
    )
    .await;
    let replicas = || async {
        deployments
            .get("ump-events")
            .await
            .ok()
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas)
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(replicas().await, Some(1), "not the processor: left alone");
    assert_eq!(operator.metrics.api_writes_total(), 0);

    // Labelled as the chart labels the processor: ceil(100 / 10) = 10, capped by max (5) and the
    // partition count (3).
    deployments
        .patch(
            "ump-events",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "app.kubernetes.io/component": "events", "app.kubernetes.io/part-of": "ump"}}})),
        )
        .await
        .expect("label deployment");
    eventually(
        "the processor scaled to the partition bound",
        WAIT,
        || async { (replicas().await == Some(3)).then_some(()) },
    )
    .await;
    let scaled = deployments.get("ump-events").await.expect("get");
    assert!(
        scaled
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("ump-operator")
                && f.subresource.as_deref() == Some("scale")),
        "replicas set through the scale subresource: {:?}",
        scaled.managed_fields()
    );

    // The processors' group commits everything: after the stabilization window, back to the minimum.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    for partition in 0..3 {
        let (_, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        offsets
            .add_partition_offset(&topic, partition, Offset::Offset(high))
            .expect("offset");
    }
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    let drained = Instant::now();
    eventually("the processor scaled back to the minimum", WAIT, || async {
        (replicas().await == Some(1)).then_some(())
    })
    .await;
    assert!(
        drained.elapsed() >= Duration::from_secs(4),
        "scale-down waited for the window ({:?})",
        drained.elapsed()
    );

    operator.stop().await;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_spec_becomes_a_condition_on_the_object() {
    let (client, ns, operator) = setup("ump-op-unread").await;
    let resource = kube::api::ApiResource::erase::<MessageChannel>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    // Passes the schema's pattern, but no duration that large exists.
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
        "metadata": {"name": "odd"},
        "spec": {"type": "sms", "providers": [{"name": "s", "type": "sandbox"}],
                 "scaling": {"scaleDownStabilization": "99999999999999999999999d"}},
    }))
    .expect("object");
    raw.create(&PostParams::default(), &object)
        .await
        .expect("apiserver accepts it");

    // A readable channel next to it is reconciled as usual: the bad one does not break the watch.
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    channels
        .create(
            &PostParams::default(),
            &channel("fine", json!({"type": "sms", "deletionPolicy": "Delete",
                                    "providers": [{"name": "s", "type": "sandbox"}], "topic": {"partitions": 1}})),
        )
        .await
        .expect("create channel");
    wait_condition(&channels, "fine", "Ready", "True", "Ready").await;

    let message = eventually(
        "Ready=False InvalidSpec on the unreadable channel",
        WAIT,
        || async {
            let object = raw.get("odd").await.ok()?;
            let conditions = object
                .data
                .pointer("/status/conditions")?
                .as_array()?
                .clone();
            conditions.into_iter().find_map(|c| {
                (c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "InvalidSpec")
                    .then(|| c["message"].as_str().unwrap_or_default().to_owned())
            })
        },
    )
    .await;
    assert!(
        message.contains("scaleDownStabilization") || message.contains("duration"),
        "{message}"
    );

    channels
        .delete("fine", &DeleteParams::default())
        .await
        .expect("delete");
    raw.delete("odd", &DeleteParams::default())
        .await
        .expect("delete");
    operator.stop().await;
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn the_apiserver_rejects_invalid_specs_with_clear_messages() {
    let client = support::client().await;
    support::apply_crds(&client).await;
    let ns = support::namespace(&client, "ump-op-invalid").await;
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    let resource = kube::api::ApiResource::erase::<MessageChannel>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);

    let rejected = |spec: serde_json::Value| {
        let raw = raw.clone();
        async move {
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
                "metadata": {"name": "bad"}, "spec": spec,
            }))
            .expect("object");
            match raw.create(&PostParams::default(), &object).await {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{status:?}");
                    status.message
                }
                other => panic!("the apiserver accepted an invalid channel: {other:?}"),
            }
        }
    };
    let providers = json!([{"name": "s", "type": "sandbox"}]);

    let message = rejected(json!({"type": "sms", "providers": providers,
                                  "scaling": {"minReplicas": 5, "maxReplicas": 2}}))
    .await;
    assert!(
        message.contains("scaling.minReplicas must be less than or equal to scaling.maxReplicas"),
        "{message}"
    );

    let message =
        rejected(json!({"type": "sms", "providers": providers, "topic": {"partitions": 0}})).await;
    assert!(
        message.contains("spec.topic.partitions") && message.contains("greater than or equal to 1"),
        "{message}"
    );

    let message = rejected(json!({"type": "fax", "providers": providers})).await;
    assert!(
        message.contains("spec.type") && message.contains("Unsupported value"),
        "{message}"
    );

    let message = rejected(json!({"type": "sms", "providers": []})).await;
    assert!(message.contains("spec.providers"), "{message}");

    // The topic name can be chosen at creation, never changed afterwards.
    channels
        .create(
            &PostParams::default(),
            &channel(
                "named",
                json!({"type": "sms", "providers": providers, "topic": {"name": "custom.topic"}}),
            ),
        )
        .await
        .expect("create channel");
    let err = channels
        .patch(
            "named",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topic": {"name": "other.topic"}}})),
        )
        .await
        .expect_err("topic name is immutable");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.topic.name is immutable"),
        "{}",
        status.message
    );

    // A policy's quiet hours must look like HH:MM.
    let policies: Api<DeliveryPolicy> = Api::namespaced(client.clone(), &ns);
    let err = policies
        .create(
            &PostParams::default(),
            &policy(
                "p",
                json!({"quietHours": {"start": "25:00", "end": "07:00", "timezone": "Asia/Seoul"}}),
            ),
        )
        .await
        .expect_err("bad quiet hours");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert!(
        status.message.contains("spec.quietHours.start"),
        "{}",
        status.message
    );

    support::delete_namespace(&client, &ns).await;
}

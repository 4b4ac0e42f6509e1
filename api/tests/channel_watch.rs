//! The cluster-mode API follows the cluster, on the real kube-apiserver: a `MessageChannel`
//! created with the API running becomes usable without a restart, and a change to it (a new
//! template) takes effect at once; a channel with problems is left out, and one whose policy
//! turns invalid keeps its last valid configuration. The CRDs applied are the checked-in `crds/`
//! files.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{Value, json};
use std::time::Duration;
use ump_api::cluster::{ChannelSource, ClusterSettings};
use ump_core::keys::{ApiKeyStore, MySqlKeys, PresentedKey};
use ump_core::resources::{DeliveryPolicy, MessageChannel};
use ump_core::testing::{TestDatabase, infra, metric_value, unique_name};

async fn kube_client() -> kube::Client {
    let path = infra().kubeconfig();
    let kubeconfig = Kubeconfig::read_from(&path).expect("Kubernetes: kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("Kubernetes: kubeconfig");
    kube::Client::try_from(config).expect("Kubernetes: client")
}

async fn apply_checked_in_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for name in ["messagechannels.ump.dev", "deliverypolicies.ump.dev"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("crds/ file");
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).expect("CRD YAML");
        crds.patch(
            name,
            &PatchParams::apply("ump-api-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: apply {name}: {e}"));
        let established = await_condition(crds.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established in time")
            .expect("watch CRD");
    }
}

/// POSTs `body` to `/v1/messages` with `key`.
async fn send(http: &reqwest::Client, base: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("POST");
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

/// Reads `/metrics` until `ump_api_channels_invalid` shows `kept` and `left_out`, failing after
/// 20 s: what the API has seen of both kinds (channels, policies), each in its own watch.
async fn invalid_channels_eventually(http: &reqwest::Client, base: &str, kept: f64, left_out: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let value = |state| metric_value(&text, "ump_api_channels_invalid", &[("state", state)]);
        let seen = (value("kept"), value("left_out"));
        if seen == (Some(kept), Some(left_out)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ump_api_channels_invalid (kept, left_out): {seen:?}, expected ({kept}, {left_out})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Repeats the send until it is accepted (the watch takes a moment), failing after 20 s.
async fn accepted_eventually(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    what: &str,
    body: &Value,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = send(http, base, key, body).await;
        if status == 202 {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_created_in_the_cluster_is_usable_without_a_restart() {
    let kafka = infra().kafka_bootstrap();
    let client = kube_client().await;
    apply_checked_in_crds(&client).await;
    let namespace = unique_name("api-watch");
    let mut ns = Namespace::default();
    ns.metadata.name = Some(namespace.clone());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("Kubernetes: namespace");

    // The topics the operator would make.
    let topics = [
        format!("ump.{namespace}.sms"),
        format!("ump.{namespace}.marker"),
    ];
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()
        .expect("Kafka: admin");
    let created = admin
        .create_topics(
            &topics
                .iter()
                .map(|topic| NewTopic::new(topic, 1, TopicReplication::Fixed(1)))
                .collect::<Vec<_>>(),
            &AdminOptions::new(),
        )
        .await
        .expect("Kafka: create topic");
    for result in created {
        result.unwrap_or_else(|(name, code)| panic!("Kafka: create {name}: {code}"));
    }

    let db = TestDatabase::create().await;
    let key = format!("ump_{}_secret", namespace.replace('-', ""));
    MySqlKeys::new(db.pool.clone())
        .put(
            &PresentedKey::parse(&key).key_id,
            &format!("tenant-{namespace}"),
            &key,
            "test",
        )
        .await
        .expect("key");
    let settings = ClusterSettings {
        kafka_bootstrap: kafka,
        redis_url: infra().redis_url(),
        mysql_url: db.url.clone(),
        config_dir: None,
        watch_namespace: Some(namespace.clone()),
        amqp_url: None,
        events_topic: ump_core::audience::DEFAULT_EVENTS_TOPIC.to_owned(),
        accept_timeout: "5s".parse().expect("duration"),
        secrets_dir: std::env::temp_dir().join("ump-no-secrets"),
    };
    let source = ChannelSource::Cluster {
        client: client.clone(),
        namespace: namespace.clone(),
    };
    let state = ump_api::cluster::state(&settings, source, prometheus::Registry::new())
        .await
        .expect("API state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, ump_api::router(state)).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http");

    // Ready once the namespace's (empty) lists are known; no channel yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if ready.ok() == Some(200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "API never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sms = json!({"channel": "sms", "to": "+821012345678", "body": "클러스터에서 온 채널"});
    let (status, problem) = send(&http, &base, &key, &sms).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("channel")),
        "{problem}"
    );

    // kubectl apply of a channel: usable without restarting anything.
    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &namespace);
    let channel: MessageChannel = serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
        "metadata": {"name": "sms", "namespace": namespace},
        "spec": {"type": "sms", "topic": {"partitions": 1}, "providers": [{"name": "sandbox", "type": "sandbox"}]}
    }))
    .expect("channel");
    channels
        .create(&PostParams::default(), &channel)
        .await
        .expect("create MessageChannel");
    let accepted = accepted_eventually(&http, &base, &key, "the new channel", &sms).await;
    assert!(accepted["id"].is_string(), "{accepted}");

    // A template added to the channel is usable at once too.
    let otp = json!({"channel": "sms", "to": "+821012345678", "template": "otp", "data": {"code": "1234"}});
    let (status, _) = send(&http, &base, &key, &otp).await;
    assert_eq!(status, 422, "no template yet");
    let patch = json!({"spec": {"templates": [{"name": "otp", "text": "인증번호 {{ code }}"}]}});
    channels
        .patch("sms", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch MessageChannel");
    accepted_eventually(&http, &base, &key, "the new template", &otp).await;

    // The operator's checks hold here too. A channel with problems (two providers named alike)
    // is never usable; a channel whose policy turns invalid keeps its last valid configuration,
    // as its workers do, and a change made meanwhile waits for the fix.
    let policies: Api<DeliveryPolicy> = Api::namespaced(client.clone(), &namespace);
    let policy = |initial: &str| -> DeliveryPolicy {
        serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "DeliveryPolicy",
            "metadata": {"name": "otp", "namespace": namespace},
            "spec": {"retry": {"initialBackoff": initial, "maxBackoff": "1m"}}
        }))
        .expect("policy")
    };
    let channel_named = |name: &str, providers: Value| -> MessageChannel {
        serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "sms", "topic": {"partitions": 1}, "providers": providers}
        }))
        .expect("channel")
    };
    let sandbox = json!([{"name": "sandbox", "type": "sandbox"}]);
    policies
        .create(&PostParams::default(), &policy("1s"))
        .await
        .expect("create DeliveryPolicy");
    let patch = json!({"spec": {"policyRef": "otp"}});
    channels
        .patch("sms", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch MessageChannel");
    let twice = json!([{"name": "a", "type": "sandbox"}, {"name": "a", "type": "sandbox"}]);
    channels
        .create(&PostParams::default(), &channel_named("twice", twice))
        .await
        .expect("create MessageChannel twice");
    let set_initial_backoff = |initial: &str| {
        let patch = json!({"spec": {"retry": {"initialBackoff": initial}}});
        let policies = &policies;
        async move {
            policies
                .patch("otp", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patch DeliveryPolicy");
        }
    };
    set_initial_backoff("10m").await;
    // Policies come in a watch of their own, unordered against the channels': the API must have
    // seen the invalid policy (sms kept) and `twice` (left out) before the channel changes.
    invalid_channels_eventually(&http, &base, 1.0, 1.0).await;
    let later = json!({"spec": {"templates": [{"name": "otp", "text": "인증번호 {{ code }}"},
                                              {"name": "later", "text": "나중에"}]}});
    channels
        .patch("sms", &PatchParams::default(), &Patch::Merge(&later))
        .await
        .expect("patch MessageChannel");
    // A channel created after that change: once it is usable, the API has seen the change.
    channels
        .create(&PostParams::default(), &channel_named("marker", sandbox))
        .await
        .expect("create MessageChannel marker");
    let marker = json!({"channel": "marker", "to": "+821012345678", "body": "표시"});
    accepted_eventually(&http, &base, &key, "the marker channel", &marker).await;
    let twice_send = json!({"channel": "twice", "to": "+821012345678", "body": "x"});
    let (status, problem) = send(&http, &base, &key, &twice_send).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("channel")),
        "{problem}"
    );
    let (status, answer) = send(&http, &base, &key, &otp).await;
    assert_eq!(
        status, 202,
        "sms keeps its last valid configuration: {answer}"
    );
    let later_send = json!({"channel": "sms", "to": "+821012345678", "template": "later"});
    let (status, problem) = send(&http, &base, &key, &later_send).await;
    assert_eq!(
        status, 422,
        "the change waits for the policy's fix: {problem}"
    );
    // Fixed: the change applies.
    set_initial_backoff("2s").await;
    accepted_eventually(&http, &base, &key, "the fixed policy", &later_send).await;
    invalid_channels_eventually(&http, &base, 0.0, 1.0).await;

    db.drop_database().await;
}

//! Shared test support: a client for the real kube-apiserver, the checked-in CRDs applied, a random
//! namespace per test, the operator running in-process against that namespace, and direct Kafka
//! checks that do not go through the operator's own Kafka code.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use ump_operator::metrics::Metrics;
use ump_operator::settings::Settings;
use ump_testkit::{infra, unique_name};

pub async fn client() -> Client {
    let path = infra().kubeconfig();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("Kubernetes: kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: kubeconfig {}: {e}", path.display()));
    let client = Client::try_from(config).expect("Kubernetes: client");
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: kube-apiserver is not reachable: {e}"));
    client
}

/// Applies the CRD files checked in under `crds/` (what users install) and waits until served.
pub async fn apply_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = ump_operator::crd::crds_dir();
    for entry in std::fs::read_dir(&dir).expect("crds/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read CRD");
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("ump-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: apply {}: {e}", path.display()));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(
                crds.clone(),
                &crd.name_any(),
                conditions::is_crd_established(),
            ),
        )
        .await
        .expect("CRD not established within 30 s")
        .expect("watch CRD");
    }
}

/// A namespace of the test's own (deleted at the end; without a namespace controller it may linger
/// as Terminating, which is harmless).
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("Kubernetes: create namespace");
    name
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &DeleteParams::default()).await;
}

/// The operator, in-process, reconciling one namespace.
pub struct RunningOperator {
    pub metrics: Metrics,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    pub async fn start(client: &Client, namespace: &str) -> Self {
        Self::start_with(client, namespace, &[]).await
    }

    /// The operator with more settings (environment variable, value) than the tests' usual ones.
    pub async fn start_with(client: &Client, namespace: &str, more: &[(&str, &str)]) -> Self {
        // Operator logs in the test output (`RUST_LOG=ump_operator=debug` for more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ump_operator=warn")),
            )
            .with_test_writer()
            .try_init();
        let bootstrap = infra().kafka_bootstrap();
        let ns = namespace.to_owned();
        let mut settings = Settings::from_lookup(|key| match key {
            "UMP_KAFKA_BOOTSTRAP" => Some(bootstrap.clone()),
            "UMP_WORKER_IMAGE" => Some("ump-worker:test".to_owned()),
            "UMP_REDIS_URL" => Some("redis://127.0.0.1:6379".to_owned()),
            "UMP_MYSQL_URL_SECRET" => Some("ump-mysql".to_owned()),
            "UMP_OPERATOR_RESYNC" => Some("1s".to_owned()),
            "UMP_LEADER_ELECTION" => Some("false".to_owned()),
            _ => more
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned()),
        })
        .expect("settings");
        settings.watch_namespace = Some(ns);
        let metrics = Metrics::new();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let client = client.clone();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            ump_operator::controller::run(client, settings, m, shutdown)
                .await
                .expect("operator runs");
        });
        Self {
            metrics,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("operator stops within 30 s")
            .expect("operator task");
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Kafka as the broker reports it, read with a client of the test's own.
pub struct KafkaProbe {
    admin: AdminClient<DefaultClientContext>,
    consumer: BaseConsumer,
}

impl KafkaProbe {
    pub fn new() -> Self {
        let bootstrap = infra().kafka_bootstrap();
        let config = |extra: &[(&str, &str)]| {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &bootstrap);
            for (k, v) in extra {
                c.set(*k, *v);
            }
            c
        };
        Self {
            admin: config(&[]).create().expect("Kafka: admin client"),
            consumer: config(&[("allow.auto.create.topics", "false")])
                .create()
                .expect("Kafka: consumer"),
        }
    }

    /// Partition count, or `None` when the topic does not exist.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("Kafka: metadata");
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
    }

    /// The topic's own config overrides.
    pub async fn config(&self, topic: &str) -> BTreeMap<String, String> {
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("Kafka: describe configs");
        results
            .into_iter()
            .flat_map(|r| r.expect("Kafka: config resource").entries)
            .filter(|e| e.source == ConfigSource::DynamicTopic)
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect()
    }

    pub async fn delete(&self, topic: &str) {
        let _ = self
            .admin
            .delete_topics(&[topic], &AdminOptions::new())
            .await;
    }
}

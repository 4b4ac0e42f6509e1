//! A whole UMP cluster-mode stack for end-to-end tests, on the real Kafka, Redis and MariaDB from
//! `scripts/infra up`: the API in-process, the worker as a child process (so it can be killed),
//! channels in a namespace of their own, a database of their own, a sandbox outbox of their own,
//! an events topic of its own (and, for the tests that ask, the event processor in-process).

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod load;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ump_api::cluster::ClusterSettings;
use ump_core::keys::{ApiKeyStore, MySqlKeys};
use ump_core::testing::{TestDatabase, complete_lines, infra, unique_name};

pub struct Stack {
    pub db: TestDatabase,
    pub namespace: String,
    pub dir: PathBuf,
    pub outbox: PathBuf,
    pub api: String,
    pub key: String,
    /// The stack's own tenant: Redis (idempotency keys, dedupe keys) outlives a test run.
    pub tenant: String,
    pub http: reqwest::Client,
    pub kafka: String,
    /// Where the API puts behaviour events (`POST /v1/events`), the stack's own: read by
    /// [`Stack::start_event_processor`].
    pub events_topic: String,
    /// ActiveMQ, when a channel of the stack enables realtime delivery.
    pub amqp: Option<String>,
    pub claim_lease: &'static str,
    /// Provider Secrets of the worker and the API (`UMP_SECRETS_DIR`).
    pub secrets_dir: PathBuf,
    /// `RUST_LOG` of the worker.
    pub worker_log_level: &'static str,
    /// More environment of the worker.
    pub worker_env: Vec<(&'static str, String)>,
    worker: Option<WorkerProcess>,
    worker_runs: usize,
}

/// How a stack runs, beyond its channels.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub claim_lease: &'static str,
    /// Where provider Secrets are mounted for the worker and the API; a folder of the stack's own
    /// (empty) when absent.
    pub secrets_dir: Option<PathBuf>,
    pub worker_log_level: &'static str,
    /// More environment of the worker.
    pub worker_env: Vec<(&'static str, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            claim_lease: "3s",
            secrets_dir: None,
            worker_log_level: "info",
            worker_env: Vec::new(),
        }
    }
}

/// Channels of a stack: YAML documents where `NAMESPACE` stands for the stack's namespace.
pub const DEFAULT_CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 4}
  providers: [{name: sandbox, type: sandbox}]
"#;

/// The default channel without content dedupe: each message claims its own key
/// (`ump:sent:<id>`), which its worker lets go once the message is settled.
pub const OWN_KEY_CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: own-keys, namespace: NAMESPACE}
spec:
  dedupe: {key: None}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: own-keys
  topic: {partitions: 4}
  providers: [{name: sandbox, type: sandbox}]
"#;

impl Stack {
    pub async fn start(channels: &str) -> Self {
        Self::start_with(channels, "3s").await
    }

    pub async fn start_with(channels: &str, claim_lease: &'static str) -> Self {
        Self::start_opts(
            channels,
            StackOptions {
                claim_lease,
                ..StackOptions::default()
            },
        )
        .await
    }

    pub async fn start_opts(channels: &str, options: StackOptions) -> Self {
        let kafka = infra().kafka_bootstrap();
        infra().redis_url();
        let db = TestDatabase::create().await;
        let namespace = unique_name("e2e");
        let dir = std::env::temp_dir().join(&namespace);
        std::fs::create_dir_all(dir.join("config")).expect("test dir");
        let yaml = channels.replace("NAMESPACE", &namespace);
        std::fs::write(dir.join("config/channels.yaml"), &yaml).expect("write channels");
        let registry =
            ump_core::config::ChannelRegistry::load_dir(&dir.join("config")).expect("channels");
        create_topics(
            &kafka,
            registry.channels().flat_map(|c| {
                let r = &c.resource;
                [
                    (r.topic_name(), r.spec.topic.partitions),
                    (r.dead_letter_topic(), 1),
                ]
            }),
        )
        .await;

        let key = format!("ump_{}_secret", unique_name("k").replace('-', ""));
        let tenant = format!("tenant-{namespace}");
        MySqlKeys::new(db.pool.clone())
            .put(
                &ump_core::keys::PresentedKey::parse(&key).key_id,
                &tenant,
                &key,
                "e2e",
            )
            .await
            .expect("store key");
        let secrets_dir = options
            .secrets_dir
            .clone()
            .unwrap_or_else(|| dir.join("secrets"));
        let amqp = registry
            .channels()
            .any(|c| c.resource.spec.realtime.enabled)
            .then(|| infra().amqp_url());
        let events_topic = format!("ump.events.{namespace}");
        let api = spawn_api_with(
            &kafka,
            &db.url,
            &dir.join("config"),
            "5s",
            &secrets_dir,
            amqp.as_deref(),
            &events_topic,
        )
        .await;
        let mut stack = Self {
            db,
            namespace,
            outbox: dir.join("outbox.jsonl"),
            dir,
            api,
            key,
            tenant,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http"),
            kafka,
            events_topic,
            amqp,
            claim_lease: options.claim_lease,
            secrets_dir,
            worker_log_level: options.worker_log_level,
            worker_env: options.worker_env.clone(),
            worker: None,
            worker_runs: 0,
        };
        stack.start_worker();
        stack
    }

    pub fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "worker already running");
        self.worker_runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("worker-{}.log", self.worker_runs)))
            .expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ump-worker"));
        if let Some(amqp) = &self.amqp {
            command.env("UMP_AMQP_URL", amqp);
        }
        for (key, value) in &self.worker_env {
            command.env(key, value);
        }
        let child = command
            .env("UMP_CONFIG_DIR", self.dir.join("config"))
            .env("UMP_KAFKA_BOOTSTRAP", &self.kafka)
            .env("UMP_REDIS_URL", infra().redis_url())
            .env("UMP_MYSQL_URL", &self.db.url)
            .env("UMP_WORKER_LISTEN", "127.0.0.1:0")
            .env("UMP_SANDBOX_OUTBOX", &self.outbox)
            .env("UMP_WORKER_CLAIM_LEASE", self.claim_lease)
            .env("UMP_SECRETS_DIR", &self.secrets_dir)
            .env("RUST_LOG", self.worker_log_level)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start ump-worker");
        self.worker = Some(WorkerProcess(child));
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.0.kill().expect("kill -9 worker");
            worker.0.wait().expect("reap worker");
        }
    }

    /// SIGTERM: the worker finishes the batch in hand and exits.
    pub fn stop_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(worker.0.id().to_string())
                .status()
                .expect("kill -TERM");
            worker.0.wait().expect("reap worker");
        }
    }

    /// The cluster mode's event processor (`ump_events::cluster`) in this process, on the stack's
    /// database and events topic, so that events sent to the API reach people's segments. It
    /// stops when the returned handle is dropped.
    pub async fn start_event_processor(&self) -> EventProcessor {
        create_topics(&self.kafka, std::iter::once((self.events_topic.clone(), 2))).await;
        let settings = ump_events::cluster::ProcessorSettings {
            kafka_bootstrap: self.kafka.clone(),
            mysql_url: self.db.url.clone(),
            topic: self.events_topic.clone(),
            partitions: 2,
            replication: 1,
            group: format!("ump-events-{}", self.namespace),
            batch: 500,
            batch_wait: "20ms".parse().expect("duration"),
            listen: "127.0.0.1:0".parse().expect("address"),
            stall_check: "20s".parse().expect("duration"),
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        // Polled on a blocking thread: `tokio::spawn` needs the future to be `Send` for every
        // lifetime, which the compiler cannot prove for `run` (borrows held across awaits).
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            runtime.block_on(ump_events::cluster::run(settings, stop))
        });
        EventProcessor { shutdown, task }
    }

    /// The `/metrics` text of the running worker, at the address it logged when it started.
    pub async fn worker_metrics(&self) -> String {
        let log = self.dir.join(format!("worker-{}.log", self.worker_runs));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let address = loop {
            let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
            let logged = text
                .lines()
                .filter(|line| line.contains("worker running"))
                .find_map(|line| {
                    line.split_whitespace()
                        .find_map(|word| word.strip_prefix("listen="))
                        .map(str::to_owned)
                });
            if let Some(address) = logged {
                break address;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker never logged its address:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let response = self
            .http
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .expect("GET the worker's /metrics");
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.expect("metrics text")
    }

    pub fn worker_log(&self) -> String {
        (1..=self.worker_runs)
            .map(|run| {
                std::fs::read_to_string(self.dir.join(format!("worker-{run}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- restart ----\n")
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.key)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until message `id` is `status` (60 s at most), then returns its view.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, current) = self.get(&format!("/v1/messages/{id}")).await;
            if current["status"] == status {
                return current;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never became {status}: {current}\n{}",
                self.worker_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends `count` SMS in batches of 1000; returns the accepted ids.
    pub async fn send_many(&self, count: usize, body: impl Fn(usize) -> String) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        for start in (0..count).step_by(1000) {
            let messages: Vec<Value> = (start..(start + 1000).min(count))
                .map(|i| serde_json::json!({"channel": "sms", "to": format!("+8210{:08}", i % 5000), "body": body(i)}))
                .collect();
            let (status, answer) = self
                .post(
                    "/v1/messages/batch",
                    &serde_json::json!({"messages": messages}),
                )
                .await;
            assert_eq!(status, 202, "{answer}");
            for result in answer["results"].as_array().expect("results") {
                ids.push(
                    result["id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("rejected: {result}"))
                        .to_owned(),
                );
            }
        }
        ids
    }

    /// What is left of each message's own dedupe key (`ump:sent:<id>`) in Redis: `None` once it
    /// is gone.
    pub async fn sent_key_ttls(&self, ids: &[String]) -> Vec<Option<Duration>> {
        let client = redis::Client::open(infra().redis_url().as_str()).expect("Redis: client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("PTTL").arg(format!("ump:sent:{id}"));
        }
        let ttls: Vec<i64> = pipe.query_async(&mut conn).await.expect("Redis: PTTL");
        ttls.into_iter()
            .map(|ms| match ms {
                -2 => None,
                -1 => Some(Duration::MAX),
                ms => Some(Duration::from_millis(ms.unsigned_abs())),
            })
            .collect()
    }

    /// Waits until every message's own dedupe key has at most `left` to live (zero: is gone).
    pub async fn wait_sent_keys_within(&self, ids: &[String], left: Duration, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let ttls = self.sent_key_ttls(ids).await;
            let longer = ttls
                .iter()
                .filter(|ttl| ttl.is_some_and(|t| left.is_zero() || t > left))
                .count();
            if longer == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{longer} of {} sent messages still hold a dedupe key longer than {left:?} after {within:?}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Lines of the sandbox outbox, counted per message id.
    pub fn outbox(&self) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(&self.outbox).unwrap_or_default();
        let mut counts = HashMap::new();
        for line in complete_lines(&text) {
            let value: Value = serde_json::from_str(line).expect("outbox line is JSON");
            *counts
                .entry(value["id"].as_str().expect("id").to_owned())
                .or_insert(0) += 1;
        }
        counts
    }

    /// After a run in which the worker was killed: counts `ids` (accepted) against the sandbox
    /// outbox, records the figures for RELIABILITY.md, and fails on any lost message or on more
    /// than `allowed` duplicates (the crash window the guarantee names).
    pub fn record_kill_run(
        &self,
        ids: &[String],
        scenario: &str,
        fault: String,
        allowed: usize,
        why: &str,
    ) {
        let outbox = self.outbox();
        let lost: Vec<&String> = ids.iter().filter(|id| !outbox.contains_key(*id)).collect();
        let duplicated = ids
            .iter()
            .filter(|id| outbox.get(*id).is_some_and(|&n| n > 1))
            .count();
        ump_core::testing::Reliability {
            scenario: scenario.to_owned(),
            fault,
            accepted: ids.len(),
            sent: ids.len() - lost.len(),
            duplicated,
            lost: lost.len(),
            notes: format!(
                "the guarantee allows a duplicate for each message whose provider call had ended \
                 but {why} when the worker died: at most {allowed} in this run"
            ),
        }
        .record();
        assert!(
            lost.is_empty(),
            "{} messages lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        assert!(
            duplicated <= allowed,
            "{duplicated} duplicates exceed the guarantee ({allowed})"
        );
    }

    pub async fn status_counts(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>("SELECT status, COUNT(*) FROM messages GROUP BY status")
            .fetch_all(&self.db.pool)
            .await
            .expect("count statuses")
            .into_iter()
            .collect()
    }

    /// Waits until `done(statuses)` holds, failing with the worker's log after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&HashMap<String, i64>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let counts = self.status_counts().await;
            if done(&counts) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let log = self.worker_log();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "timed out waiting for {what}; statuses {counts:?}\nworker log tail:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sum of the end offsets of the stack's topics: what has ever been enqueued.
    pub fn enqueued(&self) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .create()
            .expect("consumer");
        let registry = ump_core::config::ChannelRegistry::load_dir(&self.dir.join("config"))
            .expect("channels");
        let mut total = 0;
        for channel in registry.channels() {
            let topic = channel.resource.topic_name();
            for partition in 0..channel.resource.spec.topic.partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .expect("Kafka: watermarks");
                total += high;
            }
        }
        total
    }

    pub async fn finish(mut self) {
        self.stop_worker();
        let _ = std::fs::remove_dir_all(&self.dir);
        self.db.drop_database().await;
    }
}

/// The event processor of [`Stack::start_event_processor`].
pub struct EventProcessor {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl EventProcessor {
    /// Stops it (the batch in hand is committed first) and fails the test if it had failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the event processor stopped within 30 s")
            .expect("the event processor's task")
            .expect("the event processor ran");
    }
}

impl Drop for EventProcessor {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A worker child process, killed when dropped (a failing test leaves none behind).
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn create_topics(kafka: &str, topics: impl Iterator<Item = (String, i32)>) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("Kafka: admin");
    let topics: Vec<(String, i32)> = topics.collect();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    for result in admin
        .create_topics(&new, &options)
        .await
        .expect("Kafka: create topics")
    {
        match result {
            // A producer's metadata request may have made it already (the broker creates topics
            // on first use).
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("Kafka: create topic {name}: {code}"),
        }
    }
}

/// Deletes topics: a test that filled one with a big backlog gives the disk back.
pub async fn delete_topics(kafka: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("Kafka: admin");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    for result in admin
        .delete_topics(&names, &options)
        .await
        .expect("Kafka: delete topics")
    {
        result.unwrap_or_else(|(name, code)| panic!("Kafka: delete topic {name}: {code}"));
    }
}

/// Serves the cluster-mode API on 127.0.0.1 (a free port); returns its base URL.
pub async fn spawn_api(
    kafka: &str,
    mysql_url: &str,
    config_dir: &std::path::Path,
    accept_timeout: &str,
) -> String {
    let no_secrets = std::env::temp_dir().join("ump-no-secrets");
    spawn_api_with(
        kafka,
        mysql_url,
        config_dir,
        accept_timeout,
        &no_secrets,
        None,
        ump_core::audience::DEFAULT_EVENTS_TOPIC,
    )
    .await
}

/// `spawn_api` with provider Secrets (for the delivery-receipt endpoints) in `secrets_dir`.
pub async fn spawn_api_with_secrets(
    kafka: &str,
    mysql_url: &str,
    config_dir: &std::path::Path,
    accept_timeout: &str,
    secrets_dir: &std::path::Path,
) -> String {
    spawn_api_with(
        kafka,
        mysql_url,
        config_dir,
        accept_timeout,
        secrets_dir,
        None,
        ump_core::audience::DEFAULT_EVENTS_TOPIC,
    )
    .await
}

/// `spawn_api` with provider Secrets in `secrets_dir`, behaviour events going to `events_topic`
/// and, when `amqp_url` is given, realtime sends going to that ActiveMQ.
pub async fn spawn_api_with(
    kafka: &str,
    mysql_url: &str,
    config_dir: &std::path::Path,
    accept_timeout: &str,
    secrets_dir: &std::path::Path,
    amqp_url: Option<&str>,
    events_topic: &str,
) -> String {
    let settings = ClusterSettings {
        kafka_bootstrap: kafka.to_owned(),
        redis_url: infra().redis_url(),
        mysql_url: mysql_url.to_owned(),
        config_dir: Some(config_dir.to_owned()),
        watch_namespace: None,
        amqp_url: amqp_url.map(str::to_owned),
        events_topic: events_topic.to_owned(),
        accept_timeout: accept_timeout.parse().expect("duration"),
        secrets_dir: secrets_dir.to_owned(),
    };
    let source = ump_api::cluster::ChannelSource::Folder(config_dir.to_owned());
    let mut state = ump_api::cluster::state(&settings, source, prometheus::Registry::new())
        .await
        .expect("API state");
    // Webhook receivers of the tests listen on 127.0.0.1 over plain HTTP.
    state.webhook_rules = ump_core::webhooks::UrlRules {
        allow_http: true,
        allow_loopback: true,
    };
    // As the API binary does: its relay sends what journey steps put in the outbox.
    tokio::spawn(ump_api::journeys::run_relay(
        state.clone(),
        ump_api::journeys::RELAY_LOOPS,
        tokio_util::sync::CancellationToken::new(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind API");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, ump_api::router(state)).await });
    format!("http://{addr}")
}

/// `scripts/infra <command> <component>`, failing the test with the script's output. Blocking:
/// call it from `spawn_blocking` or through [`Outage`].
pub fn infra_script(command: &str, component: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra");
    let output = Command::new("bash")
        .arg(&script)
        .args([command, component])
        .output()
        .expect("run scripts/infra");
    assert!(
        output.status.success(),
        "scripts/infra {command} {component} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A plain consumer of one queue on ActiveMQ.
pub struct QueueReader {
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    _session: fe2o3_amqp::session::SessionHandle<()>,
    pub receiver: fe2o3_amqp::Receiver,
}

impl QueueReader {
    pub async fn attach(amqp_url: &str, name: &str, queue: &str) -> Self {
        let mut connection = ump_core::amqp::AmqpSettings::parse(amqp_url)
            .expect("url")
            .connect(name)
            .await
            .expect("ActiveMQ: connect");
        let mut session = fe2o3_amqp::Session::begin(&mut connection)
            .await
            .expect("session");
        let receiver = fe2o3_amqp::Receiver::attach(&mut session, name, queue)
            .await
            .unwrap_or_else(|e| panic!("attach to {queue}: {e}"));
        Self {
            connection,
            _session: session,
            receiver,
        }
    }

    /// The next message's envelope, taken off the queue (accepted); `None` when nothing arrives
    /// within `wait`.
    pub async fn take(&mut self, wait: Duration) -> Option<ump_core::model::Envelope> {
        let delivery = tokio::time::timeout(
            wait,
            self.receiver
                .recv::<fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>>(),
        )
        .await
        .ok()?
        .expect("ActiveMQ: receive");
        let envelope = ump_core::amqp::envelope_of(delivery.body()).expect("an envelope");
        self.receiver.accept(&delivery).await.expect("accept");
        Some(envelope)
    }

    pub async fn close(mut self) {
        self.receiver.close().await.expect("close");
        self.connection.close().await.expect("close connection");
    }
}

/// A shared component taken down by a test (`scripts/infra down`): `end` brings it back up, and
/// so does dropping it, so a failing test never leaves the component down for the next one.
pub struct Outage {
    component: &'static str,
    started: std::time::Instant,
    up: bool,
}

impl Outage {
    pub async fn begin(component: &'static str) -> Self {
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || infra_script("down", component))
            .await
            .expect("scripts/infra down");
        Self {
            component,
            started,
            up: false,
        }
    }

    /// Kills the component's daemon with SIGKILL, as a crash or the OOM killer would: no shutdown,
    /// nothing flushed or synced on the way out.
    pub async fn crash(component: &'static str) -> Self {
        let started = std::time::Instant::now();
        let run = ump_core::testing::settings_path();
        let pid_file = run
            .parent()
            .expect("the run folder")
            .join(component)
            .join("pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{component}: {}: {e}", pid_file.display()));
        let pid = pid.trim().to_owned();
        let killed = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {pid} ({component})");
        let gone = std::path::Path::new("/proc").join(&pid);
        for _ in 0..100 {
            if !gone.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!gone.exists(), "{component} ({pid}) outlived kill -9");
        Self {
            component,
            started,
            up: false,
        }
    }

    /// Starts the component again (waiting until it is ready); returns how long it was out, from
    /// the stop command to ready again.
    pub async fn end(mut self) -> Duration {
        let component = self.component;
        tokio::task::spawn_blocking(move || infra_script("up", component))
            .await
            .expect("scripts/infra up");
        self.up = true;
        self.started.elapsed()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.up {
            infra_script("up", self.component);
        }
    }
}

/// `text` without its terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A message view's statuses, in order.
pub fn statuses(view: &Value) -> Vec<String> {
    view["events"].as_array().map_or_else(Vec::new, |events| {
        events
            .iter()
            .filter_map(|e| e["status"].as_str().map(str::to_owned))
            .collect()
    })
}

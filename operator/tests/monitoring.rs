//! Every metric the chart's Grafana dashboard and alerts use is exported by the running binaries:
//! the API (`ump api`, cluster mode), a worker, the event processor and the operator run as
//! processes on the real infrastructure, a message goes through (sent, then a duplicate, then a
//! refused request), an event is folded in, an operator reconciles a channel and a second one,
//! cut off from Kafka, fails to; then each `/metrics` is scraped and the names are cross-checked. Metric families with no sample yet are
//! not exported at all, which is why every one of them is made to have one first.

mod chart;
mod support;

use kube::api::{Api, DeleteParams, PostParams};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ump_domain::resources::MessageChannel;
use ump_testkit::{free_port, infra, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_metrics_the_binaries_export() {
    let objects = chart::render("ump", &[chart::values_file("production-values.yaml")], &[]);
    let used: BTreeSet<String> = chart::monitoring_expressions(&objects)
        .iter()
        .flat_map(|e| chart::metric_names(e))
        .collect();
    assert!(used.len() >= 15, "metric names found: {used:?}");

    let (api_binary, worker_binary) = (sibling_binary("ump"), sibling_binary("ump-worker"));
    let events_binary = sibling_binary("ump-events");
    let kafka = infra().kafka_bootstrap();
    let redis = infra().redis_url();
    let db = Database::create();
    let namespace = unique_name("ump-metrics");
    let dir = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(dir.join("config")).expect("test dir");
    // Three providers: failover, so the circuit breakers are reported; a remote one (SMTP, never
    // reached: the sandbox before it takes every message), so its concurrency limit is.
    std::fs::write(
        dir.join("config/channels.yaml"),
        format!(
            "apiVersion: ump.dev/v1alpha1\nkind: MessageChannel\n\
             metadata: {{name: sms, namespace: {namespace}}}\n\
             spec:\n  type: sms\n  topic: {{partitions: 2}}\n  providers:\n\
             \x20   - {{name: primary, type: sandbox}}\n    - {{name: backup, type: sandbox}}\n\
             \x20   - {{name: mail, type: smtp, settings: {{host: 127.0.0.1, port: \"9\", tls: none, \
             from: \"UMP <noreply@example.com>\"}}}}\n\
             \x20 templates:\n    - {{name: hello, text: hello}}\n"
        ),
    )
    .expect("channels");
    let config_dir = dir.join("config");
    let connections = [
        ("UMP_KAFKA_BOOTSTRAP", kafka.as_str()),
        ("UMP_REDIS_URL", redis.as_str()),
        ("UMP_MYSQL_URL", db.url.as_str()),
        ("UMP_CONFIG_DIR", path(&config_dir)),
    ];

    // The worker first: it creates the channel's topics.
    let worker_port = free_port();
    let outbox = dir.join("outbox.jsonl");
    let worker = spawn(
        &worker_binary,
        &[],
        &connections,
        &[
            ("UMP_WORKER_LISTEN", format!("127.0.0.1:{worker_port}")),
            ("UMP_SANDBOX_OUTBOX", path(&outbox).to_owned()),
            ("UMP_WORKER_BATCH_WAIT", "5ms".to_owned()),
        ],
    );
    wait_ready("the worker", worker_port).await;
    // The processor next: it creates the events topic (of this run) the API produces to.
    let events_topic = format!("ump.{namespace}.events");
    let events_port = free_port();
    let processor = spawn(
        &events_binary,
        &[],
        &connections,
        &[
            ("UMP_EVENTS_LISTEN", format!("127.0.0.1:{events_port}")),
            ("UMP_EVENTS_TOPIC", events_topic.clone()),
            ("UMP_EVENTS_PARTITIONS", "1".to_owned()),
            ("UMP_EVENTS_GROUP", format!("ump-events.{namespace}")),
        ],
    );
    wait_ready("the event processor", events_port).await;
    let api_port = free_port();
    let key = format!("metrics-{}", unique_name("key"));
    let api = spawn(
        &api_binary,
        &["api"],
        &connections,
        &[
            ("UMP_LISTEN", format!("127.0.0.1:{api_port}")),
            ("UMP_BOOTSTRAP_API_KEY", key.clone()),
            ("UMP_EVENTS_TOPIC", events_topic.clone()),
        ],
    );
    wait_ready("the API", api_port).await;

    // Operators: one reconciling a channel, one that cannot reach Kafka (reconcile errors).
    let client = support::client().await;
    support::apply_crds(&client).await;
    let healthy_ns = support::namespace(&client, "ump-metrics-op").await;
    let broken_ns = support::namespace(&client, "ump-metrics-broken").await;
    let healthy_port = free_port();
    let broken_port = free_port();
    let healthy = spawn_operator(&healthy_ns, healthy_port, &kafka);
    let dead_kafka = format!("127.0.0.1:{}", free_port());
    let broken = spawn_operator(&broken_ns, broken_port, &dead_kafka);
    for (ns, policy) in [(&healthy_ns, "Delete"), (&broken_ns, "Retain")] {
        let channels: Api<MessageChannel> = Api::namespaced(client.clone(), ns);
        let channel: MessageChannel = serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel", "metadata": {"name": "push"},
            "spec": {"type": "push", "deletionPolicy": policy, "topic": {"partitions": 1},
                     "providers": [{"name": "sandbox", "type": "sandbox"}]},
        }))
        .expect("channel");
        channels
            .create(&PostParams::default(), &channel)
            .await
            .expect("create channel");
    }

    // A message sent, the same one again (a duplicate), and a request refused.
    let body = format!(r#"{{"channel":"sms","to":"+821012345678","body":"metrics {namespace}"}}"#);
    for _ in 0..2 {
        let (status, answer) = http(api_port, "POST", "/v1/messages", Some(&key), &body);
        assert_eq!(status, 202, "{answer}");
    }
    let (status, _) = http(
        api_port,
        "POST",
        "/v1/messages",
        Some(&key),
        r#"{"channel":"sms"}"#,
    );
    assert_eq!(status, 422);
    // A journey the event below enters: its step counted by the processor, its message taken
    // by the API's relay (not sent: the person has no phone).
    let journey = r#"{"id":"metrics","entry":{"event":"viewed"},"steps":[{"id":"hi",
        "send":{"channel":"sms","template":"hello","category":"transactional"}}]}"#;
    let (status, answer) = http(api_port, "POST", "/v1/journeys", Some(&key), journey);
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = http(
        api_port,
        "POST",
        "/v1/journeys/metrics/activate",
        Some(&key),
        "{}",
    );
    assert_eq!(status, 200, "{answer}");
    // An event, folded in by the processor.
    let (status, answer) = http(
        api_port,
        "POST",
        "/v1/events",
        Some(&key),
        r#"{"user_id":"metrics-person","event":"viewed"}"#,
    );
    assert_eq!(status, 202, "{answer}");

    let scrape = |port| http(port, "GET", "/metrics", None, "").1;
    support::eventually(
        "the event counted in the processor's metrics",
        Duration::from_secs(60),
        || async {
            scrape(events_port)
                .contains("ump_events_processed_total{result=\"counted\"} 1")
                .then_some(())
        },
    )
    .await;
    support::eventually(
        "the journey's step in the processor's metrics, its message in the API's",
        Duration::from_secs(60),
        || async {
            (scrape(events_port).contains("ump_journey_steps_total{counter=\"sent\"} 1")
                && scrape(api_port).contains("ump_journey_messages_relayed_total{"))
            .then_some(())
        },
    )
    .await;
    support::eventually(
        "a sent and a duplicate message in the worker's metrics",
        Duration::from_secs(60),
        || async {
            let text = scrape(worker_port);
            (text.contains("outcome=\"sent\"") && text.contains("outcome=\"duplicate\""))
                .then_some(())
        },
    )
    .await;
    support::eventually(
        "the healthy operator's channel metrics",
        Duration::from_secs(60),
        || async {
            let text = scrape(healthy_port);
            (text.contains("ump_operator_channel_consumer_lag{")
                && text.contains("ump_operator_kafka_actions_total{"))
            .then_some(())
        },
    )
    .await;
    support::eventually(
        "the broken operator's reconcile errors",
        Duration::from_secs(60),
        || async {
            scrape(broken_port)
                .contains("ump_operator_reconcile_errors_total{")
                .then_some(())
        },
    )
    .await;

    let mut exported: BTreeMap<String, &str> = BTreeMap::new();
    for (process, port) in [
        ("api", api_port),
        ("worker", worker_port),
        ("events", events_port),
        ("operator", healthy_port),
        ("operator", broken_port),
    ] {
        for name in chart::exported_names(&scrape(port)) {
            exported.insert(name, process);
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use metrics no UMP binary exports: {missing:?}\n\
         exported: {:?}",
        exported.keys().collect::<Vec<_>>()
    );

    // Clean up: the healthy operator deletes its channel's topic; the worker's topics go here.
    for ns in [&healthy_ns, &broken_ns] {
        let channels: Api<MessageChannel> = Api::namespaced(client.clone(), ns);
        channels
            .delete("push", &DeleteParams::default())
            .await
            .expect("delete channel");
        support::eventually("the channel gone", Duration::from_secs(60), || async {
            channels.get_opt("push").await.ok()?.is_none().then_some(())
        })
        .await;
    }
    drop((healthy, broken, api, worker, processor));
    for ns in [&healthy_ns, &broken_ns] {
        support::delete_namespace(&client, ns).await;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()
        .expect("Kafka: admin client");
    let topic = format!("ump.{namespace}.sms");
    let dead_letters = format!("{topic}.dlq");
    let _ = admin
        .delete_topics(
            &[&topic, &dead_letters, &events_topic],
            &AdminOptions::new(),
        )
        .await;
    db.drop_database();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database of its own on the test MariaDB, for the binaries under test (each migrates it when
/// it starts). Made and dropped with the `mariadb` client `scripts/infra` installs beside the
/// server: the operator's tests compile no MySQL driver.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn create() -> Self {
        let admin = infra().mysql_url();
        // Our own hex name, not input.
        let name = unique_name("ump_metrics").replace('-', "_");
        mariadb(&admin, &format!("CREATE DATABASE `{name}`"));
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    fn drop_database(self) {
        mariadb(
            &infra().mysql_url(),
            &format!("DROP DATABASE `{}`", self.name),
        );
    }
}

/// Runs one statement with the `mariadb` client as the user of `url`
/// (`mysql://user:password@host:port/...`); the password goes in the environment, not the
/// command line.
fn mariadb(url: &str, statement: &str) {
    let rest = url.strip_prefix("mysql://").unwrap_or(url);
    let (credentials, address) = rest
        .split_once('@')
        .expect("UMP_MYSQL_URL has user:password@");
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let authority = address.split('/').next().unwrap_or(address);
    let (host, port) = authority.split_once(':').unwrap_or((authority, "3306"));
    let output = Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h",
            host,
            "-P",
            port,
            "-u",
            user,
            "-e",
            statement,
        ])
        .env("MYSQL_PWD", password)
        .output()
        .unwrap_or_else(|e| {
            panic!("MariaDB: the `mariadb` client (scripts/infra up mariadb installs it): {e}")
        });
    assert!(
        output.status.success(),
        "MariaDB: {statement}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A binary of another crate of the workspace, as built from this checkout. `cargo test
/// --workspace` has built it already, and then this is a no-op check of every unit; run alone,
/// the test builds it. (Cargo releases its build lock before it runs tests.) The same command as
/// the suite's, so that the features, and with them the artifacts, are the same.
fn sibling_binary(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--locked", "--no-run", "--quiet"])
        .current_dir(&root)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo test --workspace --no-run:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join(name);
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(
    binary: &Path,
    args: &[&str],
    connections: &[(&str, &str)],
    env: &[(&str, String)],
) -> Process {
    let mut command = Command::new(binary);
    command.args(args);
    for (key, value) in connections {
        command.env(key, value);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    Process(
        command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display())),
    )
}

fn spawn_operator(namespace: &str, port: u16, kafka: &str) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_ump-operator"))
            .env("KUBECONFIG", infra().kubeconfig())
            .env("UMP_KAFKA_BOOTSTRAP", kafka)
            .env("UMP_WATCH_NAMESPACE", namespace)
            .env("UMP_LEADER_ELECTION", "false")
            .env("UMP_OPERATOR_LISTEN", format!("127.0.0.1:{port}"))
            .env("UMP_OPERATOR_RESYNC", "2s")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ump-operator"),
    )
}

async fn wait_ready(what: &str, port: u16) {
    support::eventually(
        &format!("{what} ready on port {port}"),
        Duration::from_secs(60),
        || async { (http(port, "GET", "/readyz", None, "").0 == 200).then_some(()) },
    )
    .await;
}

/// One HTTP/1.0 request; status 0 when nothing answers.
fn http(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

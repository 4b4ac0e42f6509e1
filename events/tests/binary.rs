//! The `ump-events` binary end to end, configured by the environment as the Helm chart configures
//! it: it creates its topic, folds the topic's events into MySQL (an event sent twice counted
//! once), serves `/healthz`, `/readyz` and `/metrics`, and exits cleanly on SIGTERM.

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ump_automation::event::EventInput;
use ump_core::audience::{EventLog, KafkaEventLog};
use ump_core::queue::KafkaSettings;
use ump_core::testing::{TestDatabase, free_port, infra, unique_name};

struct Processor(Child);

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_folds_events_serves_probes_and_shuts_down_gracefully() {
    let db = TestDatabase::create_empty().await;
    let bootstrap = infra().kafka_bootstrap();
    let topic = unique_name("ump.events");
    let port = free_port();
    let mut processor = Processor(
        Command::new(env!("CARGO_BIN_EXE_ump-events"))
            .env("UMP_KAFKA_BOOTSTRAP", &bootstrap)
            .env("UMP_MYSQL_URL", &db.url)
            .env("UMP_EVENTS_TOPIC", &topic)
            .env("UMP_EVENTS_PARTITIONS", "2")
            .env("UMP_EVENTS_GROUP", unique_name("ump-events"))
            .env("UMP_EVENTS_BATCH_WAIT", "5ms")
            .env("UMP_EVENTS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "ump_events=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ump-events"),
    );
    eventually(
        "ready (migrated, MySQL answering)",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = processor.0.try_wait() {
                panic!("ump-events exited: {status}");
            }
            http_get(port, "/readyz").filter(|(code, _)| *code == 200)
        },
    )
    .await;
    assert_eq!(http_get(port, "/healthz").map(|(code, _)| code), Some(200));

    // The topic, made with the partitions asked for.
    let metadata: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("Kafka: metadata client");
    let partitions = metadata
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("Kafka: metadata")
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len());
    assert_eq!(partitions, Some(2));

    // One event, sent twice by a client that retried: counted once.
    let event = || {
        EventInput {
            user_id: "person-1".to_owned(),
            event: "viewed".to_owned(),
            properties: None,
            timestamp: None,
            message_id: Some("m-1".to_owned()),
        }
        .check("", Utc::now())
        .expect("a valid event")
    };
    let log = KafkaEventLog::new(
        &KafkaSettings::from_env(bootstrap.clone()),
        &topic,
        Duration::from_secs(10),
    )
    .expect("Kafka: producer");
    log.append("default", &[event()]).await.expect("append");
    log.append("default", &[event()])
        .await
        .expect("append again");
    let metrics = eventually("both entries folded in", Duration::from_secs(60), || {
        let (_, metrics) = http_get(port, "/metrics")?;
        (metrics.contains("ump_events_processed_total{result=\"counted\"} 1")
            && metrics.contains("ump_events_processed_total{result=\"repeated\"} 1"))
        .then_some(metrics)
    })
    .await;
    for family in [
        "ump_event_batch_seconds_bucket",
        "ump_segment_membership_changes_total",
        "ump_event_backlog",
        "ump_event_batch_failures_total 0",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }

    // SIGTERM: the batch in hand is committed and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &processor.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = eventually("ump-events exits", Duration::from_secs(20), || {
        processor.0.try_wait().ok().flatten()
    })
    .await;
    assert!(exit.success(), "exit status {exit:?}");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("Kafka: admin client");
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    db.drop_database().await;
}

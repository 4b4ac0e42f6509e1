//! The realtime path end to end on the real ActiveMQ, Kafka, Redis and MariaDB: `"priority":
//! "realtime"` sends go through the channel's AMQP queue (not Kafka), are each sent once and
//! recorded; retries are redelivered by the broker and dead-lettered after the policy's attempts;
//! a kill -9 of the worker loses nothing; what the realtime consumers park goes out when it falls
//! due; and a Kafka backlog of 100,000 bulk messages does not hold realtime messages back.
//!
//! The tests take turns (one stack at a time): they share two cores, and the last one is about
//! what a busy worker does, not about what four stacks at once do.

mod stack;

use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value as Json, json};
use stack::{QueueReader, Stack, StackOptions, statuses};
use std::collections::HashMap;
use std::time::Duration;
use ump_core::model::{Content, Envelope, MessageId, Priority};
use ump_core::testing::metric_value;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `sms` (sandbox), `flaky` (its first two attempts fail), `broken` (every attempt fails),
/// `standby` (failover from a primary that always fails to a secondary after two failures), all
/// with realtime delivery on; three attempts with short backoffs.
const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: otp, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 3, initialBackoff: 100ms, maxBackoff: 400ms}
  # A one-time password is not deduplicated by content (a "send the code again" must go out):
  # each message claims its own key.
  dedupe: {key: IdempotencyKey}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: otp
  topic: {partitions: 4}
  realtime: {enabled: true}
  providers: [{name: sandbox, type: sandbox}]
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: flaky, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: otp
  topic: {partitions: 1}
  realtime: {enabled: true}
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "2"}}]
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: broken, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: otp
  topic: {partitions: 1}
  realtime: {enabled: true}
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "100"}}]
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: standby, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: otp
  topic: {partitions: 1}
  realtime: {enabled: true}
  providers:
    - name: primary
      type: sandbox
      settings: {failAttempts: "100", circuitFailureThreshold: "2", circuitCoolDown: "10m"}
    - {name: secondary, type: sandbox}
"#;

/// Sends `count` realtime messages on `channel` in batches of 100, four requests at a time;
/// returns the accepted ids in order.
async fn send_realtime(
    stack: &Stack,
    channel: &str,
    count: usize,
    body: impl Fn(usize) -> String,
) -> Vec<String> {
    let requests: Vec<Json> = (0..count)
        .step_by(100)
        .map(|start| {
            let messages: Vec<Json> = (start..(start + 100).min(count))
                .map(|i| {
                    json!({"channel": channel, "to": format!("+8210{:08}", i % 5000),
                           "body": body(i), "priority": "realtime"})
                })
                .collect();
            json!({ "messages": messages })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for group in requests.chunks(4) {
        let answers = futures::future::join_all(
            group
                .iter()
                .map(|request| stack.post("/v1/messages/batch", request)),
        )
        .await;
        for (status, answer) in answers {
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
    }
    ids
}

/// How many messages the channel's queue still hands out: attached as a consumer, what arrives
/// within two seconds (each released again on close).
async fn left_on_the_broker(stack: &Stack, channel: &str) -> usize {
    let queue = format!("ump.realtime.{}.{channel}", stack.namespace);
    let mut reader = QueueReader::attach(
        stack.amqp.as_deref().expect("amqp"),
        "realtime-test-leftovers",
        &queue,
    )
    .await;
    let mut left = 0;
    while let Ok(delivery) = tokio::time::timeout(
        Duration::from_secs(2),
        reader.receiver.recv::<Body<Value>>(),
    )
    .await
    {
        let delivery = delivery.expect("receive");
        reader.receiver.release(&delivery).await.expect("release");
        left += 1;
    }
    reader.close().await;
    left
}

fn count(counts: &HashMap<String, i64>, status: &str) -> i64 {
    counts.get(status).copied().unwrap_or(0)
}

async fn count_where(stack: &Stack, condition: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM messages WHERE {condition}"
    )))
    .fetch_one(&stack.db.pool)
    .await
    .expect("count messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_realtime_messages_are_each_sent_once_and_recorded() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(CHANNELS).await;
    let ids = send_realtime(&stack, "sms", 2000, |i| format!("[UMP] 인증번호 {i:06}")).await;
    assert_eq!(ids.len(), 2000);
    stack
        .wait_for(
            "2000 realtime messages sent",
            Duration::from_secs(120),
            |c| count(c, "sent") >= 2000,
        )
        .await;

    let outbox = stack.outbox();
    for id in &ids {
        assert_eq!(
            outbox.get(id),
            Some(&1),
            "message {id} sent {:?} times",
            outbox.get(id)
        );
    }
    assert_eq!(outbox.len(), 2000, "the sandbox saw other messages too");
    // Accepted by the broker, a message comes back only with a lost connection, at once: its own
    // dedupe key is kept for that, not for a day.
    stack
        .wait_sent_keys_within(
            &ids,
            ump_worker::realtime::ACCEPTED_MEMORY,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        count_where(&stack, "priority = 'realtime' AND status = 'sent'").await,
        2000
    );
    assert_eq!(stack.enqueued(), 0, "realtime messages went through Kafka");
    // Each was accepted on the broker (many in one disposition), not merely sent: stopped, the
    // worker leaves nothing for the broker to hand to the next consumer.
    stack.stop_worker();
    assert_eq!(left_on_the_broker(&stack, "sms").await, 0);

    let (status, view) = stack.get(&format!("/v1/messages/{}", ids[0])).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["priority"], "realtime");
    assert_eq!(statuses(&view), ["accepted", "sent"], "{view}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_redelivered_by_the_broker_and_dead_lettered_after_max_attempts() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(CHANNELS).await;
    let flaky = send_realtime(&stack, "flaky", 5, |i| format!("flaky {i}")).await;
    let broken = send_realtime(&stack, "broken", 5, |i| format!("broken {i}")).await;
    let standby = send_realtime(&stack, "standby", 1, |i| format!("standby {i}")).await;
    stack
        .wait_for("retried and dead-lettered", Duration::from_secs(60), |c| {
            count(c, "sent") == 6 && count(c, "dead_lettered") == 5
        })
        .await;

    // Failover on the realtime path: two failures open the primary's circuit, the third
    // attempt goes to the secondary, and `/metrics` shows the circuit of each path apart.
    let (_, view) = stack.get(&format!("/v1/messages/{}", standby[0])).await;
    assert_eq!(
        (&view["status"], &view["provider"], &view["attempts"]),
        (&json!("sent"), &json!("secondary"), &json!(3)),
        "{view}"
    );
    let metrics = stack.worker_metrics().await;
    let open = |provider: &str, path: &str| {
        metric_value(
            &metrics,
            "ump_provider_circuit_open",
            &[
                ("channel", "standby"),
                ("provider", provider),
                ("path", path),
            ],
        )
    };
    assert_eq!(open("primary", "realtime"), Some(1.0), "{metrics}");
    assert_eq!(open("secondary", "realtime"), Some(0.0), "{metrics}");
    assert_eq!(open("primary", "bulk"), Some(0.0), "{metrics}");

    // Third time lucky: two failed deliveries, each redelivered by the broker after a backoff.
    let outbox = std::fs::read_to_string(&stack.outbox).expect("outbox");
    for id in &flaky {
        let lines: Vec<Json> = outbox
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).expect("JSON line"))
            .filter(|l| l["id"] == id.as_str())
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        assert_eq!(lines[0]["attempt"], 3, "{id}: {lines:?}");
        let (_, view) = stack.get(&format!("/v1/messages/{id}")).await;
        assert_eq!(view["status"], "sent", "{view}");
        assert_eq!(view["attempts"], 3, "{view}");
        let scheduled = view["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["status"] == "scheduled")
            .count();
        assert_eq!(scheduled, 2, "{view}");
    }
    for id in &broken {
        let (_, view) = stack.get(&format!("/v1/messages/{id}")).await;
        assert_eq!(view["status"], "dead_lettered", "{view}");
        assert_eq!(view["attempts"], 3, "{view}");
    }

    // The broker moved the dead letters to its dead-letter queue, envelopes intact.
    let dead_letters = format!("DLQ.ump.realtime.{}.broken", stack.namespace);
    let mut reader = QueueReader::attach(
        stack.amqp.as_deref().expect("amqp"),
        "realtime-test-dlq",
        &dead_letters,
    )
    .await;
    let mut found = Vec::new();
    for _ in 0..broken.len() {
        let envelope = reader
            .take(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{dead_letters}: only {} dead letters", found.len()));
        found.push(envelope.id.to_string());
    }
    found.sort();
    let mut expected = broken.clone();
    expected.sort();
    assert_eq!(found, expected);
    reader.close().await;
    stack.finish().await;
}

/// What the realtime consumers park (here a `send_at` ten seconds ahead) the worker's scheduler
/// publishes when it falls due, not at its next poll: with the poll an hour away, the message is
/// still sent within the test's minute, and its republication is counted in
/// `ump_parked_publish_delay_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_parking_is_published_when_it_falls_due_without_polling() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start_opts(
        CHANNELS,
        StackOptions {
            worker_env: vec![("UMP_WORKER_SCHEDULER_POLL", "1h".to_owned())],
            ..StackOptions::default()
        },
    )
    .await;
    // Ten seconds: room for the worker just started to attach before it falls due.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
    let (status, answer) = stack
        .post(
            "/v1/messages",
            &json!({"channel": "sms", "to": "+821012340099", "body": "[UMP] 예약 발송",
                    "priority": "realtime", "send_at": later}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // Sent within the wait's minute although the scheduler's poll is an hour away.
    let view = stack
        .wait_status(answer["id"].as_str().expect("id"), "sent")
        .await;
    assert_eq!(statuses(&view), ["accepted", "scheduled", "sent"], "{view}");
    let metrics = stack.worker_metrics().await;
    let published: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ump_parked_publish_delay_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no publish delay count in\n{metrics}"));
    assert_eq!(published, 1.0, "{metrics}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_worker_mid_run_loses_nothing() {
    const MESSAGES: usize = 5000;
    const KILLS: usize = 2;
    const CREDIT: usize = 256; // UMP_REALTIME_CREDIT default: unsettled messages per worker
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(CHANNELS).await;
    // Stop the worker so the queue fills first: the kills then land mid-run, not after it.
    stack.stop_worker();
    let ids = send_realtime(&stack, "sms", MESSAGES, |i| format!("OTP {i:06}")).await;
    stack.start_worker();
    for kill in 0..KILLS {
        let before = count(&stack.status_counts().await, "sent");
        let target = (before + 1000).min(MESSAGES as i64 - 1000);
        stack
            .wait_for("progress before a kill", Duration::from_secs(120), |c| {
                count(c, "sent") >= target
            })
            .await;
        tokio::time::sleep(Duration::from_millis(
            (uuid::Uuid::new_v4().as_u128() % 200) as u64,
        ))
        .await;
        stack.kill_worker();
        eprintln!(
            "kill {kill}: {} sent when killed",
            count(&stack.status_counts().await, "sent")
        );
        stack.start_worker();
    }
    stack
        .wait_for("every message sent", Duration::from_secs(180), |c| {
            count(c, "sent") == MESSAGES as i64
        })
        .await;
    stack.record_kill_run(
        &ids,
        "worker-kill-realtime",
        format!(
            "kill -9 of the worker {KILLS} times during a {MESSAGES}-message realtime (ActiveMQ) run"
        ),
        KILLS * CREDIT,
        "whose outcome was not yet recorded (at most the link credit a kill)",
    );
    stack.finish().await;
}

/// Bulk envelopes of `stack`'s `sms` channel, straight onto its topic.
fn flood_kafka(stack: &Stack, count: usize) {
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("Kafka: producer");
    let topic = format!("ump.{}.sms", stack.namespace);
    let now = chrono::Utc::now();
    for i in 0..count {
        let envelope = Envelope {
            id: MessageId::new(),
            tenant: stack.tenant.clone(),
            channel: "sms".into(),
            to: format!("+8211{:08}", i % 20_000),
            content: Content {
                body: Some(format!("[UMP] 주문 {i} 배송이 시작되었습니다")),
                ..Default::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: vec![],
            metadata: Default::default(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: now,
            attempts: 0,
            fallback: None,
        };
        let payload = serde_json::to_vec(&envelope).expect("envelope JSON");
        let mut record = BaseRecord::to(&topic).key(&envelope.to).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "Kafka: produce: {e}"
                    );
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("Kafka: flush the flood");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_messages_overtake_a_kafka_backlog_of_100k_bulk_messages() {
    const BULK: i64 = 100_000;
    const REALTIME: usize = 100;
    let _turn = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(CHANNELS).await;
    let flood = std::time::Instant::now();
    tokio::task::block_in_place(|| flood_kafka(&stack, BULK as usize));
    eprintln!(
        "flood: {BULK} bulk messages in Kafka after {:?}",
        flood.elapsed()
    );
    stack
        .wait_for("the bulk backlog under way", Duration::from_secs(60), |c| {
            count(c, "sent") >= 1000
        })
        .await;

    // One OTP at a time, as a login page would send them, while the worker chews the backlog.
    let mut ids = Vec::with_capacity(REALTIME);
    for i in 0..REALTIME {
        let (status, answer) = stack
            .post(
                "/v1/messages",
                &json!({"channel": "sms", "to": format!("+8210{i:08}"),
                        "body": format!("[UMP] 인증번호 {i:06}"), "priority": "realtime"}),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["id"].as_str().expect("id").to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count_where(&stack, "priority = 'realtime' AND status = 'sent'").await < REALTIME as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "realtime messages not sent within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bulk_sent = count_where(&stack, "priority = 'bulk' AND status = 'sent'").await;
    eprintln!("all {REALTIME} realtime messages sent with {bulk_sent} of {BULK} bulk sent");

    // Accept → provider call of each realtime message (for the record: the benchmark script
    // measures latency on a release build).
    let accepted: HashMap<String, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as::<_, (Vec<u8>, chrono::NaiveDateTime)>(
            "SELECT id, created_at FROM messages WHERE priority = 'realtime'",
        )
        .fetch_all(&stack.db.pool)
        .await
        .expect("realtime rows")
        .into_iter()
        .map(|(id, at)| {
            (
                uuid::Uuid::from_slice(&id).expect("id").to_string(),
                at.and_utc(),
            )
        })
        .collect();
    let text = std::fs::read_to_string(&stack.outbox).expect("outbox");
    let mut latencies_ms: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let line: Json = serde_json::from_str(line).ok()?;
            let at = accepted.get(line["id"].as_str()?)?;
            let sent: chrono::DateTime<chrono::Utc> = line["at"].as_str()?.parse().ok()?;
            Some((sent - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    assert_eq!(latencies_ms.len(), REALTIME);
    eprintln!(
        "realtime accept → provider call under a bulk backlog (debug build): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.99),
        latencies_ms[latencies_ms.len() - 1]
    );

    // Not starved: every realtime message went out while most of the backlog was still waiting.
    assert!(
        bulk_sent < BULK * 9 / 10,
        "the realtime messages were sent only after {bulk_sent} of {BULK} bulk messages"
    );
    let outbox = stack.outbox();
    assert!(ids.iter().all(|id| outbox.get(id) == Some(&1)));
    let topic = format!("ump.{}.sms", stack.namespace);
    let kafka = stack.kafka.clone();
    stack.finish().await;
    stack::delete_topics(&kafka, &[topic]).await;
}

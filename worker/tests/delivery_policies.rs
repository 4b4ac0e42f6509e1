//! DeliveryPolicy end to end on the real stack: send_at, quiet hours, retries with backoff, dead
//! letters, permanent failures, message TTL and the shared rate limit.

mod stack;

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{Value, json};
use stack::{Stack, StackOptions, statuses};
use std::time::Duration;

const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: flaky, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 4, initialBackoff: 200ms, maxBackoff: 1s}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 2}
  policyRef: flaky
  providers:
    - name: sandbox
      type: sandbox
      settings: {failAttempts: "2", rejectTo: "+821000000000"}
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: hopeless, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 3, initialBackoff: 100ms, maxBackoff: 200ms}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: down, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 1}
  policyRef: hopeless
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "99"}}]
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: short-lived, namespace: NAMESPACE}
spec:
  messageTtl: 1s
  retry: {maxAttempts: 10, initialBackoff: 2s, maxBackoff: 2s}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: otp, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 1}
  policyRef: short-lived
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "99"}}]
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: night, namespace: NAMESPACE}
spec:
  quietHours: {start: "QUIET_START", end: "QUIET_END", timezone: Asia/Seoul}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: marketing, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 1}
  policyRef: night
  providers: [{name: sandbox, type: sandbox}]
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: slow, namespace: NAMESPACE}
spec:
  rateLimit: {perSecond: 20, burst: 1}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: limited, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 2}
  policyRef: slow
  providers: [{name: sandbox, type: sandbox}]
"#;

/// The channels, with a quiet window around now in Seoul (so `marketing` messages wait).
fn channels() -> String {
    let seoul = Utc::now() + ChronoDuration::hours(9);
    CHANNELS
        .replace(
            "QUIET_START",
            &(seoul - ChronoDuration::hours(1))
                .format("%H:%M")
                .to_string(),
        )
        .replace(
            "QUIET_END",
            &(seoul + ChronoDuration::hours(1))
                .format("%H:%M")
                .to_string(),
        )
}

async fn send(stack: &Stack, channel: &str, to: &str, extra: Value) -> Value {
    let mut body = json!({"channel": channel, "to": to, "body": format!("{channel} 테스트")});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, answer) = stack.post("/v1/messages", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].clone()
}

async fn message(stack: &Stack, id: &Value) -> Value {
    stack
        .get(&format!("/v1/messages/{}", id.as_str().expect("id")))
        .await
        .1
}

async fn wait_status(stack: &Stack, id: &Value, status: &str) -> Value {
    stack.wait_status(id.as_str().expect("id"), status).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_shape_delivery() {
    let stack = Stack::start(&channels()).await;
    // Retryable failures twice, then sent on the third attempt.
    let retried = send(&stack, "sms", "+821012340001", json!({})).await;
    // Rejected by the provider: failed at once, no retry.
    let rejected = send(&stack, "sms", "+821000000000", json!({})).await;
    // Never succeeds: dead-lettered after maxAttempts (3).
    let hopeless = send(&stack, "down", "+821012340002", json!({})).await;
    // Fails, waits 2 s to retry, but its TTL is 1 s: failed as expired.
    let expiring = send(&stack, "otp", "+821012340003", json!({})).await;
    // send_at 10 s ahead: scheduled, then sent. (The worker process has just been started: a
    // send_at it consumes after the time has come is not parked, so leave it room to start.)
    let later = (Utc::now() + ChronoDuration::seconds(10)).to_rfc3339();
    let scheduled = send(&stack, "sms", "+821012340004", json!({"send_at": later})).await;
    // Quiet hours: waits until the window ends (an hour from now).
    let quiet = send(&stack, "marketing", "+821012340005", json!({})).await;

    let m = wait_status(&stack, &retried, "sent").await;
    assert_eq!(m["attempts"], 3, "{m}");
    assert_eq!(
        statuses(&m),
        ["accepted", "scheduled", "scheduled", "sent"],
        "{m}"
    );

    let m = wait_status(&stack, &rejected, "failed").await;
    assert_eq!(
        m["attempts"], 3,
        "two simulated retryable failures, then the rejection: {m}"
    );
    assert!(
        m["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["detail"].as_str())
            .unwrap_or_default()
            .contains("rejected")
    );

    let m = wait_status(&stack, &hopeless, "dead_lettered").await;
    assert_eq!(m["attempts"], 3, "{m}");
    let m = wait_status(&stack, &expiring, "failed").await;
    let detail = m["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.starts_with("expired"), "{m}");

    let m = message(&stack, &scheduled).await;
    assert!(m["status"] == "scheduled" || m["status"] == "sent", "{m}");
    let m = wait_status(&stack, &scheduled, "sent").await;
    // Scheduled for send_at, then the channel's two simulated failures, then sent.
    assert_eq!(
        statuses(&m),
        ["accepted", "scheduled", "scheduled", "scheduled", "sent"],
        "{m}"
    );
    assert!(
        m["events"][1]["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("send_at"),
        "{m}"
    );

    let m = wait_status(&stack, &quiet, "scheduled").await;
    assert!(
        m["events"][1]["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("quiet hours until"),
        "{m}"
    );

    // Nothing that failed or waits reached the provider; the dead letter is in its topic.
    let outbox = stack.outbox();
    for id in [&rejected, &hopeless, &expiring, &quiet] {
        assert!(
            !outbox.contains_key(id.as_str().expect("id")),
            "{id} must not be sent"
        );
    }
    assert_eq!(outbox.get(retried.as_str().expect("id")), Some(&1));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_sends() {
    let stack = Stack::start(&channels()).await;
    let messages: Vec<Value> = (0..21)
        .map(|i| json!({"channel": "limited", "to": format!("+82101111{i:04}"), "body": "천천히"}))
        .collect();
    let (status, _) = stack
        .post("/v1/messages/batch", &json!({"messages": messages}))
        .await;
    assert_eq!(status, 202);
    stack
        .wait_for("21 sent", Duration::from_secs(60), |c| {
            c.get("sent") == Some(&21)
        })
        .await;

    // 20 per second with no burst: 21 sends span one second of provider time (without the limit,
    // a few milliseconds); 800 ms leaves room for when each call is stamped.
    let text = std::fs::read_to_string(&stack.outbox).expect("outbox");
    let mut times: Vec<chrono::DateTime<Utc>> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["at"]
                .as_str()
                .expect("at")
                .parse()
                .expect("time")
        })
        .collect();
    times.sort();
    let spread = *times.last().expect("last") - times[0];
    assert!(
        spread >= ChronoDuration::milliseconds(800),
        "21 sends at 20/s took only {spread}"
    );
    stack.finish().await;
}

/// A worker's scheduler publishes what the worker itself parked when it falls due, not at its
/// next poll: with the poll an hour away, a message retried twice (200 and 400 ms of backoff) and
/// one scheduled ten seconds ahead (then retried twice) are still sent within the test's minute,
/// and each republication is counted in `ump_parked_publish_delay_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_publishes_its_own_parkings_when_they_fall_due_without_polling() {
    let stack = Stack::start_opts(
        &channels(),
        StackOptions {
            worker_env: vec![("UMP_WORKER_SCHEDULER_POLL", "1h".to_owned())],
            ..StackOptions::default()
        },
    )
    .await;
    let retried = send(&stack, "sms", "+821012340011", json!({})).await;
    // Ten seconds: room for the worker just started to consume it before it falls due.
    let later = (Utc::now() + ChronoDuration::seconds(10)).to_rfc3339();
    let scheduled = send(&stack, "sms", "+821012340012", json!({"send_at": later})).await;

    let m = wait_status(&stack, &retried, "sent").await;
    assert_eq!(m["attempts"], 3, "{m}");
    let m = wait_status(&stack, &scheduled, "sent").await;
    assert_eq!(
        statuses(&m),
        ["accepted", "scheduled", "scheduled", "scheduled", "sent"],
        "{m}"
    );

    // Two parkings of the first message, three of the second: each published once.
    let metrics = stack.worker_metrics().await;
    let published: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ump_parked_publish_delay_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no publish delay count in\n{metrics}"));
    assert_eq!(published, 5.0, "{metrics}");
    stack.finish().await;
}

//! Webhooks end to end in the cluster mode, on the real Kafka, Redis and MariaDB: the API creates
//! an endpoint, messages flow through the worker, and the worker's dispatcher delivers every
//! status event to a flaky receiver (refusing, then 500, then timing out), through a kill -9 of
//! the worker halfway. Every event of every message arrives at least once, under as many
//! distinct `webhook-id`s as events were produced, each signature verified by the
//! `standardwebhooks` package.
//!
//! `UMP_WEBHOOK_E2E_MESSAGES` sets the number of messages (default 10,000: 20,000 events, about 30 s);
//! `scripts/bench-webhooks` runs it with more.

mod stack;
mod webhook_receiver;

use serde_json::{Value, json};
use stack::{DEFAULT_CHANNELS, Stack, StackOptions};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use webhook_receiver::{Plan, Receiver, verify};

/// The dispatcher's settings for tests: the receiver is on 127.0.0.1 over http, answers are
/// awaited 1 s, retries come quickly.
pub fn test_dispatcher() -> Vec<(&'static str, String)> {
    [
        ("UMP_WEBHOOKS_ALLOW_HTTP", "true"),
        ("UMP_WEBHOOKS_ALLOW_LOOPBACK", "true"),
        ("UMP_WEBHOOKS_TIMEOUT", "1s"),
        ("UMP_WEBHOOKS_CONNECT_TIMEOUT", "1s"),
        ("UMP_WEBHOOKS_RETRY_FIRST", "200ms"),
        ("UMP_WEBHOOKS_RETRY_MAX", "2s"),
        ("UMP_WEBHOOKS_LEASE", "5s"),
        ("UMP_WEBHOOKS_POLL", "50ms"),
        ("UMP_WEBHOOKS_IN_FLIGHT", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The endpoint's delivery log through the API, every page: how many deliveries are in each
/// state, each event counted once.
async fn outbox_states(stack: &Stack, endpoint: &str) -> HashMap<String, i64> {
    let mut states: HashMap<String, i64> = HashMap::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/webhooks/{endpoint}/deliveries?limit=1000&before={b}"),
            None => format!("/v1/webhooks/{endpoint}/deliveries?limit=1000"),
        };
        let (status, page) = stack.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for d in page["items"].as_array().expect("items") {
            let id = d["id"].as_str().expect("id").to_owned();
            assert!(ids.insert(id.clone()), "{id} twice in the log");
            *states
                .entry(d["state"].as_str().expect("state").to_owned())
                .or_default() += 1;
        }
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return states,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_a_flaky_receiver_and_a_killed_dispatcher() {
    let count: usize = std::env::var("UMP_WEBHOOK_E2E_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let started = Instant::now();
    let mut stack = Stack::start_opts(
        DEFAULT_CHANNELS,
        StackOptions {
            worker_env: test_dispatcher(),
            ..StackOptions::default()
        },
    )
    .await;
    let mut receiver = Receiver::new(Plan {
        refuse_for: Duration::from_secs(2),
        fail_until: Duration::from_secs(4),
        hang_until: Duration::from_secs(6),
        hang_every: 7,
        hang: Duration::from_millis(1500),
    });
    let (status, created) = stack
        .post(
            "/v1/webhooks",
            &json!({"url": receiver.url, "description": "e2e",
                    "event_types": ["message.accepted", "message.sent", "message.failed",
                                    "message.dead_lettered", "message.duplicate"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let endpoint = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let (_, listed) = stack.get("/v1/webhooks").await;
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown once"
    );
    receiver.start();

    let ids = stack.send_many(count, |i| format!("webhook e2e {i}")).await;
    let sent_at = started.elapsed();
    // Halfway through the events, the worker (consumer and dispatcher) dies without warning.
    receiver
        .wait_for("half of the events", Duration::from_secs(90), |n| {
            n >= count
        })
        .await;
    stack.kill_worker();
    let killed_with = receiver.distinct().len();
    stack.start_worker();

    let expected = 2 * count;
    stack
        .wait_for("every message sent", Duration::from_secs(90), |c| {
            c.get("sent").copied().unwrap_or(0) == count as i64
        })
        .await;
    receiver
        .wait_for("every event", Duration::from_secs(90), |n| n >= expected)
        .await;
    // Settled too (the dispatcher records after the answer).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = outbox_states(&stack, &endpoint).await;
        if states.get("delivered").copied() == Some(expected as i64) && states.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "outbox not settled: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();

    // Events produced: exactly one per (message, status change) in the log, however often a
    // batch was recorded (checked above); received: each of them, under its own id, at least
    // once.
    let received = receiver.received();
    let distinct = receiver.distinct();
    assert_eq!(distinct.len(), expected, "distinct webhook-ids");
    let mut per_message: HashMap<String, HashSet<String>> = HashMap::new();
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    for r in &received {
        // A retried event is the same bytes under the same id.
        if let Some(earlier) = bodies.insert(&r.id, &r.body) {
            assert_eq!(earlier, r.body, "{} changed between attempts", r.id);
        }
        let body: Value = serde_json::from_str(&r.body).expect("JSON body");
        let to = body["data"]["to"].as_str().expect("to");
        assert!(to.contains("****"), "masked recipient: {to}");
        per_message
            .entry(body["data"]["id"].as_str().expect("id").to_owned())
            .or_default()
            .insert(body["type"].as_str().expect("type").to_owned());
    }
    for id in &ids {
        let types = per_message.get(id).cloned().unwrap_or_default();
        assert_eq!(
            types,
            HashSet::from(["message.accepted".to_owned(), "message.sent".to_owned()]),
            "events of {id}"
        );
    }
    let verified = verify(&received, &[&secret]);

    // The delivery log shows it all through the API.
    let (status, log) = stack
        .get(&format!("/v1/webhooks/{endpoint}/deliveries?limit=1000"))
        .await;
    assert_eq!(status, 200, "{log}");
    let items = log["items"].as_array().expect("items");
    assert_eq!(items.len(), 1000);
    assert!(items.iter().all(|d| d["state"] == "delivered"));
    assert!(log["next"].is_string());
    let retried = items
        .iter()
        .filter(|d| d["attempts"].as_u64() > Some(1))
        .count();

    eprintln!(
        "webhooks e2e: {count} messages ({sent_at:.1?} to accept), {expected} events delivered \
         in {elapsed:.1?}; {} requests ({} duplicates), refused {:?}, {verified} signatures \
         verified; worker killed after {killed_with} events; {retried} of the newest 1000 retried",
        receiver.requests(),
        received.len() - distinct.len(),
        receiver.refused(),
    );
    let refused = receiver.refused();
    assert!(
        refused.contains_key(&500) && refused.contains_key(&0),
        "the receiver's 500 and time-out phases were exercised: {refused:?}"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_410_disables_its_endpoint_and_others_go_on() {
    let stack = Stack::start_opts(
        DEFAULT_CHANNELS,
        StackOptions {
            worker_env: test_dispatcher(),
            ..StackOptions::default()
        },
    )
    .await;
    let mut healthy = Receiver::new(Plan::reliable());
    let mut leaving = Receiver::new(Plan::reliable());
    healthy.start();
    leaving.start();
    leaving.gone();
    let mut endpoints = Vec::new();
    for receiver in [&healthy, &leaving] {
        let (status, created) = stack
            .post(
                "/v1/webhooks",
                &json!({"url": receiver.url, "event_types": ["message.sent"], "channels": ["sms"]}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        endpoints.push(created["id"].as_str().expect("id").to_owned());
    }
    stack.send_many(50, |i| format!("gone {i}")).await;
    healthy
        .wait_for("every sent event", Duration::from_secs(60), |n| n >= 50)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, gone) = stack.get(&format!("/v1/webhooks/{}", endpoints[1])).await;
        if gone["enabled"] == false {
            assert!(
                gone["disabled_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("410")),
                "{gone}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {gone}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leaving.received().is_empty());
    let (_, healthy_view) = stack.get(&format!("/v1/webhooks/{}", endpoints[0])).await;
    assert_eq!(healthy_view["enabled"], true, "{healthy_view}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_delays_neither_other_endpoints_nor_delivery() {
    let count = 300;
    let stack = Stack::start_opts(
        DEFAULT_CHANNELS,
        StackOptions {
            worker_env: test_dispatcher(),
            ..StackOptions::default()
        },
    )
    .await;
    let mut healthy = Receiver::new(Plan::reliable());
    // Every request waits 30 s: far past the dispatcher's 1 s timeout.
    let mut slow = Receiver::new(Plan {
        refuse_for: Duration::ZERO,
        fail_until: Duration::ZERO,
        hang_until: Duration::from_secs(3600),
        hang_every: 1,
        hang: Duration::from_secs(30),
    });
    healthy.start();
    slow.start();
    let mut endpoints = Vec::new();
    for receiver in [&slow, &healthy] {
        let (status, created) = stack
            .post(
                "/v1/webhooks",
                &json!({"url": receiver.url, "event_types": ["message.accepted", "message.sent"]}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        endpoints.push(created["id"].as_str().expect("id").to_owned());
    }
    let started = Instant::now();
    stack.send_many(count, |i| format!("slow {i}")).await;
    stack
        .wait_for("every message sent", Duration::from_secs(60), |c| {
            c.get("sent").copied().unwrap_or(0) == count as i64
        })
        .await;
    let sent_in = started.elapsed();
    healthy
        .wait_for(
            "every event at the healthy endpoint",
            Duration::from_secs(30),
            |n| n >= 2 * count,
        )
        .await;
    let healthy_in = started.elapsed();
    // The slow endpoint got its requests (and let each time out); none went through.
    assert!(slow.requests() > 0);
    assert!(slow.received().is_empty());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, log) = stack
            .get(&format!(
                "/v1/webhooks/{}/deliveries?limit=1000",
                endpoints[0]
            ))
            .await;
        let items = log["items"].as_array().expect("items");
        assert!(items.iter().all(|d| d["state"] == "pending"), "{log}");
        if items.iter().any(|d| {
            d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no timed-out attempt logged: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "slow endpoint: {count} messages sent in {sent_in:.1?}, the healthy endpoint's {} events \
         in {healthy_in:.1?}; {} requests to the slow one",
        2 * count,
        slow.requests()
    );
    assert!(
        healthy_in < Duration::from_secs(30),
        "the healthy endpoint waited on the slow one: {healthy_in:?}"
    );
    stack.finish().await;
}

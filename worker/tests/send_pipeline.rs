//! The bulk path end to end on the real Kafka, Redis and MariaDB: API → Kafka → worker → Redis
//! dedupe → sandbox provider → MySQL history.

mod stack;

use serde_json::json;
use stack::{DEFAULT_CHANNELS, OWN_KEY_CHANNELS, Stack, StackOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_are_each_sent_once_and_recorded() {
    let stack = Stack::start(DEFAULT_CHANNELS).await;
    let ids = stack.send_many(10_000, |i| format!("메시지 {i}")).await;
    assert_eq!(ids.len(), 10_000);

    stack
        .wait_for("10,000 sent", Duration::from_secs(240), |c| {
            c.get("sent").copied().unwrap_or(0) == 10_000
        })
        .await;
    let outbox = stack.outbox();
    assert_eq!(outbox.len(), 10_000, "every message reached the provider");
    assert!(
        outbox.values().all(|&n| n == 1),
        "no message reached the provider twice"
    );
    assert!(
        ids.iter().all(|id| outbox.contains_key(id)),
        "the accepted ids are the sent ids"
    );

    // One of them, through the API: status, provider and its timeline.
    let (status, message) = stack.get(&format!("/v1/messages/{}", ids[1234])).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["status"], "sent");
    assert_eq!(message["provider"], "sandbox");
    assert_eq!(message["attempts"], 1);
    let events: Vec<&str> = message["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(events, ["accepted", "sent"]);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipients_messages_leave_in_order_while_batches_overlap() {
    // Small batches, three delivered at once, a provider taking 3 ms a call, and 10 recipients
    // with 5 messages each per batch: a recipient's lane of one batch is still sending when the
    // next batch's lane for them is admitted, and must wait for it.
    let channels = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 2}
  providers: [{name: sandbox, type: sandbox, settings: {latency: 3ms}}]
"#;
    let stack = Stack::start_opts(
        channels,
        StackOptions {
            worker_env: vec![
                ("UMP_WORKER_BATCH", "50".to_owned()),
                ("UMP_WORKER_BATCH_WAIT", "5ms".to_owned()),
                ("UMP_WORKER_BATCHES_IN_FLIGHT", "3".to_owned()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    const RECIPIENTS: usize = 10;
    const MESSAGES: usize = 1500;
    for start in (0..MESSAGES).step_by(500) {
        let messages: Vec<_> = (start..start + 500)
            .map(|i| json!({"channel": "sms", "to": format!("+821055{:06}", i % RECIPIENTS), "body": format!("n {i}")}))
            .collect();
        let (status, answer) = stack
            .post("/v1/messages/batch", &json!({"messages": messages}))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    stack
        .wait_for("all sent", Duration::from_secs(180), |c| {
            c.get("sent").copied().unwrap_or(0) == MESSAGES as i64
        })
        .await;

    let text = std::fs::read_to_string(&stack.outbox).expect("outbox");
    let mut order: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for line in ump_core::testing::complete_lines(&text) {
        let call: serde_json::Value = serde_json::from_str(line).expect("outbox line");
        let n = call["text"].as_str().expect("text")["n ".len()..]
            .parse()
            .expect("sequence");
        order
            .entry(call["to"].as_str().expect("to").to_owned())
            .or_default()
            .push(n);
    }
    assert_eq!(order.len(), RECIPIENTS);
    for (to, sent) in &order {
        let expected: Vec<usize> = (0..MESSAGES).filter(|i| sent.contains(i)).collect();
        assert_eq!(sent.len(), MESSAGES / RECIPIENTS, "{to}: each message once");
        assert_eq!(
            sent, &expected,
            "{to}: the provider got them in accepted order"
        );
    }
    let metrics = stack.worker_metrics().await;
    let batches = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ump_worker_batch_size_count"))
        .and_then(|v| v.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(
        batches >= 10.0,
        "small batches ({batches}), so that they overlap"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_messages_own_key_is_deleted_once_its_batch_is_committed() {
    let stack = Stack::start(OWN_KEY_CHANNELS).await;
    // Each message claims its own key (`ump:sent:<id>`) before the provider call: the same
    // bodies are not duplicates under this policy.
    let ids = stack
        .send_many(2000, |i| format!("same body {}", i % 10))
        .await;
    stack
        .wait_for("2000 sent", Duration::from_secs(120), |c| {
            c.get("sent").copied().unwrap_or(0) == 2000
        })
        .await;
    assert_eq!(stack.outbox().len(), 2000, "every message sent");
    // A committed batch is never consumed again: its keys go rather than live for a day.
    stack
        .wait_sent_keys_within(&ids, Duration::ZERO, Duration::from_secs(30))
        .await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_conflicts_and_content_duplicates() {
    let channels = DEFAULT_CHANNELS.to_owned()
        + r#"
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: short-window, namespace: NAMESPACE}
spec:
  dedupe: {window: 3s}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: alerts, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: short-window
  topic: {partitions: 2}
  providers: [{name: sandbox, type: sandbox}]
"#;
    let stack = Stack::start(&channels).await;
    let body = json!({"channel": "sms", "to": "+821011112222", "body": "주문이 접수되었습니다"});

    // Same key, same body: same id, one send.
    let key = [("Idempotency-Key", "order-1001")];
    let (s1, first) = stack.post_with("/v1/messages", &body, &key).await;
    let (s2, second) = stack.post_with("/v1/messages", &body, &key).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], second["id"]);
    // Same key, another body: 422 naming the header.
    let other = json!({"channel": "sms", "to": "+821011112222", "body": "다른 내용"});
    let (s3, problem) = stack.post_with("/v1/messages", &other, &key).await;
    assert_eq!(s3, 422, "{problem}");
    assert_eq!(
        problem["type"],
        "https://ump.dev/problems/idempotency-key-reused"
    );

    // Same content without a key, inside the default 10 min window: the second is a duplicate.
    let dup = json!({"channel": "sms", "to": "+821033334444", "body": "같은 내용"});
    let (_, a) = stack.post("/v1/messages", &dup).await;
    let (_, b) = stack.post("/v1/messages", &dup).await;
    assert_ne!(a["id"], b["id"]);

    // Outside the window (3 s on `alerts`): both go out.
    let late = json!({"channel": "alerts", "to": "+821055556666", "body": "창 밖"});
    let (status, c) = stack.post("/v1/messages", &late).await;
    assert_eq!(status, 202, "{c}");
    stack
        .wait_for("the first alert", Duration::from_secs(60), |counts| {
            counts.get("sent").copied().unwrap_or(0) >= 3
        })
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, d) = stack.post("/v1/messages", &late).await;

    stack
        .wait_for(
            "4 sent and 1 duplicate",
            Duration::from_secs(60),
            |counts| {
                counts.get("sent").copied().unwrap_or(0) == 4
                    && counts.get("duplicate").copied().unwrap_or(0) == 1
            },
        )
        .await;
    let outbox = stack.outbox();
    for id in [&first["id"], &a["id"], &c["id"], &d["id"]] {
        assert_eq!(
            outbox.get(id.as_str().expect("id")),
            Some(&1),
            "{id} sent once"
        );
    }
    assert!(
        !outbox.contains_key(b["id"].as_str().expect("id")),
        "the duplicate was not sent"
    );
    let (_, duplicate) = stack
        .get(&format!("/v1/messages/{}", b["id"].as_str().expect("id")))
        .await;
    assert_eq!(duplicate["status"], "duplicate");
    let detail = duplicate["events"][1]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains(a["id"].as_str().expect("id")),
        "names the original: {detail}"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_naming_the_field_and_nothing_is_enqueued() {
    let stack = Stack::start(&format!(
        "{DEFAULT_CHANNELS}\n---\n{}",
        r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: email, namespace: NAMESPACE}
spec:
  type: email
  topic: {partitions: 1}
  providers: [{name: sandbox, type: sandbox}]
  templates:
    - {name: welcome, subject: "{{ name }}님 환영합니다", text: "안녕하세요 {{ name }}님"}
"#
    ))
    .await;
    let before = stack.enqueued();
    let url = format!("{}/v1/messages", stack.api);
    for ump_core::testing::BadInput {
        name,
        body,
        status,
        kind,
        field,
    } in ump_core::testing::bad_inputs()
    {
        let response = stack
            .http
            .post(&url)
            .bearer_auth(&stack.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{name}"
        );
        let problem: serde_json::Value = response.json().await.expect("problem JSON");
        assert_eq!(
            problem["type"],
            format!("https://ump.dev/problems/{kind}"),
            "{name}: {problem}"
        );
        assert_eq!(problem["status"], status, "{name}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{name}: {problem}");
        }
    }
    // Not JSON at all: 415.
    let response = stack
        .http
        .post(&url)
        .bearer_auth(&stack.key)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 415);
    // No key, a bad key: 401, before anything else is looked at.
    let response = stack
        .http
        .post(&url)
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401);
    let response = stack
        .http
        .post(&url)
        .bearer_auth("ump_nope_nope")
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401);
    // A batch mixing good and bad: per-item results in order, only the good one enqueued.
    let (status, answer) = stack
        .post(
            "/v1/messages/batch",
            &json!({"messages": [
                {"channel": "sms", "to": "+821012345678", "body": "좋아요"},
                {"channel": "sms", "to": "nope", "body": "x"},
            ]}),
        )
        .await;
    assert_eq!(status, 202);
    assert!(answer["results"][0]["id"].is_string());
    assert_eq!(answer["results"][1]["error"]["field"], "messages[1].to");
    let (status, _) = stack
        .post("/v1/messages/batch", &json!({"messages": []}))
        .await;
    assert_eq!(status, 422);

    assert_eq!(
        stack.enqueued(),
        before + 1,
        "only the one valid message was enqueued"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_messages() {
    let stack = Stack::start(DEFAULT_CHANNELS).await;
    let (_, sent) = stack
        .post(
            "/v1/messages",
            &json!({"channel": "sms", "to": "+821077778888", "body": "비밀"}),
        )
        .await;
    let id = sent["id"].as_str().expect("id").to_owned();
    stack
        .wait_for("sent", Duration::from_secs(60), |c| {
            c.get("sent") == Some(&1)
        })
        .await;

    let other_key = &format!("ump_{}_secret-of-b", stack.namespace.replace('-', ""));
    ump_core::keys::ApiKeyStore::put(
        &ump_core::keys::MySqlKeys::new(stack.db.pool.clone()),
        &ump_core::keys::PresentedKey::parse(other_key).key_id,
        &format!("{}-b", stack.tenant),
        other_key,
        "",
    )
    .await
    .expect("key b");
    let as_b = |path: String| {
        let http = stack.http.clone();
        let url = format!("{}{path}", stack.api);
        async move {
            let response = http
                .get(url)
                .bearer_auth(other_key)
                .send()
                .await
                .expect("GET");
            (
                response.status().as_u16(),
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let (status, _) = as_b(format!("/v1/messages/{id}")).await;
    assert_eq!(
        status, 404,
        "another tenant's message is not found, not forbidden"
    );
    let (status, page) = as_b("/v1/messages?to=%2B821077778888".into()).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0));
    let (status, page) = stack.get("/v1/messages?to=%2B821077778888").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], id.as_str());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_is_a_503_with_retry_after_never_a_false_202() {
    let stack = Stack::start(DEFAULT_CHANNELS).await;
    // An API whose Kafka is a closed port on 127.0.0.1.
    let api = stack::spawn_api(
        "127.0.0.1:1",
        &stack.db.url,
        &stack.dir.join("config"),
        "2s",
    )
    .await;
    let response = stack
        .http
        .post(format!("{api}/v1/messages"))
        .bearer_auth(&stack.key)
        .json(&json!({"channel": "sms", "to": "+821012345678", "body": "x"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let response = stack
        .http
        .get(format!("{api}/readyz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.text().await.unwrap_or_default().contains("kafka"));
    stack.finish().await;
}

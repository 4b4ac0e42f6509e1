//! ActiveMQ restarted in the middle of a realtime run (`scripts/infra down activemq; scripts/infra
//! up activemq`: nothing else uses the broker). The API answers 503 + Retry-After while the broker
//! is away and clients retry with their Idempotency-Key; the worker reconnects with backoff. Every
//! message that got a 202 is recorded, and every message a client meant to send is sent exactly
//! once: none lost with the broker, none sent twice after it came back.
//!
//! A test binary of its own: it takes the broker away from whatever else would be running.

mod stack;

use futures::StreamExt;
use serde_json::{Value, json};
use stack::Stack;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 1}
  realtime: {enabled: true}
  providers: [{name: sandbox, type: sandbox}]
"#;

const MESSAGES: usize = 1500;

/// `scripts/infra <command> activemq`, failing the test with the script's output.
fn activemq(command: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra");
    let output = Command::new("bash")
        .arg(&script)
        .args([command, "activemq"])
        .output()
        .expect("run scripts/infra");
    assert!(
        output.status.success(),
        "scripts/infra {command} activemq failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_nothing_and_sends_nothing_twice() {
    let stack = Stack::start(CHANNELS).await;
    let http = stack.http.clone();
    let url = format!("{}/v1/messages", stack.api);
    let key = stack.key.clone();
    let run = stack.namespace.clone();
    let unavailable = Arc::new(AtomicUsize::new(0));

    // A client sending one OTP after another (about 200 a second, 8 in flight), retrying each
    // 503 with the same Idempotency-Key until it is accepted.
    let client = tokio::spawn({
        let unavailable = Arc::clone(&unavailable);
        async move {
            futures::stream::iter(0..MESSAGES)
                .map(|i| {
                    let (http, url, key, run) =
                        (http.clone(), url.clone(), key.clone(), run.clone());
                    let unavailable = Arc::clone(&unavailable);
                    async move {
                        tokio::time::sleep(Duration::from_millis(5 * (i % 8) as u64)).await;
                        let body = json!({"channel": "sms", "to": format!("+8210{i:08}"),
                                          "body": format!("OTP {i:06}"), "priority": "realtime"});
                        let mut ids = Vec::new();
                        for _ in 0..600 {
                            let response = http
                                .post(&url)
                                .bearer_auth(&key)
                                .header("Idempotency-Key", format!("{run}-{i}"))
                                .json(&body)
                                .send()
                                .await
                                .expect("POST");
                            let status = response.status().as_u16();
                            let answer: Value = response.json().await.unwrap_or(Value::Null);
                            match status {
                                202 => {
                                    ids.push(answer["id"].as_str().expect("id").to_owned());
                                    return ids;
                                }
                                503 => {
                                    unavailable.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                other => panic!("message {i}: {other} {answer}"),
                            }
                        }
                        panic!("message {i} never accepted");
                    }
                })
                .buffer_unordered(8)
                .concat()
                .await
        }
    });

    stack
        .wait_for(
            "realtime delivery under way",
            Duration::from_secs(60),
            |c| c.get("sent").copied().unwrap_or(0) >= 300,
        )
        .await;
    tokio::task::spawn_blocking(|| {
        activemq("down");
        activemq("up");
    })
    .await
    .expect("restart ActiveMQ");
    let sent_at_restart = stack.status_counts().await;
    let accepted = client.await.expect("client");
    eprintln!(
        "after the restart: {sent_at_restart:?}; {} accepted, {} answers were 503",
        accepted.len(),
        unavailable.load(Ordering::Relaxed)
    );
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "the restart never made the API answer 503: was the broker really down?"
    );

    // Every OTP out exactly once, by its text (a retried send is a new message with the same key).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let texts = loop {
        let text = std::fs::read_to_string(&stack.outbox).unwrap_or_default();
        let mut texts: HashMap<String, usize> = HashMap::new();
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).expect("outbox line");
            *texts
                .entry(line["text"].as_str().expect("text").to_owned())
                .or_default() += 1;
        }
        if texts.len() >= MESSAGES || tokio::time::Instant::now() > deadline {
            break texts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<usize> = (0..MESSAGES)
        .filter(|i| !texts.contains_key(&format!("OTP {i:06}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} OTPs never sent, e.g. {:?}\n{}",
        missing.len(),
        missing.first(),
        stack
            .worker_log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let twice: Vec<(&String, &usize)> = texts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");

    // Every 202 is in the history: sent, or the duplicate of a retry that got there first. (A
    // send answered 503 may still have reached the broker: it is one more duplicate, never a
    // second provider call.)
    stack
        .wait_for("every OTP recorded as sent", Duration::from_secs(60), |c| {
            c.get("sent").copied().unwrap_or(0) >= MESSAGES as i64
        })
        .await;
    let statuses: HashMap<String, String> =
        sqlx::query_as::<_, (Vec<u8>, String)>("SELECT id, status FROM messages")
            .fetch_all(&stack.db.pool)
            .await
            .expect("statuses")
            .into_iter()
            .map(|(id, status)| (uuid::Uuid::from_slice(&id).expect("id").to_string(), status))
            .collect();
    for id in &accepted {
        let status = statuses.get(id).map(String::as_str);
        assert!(
            matches!(status, Some("sent" | "duplicate")),
            "accepted message {id} is {status:?}"
        );
    }
    let counts = stack.status_counts().await;
    assert_eq!(
        counts.get("sent").copied(),
        Some(MESSAGES as i64),
        "{counts:?}"
    );
    stack.finish().await;
}

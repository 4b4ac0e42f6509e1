//! Webhooks all-in-one (SQLite), on the real `ump` binary: `/v1/webhooks` refuses bad input
//! naming the field and keeps tenants apart; the secret is shown once; every status event of the
//! messages reaches a flaky receiver through a kill -9 and restart, signed as the
//! `standardwebhooks` package verifies; a rotated secret signs beside the new one; test events and
//! replays arrive under their ids.

mod common;
#[path = "../../worker/tests/webhook_receiver/mod.rs"]
mod webhook_receiver;

use common::{AllInOne, KEY, examples};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use webhook_receiver::{Plan, Receiver, verify};

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("UMP_BOOTSTRAP_API_KEY", KEY),
        ("UMP_WEBHOOKS_ALLOW_HTTP", "true"),
        ("UMP_WEBHOOKS_ALLOW_LOOPBACK", "true"),
        ("UMP_WEBHOOKS_TIMEOUT", "1s"),
        ("UMP_WEBHOOKS_CONNECT_TIMEOUT", "1s"),
        ("UMP_WEBHOOKS_RETRY_FIRST", "200ms"),
        ("UMP_WEBHOOKS_RETRY_MAX", "2s"),
        ("UMP_WEBHOOKS_LEASE", "5s"),
        ("UMP_WEBHOOKS_POLL", "50ms"),
    ]
}

async fn patch(ump: &AllInOne, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = ump
        .http
        .patch(format!("{}{path}", ump.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("PATCH");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every delivery of the endpoint, through the API's pages.
async fn delivery_log(ump: &AllInOne, endpoint: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut before = String::new();
    for _ in 0..100 {
        let (status, page) = ump
            .get(
                KEY,
                &format!("/v1/webhooks/{endpoint}/deliveries?limit=1000{before}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return items,
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_refuse_bad_input_by_field_and_keep_tenants_apart() {
    let ump = AllInOne::start("warn", &env()).await;
    for (body, field) in [
        (json!({"event_types": ["message.sent"]}), "url"),
        (json!({"url": "https://hooks.example.com/"}), "event_types"),
        (
            json!({"url": "http://169.254.169.254/latest", "event_types": ["message.sent"]}),
            "url",
        ),
        (
            json!({"url": "http://10.1.2.3/", "event_types": ["message.sent"]}),
            "url",
        ),
        (
            json!({"url": "https://hooks.example.com/", "event_types": ["message.opened"]}),
            "event_types[0]",
        ),
        (
            json!({"url": "https://hooks.example.com/", "event_types": ["message.sent"], "tags": [""]}),
            "tags[0]",
        ),
        (
            json!({"url": "https://hooks.example.com/", "event_types": ["message.sent"], "secret": "mine"}),
            "secret",
        ),
    ] {
        let (status, problem) = ump.post(KEY, "/v1/webhooks", &body).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }

    let (status, created) = ump
        .post(
            KEY,
            "/v1/webhooks",
            &json!({"url": "https://hooks.example.com/ump", "event_types": ["message.failed"],
                    "channels": ["sms"], "tags": ["otp"], "description": "alerts"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let secret = created["secret"].as_str().expect("secret");
    assert!(secret.starts_with("whsec_"));
    let (_, one) = ump.get(KEY, &format!("/v1/webhooks/{id}")).await;
    let (_, all) = ump.get(KEY, "/v1/webhooks").await;
    for view in [&one, &all] {
        assert!(
            !view.to_string().contains(&secret[6..]),
            "secret shown again: {view}"
        );
    }
    assert_eq!(one["channels"], json!(["sms"]));
    assert_eq!(all["items"][0]["id"], id);

    // Another tenant sees, changes and deletes nothing of it.
    let (other, _) = ump.create_key("acme");
    ump.wait_key_works(&other).await;
    assert_eq!(ump.get(&other, &format!("/v1/webhooks/{id}")).await.0, 404);
    assert_eq!(ump.get(&other, "/v1/webhooks").await.1["items"], json!([]));
    assert_eq!(
        patch(
            &ump,
            &other,
            &format!("/v1/webhooks/{id}"),
            &json!({"enabled": false})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        ump.delete(&other, &format!("/v1/webhooks/{id}")).await.0,
        404
    );
    assert_eq!(
        ump.get(&other, &format!("/v1/webhooks/{id}/deliveries"))
            .await
            .0,
        404
    );
    assert_eq!(
        ump.post(&other, &format!("/v1/webhooks/{id}/test"), &json!({}))
            .await
            .0,
        404
    );

    let (status, off) = patch(
        &ump,
        KEY,
        &format!("/v1/webhooks/{id}"),
        &json!({"enabled": false, "disabled_reason": "maintenance"}),
    )
    .await;
    assert_eq!((status, &off["enabled"]), (200, &json!(false)), "{off}");
    assert_eq!(off["disabled_reason"], "maintenance");
    let (status, bad) = patch(
        &ump,
        KEY,
        &format!("/v1/webhooks/{id}"),
        &json!({"url": "ftp://hooks.example.com/"}),
    )
    .await;
    assert_eq!((status, &bad["field"]), (422, &json!("url")), "{bad}");
    assert_eq!(ump.get(KEY, "/v1/webhooks/not-an-id").await.0, 404);
    let (status, bad) = ump
        .post(
            KEY,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &json!({"grace": "30d"}),
        )
        .await;
    assert_eq!((status, &bad["field"]), (422, &json!("grace")), "{bad}");
    let (status, bad) = ump
        .post(
            KEY,
            &format!("/v1/webhooks/{id}/replay"),
            &json!({"since": "yesterday"}),
        )
        .await;
    assert_eq!((status, &bad["field"]), (422, &json!("since")), "{bad}");
    assert_eq!(ump.delete(KEY, &format!("/v1/webhooks/{id}")).await.0, 204);
    assert_eq!(ump.get(KEY, &format!("/v1/webhooks/{id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_through_a_flaky_receiver_and_a_kill_9() {
    let count = 500;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let env = env();
    let mut ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;
    let mut receiver = Receiver::new(Plan {
        refuse_for: Duration::from_secs(1),
        fail_until: Duration::from_secs(2),
        hang_until: Duration::from_secs(3),
        hang_every: 5,
        hang: Duration::from_millis(1500),
    });
    let (status, created) = ump
        .post(
            KEY,
            "/v1/webhooks",
            &json!({"url": receiver.url, "event_types": ["message.accepted", "message.sent"],
                    "channels": ["sms"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let endpoint = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    receiver.start();

    let messages: Vec<Value> = (0..count)
        .map(|i| json!({"channel": "sms", "to": format!("+8210{i:08}"), "body": "hi", "tags": ["e2e"]}))
        .collect();
    let (status, answer) = ump
        .post(KEY, "/v1/messages/batch", &json!({"messages": messages}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<String> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_str().expect("accepted").to_owned())
        .collect();
    // An email: not the endpoint's channel, so no event of it.
    let email = ump
        .send(
            KEY,
            &json!({"channel": "email", "to": "kim@example.com", "subject": "s", "body": "b"}),
        )
        .await;

    receiver
        .wait_for("some events", Duration::from_secs(60), |n| n >= count / 2)
        .await;
    ump.kill();
    let killed_with = receiver.distinct().len();
    let ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;
    ump.wait_all_sent(KEY, &ids, Duration::from_secs(60)).await;
    receiver
        .wait_for("every event", Duration::from_secs(60), |n| n >= 2 * count)
        .await;

    let received = receiver.received();
    let distinct = receiver.distinct();
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = delivery_log(&ump, &endpoint).await;
        if log.iter().all(|d| d["state"] == "delivered") {
            break log;
        }
        assert!(Instant::now() < deadline, "not all settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(log.len(), 2 * count, "events produced");
    assert_eq!(distinct.len(), log.len(), "distinct webhook-ids");
    let produced: HashSet<String> = log
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(produced, distinct);
    let mut per_message: HashMap<String, Vec<String>> = HashMap::new();
    for r in &received {
        let body: Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(body["data"]["tags"], json!(["e2e"]));
        per_message
            .entry(body["data"]["id"].as_str().expect("id").to_owned())
            .or_default()
            .push(body["type"].as_str().expect("type").to_owned());
    }
    assert!(
        !per_message.contains_key(&email),
        "no event of another channel"
    );
    for id in &ids {
        let types: HashSet<&str> = per_message[id].iter().map(String::as_str).collect();
        assert_eq!(
            types,
            HashSet::from(["message.accepted", "message.sent"]),
            "{id}"
        );
    }
    verify(&received, &[&secret]);
    eprintln!(
        "all-in-one webhooks: {count} messages, {} events, {} requests ({} duplicates), \
         refused {:?}; killed after {killed_with} events",
        log.len(),
        receiver.requests(),
        received.len() - distinct.len(),
        receiver.refused()
    );
    let refused = receiver.refused();
    assert!(
        refused.contains_key(&500) && refused.contains_key(&0),
        "the 500 and time-out phases were exercised: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_test_events_and_replay() {
    let ump = AllInOne::start("warn", &env()).await;
    let mut receiver = Receiver::new(Plan::reliable());
    receiver.start();
    let (status, created) = ump
        .post(
            KEY,
            "/v1/webhooks",
            &json!({"url": receiver.url, "event_types": ["message.sent"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let endpoint = created["id"].as_str().expect("id").to_owned();
    let old = created["secret"].as_str().expect("secret").to_owned();

    let (status, rotated) = ump
        .post(
            KEY,
            &format!("/v1/webhooks/{endpoint}/rotate-secret"),
            &json!({"grace": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new, old);
    let (status, queued) = ump
        .post(KEY, &format!("/v1/webhooks/{endpoint}/test"), &json!({}))
        .await;
    assert_eq!(status, 202, "{queued}");
    let test_id = queued["id"].as_str().expect("id").to_owned();
    receiver
        .wait_for("the test event", Duration::from_secs(30), |n| n >= 1)
        .await;
    let test = receiver.received()[0].clone();
    assert_eq!(test.id, test_id);
    assert_eq!(test.signature.split(' ').count(), 2, "{}", test.signature);
    // Receivers on either secret accept it during the grace.
    verify(std::slice::from_ref(&test), &[&old]);
    verify(std::slice::from_ref(&test), &[&new]);
    let body: Value = serde_json::from_str(&test.body).expect("JSON");
    assert_eq!(body["type"], "webhook.test");

    let id = ump
        .send(
            KEY,
            &json!({"channel": "sms", "to": "+821099990000", "body": "x"}),
        )
        .await;
    receiver
        .wait_for("the sent event", Duration::from_secs(30), |n| n >= 2)
        .await;
    let requests = receiver.requests();
    let (status, replayed) = ump
        .post(
            KEY,
            &format!("/v1/webhooks/{endpoint}/replay"),
            &json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (202, &json!(2)),
        "{replayed}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.requests() < requests + 2 {
        assert!(Instant::now() < deadline, "the replay never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    let sent_events: Vec<&webhook_receiver::Received> =
        received.iter().filter(|r| r.body.contains(&id)).collect();
    assert_eq!(sent_events.len(), 2, "sent once and replayed once");
    assert_eq!(sent_events[0].id, sent_events[1].id, "the same webhook-id");
    assert_eq!(sent_events[0].body, sent_events[1].body);
    verify(&received, &[&new]);
    // The receiver counts a request when it arrives; the dispatcher records the attempt once it
    // has the answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = delivery_log(&ump, &endpoint).await;
        if log.len() == 2
            && log
                .iter()
                .all(|d| d["attempts"] == 2 && d["last_status_code"] == 204)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = ump
        .http
        .get(format!("{}/metrics", ump.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ump_webhook_attempts_total{result=\"delivered\"} ")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_endpoints_and_their_delivery_log_in_chromium() {
    let infra = ump_core::testing::infra();
    let chromium = infra.require("Browser", "UMP_CHROMIUM");
    let playwright = infra.require("Browser", "UMP_PLAYWRIGHT");
    let node = infra.require("Browser", "UMP_NODE");
    let ump = AllInOne::start("warn", &env()).await;
    let mut receiver = Receiver::new(Plan::reliable());
    receiver.start();
    let (status, created) = ump
        .post(
            KEY,
            "/v1/webhooks",
            &json!({"url": receiver.url, "event_types": ["message.accepted", "message.sent"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let endpoint = created["id"].as_str().expect("id").to_owned();
    let disabled_url = "https://hooks.example.com/paused";
    let (status, paused) = ump
        .post(
            KEY,
            "/v1/webhooks",
            &json!({"url": disabled_url, "event_types": ["message.failed"]}),
        )
        .await;
    assert_eq!(status, 201, "{paused}");
    let reason = "paused during the migration";
    let (status, _) = patch(
        &ump,
        KEY,
        &format!("/v1/webhooks/{}", paused["id"].as_str().expect("id")),
        &json!({"enabled": false, "disabled_reason": reason}),
    )
    .await;
    assert_eq!(status, 200);
    ump.send(
        KEY,
        &json!({"channel": "sms", "to": "+821055556666", "body": "hi"}),
    )
    .await;
    receiver
        .wait_for("both events", Duration::from_secs(30), |n| n >= 2)
        .await;
    let (other, _) = ump.create_key("acme");
    ump.wait_key_works(&other).await;

    // Next to the binaries, like the other dashboard tests': `<target>/test-output/`.
    let shots = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ump"))
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the binary lives in <target>/<profile>/")
        .join("test-output")
        .join("dashboard-webhooks");
    let _ = std::fs::remove_dir_all(&shots);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../worker/tests/dashboard/webhooks.js"
    );
    let run = tokio::process::Command::new(&node)
        .arg(script)
        .env("UMP_PLAYWRIGHT", &playwright)
        .env("UMP_CHROMIUM", &chromium)
        .env("DASHBOARD_URL", &ump.url)
        .env("DASHBOARD_KEY", KEY)
        .env("ENDPOINT_ID", &endpoint)
        .env("ENDPOINT_URL", &receiver.url)
        .env("DISABLED_URL", disabled_url)
        .env("DISABLED_REASON", reason)
        .env("OTHER_KEY", &other)
        .env("SCREENSHOTS", &shots)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run finished within 120 s")
        .unwrap_or_else(|e| panic!("cannot run {node}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the Webhooks view failed in Chromium (screenshots in {}):\n{report}",
        shots.display()
    );
    assert!(report.contains("ok: another tenant"), "{report}");
    // The test event went out through the dispatcher, as the page said.
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.body.contains("webhook.test")),
        "the receiver got no test event"
    );
}

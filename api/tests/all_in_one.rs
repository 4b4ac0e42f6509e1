//! The all-in-one mode end to end: the real `ump` binary on a fresh data folder, no other service.

mod common;

use common::{AllInOne, KEY, examples, free_port, outbox_counts};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The API key printed on a first start, if `output` has one.
fn printed_key(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.trim_matches('\'').starts_with("ump_") && word.len() > 40)
        .map(|word| word.trim_matches('\'').to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_are_all_sent_once() {
    let ump = AllInOne::start("warn", &[]).await;
    let data = ump.data.clone();

    let mut ids = Vec::new();
    for chunk in 0..10 {
        let messages: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                match n % 4 {
                    0 => json!({"channel": "sms", "to": format!("+8210{n:08}"), "body": format!("안녕하세요 {n}")}),
                    1 => json!({"channel": "email", "to": format!("user{n}@example.com"),
                                "template": "welcome", "data": {"name": format!("김{n}")}}),
                    2 => json!({"channel": "push", "to": format!("device-token-{n}"), "body": "ping"}),
                    _ => json!({"channel": "sms", "to": format!("+8210{n:08}"), "body": "otp",
                                "priority": "realtime"}),
                }
            })
            .collect();
        let (status, answer) = ump
            .post(KEY, "/v1/messages/batch", &json!({"messages": messages}))
            .await;
        assert_eq!(status, 202, "{answer}");
        for result in answer["results"].as_array().unwrap() {
            ids.push(
                result["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{result}"))
                    .to_owned(),
            );
        }
    }
    assert_eq!(ids.len(), 1000);
    ump.wait_all_sent(KEY, &ids, Duration::from_secs(60)).await;

    let counts = outbox_counts(&data);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} sent once");
    }
    // The timeline and the rendered template are there.
    let (status, message) = ump.get(KEY, &format!("/v1/messages/{}", ids[1])).await;
    assert_eq!(status, 200);
    let events: Vec<&str> = message["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["accepted", "sent"], "{message}");
    let (status, outbox) = ump.get(KEY, "/v1/outbox?limit=500").await;
    assert_eq!(status, 200);
    assert_eq!(
        outbox["items"].as_array().unwrap().len(),
        500,
        "a page of the newest"
    );
    let text = std::fs::read_to_string(data.join("outbox.jsonl")).unwrap();
    let email: Value = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|item| item["id"] == ids[1].as_str())
        .expect("the email is in the outbox");
    assert_eq!(email["subject"], "김1님, 가입을 환영합니다");
    assert!(email["html"].as_str().unwrap().contains("<b>김1</b>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A slow provider, so the kill lands in the middle of deliveries.
    let channels = dir.path().join("channels");
    std::fs::create_dir_all(&channels).unwrap();
    std::fs::write(
        channels.join("sms.yaml"),
        "apiVersion: ump.dev/v1alpha1\nkind: MessageChannel\nmetadata: {name: sms}\n\
         spec:\n  type: sms\n  providers: [{name: sandbox, type: sandbox, settings: {latency: 10ms}}]\n",
    )
    .unwrap();
    let env = [("UMP_BOOTSTRAP_API_KEY", KEY), ("UMP_WORKER_LANES", "16")];
    let mut ump = AllInOne::start_on(&data, &channels, "warn", &env).await;

    // Senders keep sending while the process is killed; only answered 202s count as accepted.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..4 {
        let (http, url, accepted) = (
            ump.http.clone(),
            ump.url.clone(),
            std::sync::Arc::clone(&accepted),
        );
        senders.spawn(async move {
            for i in 0..500 {
                let sent = http
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(KEY)
                    .json(&json!({"channel": "sms", "to": format!("+82101{sender}{i:06}"), "body": "x"}))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != reqwest::StatusCode::ACCEPTED {
                    return;
                }
                let body: Value = response.json().await.expect("202 body");
                accepted
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_owned());
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ump.kill();
    while senders.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    let before_restart = outbox_counts(&data).len();
    assert!(
        !accepted.is_empty() && before_restart < accepted.len(),
        "the kill landed mid-run: {} accepted, {before_restart} sent before it",
        accepted.len()
    );

    let ump = AllInOne::start_on(&data, &channels, "warn", &env).await;
    ump.wait_all_sent(KEY, &accepted, Duration::from_secs(120))
        .await;
    let counts = outbox_counts(&data);
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    // The crash window: a message whose provider call was under way (at most one per lane) may
    // go out again; everything marked sent before the kill is not sent twice.
    let duplicated = counts.values().filter(|n| **n > 1).count();
    ump_core::testing::Reliability {
        scenario: "all-in-one-kill".into(),
        fault: "kill -9 of the all-in-one process while 4 clients send, then a restart".into(),
        accepted: accepted.len(),
        sent: accepted
            .iter()
            .filter(|id| counts.contains_key(*id))
            .count(),
        duplicated,
        lost: lost.len(),
        notes: format!(
            "{before_restart} sent before the kill; the guarantee allows a duplicate for each \
             provider call under way when the process died: at most 16 (the lanes)"
        ),
    }
    .record();
    assert!(lost.is_empty(), "lost {} accepted messages", lost.len());
    assert!(
        duplicated <= 16,
        "{duplicated} messages sent twice; at most the 16 in flight may be"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_same_answers_as_the_cluster_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ump = AllInOne::start_on(
        &data,
        &examples(),
        "warn",
        &[("UMP_BOOTSTRAP_API_KEY", KEY)],
    )
    .await;
    let url = format!("{}/v1/messages", ump.url);
    for row in ump_core::testing::bad_inputs() {
        let response = ump
            .http
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(row.body.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), row.status, "{}", row.name);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            row.name
        );
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(
            problem["type"],
            format!("https://ump.dev/problems/{}", row.kind),
            "{}: {problem}",
            row.name
        );
        if let Some(field) = row.field {
            assert_eq!(problem["field"], field, "{}: {problem}", row.name);
        }
    }
    let (status, _) = ump.post("wrong-key", "/v1/messages", &json!({})).await;
    assert_eq!(status, 401);
    // Nothing of it reached the queue or the history.
    assert!(ump.statuses(KEY).await.is_empty());
    let queued: i64 = {
        drop(ump);
        let store = ump_core::sqlite::SqliteStore::open(&data.join("ump.db"))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(queued, 0, "nothing enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_working_key_and_idempotency_holds_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut ump = AllInOne::start_on(&data, &examples(), "warn", &[]).await;
    let output = ump.output();
    let key = printed_key(&output).unwrap_or_else(|| panic!("no key printed: {output}"));
    assert!(output.contains(&format!("#key={key}")), "{output}");
    // An example customer to look at, named in the banner.
    assert!(output.contains("example-kim"), "{output}");
    let (status, example) = ump.get(&key, "/v1/users/example-kim").await;
    assert_eq!(status, 200, "{example}");
    assert_eq!(example["consents"].as_array().map(Vec::len), Some(4));
    // The example journeys are there, active (the example events are older than they are, so
    // nobody entered them: a first start sends nothing on its own).
    assert!(output.contains("viewed-not-bought"), "{output}");
    let (_, journeys) = ump.get(&key, "/v1/journeys").await;
    let active: Vec<&Value> = journeys["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["status"] == "active")
        .map(|j| &j["id"])
        .collect();
    assert_eq!(
        active,
        [&json!("viewed-not-bought"), &json!("vip-discount")]
    );
    // And a catalog with the products the example events name.
    assert!(output.contains("/v1/catalog/items"), "{output}");
    let (status, earbuds) = ump.get(&key, "/v1/catalog/items/sku-1001").await;
    assert_eq!(
        (status, &earbuds["name"]),
        (200, &json!("Wireless earbuds")),
        "{earbuds}"
    );
    let (_, catalog) = ump.get(&key, "/v1/catalog/items").await;
    assert_eq!(
        catalog["items"].as_array().map(Vec::len),
        Some(4),
        "{catalog}"
    );

    let body = json!({"channel": "sms", "to": "+821012345678", "body": "once"});
    let send = |ump: &AllInOne| {
        let request = ump
            .http
            .post(format!("{}/v1/messages", ump.url))
            .bearer_auth(&key)
            .header("Idempotency-Key", "order-42")
            .json(&body);
        async move {
            let response = request.send().await.expect("POST");
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let status = response.status().as_u16();
            let mut body = response.json::<Value>().await.unwrap();
            body["location"] = json!(location);
            (status, body)
        }
    };
    let (status, first) = send(&ump).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        first["location"],
        json!(format!("/v1/messages/{}", first["id"].as_str().unwrap())),
        "the Location header names the message"
    );

    // A second process on the same folder is refused: it would deliver the same queue.
    let second = Command::new(env!("CARGO_BIN_EXE_ump"))
        .env("UMP_DATA_DIR", &data)
        .env("UMP_CONFIG_DIR", examples())
        .env("UMP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("run a second ump");
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another UMP process is using"), "{said}");

    ump.kill();
    let ump = AllInOne::start_on(&data, &examples(), "warn", &[]).await;
    assert_eq!(
        printed_key(&ump.output()),
        None,
        "the key is shown on the first start only"
    );
    let (status, replay) = send(&ump).await;
    assert_eq!(status, 202);
    assert_eq!(replay["id"], first["id"], "the replay answers the same id");
    assert_eq!(
        replay["location"], first["location"],
        "and the same Location"
    );
    let id = first["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outbox_counts(&data).contains_key(&id) {
        assert!(Instant::now() < deadline, "not sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outbox_counts(&data).len(), 1, "sent once");

    // A key created with `ump keys create` beside the running process works within seconds.
    let created = Command::new(env!("CARGO_BIN_EXE_ump"))
        .args(["keys", "create", "--tenant", "acme"])
        .env_remove("UMP_MYSQL_URL")
        .env("UMP_DATA_DIR", &data)
        .output()
        .expect("ump keys create");
    assert!(created.status.success(), "{created:?}");
    let acme = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, page) = ump.get(&acme, "/v1/messages").await;
        if status == 200 {
            assert_eq!(
                page["items"],
                json!([]),
                "acme sees nothing of the default tenant"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = ump.get(&acme, &format!("/v1/messages/{id}")).await;
    assert_eq!(status, 404, "another tenant's message is not found");

    // `ump prune` beside the running process: history younger than the cutoff stays.
    let pruned = Command::new(env!("CARGO_BIN_EXE_ump"))
        .args(["prune", "--older-than", "1d"])
        .env_remove("UMP_MYSQL_URL")
        .env("UMP_DATA_DIR", &data)
        .output()
        .expect("ump prune");
    assert!(pruned.status.success(), "{pruned:?}");
    let said = String::from_utf8_lossy(&pruned.stderr);
    assert!(said.contains("deleted the history of 0 messages"), "{said}");
    let (status, _) = ump.get(&key, &format!("/v1/messages/{id}")).await;
    assert_eq!(status, 200, "a message of today is kept");
}

/// The dashboard of the all-in-one mode in real headless Chromium, with the sandbox outbox (the
/// same browser script as the cluster mode's test, told the outbox is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_chromium_with_the_sandbox_outbox() {
    let browser = ump_core::testing::Browser::require();

    let (_dir, channels) = channels_folder(
        r#"apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  providers: [{name: sandbox, type: sandbox, settings: {rejectTo: "+821000000000"}}]
  advertising: {senderName: UMP, optOut: 080-123-4567}
  templates:
    - {name: coupon, text: "{{ name }}님, 보신 상품 {{ item }} {{ pct }}% 할인 쿠폰이 도착했어요"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: email}
spec:
  type: email
  providers: [{name: sandbox, type: sandbox}]
"#,
    );
    let ump = AllInOne::start_with_channels(&channels, "warn", &[]).await;
    let send = |body: Value| {
        let ump = &ump;
        async move {
            let (status, answer) = ump.post(KEY, "/v1/messages", &body).await;
            assert_eq!(status, 202, "{answer}");
            answer["id"].as_str().unwrap().to_owned()
        }
    };
    let sent_to = "+821055550001";
    let sent =
        send(json!({"channel": "sms", "to": sent_to, "body": "대시보드 확인용 메시지"})).await;
    let failed = send(json!({"channel": "sms", "to": "+821000000000", "body": "rejected"})).await;
    let mut ids = vec![sent.clone()];
    for i in 0..3 {
        ids.push(
            send(
                json!({"channel": "email", "to": format!("user{i}@example.com"),
                        "subject": "Welcome", "body": "Hello"}),
            )
            .await,
        );
    }
    ump.wait_all_sent(KEY, &ids, Duration::from_secs(30)).await;
    let customer = "dash-kim";
    let profile = ump
        .http
        .put(format!("{}/v1/users/{customer}", ump.url))
        .bearer_auth(KEY)
        .json(&ump_core::testing::dashboard_customer_profile(sent_to))
        .send()
        .await
        .expect("PUT profile");
    assert_eq!(profile.status(), 200);
    // The first start's example-kim is in all four example segments; the customer above is a VIP
    // too, so `vip` has two members.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, vip) = ump.get(KEY, "/v1/segments/vip").await;
        let (_, kim) = ump.get(KEY, "/v1/users/example-kim").await;
        if vip["size"] == 2 && kim["segments"].as_array().map(Vec::len) == Some(4) {
            break;
        }
        assert!(Instant::now() < deadline, "vip {vip}, example-kim {kim}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created = Command::new(env!("CARGO_BIN_EXE_ump"))
        .args(["keys", "create", "--tenant", "other"])
        .env_remove("UMP_MYSQL_URL")
        .env("UMP_DATA_DIR", &ump.data)
        .output()
        .expect("ump keys create");
    assert!(created.status.success(), "{created:?}");
    let other_key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    // The running process reads new keys within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    while ump.get(&other_key, "/v1/segments").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the other tenant's key never worked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let shots = PathBuf::from(env!("CARGO_BIN_EXE_ump"))
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/ump")
        .join("test-output/dashboard-all-in-one");
    browser
        .check_dashboard(&ump_core::testing::DashboardCheck {
            url: &ump.url,
            key: KEY,
            sent_id: &sent,
            sent_to,
            sent_channel: "sms",
            failed_id: &failed,
            failed_reason: "sandbox: recipient rejected",
            channels: "email,sms",
            customer,
            audience_customer: "example-kim",
            segments: "vip,browsers,sms-marketing,vip-buyers",
            paged_segment: "vip",
            paged_members: 2,
            referring_segment: "vip-buyers",
            other_key: &other_key,
            outbox: true,
            screenshots: &shots,
        })
        .await;
}

/// A channels folder of its own holding `yaml` (and the temporary folder it lives in).
fn channels_folder(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let channels = dir.path().join("channels");
    std::fs::create_dir_all(&channels).expect("channels folder");
    std::fs::write(channels.join("channels.yaml"), yaml).expect("channels.yaml");
    (dir, channels)
}

/// AlimTalk → SMS fallback in the all-in-one mode: the refused message goes out on the SMS
/// channel's queue with the policy's text, and its timeline shows both attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_alimtalk_falls_back_to_sms_with_both_attempts_in_the_timeline() {
    let (_dir, channels) = channels_folder(
        r#"apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: kakao}
spec:
  fallback: {channel: sms, text: "[UMP] {{ name }}님, 상품이 출발했습니다"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: alimtalk}
spec:
  type: alimtalk
  policyRef: kakao
  providers: [{name: kakao-sandbox, type: sandbox, settings: {rejectTo: "+821099998888"}}]
  templates:
    - {name: shipped, code: SHIPPED, text: "{{ name }}님, 주문하신 상품이 출발했습니다."}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  providers: [{name: sms-sandbox, type: sandbox}]
"#,
    );
    let ump = AllInOne::start_with_channels(&channels, "warn", &[]).await;
    let data = ump.data.clone();
    let (status, answer) = ump
        .post(
            KEY,
            "/v1/messages",
            &json!({"channel": "alimtalk", "to": "+821099998888", "template": "shipped",
                    "data": {"name": "김민지"}}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    ump.wait_all_sent(KEY, std::slice::from_ref(&id), Duration::from_secs(30))
        .await;

    let (_, message) = ump.get(KEY, &format!("/v1/messages/{id}")).await;
    assert_eq!(message["provider"], "sms-sandbox", "{message}");
    let events: Vec<&str> = message["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"scheduled") && events.last() == Some(&"sent"),
        "the refusal and the SMS are both in the timeline: {message}"
    );
    let text = std::fs::read_to_string(data.join("outbox.jsonl")).unwrap();
    let sent: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(sent.len(), 1, "one SMS, no AlimTalk: {sent:?}");
    assert_eq!(sent[0]["provider"], "sms-sandbox");
    assert_eq!(sent[0]["text"], "[UMP] 김민지님, 상품이 출발했습니다");
}

/// Failover in the all-in-one mode: after two failures the primary's circuit opens, the retry
/// goes to the secondary, and `/metrics` shows the circuit as the cluster mode's paths do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_takes_the_secondary_and_metrics_show_the_open_circuit() {
    let (_dir, channels) = channels_folder(
        r#"apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: quick}
spec:
  retry: {maxAttempts: 3, initialBackoff: 100ms, maxBackoff: 200ms}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  policyRef: quick
  providers:
    - name: primary
      type: sandbox
      settings: {failAttempts: "100", circuitFailureThreshold: "2", circuitCoolDown: "10m"}
    - {name: secondary, type: sandbox}
"#,
    );
    let ump = AllInOne::start_with_channels(&channels, "warn", &[]).await;
    let id = ump
        .send(
            KEY,
            &json!({"channel": "sms", "to": "+821012345678", "body": "hi"}),
        )
        .await;
    let view = ump.wait_status(KEY, &id, "sent").await;
    assert_eq!(
        (&view["provider"], &view["attempts"]),
        (&json!("secondary"), &json!(3)),
        "{view}"
    );
    let metrics = ump
        .http
        .get(format!("{}/metrics", ump.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let open = |provider: &str| {
        ump_core::testing::metric_value(
            &metrics,
            "ump_provider_circuit_open",
            &[
                ("channel", "sms"),
                ("provider", provider),
                ("path", "all-in-one"),
            ],
        )
    };
    assert_eq!(
        (open("primary"), open("secondary")),
        (Some(1.0), Some(0.0)),
        "{metrics}"
    );
}

//! The admin dashboard on the cluster-mode stack (real Kafka, Redis, MariaDB, a worker process, the
//! event processor): the page and its assets as served (types, caching, a strict
//! Content-Security-Policy), the page in real headless Chromium (signs in, shows messages sent
//! through the API with their status, finds them, shows their timeline, a person's segments and
//! events, the segments with their members, a journey's steps and counts, nothing of them to
//! another tenant; screenshots under `<target>/test-output/dashboard/`), and `/v1/stats` scoped to
//! the key's tenant.

mod stack;

use serde_json::{Value, json};
use stack::Stack;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ump_core::keys::{ApiKeyStore, MySqlKeys, PresentedKey};
use ump_core::testing::{Browser, DashboardCheck, unique_name};

/// `sms` rejects one number for good (a failure with a reason) and carries the journey's coupon
/// (advertising, so it needs its opt-out number); `email` sends everything.
const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 2}
  providers: [{name: sandbox, type: sandbox, settings: {rejectTo: "+821000000000"}}]
  advertising: {senderName: UMP, optOut: 080-123-4567}
  templates:
    - {name: coupon, text: "{{ name }}님, 보신 상품 {{ item }} {{ pct }}% 할인 쿠폰이 도착했어요"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: email, namespace: NAMESPACE}
spec:
  type: email
  topic: {partitions: 1}
  providers: [{name: sandbox, type: sandbox}]
"#;

const REJECTED: &str = "+821000000000";
const REJECT_REASON: &str = "sandbox: recipient rejected";

/// Where screenshots go: `<target dir>/test-output/dashboard/`, next to the binaries.
fn screenshots() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_ump-worker"));
    let target = worker
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the worker binary lives in <target>/<profile>/");
    target.join("test-output").join("dashboard")
}

async fn send(stack: &Stack, body: Value) -> String {
    let (status, answer) = stack.post("/v1/messages", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("id").to_owned()
}

async fn put(stack: &Stack, path: &str, body: &Value) -> (u16, Value) {
    let response = stack
        .http
        .put(format!("{}{path}", stack.api))
        .bearer_auth(&stack.key)
        .json(body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The person the all-in-one mode starts with, and whom the browser script looks for.
const AUDIENCE_CUSTOMER: &str = "example-kim";
/// People put in `vip` besides her: more than one page of the Segments view's members (50).
const MORE_VIPS: usize = 60;

/// The all-in-one's first-start audience (`ump_api::all_in_one`), made here through the API: its
/// four segments, example-kim with two products viewed and one bought, and more VIPs.
async fn example_audience(stack: &Stack) {
    let segments = json!([
        {"id": "vip", "name": "VIP customers", "condition": {"trait": {"path": "tier", "equals": "vip"}}},
        {"id": "browsers", "name": "Viewed at least two products in the last 7 days",
         "condition": {"performed": {"event": "product_viewed", "at_least": 2, "within": "7d"}}},
        {"id": "sms-marketing", "name": "Agreed to SMS advertising",
         "condition": {"consent": {"channel": "sms", "purpose": "marketing"}}},
        {"id": "vip-buyers", "name": "VIP customers who bought this month",
         "condition": {"all": [{"in_segment": "vip"},
                               {"performed": {"event": "purchase", "within": "30d"}}]}},
    ]);
    for segment in segments.as_array().expect("segments") {
        let id = segment["id"].as_str().expect("id");
        let (status, answer) = put(stack, &format!("/v1/segments/{id}"), segment).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, answer) = put(
        stack,
        &format!("/v1/users/{AUDIENCE_CUSTOMER}"),
        &json!({
            "traits": {"name": "김민수", "tier": "vip"},
            "contacts": {"phone": "+821012345678", "email": "minsu.kim@example.com"},
            "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                          "source": "example: sign-up form"}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    for i in 1..=MORE_VIPS {
        let (status, answer) = put(
            stack,
            &format!("/v1/users/vip-{i:02}"),
            &json!({"traits": {"tier": "vip"}}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let minutes_ago = |m: i64| (chrono::Utc::now() - chrono::Duration::minutes(m)).to_rfc3339();
    let (status, answer) = stack
        .post(
            "/v1/events",
            &json!({"events": [
                {"user_id": AUDIENCE_CUSTOMER, "event": "product_viewed", "timestamp": minutes_ago(30),
                 "properties": {"item_id": "sku-1001", "name": "Wireless earbuds", "price": 89000}},
                {"user_id": AUDIENCE_CUSTOMER, "event": "product_viewed", "timestamp": minutes_ago(20),
                 "properties": {"item_id": "sku-2002", "name": "Phone case", "price": 15000}},
                {"user_id": AUDIENCE_CUSTOMER, "event": "purchase", "timestamp": minutes_ago(10),
                 "properties": {"item_id": "sku-2002", "price": 15000}},
            ]}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// Waits until the processor has `members` people in `vip` and example-kim in all four segments.
async fn wait_for_audience(stack: &Stack, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, vip) = stack.get("/v1/segments/vip").await;
        let (_, kim) = stack.get(&format!("/v1/users/{AUDIENCE_CUSTOMER}")).await;
        let kims = kim["segments"].as_array().map_or(0, Vec::len);
        if vip["size"].as_u64() == Some(members as u64) && kims == 4 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the processor did not place everyone within 60 s: vip {vip}, {AUDIENCE_CUSTOMER} {kim}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_with(stack: &Stack, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = stack.http.get(format!("{}{path}", stack.api));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("GET")
}

/// A key of another tenant, stored in the stack's database.
async fn other_tenant_key(stack: &Stack) -> (String, String) {
    let tenant = unique_name("tenant-b");
    let key = format!("ump_{}_secret", unique_name("kb").replace('-', ""));
    MySqlKeys::new(stack.db.pool.clone())
        .put(&PresentedKey::parse(&key).key_id, &tenant, &key, "tenant b")
        .await
        .expect("store key");
    (tenant, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_sent_and_failed_messages_in_chromium() {
    // Fail before anything starts when the browser is not set up.
    let browser = Browser::require();

    let stack = Stack::start(CHANNELS).await;
    let sent_to = "+821055550001";
    let sent = send(
        &stack,
        json!({"channel": "sms", "to": sent_to, "body": "대시보드 확인용 메시지"}),
    )
    .await;
    let failed = send(
        &stack,
        json!({"channel": "sms", "to": REJECTED, "body": "this one is rejected"}),
    )
    .await;
    for i in 0..3 {
        send(
            &stack,
            json!({"channel": "email", "to": format!("user{i}@example.com"), "subject": "Welcome", "body": "Hello"}),
        )
        .await;
    }
    stack
        .wait_for("4 sent and 1 failed", Duration::from_secs(60), |c| {
            c.get("sent").copied().unwrap_or(0) == 4 && c.get("failed").copied().unwrap_or(0) == 1
        })
        .await;

    // The page and its assets, as a browser gets them.
    let page = get_with(&stack, "/", None).await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str().expect("CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self';"));
    assert!(
        !csp.contains("http"),
        "the policy names another origin: {csp}"
    );
    let html = page.text().await.expect("page");
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a script link");
    assert!(script.starts_with("/assets/app.js?v="), "{script}");
    let js = get_with(&stack, script, None).await;
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        js.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = js.headers()["etag"].clone();
    let again = stack
        .http
        .get(format!("{}{script}", stack.api))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 304);
    let css = get_with(&stack, "/assets/app.css", None).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(
        css.headers()["cache-control"],
        "no-cache",
        "unversioned link"
    );
    assert_eq!(
        get_with(&stack, "/assets/nope.js", None).await.status(),
        404
    );

    // A person whose phone is the sent message's recipient, for the Customers view.
    let customer = "dash-kim";
    let profile = stack
        .http
        .put(format!("{}/v1/users/{customer}", stack.api))
        .bearer_auth(&stack.key)
        .json(&ump_core::testing::dashboard_customer_profile(sent_to))
        .send()
        .await
        .expect("PUT profile");
    assert_eq!(profile.status(), 200);

    // The audience: example-kim, more VIPs, and the customer above (a VIP too).
    let processor = stack.start_event_processor().await;
    example_audience(&stack).await;
    let vips = MORE_VIPS + 2;
    wait_for_audience(&stack, vips).await;
    let (_, other_key) = other_tenant_key(&stack).await;

    // The page itself, in Chromium.
    let shots = screenshots();
    browser
        .check_dashboard(&DashboardCheck {
            url: &stack.api,
            key: &stack.key,
            sent_id: &sent,
            sent_to,
            sent_channel: "sms",
            failed_id: &failed,
            failed_reason: REJECT_REASON,
            channels: "email,sms",
            customer,
            audience_customer: AUDIENCE_CUSTOMER,
            segments: "vip,browsers,sms-marketing,vip-buyers",
            paged_segment: "vip",
            paged_members: vips,
            referring_segment: "vip-buyers",
            other_key: &other_key,
            outbox: false,
            screenshots: &shots,
        })
        .await;
    assert!(shots.join("5-search-by-id-timeline.png").is_file());
    processor.stop().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_a_key_only_its_own_tenants_messages() {
    let stack = Stack::start(CHANNELS).await;
    let (_, other_key) = other_tenant_key(&stack).await;
    for to in ["+821055550002", "+821055550003", REJECTED] {
        send(&stack, json!({"channel": "sms", "to": to, "body": "a"})).await;
    }
    stack
        .wait_for("2 sent and 1 failed", Duration::from_secs(60), |c| {
            c.get("sent").copied().unwrap_or(0) == 2 && c.get("failed").copied().unwrap_or(0) == 1
        })
        .await;

    let (status, mine) = stack.get("/v1/stats?window=1h").await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["totals"]["total"], 3, "{mine}");
    assert_eq!(mine["totals"]["sent"], 2);
    assert_eq!(mine["totals"]["failed"], 1);
    assert_eq!(mine["channels"][0]["channel"], "sms");
    let rate = mine["success_rate"].as_f64().expect("a success rate");
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(mine["bucket_seconds"], 60);
    let series = mine["series"].as_array().expect("series");
    let in_series: u64 = series
        .iter()
        .map(|b| b["counts"]["total"].as_u64().expect("count"))
        .sum();
    assert_eq!(in_series, 3);
    let (status, day) = stack.get("/v1/stats?window=24h").await;
    assert_eq!(status, 200);
    assert_eq!(day["bucket_seconds"], 900);
    assert_eq!(day["totals"]["total"], 3);

    // Tenant B sees none of it, nor any of A's messages.
    let theirs: Value = get_with(&stack, "/v1/stats?window=24h", Some(&other_key))
        .await
        .json()
        .await
        .expect("stats");
    assert_eq!(theirs["totals"]["total"], 0, "{theirs}");
    assert_eq!(theirs["channels"], json!([]));
    assert_eq!(theirs["success_rate"], Value::Null);
    let listed: Value = get_with(&stack, "/v1/messages", Some(&other_key))
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(listed["items"], json!([]));

    // B's own message counts for B only.
    let response = stack
        .http
        .post(format!("{}/v1/messages", stack.api))
        .bearer_auth(&other_key)
        .json(&json!({"channel": "sms", "to": "+821055550009", "body": "b"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    stack
        .wait_for("B's message sent", Duration::from_secs(60), |c| {
            c.get("sent").copied().unwrap_or(0) == 3
        })
        .await;
    let theirs: Value = get_with(&stack, "/v1/stats", Some(&other_key))
        .await
        .json()
        .await
        .expect("stats");
    assert_eq!(theirs["totals"]["total"], 1, "{theirs}");
    assert_eq!(theirs["totals"]["sent"], 1);
    let (_, mine) = stack.get("/v1/stats").await;
    assert_eq!(mine["totals"]["total"], 3, "A's figures do not include B's");

    // Problems: a window it does not offer, no key, a bad key.
    let (status, problem) = stack.get("/v1/stats?window=7d").await;
    assert_eq!(status, 400);
    assert_eq!(problem["field"], "window");
    let response = get_with(&stack, "/v1/stats", None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = get_with(&stack, "/v1/stats", Some("ump_nosuchkey_secret")).await;
    assert_eq!(response.status(), 401);
    stack.finish().await;
}

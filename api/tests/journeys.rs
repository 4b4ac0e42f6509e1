//! Journeys over HTTP, all-in-one, with the founding brief's scenario: a customer views a
//! product; a few seconds later (the delay is the journey's configuration) they get a coupon for
//! it, unless they bought it meanwhile. The process is killed (SIGKILL) while the people wait:
//! after the restart the coupon still goes out exactly once to the one who did not buy, never to
//! the one who did. Bad definitions are refused naming the step and field; another tenant sees
//! nothing. (The step function's own cases are `ump_automation::journey`'s tests.)

mod common;

use common::{AllInOne, KEY, examples};
use serde_json::{Value, json};
use std::time::Duration;

const BUYER: &str = "+821055550001";
const BROWSER: &str = "+821055550002";

fn coupon_journey(wait: &str) -> Value {
    json!({
        "id": "coupon-for-viewers",
        "name": "Coupon for a viewed product, unless bought",
        "entry": {"event": "product_viewed"},
        "goal": {"event": "purchase", "match": ["item_id"]},
        // The test runs at any hour: the people agreed to night-time advertising, and the
        // journey has no quiet hours of its own.
        "quiet_hours": {"start": "00:00", "end": "00:00"},
        "steps": [
            {"id": "wait-for-purchase", "wait": {"event": "purchase", "match": ["item_id"],
              "timeout": wait, "on_event": "bought", "on_timeout": "coupon"}},
            {"id": "coupon", "send": {"channel": "sms", "template": "coupon",
              "data": {"item": "$entry.item_id", "name": "$traits.name", "pct": 10}}},
            {"id": "bought", "exit": {}}
        ]
    })
}

/// The all-in-one examples' own coupon journey would send its coupons too (five minutes on).
async fn archive_the_examples(ump: &AllInOne) {
    let (status, body) = ump
        .post(KEY, "/v1/journeys/viewed-not-bought/archive", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn identify(ump: &AllInOne, user: &str, phone: &str) {
    let body = json!({"traits": {"name": user}, "contacts": {"phone": phone},
    "consents": [
        {"purpose": "marketing", "channel": "sms", "granted": true, "source": "signup-form"},
        {"purpose": "marketing_night", "channel": "sms", "granted": true, "source": "signup-form"},
    ]});
    let (status, body) = ump.put(KEY, &format!("/v1/users/{user}"), &body).await;
    assert_eq!(status, 200, "{body}");
}

async fn event(ump: &AllInOne, user: &str, name: &str, item: &str) {
    let (status, body) = ump
        .post(
            KEY,
            "/v1/events",
            &json!({"user_id": user, "event": name, "properties": {"item_id": item}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// The coupons the sandbox provider took, by recipient.
fn coupons(ump: &AllInOne) -> Vec<(String, String)> {
    ump.outbox()
        .into_iter()
        .filter(|r| r["text"].as_str().is_some_and(|t| t.contains("할인 쿠폰")))
        .map(|r| {
            (
                r["to"].as_str().unwrap_or_default().to_owned(),
                r["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn stat(view: &Value, step: &str, counter: &str) -> i64 {
    view["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == step && s["counter"] == counter)
        .map(|s| s["value"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coupon_reaches_the_viewer_who_did_not_buy_once_even_across_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let env = [("UMP_BOOTSTRAP_API_KEY", KEY), ("RUST_LOG", "warn")];
    let mut ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;
    archive_the_examples(&ump).await;
    identify(&ump, "buyer", BUYER).await;
    identify(&ump, "browser", BROWSER).await;

    // The wait runs from the view: 12 s covers the events, their checks and the kill below on a
    // slow machine (a coupon before the kill fails the test as "too early").
    let (status, created) = ump.post(KEY, "/v1/journeys", &coupon_journey("12s")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (&created["status"], &created["version"]),
        (&json!("draft"), &json!(1))
    );
    // A draft takes nobody in.
    event(&ump, "browser", "product_viewed", "sku-0").await;
    let (status, active) = ump
        .post(KEY, "/v1/journeys/coupon-for-viewers/activate", &json!({}))
        .await;
    assert_eq!(
        (status, &active["status"]),
        (200, &json!("active")),
        "{active}"
    );

    event(&ump, "buyer", "product_viewed", "sku-1").await;
    event(&ump, "browser", "product_viewed", "sku-1").await;
    event(&ump, "buyer", "purchase", "sku-1").await;
    // Another item's purchase is not this one's.
    event(&ump, "browser", "purchase", "sku-2").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, view) = ump.get(KEY, "/v1/journeys/coupon-for-viewers").await;
        if stat(&view, "", "entered") == 2 && stat(&view, "", "converted") == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not entered: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The person's page shows where they are.
    let (_, person) = ump.get(KEY, "/v1/users/browser").await;
    assert_eq!(
        person["journeys"][0]["journey"], "coupon-for-viewers",
        "{person}"
    );
    assert_eq!(
        person["journeys"][0]["step"], "wait-for-purchase",
        "{person}"
    );
    assert!(person["journeys"][0]["until"].is_string(), "{person}");
    let (_, buyer) = ump.get(KEY, "/v1/users/buyer").await;
    assert_eq!(buyer["journeys"], json!([]), "converted: {buyer}");
    // Their timeline: left at the goal, from the wait.
    let left = &buyer["past_journeys"][0];
    assert_eq!(
        (&left["journey"], &left["step"], &left["converted"]),
        (
            &json!("coupon-for-viewers"),
            &json!("wait-for-purchase"),
            &json!(true)
        ),
        "{buyer}"
    );
    // Killed while the browser waits for the timeout.
    ump.kill();
    assert!(coupons(&ump).is_empty(), "too early: {:?}", coupons(&ump));
    let ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while coupons(&ump).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no coupon: {}",
            ump.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a second copy or the buyer's to show up, if either were coming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = coupons(&ump);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, BROWSER);
    assert!(
        sent[0].1.contains("browser님") && sent[0].1.contains("sku-1"),
        "{sent:?}"
    );

    let (_, person) = ump.get(KEY, "/v1/users/browser").await;
    assert_eq!(person["journeys"], json!([]), "{person}");
    let left = &person["past_journeys"][0];
    assert_eq!(
        (&left["step"], &left["converted"]),
        (&json!("coupon"), &json!(false)),
        "{person}"
    );
    let (_, view) = ump.get(KEY, "/v1/journeys/coupon-for-viewers").await;
    assert_eq!(stat(&view, "coupon", "sent"), 1, "{view}");
    assert_eq!(stat(&view, "wait-for-purchase", "timed_out"), 1, "{view}");
    assert_eq!(stat(&view, "", "converted"), 1, "{view}");
    assert_eq!(stat(&view, "wait-for-purchase", "waiting"), 0, "{view}");
    assert_eq!(stat(&view, "", "exited"), 2, "{view}");
    // The message is in the history like any other.
    let (status, page) = ump.get(KEY, "/v1/messages?channel=sms").await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(
        (&items[0]["to"], &items[0]["status"]),
        (&json!(BROWSER), &json!("sent"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_an_active_journey_makes_a_version_and_its_life_is_guarded() {
    let ump = AllInOne::start("warn", &[]).await;
    let (status, _) = ump
        .put(
            KEY,
            "/v1/journeys/coupon-for-viewers",
            &coupon_journey("1h"),
        )
        .await;
    assert_eq!(status, 201);
    // A draft changes in place.
    let (status, draft) = ump
        .put(
            KEY,
            "/v1/journeys/coupon-for-viewers",
            &coupon_journey("2h"),
        )
        .await;
    assert_eq!((status, &draft["version"]), (200, &json!(1)), "{draft}");
    // A draft cannot be paused.
    let (status, problem) = ump
        .post(KEY, "/v1/journeys/coupon-for-viewers/pause", &json!({}))
        .await;
    assert_eq!(status, 409, "{problem}");
    ump.post(KEY, "/v1/journeys/coupon-for-viewers/activate", &json!({}))
        .await;
    let (status, v2) = ump
        .put(
            KEY,
            "/v1/journeys/coupon-for-viewers",
            &coupon_journey("3h"),
        )
        .await;
    assert_eq!((status, &v2["version"]), (200, &json!(2)), "{v2}");
    assert_eq!(v2["steps"][0]["wait"]["timeout"], "3h");
    // The same definition again is no new version.
    let (_, same) = ump
        .put(
            KEY,
            "/v1/journeys/coupon-for-viewers",
            &coupon_journey("3h"),
        )
        .await;
    assert_eq!(same["version"], 2);
    let (status, paused) = ump
        .post(KEY, "/v1/journeys/coupon-for-viewers/pause", &json!({}))
        .await;
    assert_eq!((status, &paused["status"]), (200, &json!("paused")));
    let (status, archived) = ump
        .post(KEY, "/v1/journeys/coupon-for-viewers/archive", &json!({}))
        .await;
    assert_eq!((status, &archived["status"]), (200, &json!("archived")));
    let (status, _) = ump
        .put(
            KEY,
            "/v1/journeys/coupon-for-viewers",
            &coupon_journey("4h"),
        )
        .await;
    assert_eq!(status, 409, "an archived journey does not change");
    let (status, _) = ump
        .post(KEY, "/v1/journeys/coupon-for-viewers/activate", &json!({}))
        .await;
    assert_eq!(status, 409);
    let (status, list) = ump.get(KEY, "/v1/journeys").await;
    let ids: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(status, 200);
    assert!(ids.contains(&&json!("coupon-for-viewers")), "{list}");

    // Another tenant sees none of it.
    let (other, _) = ump.create_key("another-shop");
    ump.wait_key_works(&other).await;
    let (status, list) = ump.get(&other, "/v1/journeys").await;
    assert_eq!((status, &list["items"]), (200, &json!([])));
    assert_eq!(
        ump.get(&other, "/v1/journeys/coupon-for-viewers").await.0,
        404
    );

    // Frequency caps: read back as written; bad ones named.
    let caps =
        json!({"caps": [{"max": 2, "per": "1day"}, {"max": 5, "per": "7days", "channel": "sms"}]});
    let (status, body) = ump.put(KEY, "/v1/journey-caps", &caps).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ump.get(KEY, "/v1/journey-caps").await.1, caps);
    let (status, problem) = ump
        .put(
            KEY,
            "/v1/journey-caps",
            &json!({"caps": [{"max": 1, "per": "0s"}]}),
        )
        .await;
    assert_eq!(
        (status, &problem["errors"][0]["field"]),
        (422, &json!("caps[0].per")),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_naming_the_step_and_field() {
    let ump = AllInOne::start("warn", &[]).await;
    let with_send = |send: Value| {
        let mut j = coupon_journey("5m");
        j["steps"][1]["send"] = send;
        j
    };
    for (journey, field) in [
        (
            with_send(json!({"channel": "fax", "template": "coupon"})),
            "steps[1].send.channel",
        ),
        (
            with_send(json!({"channel": "sms", "template": "coupon", "data": {"pct": 10}})),
            "steps[1].send.data",
        ),
        (
            with_send(json!({"channel": "alimtalk", "template": "shipped",
                "data": {"name": "$traits.name"}})),
            "steps[1].send.category",
        ),
        (
            json!({"id": "x", "entry": {"event": "e"}, "steps": [
                {"id": "a", "exit": {}}, {"id": "b", "exit": {}}]}),
            "steps[1]",
        ),
        (
            json!({"id": "x", "entry": {"event": "e"}, "steps": [
                {"id": "a", "wait": {"event": "p", "timeout": "0s", "on_event": "a", "on_timeout": "a"}}]}),
            "steps[0].wait.timeout",
        ),
        (
            json!({"id": "x", "entry": {"event": "e"}, "steps": [{"id": "a", "teleport": {}}]}),
            "steps[0]",
        ),
    ] {
        let (status, problem) = ump.post(KEY, "/v1/journeys", &journey).await;
        assert_eq!(status, 422, "{journey} → {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{field} not named in {problem}"
        );
    }
    assert_eq!(ump.get(KEY, "/v1/journeys/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journeys_send_rate_spreads_its_messages_out() {
    let ump = AllInOne::start("warn", &[]).await;
    archive_the_examples(&ump).await;
    const PEOPLE: usize = 20;
    const RATE: usize = 4;
    for i in 0..PEOPLE {
        identify(
            &ump,
            &format!("paced-{i:02}"),
            &format!("+8210777700{i:02}"),
        )
        .await;
    }
    let journey = json!({"id": "paced", "entry": {"event": "signed_up"}, "send_rate": RATE,
        "steps": [{"id": "hello", "send": {"channel": "sms", "template": "coupon",
            "category": "transactional",
            "data": {"item": "welcome", "name": "$traits.name", "pct": 5}}}]});
    assert_eq!(ump.post(KEY, "/v1/journeys", &journey).await.0, 201);
    let (status, body) = ump
        .post(KEY, "/v1/journeys/paced/activate", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = (0..PEOPLE)
        .map(|i| json!({"user_id": format!("paced-{i:02}"), "event": "signed_up"}))
        .collect();
    let (status, body) = ump
        .post(KEY, "/v1/events", &json!({"events": events}))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let accepted: Vec<chrono::DateTime<chrono::Utc>> = loop {
        let (_, page) = ump.get(KEY, "/v1/messages?channel=sms&limit=100").await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= PEOPLE {
            break items
                .iter()
                .map(|m| {
                    m["created_at"]
                        .as_str()
                        .expect("created_at")
                        .parse()
                        .expect("time")
                })
                .collect();
        }
        if tokio::time::Instant::now() >= deadline {
            let (_, journey) = ump.get(KEY, "/v1/journeys/paced").await;
            panic!(
                "{} of {PEOPLE} sent; the journey: {journey}\n{}",
                items.len(),
                ump.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut accepted = accepted;
    accepted.sort();
    // A rate of 4 a second with a burst of 4: never more than 8 within one second, however
    // slow or fast the machine.
    for window in accepted.windows(2 * RATE + 1) {
        let spread = window[2 * RATE] - window[0];
        assert!(
            spread >= chrono::Duration::seconds(1),
            "{} messages within {spread}: {accepted:?}",
            2 * RATE + 1
        );
    }
    let (_, view) = ump.get(KEY, "/v1/journeys/paced").await;
    assert_eq!(stat(&view, "hello", "sent"), PEOPLE as i64, "{view}");
}

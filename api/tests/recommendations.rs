//! Recommendations over HTTP, all-in-one: events in, the processor and its upkeep loop keep the
//! model, and `GET /v1/users/{id}/recommendations` ranks the catalog per strategy; bad queries
//! are refused naming the parameter; another tenant sees nothing. And the founding brief's
//! case end to end: a journey's coupon names the product the person viewed and did not buy.
//! (The ranking's own cases are `ump_automation::recommend`'s tests; the stores' contract runs
//! on SQLite and MariaDB: `ump_core::testing::recommendations`.)

mod common;

use common::{AllInOne, KEY};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;
use ump_core::testing::unique_name;

async fn catalog(ump: &AllInOne, key: &str) {
    let items = json!({"items": [
        {"id": "r-a", "name": "Trail runner", "price": 129000, "currency": "KRW",
         "url": "https://shop.example/p/r-a", "category": "shoes"},
        {"id": "r-b", "name": "Road runner", "price": 99000, "currency": "KRW",
         "url": "https://shop.example/p/r-b", "category": "shoes"},
        {"id": "r-c", "name": "Running socks", "price": 9000, "currency": "KRW",
         "url": "https://shop.example/p/r-c", "category": "socks"},
        {"id": "r-d", "name": "Sold-out cap", "price": 19000, "currency": "KRW",
         "category": "socks", "in_stock": false},
    ]});
    let (status, body) = ump.post(key, "/v1/catalog/items", &items).await;
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

fn ids(answer: &Value) -> Vec<(String, String)> {
    answer["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_owned(),
                i["strategy"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Asks until the first of the list is `first` (the model catches up within seconds).
async fn wait_first(ump: &AllInOne, path: &str, first: (&str, &str)) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (status, answer) = ump.get(KEY, path).await;
        assert_eq!(status, 200, "{answer}");
        if ids(&answer)
            .first()
            .is_some_and(|(id, by)| (id.as_str(), by.as_str()) == first)
        {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_follow_the_events_per_strategy_and_tenant() {
    let ump = AllInOne::start("warn", &[]).await;
    catalog(&ump, KEY).await;
    // u1 viewed a and b and bought b; u2 viewed a and c: c is similar to a.
    event(&ump, "u1", "product_viewed", "r-a").await;
    event(&ump, "u1", "product_viewed", "r-b").await;
    event(&ump, "u1", "purchase", "r-b").await;
    event(&ump, "u2", "product_viewed", "r-a").await;
    event(&ump, "u2", "product_viewed", "r-c").await;
    event(&ump, "u2", "product_viewed", "r-d").await;

    let similar = wait_first(
        &ump,
        "/v1/users/u1/recommendations?strategy=similar_items&limit=3",
        ("r-c", "similar_items"),
    )
    .await;
    assert_eq!(similar["user_id"], "u1");
    assert_eq!(similar["strategy"], "similar_items");
    assert_eq!(similar["items"][0]["name"], "Running socks");
    assert_eq!(similar["items"][0]["url"], "https://shop.example/p/r-c");
    assert!(similar["items"][0]["score"].as_f64().unwrap() > 0.0);
    assert!(
        ids(&similar)
            .iter()
            .all(|(id, _)| id != "r-d" && id != "r-b"),
        "never out of stock, never what was bought: {similar}"
    );
    let (_, viewed) = ump
        .get(
            KEY,
            "/v1/users/u1/recommendations?strategy=viewed_not_purchased&limit=1",
        )
        .await;
    assert_eq!(
        ids(&viewed),
        [("r-a".into(), "viewed_not_purchased".into())]
    );
    let (_, recent) = ump
        .get(
            KEY,
            "/v1/users/u2/recommendations?strategy=recently_viewed&limit=2",
        )
        .await;
    assert_eq!(
        ids(&recent),
        [
            ("r-c".into(), "recently_viewed".into()),
            ("r-a".into(), "recently_viewed".into())
        ],
        "newest first, the sold-out item left out"
    );
    // Someone UMP never saw gets popular items (the cold start), by category too.
    wait_first(
        &ump,
        "/v1/users/nobody/recommendations?strategy=popular&category=shoes",
        ("r-a", "popular"),
    )
    .await;
    let (_, socks) = ump
        .get(
            KEY,
            "/v1/users/nobody/recommendations?strategy=trending&category=socks",
        )
        .await;
    assert!(
        ids(&socks).iter().all(|(id, _)| id == "r-c"),
        "only socks, none sold out: {socks}"
    );

    // Bad queries name the parameter.
    for (query, field, status) in [
        ("strategy=best", "strategy", 422),
        ("limit=0", "limit", 422),
        ("limit=51", "limit", 422),
        ("limit=five", "limit", 422),
        ("strategy=popular&strategy=trending", "strategy", 400),
    ] {
        let (got, problem) = ump
            .get(KEY, &format!("/v1/users/u1/recommendations?{query}"))
            .await;
        assert_eq!(
            (got, problem["errors"][0]["field"].as_str()),
            (status, Some(field)),
            "{query}: {problem}"
        );
    }
    let (status, _) = ump.get("no-such-key", "/v1/users/u1/recommendations").await;
    assert_eq!(status, 401);

    // Another tenant: its own (empty) catalog and model; nothing of this tenant's.
    let (other, _) = ump.create_key(&unique_name("tenant"));
    ump.wait_key_works(&other).await;
    let (status, theirs) = ump
        .get(
            &other,
            "/v1/users/u1/recommendations?strategy=recently_viewed",
        )
        .await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["items"], json!([]), "{theirs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_coupon_names_the_product_viewed_and_not_bought() {
    let ump = AllInOne::start("warn", &[]).await;
    // The examples' own journeys would send too.
    for id in ["viewed-not-bought", "vip-discount"] {
        let (status, body) = ump
            .post(KEY, &format!("/v1/journeys/{id}/archive"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    catalog(&ump, KEY).await;
    let phone = "+821055550042";
    let profile = json!({"traits": {"name": "Minji"}, "contacts": {"phone": phone},
        "consents": [
            {"purpose": "marketing", "channel": "sms", "granted": true, "source": "signup-form"},
            {"purpose": "marketing_night", "channel": "sms", "granted": true, "source": "signup-form"}]});
    let (status, body) = ump.put(KEY, "/v1/users/minji", &profile).await;
    assert_eq!(status, 200, "{body}");
    let journey = json!({
        "id": "still-thinking",
        "entry": {"event": "product_viewed"},
        "reentry": "never",
        "quiet_hours": {"start": "00:00", "end": "00:00"},
        "steps": [
            {"id": "wait", "delay": {"for": "3s"}, "next": "picks"},
            {"id": "picks", "send": {"channel": "sms", "template": "picks",
              "recommendations": {"strategy": "viewed_not_purchased", "limit": 1},
              "data": {"name": "$traits.name"}}}
        ]
    });
    let (status, body) = ump.post(KEY, "/v1/journeys", &journey).await;
    assert_eq!(status, 201, "{body}");
    // Asking for more than the step asks for is refused, naming the field.
    let mut bad = journey.clone();
    bad["id"] = json!("bad");
    bad["steps"][1]["send"]["data"]["second"] = json!("$recommendations.1.name");
    let (status, problem) = ump.post(KEY, "/v1/journeys", &bad).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "steps[1].send.data.second",
        "{problem}"
    );
    let (status, body) = ump
        .post(KEY, "/v1/journeys/still-thinking/activate", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Viewed the trail runner (entering), then the road runner, which they bought.
    event(&ump, "minji", "product_viewed", "r-a").await;
    event(&ump, "minji", "product_viewed", "r-b").await;
    event(&ump, "minji", "purchase", "r-b").await;
    let texts = texts_to(&ump, phone, 1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains(
            "Minji님, 보셨던 Trail runner 아직 고민 중이세요? https://shop.example/p/r-a"
        ),
        "{texts:?}"
    );
    assert!(!texts[0].contains("Road runner"), "{texts:?}");
    // Nothing more comes (one entry, one send).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = ump
        .outbox()
        .into_iter()
        .filter(|r| r["to"] == phone)
        .count();
    assert_eq!(again, 1);
}

/// Sends `message`, expecting 202.
async fn send(ump: &AllInOne, message: &Value) {
    let (status, body) = ump.post(KEY, "/v1/messages", message).await;
    assert_eq!(status, 202, "{message}: {body}");
}

/// The texts sent to `phone` once `count` have come (within 40 s).
async fn texts_to(ump: &AllInOne, phone: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let texts: Vec<String> = ump
            .outbox()
            .into_iter()
            .filter(|r| r["to"] == phone)
            .filter_map(|r| r["text"].as_str().map(str::to_owned))
            .collect();
        if texts.len() >= count {
            return texts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} to {phone}",
            texts.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_a_broadcast_carry_each_persons_recommendations() {
    let ump = AllInOne::start("warn", &[]).await;
    catalog(&ump, KEY).await;
    let consents = json!([
        {"purpose": "marketing", "channel": "sms", "granted": true, "source": "signup-form"},
        {"purpose": "marketing_night", "channel": "sms", "granted": true, "source": "signup-form"}]);
    // Hana viewed the trail runner; Jun viewed nothing.
    for (user, phone) in [("hana", "+821055550051"), ("jun", "+821055550052")] {
        let profile = json!({"traits": {"name": user, "club": "runners"},
            "contacts": {"phone": phone}, "consents": consents});
        let (status, body) = ump.put(KEY, &format!("/v1/users/{user}"), &profile).await;
        assert_eq!(status, 200, "{body}");
    }
    event(&ump, "hana", "product_viewed", "r-a").await;
    wait_first(
        &ump,
        "/v1/users/hana/recommendations?strategy=viewed_not_purchased",
        ("r-a", "viewed_not_purchased"),
    )
    .await;
    // Words about what the person viewed: no popular items in their place.
    let ask = json!({"strategy": "viewed_not_purchased", "limit": 1, "fallback": false});

    // In the template's text, and as an approved variable's value.
    send(
        &ump,
        &json!({"channel": "sms", "user": "hana", "template": "picks",
                "data": {"name": "Hana"}, "recommendations": ask}),
    )
    .await;
    send(
        &ump,
        &json!({"channel": "sms", "user": "hana", "template": "coupon", "recommendations": ask,
                "data": {"name": "Hana", "item": "$recommendations.0.name", "pct": 10}}),
    )
    .await;
    let mut texts = texts_to(&ump, "+821055550051", 2).await;
    texts.sort();
    assert_eq!(
        texts,
        [
            "Hana님, 보셨던 Trail runner 아직 고민 중이세요? https://shop.example/p/r-a",
            "Hana님, 보신 상품 Trail runner 10% 할인 쿠폰이 도착했어요",
        ],
    );

    // Refused, naming the field: each is the request's fault but the last, which is the person's.
    let base = json!({"channel": "sms", "user": "hana", "template": "picks",
        "data": {"name": "Hana"}, "recommendations": ask});
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut message = base.clone();
        patch(&mut message);
        message
    };
    for (message, field) in [
        (
            with(&|m| {
                m.as_object_mut().unwrap().remove("user");
                m["to"] = json!("+821055550051");
            }),
            "recommendations",
        ),
        (
            with(&|m| m["recommendations"]["strategy"] = json!("best")),
            "recommendations",
        ),
        (
            with(&|m| m["recommendations"]["limit"] = json!(0)),
            "recommendations.limit",
        ),
        (
            with(&|m| m["data"]["second"] = json!("$recommendations.1.name")),
            "data.second",
        ),
        (
            with(&|m| m["data"]["odd"] = json!("$recommendations.first")),
            "data.odd",
        ),
        (with(&|m| m["user"] = json!("jun")), "recommendations"),
    ] {
        let (status, problem) = ump.post(KEY, "/v1/messages", &message).await;
        assert_eq!(status, 422, "{message}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{message}: {problem}");
    }
    // By default a short list is filled from popular items (the cold start), each saying so.
    let filled = wait_first(
        &ump,
        "/v1/users/jun/recommendations?strategy=viewed_not_purchased&category=shoes",
        ("r-a", "popular"),
    )
    .await;
    send(
        &ump,
        &json!({"channel": "sms", "user": "jun", "template": "coupon",
                "recommendations": {"strategy": "viewed_not_purchased", "category": "shoes"},
                "data": {"name": "Jun", "item": "$recommendations.0.name", "pct": 5}}),
    )
    .await;
    assert_eq!(
        texts_to(&ump, "+821055550052", 1).await,
        ["Jun님, 보신 상품 Trail runner 5% 할인 쿠폰이 도착했어요"],
        "{filled}"
    );
    // In a batch, each item's own.
    let (status, answer) = ump
        .post(
            KEY,
            "/v1/messages/batch",
            &json!({"messages": [base, with(&|m| m["user"] = json!("jun")),
                {"channel": "sms", "to": "+821055550051", "template": "coupon",
                 "data": {"name": "Hana", "item": "$recommendations.0.name", "pct": 1}}]}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"][1]["error"]["errors"][0]["field"], "messages[1].recommendations",
        "{answer}"
    );
    assert_eq!(
        answer["results"][2]["error"]["errors"][0]["field"], "messages[2].data.item",
        "a reference without the ask is never sent as text: {answer}"
    );
    texts_to(&ump, "+821055550051", 3).await;

    // A broadcast: each member their own list; a member without one is skipped.
    let (status, body) = ump
        .post(
            KEY,
            "/v1/segments",
            &json!({"id": "runners", "condition": {"trait": {"path": "club", "equals": "runners"}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(40);
    while ump.get(KEY, "/v1/segments/runners").await.1["size"] != 2 {
        assert!(Instant::now() < deadline, "the segment never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, bad) = ump
        .post(
            KEY,
            "/v1/segments/runners/broadcast",
            &json!({"channel": "sms", "template": "picks", "data": {"name": "Runner"},
                    "recommendations": {"strategy": "viewed_not_purchased", "limit": 0}}),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["errors"][0]["field"], "recommendations.limit", "{bad}");
    let (status, started) = ump
        .post(
            KEY,
            "/v1/segments/runners/broadcast",
            &json!({"id": "runners-picks", "channel": "sms", "template": "picks",
                    "data": {"name": "Runner"}, "recommendations": ask}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let (_, state) = ump.get(KEY, "/v1/broadcasts/runners-picks").await;
        if state["status"] == "done" {
            break state;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (done["enqueued"].as_u64(), done["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    let texts = texts_to(&ump, "+821055550051", 4).await;
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("(광고)") && t.contains("Runner님, 보셨던 Trail runner")),
        "{texts:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        texts_to(&ump, "+821055550052", 1).await.len(),
        1,
        "Jun viewed nothing: no broadcast message"
    );
}

//! The founding scenario on the cluster mode's real stack (Kafka, MariaDB, Redis; the API with its
//! journey relay, the event processor, the delivery worker as its own process): people view a
//! product; those who do not buy it within the wait get one coupon, the buyers none, even though
//! the delivery worker is killed with SIGKILL while they wait and comes back only after their
//! coupons were due. Each coupon names the product the person viewed and did not buy, from
//! their recommendations (`viewed_not_purchased`) made by the relay when it sends.

mod stack;

use serde_json::{Value, json};
use stack::Stack;
use std::collections::HashMap;
use std::time::Duration;

const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 4}
  providers: [{name: sandbox, type: sandbox}]
  advertising: {senderName: UMP, optOut: 080-123-4567}
  templates:
    - {name: coupon, text: "{{ name }}님, {{ item }} 10% 할인 쿠폰"}
"#;

const PEOPLE: usize = 30;

fn user(p: usize) -> String {
    format!("shopper-{p:02}")
}

fn phone(p: usize) -> String {
    format!("+82100000{p:04}")
}

/// The journey's count `counter` over its steps.
async fn stat(stack: &Stack, counter: &str) -> i64 {
    let (status, view) = stack.get("/v1/journeys/coupon-for-viewers").await;
    assert_eq!(status, 200, "{view}");
    view["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["counter"] == counter)
        .map(|s| s["value"].as_i64().unwrap_or(0))
        .sum()
}

/// The coupons the sandbox provider took: recipient → message ids.
fn coupons(stack: &Stack) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(&stack.outbox).unwrap_or_default();
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for line in ump_core::testing::complete_lines(&text) {
        let record: Value = serde_json::from_str(line).expect("outbox line is JSON");
        if record["text"]
            .as_str()
            .is_some_and(|t| t.contains("할인 쿠폰"))
        {
            sent.entry(record["to"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(record["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coupon_goes_out_once_to_each_non_buyer_across_a_killed_delivery_worker() {
    let mut stack = Stack::start(CHANNELS).await;
    for p in 0..PEOPLE {
        let body = json!({"traits": {"name": user(p)}, "contacts": {"phone": phone(p)},
        "consents": [
            {"purpose": "marketing", "channel": "sms", "granted": true, "source": "signup-form"},
            {"purpose": "marketing_night", "channel": "sms", "granted": true, "source": "signup-form"},
        ]});
        let response = stack
            .http
            .put(format!("{}/v1/users/{}", stack.api, user(p)))
            .bearer_auth(&stack.key)
            .json(&body)
            .send()
            .await
            .expect("PUT profile");
        assert_eq!(response.status(), 200);
    }
    // The wait runs from each view: 20 s covers the events, their processing and the worker's
    // kill below on a slow machine (a coupon delivered before the kill fails the test).
    let journey = json!({
        "id": "coupon-for-viewers",
        "entry": {"event": "product_viewed"},
        "goal": {"event": "purchase", "match": ["item_id"]},
        "quiet_hours": {"start": "00:00", "end": "00:00"},
        "steps": [
            {"id": "wait-for-purchase", "wait": {"event": "purchase", "match": ["item_id"],
              "timeout": "20s", "on_event": "bought", "on_timeout": "coupon"}},
            {"id": "coupon", "send": {"channel": "sms", "template": "coupon",
              "recommendations": {"strategy": "viewed_not_purchased", "limit": 1},
              "data": {"item": "$recommendations.0.name", "name": "$traits.name"}}},
            {"id": "bought", "exit": {}}
        ]
    });
    let (status, body) = stack.post("/v1/journeys", &journey).await;
    assert_eq!(status, 201, "{body}");
    let products = json!({"items": [
        {"id": "sku-1", "name": "Wireless earbuds", "price": 89000, "currency": "KRW"},
        {"id": "sku-2", "name": "Phone case", "price": 15000, "currency": "KRW"}]});
    let (status, body) = stack.post("/v1/catalog/items", &products).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack
        .post("/v1/journeys/coupon-for-viewers/activate", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let processor = stack.start_event_processor().await;

    // Everyone views the product (entering the journey), then views and buys a phone case;
    // every even-numbered person buys the product too.
    let mut events = Vec::new();
    for p in 0..PEOPLE {
        events.push(json!({"user_id": user(p), "event": "product_viewed",
            "properties": {"item_id": "sku-1"}}));
        for name in ["product_viewed", "purchase"] {
            events.push(json!({"user_id": user(p), "event": name,
                "properties": {"item_id": "sku-2"}}));
        }
        if p % 2 == 0 {
            events.push(json!({"user_id": user(p), "event": "purchase",
                "properties": {"item_id": "sku-1"}}));
        }
    }
    let (status, body) = stack.post("/v1/events", &json!({"events": events})).await;
    assert_eq!(status, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stat(&stack, "entered").await < PEOPLE as i64
        || stat(&stack, "converted").await < (PEOPLE / 2) as i64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everyone entered in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stat(&stack, "sent").await, 0, "the wait is not over yet");

    // The delivery worker dies while the others wait; their coupons fall due without it.
    stack.kill_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stat(&stack, "sent").await < (PEOPLE / 2) as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the coupons never fell due"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(coupons(&stack).is_empty(), "no worker, no coupons");

    stack.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while coupons(&stack).len() < PEOPLE / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} coupons after the restart:\n{}",
            coupons(&stack).len(),
            stack.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a second copy, if one were coming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = std::fs::read_to_string(&stack.outbox).unwrap_or_default();
    let texts: Vec<&str> = text.lines().filter(|l| l.contains("할인 쿠폰")).collect();
    assert!(
        texts
            .iter()
            .all(|l| l.contains("Wireless earbuds") && !l.contains("Phone case")),
        "each coupon names the product viewed and not bought: {texts:?}"
    );
    let sent = coupons(&stack);
    for p in 0..PEOPLE {
        let ids = sent.get(&phone(p)).cloned().unwrap_or_default();
        if p % 2 == 0 {
            assert!(ids.is_empty(), "{} bought it: {ids:?}", user(p));
        } else {
            assert_eq!(ids.len(), 1, "{}: {ids:?}", user(p));
        }
    }
    assert_eq!(stat(&stack, "sent").await, (PEOPLE / 2) as i64);
    assert_eq!(stat(&stack, "timed_out").await, (PEOPLE / 2) as i64);
    processor.stop().await;
    stack.finish().await;
}

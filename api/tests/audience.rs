//! Events and segments over HTTP, all-in-one: events in, memberships and the person's view out;
//! a profile change moves a person between segments; tenants see nothing of each other; bad input
//! is a 4xx naming the field; erasure removes the person from every segment. (The cluster mode's
//! processor has its own tests on Kafka and MariaDB: `events/tests/processor.rs`.)

mod common;

use common::{AllInOne, KEY};
use serde_json::{Value, json};
use std::time::Duration;
use ump_core::testing::unique_name;

/// Waits until `GET path` answers with `check` holding.
async fn wait_for(ump: &AllInOne, key: &str, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ump.get(key, path).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn segment_ids(body: &Value) -> Vec<String> {
    body["segments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_people_into_segments_and_profile_changes_too() {
    let ump = AllInOne::start("warn", &[]).await;
    let (status, created) = ump
        .post(
            KEY,
            "/v1/segments",
            &json!({"id": "recent-buyers", "name": "Bought today",
                    "condition": {"performed": {"event": "order_placed", "within": "1d"}}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["size"], 0);
    let (status, gold) = ump
        .put(
            KEY,
            "/v1/segments/gold",
            &json!({"condition": {"all": [{"trait": {"path": "tier", "equals": "gold"}},
                                       {"in_segment": "recent-buyers"}]}}),
        )
        .await;
    assert_eq!(status, 201, "{gold}");

    let (status, accepted) = ump
        .post(
            KEY,
            "/v1/events",
            &json!({"events": [
                {"user_id": "shopper-1", "event": "product_viewed", "properties": {"item_id": "sku-9"}},
                {"user_id": "shopper-1", "event": "order_placed", "properties": {"item_id": "sku-9"},
                 "message_id": "order-1"},
                {"user_id": "shopper-1", "event": "order_placed", "properties": {"item_id": "sku-9"},
                 "message_id": "order-1"},
            ]}),
        )
        .await;
    assert_eq!((status, &accepted), (202, &json!({"accepted": 3})));
    let person = wait_for(&ump, KEY, "/v1/users/shopper-1", |p| {
        segment_ids(p).contains(&"recent-buyers".to_owned())
    })
    .await;
    assert_eq!(person["anonymous"], true, "an unknown id makes a profile");
    let purchases = person["recent_events"]
        .as_array()
        .expect("recent events")
        .iter()
        .filter(|e| e["event"] == "order_placed")
        .count();
    assert_eq!(
        purchases, 1,
        "the repeated message id counts once: {person}"
    );
    let members = wait_for(&ump, KEY, "/v1/segments/recent-buyers/members", |m| {
        m["items"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(members["items"][0]["user_id"], "shopper-1");
    assert_eq!(members["next"], Value::Null);

    // Identifying the person as gold moves them into the segment that asks for it.
    let (status, _) = ump
        .put(
            KEY,
            "/v1/users/shopper-1",
            &json!({"traits": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(status, 200);
    let person = wait_for(&ump, KEY, "/v1/users/shopper-1", |p| {
        segment_ids(p).contains(&"gold".to_owned())
    })
    .await;
    assert_eq!(person["recent_events"][0]["event"], "ump.segment_entered");
    assert_eq!(person["anonymous"], false, "identified now");
    wait_for(&ump, KEY, "/v1/segments/gold", |s| s["size"] == 1).await;

    // Members page in user id order.
    for i in 0..5 {
        let (status, body) = ump
            .post(
                KEY,
                "/v1/events",
                &json!({"user_id": format!("shopper-p{i}"), "event": "order_placed"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_for(&ump, KEY, "/v1/segments/recent-buyers", |s| s["size"] == 6).await;
    let (_, page) = ump
        .get(KEY, "/v1/segments/recent-buyers/members?limit=4")
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(4));
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, rest) = ump
        .get(
            KEY,
            &format!("/v1/segments/recent-buyers/members?limit=4&after={next}"),
        )
        .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(2));

    // A segment another refers to is kept; deleting the other first frees it.
    assert_eq!(ump.delete(KEY, "/v1/segments/recent-buyers").await.0, 409);
    assert_eq!(ump.delete(KEY, "/v1/segments/gold").await.0, 204);
    assert_eq!(ump.delete(KEY, "/v1/segments/gold").await.0, 404);
    let person = wait_for(&ump, KEY, "/v1/users/shopper-1", |p| {
        !segment_ids(p).contains(&"gold".to_owned())
    })
    .await;
    assert!(segment_ids(&person).contains(&"recent-buyers".to_owned()));

    // Erasure takes the person out of every segment and leaves no state.
    let (status, erased) = ump.delete(KEY, "/v1/users/shopper-1").await;
    assert_eq!(status, 200);
    assert_eq!(erased["automation_state"], true, "{erased}");
    let (_, members) = ump
        .get(KEY, "/v1/segments/recent-buyers/members?limit=1000")
        .await;
    assert!(
        !members.to_string().contains("shopper-1\""),
        "erased person still a member: {members}"
    );
    assert_eq!(ump.get(KEY, "/v1/users/shopper-1").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_nothing_of_each_others_people_and_segments() {
    let ump = AllInOne::start("warn", &[]).await;
    let (other, _) = ump.create_key(&unique_name("tenant"));
    ump.wait_key_works(&other).await;
    // The first start's example segments are the default tenant's.
    let (_, mine) = ump.get(KEY, "/v1/segments").await;
    assert!(mine.to_string().contains("\"vip\""), "{mine}");
    let (status, theirs) = ump.get(&other, "/v1/segments").await;
    assert_eq!((status, theirs), (200, json!({"items": []})));
    assert_eq!(ump.get(&other, "/v1/segments/vip").await.0, 404);
    assert_eq!(ump.get(&other, "/v1/segments/vip/members").await.0, 404);
    assert_eq!(ump.get(&other, "/v1/users/example-kim").await.0, 404);

    // The same user id in two tenants is two people.
    let (status, _) = ump
        .post(
            &other,
            "/v1/segments",
            &json!({"id": "vip", "condition": {"performed": {"event": "purchase", "within": "1d"}}}),
        )
        .await;
    assert_eq!(status, 201);
    ump.post(
        &other,
        "/v1/events",
        &json!({"user_id": "example-kim", "event": "purchase"}),
    )
    .await;
    let theirs = wait_for(&ump, &other, "/v1/users/example-kim", |p| {
        segment_ids(p) == ["vip"]
    })
    .await;
    assert_eq!(theirs["anonymous"], true);
    let (_, mine) = ump.get(KEY, "/v1/users/example-kim").await;
    assert_eq!(mine["anonymous"], false);
    assert_eq!(mine["traits"]["name"], "김민수");
    let (_, their_members) = ump.get(&other, "/v1/segments/vip/members").await;
    assert_eq!(their_members["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_and_segments_are_refused_naming_the_field() {
    let ump = AllInOne::start("warn", &[]).await;
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"user_id": "u", "event": "e"}))
        .collect();
    let events: [(Value, &str); 8] = [
        (
            json!({"user_id": "u", "event": "e", "colour": "red"}),
            "colour",
        ),
        (
            json!({"events": [{"user_id": "u", "event": "e", "properties": {"x": "y".repeat(9000)}}]}),
            "events[0].properties",
        ),
        (
            json!({"events": [{"user_id": "u", "event": "e"}, {"user_id": "u", "event": "e", "timestamp": future}]}),
            "events[1].timestamp",
        ),
        (
            json!({"user_id": "u", "event": "e", "timestamp": "1970-01-01T00:00:00Z"}),
            "timestamp",
        ),
        (
            json!({"user_id": "u", "event": "e", "timestamp": "yesterday"}),
            "timestamp",
        ),
        (json!({"events": many}), "events"),
        (json!({"user_id": "", "event": "e"}), "user_id"),
        (
            json!({"user_id": "u", "event": "ump.segment_entered"}),
            "event",
        ),
    ];
    for (body, field) in events {
        let (status, problem) = ump.post(KEY, "/v1/events", &body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    // Nothing of a refused batch was accepted.
    assert_eq!(ump.get(KEY, "/v1/users/u").await.0, 404);

    let segments: [(Value, &str); 7] = [
        (
            json!({"id": "s1", "condition": {"sometimes": {}}}),
            "condition",
        ),
        (
            json!({"id": "s1", "condition": {"performed": {"event": "e", "within": "0s"}}}),
            "condition.performed.within",
        ),
        (
            json!({"id": "s1", "condition": {"all": []}}),
            "condition.all",
        ),
        (
            json!({"id": "s1", "condition": {"in_segment": "nowhere"}}),
            "condition",
        ),
        (
            json!({"id": "s1", "condition": {"not": {"in_segment": "s1"}}}),
            "condition",
        ),
        (
            json!({"id": "Not An Id", "condition": {"trait": {"path": "a", "exists": true}}}),
            "id",
        ),
        (json!({"id": "s1"}), "condition"),
    ];
    for (body, field) in segments {
        let (status, problem) = ump.post(KEY, "/v1/segments", &body).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    let (status, problem) = ump
        .put(
            KEY,
            "/v1/segments/s2",
            &json!({"id": "s3", "condition": {"trait": {"path": "a", "exists": true}}}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("id")),
        "{problem}"
    );
    assert_eq!(ump.get(KEY, "/v1/segments/UPPER").await.0, 422);
    assert_eq!(
        ump.get(KEY, "/v1/segments/vip/members?limit=0").await.0,
        400
    );
    let (status, _) = ump
        .post(
            KEY,
            "/v1/segments",
            &json!({"id": "vip", "condition": {"trait": {"path": "a", "exists": true}}}),
        )
        .await;
    assert_eq!(status, 409, "an existing id is changed with PUT");
}

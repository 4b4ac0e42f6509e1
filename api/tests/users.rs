//! Customer profiles over HTTP, all-in-one (the MySQL store keeps the same contract:
//! `core/tests/mysql_history.rs`): identify, read, tenant isolation, bad input named by field,
//! and erasure that leaves the person's number nowhere in the history.

mod common;

use common::{AllInOne, KEY};
use serde_json::{Value, json};
use ump_core::testing::unique_name;

async fn put(ump: &AllInOne, key: &str, user: &str, body: &Value) -> (u16, Value) {
    let response = ump
        .http
        .put(format!("{}/v1/users/{user}", ump.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete(ump: &AllInOne, key: &str, user: &str) -> (u16, Value) {
    let response = ump
        .http
        .delete(format!("{}/v1/users/{user}", ump.url))
        .bearer_auth(key)
        .send()
        .await
        .expect("DELETE");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_kept_per_tenant_and_erasure_erases() {
    let ump = AllInOne::start("warn", &[]).await;
    let phone = "+821055556666";
    let (status, profile) = put(
        &ump,
        KEY,
        "kim-1",
        &json!({"traits": {"tier": "vip", "name": "김"}, "locale": "ko-KR",
                "contacts": {"phone": phone},
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                              "source": "signup-form"}]}),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["traits"]["tier"], "vip");
    assert_eq!(profile["consents"][0]["source"], "signup-form");
    assert!(
        profile["consents"][0]["at"].is_string(),
        "when it was given"
    );

    // A second update merges traits and adds to the consent record.
    let (status, profile) = put(
        &ump,
        KEY,
        "kim-1",
        &json!({"traits": {"name": null},
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": false,
                              "source": "unsubscribe-link"}]}),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["traits"], json!({"tier": "vip"}));
    assert_eq!(profile["consents"].as_array().map(Vec::len), Some(2));
    let (status, read) = ump.get(KEY, "/v1/users/kim-1").await;
    assert_eq!((status, &read), (200, &profile));

    // Another tenant sees nothing of it.
    let (other, _) = ump.create_key(&unique_name("tenant"));
    ump.wait_key_works(&other).await;
    assert_eq!(ump.get(&other, "/v1/users/kim-1").await.0, 404);
    assert_eq!(delete(&ump, &other, "kim-1").await.1["profile"], false);

    // Bad input: 422 naming the field.
    for (body, field) in [
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"contacts": {"phone": "010-1234"}}), "contacts.phone"),
        (
            json!({"consents": [{"purpose": "spam", "channel": "sms", "granted": true, "source": "x"}]}),
            "consents[0].purpose",
        ),
        (json!({"tratis": {}}), "tratis"),
        (json!({"traits": []}), "traits"),
    ] {
        let (status, problem) = put(&ump, KEY, "kim-1", &body).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let long = "u".repeat(256);
    assert_eq!(put(&ump, KEY, &long, &json!({})).await.0, 422);

    // A message to Kim, then erasure: the number is nowhere in the history any more.
    let id = ump
        .send(
            KEY,
            &json!({"channel": "sms", "to": phone, "body": "주문이 접수되었습니다"}),
        )
        .await;
    ump.wait_status(KEY, &id, "sent").await;
    let (status, erased) = delete(&ump, KEY, "kim-1").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased, json!({"profile": true, "messages_masked": 1}));
    assert_eq!(ump.get(KEY, "/v1/users/kim-1").await.0, 404);
    let (_, view) = ump.get(KEY, &format!("/v1/messages/{id}")).await;
    assert_eq!(view["to"], "+8210****6666");
    assert!(!view.to_string().contains(phone), "{view}");
    let (_, page) = ump
        .get(KEY, &format!("/v1/messages?to=%2B{}", &phone[1..]))
        .await;
    assert_eq!(
        page["items"],
        json!([]),
        "found by the number after erasure"
    );
}

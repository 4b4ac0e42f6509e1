//! Tenant isolation in the cluster mode (MySQL history, Redis idempotency keys): two tenants'
//! keys on one stack, and every read endpoint, with every filter and a cursor, shows each only
//! its own messages. (`api/tests/security.rs` does the same on the all-in-one mode's SQLite,
//! with its sandbox outbox.)

mod stack;

use serde_json::{Value, json};
use stack::{DEFAULT_CHANNELS, Stack};
use std::time::Duration;
use ump_core::keys::{ApiKeyStore, MySqlKeys, PresentedKey};
use ump_core::testing::unique_name;

async fn get_as(stack: &Stack, key: &str, path: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}{path}", stack.api))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send_as(stack: &Stack, key: &str, body: &Value, idempotency_key: Option<&str>) -> String {
    let mut request = stack
        .http
        .post(format!("{}/v1/messages", stack.api))
        .bearer_auth(key)
        .json(body);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.send().await.expect("POST");
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("JSON");
    answer["id"].as_str().expect("id").to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {page}"))
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_endpoint_shows_a_tenant_only_its_own_messages() {
    let stack = Stack::start(DEFAULT_CHANNELS).await;
    let a = stack.key.clone();
    let b = format!("ump_{}_secret-of-b", unique_name("kb").replace('-', ""));
    MySqlKeys::new(stack.db.pool.clone())
        .put(
            &PresentedKey::parse(&b).key_id,
            &format!("{}-b", stack.tenant),
            &b,
            "tenant b",
        )
        .await
        .expect("key b");

    let mut a_ids = Vec::new();
    for to in ["+821011110001", "+821011110002"] {
        a_ids.push(
            send_as(
                &stack,
                &a,
                &json!({"channel": "sms", "to": to, "body": "A"}),
                None,
            )
            .await,
        );
    }
    let mut b_ids = vec![
        send_as(
            &stack,
            &b,
            &json!({"channel": "sms", "to": "+821022220002", "body": "B"}),
            None,
        )
        .await,
    ];
    // The same Idempotency-Key and body from both: two messages, never the other's answer.
    let same = json!({"channel": "sms", "to": "+821033330003", "body": "same"});
    let order = unique_name("order");
    a_ids.push(send_as(&stack, &a, &same, Some(&order)).await);
    b_ids.push(send_as(&stack, &b, &same, Some(&order)).await);
    assert_ne!(a_ids[2], b_ids[1], "B got A's idempotent answer");
    stack
        .wait_for("5 sent", Duration::from_secs(60), |c| {
            c.get("sent") == Some(&5)
        })
        .await;

    let since = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .replace('+', "%2B");
    for (key, other_key, mine, theirs, their_to) in [
        (&a, &b, &a_ids, &b_ids, "%2B821022220002"),
        (&b, &a, &b_ids, &a_ids, "%2B821011110001"),
    ] {
        for id in mine {
            assert_eq!(
                get_as(&stack, key, &format!("/v1/messages/{id}")).await.0,
                200
            );
        }
        for id in theirs {
            let (status, body) = get_as(&stack, key, &format!("/v1/messages/{id}")).await;
            assert_eq!(status, 404, "another tenant's {id}: {body}");
        }
        for query in [
            String::new(),
            format!("?to={their_to}"),
            "?to=%2B821033330003".into(),
            "?channel=sms".into(),
            "?status=sent".into(),
            format!("?since={since}"),
            "?limit=1000".into(),
        ] {
            let (status, page) = get_as(&stack, key, &format!("/v1/messages{query}")).await;
            assert_eq!(status, 200, "{page}");
            for id in ids(&page) {
                assert!(mine.contains(&id), "{id} listed with {query:?}");
            }
        }
        let (_, all) = get_as(&stack, key, "/v1/messages").await;
        assert_eq!(ids(&all).len(), mine.len(), "{all}");
        // A cursor is a position only: the other tenant gets its own messages from it.
        let (_, first) = get_as(&stack, key, "/v1/messages?limit=1").await;
        let cursor = first["next_cursor"].as_str().expect("a second page");
        let (status, page) =
            get_as(&stack, other_key, &format!("/v1/messages?cursor={cursor}")).await;
        assert_eq!(status, 200);
        for id in ids(&page) {
            assert!(!mine.contains(&id), "another tenant's cursor showed {id}");
        }
        for window in ["1h", "24h"] {
            let (status, stats) = get_as(&stack, key, &format!("/v1/stats?window={window}")).await;
            assert_eq!(status, 200, "{stats}");
            assert_eq!(stats["totals"]["total"], mine.len(), "{window}: {stats}");
            assert_eq!(stats["totals"]["sent"], mine.len(), "{window}: {stats}");
        }
    }
    stack.finish().await;
}

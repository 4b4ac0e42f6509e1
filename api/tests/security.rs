//! The API's security promises, on the real `ump` binary (all-in-one) and, for revocation, on the
//! cluster mode's MySQL key store: a key over its rate gets `429` with `Retry-After`; a revoked key
//! stops working within the key cache's refresh; a tenant sees nothing of another tenant through
//! any read endpoint; recipients appear in the logs only masked.

mod common;

use axum::http::header;
use common::{AllInOne, KEY, bearer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ump_api::auth::{KeyCache, REFRESH_EVERY};
use ump_core::keys::{ApiKeyStore, MySqlKeys, PresentedKey, generate_key};
use ump_core::testing::{TestDatabase, unique_name};

/// The revocation bound: one refresh interval, plus the time of the refresh itself and of the
/// polling request on a loaded machine.
const REVOCATION_BOUND: Duration = REFRESH_EVERY.saturating_add(Duration::from_secs(2));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_keep_theirs() {
    let ump = AllInOne::start(
        "warn",
        &[
            ("UMP_KEY_RATE_PER_SECOND", "1"),
            ("UMP_KEY_RATE_BURST", "3"),
        ],
    )
    .await;
    let (other, _) = ump.create_key(&unique_name("tenant-b"));
    let send = |key: &'static str, n: usize| {
        let request = ump
            .http
            .post(format!("{}/v1/messages", ump.url))
            .bearer_auth(key)
            .json(&json!({"channel": "sms", "to": "+821012345678", "body": format!("rate {n}")}));
        async move { request.send().await.expect("POST") }
    };

    // The burst goes through at once; then the key is held to 1 request a second. Requests are
    // sent until the first 429 (a stalled machine may earn the key one more request per second).
    let started = Instant::now();
    let mut accepted = 0;
    let refused = loop {
        let response = send(KEY, accepted).await;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 202);
        accepted += 1;
        assert!(accepted < 10, "the rate limit never applied");
    };
    let earned = started.elapsed().as_secs() as usize + 1;
    assert!(
        (3..=3 + earned).contains(&accepted),
        "{accepted} requests accepted before the first 429 (burst 3, 1/s)"
    );
    assert_eq!(
        refused
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let retry_after: u64 = refused
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert_eq!(
        retry_after, 1,
        "at 1 request a second, the wait is at most 1 s"
    );
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["type"], "https://ump.dev/problems/rate-limited");
    assert_eq!(problem["status"], 429);

    // Every endpoint of the key counts against the same rate; another key has its own.
    let (status, _) = ump.get(KEY, "/v1/messages").await;
    assert_eq!(status, 429, "reads share the key's rate");
    let (status, _) = ump.get(&other, "/v1/messages").await;
    assert_eq!(status, 200, "another key is not held back");

    // After Retry-After, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    assert_eq!(send(KEY, 99).await.status(), 202);

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
        metrics.contains(r#"ump_api_rejected_total{reason="rate_limited"}"#),
        "429s are counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_with_the_cli_stops_working_within_the_refresh_bound() {
    let ump = AllInOne::start("warn", &[]).await;
    let (key, key_id) = ump.create_key(&unique_name("tenant-r"));
    ump.wait_key_works(&key).await;

    ump.admin(&["keys", "revoke", &key_id]);
    // The bound runs from the revocation stored, not from the CLI's start.
    let revoked_at = Instant::now();
    let took = loop {
        let (status, _) = ump.get(&key, "/v1/messages?limit=1").await;
        if status == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < REVOCATION_BOUND,
            "the revoked key still works after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "all-in-one: a revoked key stopped working after {took:?} (bound {REVOCATION_BOUND:?})"
    );
    // It stays revoked: the lookup of a key the cache no longer holds does not bring it back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ump.get(&key, "/v1/messages").await.0, 401);
    assert!(!ump.admin(&["keys", "list"]).contains(&key_id));
    assert_eq!(ump.get(KEY, "/v1/messages").await.0, 200, "other keys work");
}

/// The cluster mode: the API's key cache on MySQL, the key revoked by another process (another
/// connection pool, as `ump keys revoke` with UMP_MYSQL_URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_in_mysql_stops_working_within_the_refresh_bound() {
    let db = TestDatabase::create().await;
    let store: Arc<dyn ApiKeyStore> = Arc::new(MySqlKeys::new(db.pool.clone()));
    let (key_id, key) = generate_key();
    store
        .put(&key_id, &unique_name("tenant"), &key, "revocation test")
        .await
        .expect("store key");
    let cache = KeyCache::new(Arc::clone(&store));
    cache.refresh().await.expect("refresh");
    cache.spawn_refresh(REFRESH_EVERY);
    assert!(cache.authenticate(&bearer(&key)).await.is_ok());

    let admin = ump_core::store::connect_mysql(&db.url, 1)
        .await
        .expect("admin pool");
    let revoked_at = Instant::now();
    MySqlKeys::new(admin.clone())
        .revoke(&key_id)
        .await
        .expect("revoke");
    let took = loop {
        match cache.authenticate(&bearer(&key)).await {
            Err(problem) => {
                assert_eq!(problem.status, 401, "{problem:?}");
                break revoked_at.elapsed();
            }
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < REVOCATION_BOUND,
                    "the revoked key still works after {:?}",
                    revoked_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("cluster: a revoked key stopped working after {took:?} (bound {REVOCATION_BOUND:?})");
    assert_eq!(PresentedKey::parse(&key).key_id, key_id);
    admin.close().await;
    db.drop_database().await;
}

/// Ids of a `GET /v1/messages` page.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {page}"))
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_endpoint_shows_a_tenant_anything_of_another() {
    let ump = AllInOne::start("warn", &[]).await;
    let (b, _) = ump.create_key(&unique_name("tenant-b"));
    ump.wait_key_works(&b).await;
    let b: &str = &b;

    let a_sends = [
        json!({"channel": "sms", "to": "+821011110001", "body": "A의 비밀"}),
        json!({"channel": "email", "to": "alice@example.com", "template": "welcome", "data": {"name": "앨리스"}}),
        json!({"channel": "push", "to": "device-token-of-a-0001", "body": "A only"}),
    ];
    let mut a_ids = Vec::new();
    for body in &a_sends {
        a_ids.push(ump.send(KEY, body).await);
    }
    let b_id = ump
        .send(
            b,
            &json!({"channel": "sms", "to": "+821022220002", "body": "B의 메시지"}),
        )
        .await;
    // The same Idempotency-Key and body from both tenants: two messages, never a replay of the
    // other tenant's answer.
    let idempotent = |key: &str| {
        let request = ump
            .http
            .post(format!("{}/v1/messages", ump.url))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-1")
            .json(&json!({"channel": "sms", "to": "+821033330003", "body": "same"}));
        async move {
            let response = request.send().await.expect("POST");
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.expect("JSON")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let a_same = idempotent(KEY).await;
    let b_same = idempotent(b).await;
    assert_ne!(a_same, b_same, "B got A's idempotent answer");
    a_ids.push(a_same);
    let b_ids = [b_id, b_same];
    for id in &a_ids {
        ump.wait_status(KEY, id, "sent").await;
    }
    for id in &b_ids {
        ump.wait_status(b, id, "sent").await;
    }

    for (key, mine, theirs, their_recipient) in [
        (KEY, &a_ids[..], &b_ids[..], "%2B821022220002"),
        (b, &b_ids[..], &a_ids[..], "%2B821011110001"),
    ] {
        let who = if key == KEY { "A" } else { "B" };
        // Every message by id: its own found, the other's 404 (not 403: nothing to learn).
        for id in mine {
            assert_eq!(ump.get(key, &format!("/v1/messages/{id}")).await.0, 200);
        }
        for id in theirs {
            let (status, problem) = ump.get(key, &format!("/v1/messages/{id}")).await;
            assert_eq!(status, 404, "{who} reads another tenant's {id}: {problem}");
        }
        // Listing, with every filter: only its own.
        let since = (chrono::Utc::now() - chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace('+', "%2B");
        for query in [
            String::new(),
            format!("?to={their_recipient}"),
            "?to=%2B821033330003".into(),
            "?channel=sms".into(),
            "?channel=email".into(),
            "?status=sent".into(),
            format!("?since={since}"),
            "?limit=1000".into(),
        ] {
            let (status, page) = ump.get(key, &format!("/v1/messages{query}")).await;
            assert_eq!(status, 200, "{page}");
            for id in ids(&page) {
                assert!(mine.contains(&id), "{who} lists {id} with {query:?}");
            }
        }
        // A cursor is only a position: another tenant's does not open its pages.
        let (_, first) = ump.get(key, "/v1/messages?limit=1").await;
        if let Some(cursor) = first["next_cursor"].as_str() {
            let other = if key == KEY { b } else { KEY };
            let (status, page) = ump
                .get(other, &format!("/v1/messages?cursor={cursor}"))
                .await;
            assert_eq!(status, 200);
            for id in ids(&page) {
                assert!(!mine.contains(&id), "a cursor of {who} showed {who}'s {id}");
            }
        }
        // The dashboard's figures: only its own messages are counted.
        for window in ["1h", "24h"] {
            let (status, stats) = ump.get(key, &format!("/v1/stats?window={window}")).await;
            assert_eq!(status, 200, "{stats}");
            assert_eq!(
                stats["totals"]["total"],
                mine.len(),
                "{who}'s {window} stats: {stats}"
            );
        }
        // The sandbox outbox: only what was sent for it.
        let (status, outbox) = ump.get(key, "/v1/outbox?limit=500").await;
        assert_eq!(status, 200, "{outbox}");
        let items = outbox["items"].as_array().expect("items");
        assert_eq!(items.len(), mine.len(), "{who}'s outbox: {outbox}");
        for item in items {
            let id = item["id"].as_str().expect("id").to_owned();
            assert!(mine.contains(&id), "{who}'s outbox shows {id}");
        }
    }

    // The dashboard page itself is the same static file for everyone: no tenant's data in it
    // (it reads everything above through the key it is given).
    let page = ump
        .http
        .get(format!("{}/", ump.url))
        .send()
        .await
        .expect("GET /")
        .text()
        .await
        .expect("page");
    for secret in a_ids.iter().chain(b_ids.iter()).map(String::as_str).chain([
        "+821011110001",
        "alice@example.com",
        "+821022220002",
    ]) {
        assert!(
            !page.contains(secret),
            "the dashboard page contains {secret}"
        );
    }
    // Without a key, no data endpoint answers.
    for path in [
        "/v1/messages",
        "/v1/stats",
        "/v1/outbox",
        &format!("/v1/messages/{}", a_ids[0]),
    ] {
        let status = ump
            .http
            .get(format!("{}{path}", ump.url))
            .send()
            .await
            .expect("GET")
            .status();
        assert_eq!(status, 401, "{path} without a key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_appear_in_debug_logs_only_masked() {
    let ump = AllInOne::start("debug", &[]).await;
    let recipients = [
        ("sms", "+821012345678", "+8210****5678"),
        ("email", "kim.minsu@example.com", "k***@example.com"),
        ("push", "device-token-0123456789abcdef", "devi***cdef"),
    ];
    let mut ids = Vec::new();
    for (channel, to, _) in recipients {
        let body = match channel {
            "email" => {
                json!({"channel": channel, "to": to, "template": "welcome", "data": {"name": "김민수"}})
            }
            _ => json!({"channel": channel, "to": to, "body": "로그 점검"}),
        };
        ids.push(ump.send(KEY, &body).await);
    }
    for id in &ids {
        ump.wait_status(KEY, id, "sent").await;
    }
    // Reads by recipient, and a refused send naming one, go through the log too.
    let (status, _) = ump.get(KEY, "/v1/messages?to=%2B821012345678").await;
    assert_eq!(status, 200);
    let (status, _) = ump
        .post(
            KEY,
            "/v1/messages",
            &json!({"channel": "email", "to": "kim.minsu@example.com"}),
        )
        .await;
    assert_eq!(status, 422);

    let log = ump.output();
    assert!(
        log.contains("provider answered") && log.contains("accepted"),
        "the run logged at debug: {log}"
    );
    for (_, to, masked) in recipients {
        let leaks: Vec<&str> = log.lines().filter(|line| line.contains(to)).collect();
        assert!(
            leaks.is_empty(),
            "{to} is in the log:\n{}",
            leaks.join("\n")
        );
        assert!(
            log.contains(masked),
            "{to} is logged masked as {masked}:\n{log}"
        );
    }
}

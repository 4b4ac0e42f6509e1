//! The Idempotency-Key states on the real Redis: first use goes ahead, a second use while the first
//! is in flight is a conflict (409), a completed key replays its answer, another body is a
//! mismatch (422), and an abandoned key (the request failed) can be used again.

use ump_api::idempotency::{Begin, IdempotencyStore, RedisIdempotency, body_hash};
use ump_core::testing::{infra, unique_name};

#[tokio::test]
async fn keys_move_from_in_flight_to_replay_and_refuse_other_bodies() {
    let client = redis::Client::open(infra().redis_url().as_str()).expect("Redis: client");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
    let store = RedisIdempotency::new(conn);
    let tenant = unique_name("tenant");
    let body = body_hash(br#"{"channel":"sms"}"#);
    let other = body_hash(br#"{"channel":"email"}"#);

    assert_eq!(
        store.begin(&tenant, "order-1", &body).await.expect("begin"),
        Begin::New
    );
    assert_eq!(
        store.begin(&tenant, "order-1", &body).await.expect("begin"),
        Begin::InFlight
    );
    assert_eq!(
        store
            .begin(&tenant, "order-1", &other)
            .await
            .expect("begin"),
        Begin::Mismatch
    );

    let answer = r#"{"id":"0193","status":"accepted"}"#;
    store
        .complete(&tenant, "order-1", &body, answer)
        .await
        .expect("complete");
    assert_eq!(
        store.begin(&tenant, "order-1", &body).await.expect("begin"),
        Begin::Replay(answer.to_owned())
    );
    assert_eq!(
        store
            .begin(&tenant, "order-1", &other)
            .await
            .expect("begin"),
        Begin::Mismatch
    );

    // Keys are per tenant.
    let stranger = unique_name("tenant");
    assert_eq!(
        store
            .begin(&stranger, "order-1", &body)
            .await
            .expect("begin"),
        Begin::New
    );

    // A request that failed gives its key back.
    assert_eq!(
        store.begin(&tenant, "order-2", &body).await.expect("begin"),
        Begin::New
    );
    store.abandon(&tenant, "order-2").await.expect("abandon");
    assert_eq!(
        store.begin(&tenant, "order-2", &body).await.expect("begin"),
        Begin::New
    );
}

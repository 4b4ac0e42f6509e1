//! The Idempotency-Key states on the real Redis keep the same contract as the all-in-one store
//! (`ump_api::idempotency::contract`): first use goes ahead with its plan of ids, a second use
//! while the first is in flight is a conflict (409, with how long to wait), a completed key
//! replays its answer, another body is a mismatch (422), a key refused outright can be used
//! again, and a request whose outcome is unknown (503, or it died) hands its ids to the retry.

use ump_api::idempotency::{RedisIdempotency, contract};
use ump_core::testing::{infra, unique_name};

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    let client = redis::Client::open(infra().redis_url().as_str()).expect("Redis: client");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
    let store = RedisIdempotency::new(conn);
    contract::keys_walk_the_states(&store, &unique_name("tenant")).await;
    contract::a_lapsed_claim_is_taken_over_with_its_plan(&store, &unique_name("tenant")).await;
}

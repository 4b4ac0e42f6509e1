//! The real Redis from `scripts/infra up`: it honours `SET NX EX`, and the Redis dedupe store keeps
//! the same contract as the in-process one (`ump_worker::dedupe::contract`).

use std::time::Duration;
use ump_core::testing::{infra, unique_name};
use ump_worker::dedupe::{Claim, DedupeStore, RedisDedupe, contract};

#[tokio::test]
async fn the_redis_dedupe_keeps_the_contract() {
    let url = infra().redis_url();
    let client = redis::Client::open(url.as_str()).expect("Redis: client");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
    let make = |instance: &str, lease| RedisDedupe::new(conn.clone(), instance.into(), lease);
    contract::claims_follow_the_state_machine(&make, &unique_name("ump-dedupe")).await;
    contract::a_lapsed_claim_is_taken_over_and_its_release_changes_nothing(
        &make,
        &unique_name("ump-dedupe"),
    )
    .await;
    contract::a_settled_message_is_forgotten_after_what_is_kept(
        &make,
        [&unique_name("ump-dedupe"), &unique_name("ump-dedupe")],
    )
    .await;
}

#[tokio::test]
async fn set_nx_ex_claims_a_key_once_with_a_ttl() {
    let url = infra().redis_url();
    let client = redis::Client::open(url.as_str()).expect("Redis: client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
    let key = unique_name("ump-smoke");

    let claim = |owner: &'static str| {
        redis::cmd("SET")
            .arg(&key)
            .arg(owner)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .clone()
    };
    let first: Option<String> = claim("worker-a")
        .query_async(&mut conn)
        .await
        .expect("Redis: SET NX EX");
    assert_eq!(first.as_deref(), Some("OK"), "first claim wins");
    let second: Option<String> = claim("worker-b")
        .query_async(&mut conn)
        .await
        .expect("Redis: SET NX EX");
    assert_eq!(second, None, "second claim loses");

    let owner: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("Redis: GET");
    assert_eq!(owner, "worker-a");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("Redis: TTL");
    assert!((1..=60).contains(&ttl), "TTL {ttl} out of range");

    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("Redis: DEL");
}

/// A `sent` mark stays for the whole dedupe window, one per message sent in it: it keeps only the
/// id and the state, small enough for Redis's compact string encoding, so the window costs Redis
/// (its memory, its fork for an AOF rewrite, the rewrite itself) as little as it can. A mark
/// written by an earlier version (`id|sent|instance|seconds`) still reads as sent.
#[tokio::test]
async fn a_sent_mark_is_compact_and_an_earlier_versions_mark_still_reads_as_sent() {
    let url = infra().redis_url();
    let client = redis::Client::open(url.as_str()).expect("Redis: client");
    let mut conn = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("Redis: connect: {e}"));
    let store = RedisDedupe::new(conn.clone(), "worker-a".into(), Duration::from_secs(60));
    let (key, id) = (unique_name("ump-dedupe"), uuid::Uuid::now_v7().to_string());
    let window = Duration::from_secs(600);
    assert_eq!(
        store.claim(&key, &id, window).await.unwrap(),
        Claim::Claimed
    );
    store.mark_sent(&key, &id, window).await.unwrap();
    let (value, encoding, ttl): (String, String, i64) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("OBJECT")
        .arg("ENCODING")
        .arg(&key)
        .cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("Redis: GET, OBJECT ENCODING, TTL");
    assert_eq!(value, format!("{id}|sent||"));
    assert_eq!(encoding, "embstr", "{value:?} ({} bytes)", value.len());
    assert!(
        (590..=600).contains(&ttl),
        "the claim's window is kept: {ttl}"
    );

    let earlier = unique_name("ump-dedupe");
    let _: () = redis::cmd("SET")
        .arg(&earlier)
        .arg(format!("{id}|sent|worker-old|1796565920"))
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .expect("Redis: SET");
    let other = RedisDedupe::new(conn.clone(), "worker-b".into(), Duration::from_secs(60));
    assert_eq!(
        other.claim(&earlier, &id, window).await.unwrap(),
        Claim::AlreadySent
    );
    assert_eq!(
        other.claim(&earlier, "another", window).await.unwrap(),
        Claim::Duplicate { of: id.clone() }
    );
}

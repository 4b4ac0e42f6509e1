//! The behaviour every `BroadcastStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::broadcast`'s tests): one sender at a time per broadcast, progress only
//! from the holder, a dead holder's broadcast taken over when its lease runs out.

use crate::broadcast::{Broadcast, BroadcastStatus, BroadcastStore, Progress};
use chrono::{Duration, Utc};

pub async fn one_sender_at_a_time_and_takeover_after_the_lease(store: &dyn BroadcastStore) {
    let now = Utc::now();
    let lease = std::time::Duration::from_secs(30);
    let broadcast = Broadcast {
        id: "b-1".into(),
        tenant: "t1".into(),
        segment_id: "vip".into(),
        request: serde_json::json!({"channel": "sms", "body": "hi"}),
        status: BroadcastStatus::Running,
        cursor: None,
        enqueued: 0,
        skipped: 0,
        last_error: None,
        created_at: now,
        updated_at: now,
    };
    assert!(store.create(&broadcast).await.expect("create"));
    assert!(
        !store.create(&broadcast).await.expect("again"),
        "the id stands"
    );
    assert!(
        store.broadcast("t2", "b-1").await.expect("get").is_none(),
        "per tenant"
    );

    let mine = store
        .claim("a", now, lease)
        .await
        .expect("claim")
        .expect("one to send");
    assert_eq!(mine.id, "b-1");
    assert!(
        store.claim("b", now, lease).await.expect("claim").is_none(),
        "held by a"
    );
    let page = Progress {
        cursor: "kim".into(),
        enqueued: 400,
        skipped: 100,
    };
    assert!(
        store
            .advance(&mine, "a", &page, now, lease)
            .await
            .expect("advance")
    );
    assert!(
        !store
            .advance(&mine, "b", &page, now, lease)
            .await
            .expect("advance"),
        "not b's"
    );

    // a dies; after the lease b takes it over, from the cursor, and a can no longer write.
    let later = now + Duration::seconds(31);
    let taken = store
        .claim("b", later, lease)
        .await
        .expect("claim")
        .expect("taken over");
    assert_eq!(
        (taken.cursor.as_deref(), taken.enqueued, taken.skipped),
        (Some("kim"), 400, 100)
    );
    assert!(
        !store
            .advance(&taken, "a", &page, later, lease)
            .await
            .expect("advance")
    );
    assert!(
        store
            .finish(&taken, "b", BroadcastStatus::Done, None, later)
            .await
            .expect("finish")
    );
    let done = store
        .broadcast("t1", "b-1")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(done.status, BroadcastStatus::Done);
    assert!(
        store
            .claim("c", later + Duration::hours(1), lease)
            .await
            .expect("claim")
            .is_none()
    );
    assert_eq!(store.broadcasts("t1", 10).await.expect("list").len(), 1);
    // Created times keep their precision: message ids are derived from them.
    assert_eq!(done.created_at.timestamp_micros(), now.timestamp_micros());
}

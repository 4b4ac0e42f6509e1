//! The behaviour every `SegmentStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::audience_sqlite`'s tests). `process` folds entries in the way the
//! backend's processor does (a batch of the events topic; the SQLite event log).

use crate::audience::{LogEntry, SegmentError, SegmentStore};
use crate::profiles::ProfileStore;
use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use ump_automation::event::{EventInput, Queued};
use ump_automation::segment::Segment;

fn segment(value: serde_json::Value) -> Segment {
    serde_json::from_value(value).expect("a segment")
}

fn entry(tenant: &str, user: &str, event: &str, now: DateTime<Utc>) -> LogEntry {
    let queued: Queued =
        serde_json::from_value::<EventInput>(serde_json::json!({"user_id": user, "event": event}))
            .expect("event")
            .check("", now)
            .expect("valid");
    LogEntry {
        tenant: tenant.into(),
        queued,
    }
}

pub async fn segments_members_sizes_and_erasure(
    store: &dyn SegmentStore,
    profiles: &dyn ProfileStore,
    process: &dyn Fn(Vec<LogEntry>, DateTime<Utc>) -> BoxFuture<'static, ()>,
) {
    let now = Utc::now();
    let buyers = segment(serde_json::json!({"id": "buyers", "name": "Buyers",
        "condition": {"performed": {"event": "purchase", "within": "1h"}}}));
    assert!(
        store
            .put_segment("t1", buyers.clone(), now)
            .await
            .expect("put")
    );
    assert!(
        !store
            .put_segment("t1", buyers.clone(), now)
            .await
            .expect("put again")
    );
    let loyal = segment(serde_json::json!({"id": "loyal",
        "condition": {"all": [{"in_segment": "buyers"}, {"trait": {"path": "tier", "exists": true}}]}}));
    store.put_segment("t1", loyal, now).await.expect("put");
    // A cycle is refused, the stored segments unchanged.
    let cycle = segment(serde_json::json!({"id": "buyers", "condition": {"in_segment": "loyal"}}));
    assert!(matches!(
        store.put_segment("t1", cycle, now).await,
        Err(SegmentError::Invalid(_))
    ));
    let listed = store.segments("t1").await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].segment, buyers);
    assert!(
        store.segments("t2").await.expect("list").is_empty(),
        "per tenant"
    );

    let people = ["a", "b", "c"];
    process(
        people
            .iter()
            .map(|p| entry("t1", p, "purchase", now))
            .chain([entry("t2", "a", "purchase", now)])
            .collect(),
        now,
    )
    .await;
    assert_eq!(store.segment_size("t1", "buyers").await.expect("size"), 3);
    assert_eq!(store.segment_size("t2", "buyers").await.expect("size"), 0);
    let page = store
        .members("t1", "buyers", None, 2)
        .await
        .expect("members");
    let ids: Vec<&str> = page.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let rest = store
        .members("t1", "buyers", Some("b"), 2)
        .await
        .expect("members");
    assert_eq!(rest.len(), 1);
    let record = store
        .person("t1", "a")
        .await
        .expect("person")
        .expect("kept");
    assert!(record.segments.contains("buyers"));
    assert!(
        profiles
            .profile("t1", "a")
            .await
            .expect("profile")
            .is_some_and(|p| p.anonymous),
        "an unknown person gets an anonymous profile"
    );

    store.sample_sizes(now).await.expect("sample");
    let sizes = store
        .sizes("t1", "buyers", now - Duration::minutes(5))
        .await
        .expect("sizes");
    assert_eq!(sizes.iter().map(|p| p.size).collect::<Vec<_>>(), [3]);

    // Deleting a referenced segment is refused; the other first, then it.
    assert!(matches!(
        store.delete_segment("t1", "buyers", now).await,
        Err(SegmentError::InUse(_))
    ));
    assert!(
        store
            .delete_segment("t1", "loyal", now)
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_segment("t1", "loyal", now)
            .await
            .expect("again")
    );

    // Erasure: out of every segment, no state left.
    let erased_at = now + Duration::seconds(1);
    let erased = profiles.erase("t1", "a", erased_at).await.expect("erase");
    assert!(erased.profile && erased.automation_state);
    assert!(store.person("t1", "a").await.expect("person").is_none());
    assert_eq!(store.segment_size("t1", "buyers").await.expect("size"), 2);
    assert!(
        store.person("t2", "a").await.expect("person").is_some(),
        "the other tenant's a stays"
    );

    // Events accepted before the erasure and processed after it (still in the log) are
    // discarded; so are those of a person erased before anything of them was stored.
    let received = |user: &str, at: DateTime<Utc>| {
        let mut e = entry("t1", user, "purchase", now);
        e.queued.received_at = at;
        e
    };
    assert_eq!(
        profiles
            .erase("t1", "unseen", erased_at)
            .await
            .expect("erase"),
        crate::profiles::Erasure::default(),
        "nothing stored yet"
    );
    process(
        vec![
            received("a", erased_at - Duration::milliseconds(1)),
            received("unseen", erased_at - Duration::milliseconds(1)),
        ],
        erased_at,
    )
    .await;
    for user in ["a", "unseen"] {
        assert!(store.person("t1", user).await.expect("person").is_none());
        assert!(
            profiles
                .profile("t1", user)
                .await
                .expect("profile")
                .is_none()
        );
    }
    assert_eq!(store.segment_size("t1", "buyers").await.expect("size"), 2);
    // Events accepted after it are a new beginning (the application sent them).
    process(
        vec![received("a", erased_at + Duration::milliseconds(1))],
        erased_at,
    )
    .await;
    assert!(
        profiles
            .profile("t1", "a")
            .await
            .expect("profile")
            .is_some_and(|p| p.anonymous && p.traits.is_empty())
    );
    assert_eq!(store.segment_size("t1", "buyers").await.expect("size"), 3);
}

//! The behaviour every `ProfileStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::sqlite`'s tests): profiles per tenant, and erasure that leaves nothing of
//! the person a query could find.

use crate::history::{BatchRecord, HistoryStore, MessageFilter, Transition};
use crate::model::Status;
use crate::profiles::{Erasure, ProfileStore};
use crate::testing::parking::envelope;
use chrono::Utc;
use ump_automation::profile::{Contacts, Profile};

pub async fn profiles_are_per_tenant_and_erasure_leaves_nothing<S>(store: &S)
where
    S: ProfileStore + HistoryStore,
{
    let phone = "+821099998888";
    let kim = Profile {
        user_id: "kim".into(),
        contacts: Contacts {
            phone: Some(phone.into()),
            email: Some("kim@example.com".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    store.save_profile("t1", &kim).await.expect("save");
    assert_eq!(
        store.profile("t1", "kim").await.expect("get"),
        Some(kim.clone())
    );
    assert_eq!(
        store.profile("t2", "kim").await.expect("get"),
        None,
        "per tenant"
    );
    let many = store
        .profiles("t1", &["kim".to_owned(), "nobody".to_owned()])
        .await
        .expect("profiles");
    assert_eq!(many.len(), 1);
    assert_eq!(many.get("kim"), Some(&kim));
    assert!(
        store
            .profiles("t2", &["kim".to_owned()])
            .await
            .expect("profiles")
            .is_empty(),
        "per tenant"
    );
    let mut changed = kim.clone();
    changed.locale = Some("ko-KR".into());
    store
        .save_profile("t1", &changed)
        .await
        .expect("save again");
    assert_eq!(
        store.profile("t1", "kim").await.expect("get"),
        Some(changed)
    );
    // Another tenant's person with the same id and phone is not touched by the erasure.
    store.save_profile("t2", &kim).await.expect("save");

    // Messages to Kim in both tenants, one failed with a provider reason quoting the number.
    let mut ids = Vec::new();
    for tenant in ["t1", "t2"] {
        let e = envelope(tenant, phone);
        ids.push((tenant, e.id));
        store
            .record(&BatchRecord {
                transitions: vec![
                    Transition::of(&e, Status::Failed, Utc::now())
                        .detail(format!("provider: {phone} is not reachable")),
                ],
                deferred: vec![],
            })
            .await
            .expect("record");
    }

    let erased = store.erase("t1", "kim", Utc::now()).await.expect("erase");
    assert_eq!(
        erased,
        Erasure {
            profile: true,
            messages_masked: 1,
            automation_state: false,
            webhook_events_redacted: 0,
        }
    );
    assert_eq!(store.profile("t1", "kim").await.expect("get"), None);
    let found = store
        .list(
            "t1",
            &MessageFilter {
                to: Some(phone.into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert!(found.items.is_empty(), "found by the number after erasure");
    let view = store.get("t1", ids[0].1).await.expect("get").expect("kept");
    assert_eq!(view.to, "+8210****8888");
    let timeline = format!("{:?}", view.events);
    assert!(!timeline.contains(phone), "{timeline}");
    // The other tenant keeps its own.
    assert!(store.profile("t2", "kim").await.expect("get").is_some());
    let theirs = store.get("t2", ids[1].1).await.expect("get").expect("kept");
    assert_eq!(theirs.to, phone);
    // Erasing again, or a stranger: nothing to erase.
    assert_eq!(
        store.erase("t1", "kim", Utc::now()).await.expect("erase"),
        Erasure::default()
    );
}

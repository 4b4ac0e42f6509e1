//! The behaviour every `JourneyStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::journeys`'s tests): versions and status, caps, counts written with the
//! processor's batch, the outbox's leases, erasure of a person's unsent messages, tenants apart.
//! `process` folds entries the way the backend's processor does.

use crate::audience::LogEntry;
use crate::journeys::{JourneyError, JourneyStore, Written};
use crate::profiles::ProfileStore;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use std::time::Duration;
use ump_automation::event::EventInput;
use ump_automation::journey::{Cap, Journey, Status};

fn journey(value: serde_json::Value) -> Journey {
    let journey: Journey = serde_json::from_value(value).expect("a journey");
    journey.validate().expect("valid");
    journey
}

fn welcome(template: &str) -> Journey {
    journey(
        serde_json::json!({"id": "welcome", "entry": {"event": "signed_up"},
        "steps": [{"id": "hello", "send": {"channel": "sms", "template": template,
            "category": "transactional", "data": {"plan": "$entry.plan"}}}]}),
    )
}

fn entry(tenant: &str, user: &str, now: DateTime<Utc>) -> LogEntry {
    LogEntry {
        tenant: tenant.into(),
        queued: serde_json::from_value::<EventInput>(serde_json::json!(
            {"user_id": user, "event": "signed_up", "properties": {"plan": "pro"}}))
        .expect("event")
        .check("", now)
        .expect("valid"),
    }
}

fn count(stats: &[crate::journeys::StatRow], step: &str, counter: &str) -> i64 {
    stats
        .iter()
        .filter(|s| s.step == step && s.counter == counter)
        .map(|s| s.value)
        .sum()
}

pub async fn versions_outbox_and_erasure(
    store: &dyn JourneyStore,
    profiles: &dyn ProfileStore,
    process: &dyn Fn(Vec<LogEntry>, DateTime<Utc>) -> BoxFuture<'static, ()>,
) {
    let now = Utc::now();
    let created = store.put_journey("t1", welcome("hello"), now).await;
    assert_eq!(
        created.expect("put"),
        Written {
            created: true,
            version: 1
        }
    );
    // A draft changes in place; the same definition again is no change.
    let draft = store.put_journey("t1", welcome("hello-2"), now).await;
    assert_eq!(
        draft.expect("put"),
        Written {
            created: false,
            version: 1
        }
    );
    let stored = store
        .journey("t1", "welcome")
        .await
        .expect("read")
        .expect("there");
    assert_eq!((stored.status, stored.version), (Status::Draft, 1));
    assert_eq!(stored.journey, welcome("hello-2"));
    assert!(matches!(
        store.set_status("t1", "welcome", Status::Paused, now).await,
        Err(JourneyError::Conflict(_))
    ));
    assert!(matches!(
        store.set_status("t1", "nothing", Status::Active, now).await,
        Err(JourneyError::NotFound)
    ));
    let active = store
        .set_status("t1", "welcome", Status::Active, now)
        .await
        .expect("activate");
    assert_eq!(active.status, Status::Active);
    // An active journey's change is a new version; the same again is none.
    for _ in 0..2 {
        let v2 = store.put_journey("t1", welcome("hello"), now).await;
        assert_eq!(
            v2.expect("put"),
            Written {
                created: false,
                version: 2
            }
        );
    }
    assert!(
        store.journeys("t2").await.expect("list").is_empty(),
        "tenants apart"
    );
    assert!(
        store
            .journey("t2", "welcome")
            .await
            .expect("read")
            .is_none()
    );

    let caps = vec![Cap {
        max: 2,
        per: "1d".parse().expect("window"),
        channel: Some("sms".into()),
    }];
    store.put_caps("t1", &caps, now).await.expect("caps");
    assert_eq!(store.caps("t1").await.expect("caps"), caps);
    assert!(store.caps("t2").await.expect("caps").is_empty());

    // Two people enter; each message waits in the outbox with the step's data.
    process(vec![entry("t1", "kim", now), entry("t1", "lee", now)], now).await;
    assert_eq!(store.outbox_len().await.expect("len"), 2);
    let stats = store.stats("t1", "welcome").await.expect("stats");
    assert_eq!(count(&stats, "", "entered"), 2, "{stats:?}");
    assert_eq!(count(&stats, "hello", "sent"), 2, "{stats:?}");
    assert!(
        stats.iter().all(|s| s.version == 2),
        "entered on the current version"
    );
    assert!(
        store
            .stats("t2", "welcome")
            .await
            .expect("stats")
            .is_empty()
    );

    // One relay takes them for a lease; another finds nothing until it runs out.
    let lease = Duration::from_secs(30);
    let claimed = store
        .claim_sends("relay-a", now, lease, 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0];
    assert_eq!(
        (first.tenant.as_str(), first.send.template.as_str()),
        ("t1", "hello")
    );
    assert_eq!(first.send.data["plan"], "pro");
    assert_eq!(
        first.queued_at,
        chrono::SubsecRound::trunc_subsecs(now, 6),
        "the batch's time"
    );
    let rest = store
        .claim_sends("relay-b", now, lease, 10)
        .await
        .expect("claim");
    assert_eq!(rest.len(), 1, "the other message");
    assert_ne!(rest[0].id, first.id);
    assert!(
        store
            .claim_sends("relay-b", now, lease, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // Only its holder clears a message; after the lease another relay takes it again.
    store
        .sends_done("relay-b", &[first.id])
        .await
        .expect("done");
    let later = now + chrono::Duration::seconds(31);
    let again = store
        .claim_sends("relay-b", later, lease, 10)
        .await
        .expect("claim");
    let mut ids: Vec<i64> = again.iter().map(|c| c.id).collect();
    ids.sort();
    let mut both = vec![first.id, rest[0].id];
    both.sort();
    assert_eq!(ids, both);
    let kims: Vec<i64> = again
        .iter()
        .filter(|c| c.user_id == "kim")
        .map(|c| c.id)
        .collect();
    store.sends_done("relay-b", &kims).await.expect("done");
    assert_eq!(store.outbox_len().await.expect("len"), 1);
    // Given back until a moment (a journey's send rate): nobody takes it before, anyone after.
    let lees: Vec<i64> = again
        .iter()
        .filter(|c| c.user_id == "lee")
        .map(|c| c.id)
        .collect();
    let turn = later + chrono::Duration::seconds(2);
    store
        .release_sends("relay-b", &lees, turn)
        .await
        .expect("release");
    let early = store.claim_sends("relay-c", later, lease, 10).await;
    assert!(early.expect("claim").is_empty());
    let taken = store
        .claim_sends(
            "relay-c",
            turn + chrono::Duration::milliseconds(1),
            lease,
            10,
        )
        .await;
    assert_eq!(taken.expect("claim").len(), 1);

    // Erasing lee takes their unsent message with them.
    profiles.erase("t1", "lee", later).await.expect("erase");
    assert_eq!(store.outbox_len().await.expect("len"), 0);

    // Archived: out of the processor's view, and no longer changed.
    store
        .set_status("t1", "welcome", Status::Archived, now)
        .await
        .expect("archive");
    assert!(matches!(
        store.put_journey("t1", welcome("hello-3"), now).await,
        Err(JourneyError::Conflict(_))
    ));
    process(vec![entry("t1", "park", later)], later).await;
    assert_eq!(
        store.outbox_len().await.expect("len"),
        0,
        "archived: nobody enters"
    );
}

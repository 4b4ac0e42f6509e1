//! The behaviour every `HistoryStore` must have for parked messages, run against MySQL
//! (`core/tests/mysql_history.rs`) and SQLite (`crate::sqlite`'s tests) alike.

use crate::history::{BatchRecord, Deferred, HistoryStore, Transition};
use crate::model::{Content, Envelope, MessageId, Priority, Status};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::time::Duration;

const QUEUE: &str = "ump.default.sms";
const LEASE: Duration = Duration::from_secs(30);

pub fn envelope(tenant: &str, to: &str) -> Envelope {
    Envelope {
        id: MessageId::new(),
        tenant: tenant.into(),
        channel: "sms".into(),
        to: to.into(),
        content: Content {
            body: Some("안녕".into()),
            ..Default::default()
        },
        priority: Priority::Bulk,
        send_at: None,
        tags: vec![],
        metadata: Default::default(),
        idempotency_key: None,
        category: Default::default(),
        accepted_at: Utc::now(),
        attempts: 0,
        fallback: None,
    }
}

/// Parks `envelope` until `due_at`, as a worker does after a failed attempt (with its
/// `scheduled` transition).
pub async fn park(history: &dyn HistoryStore, envelope: &Envelope, due_at: DateTime<Utc>) {
    history
        .record(&BatchRecord {
            transitions: vec![Transition::of(envelope, Status::Scheduled, Utc::now())],
            deferred: vec![Deferred {
                envelope: envelope.clone(),
                queue: QUEUE.into(),
                due_at,
            }],
        })
        .await
        .expect("park");
}

fn queues() -> Vec<String> {
    vec![QUEUE.to_owned()]
}

/// Claims are exclusive for their lease, per queue; a released parking is not handed out again.
pub async fn claims_hold_for_their_lease(history: &dyn HistoryStore) {
    let now = Utc::now();
    let due = envelope("t1", "+821000000001");
    let later = envelope("t1", "+821000000002");
    park(history, &due, now - ChronoDuration::seconds(1)).await;
    park(history, &later, now + ChronoDuration::hours(1)).await;

    let claimed = history
        .claim_due(&queues(), now, LEASE, 100)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].deferred.envelope, due);
    assert_eq!(claimed[0].claim.id, due.id);
    let again = history
        .claim_due(&queues(), now, LEASE, 100)
        .await
        .expect("claim");
    assert!(again.is_empty(), "leased");
    let other = history
        .claim_due(&["email".to_owned()], now, LEASE, 100)
        .await
        .expect("claim");
    assert!(other.is_empty(), "other queue");
    // The claimer died: after the lease another one gets it, and releases it once published.
    let after_lease = now + ChronoDuration::seconds(31);
    let taken_over = history
        .claim_due(&queues(), after_lease, LEASE, 100)
        .await
        .expect("claim");
    assert_eq!(taken_over.len(), 1);
    history
        .release(&[taken_over[0].claim])
        .await
        .expect("release");
    let much_later = now + ChronoDuration::seconds(120);
    let left = history
        .claim_due(&queues(), much_later, LEASE, 100)
        .await
        .expect("claim");
    assert!(left.is_empty(), "released: {left:?}");
}

/// The race of issue 22: the scheduler claims a parking and publishes it; before it releases the
/// claim, a worker consumes the copy, fails it again and parks it anew. The release must leave
/// the new parking, and a release by a claim whose lease another claimer took over as well.
pub async fn a_release_never_removes_a_newer_parking(history: &dyn HistoryStore) {
    let now = Utc::now();
    let mut message = envelope("t1", "+821000000003");
    park(history, &message, now - ChronoDuration::seconds(1)).await;
    let claimed = history
        .claim_due(&queues(), now, LEASE, 100)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);

    // Published, consumed, failed again: parked anew, due in a minute.
    message.attempts += 1;
    park(history, &message, now + ChronoDuration::seconds(60)).await;
    history.release(&[claimed[0].claim]).await.expect("release");

    let retry_time = now + ChronoDuration::seconds(61);
    let reclaimed = history
        .claim_due(&queues(), retry_time, LEASE, 100)
        .await
        .expect("claim");
    assert_eq!(reclaimed.len(), 1, "the new parking survived the release");
    assert_eq!(reclaimed[0].deferred.envelope.attempts, 1);

    // A stale claimer (its lease ran out and another took the parking) releasing late changes
    // nothing; the current claimer's release ends the parking.
    let stale = reclaimed[0].claim;
    let current = history
        .claim_due(
            &queues(),
            retry_time + ChronoDuration::seconds(31),
            LEASE,
            100,
        )
        .await
        .expect("claim");
    assert_eq!(current.len(), 1);
    message.attempts += 1;
    park(history, &message, retry_time + ChronoDuration::seconds(40)).await;
    history.release(&[stale]).await.expect("stale release");
    history
        .release(&[current[0].claim])
        .await
        .expect("current release");
    let last = history
        .claim_due(
            &queues(),
            retry_time + ChronoDuration::seconds(41),
            LEASE,
            100,
        )
        .await
        .expect("claim");
    assert_eq!(last.len(), 1, "parked anew after both claims: still there");
    assert_eq!(last[0].deferred.envelope.attempts, 2);
}

/// A parking due more than a minute ago and not yet handed out counts as overdue, in the sweep
/// and in the tenant's stats.
pub async fn overdue_parkings_are_counted(history: &dyn HistoryStore) {
    let now = Utc::now();
    let overdue = envelope("t-overdue", "+821000000004");
    let fresh = envelope("t-overdue", "+821000000005");
    park(history, &overdue, now - ChronoDuration::seconds(120)).await;
    park(history, &fresh, now - ChronoDuration::seconds(5)).await;
    let health = history
        .sweep_parking(&queues(), now, Duration::from_secs(600))
        .await
        .expect("sweep");
    assert_eq!(health.overdue, 1, "{health:?}");
    let stats = history
        .stats(
            "t-overdue",
            now - ChronoDuration::hours(1),
            Duration::from_secs(60),
        )
        .await
        .expect("stats");
    assert_eq!(stats.overdue, 1);
    let other = history
        .stats(
            "t-other",
            now - ChronoDuration::hours(1),
            Duration::from_secs(60),
        )
        .await
        .expect("stats");
    assert_eq!(
        other.overdue, 0,
        "another tenant's parkings are not counted"
    );
}

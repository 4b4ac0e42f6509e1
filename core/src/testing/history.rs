//! The behaviour every `HistoryStore` must have for event details, run against MySQL
//! (`core/tests/mysql_history.rs`) and SQLite (`crate::sqlite`'s tests) alike.

use crate::history::{
    BatchRecord, DETAIL_MAX_BYTES, HistoryStore, Receipt, ReceiptFor, ReceiptOutcome, Transition,
};
use crate::model::Status;
use crate::testing::parking::envelope;
use chrono::Duration as ChronoDuration;

/// A detail of `chars` three-byte characters: no multiple of three is `DETAIL_MAX_BYTES`, so a
/// byte cut there would split one.
fn long_detail(chars: usize) -> String {
    "실패".repeat(chars.div_ceil(2))[..chars * 3].to_owned()
}

/// A long detail (a provider's HTML error page) is kept to its first `DETAIL_MAX_BYTES` bytes,
/// cut at a character boundary, whether a worker's batch or a provider's receipt wrote it; a
/// short one is kept whole.
pub async fn details_are_kept_to_their_first_bytes(history: &dyn HistoryStore) {
    assert_ne!(
        DETAIL_MAX_BYTES % 3,
        0,
        "the test needs a cut inside a character"
    );
    let e = envelope("t1", "+821011112222");
    let long = long_detail(DETAIL_MAX_BYTES);
    let mut attempt = e.clone();
    attempt.attempts = 1;
    let at = e.accepted_at;
    let batch = BatchRecord {
        transitions: vec![
            Transition::of(&e, Status::Accepted, at).detail("short"),
            Transition::of(
                &attempt,
                Status::Scheduled,
                at + ChronoDuration::milliseconds(1),
            )
            .detail(long.clone()),
            Transition::of(&attempt, Status::Sent, at + ChronoDuration::milliseconds(2))
                .provider("sandbox", Some("p-detail".into())),
        ],
        deferred: vec![],
    };
    history.record(&batch).await.expect("record");
    let receipt = Receipt {
        provider: "sandbox".into(),
        message: ReceiptFor::ProviderMessageId("p-detail".into()),
        status: Status::Failed,
        at: at + ChronoDuration::milliseconds(3),
        detail: Some(long.clone()),
    };
    assert_eq!(
        history.apply_receipt(&receipt).await.expect("receipt"),
        ReceiptOutcome::Applied(e.id)
    );

    let view = history.get("t1", e.id).await.expect("get").expect("found");
    let details: Vec<(Status, Option<String>)> = view
        .events
        .expect("events")
        .into_iter()
        .map(|event| (event.status, event.detail))
        .collect();
    let kept = &long[..DETAIL_MAX_BYTES - DETAIL_MAX_BYTES % 3];
    assert!(kept.len() <= DETAIL_MAX_BYTES && long.starts_with(kept));
    assert_eq!(
        details,
        [
            (Status::Accepted, Some("short".to_owned())),
            (Status::Scheduled, Some(kept.to_owned())),
            (Status::Sent, None),
            (Status::Failed, Some(kept.to_owned())),
        ]
    );
    assert_eq!(
        view.detail.as_deref(),
        Some(kept),
        "the latest event's detail"
    );
}

/// `prune(cutoff, chunk)` deletes the history of messages accepted before the cutoff, their
/// events and their finished webhook deliveries, and nothing else: recent messages, their
/// events and deliveries, and a delivery of an old message still waiting for its retry stay.
/// `events_left()` counts the stored events of every message.
pub async fn prune_deletes_only_history_older_than_the_cutoff<P, PFut, C, CFut>(
    history: &dyn HistoryStore,
    webhooks: &dyn crate::webhooks::WebhookStore,
    prune: P,
    events_left: C,
) where
    P: FnOnce(chrono::DateTime<chrono::Utc>, u32) -> PFut,
    PFut: std::future::Future<Output = Result<u64, crate::history::HistoryError>>,
    C: FnOnce() -> CFut,
    CFut: std::future::Future<Output = i64>,
{
    use crate::model::MessageId;
    use chrono::Utc;
    let old_millis = (Utc::now() - ChronoDuration::days(100)).timestamp_millis() as u64;
    let mut transitions = Vec::new();
    let mut old_ids = Vec::new();
    for i in 0..30u128 {
        let mut e = envelope("t1", "+821000000000");
        if i < 20 {
            // An id minted 100 days ago.
            e.id = MessageId(uuid::Uuid::from_u128(
                MessageId::lower_bound(old_millis).0.as_u128() | (i + 1),
            ));
            old_ids.push(e.id);
        }
        transitions.push(Transition::of(&e, Status::Accepted, e.accepted_at));
        transitions.push(Transition::of(&e, Status::Sent, e.accepted_at));
    }
    // A webhook endpoint gets every event: its finished deliveries go with their messages.
    let endpoint = crate::testing::webhooks::endpoint(
        "t1",
        crate::testing::webhooks::all_events(),
        Utc::now(),
    );
    webhooks
        .create_endpoint(&endpoint, &crate::webhooks::new_secret())
        .await
        .expect("endpoint");
    // The old messages' events are one batch of the outbox, the recent ones' another.
    for part in [&transitions[..40], &transitions[40..]] {
        history
            .record(&BatchRecord {
                transitions: part.to_vec(),
                deferred: vec![],
            })
            .await
            .expect("record");
    }
    // All delivered but one old message's `sent`, which failed and waits for its retry: it
    // stays.
    let later = Utc::now() + ChronoDuration::seconds(1);
    let claimed = webhooks
        .claim(
            &endpoint.id,
            later,
            std::time::Duration::from_secs(30),
            1000,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 60);
    let pending = crate::webhooks::event_id(old_ids[3], Status::Sent, 0);
    let attempts: Vec<crate::webhooks::Attempt> = claimed
        .iter()
        .map(|d| crate::webhooks::Attempt {
            endpoint_id: d.endpoint_id.clone(),
            event_id: d.event_id.clone(),
            claim: d.claim,
            result: if d.event_id == pending {
                crate::webhooks::AttemptResult::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                }
            } else {
                crate::webhooks::AttemptResult::Delivered { status: 204 }
            },
            latency: std::time::Duration::from_millis(1),
            at: later,
            retry_at: (d.event_id == pending).then(|| later + ChronoDuration::hours(1)),
            batch: d.batch.clone(),
        })
        .collect();
    webhooks
        .settle(&attempts, &Default::default(), later)
        .await
        .expect("settle");
    let deleted = prune(Utc::now() - ChronoDuration::days(90), 7)
        .await
        .expect("prune");
    assert_eq!(deleted, 20);
    assert!(history.get("t1", old_ids[0]).await.expect("get").is_none());
    let left = history
        .list(
            "t1",
            &crate::history::MessageFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(left.items.len(), 10);
    assert_eq!(
        events_left().await,
        20,
        "the events of the 10 recent messages remain"
    );
    let log = webhooks
        .deliveries("t1", &endpoint.id, None, 1000)
        .await
        .expect("log");
    assert_eq!(
        log.len(),
        21,
        "the recent messages' 20 and the one still pending"
    );
    assert!(log.iter().any(|d| d.id == pending && d.state == "pending"));
}

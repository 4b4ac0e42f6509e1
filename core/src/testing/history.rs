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

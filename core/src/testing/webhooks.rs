//! The behaviour every history store with a webhook outbox must have, run against MySQL
//! (`core/tests/mysql_history.rs`) and SQLite (`crate::webhooks_store`'s tests): events written
//! with their status change and only for matching endpoints of the tenant, once however often a
//! batch is recorded; deliveries claimed under a lease, settled only by their claimer; endpoints
//! disabled by 410 or by failing for days; CRUD, rotation and replay per tenant.

use crate::history::{BatchRecord, HistoryStore, Receipt, ReceiptFor, ReceiptOutcome, Transition};
use crate::model::Status;
use crate::testing::parking::envelope;
use crate::webhooks::{
    Attempt, AttemptResult, Endpoint, EventFilter, EventType, RetryPolicy, WebhookStore,
    new_endpoint_id, new_secret, test_delivery,
};
use chrono::{DateTime, Duration, SubsecRound, Utc};

/// Now, as precisely as the stores keep time (microseconds).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// An enabled endpoint of `tenant` with `filter`, on a public https URL.
pub fn endpoint(tenant: &str, filter: EventFilter, now: DateTime<Utc>) -> Endpoint {
    Endpoint {
        id: new_endpoint_id(),
        tenant: tenant.into(),
        url: "https://hooks.example.com/ump".into(),
        description: String::new(),
        filter,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// Every event type, every channel and tag.
pub fn all_events() -> EventFilter {
    EventFilter {
        event_types: EventType::ALL.to_vec(),
        ..Default::default()
    }
}

async fn types_of(store: &dyn WebhookStore, tenant: &str, endpoint: &str) -> Vec<String> {
    let mut types: Vec<String> = store
        .deliveries(tenant, endpoint, None, 1000)
        .await
        .expect("deliveries")
        .into_iter()
        .map(|d| d.event_type)
        .collect();
    types.sort();
    types
}

pub async fn events_are_written_with_their_status_change(
    history: &dyn HistoryStore,
    store: &dyn WebhookStore,
) {
    let now = now();
    let all = endpoint("t1", all_events(), now);
    let email_only = endpoint(
        "t1",
        EventFilter {
            event_types: EventType::ALL.to_vec(),
            channels: vec!["email".into()],
            tags: vec![],
        },
        now,
    );
    let tagged = endpoint(
        "t1",
        EventFilter {
            event_types: vec![EventType::MessageSent],
            channels: vec![],
            tags: vec!["otp".into()],
        },
        now,
    );
    let mut off = endpoint("t1", all_events(), now);
    off.enabled = false;
    off.disabled_reason = Some("paused".into());
    let other_tenant = endpoint("t2", all_events(), now);
    for e in [&all, &email_only, &tagged, &off, &other_tenant] {
        store
            .create_endpoint(e, &new_secret())
            .await
            .expect("create");
    }

    let mut e = envelope("t1", "+821012345678");
    e.tags = vec!["otp".into()];
    e.metadata.insert("order".into(), "A-7".into());
    let accepted = Transition::of(&e, Status::Accepted, e.accepted_at);
    let mut tried = e.clone();
    tried.attempts = 1;
    let retry = Transition::of(
        &tried,
        Status::Scheduled,
        e.accepted_at + Duration::milliseconds(2),
    );
    let mut again = e.clone();
    again.attempts = 2;
    let sent = Transition::of(
        &again,
        Status::Sent,
        e.accepted_at + Duration::milliseconds(5),
    )
    .provider("sandbox", Some("sb-1".into()));
    let batch = BatchRecord {
        transitions: vec![accepted, retry, sent],
        deferred: vec![],
    };
    history.record(&batch).await.expect("record");
    // A worker that died before committing its offsets records the same batch again.
    history.record(&batch).await.expect("record again");

    assert_eq!(
        types_of(store, "t1", &all.id).await,
        ["message.accepted", "message.sent"]
    );
    assert!(types_of(store, "t1", &email_only.id).await.is_empty());
    assert_eq!(types_of(store, "t1", &tagged.id).await, ["message.sent"]);
    assert!(types_of(store, "t1", &off.id).await.is_empty());
    assert!(types_of(store, "t2", &other_tenant.id).await.is_empty());
    // Another tenant cannot read the log.
    assert!(types_of(store, "t2", &all.id).await.is_empty());

    // A receipt's event carries the message's labels.
    let receipt = Receipt {
        provider: "sandbox".into(),
        message: ReceiptFor::ProviderMessageId("sb-1".into()),
        status: Status::Delivered,
        at: e.accepted_at + Duration::seconds(1),
        detail: None,
    };
    assert_eq!(
        history.apply_receipt(&receipt).await.expect("receipt"),
        ReceiptOutcome::Applied(e.id)
    );
    history
        .apply_receipt(&receipt)
        .await
        .expect("receipt again");
    assert_eq!(
        types_of(store, "t1", &all.id).await,
        ["message.accepted", "message.delivered", "message.sent"]
    );
    let claimed = store
        .claim(
            &all.id,
            Utc::now() + Duration::seconds(5),
            std::time::Duration::from_secs(30),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let delivered = claimed
        .iter()
        .find(|d| d.payload.contains("message.delivered"))
        .expect("the receipt's event");
    let body: serde_json::Value = serde_json::from_str(&delivered.payload).expect("JSON");
    assert_eq!(body["data"]["id"], e.id.to_string());
    assert_eq!(body["data"]["to"], "+8210****5678");
    assert_eq!(body["data"]["tags"][0], "otp");
    assert_eq!(body["data"]["metadata"]["order"], "A-7");
    assert_eq!(body["data"]["provider"], "sandbox");
    let ids: std::collections::BTreeSet<&str> =
        claimed.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each event its own id");
}

/// A receipt's event carries the labels kept with the message's row; a message without labels
/// gets empty ones; and labels an earlier version kept in `webhook_messages` (which
/// `keep_the_old_way(message, tags, metadata)` puts there, clearing the row's own) are still
/// found.
pub async fn receipts_find_the_labels_wherever_they_were_kept<F, Fut>(
    history: &dyn HistoryStore,
    store: &dyn WebhookStore,
    keep_the_old_way: F,
) where
    F: FnOnce(crate::model::MessageId, &'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let now = now();
    let ep = endpoint("t1", all_events(), now);
    store
        .create_endpoint(&ep, &new_secret())
        .await
        .expect("create");
    let mut labelled = envelope("t1", "+821011112222");
    labelled.tags = vec!["order".into()];
    labelled.metadata.insert("order".into(), "B-1".into());
    let mut legacy = envelope("t1", "+821033334444");
    legacy.tags = vec!["legacy".into()];
    let bare = envelope("t1", "+821055556666");
    let mut transitions = Vec::new();
    for (e, provider_id) in [(&labelled, "sb-l"), (&legacy, "sb-o"), (&bare, "sb-b")] {
        transitions.push(Transition::of(e, Status::Accepted, e.accepted_at));
        transitions.push(
            Transition::of(e, Status::Sent, e.accepted_at + Duration::milliseconds(3))
                .provider("sandbox", Some(provider_id.into())),
        );
    }
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");
    keep_the_old_way(legacy.id, r#"["legacy"]"#, r#"{"kept": "before"}"#).await;
    for (e, provider_id) in [(&labelled, "sb-l"), (&legacy, "sb-o"), (&bare, "sb-b")] {
        let receipt = Receipt {
            provider: "sandbox".into(),
            message: ReceiptFor::ProviderMessageId(provider_id.into()),
            status: Status::Delivered,
            at: e.accepted_at + Duration::seconds(1),
            detail: None,
        };
        assert_eq!(
            history.apply_receipt(&receipt).await.expect("receipt"),
            ReceiptOutcome::Applied(e.id)
        );
    }
    let claimed = store
        .claim(
            &ep.id,
            Utc::now() + Duration::seconds(5),
            std::time::Duration::from_secs(30),
            100,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 9, "accepted, sent and delivered of each");
    let delivered = |id: crate::model::MessageId| -> serde_json::Value {
        let d = claimed
            .iter()
            .find(|d| {
                d.payload.contains(&id.to_string()) && d.payload.contains("message.delivered")
            })
            .expect("the receipt's event");
        serde_json::from_str::<serde_json::Value>(&d.payload).expect("JSON")["data"].clone()
    };
    let data = delivered(labelled.id);
    assert_eq!(data["tags"], serde_json::json!(["order"]));
    assert_eq!(data["metadata"], serde_json::json!({"order": "B-1"}));
    let data = delivered(legacy.id);
    assert_eq!(data["tags"], serde_json::json!(["legacy"]));
    assert_eq!(data["metadata"], serde_json::json!({"kept": "before"}));
    let data = delivered(bare.id);
    assert_eq!(data["tags"], serde_json::json!([]));
    assert_eq!(data["metadata"], serde_json::json!({}));
}

pub async fn deliveries_are_leased_and_settled_by_their_claimer(
    _history: &dyn HistoryStore,
    store: &dyn WebhookStore,
) {
    let now = now();
    let lease = std::time::Duration::from_secs(30);
    let policy = RetryPolicy::default();
    let ep = endpoint("t1", all_events(), now);
    store
        .create_endpoint(&ep, &new_secret())
        .await
        .expect("create");
    let test = test_delivery(&ep, now);
    store
        .enqueue(std::slice::from_ref(&test))
        .await
        .expect("enqueue");
    store
        .enqueue(std::slice::from_ref(&test))
        .await
        .expect("again: no second row");

    let targets = store.due_targets(now, 100).await.expect("targets");
    assert!(
        targets
            .iter()
            .any(|t| t.endpoint_id == ep.id && t.url == ep.url)
    );
    let first = store.claim(&ep.id, now, lease, 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, test.event_id);
    assert!(
        store
            .claim(&ep.id, now, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "leased"
    );
    assert!(
        !store
            .due_targets(now, 100)
            .await
            .expect("targets")
            .iter()
            .any(|t| t.endpoint_id == ep.id),
        "nothing free to deliver"
    );
    // The claimer died: once the lease runs out, another takes it over.
    let later = now + Duration::seconds(31);
    let second = store.claim(&ep.id, later, lease, 10).await.expect("claim");
    assert_eq!(second.len(), 1);
    let fail = |claim: uuid::Uuid, at: DateTime<Utc>, retry_at| Attempt {
        endpoint_id: ep.id.clone(),
        event_id: test.event_id.clone(),
        claim,
        result: AttemptResult::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
        },
        latency: std::time::Duration::from_millis(12),
        at,
        retry_at,
        batch: None,
    };
    // The first claimer's late word counts for nothing.
    store
        .settle(&[fail(first[0].claim, later, Some(later))], &policy, later)
        .await
        .expect("settle stale");
    let log = store.deliveries("t1", &ep.id, None, 10).await.expect("log");
    assert_eq!(log[0].attempts, 0);

    let retry_at = later + Duration::seconds(5);
    store
        .settle(
            &[fail(second[0].claim, later, Some(retry_at))],
            &policy,
            later,
        )
        .await
        .expect("settle");
    let log = store.deliveries("t1", &ep.id, None, 10).await.expect("log");
    assert_eq!(
        (
            log[0].state.as_str(),
            log[0].attempts,
            log[0].last_status_code
        ),
        ("pending", 1, Some(500))
    );
    assert_eq!(log[0].last_latency_ms, Some(12));
    assert_eq!(log[0].next_attempt_at, Some(retry_at));
    let failing = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(failing.failing_since, Some(later));
    assert!(
        store
            .claim(&ep.id, later, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "not due"
    );

    let third = store
        .claim(&ep.id, retry_at, lease, 10)
        .await
        .expect("claim");
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempts, 1);
    store
        .settle(
            &[Attempt {
                result: AttemptResult::Delivered { status: 204 },
                ..fail(third[0].claim, retry_at, None)
            }],
            &policy,
            retry_at,
        )
        .await
        .expect("settle");
    let log = store.deliveries("t1", &ep.id, None, 10).await.expect("log");
    assert_eq!((log[0].state.as_str(), log[0].attempts), ("delivered", 2));
    assert_eq!(log[0].last_error, None);
    let works = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(works.failing_since, None);

    // Replay sends it again under the same id; another tenant cannot replay it.
    assert_eq!(
        store
            .replay("t2", &ep.id, now, retry_at)
            .await
            .expect("replay"),
        0
    );
    assert_eq!(
        store
            .replay("t1", &ep.id, now, retry_at)
            .await
            .expect("replay"),
        1
    );
    let replayed = store
        .claim(&ep.id, retry_at, lease, 10)
        .await
        .expect("claim");
    assert_eq!(replayed[0].event_id, test.event_id);
    assert_eq!(replayed[0].retry_since, retry_at);

    // 410 disables the endpoint; its deliveries wait.
    store
        .settle(
            &[Attempt {
                result: AttemptResult::Gone,
                ..fail(replayed[0].claim, retry_at, Some(retry_at))
            }],
            &policy,
            retry_at,
        )
        .await
        .expect("settle");
    let gone = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert!(!gone.enabled);
    assert!(
        gone.disabled_reason
            .as_deref()
            .is_some_and(|r| r.contains("410"))
    );
    assert!(
        !store
            .due_targets(retry_at, 100)
            .await
            .expect("targets")
            .iter()
            .any(|t| t.endpoint_id == ep.id),
        "a disabled endpoint gets nothing"
    );
    assert!(
        store
            .claim(&ep.id, retry_at, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "nothing of a disabled endpoint is claimed"
    );
}

pub async fn an_endpoint_failing_for_days_is_disabled(
    _history: &dyn HistoryStore,
    store: &dyn WebhookStore,
) {
    let start = now();
    let lease = std::time::Duration::from_secs(30);
    let policy = RetryPolicy::default();
    let ep = endpoint("t1", all_events(), start);
    store
        .create_endpoint(&ep, &new_secret())
        .await
        .expect("create");
    let mut at = start;
    for day in 0..6 {
        store
            .enqueue(&[test_delivery(&ep, at)])
            .await
            .expect("enqueue");
        let claimed = store.claim(&ep.id, at, lease, 100).await.expect("claim");
        let attempts: Vec<Attempt> = claimed
            .iter()
            .map(|d| Attempt {
                endpoint_id: ep.id.clone(),
                event_id: d.event_id.clone(),
                claim: d.claim,
                result: AttemptResult::Failed {
                    status: None,
                    error: "connection refused".into(),
                },
                latency: std::time::Duration::from_millis(1),
                at,
                retry_at: Some(at + Duration::hours(1)),
                batch: d.batch.clone(),
            })
            .collect();
        store.settle(&attempts, &policy, at).await.expect("settle");
        let now = store
            .endpoint("t1", &ep.id)
            .await
            .expect("get")
            .expect("there");
        assert_eq!(now.failing_since, Some(start), "day {day}");
        assert_eq!(now.enabled, day < 5, "day {day}");
        at += Duration::days(1);
    }
    let disabled = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert!(
        disabled
            .disabled_reason
            .as_deref()
            .is_some_and(|r| r.contains("failed for 5days")),
        "{:?}",
        disabled.disabled_reason
    );
    // Enabled again by a person: a fresh start.
    let mut on = disabled.clone();
    on.enabled = true;
    on.disabled_reason = None;
    assert!(store.update_endpoint(&on).await.expect("update"));
    let on = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert!(on.enabled && on.failing_since.is_none());
}

pub async fn endpoints_are_per_tenant_and_rotation_keeps_the_old_secret_for_a_while(
    _history: &dyn HistoryStore,
    store: &dyn WebhookStore,
) {
    let now = now();
    let ep = endpoint("t1", all_events(), now);
    let secret = new_secret();
    store.create_endpoint(&ep, &secret).await.expect("create");
    assert_eq!(
        store.endpoints("t1").await.expect("list"),
        std::slice::from_ref(&ep)
    );
    assert!(store.endpoints("t2").await.expect("list").is_empty());
    assert!(store.endpoint("t2", &ep.id).await.expect("get").is_none());

    let mut changed = ep.clone();
    changed.url = "https://other.example.com/hook".into();
    changed.filter.channels = vec!["sms".into()];
    changed.tenant = "t2".into();
    assert!(
        !store.update_endpoint(&changed).await.expect("update"),
        "not t2's"
    );
    changed.tenant = "t1".into();
    assert!(store.update_endpoint(&changed).await.expect("update"));
    let got = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(got.url, changed.url);
    assert_eq!(got.filter.channels, ["sms"]);

    store
        .enqueue(&[test_delivery(&ep, now)])
        .await
        .expect("enqueue");
    let new = new_secret();
    let grace = now + Duration::hours(24);
    assert!(
        !store
            .rotate_secret("t2", &ep.id, &new, grace, now)
            .await
            .expect("rotate")
    );
    assert!(
        store
            .rotate_secret("t1", &ep.id, &new, grace, now)
            .await
            .expect("rotate")
    );
    let target = store
        .due_targets(now, 1000)
        .await
        .expect("targets")
        .into_iter()
        .find(|t| t.endpoint_id == ep.id)
        .expect("due");
    assert_eq!(target.secrets.current, new);
    assert_eq!(target.secrets.previous, Some((secret.clone(), grace)));
    assert_eq!(
        target.secrets.valid_at(now),
        [new.as_str(), secret.as_str()]
    );
    assert_eq!(target.secrets.valid_at(grace), [new.as_str()]);
    let rotated = store
        .endpoint("t1", &ep.id)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(rotated.previous_secret_expires_at, Some(grace));

    assert!(!store.delete_endpoint("t2", &ep.id).await.expect("delete"));
    assert!(store.delete_endpoint("t1", &ep.id).await.expect("delete"));
    assert!(store.endpoint("t1", &ep.id).await.expect("get").is_none());
    assert!(
        store
            .deliveries("t1", &ep.id, None, 10)
            .await
            .expect("log")
            .is_empty()
    );
}

/// A round records what each delivery came to: the ones that went through are done, a failed
/// one waits for its retry with the attempt counted, and the ones the round did not attempt
/// (skipped) are due again at once with none counted. A claimer whose lease
/// ran out records nothing. The log pages through all of it newest first, each delivery once,
/// and replay makes every one due again.
pub async fn a_round_records_each_delivery_and_the_log_pages_through_them(
    history: &dyn HistoryStore,
    store: &dyn WebhookStore,
) {
    let lease = std::time::Duration::from_secs(30);
    let policy = RetryPolicy::default();
    let ep = endpoint("t1", all_events(), now());
    store
        .create_endpoint(&ep, &new_secret())
        .await
        .expect("create");
    let mut transitions = Vec::new();
    for i in 0..5 {
        let e = envelope("t1", &format!("+8210000000{i:02}"));
        transitions.push(Transition::of(&e, Status::Accepted, e.accepted_at));
        transitions.push(Transition::of(&e, Status::Sent, e.accepted_at));
    }
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");
    let at = now() + Duration::seconds(1);

    // A claimer that outlived its lease: its round counts for nothing.
    let stale = store.claim(&ep.id, at, lease, 100).await.expect("claim");
    assert_eq!(stale.len(), 10);
    let after_lease = at + Duration::seconds(31);
    let claimed = store
        .claim(&ep.id, after_lease, lease, 100)
        .await
        .expect("claim again");
    assert_eq!(claimed.len(), 10, "the whole round is claimed again");
    let attempt = |d: &crate::webhooks::ClaimedDelivery, result, retry_at| Attempt {
        endpoint_id: d.endpoint_id.clone(),
        event_id: d.event_id.clone(),
        claim: d.claim,
        result,
        latency: std::time::Duration::from_millis(3),
        at: after_lease,
        retry_at,
        batch: d.batch.clone(),
    };
    let delivered = |d| attempt(d, AttemptResult::Delivered { status: 204 }, None);
    store
        .settle(
            &stale.iter().map(delivered).collect::<Vec<_>>(),
            &policy,
            after_lease,
        )
        .await
        .expect("stale settle");
    assert!(
        store
            .deliveries("t1", &ep.id, None, 100)
            .await
            .expect("log")
            .iter()
            .all(|d| d.attempts == 0 && d.state == "pending"),
        "the stale claimer's word counts for nothing"
    );

    // Six go through, one fails, three are skipped.
    let retry_at = after_lease + Duration::seconds(5);
    let mut round: Vec<Attempt> = claimed[..6].iter().map(delivered).collect();
    round.push(attempt(
        &claimed[6],
        AttemptResult::Failed {
            status: Some(503),
            error: "HTTP 503".into(),
        },
        Some(retry_at),
    ));
    for d in &claimed[7..] {
        round.push(attempt(d, AttemptResult::Skipped, None));
    }
    store
        .settle(&round, &policy, after_lease)
        .await
        .expect("settle");
    let log = store
        .deliveries("t1", &ep.id, None, 100)
        .await
        .expect("log");
    assert_eq!(log.len(), 10, "{log:?}");
    let state_of = |id: &str| {
        let d = log.iter().find(|d| d.id == id).expect("in the log");
        (d.state.clone(), d.attempts, d.last_status_code)
    };
    for d in &claimed[..6] {
        assert_eq!(state_of(&d.event_id), ("delivered".into(), 1, Some(204)));
    }
    assert_eq!(
        state_of(&claimed[6].event_id),
        ("pending".into(), 1, Some(503))
    );
    for d in &claimed[7..] {
        assert_eq!(state_of(&d.event_id), ("pending".into(), 0, None));
    }
    assert!(
        log.windows(2).all(|w| w[0].id > w[1].id),
        "newest first, each once"
    );

    // What was not attempted is due at once; the failed one at its retry time.
    let again = store
        .claim(&ep.id, after_lease, lease, 100)
        .await
        .expect("claim the rest");
    let mut ids: Vec<&str> = again.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort();
    let mut expected: Vec<&str> = claimed[7..].iter().map(|d| d.event_id.as_str()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(again.iter().all(|d| d.attempts == 0));
    store
        .settle(
            &again.iter().map(delivered).collect::<Vec<_>>(),
            &policy,
            after_lease,
        )
        .await
        .expect("settle the rest");
    let retried = store
        .claim(&ep.id, retry_at, lease, 100)
        .await
        .expect("claim the retry");
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].event_id.as_str(), retried[0].attempts),
        (claimed[6].event_id.as_str(), 1)
    );
    store
        .settle(&[delivered(&retried[0])], &policy, retry_at)
        .await
        .expect("settle the retry");

    // Pages of three, newest first: every delivery once, all delivered.
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .deliveries("t1", &ep.id, before.as_deref(), 3)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        assert!(page.iter().all(|d| d.state == "delivered"), "{page:?}");
        seen.extend(page.iter().map(|d| d.id.clone()));
        before = page.last().map(|d| d.id.clone());
    }
    let mut all: Vec<String> = claimed.iter().map(|d| d.event_id.clone()).collect();
    all.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, all);

    // Replay: each of them due again, once.
    assert_eq!(
        store
            .replay("t1", &ep.id, at - Duration::hours(1), retry_at)
            .await
            .expect("replay"),
        10
    );
    let replayed = store
        .claim(&ep.id, retry_at, lease, 100)
        .await
        .expect("claim the replay");
    let mut ids: Vec<String> = replayed.iter().map(|d| d.event_id.clone()).collect();
    ids.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, all);
}

/// Erasing a person redacts every webhook event about their messages wherever it is kept
/// (waiting, moved to a row of its own after a failed attempt, delivered and in the log, a
/// receipt's event) and the labels kept for their receipts: no tags, no metadata, the recipient
/// masked in the detail too. The events stay under their ids, and other people's events, and
/// the same number's in another tenant, are untouched. `keep_the_old_way` is as for
/// `receipts_find_the_labels_wherever_they_were_kept`.
pub async fn erasure_redacts_the_persons_webhook_events<S, F, Fut>(
    store: &S,
    webhooks: &dyn WebhookStore,
    keep_the_old_way: F,
) where
    S: HistoryStore + crate::profiles::ProfileStore,
    F: FnOnce(crate::model::MessageId, &'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use ump_automation::profile::{Contacts, Profile};
    let phone = "+821077778888";
    let lease = std::time::Duration::from_secs(30);
    let policy = RetryPolicy::default();
    let start = now();
    let ep = endpoint("t1", all_events(), start);
    let elsewhere_ep = endpoint("t2", all_events(), start);
    for e in [&ep, &elsewhere_ep] {
        webhooks
            .create_endpoint(e, &new_secret())
            .await
            .expect("create");
    }
    let kim = Profile {
        user_id: "kim".into(),
        contacts: Contacts {
            phone: Some(phone.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    store.save_profile("t1", &kim).await.expect("save");
    let labelled = |tenant: &str, to: &str| {
        let mut e = envelope(tenant, to);
        e.tags = vec!["vip".into()];
        e.metadata.insert("customer".into(), "Kim Minji".into());
        e
    };
    let sent = labelled("t1", phone);
    let receipt_later = labelled("t1", phone);
    let failed = labelled("t1", phone);
    let other = labelled("t1", "+821011110000");
    let elsewhere = labelled("t2", phone);
    let all = [&sent, &receipt_later, &failed, &other, &elsewhere];
    history_record(
        store,
        all.iter()
            .map(|e| Transition::of(e, Status::Accepted, e.accepted_at))
            .collect(),
    )
    .await;
    // A round: every accepted event delivered but the first, which fails and (in MySQL) moves
    // out of its batch to a row of its own.
    let at = now() + Duration::seconds(1);
    let claimed = webhooks.claim(&ep.id, at, lease, 100).await.expect("claim");
    assert_eq!(claimed.len(), 4);
    let round: Vec<Attempt> = claimed
        .iter()
        .map(|d| Attempt {
            endpoint_id: d.endpoint_id.clone(),
            event_id: d.event_id.clone(),
            claim: d.claim,
            result: if d.payload.contains(&sent.id.to_string()) {
                AttemptResult::Failed {
                    status: Some(500),
                    error: "HTTP 500".into(),
                }
            } else {
                AttemptResult::Delivered { status: 204 }
            },
            latency: std::time::Duration::from_millis(3),
            at,
            retry_at: Some(at + Duration::seconds(5)),
            batch: d.batch.clone(),
        })
        .collect();
    webhooks.settle(&round, &policy, at).await.expect("settle");
    let later = |e: &crate::model::Envelope, ms| e.accepted_at + Duration::milliseconds(ms);
    history_record(
        store,
        vec![
            Transition::of(&sent, Status::Sent, later(&sent, 5))
                .provider("sandbox", Some("sb-erase-1".into())),
            Transition::of(&receipt_later, Status::Sent, later(&receipt_later, 5))
                .provider("sandbox", Some("sb-erase-2".into())),
            Transition::of(&failed, Status::Failed, later(&failed, 5))
                .detail(format!("provider: {phone} is not reachable")),
            Transition::of(&other, Status::Sent, later(&other, 5))
                .provider("sandbox", Some("sb-erase-3".into())),
            Transition::of(&elsewhere, Status::Sent, later(&elsewhere, 5))
                .provider("sandbox", Some("sb-erase-4".into())),
        ],
    )
    .await;
    // The labels of one of Kim's messages kept as an earlier version did.
    keep_the_old_way(
        receipt_later.id,
        r#"["vip"]"#,
        r#"{"customer": "Kim Minji"}"#,
    )
    .await;
    let receipt = |id: &str, e: &crate::model::Envelope| Receipt {
        provider: "sandbox".into(),
        message: ReceiptFor::ProviderMessageId(id.into()),
        status: Status::Delivered,
        at: e.accepted_at + Duration::seconds(1),
        detail: None,
    };
    for (id, e) in [("sb-erase-1", &sent), ("sb-erase-4", &elsewhere)] {
        assert_eq!(
            store.apply_receipt(&receipt(id, e)).await.expect("receipt"),
            ReceiptOutcome::Applied(e.id)
        );
    }
    let ids_before = log_ids(webhooks, "t1", &ep.id).await;
    assert_eq!(ids_before.len(), 9);

    let erased = store.erase("t1", "kim", now()).await.expect("erase");
    // Kim's: three accepted, two sent, one failed, one delivered.
    assert_eq!(erased.webhook_events_redacted, 7, "{erased:?}");
    assert_eq!(erased.messages_masked, 3);
    // The receipt that arrives after the erasure finds no labels.
    assert_eq!(
        store
            .apply_receipt(&receipt("sb-erase-2", &receipt_later))
            .await
            .expect("receipt"),
        ReceiptOutcome::Applied(receipt_later.id)
    );

    // Every event the endpoint has, sent again and claimed: the log keeps every id.
    let ids_after = log_ids(webhooks, "t1", &ep.id).await;
    assert_eq!(ids_after.len(), 10, "the nine and the late receipt's");
    assert!(ids_after.is_superset(&ids_before));
    let bodies = |tenant: &'static str, endpoint: String| async move {
        let until = now() + Duration::minutes(10);
        webhooks
            .replay(tenant, &endpoint, start - Duration::hours(1), until)
            .await
            .expect("replay");
        webhooks
            .claim(&endpoint, until, lease, 100)
            .await
            .expect("claim")
            .into_iter()
            .map(|d| serde_json::from_str::<serde_json::Value>(&d.payload).expect("JSON"))
            .collect::<Vec<_>>()
    };
    let replayed = bodies("t1", ep.id.clone()).await;
    assert_eq!(replayed.len(), 10);
    let kims = [sent.id, receipt_later.id, failed.id].map(|id| id.to_string());
    for body in &replayed {
        let data = &body["data"];
        let text = body.to_string();
        if kims.iter().any(|id| data["id"] == *id) {
            assert!(!text.contains(phone), "{text}");
            assert!(!text.contains("Kim Minji"), "{text}");
            assert_eq!(data["tags"], serde_json::json!([]), "{text}");
            assert_eq!(data["to"], "+8210****8888");
        } else {
            assert_eq!(data["tags"], serde_json::json!(["vip"]), "{text}");
            assert_eq!(data["metadata"]["customer"], "Kim Minji", "{text}");
        }
    }
    let failed_event = replayed
        .iter()
        .find(|b| b["type"] == "message.failed")
        .expect("the failure's event");
    assert_eq!(
        failed_event["data"]["detail"],
        "provider: +8210****8888 is not reachable"
    );
    // The same number in another tenant is another person.
    let theirs = bodies("t2", elsewhere_ep.id.clone()).await;
    assert_eq!(theirs.len(), 3);
    assert!(theirs.iter().all(|b| b["data"]["tags"][0] == "vip"));
}

/// The ids in the endpoint's delivery log.
async fn log_ids(
    store: &dyn WebhookStore,
    tenant: &str,
    endpoint: &str,
) -> std::collections::BTreeSet<String> {
    store
        .deliveries(tenant, endpoint, None, 100)
        .await
        .expect("log")
        .into_iter()
        .map(|d| d.id)
        .collect()
}

async fn history_record(history: &dyn HistoryStore, transitions: Vec<Transition>) {
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");
}

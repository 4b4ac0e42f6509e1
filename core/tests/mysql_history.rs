//! The MySQL history store against the real MariaDB: idempotent batch writes, newest state wins,
//! keyset pagination, tenant isolation, and the lease on parked messages.

use chrono::{Duration as ChronoDuration, Utc};
use std::time::Duration;
use ump_core::history::{
    BatchRecord, HistoryStore, MessageFilter, Receipt, ReceiptFor, ReceiptOutcome, Transition,
    decode_cursor,
};
use ump_core::model::Status;
use ump_core::store::MySqlHistory;
use ump_core::testing::{TestDatabase, parking};

use parking::envelope;

#[tokio::test]
async fn batches_are_idempotent_and_the_newest_state_wins() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let e = envelope("t1", "+821011112222");
    let accepted = Transition::of(&e, Status::Accepted, e.accepted_at);
    let mut attempt = e.clone();
    attempt.attempts = 1;
    let sent = Transition::of(
        &attempt,
        Status::Sent,
        e.accepted_at + ChronoDuration::milliseconds(5),
    )
    .provider("sandbox", Some("p-1".into()));
    let batch = BatchRecord {
        transitions: vec![accepted.clone(), sent],
        deferred: vec![],
    };
    history.record(&batch).await.expect("record");
    // The same batch again (a worker that died before committing its offsets): nothing changes.
    history.record(&batch).await.expect("record again");
    // An older state arriving late never overwrites the newer one.
    history
        .record(&BatchRecord {
            transitions: vec![accepted],
            deferred: vec![],
        })
        .await
        .expect("record stale");

    let view = history.get("t1", e.id).await.expect("get").expect("found");
    assert_eq!(view.status, Status::Sent);
    assert_eq!(view.attempts, 1);
    assert_eq!(view.provider.as_deref(), Some("sandbox"));
    assert_eq!(view.provider_message_id.as_deref(), Some("p-1"));
    let events: Vec<Status> = view
        .events
        .expect("events")
        .iter()
        .map(|ev| ev.status)
        .collect();
    assert_eq!(events, [Status::Accepted, Status::Sent]);

    // Another tenant does not see it.
    assert!(history.get("t2", e.id).await.expect("get").is_none());
    db.drop_database().await;
}

#[tokio::test]
async fn event_details_keep_the_contract() {
    let db = TestDatabase::create().await;
    ump_core::testing::history::details_are_kept_to_their_first_bytes(&MySqlHistory::new(
        db.pool.clone(),
    ))
    .await;
    db.drop_database().await;
}

#[tokio::test]
async fn list_pages_by_keyset_newest_first_with_filters() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let mut transitions = Vec::new();
    let mut ids = Vec::new();
    for i in 0..25 {
        let to = if i % 5 == 0 {
            "+821099990000"
        } else {
            "+821000000000"
        };
        let e = envelope("t1", to);
        ids.push(e.id);
        transitions.push(Transition::of(&e, Status::Accepted, e.accepted_at));
        std::thread::sleep(Duration::from_millis(1));
    }
    transitions.push(Transition::of(
        &envelope("t2", "+821000000000"),
        Status::Accepted,
        Utc::now(),
    ));
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");

    let mut seen = Vec::new();
    let mut filter = MessageFilter {
        limit: 10,
        ..Default::default()
    };
    loop {
        let page = history.list("t1", &filter).await.expect("list");
        seen.extend(page.items.iter().map(|m| m.id));
        match page.next_cursor {
            Some(cursor) => filter.before = Some(decode_cursor(&cursor).expect("cursor")),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "every message of the tenant once, newest first");

    let only = history
        .list(
            "t1",
            &MessageFilter {
                to: Some("+821099990000".into()),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("list by recipient");
    assert_eq!(only.items.len(), 5);
    let none = history
        .list(
            "t1",
            &MessageFilter {
                status: Some(Status::Sent),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("list by status");
    assert!(none.items.is_empty());
    let since = history
        .list(
            "t1",
            &MessageFilter {
                since: Some(Utc::now() + ChronoDuration::hours(1)),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("list since");
    assert!(since.items.is_empty());
    db.drop_database().await;
}

#[tokio::test]
async fn parked_messages_keep_the_contract() {
    for scenario in 0..3 {
        let db = TestDatabase::create().await;
        let history = MySqlHistory::new(db.pool.clone());
        match scenario {
            0 => parking::claims_hold_for_their_lease(&history).await,
            1 => parking::a_release_never_removes_a_newer_parking(&history).await,
            _ => parking::overdue_parkings_are_counted(&history).await,
        }
        db.drop_database().await;
    }
}

#[tokio::test]
async fn profiles_keep_the_contract() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    ump_core::testing::profiles::profiles_are_per_tenant_and_erasure_leaves_nothing(&history).await;
    db.drop_database().await;
}

#[tokio::test]
async fn broadcasts_keep_the_contract() {
    let db = TestDatabase::create().await;
    let store = ump_core::broadcast::MySqlBroadcasts::new(db.pool.clone());
    ump_core::testing::broadcast::one_sender_at_a_time_and_takeover_after_the_lease(&store).await;
    db.drop_database().await;
}

/// Folds entries the way the cluster's processor does: a batch of one partition, offsets in order.
fn processor(
    audience: ump_core::audience_mysql::MySqlAudience,
) -> impl Fn(
    Vec<ump_core::audience::LogEntry>,
    chrono::DateTime<Utc>,
) -> futures::future::BoxFuture<'static, ()> {
    use ump_core::audience_mysql::Positioned;
    let offset = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    move |entries, now| {
        let audience = audience.clone();
        let offset = std::sync::Arc::clone(&offset);
        Box::pin(async move {
            let batch: Vec<Positioned> = entries
                .into_iter()
                .map(|entry| Positioned {
                    partition: 0,
                    offset: offset.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    entry: Some(entry),
                })
                .collect();
            audience
                .process("group", "topic", &batch, now)
                .await
                .expect("process");
        })
    }
}

#[tokio::test]
async fn segments_keep_the_contract() {
    use ump_core::audience_mysql::MySqlAudience;
    let db = TestDatabase::create().await;
    let audience = MySqlAudience::new(db.pool.clone());
    let history = MySqlHistory::new(db.pool.clone());
    let process = processor(audience.clone());
    ump_core::testing::audience::segments_members_sizes_and_erasure(&audience, &history, &process)
        .await;
    db.drop_database().await;
}

#[tokio::test]
async fn journeys_keep_the_contract() {
    use ump_core::audience_mysql::MySqlAudience;
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let process = processor(MySqlAudience::new(db.pool.clone()));
    ump_core::testing::journeys::versions_outbox_and_erasure(
        &ump_core::journeys::MySqlJourneys::new(db.pool.clone()),
        &history,
        &process,
    )
    .await;
    db.drop_database().await;
}

#[tokio::test]
async fn catalog_keeps_the_contract() {
    let db = TestDatabase::create().await;
    ump_core::testing::catalog::upserts_pages_and_tenants(&ump_core::catalog::MySqlCatalog::new(
        db.pool.clone(),
    ))
    .await;
    db.drop_database().await;
}

#[tokio::test]
async fn the_recommendation_model_keeps_the_contract() {
    use ump_core::audience_mysql::MySqlAudience;
    let db = TestDatabase::create().await;
    let audience = MySqlAudience::new(db.pool.clone());
    let process = processor(audience.clone());
    ump_core::testing::recommendations::the_model_follows_the_events(
        &audience,
        &ump_core::recommendations::MySqlItemModel::new(db.pool.clone()),
        &ump_core::catalog::MySqlCatalog::new(db.pool.clone()),
        &process,
    )
    .await;
    db.drop_database().await;
}

/// Erasures racing the processor: four lanes fold events of 300 people (some with a profile
/// already, some never seen) while each of them is erased. Every event was accepted before its
/// person's erasure, so whatever the interleaving, nothing of an erased person may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_racing_the_processor_always_wins_over_older_events() {
    use ump_core::audience::{LogEntry, SegmentStore};
    use ump_core::audience_mysql::{MySqlAudience, Positioned};
    use ump_core::profiles::ProfileStore;
    let db = TestDatabase::create().await;
    let audience = MySqlAudience::new(db.pool.clone());
    let history = MySqlHistory::new(db.pool.clone());
    let now = Utc::now();
    let segment = serde_json::from_value(serde_json::json!({"id": "viewers",
        "condition": {"performed": {"event": "product_viewed", "within": "1h"}}}))
    .expect("segment");
    audience.put_segment("t1", segment, now).await.expect("put");
    const PEOPLE: usize = 300;
    let user = |p: usize| format!("p-{p:03}");
    for p in (0..PEOPLE).step_by(2) {
        let profile =
            serde_json::from_value(serde_json::json!({"user_id": user(p)})).expect("profile");
        history.save_profile("t1", &profile).await.expect("save");
    }
    let accepted = now - ChronoDuration::seconds(1);
    // Each lane owns one partition: 3 rounds of every one of its people's events.
    let lanes: Vec<Vec<Positioned>> = (0..4)
        .map(|lane| {
            (0..3)
                .flat_map(|_| (lane..PEOPLE).step_by(4))
                .enumerate()
                .map(|(offset, p)| {
                    let mut queued = serde_json::from_value::<ump_automation::event::EventInput>(
                        serde_json::json!({"user_id": user(p), "event": "product_viewed"}),
                    )
                    .expect("event")
                    .check("", now)
                    .expect("valid");
                    queued.received_at = accepted;
                    Positioned {
                        partition: lane as i32,
                        offset: offset as i64,
                        entry: Some(LogEntry {
                            tenant: "t1".into(),
                            queued,
                        }),
                    }
                })
                .collect()
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let audience = audience.clone();
        tasks.spawn(async move {
            for batch in lane.chunks(25) {
                // What the processor does: a conflict or a deadlock is retried.
                let mut tries = 0;
                while let Err(e) = audience.process("g", "events", batch, Utc::now()).await {
                    tries += 1;
                    assert!(tries < 50, "a batch never went in: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        });
    }
    let erasing = {
        let history = history.clone();
        tokio::spawn(async move {
            for p in 0..PEOPLE {
                let mut tries = 0;
                while let Err(e) = history.erase("t1", &user(p), Utc::now()).await {
                    tries += 1;
                    assert!(tries < 50, "an erasure never went in: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        })
    };
    while let Some(done) = tasks.join_next().await {
        done.expect("a lane");
    }
    erasing.await.expect("erasing");
    for (table, count) in [
        ("profiles", "SELECT COUNT(*) FROM profiles"),
        ("person_state", "SELECT COUNT(*) FROM person_state"),
        ("segment_members", "SELECT COUNT(*) FROM segment_members"),
    ] {
        let left: i64 = sqlx::query_scalar(count)
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(left, 0, "{table} keeps {left} rows of erased people");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn the_sweep_parks_again_a_message_whose_copy_went_missing_and_collects_the_rest() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let queues = vec!["ump.default.sms".to_owned()];
    let grace = Duration::from_secs(600);
    let now = Utc::now();
    let lost = parking::envelope("t1", "+821000000010");
    let delivered = parking::envelope("t1", "+821000000011");
    parking::park(&history, &lost, now - ChronoDuration::seconds(1)).await;
    parking::park(&history, &delivered, now - ChronoDuration::seconds(1)).await;
    let claimed = history
        .claim_due(&queues, now, Duration::from_secs(30), 100)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let claims: Vec<_> = claimed.iter().map(|c| c.claim).collect();
    history.release(&claims).await.expect("release");
    // One copy arrives and is sent; the other never arrives.
    let mut sent = delivered.clone();
    sent.attempts = 1;
    history
        .record(&BatchRecord {
            transitions: vec![Transition::of(&sent, Status::Sent, Utc::now())],
            deferred: vec![],
        })
        .await
        .expect("record sent");

    // Within the grace nothing is repaired; published parkings of finished messages go.
    let soon = Utc::now() + ChronoDuration::seconds(90);
    let health = history
        .sweep_parking(&queues, soon, grace)
        .await
        .expect("sweep");
    assert_eq!((health.reparked, health.collected), (0, 1), "{health:?}");
    assert!(
        history
            .claim_due(&queues, soon, Duration::from_secs(30), 100)
            .await
            .expect("claim")
            .is_empty(),
        "a published parking is not handed out again"
    );

    // Past the grace the lost one is parked again, due at once, and handed out.
    let late = Utc::now() + ChronoDuration::seconds(601);
    let health = history
        .sweep_parking(&queues, late, grace)
        .await
        .expect("sweep");
    assert_eq!((health.reparked, health.collected), (1, 0), "{health:?}");
    let again = history
        .claim_due(&queues, late, Duration::from_secs(30), 100)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].deferred.envelope, lost);
    // A second sweep (another worker) finds nothing more to do.
    let health = history
        .sweep_parking(&queues, late, grace)
        .await
        .expect("sweep");
    assert_eq!((health.reparked, health.collected), (0, 0), "{health:?}");
    db.drop_database().await;
}

/// A batch parking messages, its transaction still open, never holds up a scheduler's claim of
/// the parkings due beside it: the claim scans the due-time index at read committed, taking no
/// gap locks and passing over rows not yet committed. At repeatable read the claim waited for
/// the batch here, and in the provider benchmark the two deadlocked.
#[tokio::test]
async fn a_claim_does_not_wait_for_a_batch_parking_beside_it() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let queues = vec!["ump.default.sms".to_owned()];
    let now = Utc::now();
    let due = parking::envelope("t1", "+821000000020");
    parking::park(&history, &due, now - ChronoDuration::seconds(2)).await;

    let mut batch = db.pool.begin().await.expect("begin");
    let beside = parking::envelope("t1", "+821000000021");
    sqlx::query("INSERT INTO deferred_messages (id, queue, due_at, envelope) VALUES (?, ?, ?, ?)")
        .bind(beside.id.as_bytes().as_slice())
        .bind("ump.default.sms")
        .bind((now - ChronoDuration::seconds(1)).naive_utc())
        .bind(serde_json::to_vec(&beside).expect("encode"))
        .execute(&mut *batch)
        .await
        .expect("park beside, uncommitted");

    let claimed = tokio::time::timeout(
        Duration::from_secs(10),
        history.claim_due(&queues, now, Duration::from_secs(30), 100),
    )
    .await
    .expect("the claim waited for the open batch")
    .expect("claim");
    let ids: Vec<_> = claimed.iter().map(|c| c.deferred.envelope.id).collect();
    assert_eq!(
        ids,
        vec![due.id],
        "only the committed parking is handed out"
    );

    // Once the batch commits, its parking is handed out too.
    batch.commit().await.expect("commit");
    let claimed = history
        .claim_due(&queues, now, Duration::from_secs(30), 100)
        .await
        .expect("claim");
    let ids: Vec<_> = claimed.iter().map(|c| c.deferred.envelope.id).collect();
    assert_eq!(ids, vec![beside.id]);
    db.drop_database().await;
}

#[tokio::test]
async fn prune_deletes_only_history_older_than_the_cutoff() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let webhooks = ump_core::webhooks_store::MySqlWebhooks::new(db.pool.clone());
    ump_core::testing::history::prune_deletes_only_history_older_than_the_cutoff(
        &history,
        &webhooks,
        |cutoff, chunk| history.prune(cutoff, chunk),
        || async {
            sqlx::query_scalar("SELECT COUNT(*) FROM message_events")
                .fetch_one(&db.pool)
                .await
                .expect("count")
        },
    )
    .await;
    db.drop_database().await;
}

#[tokio::test]
async fn receipts_move_sent_messages_once_and_only_their_providers() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let mut sent = Vec::new();
    for (provider, provider_id) in [("twilio", "SM1"), ("twilio", "SM2"), ("nhn", "SM1")] {
        let mut e = envelope("t1", "+821011112222");
        e.attempts = 1;
        let at = e.accepted_at + ChronoDuration::milliseconds(5);
        history
            .record(&BatchRecord {
                transitions: vec![
                    Transition::of(&e, Status::Sent, at)
                        .provider(provider, Some(provider_id.into())),
                ],
                deferred: vec![],
            })
            .await
            .expect("record sent");
        sent.push(e);
    }
    let receipt = |provider: &str, message: ReceiptFor, status| Receipt {
        provider: provider.into(),
        message,
        status,
        at: Utc::now(),
        detail: Some("carrier says so".into()),
    };

    // Found by the provider's id, and only among that provider's messages.
    let delivered = receipt(
        "twilio",
        ReceiptFor::ProviderMessageId("SM1".into()),
        Status::Delivered,
    );
    assert_eq!(
        history.apply_receipt(&delivered).await.expect("apply"),
        ReceiptOutcome::Applied(sent[0].id)
    );
    let view = history
        .get("t1", sent[0].id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(view.status, Status::Delivered);
    let events = view.events.expect("events");
    assert!(
        events.iter().any(
            |e| e.status == Status::Delivered && e.detail.as_deref() == Some("carrier says so")
        ),
        "{events:?}"
    );
    let other = history
        .get("t1", sent[2].id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(other.status, Status::Sent, "nhn's SM1 is another message");

    // Again, or a late failure: nothing changes.
    assert_eq!(
        history.apply_receipt(&delivered).await.expect("apply"),
        ReceiptOutcome::Unchanged {
            id: sent[0].id,
            status: Status::Delivered
        }
    );
    let late = receipt(
        "twilio",
        ReceiptFor::ProviderMessageId("SM1".into()),
        Status::Failed,
    );
    assert!(matches!(
        history.apply_receipt(&late).await.expect("apply"),
        ReceiptOutcome::Unchanged { .. }
    ));

    // Unknown ids, and UMP ids under the wrong provider, are unknown.
    for unknown in [
        receipt(
            "twilio",
            ReceiptFor::ProviderMessageId("SM9".into()),
            Status::Delivered,
        ),
        receipt("nhn", ReceiptFor::Message(sent[1].id), Status::Delivered),
    ] {
        assert_eq!(
            history.apply_receipt(&unknown).await.expect("apply"),
            ReceiptOutcome::Unknown
        );
    }
    // By UMP's id under its own provider: applied.
    assert_eq!(
        history
            .apply_receipt(&receipt(
                "twilio",
                ReceiptFor::Message(sent[1].id),
                Status::Failed
            ))
            .await
            .expect("apply"),
        ReceiptOutcome::Applied(sent[1].id)
    );

    // The worker recording the same `sent` again (a batch consumed twice) does not undo the
    // delivery.
    let mut again = sent[0].clone();
    again.attempts = 1;
    history
        .record(&BatchRecord {
            transitions: vec![Transition::of(&again, Status::Sent, Utc::now())],
            deferred: vec![],
        })
        .await
        .expect("record again");
    let view = history
        .get("t1", sent[0].id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(view.status, Status::Delivered);
    db.drop_database().await;
}

#[tokio::test]
async fn webhooks_keep_the_contract() {
    use ump_core::testing::webhooks;
    for run in 0..7 {
        let db = TestDatabase::create().await;
        let history = MySqlHistory::new(db.pool.clone());
        let store = ump_core::webhooks_store::MySqlWebhooks::new(db.pool.clone());
        match run {
            0 => webhooks::events_are_written_with_their_status_change(&history, &store).await,
            1 => {
                webhooks::deliveries_are_leased_and_settled_by_their_claimer(&history, &store).await
            }
            2 => webhooks::an_endpoint_failing_for_days_is_disabled(&history, &store).await,
            3 => {
                webhooks::a_round_records_each_delivery_and_the_log_pages_through_them(
                    &history, &store,
                )
                .await
            }
            4 => {
                let pool = db.pool.clone();
                webhooks::receipts_find_the_labels_wherever_they_were_kept(
                    &history,
                    &store,
                    |id, tags, metadata| keep_the_old_way(pool, id, tags, metadata),
                )
                .await
            }
            5 => {
                let pool = db.pool.clone();
                webhooks::erasure_redacts_the_persons_webhook_events(
                    &history,
                    &store,
                    |id, tags, metadata| keep_the_old_way(pool, id, tags, metadata),
                )
                .await
            }
            _ => {
                webhooks::endpoints_are_per_tenant_and_rotation_keeps_the_old_secret_for_a_while(
                    &history, &store,
                )
                .await
            }
        }
        db.drop_database().await;
    }
}

/// Moves a message's labels to where versions before `messages.webhook_labels` kept them.
async fn keep_the_old_way(
    pool: sqlx::MySqlPool,
    id: ump_core::model::MessageId,
    tags: &str,
    metadata: &str,
) {
    sqlx::query("UPDATE messages SET webhook_labels = NULL WHERE id = ?")
        .bind(id.as_bytes().as_slice())
        .execute(&pool)
        .await
        .expect("forget");
    sqlx::query("INSERT INTO webhook_messages (message_id, tags, metadata) VALUES (?, ?, ?)")
        .bind(id.as_bytes().as_slice())
        .bind(tags)
        .bind(metadata)
        .execute(&pool)
        .await
        .expect("keep the old way");
}

/// A lock the server gives up on (or a deadlock) is recognised, and `again_on_deadlock` runs the
/// operation again; other errors are returned at once.
#[tokio::test]
async fn losing_a_lock_is_retried_at_once_and_other_errors_are_not() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use ump_core::history::{HistoryError, again_on_deadlock};
    let db = TestDatabase::create().await;
    sqlx::raw_sql("CREATE TABLE locks (id INT PRIMARY KEY); INSERT INTO locks VALUES (1)")
        .execute(&db.pool)
        .await
        .expect("table");
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM locks WHERE id = 1 FOR UPDATE")
        .fetch_all(&mut *holder)
        .await
        .expect("lock");
    let tries = AtomicU32::new(0);
    let result = again_on_deadlock(|| async {
        tries.fetch_add(1, Ordering::SeqCst);
        let mut conn = db.pool.acquire().await?;
        sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 1")
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE locks SET id = 2 WHERE id = 1")
            .execute(&mut *conn)
            .await?;
        Ok::<_, HistoryError>(())
    })
    .await;
    let error = result.expect_err("the row stays locked");
    assert!(error.is_deadlock(), "{error}");
    assert_eq!(tries.load(Ordering::SeqCst), 3, "three tries in all");
    holder.rollback().await.expect("rollback");

    let tries = AtomicU32::new(0);
    let result: Result<(), HistoryError> = again_on_deadlock(|| async {
        tries.fetch_add(1, Ordering::SeqCst);
        Err(HistoryError::Corrupt("not a lock".into()))
    })
    .await;
    assert!(!result.expect_err("corrupt").is_deadlock());
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    db.drop_database().await;
}

/// Takers and rebuilds racing: four upkeep loops take staged batches side by side while two
/// rebuild the items' lists (folding the takes' partner deltas into the items' rows): every
/// pair and person is counted once, and no delta is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takers_and_rebuilds_racing_count_everything_once() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use ump_automation::recommend::{ItemChanges, Partners};
    use ump_core::recommendations::{ItemModel, MySqlItemModel, stage_mysql};
    let db = TestDatabase::create().await;
    const BATCHES: u32 = 24;
    for i in 0..BATCHES {
        let mut changes = ItemChanges::default();
        changes.pairs.insert(("x".into(), "y".into()), 1);
        changes.pairs.insert(("y".into(), format!("z{}", i % 3)), 2);
        changes.people.insert("x".into(), 1);
        let mut tx = db.pool.begin().await.expect("begin");
        stage_mysql(
            &mut tx,
            &BTreeMap::from([("t".to_owned(), changes)]),
            Utc::now(),
        )
        .await
        .expect("stage");
        tx.commit().await.expect("commit");
    }
    let later = || Utc::now() + ChronoDuration::hours(1);
    let taking = Arc::new(AtomicBool::new(true));
    let rebuilders: Vec<_> = (0..2)
        .map(|_| {
            let model = MySqlItemModel::new(db.pool.clone());
            let taking = taking.clone();
            tokio::spawn(async move {
                while taking.load(Ordering::SeqCst) {
                    model
                        .rebuild_neighbours(500, later(), Utc::now())
                        .await
                        .expect("rebuild");
                }
            })
        })
        .collect();
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let model = MySqlItemModel::new(db.pool.clone());
            tokio::spawn(async move {
                let mut taken = 0;
                loop {
                    match model.take_changes(2, Utc::now()).await.expect("take") {
                        0 => return taken,
                        n => taken += n,
                    }
                }
            })
        })
        .collect();
    let mut taken = 0;
    for taker in takers {
        taken += taker.await.expect("taker");
    }
    taking.store(false, Ordering::SeqCst);
    for rebuilder in rebuilders {
        rebuilder.await.expect("rebuilder");
    }
    assert_eq!(taken, u64::from(BATCHES));
    let model = MySqlItemModel::new(db.pool.clone());
    while model
        .rebuild_neighbours(500, later(), Utc::now())
        .await
        .expect("rebuild")
        > 0
    {}
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_partner_deltas")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "every delta folded");
    let partners = |item: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (people, text): (i64, Vec<u8>) = sqlx::query_as(
                "SELECT people, partners FROM item_people WHERE tenant_id = 't' AND item_id = ?",
            )
            .bind(item)
            .fetch_one(&pool)
            .await
            .expect("row");
            let list = Partners::decode(std::str::from_utf8(&text).expect("utf-8")).expect("list");
            let list: Vec<(String, u32)> = list.iter().map(|(p, n)| (p.to_owned(), n)).collect();
            (people, list)
        }
    };
    let pairs = |list: &[(&str, u32)]| -> Vec<(String, u32)> {
        list.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
    };
    assert_eq!(partners("x").await, (24, pairs(&[("y", 24)])));
    assert_eq!(
        partners("y").await,
        (0, pairs(&[("x", 24), ("z0", 16), ("z1", 16), ("z2", 16)]))
    );
    assert_eq!(partners("z1").await, (0, pairs(&[("y", 16)])));
    db.drop_database().await;
}

#[tokio::test]
async fn api_keys_keep_the_contract() {
    let db = TestDatabase::create().await;
    let keys = ump_core::keys::MySqlKeys::new(db.pool.clone());
    ump_core::testing::keys::keys_are_hashed_replaced_and_revoked(&keys, "t1").await;
}

/// Lanes (and dispatchers) that read the same candidate batches take different ones: with the
/// oldest batch locked by another claim still under way, a claim takes the next one instead of
/// finding nothing (and ending its lane, which left one lane of four at work).
#[tokio::test]
async fn a_claim_takes_the_next_batch_when_another_holds_the_first() {
    use ump_core::webhooks::{EventFilter, EventType, WebhookStore, new_secret};
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let store = ump_core::webhooks_store::MySqlWebhooks::new(db.pool.clone());
    let ep = ump_core::testing::webhooks::endpoint(
        "t1",
        EventFilter {
            event_types: vec![EventType::MessageSent],
            ..Default::default()
        },
        Utc::now(),
    );
    store
        .create_endpoint(&ep, &new_secret())
        .await
        .expect("create");
    // 300 events of one transaction: a batch of 256 and one of 44.
    let transitions = (0..300)
        .map(|i| {
            let e = envelope("t1", &format!("+8210{i:08}"));
            Transition::of(&e, Status::Sent, e.accepted_at).provider("sandbox", None)
        })
        .collect();
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");
    let mut sizes: Vec<(String, u32)> = sqlx::query_as(
        "SELECT batch_key, events FROM webhook_batches WHERE endpoint_id = ? ORDER BY batch_key",
    )
    .bind(&ep.id)
    .fetch_all(&db.pool)
    .await
    .expect("batches");
    sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    assert_eq!(sizes.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [256, 44]);
    // Another claim holds the big batch locked (due first: both are due at once, and it may be
    // the one a claim looks at first).
    for (held, other) in [(0, 1), (1, 0)] {
        let mut other_claim = db.pool.begin().await.expect("begin");
        sqlx::query(
            "SELECT batch_key FROM webhook_batches \
             WHERE endpoint_id = ? AND batch_key = ? FOR UPDATE",
        )
        .bind(&ep.id)
        .bind(&sizes[held].0)
        .fetch_one(&mut *other_claim)
        .await
        .expect("lock");
        let later = Utc::now() + ChronoDuration::seconds(1);
        let claimed = store
            .claim(&ep.id, later, Duration::from_secs(30), 64)
            .await
            .expect("claim");
        assert_eq!(
            claimed.len() as u32,
            sizes[other].1,
            "the free batch, not nothing"
        );
        assert!(
            claimed
                .iter()
                .all(|d| d.batch.as_ref().is_some_and(|b| b.key == sizes[other].0))
        );
        other_claim.rollback().await.expect("rollback");
        // Free again for the next turn.
        sqlx::query("UPDATE webhook_batches SET claimed_by = NULL, claimed_until = NULL")
            .execute(&db.pool)
            .await
            .expect("unlease");
    }
    db.drop_database().await;
}

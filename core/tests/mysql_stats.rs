//! The dashboard's reads from the MySQL history against the real MariaDB: window statistics by
//! channel and status (tenant-scoped, window-bounded, read from an index alone), and the latest
//! event's detail on every listed message.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::Map;
use sqlx::Row;
use std::time::Duration;
use ump_core::history::{BatchRecord, HistoryStore, MessageFilter, Transition};
use ump_core::model::{Content, Envelope, MessageId, Priority, Status};
use ump_core::store::MySqlHistory;
use ump_core::testing::TestDatabase;
use uuid::{NoContext, Timestamp, Uuid};

/// A message accepted at `at` (its id minted then, as the API would have).
fn envelope(tenant: &str, channel: &str, at: DateTime<Utc>) -> Envelope {
    let ts = Timestamp::from_unix(
        NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    Envelope {
        id: MessageId(Uuid::new_v7(ts)),
        tenant: tenant.into(),
        channel: channel.into(),
        to: "+821011112222".into(),
        content: Content {
            body: Some("hi".into()),
            ..Default::default()
        },
        priority: Priority::Bulk,
        send_at: None,
        tags: vec![],
        metadata: Map::new(),
        idempotency_key: None,
        category: Default::default(),
        accepted_at: at,
        attempts: 0,
        fallback: None,
    }
}

fn ended(e: &Envelope, status: Status, detail: Option<&str>) -> Vec<Transition> {
    let mut out = vec![Transition::of(e, Status::Accepted, e.accepted_at)];
    if status != Status::Accepted {
        let mut last = Transition::of(e, status, e.accepted_at + ChronoDuration::milliseconds(3));
        last.detail = detail.map(str::to_owned);
        out.push(last);
    }
    out
}

#[tokio::test]
async fn stats_count_the_tenants_window_by_channel_status_and_minute() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let now = Utc::now();
    let mut transitions = Vec::new();
    let mut add = |tenant: &str, channel: &str, ago: i64, status: Status| {
        let e = envelope(tenant, channel, now - ChronoDuration::seconds(ago));
        transitions.extend(ended(&e, status, Some("provider said no")));
    };
    // In the last hour, for tenant a: 3 sms sent, 1 sms failed, 2 email delivered, 1 duplicate.
    for ago in [10, 20, 30] {
        add("a", "sms", ago, Status::Sent);
    }
    add("a", "sms", 600, Status::Failed);
    add("a", "email", 1200, Status::Delivered);
    add("a", "email", 1210, Status::Delivered);
    add("a", "email", 1800, Status::Duplicate);
    // Outside the hour, and another tenant's: never counted.
    add("a", "sms", 2 * 3600, Status::Failed);
    add("b", "sms", 15, Status::Failed);
    add("b", "push", 20, Status::Sent);
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");

    let since = now - ChronoDuration::hours(1);
    let stats = history
        .stats("a", since, Duration::from_secs(60))
        .await
        .expect("stats");
    assert_eq!(stats.totals.total, 7, "{stats:?}");
    assert_eq!(stats.totals.sent, 3);
    assert_eq!(stats.totals.failed, 1);
    assert_eq!(stats.totals.delivered, 2);
    assert_eq!(stats.totals.duplicate, 1);
    assert_eq!(stats.success_rate, Some(5.0 / 6.0));
    let channels: Vec<(&str, u64)> = stats
        .channels
        .iter()
        .map(|c| (c.channel.as_str(), c.counts.total))
        .collect();
    assert_eq!(channels, [("email", 3), ("sms", 4)]);
    assert_eq!(stats.bucket_seconds, 60);
    // 60 or 61 one-minute buckets (the first one partly before `since`), summing to the totals.
    assert!(
        (60..=61).contains(&stats.series.len()),
        "{}",
        stats.series.len()
    );
    assert_eq!(stats.series.iter().map(|b| b.counts.total).sum::<u64>(), 7);
    let newest = stats.series.last().expect("buckets");
    assert!(newest.at <= now && now - newest.at < ChronoDuration::seconds(60));
    assert!(newest.counts.sent + stats.series[stats.series.len() - 2].counts.sent >= 3);

    // A day at 15 minutes: the two-hour-old failure is in, tenant b still is not.
    let day = history
        .stats(
            "a",
            now - ChronoDuration::hours(24),
            Duration::from_secs(900),
        )
        .await
        .expect("stats");
    assert_eq!(day.totals.total, 8);
    assert_eq!(day.totals.failed, 2);
    assert!((96..=97).contains(&day.series.len()));

    let other = history
        .stats("nobody", since, Duration::from_secs(60))
        .await
        .expect("stats");
    assert_eq!(other.totals.total, 0);
    assert!(other.channels.is_empty());
    assert_eq!(other.success_rate, None);
    db.drop_database().await;
}

#[tokio::test]
async fn the_window_count_is_read_from_the_index_alone() {
    let db = TestDatabase::create().await;
    // What the store runs, asked for its plan: a range on messages_by_time, covering ("Using index").
    let plan: Vec<(Option<String>, Option<String>)> = sqlx::query(
        "EXPLAIN SELECT channel, status, CAST(CONV(HEX(LEFT(id, 6)), 16, 10) AS SIGNED) DIV 60000 AS bucket, \
         COUNT(*) AS n FROM messages FORCE INDEX (messages_by_time) \
         WHERE tenant_id = 'a' AND id >= UNHEX('00000000000000000000000000000000') \
         GROUP BY channel, status, bucket",
    )
    .fetch_all(&db.pool)
    .await
    .expect("EXPLAIN")
    .into_iter()
    .map(|row| (row.get("key"), row.get("Extra")))
    .collect();
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(plan[0].0.as_deref(), Some("messages_by_time"), "{plan:?}");
    assert!(
        plan[0].1.as_deref().unwrap_or("").contains("Using index"),
        "not covering: {plan:?}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn listed_messages_carry_their_latest_events_detail() {
    let db = TestDatabase::create().await;
    let history = MySqlHistory::new(db.pool.clone());
    let now = Utc::now();
    let failed = envelope("a", "sms", now - ChronoDuration::seconds(5));
    let sent = envelope("a", "sms", now - ChronoDuration::seconds(4));
    let mut transitions = ended(&failed, Status::Failed, Some("invalid number"));
    transitions.extend(ended(&sent, Status::Sent, None));
    history
        .record(&BatchRecord {
            transitions,
            deferred: vec![],
        })
        .await
        .expect("record");

    let page = history
        .list(
            "a",
            &MessageFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let details: Vec<(MessageId, Option<&str>)> = page
        .items
        .iter()
        .map(|m| (m.id, m.detail.as_deref()))
        .collect();
    assert_eq!(
        details,
        [(sent.id, None), (failed.id, Some("invalid number"))]
    );
    let one = history
        .get("a", failed.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(one.detail.as_deref(), Some("invalid number"));
    db.drop_database().await;
}

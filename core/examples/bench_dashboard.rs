//! The dashboard's reads on a large history, and what its index costs the writes (run by
//! `scripts/bench-dashboard`, which creates the databases and writes BENCHMARKS.md).
//!
//! 1. Fills `BENCH_READS_URL` (an empty database) with `BENCH_ROWS` messages of one tenant,
//!    accepted over the last 24 hours on 4 channels (mostly sent, some delivered, failed,
//!    dead-lettered, duplicate, in progress), two events each; generated inside MariaDB (its
//!    Sequence engine), in bounded chunks.
//! 2. Times every read the dashboard makes through `MySqlHistory`: the first run and then
//!    `BENCH_RUNS` more (median and slowest), and prints the plan of the statistics query.
//! 3. Records `BENCH_WRITE_MESSAGES` messages (accepted + sent, 1000 per batch, as the worker does)
//!    into `BENCH_NEW_URL` (this schema) and `BENCH_OLD_URL` (the same with the index swap of
//!    0003_dashboard.sql undone), alternately, twice each; the best rate of each is reported.
//!
//! Prints Markdown table rows on stdout; progress goes to stderr.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::Map;
use sqlx::{MySqlPool, Row};
use std::time::{Duration, Instant};
use ump_core::history::{BatchRecord, HistoryStore, MessageFilter, Transition};
use ump_core::model::{Content, Envelope, MessageId, Priority, Status};
use ump_core::store::{MySqlHistory, connect_mysql, migrate_mysql};

type Error = Box<dyn std::error::Error>;

const TENANT: &str = "bench";
const CHUNK: u64 = 100_000;

fn setting(name: &str, default: Option<&str>) -> Result<String, Error> {
    match (std::env::var(name), default) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(default)) => Ok(default.to_owned()),
        (Err(_), None) => Err(format!("{name} is not set").into()),
    }
}

async fn fill(pool: &MySqlPool, rows: u64) -> Result<(), Error> {
    let end = Utc::now().timestamp_millis() as u64;
    let start = end - 24 * 3600 * 1000;
    // Spread evenly over the day, the newest a few seconds before now.
    let step = (end - start - 5000) as f64 / rows as f64;
    let mut done = 0;
    while done < rows {
        let last = (done + CHUNK).min(rows) - 1;
        // The id is a UUIDv7: 48-bit millisecond timestamp, version 7, variant bits, and the
        // sequence number for uniqueness. All values are numbers computed here, not input.
        let sql = format!(
            "INSERT INTO messages (id, tenant_id, channel, recipient, status, priority, attempts, \
               provider, created_at, updated_at) \
             SELECT UNHEX(CONCAT(LPAD(HEX(ms), 12, '0'), '7', LPAD(HEX(seq MOD 4096), 3, '0'), '8', \
                      LPAD(HEX(seq), 15, '0'))), \
                    '{TENANT}', ELT(1 + seq MOD 4, 'sms', 'email', 'push', 'alimtalk'), \
                    CONCAT('+8210', LPAD(seq MOD 200000, 8, '0')), \
                    CASE WHEN seq MOD 100 < 88 THEN 'sent' WHEN seq MOD 100 < 92 THEN 'delivered' \
                         WHEN seq MOD 100 < 96 THEN 'failed' WHEN seq MOD 100 < 97 THEN 'dead_lettered' \
                         WHEN seq MOD 100 < 99 THEN 'duplicate' ELSE 'accepted' END, \
                    'bulk', 1, 'sandbox', FROM_UNIXTIME(ms / 1000), FROM_UNIXTIME(ms / 1000 + 0.25) \
             FROM (SELECT seq, {start} + FLOOR(seq * {step}) AS ms FROM seq_{done}_to_{last}) s"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        let lo = MessageId::lower_bound(start + (done as f64 * step) as u64);
        let hi = MessageId::lower_bound(start + ((last + 1) as f64 * step) as u64 + 1);
        for (attempt, status, at, detail) in [
            ("0", "'accepted'", "created_at", "NULL"),
            (
                "1",
                "status",
                "updated_at",
                "IF(status = 'failed', 'sandbox: recipient rejected', \
                 IF(status = 'dead_lettered', 'gave up after 5 attempts: timeout', NULL))",
            ),
        ] {
            let sql = format!(
                "INSERT IGNORE INTO message_events (message_id, attempt, status, at, detail) \
                 SELECT id, {attempt}, {status}, {at}, {detail} FROM messages \
                 WHERE id >= ? AND id < ? AND status <> 'accepted'"
            );
            let sql = if attempt == "0" {
                sql.replace(" AND status <> 'accepted'", "")
            } else {
                sql
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lo.as_bytes().as_slice())
                .bind(hi.as_bytes().as_slice())
                .execute(pool)
                .await?;
        }
        done = last + 1;
        eprintln!("[bench] {done} messages written");
    }
    sqlx::query("ANALYZE TABLE messages, message_events")
        .execute(pool)
        .await?;
    Ok(())
}

/// First run, then the median and slowest of `runs` more, in milliseconds.
async fn time<F, Fut, T>(runs: usize, mut task: F) -> Result<(f64, f64, f64, T), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let first_value = task().await?;
    let first = started.elapsed().as_secs_f64() * 1000.0;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        task().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(first);
    let slowest = times.last().copied().unwrap_or(first);
    Ok((first, median, slowest, first_value))
}

fn envelope(i: usize) -> Envelope {
    Envelope {
        id: MessageId::new(),
        tenant: TENANT.into(),
        channel: ["sms", "email", "push", "alimtalk"][i % 4].into(),
        to: format!("+8210{:08}", i % 200_000),
        content: Content {
            body: Some("benchmark".into()),
            ..Default::default()
        },
        priority: Priority::Bulk,
        send_at: None,
        tags: vec![],
        metadata: Map::new(),
        idempotency_key: None,
        category: Default::default(),
        accepted_at: Utc::now(),
        attempts: 0,
        fallback: None,
    }
}

/// Messages per second recorded as the worker records them: accepted + sent, 1000 per batch.
async fn write_rate(history: &MySqlHistory, messages: usize) -> Result<f64, Error> {
    let started = Instant::now();
    for batch in 0..messages.div_ceil(1000) {
        let mut transitions = Vec::with_capacity(2000);
        for i in batch * 1000..((batch + 1) * 1000).min(messages) {
            let e = envelope(i);
            transitions.push(Transition::of(&e, Status::Accepted, e.accepted_at));
            let mut sent = e.clone();
            sent.attempts = 1;
            transitions
                .push(Transition::of(&sent, Status::Sent, Utc::now()).provider("sandbox", None));
        }
        history
            .record(&BatchRecord {
                transitions,
                deferred: vec![],
            })
            .await?;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let rows: u64 = setting("BENCH_ROWS", Some("1000000"))?.parse()?;
    let runs: usize = setting("BENCH_RUNS", Some("20"))?.parse()?;
    let writes: usize = setting("BENCH_WRITE_MESSAGES", Some("100000"))?.parse()?;
    let reads = connect_mysql(&setting("BENCH_READS_URL", None)?, 4).await?;
    migrate_mysql(&reads).await?;

    let started = Instant::now();
    fill(&reads, rows).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(&reads)
        .await?;
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM message_events")
        .fetch_one(&reads)
        .await?;
    eprintln!("[bench] {count} messages, {events} events in {fill_seconds:.0} s");
    println!("FILL|{count}|{events}|{fill_seconds:.0}");

    let plan = sqlx::query(
        "EXPLAIN SELECT channel, status, CAST(CONV(HEX(LEFT(id, 6)), 16, 10) AS SIGNED) DIV 900000 AS bucket, \
         COUNT(*) AS n FROM messages FORCE INDEX (messages_by_time) \
         WHERE tenant_id = 'bench' AND id >= UNHEX('00000000000000000000000000000000') \
         GROUP BY channel, status, bucket",
    )
    .fetch_one(&reads)
    .await?;
    let key: Option<String> = plan.try_get("key")?;
    let extra: Option<String> = plan.try_get("Extra")?;
    println!(
        "PLAN|{}|{}",
        key.unwrap_or_default(),
        extra.unwrap_or_default()
    );

    let history = &MySqlHistory::new(reads.clone());
    for (label, span, bucket) in [
        (
            "`GET /v1/stats?window=1h` (1-minute buckets)",
            ChronoDuration::hours(1),
            60,
        ),
        (
            "`GET /v1/stats?window=24h` (15-minute buckets)",
            ChronoDuration::hours(24),
            900,
        ),
    ] {
        let (first, median, slowest, stats) = time(runs, || async move {
            Ok(history
                .stats(TENANT, Utc::now() - span, Duration::from_secs(bucket))
                .await?)
        })
        .await?;
        println!(
            "READ|{label}|{} messages counted|{first:.1}|{median:.1}|{slowest:.1}",
            stats.totals.total
        );
    }

    let newest = MessageFilter {
        limit: 50,
        ..Default::default()
    };
    let failed = MessageFilter {
        status: Some(Status::Failed),
        limit: 50,
        ..Default::default()
    };
    let recipient = MessageFilter {
        to: Some("+821000001234".into()),
        limit: 50,
        ..Default::default()
    };
    for (label, filter) in [
        (
            "`GET /v1/messages?limit=50` (live activity, with each latest detail)",
            &newest,
        ),
        (
            "`GET /v1/messages?status=failed&limit=50` (failures)",
            &failed,
        ),
        (
            "`GET /v1/messages?to=<recipient>` (search by recipient)",
            &recipient,
        ),
    ] {
        let (first, median, slowest, page) =
            time(
                runs,
                || async move { Ok(history.list(TENANT, filter).await?) },
            )
            .await?;
        println!(
            "READ|{label}|{} messages returned|{first:.1}|{median:.1}|{slowest:.1}",
            page.items.len()
        );
    }
    let some = history.list(TENANT, &recipient).await?.items[0].id;
    let (first, median, slowest, found) =
        time(runs, || async move { Ok(history.get(TENANT, some).await?) }).await?;
    println!(
        "READ|`GET /v1/messages/{{id}}` (search by id, timeline)|{} events|{first:.1}|{median:.1}|{slowest:.1}",
        found.and_then(|m| m.events).map_or(0, |e| e.len())
    );

    if writes > 0 {
        let new = MySqlHistory::new(connect_mysql(&setting("BENCH_NEW_URL", None)?, 4).await?);
        let old = MySqlHistory::new(connect_mysql(&setting("BENCH_OLD_URL", None)?, 4).await?);
        migrate_mysql(new.pool()).await?;
        migrate_mysql(old.pool()).await?;
        sqlx::query(
            "ALTER TABLE messages ADD KEY messages_by_tenant (tenant_id, id), \
             DROP KEY messages_by_time",
        )
        .execute(old.pool())
        .await?;
        let (mut best_new, mut best_old) = (0f64, 0f64);
        for round in 0..2 {
            best_old = best_old.max(write_rate(&old, writes / 2).await?);
            best_new = best_new.max(write_rate(&new, writes / 2).await?);
            eprintln!("[bench] write round {round}: old {best_old:.0}/s, new {best_new:.0}/s");
        }
        println!("WRITE|{}|{best_old:.0}|{best_new:.0}", writes / 2);
    }
    Ok(())
}

//! The dashboard's reads on the all-in-one mode's SQLite history (run by `scripts/bench-all-in-one`).
//!
//! Fills a new SQLite file (`BENCH_SQLITE_PATH`) with `BENCH_ROWS` messages of one tenant accepted
//! over the last 24 hours on 4 channels, two events each, generated inside SQLite; then times
//! every read the dashboard makes through `SqliteStore` (first run, then the median and slowest of
//! `BENCH_RUNS` more). Prints `READ|<read>|<result>|<first ms>|<median ms>|<slowest ms>` lines
//! and `FILL|<messages>|<seconds>` on stdout.

use chrono::{Duration as ChronoDuration, Utc};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ump_core::history::{HistoryStore, MessageFilter};
use ump_core::model::Status;
use ump_core::sqlite::SqliteStore;

type Error = Box<dyn std::error::Error>;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn fill(store: &SqliteStore, rows: i64) -> Result<(), Error> {
    let end = Utc::now().timestamp_millis();
    let start = end - 24 * 3600 * 1000;
    let step = (end - start - 5000) as f64 / rows as f64;
    const CHUNK: i64 = 100_000;
    let mut done = 0;
    while done < rows {
        let last = (done + CHUNK).min(rows) - 1;
        // UUIDv7 ids: 48-bit ms timestamp, version 7, a sequence for uniqueness. Numbers only.
        let messages = format!(
            "WITH RECURSIVE seq(n) AS (SELECT {done} UNION ALL SELECT n + 1 FROM seq WHERE n < {last}), \
             src AS (SELECT n, {start} + CAST(n * {step} AS INTEGER) AS ms FROM seq) \
             INSERT INTO messages (id, tenant_id, channel, recipient, status, priority, attempts, \
               provider, created_at, updated_at) \
             SELECT unhex(printf('%012x7%03x8%015x', ms, n % 4096, n)), 'bench', \
               CASE n % 4 WHEN 0 THEN 'sms' WHEN 1 THEN 'email' WHEN 2 THEN 'push' ELSE 'alimtalk' END, \
               printf('+8210%08d', n % 200000), \
               CASE WHEN n % 100 < 88 THEN 'sent' WHEN n % 100 < 92 THEN 'delivered' \
                    WHEN n % 100 < 96 THEN 'failed' WHEN n % 100 < 97 THEN 'dead_lettered' \
                    WHEN n % 100 < 99 THEN 'duplicate' ELSE 'accepted' END, \
               'bulk', 1, 'sandbox', ms * 1000, ms * 1000 + 250000 FROM src"
        );
        let events = format!(
            "INSERT INTO message_events (message_id, attempt, status, at, detail) \
             SELECT id, 0, 'accepted', created_at, NULL FROM messages WHERE id >= \
               (SELECT id FROM messages ORDER BY id LIMIT 1 OFFSET {done}) \
             UNION ALL SELECT id, 1, status, updated_at, \
               CASE status WHEN 'failed' THEN 'sandbox: recipient rejected' ELSE NULL END \
             FROM messages WHERE status <> 'accepted' AND id >= \
               (SELECT id FROM messages ORDER BY id LIMIT 1 OFFSET {done})"
        );
        let mut tx = store.pool().begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(messages))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(events))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done = last + 1;
        eprintln!("filled {done} of {rows}");
    }
    Ok(())
}

/// Runs `read` once, then `runs` more times: (result, first, median, slowest) in ms.
async fn time<F, Fut>(runs: usize, mut read: F) -> Result<(String, f64, f64, f64), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, Error>>,
{
    let started = Instant::now();
    let result = read().await?;
    let first = started.elapsed();
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        read().await?;
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((
        result,
        ms(first),
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap_or(&first)),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let rows: i64 = setting("BENCH_ROWS", "1000000").parse()?;
    let runs: usize = setting("BENCH_RUNS", "20").parse()?;
    let path = PathBuf::from(setting("BENCH_SQLITE_PATH", "bench-history.db"));
    let store = SqliteStore::open(&path).await?;
    let started = Instant::now();
    fill(&store, rows).await?;
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    println!("FILL|{rows}|{:.0}", started.elapsed().as_secs_f64());

    let some = store
        .list(
            "bench",
            &MessageFilter {
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
    let sample = some.items.first().ok_or("no messages")?.clone();

    let store = &store;
    let mut report = Vec::new();
    for (name, window, bucket) in [
        ("`GET /v1/stats?window=1h` (1-minute buckets)", 1, 60),
        ("`GET /v1/stats?window=24h` (15-minute buckets)", 24, 900),
    ] {
        let row = time(runs, || async move {
            let stats = store
                .stats(
                    "bench",
                    Utc::now() - ChronoDuration::hours(window),
                    Duration::from_secs(bucket),
                )
                .await?;
            Ok(format!("{} messages counted", stats.totals.total))
        })
        .await?;
        report.push((name, row));
    }
    let list = |filter: MessageFilter| async move {
        let page = store.list("bench", &filter).await?;
        Ok::<_, Error>(format!("{} messages returned", page.items.len()))
    };
    report.push((
        "`GET /v1/messages?limit=50` (live activity, with each latest detail)",
        time(runs, || {
            list(MessageFilter {
                limit: 50,
                ..Default::default()
            })
        })
        .await?,
    ));
    report.push((
        "`GET /v1/messages?status=failed&limit=50` (failures)",
        time(runs, || {
            list(MessageFilter {
                status: Some(Status::Failed),
                limit: 50,
                ..Default::default()
            })
        })
        .await?,
    ));
    report.push((
        "`GET /v1/messages?to=<recipient>` (search by recipient)",
        time(runs, || {
            list(MessageFilter {
                to: Some(sample.to.clone()),
                limit: 50,
                ..Default::default()
            })
        })
        .await?,
    ));
    report.push((
        "`GET /v1/messages/{id}` (search by id, timeline)",
        time(runs, || async {
            let view = store.get("bench", sample.id).await?.ok_or("gone")?;
            Ok(format!(
                "{} events",
                view.events.map(|e| e.len()).unwrap_or(0)
            ))
        })
        .await?,
    ));
    for (name, (result, first, median, slowest)) in report {
        println!("READ|{name}|{result}|{first:.1}|{median:.1}|{slowest:.1}");
    }
    Ok(())
}

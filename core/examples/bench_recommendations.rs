//! Recommendations at scale (run by `scripts/bench-recommendations`, which creates the database
//! and writes BENCHMARKS.md): `BENCH_ITEMS` catalog items and `BENCH_PEOPLE` people with an item
//! history, in MariaDB (`BENCH_URL`, an empty database), through the same stores the API and
//! the event processor use.
//!
//! 1. Loads the catalog (`MySqlCatalog`), folds each person's generated views and purchases
//!    through the processor's own `ItemChanges::record`, stores their records (the processor's
//!    codec) and stages the changes; the upkeep (`MySqlItemModel`) then takes them in, rebuilds
//!    every neighbour list and ranks: the model a tenant of this size has.
//! 2. The incremental cost per event at the processor's pace: `BENCH_EVENTS` more events for
//!    people of step 1, folded in batches of 500 (the fold's CPU per event, the staging insert per
//!    batch), then taken in and the lists they made stale rebuilt; the upkeep's events per second.
//! 3. Serving: `BENCH_REQUESTS` `recommend_for` calls per strategy for random people, each one
//!    person's list of 5 (what `GET /v1/users/{id}/recommendations` runs), against the raw
//!    ceiling of one primary-key read of a person's record.
//!
//! The data, seeded: items in clusters of 50 (a category is 10 clusters); each person favours
//! one cluster (Zipf-like over clusters), views 4–10 of its items (one in five people one more
//! elsewhere) over the last
//! 7 days, and buys one or two of them. Prints Markdown on stdout; progress on stderr.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use ump_automation::person::PersonRecord;
use ump_automation::recommend::{
    CatalogItem, Interaction, ItemChanges, ItemHistory, KEEP_PARTNERS, Observed, Strategy, TOP_K,
};
use ump_core::audience_mysql::MySqlAudience;
use ump_core::catalog::{CatalogStore, MySqlCatalog};
use ump_core::recommendations::{Ask, ItemModel, MySqlItemModel, recommend_for};
use ump_core::store::{connect_mysql, migrate_mysql};

type Error = Box<dyn std::error::Error>;

const TENANT: &str = "bench";
const CLUSTER: usize = 50;
/// People per staged row and per insert of records.
const CHUNK: usize = 2_000;
/// Events per processor batch (a lane's batch at the processor's defaults).
const BATCH: usize = 500;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: tiny, seeded, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Zipf-like: the square of a uniform draw favours the low numbers.
    fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u) * n as f64) as usize
    }
}

fn item_id(i: usize) -> String {
    format!("i{i:06}")
}

fn person_id(p: usize) -> String {
    format!("p{p:07}")
}

/// One person's interactions, oldest first.
fn interactions(rng: &mut Rng, items: usize, now: DateTime<Utc>) -> Vec<Observed> {
    let clusters = items / CLUSTER;
    let home = rng.skewed(clusters);
    let views = 4 + rng.below(7);
    let mut at =
        now - ChronoDuration::days(7) + ChronoDuration::seconds(rng.below(6 * 86_400) as i64);
    let mut out = Vec::with_capacity(views + 3);
    let mut step = |rng: &mut Rng| {
        at += ChronoDuration::seconds(60 + rng.below(36_000) as i64);
        at.min(now)
    };
    for _ in 0..views {
        let item = home * CLUSTER + rng.skewed(CLUSTER);
        let when = step(rng);
        out.push(Observed {
            kind: Interaction::View,
            item: item_id(item),
            at: when,
        });
    }
    if rng.below(5) == 0 {
        let elsewhere = rng.below(items);
        let when = step(rng);
        out.push(Observed {
            kind: Interaction::View,
            item: item_id(elsewhere),
            at: when,
        });
    }
    for _ in 0..1 + rng.below(2) {
        let bought = out[rng.below(views)].item.clone();
        let when = step(rng);
        out.push(Observed {
            kind: Interaction::Purchase,
            item: bought,
            at: when,
        });
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// This process's CPU time so far (user + system, from /proc/self/stat in clock ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name; 100 Hz.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// What draining the staged changes took.
struct Drained {
    lists: u64,
    taking: Duration,
    /// This process's CPU while taking (decoding, merging, encoding; the rest is MariaDB's).
    taking_cpu: Duration,
    rebuilding: Duration,
}

/// Takes everything staged in and rebuilds every stale list.
async fn drain(model: &MySqlItemModel) -> Result<Drained, Error> {
    let mut rebuilt = 0;
    let cpu = process_cpu();
    let started = Instant::now();
    loop {
        // As many staged batches per transaction as the upkeep loop takes (`ump_events::items`).
        if model.take_changes(200, Utc::now()).await? == 0 {
            break;
        }
    }
    let taking = started.elapsed();
    let taking_cpu = process_cpu().saturating_sub(cpu);
    let started = Instant::now();
    loop {
        let n = model
            .rebuild_neighbours(1_000, Utc::now(), Utc::now())
            .await?;
        rebuilt += n;
        if n == 0 {
            break;
        }
        eprintln!("  rebuilt {rebuilt} lists");
    }
    Ok(Drained {
        lists: rebuilt,
        taking,
        taking_cpu,
        rebuilding: started.elapsed(),
    })
}

async fn store_records(
    pool: &MySqlPool,
    people: &[(String, ItemHistory)],
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let encoded = people
        .iter()
        .map(|(id, history)| {
            let record = PersonRecord {
                items: history.clone(),
                ..PersonRecord::default()
            };
            Ok((id.as_str(), ump_core::person_codec::encode(&record)?))
        })
        .collect::<Result<Vec<_>, ump_core::history::HistoryError>>()?;
    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO person_state (tenant_id, user_id, record, updated_at) ",
    );
    q.push_values(encoded, |mut row, (id, bytes)| {
        row.push_bind(TENANT)
            .push_bind(id)
            .push_bind(bytes)
            .push_bind(now.naive_utc());
    });
    q.build().execute(pool).await?;
    Ok(())
}

async fn stage(pool: &MySqlPool, changes: ItemChanges, now: DateTime<Utc>) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    ump_core::recommendations::stage_mysql(
        &mut tx,
        &BTreeMap::from([(TENANT.into(), changes)]),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn table_mib(pool: &MySqlPool, table: &str) -> Result<(f64, i64), Error> {
    // Fresh statistics: information_schema's sizes are estimates refreshed by ANALYZE.
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE TABLE {table}")))
        .execute(pool)
        .await?;
    let (bytes, rows): (i64, i64) = sqlx::query_as(
        "SELECT CAST(data_length + index_length AS SIGNED), CAST(table_rows AS SIGNED) \
         FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table)
    .fetch_one(pool)
    .await?;
    Ok((bytes as f64 / 1_048_576.0, rows))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let url = std::env::var("BENCH_URL").map_err(|_| "BENCH_URL is not set")?;
    let items = setting("BENCH_ITEMS", 100_000).max(CLUSTER);
    let people = setting("BENCH_PEOPLE", 1_000_000).max(1);
    let events = setting("BENCH_EVENTS", 200_000);
    let requests = setting("BENCH_REQUESTS", 2_000).max(1);
    let pool = connect_mysql(&url, 4).await?;
    migrate_mysql(&pool).await?;
    sqlx::query("SET GLOBAL max_allowed_packet = 67108864")
        .execute(&pool)
        .await
        .ok();
    let pool = connect_mysql(&url, 4).await?;
    let catalog = MySqlCatalog::new(pool.clone());
    let model = MySqlItemModel::new(pool.clone());
    let audience = MySqlAudience::new(pool.clone());
    let now = Utc::now();
    let mut rng = Rng(19);

    // 1. The catalog, the people, the model.
    eprintln!("catalog: {items} items");
    let started = Instant::now();
    let mut batch: Vec<CatalogItem> = Vec::with_capacity(1_000);
    for i in 0..items {
        let category = format!("c{:03}", i / (CLUSTER * 10));
        batch.push(serde_json::from_value(serde_json::json!({
            "id": item_id(i), "name": format!("Product {i}"), "price": 1000 + (i % 97) * 500,
            "currency": "KRW", "url": format!("https://shop.example/p/{i}"),
            "category": category, "in_stock": i % 20 != 0}))?);
        if batch.len() == 1_000 || i + 1 == items {
            catalog.put_items(TENANT, &batch, now).await?;
            batch.clear();
        }
    }
    let catalog_time = started.elapsed();
    eprintln!("people: {people}, folding their histories");
    let started = Instant::now();
    let mut histories: Vec<ItemHistory> = Vec::with_capacity(people);
    let mut fold_events = 0usize;
    let mut records_time = Duration::ZERO;
    let mut chunk: Vec<(String, ItemHistory)> = Vec::with_capacity(CHUNK);
    let mut changes = ItemChanges::default();
    for p in 0..people {
        let mut history = ItemHistory::default();
        for o in interactions(&mut rng, items, now) {
            changes.record(&mut history, &o);
            fold_events += 1;
        }
        chunk.push((person_id(p), history.clone()));
        histories.push(history);
        if chunk.len() == CHUNK || p + 1 == people {
            let t = Instant::now();
            store_records(&pool, &chunk, now).await?;
            stage(&pool, std::mem::take(&mut changes), now).await?;
            records_time += t.elapsed();
            chunk.clear();
            if (p + 1) % 100_000 == 0 {
                eprintln!("  {} people stored", p + 1);
            }
        }
    }
    let people_time = started.elapsed();
    eprintln!("model: taking the changes in, rebuilding every list");
    let Drained {
        lists,
        taking,
        rebuilding,
        ..
    } = drain(&model).await?;
    let started = Instant::now();
    let rankings = model.rank(Utc::now()).await?;
    let rank_time = started.elapsed();
    let (counts_mib, item_rows) = table_mib(&pool, "item_people").await?;
    let (partners, partner_max): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(LENGTH(partners) - LENGTH(REPLACE(partners, '\\n', ''))), 0) AS SIGNED), \
                CAST(COALESCE(MAX(LENGTH(partners) - LENGTH(REPLACE(partners, '\\n', ''))), 0) AS SIGNED) \
         FROM item_people",
    )
    .fetch_one(&pool)
    .await?;
    let (lists_mib, _) = table_mib(&pool, "item_neighbours").await?;
    let (people_mib, _) = table_mib(&pool, "person_state").await?;

    // 2. More events at the processor's pace: the fold's cost, the staging, the upkeep.
    eprintln!("incremental: {events} events");
    let mut fold_cpu = Duration::ZERO;
    let mut stage_time = Duration::ZERO;
    let mut staged_batches = 0u64;
    let mut later = now + ChronoDuration::minutes(1);
    let mut done = 0;
    while done < events {
        let n = BATCH.min(events - done);
        let mut batch_changes = ItemChanges::default();
        let mut drawn = Vec::with_capacity(n);
        for _ in 0..n {
            let p = rng.below(people);
            let cluster = rng.skewed(items / CLUSTER);
            let item = item_id(cluster * CLUSTER + rng.skewed(CLUSTER));
            later += ChronoDuration::milliseconds(5);
            drawn.push((p, item));
        }
        let t = Instant::now();
        for (p, item) in drawn {
            let o = Observed {
                kind: Interaction::View,
                item,
                at: later,
            };
            batch_changes.record(&mut histories[p], &o);
        }
        fold_cpu += t.elapsed();
        let t = Instant::now();
        stage(&pool, batch_changes, now).await?;
        stage_time += t.elapsed();
        staged_batches += 1;
        done += n;
    }
    let Drained {
        lists: stale_lists,
        taking: inc_taking,
        taking_cpu: inc_taking_cpu,
        rebuilding: inc_rebuilding,
    } = drain(&model).await?;

    // 3. Serving.
    eprintln!("serving: {requests} requests per strategy");
    let mut raw = Vec::with_capacity(requests);
    for _ in 0..requests {
        let id = person_id(rng.below(people));
        let t = Instant::now();
        let _: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM person_state WHERE tenant_id = ? AND user_id = ?",
        )
        .bind(TENANT)
        .bind(&id)
        .fetch_optional(&pool)
        .await?;
        raw.push(t.elapsed());
    }
    raw.sort();
    let mut serving = Vec::new();
    for strategy in Strategy::ALL {
        let mut times = Vec::with_capacity(requests);
        let mut empty = 0;
        let mut own = 0usize;
        let mut total = 0usize;
        for _ in 0..requests {
            let id = person_id(rng.below(people));
            let t = Instant::now();
            let list = recommend_for(
                &audience,
                &model,
                &catalog,
                Ask {
                    tenant: TENANT,
                    user_id: &id,
                    strategy,
                    limit: 5,
                    category: None,
                    now: Utc::now(),
                },
            )
            .await?;
            times.push(t.elapsed());
            empty += usize::from(list.is_empty());
            own += list.iter().filter(|r| r.strategy == strategy).count();
            total += list.len();
        }
        times.sort();
        serving.push((strategy, times, empty, own, total));
    }

    println!(
        "**Data.** {items} catalog items (every 20th out of stock), {people} people with an item history of 4–10 views in a favourite cluster of 50 items, one in five people one more elsewhere, and 1–2 purchases over the last 7 days: {fold_events} interactions; one tenant, MariaDB on the same 2 cores.\n"
    );
    println!("| building the model | figure |");
    println!("|---|---|");
    println!(
        "| catalog stored (`MySqlCatalog`, batches of 1,000) | {} |",
        secs(catalog_time)
    );
    println!(
        "| {fold_events} interactions folded (`ItemChanges::record`), {people} records stored, changes staged | {} (of which storing {}) |",
        secs(people_time),
        secs(records_time)
    );
    println!(
        "| changes taken into the counts | {} ({item_rows} item rows with {partners} partners, at most {partner_max} an item (of {KEEP_PARTNERS} kept) ≈ {counts_mib:.0} MiB) |",
        secs(taking)
    );
    println!(
        "| {lists} neighbour lists rebuilt (K = {TOP_K}) | {} ({:.0} lists/s; {lists_mib:.0} MiB) |",
        secs(rebuilding),
        lists as f64 / rebuilding.as_secs_f64().max(1e-9)
    );
    println!(
        "| popular and trending ranked ({rankings} rankings: overall and per category) | {} |",
        secs(rank_time)
    );
    println!("| person records with item histories | {people_mib:.0} MiB |");
    println!();
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events.max(1) as f64;
    println!("| incremental upkeep, {events} more views | figure |");
    println!("|---|---|");
    println!(
        "| the fold's added CPU in the processor (pairs + history) | {:.1} µs/event |",
        per_event(fold_cpu)
    );
    println!(
        "| staging insert, one per batch of {BATCH} (in the batch's transaction) | {} ms/batch ({:.1} µs/event) |",
        ms(stage_time / staged_batches.max(1) as u32),
        per_event(stage_time)
    );
    println!(
        "| changes taken into the counts (one upkeep loop) | {} → {:.0} events/s ({:.1} µs/event of the taker's CPU, the rest MariaDB's) |",
        secs(inc_taking),
        events as f64 / inc_taking.as_secs_f64().max(1e-9),
        per_event(inc_taking_cpu)
    );
    let rate = stale_lists as f64 / inc_rebuilding.as_secs_f64().max(1e-9);
    println!(
        "| the {stale_lists} lists they made stale rebuilt | {} → {rate:.0} lists/s: every list of the {items} rebuilt within {:.0} s however fast events come |",
        secs(inc_rebuilding),
        items as f64 / rate.max(1e-9)
    );
    println!();
    println!(
        "| one person's 5 recommendations (`recommend_for`), {requests} random people each | p50 ms | p99 ms | max ms | own items / fill |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| raw ceiling: one primary-key read of a person's record | {} | {} | {} | |",
        ms(percentile(&raw, 0.5)),
        ms(percentile(&raw, 0.99)),
        ms(*raw.last().unwrap_or(&Duration::ZERO))
    );
    for (strategy, times, empty, own, total) in &serving {
        println!(
            "| `{strategy}` | {} | {} | {} | {:.1} / {:.1}{} |",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            *own as f64 / requests as f64,
            (total - own) as f64 / requests as f64,
            if *empty > 0 {
                format!(" ({empty} empty)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

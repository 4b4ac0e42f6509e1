//! Recommendations as stored and served: the model the event stream keeps (item people counts,
//! each item's partners with their co-occurrence counts, hourly popularity, each item's
//! neighbour list, popular and trending rankings) behind the `ItemModel` port, with MySQL and
//! SQLite implementations, and `recommend_for`, which loads what a person's list needs and ranks
//! it with the pure `ump_automation::recommend::recommend`.
//!
//! How the model stays current, exactly once, without the processor's lanes waiting on each
//! other for a popular item's row, and with the cost of an event independent of how many
//! partners its item has:
//! 1. the processor stages each batch's `ItemChanges` (one row per tenant, an insert) in the
//!    batch's own transaction (`stage_mysql`, `stage_sqlite`);
//! 2. `take_changes` adds staged changes to the people counts, inserts each touched item's
//!    partner counts as a delta row, marks the items stale and deletes what it took, in one
//!    transaction;
//! 3. `rebuild_neighbours` rebuilds stale items' neighbour lists, oldest first, each batch with
//!    its items' rows locked: their deltas folded into their partner lists (at most
//!    `KEEP_PARTNERS`), the deltas deleted, the lists made, in one transaction; so an item's
//!    partner list is rewritten once per rebuild, however many takes touched it;
//! 4. `rank` ranks each tenant's popular and trending items from the hourly counts, and forgets
//!    hours no ranking looks at any more.
//!
//! The upkeep loop (`ump-events`) runs 2–4. Counts are aggregates: they hold no person's id, so
//! erasing a person leaves them (as it leaves the message counts of a campaign).

use crate::audience::SegmentStore;
use crate::catalog::CatalogStore;
use crate::history::{HistoryError, again_on_deadlock};
use crate::sqlite::{SqliteStore, micros};
use chrono::{DateTime, Utc};
use sqlx::{MySql, QueryBuilder, Row, Sqlite, Transaction};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use ump_automation::recommend::{
    self, CatalogItem, Hourly, ItemChanges, KEEP_PARTNERS, Lookup, Neighbours, Partners, Ranked,
    Ranking, Recommendation, Request, SEEDS, Strategy, TOP_K,
};

/// Rows per statement: well under either backend's limit of bound values.
const CHUNK: usize = 500;

/// The counts, lists and rankings recommendations are made from.
#[async_trait::async_trait]
pub trait ItemModel: Send + Sync {
    /// Adds up to `limit` staged batches' changes to the counts, deletes them, and marks the
    /// items they touched stale: all in one transaction. How many batches it took.
    async fn take_changes(&self, limit: u32, now: DateTime<Utc>) -> Result<u64, HistoryError>;
    /// Rebuilds up to `limit` neighbour lists stale since `stale_before` or earlier, those stale
    /// longest first, a batch of items per query. How many. (The upkeep passes a moment a few
    /// seconds ago: changes to an item within those seconds make one rebuild, not one each.)
    async fn rebuild_neighbours(
        &self,
        limit: u32,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError>;
    /// Replaces every tenant's rankings with those their hourly counts give at `now`, and
    /// deletes the hours no ranking looks at any more. How many rankings it stored.
    async fn rank(&self, now: DateTime<Utc>) -> Result<u64, HistoryError>;
    /// Staged batches not taken yet, and items whose neighbour lists are stale.
    async fn backlog(&self) -> Result<(u64, u64), HistoryError>;
    /// The neighbour lists of those of `ids` that have one.
    async fn neighbours(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<(String, f64)>>, HistoryError>;
    /// A stored ranking, of `category`'s items or of all; empty when there is none.
    async fn ranking(
        &self,
        tenant: &str,
        kind: Ranking,
        category: Option<&str>,
    ) -> Result<Vec<(String, f64)>, HistoryError>;
}

/// What one person's recommendations are asked for.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub tenant: &'a str,
    pub user_id: &'a str,
    pub strategy: Strategy,
    pub limit: usize,
    pub category: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// The person's recommendations: their item history (none for a person UMP does not know: the
/// cold start's popular items), the neighbour lists and rankings the strategy reads, each in one
/// query; then the candidates in order (`recommend::candidates`), and the catalog asked only for
/// as many of them as the list needs (`recommend::pick`), a few more than the list's length at a
/// time.
pub async fn recommend_for(
    people: &dyn SegmentStore,
    model: &dyn ItemModel,
    catalog: &dyn CatalogStore,
    ask: Ask<'_>,
) -> Result<Vec<Recommendation>, HistoryError> {
    let history = people
        .person(ask.tenant, ask.user_id)
        .await?
        .map(|record| record.items)
        .unwrap_or_default();
    let mut loaded = Loaded {
        popular: model
            .ranking(ask.tenant, Ranking::Popular, ask.category)
            .await?,
        ..Loaded::default()
    };
    match ask.strategy {
        Strategy::SimilarItems => {
            let seeds: Vec<String> = history
                .recent(SEEDS)
                .into_iter()
                .map(|(id, _)| id.to_owned())
                .collect();
            loaded.neighbours = model.neighbours(ask.tenant, &seeds).await?;
        }
        Strategy::Trending => {
            loaded.trending = model
                .ranking(ask.tenant, Ranking::Trending, ask.category)
                .await?;
        }
        _ => {}
    }
    let request = Request {
        history: &history,
        limit: ask.limit,
        category: ask.category,
        now: ask.now,
    };
    let candidates = recommend::candidates(ask.strategy, &request, &loaded);
    let limit = ask.limit.clamp(1, recommend::MAX_LIMIT);
    let mut list: Vec<Recommendation> = Vec::with_capacity(limit);
    let mut next = 0;
    while list.len() < limit && next < candidates.len() {
        // Out-of-stock and other-category items are the exception: twice what is missing and a
        // few more usually fill the list in one query.
        let want = (limit - list.len()) * 2 + 8;
        let chunk = &candidates[next..(next + want).min(candidates.len())];
        next += chunk.len();
        let ids: Vec<String> = chunk.iter().map(|c| c.id.to_owned()).collect();
        let items = catalog.items(ask.tenant, &ids).await?;
        let rest = Request {
            limit: limit - list.len(),
            ..request
        };
        list.extend(recommend::pick(chunk, &rest, |id| items.get(id)));
    }
    Ok(list)
}

/// What the candidates are made from (the catalog is asked afterwards).
#[derive(Default)]
struct Loaded {
    neighbours: HashMap<String, Vec<(String, f64)>>,
    /// Of the asked category (the only one `recommend` asks about).
    popular: Vec<(String, f64)>,
    trending: Vec<(String, f64)>,
}

impl Lookup for Loaded {
    fn item(&self, _id: &str) -> Option<&CatalogItem> {
        None
    }
    fn neighbours(&self, id: &str) -> &[(String, f64)] {
        self.neighbours.get(id).map_or(&[], Vec::as_slice)
    }
    fn popular(&self, _category: Option<&str>) -> &[(String, f64)] {
        &self.popular
    }
    fn trending(&self, _category: Option<&str>) -> &[(String, f64)] {
        &self.trending
    }
}

fn encode_changes(changes: &ItemChanges) -> Result<Vec<u8>, HistoryError> {
    postcard::to_allocvec(changes).map_err(|e| HistoryError::Corrupt(format!("item changes: {e}")))
}

/// A staged batch's changes as a take reads them, borrowing from the stored bytes: postcard
/// writes a map as the list of its entries, so an `ItemChanges` reads back as these lists
/// without a string copied.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct StagedRef<'a> {
    #[serde(borrow)]
    people: Vec<(&'a str, u32)>,
    #[serde(borrow)]
    pairs: Vec<((&'a str, &'a str), u32)>,
    #[serde(borrow)]
    hourly: Vec<((&'a str, i64), u32)>,
}

fn decode_staged(bytes: &[u8]) -> Result<StagedRef<'_>, HistoryError> {
    postcard::from_bytes(bytes).map_err(|e| HistoryError::Corrupt(format!("item changes: {e}")))
}

/// One tenant's staged changes summed (order-free, as `ItemChanges::merge`).
#[derive(Default)]
struct Sums<'a> {
    people: HashMap<&'a str, u32>,
    pairs: HashMap<(&'a str, &'a str), u32>,
    hourly: HashMap<(&'a str, i64), u32>,
}

/// Staged rows `(tenant, bytes)` summed per tenant.
fn sum_staged(staged: &[(String, Vec<u8>)]) -> Result<BTreeMap<&str, Sums<'_>>, HistoryError> {
    let mut sums: BTreeMap<&str, Sums<'_>> = BTreeMap::new();
    for (tenant, bytes) in staged {
        let batch = decode_staged(bytes)?;
        let sum = sums.entry(tenant.as_str()).or_default();
        for (item, n) in batch.people {
            let count = sum.people.entry(item).or_insert(0);
            *count = count.saturating_add(n);
        }
        for (pair, n) in batch.pairs {
            let count = sum.pairs.entry(pair).or_insert(0);
            *count = count.saturating_add(n);
        }
        for (hour, n) in batch.hourly {
            let count = sum.hourly.entry(hour).or_insert(0);
            *count = count.saturating_add(n);
        }
    }
    Ok(sums)
}

fn encode_list(list: &[(String, f64)]) -> Result<String, HistoryError> {
    crate::audience::encode("item list", &list)
}

fn decode_list(text: &str) -> Result<Vec<(String, f64)>, HistoryError> {
    crate::audience::decode("item list", text)
}

/// A stored ranking's `category` column: '' for all items.
fn category_key(category: Option<&str>) -> &str {
    category.unwrap_or("")
}

/// Stages a batch's item changes in the batch's transaction (MySQL).
pub async fn stage_mysql(
    tx: &mut Transaction<'_, MySql>,
    items: &BTreeMap<String, ItemChanges>,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    if let Some(mut q) = staging_insert::<MySql>(items, now)? {
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Stages a batch's item changes in the batch's transaction (SQLite).
pub async fn stage_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    items: &BTreeMap<String, ItemChanges>,
    now: DateTime<Utc>,
) -> Result<(), HistoryError> {
    if let Some(mut q) = staging_insert::<Sqlite>(items, now)? {
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The insert staging each tenant's non-empty changes; `None` when there are none.
fn staging_insert<DB: sqlx::Database>(
    items: &BTreeMap<String, ItemChanges>,
    now: DateTime<Utc>,
) -> Result<Option<QueryBuilder<DB>>, HistoryError>
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let staged = staged_rows(items)?;
    if staged.is_empty() {
        return Ok(None);
    }
    let mut q = QueryBuilder::new("INSERT INTO item_changes (tenant_id, changes, created_at) ");
    q.push_values(staged, |mut row, (tenant, bytes)| {
        row.push_bind(tenant)
            .push_bind(bytes)
            .push_bind(micros(now));
    });
    Ok(Some(q))
}

/// The upsert of one tenant's rebuilt neighbour lists.
fn neighbours_upsert<DB: sqlx::Database>(
    dialect: Dialect,
    tenant: &str,
    lists: &[Neighbours],
    now: DateTime<Utc>,
) -> Result<QueryBuilder<DB>, HistoryError>
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let texts = lists
        .iter()
        .map(|l| encode_list(&l.list))
        .collect::<Result<Vec<_>, _>>()?;
    let mut q = QueryBuilder::new(
        "INSERT INTO item_neighbours (tenant_id, item_id, neighbours, updated_at) ",
    );
    q.push_values(lists.iter().zip(texts), |mut row, (list, text)| {
        row.push_bind(tenant)
            .push_bind(list.item.as_str())
            .push_bind(text)
            .push_bind(micros(now));
    });
    q.push(dialect.on_conflict(
        "tenant_id, item_id",
        &[("neighbours", Set::Replace), ("updated_at", Set::Replace)],
    ));
    Ok(q)
}

/// The inserts of one tenant's rankings (its old ones deleted first), `CHUNK` per statement.
fn rankings_inserts<DB: sqlx::Database>(
    tenant: &str,
    ranked: &[Ranked],
    now: DateTime<Utc>,
) -> Result<Vec<QueryBuilder<DB>>, HistoryError>
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let texts = ranked
        .iter()
        .map(|r| encode_list(&r.list))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ranked
        .chunks(CHUNK)
        .zip(texts.chunks(CHUNK))
        .map(|(chunk, texts)| {
            let mut q = QueryBuilder::new(
                "INSERT INTO item_rankings (tenant_id, kind, category, ranking, updated_at) ",
            );
            q.push_values(chunk.iter().zip(texts), |mut row, (r, text)| {
                row.push_bind(tenant)
                    .push_bind(r.kind.as_str())
                    .push_bind(category_key(r.category.as_deref()))
                    .push_bind(text.clone())
                    .push_bind(micros(now));
            });
            q
        })
        .collect())
}

fn staged_rows(
    items: &BTreeMap<String, ItemChanges>,
) -> Result<Vec<(&str, Vec<u8>)>, HistoryError> {
    items
        .iter()
        .filter(|(_, changes)| !changes.is_empty())
        .map(|(tenant, changes)| Ok((tenant.as_str(), encode_changes(changes)?)))
        .collect()
}

/// The two backends' upsert clauses.
#[derive(Clone, Copy)]
enum Dialect {
    MySql,
    Sqlite,
}

/// What an upsert does with a column of a row that exists.
#[derive(Clone, Copy)]
enum Set {
    /// Adds the new value to the stored one.
    Add,
    /// Keeps the stored value unless it is NULL.
    KeepFirst,
    Replace,
}

impl Dialect {
    fn on_conflict(self, key: &str, sets: &[(&str, Set)]) -> String {
        let (start, new) = match self {
            Dialect::MySql => (" ON DUPLICATE KEY UPDATE ".to_owned(), "VALUES({c})"),
            Dialect::Sqlite => (
                format!(" ON CONFLICT ({key}) DO UPDATE SET "),
                "excluded.{c}",
            ),
        };
        let sets: Vec<String> = sets
            .iter()
            .map(|(c, set)| {
                let new = new.replace("{c}", c);
                match set {
                    Set::Add => format!("{c} = {c} + {new}"),
                    Set::KeepFirst => format!("{c} = COALESCE({c}, {new})"),
                    Set::Replace => format!("{c} = {new}"),
                }
            })
            .collect();
        start + &sets.join(", ")
    }
}

/// The rows a take writes from merged changes, each table's rows in key order (so concurrent
/// takers lock rows in the same order): every touched item's people added (and its stale
/// mark), the partner counts each item gained (a delta row, folded into its list by the next
/// rebuild), the hours' popularity.
#[derive(Default)]
struct CountRows<'a> {
    /// (tenant, item, people added), in key order
    people: Vec<(&'a str, &'a str, i64)>,
    /// (tenant, item, partners added: `Partners`' stored form)
    deltas: Vec<(&'a str, &'a str, String)>,
    /// (tenant, hour, item, n added)
    hourly: Vec<(&'a str, i64, &'a str, i64)>,
}

impl<'a> CountRows<'a> {
    /// The rows of summed changes: every item of a pair or with people added is touched (its
    /// list goes stale), as `ItemChanges::touched` says.
    fn of(sums: &BTreeMap<&'a str, Sums<'a>>) -> Self {
        let mut rows = CountRows::default();
        for (tenant, sum) in sums {
            let mut partners: HashMap<&str, Vec<(&str, u32)>> = HashMap::new();
            for ((a, b), n) in &sum.pairs {
                if a != b {
                    partners.entry(a).or_default().push((b, *n));
                    partners.entry(b).or_default().push((a, *n));
                }
            }
            let mut touched: Vec<&str> = sum
                .people
                .keys()
                .chain(sum.pairs.keys().flat_map(|(a, b)| [a, b]))
                .copied()
                .collect();
            touched.sort_unstable();
            touched.dedup();
            for item in touched {
                let added = sum.people.get(item).copied().unwrap_or(0);
                rows.people.push((tenant, item, i64::from(added)));
                if let Some(added) = partners.remove(item) {
                    rows.deltas
                        .push((tenant, item, Partners::from_counts(added).encode()));
                }
            }
            for ((item, hour), n) in &sum.hourly {
                rows.hourly.push((tenant, *hour, item, i64::from(*n)));
            }
        }
        rows.hourly.sort_unstable();
        rows
    }

    /// The writes, `CHUNK` rows each: people (marking the items stale), deltas, hours.
    fn statements<DB: sqlx::Database>(&self, dialect: Dialect, now: i64) -> Vec<QueryBuilder<DB>>
    where
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let mut out = Vec::new();
        let people_clause = dialect.on_conflict(
            "tenant_id, item_id",
            &[
                ("people", Set::Add),
                ("stale_since", Set::KeepFirst),
                ("changed_at", Set::Replace),
            ],
        );
        for chunk in self.people.chunks(CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO item_people (tenant_id, item_id, people, stale_since, changed_at) ",
            );
            q.push_values(chunk, |mut row, (tenant, item, added)| {
                row.push_bind(*tenant)
                    .push_bind(*item)
                    .push_bind(*added)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(people_clause.as_str());
            out.push(q);
        }
        for chunk in self.deltas.chunks(CHUNK) {
            let mut q =
                QueryBuilder::new("INSERT INTO item_partner_deltas (tenant_id, item_id, added) ");
            q.push_values(chunk, |mut row, (tenant, item, added)| {
                row.push_bind(*tenant)
                    .push_bind(*item)
                    .push_bind(added.as_str());
            });
            out.push(q);
        }
        let hourly_clause = dialect.on_conflict("tenant_id, hour, item_id", &[("n", Set::Add)]);
        for chunk in self.hourly.chunks(CHUNK) {
            let mut q = QueryBuilder::new("INSERT INTO item_hourly (tenant_id, hour, item_id, n) ");
            q.push_values(chunk, |mut row, (tenant, hour, item, n)| {
                row.push_bind(*tenant)
                    .push_bind(*hour)
                    .push_bind(*item)
                    .push_bind(*n);
            });
            q.push(hourly_clause.as_str());
            out.push(q);
        }
        out
    }
}

/// A stale item as its rebuild reads it (its row locked): its people, its latest change, and
/// its partners with its deltas folded in.
struct Stale {
    item: String,
    people: i64,
    changed_at: i64,
    partners: Partners,
}

/// Stale items per rebuild transaction.
const REBUILD_BATCH: usize = 200;

/// The neighbour lists of `stale` (one tenant's) from their partners and each partner's
/// people count (`people_of`).
fn rebuilt(stale: &[Stale], people_of: &HashMap<String, i64>) -> Vec<Neighbours> {
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    stale
        .iter()
        .map(|s| {
            Neighbours::from_row(
                &s.item,
                count(s.people),
                s.partners.iter(),
                |p| people_of.get(p).copied().map_or(0, count),
                TOP_K,
            )
        })
        .collect()
}

/// The stale items to rebuild, oldest first (either backend).
const STALE_QUERY: &str = "SELECT tenant_id, item_id FROM item_people \
     WHERE stale_since IS NOT NULL AND stale_since <= ? ORDER BY stale_since LIMIT ?";

/// Reads a batch's item rows (`FOR UPDATE` with `lock`: one rebuild of an item at a time).
fn push_items_query<DB: sqlx::Database>(
    q: &mut QueryBuilder<DB>,
    tenant: &str,
    items: &[String],
    lock: bool,
) where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push("SELECT item_id, people, changed_at, partners FROM item_people WHERE tenant_id = ")
        .push_bind(tenant)
        .push(" AND item_id IN");
    push_ids(q, items);
    if lock {
        q.push(" ORDER BY item_id FOR UPDATE");
    }
}

/// Reads a batch's deltas, oldest first.
fn push_deltas_query<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, tenant: &str, items: &[String])
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push("SELECT id, item_id, added FROM item_partner_deltas WHERE tenant_id = ")
        .push_bind(tenant)
        .push(" AND item_id IN");
    push_ids(q, items);
    q.push(" ORDER BY id");
}

/// Folds deltas `(id, item, added)`, oldest first, into the items' partners; the ids folded.
fn fold_deltas(
    items: &mut [Stale],
    deltas: Vec<(i64, String, String)>,
) -> Result<Vec<i64>, HistoryError> {
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, s) in items.iter().enumerate() {
        at.insert(s.item.clone(), i);
    }
    let mut ids = Vec::with_capacity(deltas.len());
    for (id, item, added) in deltas {
        ids.push(id);
        let Some(&i) = at.get(&item) else { continue };
        let added = Partners::decode(&added).map_err(HistoryError::Corrupt)?;
        let added: Vec<(&str, u32)> = added.iter().collect();
        items[i].partners.add(&added, KEEP_PARTNERS);
    }
    Ok(ids)
}

/// The writes after a batch's lists are made: the lists, the folded partners, the folded
/// deltas gone, and the stale mark cleared of items that did not change since they were read.
fn rebuild_writes<DB: sqlx::Database>(
    dialect: Dialect,
    tenant: &str,
    items: &[Stale],
    folded: &[i64],
    lists: &[Neighbours],
    now: DateTime<Utc>,
) -> Result<Vec<QueryBuilder<DB>>, HistoryError>
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut out = vec![neighbours_upsert::<DB>(dialect, tenant, lists, now)?];
    // Every row exists (it was read locked): the insert only ever updates `partners`.
    let mut q = QueryBuilder::new(
        "INSERT INTO item_people (tenant_id, item_id, people, changed_at, partners) ",
    );
    q.push_values(items, |mut row, s| {
        row.push_bind(tenant)
            .push_bind(s.item.as_str())
            .push_bind(s.people)
            .push_bind(s.changed_at)
            .push_bind(s.partners.encode());
    });
    q.push(dialect.on_conflict("tenant_id, item_id", &[("partners", Set::Replace)]));
    out.push(q);
    for chunk in folded.chunks(CHUNK) {
        let mut q = QueryBuilder::new("DELETE FROM item_partner_deltas WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        list.push_unseparated(")");
        out.push(q);
    }
    let mut q = QueryBuilder::new("");
    push_clear(&mut q, tenant, items);
    out.push(q);
    Ok(out)
}

/// The queries reading the people counts of a batch's partners, `CHUNK` ids each.
fn partner_people_queries<DB: sqlx::Database>(
    tenant: &str,
    items: &[Stale],
) -> Vec<QueryBuilder<DB>>
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let partners: Vec<String> = items
        .iter()
        .flat_map(|s| s.partners.iter().map(|(p, _)| p.to_owned()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    partners
        .chunks(CHUNK)
        .map(|chunk| {
            let mut q =
                QueryBuilder::new("SELECT item_id, people FROM item_people WHERE tenant_id = ");
            q.push_bind(tenant).push(" AND item_id IN");
            push_ids(&mut q, chunk);
            q
        })
        .collect()
}

/// A stored partner list (NULL: none yet).
fn partners_of(text: Option<&str>) -> Result<Partners, HistoryError> {
    text.map_or(Ok(Partners::default()), |t| {
        Partners::decode(t).map_err(HistoryError::Corrupt)
    })
}

/// Clears the stale mark of a batch's items unless they changed since they were read.
fn push_clear<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, tenant: &str, items: &[Stale])
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push("UPDATE item_people SET stale_since = NULL WHERE tenant_id = ")
        .push_bind(tenant)
        .push(" AND (item_id, changed_at) IN (");
    let mut list = q.separated(", ");
    for s in items {
        list.push("(")
            .push_bind_unseparated(s.item.as_str())
            .push_unseparated(", ")
            .push_bind_unseparated(s.changed_at)
            .push_unseparated(")");
    }
    list.push_unseparated(")");
}

/// Stale items in batches of one tenant each, each batch in key order (so that rebuilds and
/// takes lock an item's row in the same order).
fn batches(stale: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
    let mut by_tenant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tenant, item) in stale {
        by_tenant.entry(tenant).or_default().push(item);
    }
    let mut out = Vec::new();
    for (tenant, items) in by_tenant {
        for chunk in items.chunks(REBUILD_BATCH) {
            let mut chunk = chunk.to_vec();
            chunk.sort_unstable();
            out.push((tenant.clone(), chunk));
        }
    }
    out
}

/// The rankings of one tenant's hourly rows `(item, hour, n)` and its items' categories.
fn ranked(
    rows: Vec<(String, i64, i64)>,
    categories: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Vec<Ranked> {
    let mut hourly: BTreeMap<String, Hourly> = BTreeMap::new();
    for (item, hour, n) in rows {
        hourly
            .entry(item)
            .or_default()
            .add_hour(hour, u32::try_from(n.max(0)).unwrap_or(u32::MAX));
    }
    recommend::rankings(&hourly, |id| categories.get(id).map(String::as_str), now)
}

/// The first hour a ranking at `now` looks at.
fn first_kept_hour(now: DateTime<Utc>) -> i64 {
    recommend::hour_of(now - recommend::counts_kept())
}

/// ` (…)` with `ids`, for either backend.
fn push_ids<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, ids: &[String])
where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push(" (");
    let mut separated = q.separated(", ");
    for id in ids {
        separated.push_bind(id.as_str());
    }
    separated.push_unseparated(")");
}

/// MySQL's VARBINARY ids as text.
fn utf8(bytes: Vec<u8>) -> Result<String, HistoryError> {
    String::from_utf8(bytes).map_err(|e| HistoryError::Corrupt(format!("item id: {e}")))
}

/// The model in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlItemModel {
    pool: sqlx::MySqlPool,
}

impl MySqlItemModel {
    pub fn new(pool: sqlx::MySqlPool) -> Self {
        Self { pool }
    }

    async fn take_once(&self, limit: u32, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        // Read committed, and staged rows locked as read, skipping those another taker holds:
        // two processes take disjoint batches side by side.
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let rows = sqlx::query(
            "SELECT id, tenant_id, changes FROM item_changes ORDER BY id LIMIT ? \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut staged = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<i64, _>(0)?);
            staged.push((row.try_get::<String, _>(1)?, row.try_get::<Vec<u8>, _>(2)?));
        }
        let sums = sum_staged(&staged)?;
        let counts = CountRows::of(&sums);
        for mut q in counts.statements::<MySql>(Dialect::MySql, micros(now)) {
            q.build().execute(&mut *tx).await?;
        }
        let mut q = QueryBuilder::<MySql>::new("DELETE FROM item_changes WHERE id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    /// Rebuilds one batch of a tenant's stale items, their rows locked: their deltas folded
    /// into their partners, their lists made, all written in one transaction.
    async fn rebuild_batch(
        &self,
        tenant: &str,
        items: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError> {
        let mut conn = crate::store::read_committed(&self.pool).await?;
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let mut q = QueryBuilder::<MySql>::new("");
        push_items_query(&mut q, tenant, items, true);
        let mut stale = Vec::with_capacity(items.len());
        for row in q.build().fetch_all(&mut *tx).await? {
            let partners: Option<Vec<u8>> = row.try_get(3)?;
            stale.push(Stale {
                item: utf8(row.try_get(0)?)?,
                people: row.try_get(1)?,
                changed_at: row.try_get(2)?,
                partners: partners_of(partners.map(utf8).transpose()?.as_deref())?,
            });
        }
        let mut q = QueryBuilder::<MySql>::new("");
        push_deltas_query(&mut q, tenant, items);
        let deltas = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, utf8(r.try_get(1)?)?, utf8(r.try_get(2)?)?)))
            .collect::<Result<Vec<_>, HistoryError>>()?;
        let folded = fold_deltas(&mut stale, deltas)?;
        let mut people_of = HashMap::new();
        for mut q in partner_people_queries::<MySql>(tenant, &stale) {
            for r in q.build().fetch_all(&mut *tx).await? {
                people_of.insert(utf8(r.try_get(0)?)?, r.try_get(1)?);
            }
        }
        let lists = rebuilt(&stale, &people_of);
        for mut q in rebuild_writes::<MySql>(Dialect::MySql, tenant, &stale, &folded, &lists, now)?
        {
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(stale.len() as u64)
    }

    async fn tenant_ranked(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Ranked>, HistoryError> {
        sqlx::query("DELETE FROM item_hourly WHERE tenant_id = ? AND hour < ?")
            .bind(tenant)
            .bind(first_kept_hour(now))
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT item_id, hour, n FROM item_hourly WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows
            .iter()
            .map(|r| Ok((utf8(r.try_get(0)?)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, i64, i64)>, HistoryError>>()?;
        let items: Vec<String> = rows
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut categories = HashMap::new();
        for chunk in items.chunks(CHUNK) {
            let mut q = QueryBuilder::<MySql>::new(
                "SELECT item_id, category FROM catalog_items \
                 WHERE category IS NOT NULL AND tenant_id = ",
            );
            q.push_bind(tenant).push(" AND item_id IN");
            push_ids(&mut q, chunk);
            for row in q.build().fetch_all(&self.pool).await? {
                categories.insert(utf8(row.try_get(0)?)?, utf8(row.try_get(1)?)?);
            }
        }
        Ok(ranked(rows, &categories, now))
    }
}

#[async_trait::async_trait]
impl ItemModel for MySqlItemModel {
    async fn take_changes(&self, limit: u32, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        again_on_deadlock(|| self.take_once(limit, now)).await
    }

    async fn rebuild_neighbours(
        &self,
        limit: u32,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError> {
        let rows = sqlx::query(STALE_QUERY)
            .bind(micros(stale_before))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let stale = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, utf8(row.try_get(1)?)?)))
            .collect::<Result<Vec<_>, HistoryError>>()?;
        let mut count = 0;
        for (tenant, items) in batches(stale) {
            count += again_on_deadlock(|| self.rebuild_batch(&tenant, &items, now)).await?;
        }
        Ok(count)
    }

    async fn rank(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        let tenants: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT tenant_id FROM item_hourly \
             UNION SELECT DISTINCT tenant_id FROM item_rankings",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut stored = 0;
        for tenant in tenants {
            let ranked = self.tenant_ranked(&tenant, now).await?;
            let inserts = rankings_inserts::<MySql>(&tenant, &ranked, now)?;
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM item_rankings WHERE tenant_id = ?")
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
            for mut q in inserts {
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            stored += ranked.len() as u64;
        }
        Ok(stored)
    }

    async fn backlog(&self) -> Result<(u64, u64), HistoryError> {
        let staged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_changes")
            .fetch_one(&self.pool)
            .await?;
        let stale: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM item_people WHERE stale_since IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok((staged as u64, stale as u64))
    }

    async fn neighbours(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<(String, f64)>>, HistoryError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT item_id, neighbours FROM item_neighbours WHERE tenant_id = ",
        );
        q.push_bind(tenant).push(" AND item_id IN");
        push_ids(&mut q, ids);
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((utf8(r.try_get(0)?)?, decode_list(r.try_get(1)?)?)))
            .collect()
    }

    async fn ranking(
        &self,
        tenant: &str,
        kind: Ranking,
        category: Option<&str>,
    ) -> Result<Vec<(String, f64)>, HistoryError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT ranking FROM item_rankings WHERE tenant_id = ? AND kind = ? AND category = ?",
        )
        .bind(tenant)
        .bind(kind.as_str())
        .bind(category_key(category).as_bytes())
        .fetch_optional(&self.pool)
        .await?;
        text.map_or(Ok(Vec::new()), |t| decode_list(&t))
    }
}

/// The model in the all-in-one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteItemModel {
    store: SqliteStore,
}

impl SqliteItemModel {
    pub fn new(store: SqliteStore) -> Self {
        Self { store }
    }

    async fn tenant_ranked(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Ranked>, HistoryError> {
        let pool = self.store.pool();
        sqlx::query("DELETE FROM item_hourly WHERE tenant_id = ? AND hour < ?")
            .bind(tenant)
            .bind(first_kept_hour(now))
            .execute(pool)
            .await?;
        let rows = sqlx::query("SELECT item_id, hour, n FROM item_hourly WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, i64, i64)>, sqlx::Error>>()?;
        let items: Vec<String> = rows
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut categories = HashMap::new();
        for chunk in items.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT item_id, category FROM catalog_items \
                 WHERE category IS NOT NULL AND tenant_id = ",
            );
            q.push_bind(tenant).push(" AND item_id IN");
            push_ids(&mut q, chunk);
            for row in q.build().fetch_all(pool).await? {
                categories.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(ranked(rows, &categories, now))
    }
}

#[async_trait::async_trait]
impl ItemModel for SqliteItemModel {
    async fn take_changes(&self, limit: u32, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        let mut tx = self.store.pool().begin().await?;
        // A write first: the transaction holds the file's write lock from here on.
        let rows = sqlx::query(
            "DELETE FROM item_changes WHERE id IN \
             (SELECT id FROM item_changes ORDER BY id LIMIT ?) RETURNING tenant_id, changes",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut staged = Vec::with_capacity(rows.len());
        for row in &rows {
            staged.push((row.try_get::<String, _>(0)?, row.try_get::<Vec<u8>, _>(1)?));
        }
        let sums = sum_staged(&staged)?;
        let counts = CountRows::of(&sums);
        for mut q in counts.statements::<Sqlite>(Dialect::Sqlite, micros(now)) {
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn rebuild_neighbours(
        &self,
        limit: u32,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, HistoryError> {
        let pool = self.store.pool();
        let stale = sqlx::query(STALE_QUERY)
            .bind(micros(stale_before))
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut count = 0;
        for (tenant, items) in batches(stale) {
            let mut tx = pool.begin().await?;
            // A write first: the transaction holds the file's write lock from here on, so the
            // partners and deltas it reads are the ones it replaces.
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE item_people SET people = people WHERE tenant_id = ",
            );
            q.push_bind(tenant.as_str()).push(" AND item_id IN");
            push_ids(&mut q, &items);
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::<Sqlite>::new("");
            push_items_query(&mut q, &tenant, &items, false);
            let mut stale = Vec::with_capacity(items.len());
            for row in q.build().fetch_all(&mut *tx).await? {
                let partners: Option<String> = row.try_get(3)?;
                stale.push(Stale {
                    item: row.try_get(0)?,
                    people: row.try_get(1)?,
                    changed_at: row.try_get(2)?,
                    partners: partners_of(partners.as_deref())?,
                });
            }
            let mut q = QueryBuilder::<Sqlite>::new("");
            push_deltas_query(&mut q, &tenant, &items);
            let deltas = q
                .build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let folded = fold_deltas(&mut stale, deltas)?;
            let mut people_of = HashMap::new();
            for mut q in partner_people_queries::<Sqlite>(&tenant, &stale) {
                for r in q.build().fetch_all(&mut *tx).await? {
                    people_of.insert(r.try_get(0)?, r.try_get(1)?);
                }
            }
            let lists = rebuilt(&stale, &people_of);
            let writes =
                rebuild_writes::<Sqlite>(Dialect::Sqlite, &tenant, &stale, &folded, &lists, now)?;
            for mut q in writes {
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            count += stale.len() as u64;
        }
        Ok(count)
    }

    async fn rank(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        let tenants: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT tenant_id FROM item_hourly \
             UNION SELECT DISTINCT tenant_id FROM item_rankings",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut stored = 0;
        for tenant in tenants {
            let ranked = self.tenant_ranked(&tenant, now).await?;
            let inserts = rankings_inserts::<Sqlite>(&tenant, &ranked, now)?;
            let mut tx = self.store.pool().begin().await?;
            sqlx::query("DELETE FROM item_rankings WHERE tenant_id = ?")
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
            for mut q in inserts {
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            stored += ranked.len() as u64;
        }
        Ok(stored)
    }

    async fn backlog(&self) -> Result<(u64, u64), HistoryError> {
        let pool = self.store.pool();
        let staged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_changes")
            .fetch_one(pool)
            .await?;
        let stale: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM item_people WHERE stale_since IS NOT NULL")
                .fetch_one(pool)
                .await?;
        Ok((staged as u64, stale as u64))
    }

    async fn neighbours(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<(String, f64)>>, HistoryError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT item_id, neighbours FROM item_neighbours WHERE tenant_id = ",
        );
        q.push_bind(tenant).push(" AND item_id IN");
        push_ids(&mut q, ids);
        q.build()
            .fetch_all(self.store.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, decode_list(r.try_get(1)?)?)))
            .collect()
    }

    async fn ranking(
        &self,
        tenant: &str,
        kind: Ranking,
        category: Option<&str>,
    ) -> Result<Vec<(String, f64)>, HistoryError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT ranking FROM item_rankings WHERE tenant_id = ? AND kind = ? AND category = ?",
        )
        .bind(tenant)
        .bind(kind.as_str())
        .bind(category_key(category))
        .fetch_optional(self.store.pool())
        .await?;
        text.map_or(Ok(Vec::new()), |t| decode_list(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_clauses_read_as_each_backend_expects() {
        let sets = [
            ("people", Set::Add),
            ("stale_since", Set::KeepFirst),
            ("changed_at", Set::Replace),
        ];
        assert_eq!(
            Dialect::MySql.on_conflict("tenant_id, item_id", &sets),
            " ON DUPLICATE KEY UPDATE people = people + VALUES(people), \
             stale_since = COALESCE(stale_since, VALUES(stale_since)), \
             changed_at = VALUES(changed_at)"
        );
        assert_eq!(
            Dialect::Sqlite.on_conflict("tenant_id, item_id", &sets),
            " ON CONFLICT (tenant_id, item_id) DO UPDATE SET people = people + excluded.people, \
             stale_since = COALESCE(stale_since, excluded.stale_since), \
             changed_at = excluded.changed_at"
        );
    }

    #[test]
    fn staged_changes_read_back_without_copies_and_sum_as_merged() {
        let mut one = ItemChanges::default();
        one.people.insert("a".into(), 2);
        one.pairs.insert(("a".into(), "b".into()), 3);
        one.pairs.insert(("b".into(), "c".into()), 1);
        one.hourly.insert(("a".into(), 490_000), 4);
        let mut two = ItemChanges::default();
        two.pairs.insert(("a".into(), "b".into()), 1);
        two.people.insert("c".into(), 1);
        let bytes = encode_changes(&one).unwrap();
        assert_eq!(
            decode_staged(&bytes).unwrap(),
            StagedRef {
                people: vec![("a", 2)],
                pairs: vec![(("a", "b"), 3), (("b", "c"), 1)],
                hourly: vec![(("a", 490_000), 4)],
            }
        );
        let staged = vec![
            ("t".to_owned(), bytes),
            ("t".to_owned(), encode_changes(&two).unwrap()),
        ];
        let sums = sum_staged(&staged).unwrap();
        let rows = CountRows::of(&sums);
        // As the changes merged would have it: every touched item in key order, each item's
        // partners once with their sums.
        let mut merged = one.clone();
        merged.merge(two);
        let touched: Vec<&str> = merged.touched().into_iter().collect();
        let people: Vec<(&str, i64)> = rows.people.iter().map(|(_, i, n)| (*i, *n)).collect();
        assert_eq!(people, [("a", 2), ("b", 0), ("c", 1)]);
        assert_eq!(people.iter().map(|(i, _)| *i).collect::<Vec<_>>(), touched);
        let deltas: Vec<(&str, &str)> = rows
            .deltas
            .iter()
            .map(|(_, i, d)| (*i, d.as_str()))
            .collect();
        assert_eq!(
            deltas,
            [("a", "b\t4\n"), ("b", "a\t4\nc\t1\n"), ("c", "b\t1\n")]
        );
        assert_eq!(rows.hourly, [("t", 490_000, "a", 4)]);
    }

    #[tokio::test]
    async fn the_model_keeps_the_contract_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        let process = crate::audience_sqlite::tests::processor(store.clone());
        crate::testing::recommendations::the_model_follows_the_events(
            &store,
            &SqliteItemModel::new(store.clone()),
            &crate::catalog::SqliteCatalog::new(store.clone()),
            &process,
        )
        .await;
    }
}

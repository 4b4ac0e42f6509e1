//! A tenant's product catalog as stored: the port the API writes items through and the
//! recommendations read them from, with MySQL and SQLite implementations. Items are kept whole as
//! JSON; their category and stock sit beside them so a category lists by index.

use crate::audience::{decode, encode};
use crate::history::{HistoryError, again_on_deadlock};
use crate::sqlite::{SqliteStore, micros};
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySql, QueryBuilder, Sqlite};
use std::collections::{BTreeMap, BTreeSet};
use ump_automation::recommend::CatalogItem;

/// Rows per `INSERT`: a batch of large items stays well under the server's packet size.
const INSERT_CHUNK: usize = 100;

/// What `put_items` did with one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    pub id: String,
    /// New to the tenant's catalog (else it replaced the stored item).
    pub created: bool,
}

/// A page of a tenant's items in id order.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogPage {
    pub items: Vec<CatalogItem>,
    /// The `after` of the next page, when there is one.
    pub next: Option<String>,
}

#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync {
    /// Creates or replaces each item, all or none; an id twice in `items` is written twice, the
    /// later winning.
    async fn put_items(
        &self,
        tenant: &str,
        items: &[CatalogItem],
        now: DateTime<Utc>,
    ) -> Result<Vec<Upserted>, HistoryError>;
    async fn item(&self, tenant: &str, id: &str) -> Result<Option<CatalogItem>, HistoryError>;
    /// The items of `ids` that the catalog has, in one query.
    async fn items(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, CatalogItem>, HistoryError>;
    /// Up to `limit` items (of `category`, if given) with ids after `after`, in id order.
    async fn list(
        &self,
        tenant: &str,
        category: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<CatalogPage, HistoryError>;
    async fn delete_item(&self, tenant: &str, id: &str) -> Result<bool, HistoryError>;
}

/// Which of `items` are new, given the ids stored before.
fn upserted(items: &[CatalogItem], mut stored: BTreeSet<String>) -> Vec<Upserted> {
    items
        .iter()
        .map(|item| Upserted {
            id: item.id.clone(),
            created: stored.insert(item.id.clone()),
        })
        .collect()
}

/// The rows of a page query (`limit + 1` asked for) as the page.
fn page(texts: Vec<String>, limit: u32) -> Result<CatalogPage, HistoryError> {
    let mut items = texts
        .iter()
        .map(|t| decode::<CatalogItem>("catalog item", t))
        .collect::<Result<Vec<_>, _>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = more.then(|| items.last().map(|i| i.id.clone())).flatten();
    Ok(CatalogPage { items, next })
}

fn by_id(texts: Vec<String>) -> Result<BTreeMap<String, CatalogItem>, HistoryError> {
    texts
        .iter()
        .map(|t| decode::<CatalogItem>("catalog item", t).map(|i| (i.id.clone(), i)))
        .collect()
}

/// The page query's text up to `LIMIT`: the tenant's items, of `category`, after `after`.
fn push_page_filter<DB: sqlx::Database>(
    q: &mut QueryBuilder<DB>,
    tenant: &str,
    category: Option<&str>,
    after: Option<&str>,
) where
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.push("SELECT item FROM catalog_items WHERE tenant_id = ")
        .push_bind(tenant);
    if let Some(category) = category {
        q.push(" AND category = ").push_bind(category);
    }
    if let Some(after) = after {
        q.push(" AND item_id > ").push_bind(after);
    }
    q.push(" ORDER BY item_id LIMIT ");
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

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// The catalog in MySQL.
#[derive(Clone, Debug)]
pub struct MySqlCatalog {
    pool: sqlx::MySqlPool,
}

impl MySqlCatalog {
    pub fn new(pool: sqlx::MySqlPool) -> Self {
        Self { pool }
    }

    async fn put_once(
        &self,
        tenant: &str,
        items: &[CatalogItem],
        texts: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<Upserted>, HistoryError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = items
            .iter()
            .map(|i| i.id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut stored = BTreeSet::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut q =
                QueryBuilder::<MySql>::new("SELECT item_id FROM catalog_items WHERE tenant_id = ");
            q.push_bind(tenant).push(" AND item_id IN");
            push_ids(&mut q, chunk);
            q.push(" FOR UPDATE");
            let rows: Vec<Vec<u8>> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            for id in rows {
                // VARBINARY: the id's bytes as they were written.
                let id = String::from_utf8(id)
                    .map_err(|e| HistoryError::Corrupt(format!("catalog item id: {e}")))?;
                stored.insert(id);
            }
        }
        for (items, texts) in items.chunks(INSERT_CHUNK).zip(texts.chunks(INSERT_CHUNK)) {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO catalog_items (tenant_id, item_id, category, in_stock, item, \
                 created_at, updated_at) ",
            );
            q.push_values(items.iter().zip(texts), |mut row, (item, text)| {
                row.push_bind(tenant)
                    .push_bind(&item.id)
                    .push_bind(item.category.as_deref())
                    .push_bind(item.in_stock)
                    .push_bind(text)
                    .push_bind(naive(now))
                    .push_bind(naive(now));
            });
            q.push(
                " ON DUPLICATE KEY UPDATE category = VALUES(category), \
                 in_stock = VALUES(in_stock), item = VALUES(item), updated_at = VALUES(updated_at)",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(upserted(items, stored))
    }
}

#[async_trait::async_trait]
impl CatalogStore for MySqlCatalog {
    async fn put_items(
        &self,
        tenant: &str,
        items: &[CatalogItem],
        now: DateTime<Utc>,
    ) -> Result<Vec<Upserted>, HistoryError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let texts = items
            .iter()
            .map(|i| encode("catalog item", i))
            .collect::<Result<Vec<_>, _>>()?;
        again_on_deadlock(|| self.put_once(tenant, items, &texts, now)).await
    }

    async fn item(&self, tenant: &str, id: &str) -> Result<Option<CatalogItem>, HistoryError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT item FROM catalog_items WHERE tenant_id = ? AND item_id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        text.map(|t| decode("catalog item", &t)).transpose()
    }

    async fn items(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, CatalogItem>, HistoryError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut q = QueryBuilder::<MySql>::new("SELECT item FROM catalog_items WHERE tenant_id = ");
        q.push_bind(tenant).push(" AND item_id IN");
        push_ids(&mut q, ids);
        by_id(q.build_query_scalar().fetch_all(&self.pool).await?)
    }

    async fn list(
        &self,
        tenant: &str,
        category: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<CatalogPage, HistoryError> {
        let mut q = QueryBuilder::<MySql>::new("");
        push_page_filter(&mut q, tenant, category, after);
        q.push_bind(i64::from(limit) + 1);
        page(q.build_query_scalar().fetch_all(&self.pool).await?, limit)
    }

    async fn delete_item(&self, tenant: &str, id: &str) -> Result<bool, HistoryError> {
        let done = sqlx::query("DELETE FROM catalog_items WHERE tenant_id = ? AND item_id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The catalog in the all-in-one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteCatalog {
    store: SqliteStore,
}

impl SqliteCatalog {
    pub fn new(store: SqliteStore) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl CatalogStore for SqliteCatalog {
    async fn put_items(
        &self,
        tenant: &str,
        items: &[CatalogItem],
        now: DateTime<Utc>,
    ) -> Result<Vec<Upserted>, HistoryError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let texts = items
            .iter()
            .map(|i| encode("catalog item", i))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = items
            .iter()
            .map(|i| i.id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tx = self.store.pool().begin().await?;
        // A write first: the transaction holds the file's write lock from here on, so what it
        // reads stays true until it commits.
        let mut stored = BTreeSet::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new("UPDATE catalog_items SET updated_at = ");
            q.push_bind(micros(now))
                .push(" WHERE tenant_id = ")
                .push_bind(tenant)
                .push(" AND item_id IN");
            push_ids(&mut q, chunk);
            q.push(" RETURNING item_id");
            let rows: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            stored.extend(rows);
        }
        for (items, texts) in items.chunks(INSERT_CHUNK).zip(texts.chunks(INSERT_CHUNK)) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO catalog_items (tenant_id, item_id, category, in_stock, item, \
                 created_at, updated_at) ",
            );
            q.push_values(items.iter().zip(texts), |mut row, (item, text)| {
                row.push_bind(tenant)
                    .push_bind(&item.id)
                    .push_bind(item.category.as_deref())
                    .push_bind(item.in_stock)
                    .push_bind(text)
                    .push_bind(micros(now))
                    .push_bind(micros(now));
            });
            q.push(
                " ON CONFLICT (tenant_id, item_id) DO UPDATE SET category = excluded.category, \
                 in_stock = excluded.in_stock, item = excluded.item, \
                 updated_at = excluded.updated_at",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(upserted(items, stored))
    }

    async fn item(&self, tenant: &str, id: &str) -> Result<Option<CatalogItem>, HistoryError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT item FROM catalog_items WHERE tenant_id = ? AND item_id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        text.map(|t| decode("catalog item", &t)).transpose()
    }

    async fn items(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, CatalogItem>, HistoryError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT item FROM catalog_items WHERE tenant_id = ");
        q.push_bind(tenant).push(" AND item_id IN");
        push_ids(&mut q, ids);
        by_id(q.build_query_scalar().fetch_all(self.store.pool()).await?)
    }

    async fn list(
        &self,
        tenant: &str,
        category: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<CatalogPage, HistoryError> {
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_page_filter(&mut q, tenant, category, after);
        q.push_bind(i64::from(limit) + 1);
        page(
            q.build_query_scalar().fetch_all(self.store.pool()).await?,
            limit,
        )
    }

    async fn delete_item(&self, tenant: &str, id: &str) -> Result<bool, HistoryError> {
        let done = sqlx::query("DELETE FROM catalog_items WHERE tenant_id = ? AND item_id = ?")
            .bind(tenant)
            .bind(id)
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn catalog_keeps_the_contract_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ump.db")).await.unwrap();
        crate::testing::catalog::upserts_pages_and_tenants(&SqliteCatalog::new(store)).await;
    }
}

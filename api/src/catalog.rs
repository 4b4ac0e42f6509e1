//! `/v1/catalog/items`: a tenant's product catalog (`ump_automation::recommend::CatalogItem`),
//! one item at a time or in batches of up to `MAX_BATCH`, listed by id a page at a time.

use crate::AppState;
use crate::messages::{BATCH_LIMIT, SINGLE_LIMIT, read_json};
use crate::problem::{FieldError, Problem, parse_body, respond};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ump_automation::recommend::{CatalogItem, MAX_ITEM_ID, valid_item_id};
use ump_core::catalog::CatalogPage;

const RETRY_AFTER_SECONDS: u64 = 5;
/// The most items one batch writes.
pub const MAX_BATCH: usize = 1000;
/// The most items one page lists.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;

/// A catalog item as a batch writes it and the API returns it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CatalogItem)]
#[allow(dead_code)] // documents `ump_automation::recommend::CatalogItem`, which parses
pub struct CatalogItemSchema {
    /// 1 to 128 characters, no control characters; unique in the tenant.
    #[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")]
    id: String,
    /// 1 to 500 characters, no control characters.
    #[schema(min_length = 1, max_length = 500)]
    name: String,
    #[schema(minimum = 0)]
    price: Option<f64>,
    /// ISO 4217: `KRW`, `USD`.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// The product's page: an http or https URL of at most 2048 bytes.
    url: Option<String>,
    /// An http or https URL of at most 2048 bytes.
    image: Option<String>,
    /// 1 to 128 characters, no control characters.
    #[schema(min_length = 1, max_length = 128)]
    category: Option<String>,
    /// Default `true`; out-of-stock items are never recommended.
    #[schema(required = false)]
    in_stock: bool,
    /// Anything else the messages use (brand, colour, rating): at most 8 KiB of JSON.
    #[schema(required = false)]
    attributes: Map<String, Value>,
}

/// A catalog item as `PUT` writes it: the id is the path's, so the body may leave it out.
/// (The fields are `CatalogItem`'s.)
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents `ump_automation::recommend::CatalogItem`, which parses
pub struct CatalogItemRequest {
    /// The path's id, when given.
    #[schema(required = false, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")]
    id: String,
    /// 1 to 500 characters, no control characters.
    #[schema(min_length = 1, max_length = 500)]
    name: String,
    #[schema(minimum = 0)]
    price: Option<f64>,
    /// ISO 4217: `KRW`, `USD`.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// The product's page: an http or https URL of at most 2048 bytes.
    url: Option<String>,
    /// An http or https URL of at most 2048 bytes.
    image: Option<String>,
    /// 1 to 128 characters, no control characters.
    #[schema(min_length = 1, max_length = 128)]
    category: Option<String>,
    /// Default `true`; out-of-stock items are never recommended.
    #[schema(required = false)]
    in_stock: bool,
    /// Anything else the messages use (brand, colour, rating): at most 8 KiB of JSON.
    #[schema(required = false)]
    attributes: Map<String, Value>,
}

/// Up to 1,000 items, written all or none.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogBatch {
    #[schema(value_type = Vec<CatalogItemSchema>, min_items = 1, max_items = 1000)]
    items: Vec<Value>,
}

/// What a batch did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CatalogBatchResult {
    /// Items new to the catalog.
    created: usize,
    /// Items that replaced stored ones.
    updated: usize,
}

/// A page of items in id order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CatalogItemPage {
    #[schema(value_type = Vec<CatalogItemSchema>)]
    items: Vec<CatalogItem>,
    /// The `after` of the next page, when there is one.
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    category: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "catalog store failed");
    Problem::unavailable("the catalog store is unavailable", RETRY_AFTER_SECONDS)
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such catalog item",
        "no item with this id in this tenant's catalog",
    )
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::validation(vec![FieldError::new(field, detail)])
}

fn item_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    match path {
        Ok(Path(id)) if valid_item_id(&id) => Ok(id),
        _ => Err(invalid(
            "id",
            format!("1 to {MAX_ITEM_ID} characters, no control characters"),
        )),
    }
}

fn checked(item: &CatalogItem, at: &str) -> Result<(), Vec<FieldError>> {
    item.validate(at).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| FieldError::new(e.field, e.detail))
            .collect()
    })
}

/// The body of `PUT`: the path's id fills a missing one and must equal a given one.
fn parse_one(value: Value, path_id: &str) -> Result<CatalogItem, Problem> {
    let Value::Object(mut object) = value else {
        return Err(invalid("body", "must be a JSON object"));
    };
    match object.get("id") {
        None => {
            object.insert("id".into(), Value::String(path_id.to_owned()));
        }
        Some(Value::String(given)) if given == path_id => {}
        Some(_) => return Err(invalid("id", "must be the path's id (or left out)")),
    }
    let item: CatalogItem = parse_body(Value::Object(object))?;
    checked(&item, "").map_err(Problem::validation)?;
    Ok(item)
}

/// One item of a batch, at `at` (`items[3]`): every field at fault, named with its place.
fn parse_at(value: Value, at: &str) -> Result<CatalogItem, Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new(at, "must be a JSON object")]);
    }
    let item: CatalogItem = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = match e.path().to_string() {
            path if path == "." => at.to_owned(),
            path => format!("{at}.{path}"),
        };
        vec![FieldError::new(field, e.inner().to_string())]
    })?;
    checked(&item, at)?;
    Ok(item)
}

/// The body of a batch: 1 to `MAX_BATCH` items, every one valid.
fn parse_batch(value: Value) -> Result<Vec<CatalogItem>, Problem> {
    let batch: CatalogBatch = parse_body(value)?;
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH {
        return Err(invalid(
            "items",
            format!(
                "1 to {MAX_BATCH} items (got {}); send more in several batches",
                batch.items.len()
            ),
        ));
    }
    let mut items = Vec::with_capacity(batch.items.len());
    let mut errors = Vec::new();
    for (i, value) in batch.items.into_iter().enumerate() {
        match parse_at(value, &format!("items[{i}]")) {
            Ok(item) => items.push(item),
            Err(mut bad) => errors.append(&mut bad),
        }
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(Problem::validation(errors))
    }
}

/// Creates or replaces an item.
#[utoipa::path(put, path = "/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The item's id", pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")),
    request_body = CatalogItemRequest,
    responses(
        (status = 200, description = "Replaced", body = CatalogItemSchema),
        (status = 201, description = "Created", body = CatalogItemSchema),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (each named), or a body id other than the path's", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn put_item(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = item_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let item = parse_one(value, &id)?;
            let written = app
                .catalog
                .put_items(&tenant.0, std::slice::from_ref(&item), Utc::now())
                .await
                .map_err(unavailable)?;
            let status = if written.first().is_some_and(|u| u.created) {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(item)))
        }
        .await,
    )
}

/// Creates or replaces up to 1,000 items, all or none.
#[utoipa::path(post, path = "/v1/catalog/items", tag = "catalog",
    request_body = CatalogBatch,
    responses(
        (status = 200, description = "Every item written", body = CatalogBatchResult),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No items, too many, or invalid fields (each named with its item: `items[3].price`); nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn put_batch(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let (_, value) = read_json(&headers, body, BATCH_LIMIT, app.body_timeout).await?;
            let items = parse_batch(value)?;
            let written = app
                .catalog
                .put_items(&tenant.0, &items, Utc::now())
                .await
                .map_err(unavailable)?;
            let created = written.iter().filter(|u| u.created).count();
            Ok(Json(CatalogBatchResult {
                created,
                updated: written.len() - created,
            }))
        }
        .await,
    )
}

/// An item.
#[utoipa::path(get, path = "/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The item's id", pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")),
    responses(
        (status = 200, body = CatalogItemSchema),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an item id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_item(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = item_id(path)?;
            let item = app
                .catalog
                .item(&tenant.0, &id)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_found)?;
            Ok(Json(item))
        }
        .await,
    )
}

/// Deletes an item.
#[utoipa::path(delete, path = "/v1/catalog/items/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The item's id", pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an item id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn delete_item(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = item_id(path)?;
            if app
                .catalog
                .delete_item(&tenant.0, &id)
                .await
                .map_err(unavailable)?
            {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(not_found())
            }
        }
        .await,
    )
}

/// The tenant's items (of a category), a page at a time in id order.
#[utoipa::path(get, path = "/v1/catalog/items", tag = "catalog",
    params(("category" = Option<String>, Query, description = "Only items of this category"),
           ("after" = Option<String>, Query, description = "The `next` of the previous page"),
           ("limit" = Option<u32>, Query, description = "1 to 500 (default 100)", minimum = 1, maximum = 500)),
    responses(
        (status = 200, body = CatalogItemPage),
        (status = 400, description = "A query parameter given twice", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit`", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn list_items(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let Ok(Query(query)) = query else {
                return Err(Problem::bad_query(
                    "limit",
                    "give category, after and limit once each",
                ));
            };
            let limit = match query.limit.as_deref().map(str::parse::<u32>) {
                None => DEFAULT_PAGE,
                Some(Ok(n @ 1..=MAX_PAGE)) => n,
                Some(_) => {
                    return Err(invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_PAGE}"),
                    ));
                }
            };
            let present =
                |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
            let (category, after) = (present(&query.category), present(&query.after));
            let CatalogPage { items, next } = app
                .catalog
                .list(&tenant.0, category.as_deref(), after.as_deref(), limit)
                .await
                .map_err(unavailable)?;
            Ok(Json(CatalogItemPage { items, next }))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(problem: &Problem) -> Vec<&str> {
        problem.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_put_body_takes_the_paths_id_and_refuses_another() {
        let item = parse_one(json!({"name": "Shoe"}), "shoe-1").expect("valid");
        assert_eq!(item.id, "shoe-1");
        assert!(item.in_stock);
        let other = parse_one(json!({"id": "shoe-2", "name": "Shoe"}), "shoe-1").unwrap_err();
        assert_eq!(other.field.as_deref(), Some("id"));
        let unknown = parse_one(json!({"name": "Shoe", "colour": "red"}), "s").unwrap_err();
        assert_eq!(unknown.status, 422);
        let bad = parse_one(json!({"name": "", "price": -1}), "s").unwrap_err();
        assert_eq!(fields(&bad), ["name", "price"]);
    }

    #[test]
    fn a_batch_names_every_bad_field_with_its_item() {
        let bad = parse_batch(json!({"items": [
            {"id": "a", "name": "A"},
            {"id": "b", "name": "B", "price": -5},
            {"id": "c", "name": "C", "price": "cheap"},
            "d",
            {"id": "e"},
        ]}))
        .unwrap_err();
        assert_eq!(
            fields(&bad),
            ["items[1].price", "items[2].price", "items[3]", "items[4]"]
        );
        let none = parse_batch(json!({"items": []})).unwrap_err();
        assert_eq!(none.field.as_deref(), Some("items"));
        let many: Vec<Value> = (0..=MAX_BATCH)
            .map(|i| json!({"id": i.to_string(), "name": "x"}))
            .collect();
        let too_many = parse_batch(json!({ "items": many })).unwrap_err();
        assert_eq!(too_many.field.as_deref(), Some("items"));
        let unknown = parse_batch(json!({"items": [], "more": 1})).unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("more"));
        assert_eq!(
            parse_batch(json!({"items": [{"id": "a", "name": "A"}]}))
                .expect("valid")
                .len(),
            1
        );
    }
}

//! `GET /v1/users/{user_id}/recommendations`: a person's recommended catalog items by one
//! strategy (`ump_automation::recommend::recommend`, over the model `ump_core::recommendations`
//! keeps from the event stream).

use crate::AppState;
use crate::problem::{FieldError, Problem, respond};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ump_automation::recommend::{
    CatalogItem, MAX_LIMIT, Recommendation, Strategy, Wanted, data_reference, fill_data,
    valid_item_id,
};
use ump_core::history::HistoryError;
use ump_core::recommendations::{Ask, recommend_for};

const RETRY_AFTER_SECONDS: u64 = 5;
/// Items a list has when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 5;

#[derive(Deserialize)]
pub struct RecommendQuery {
    strategy: Option<String>,
    limit: Option<String>,
    category: Option<String>,
}

/// A person's recommendations.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Recommendations {
    user_id: String,
    /// The strategy asked for; each item says which strategy produced it (`popular` for the
    /// cold start's fill).
    #[schema(value_type = StrategyName)]
    strategy: Strategy,
    /// Best first: catalog items, each with `score` and `strategy`.
    #[schema(value_type = Vec<RecommendedItem>)]
    items: Vec<Recommendation>,
}

/// How a list of recommendations is made: `recently_viewed` (newest view first, without what
/// was bought since), `viewed_not_purchased`, `similar_items` (item-to-item co-occurrence from
/// the person's latest items), `popular` (people over 7 days), `trending` (the last day against
/// the week before). Short lists are filled from `popular`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Strategy)]
#[allow(dead_code)] // documents `ump_automation::recommend::Strategy`, which parses
#[allow(clippy::enum_variant_names)]
pub enum StrategyName {
    RecentlyViewed,
    ViewedNotPurchased,
    SimilarItems,
    Popular,
    Trending,
}

/// A recommended catalog item: the item's fields, its score under the strategy that produced
/// it (scores of different strategies do not compare) and that strategy.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::recommend::Recommendation`, which serializes
pub struct RecommendedItem {
    id: String,
    name: String,
    price: Option<f64>,
    currency: Option<String>,
    url: Option<String>,
    image: Option<String>,
    category: Option<String>,
    in_stock: bool,
    attributes: serde_json::Map<String, serde_json::Value>,
    score: f64,
    strategy: StrategyName,
}

/// What a message or a journey's send step asks for: the person's list by `strategy`, put in
/// the message's `data` as `recommendations` (`{{ recommendations[0].name }}`); `data` values
/// written `$recommendations.<i>.<field>` are replaced by that item's field (AlimTalk's approved
/// variables).
#[derive(utoipa::ToSchema)]
#[schema(as = RecommendationsAsk)]
#[allow(dead_code)] // documents `ump_automation::recommend::Wanted`, which parses
pub struct WantedSchema {
    strategy: StrategyName,
    /// Items in the list, 1 to 50 (default 3).
    #[schema(minimum = 1, maximum = 50)]
    limit: Option<u32>,
    /// Only items of this category.
    #[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")]
    category: Option<String>,
    /// Whether a short list is filled from `popular` (default true). `false` for words about
    /// the strategy ("the product you viewed"): only its own items, and a person without
    /// them gets no message.
    fallback: Option<bool>,
}

/// The person's list as `wanted` says (timed in `ump_recommend_duration_seconds`).
pub(crate) async fn list_for(
    app: &AppState,
    tenant: &str,
    user_id: &str,
    wanted: &Wanted,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<Recommendation>, HistoryError> {
    let started = std::time::Instant::now();
    let items = recommend_for(
        app.segments.as_ref(),
        app.items.as_ref(),
        app.catalog.as_ref(),
        Ask {
            tenant,
            user_id,
            strategy: wanted.strategy,
            limit: wanted.limit,
            category: wanted.category.as_deref(),
            now,
        },
    )
    .await?;
    app.metrics
        .recommend_seconds
        .with_label_values(&[wanted.strategy.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(wanted.keep(items))
}

/// `data` as a check sees it before any person's list exists: a sample list of `wanted.limit`
/// items with every field set; a reference the sample cannot give (an attribute) reads as text.
pub(crate) fn fill_sample(data: &mut Map<String, Value>, wanted: &Wanted) {
    let sample: Vec<Recommendation> = (0..wanted.limit)
        .map(|i| Recommendation {
            item: CatalogItem {
                id: format!("sample-{i}"),
                name: format!("Sample item {i}"),
                price: Some(10_000.0),
                currency: Some("KRW".into()),
                url: Some(format!("https://shop.example/p/sample-{i}")),
                image: Some(format!("https://shop.example/i/sample-{i}.jpg")),
                category: Some("sample".into()),
                in_stock: true,
                attributes: Map::new(),
            },
            score: 1.0,
            strategy: Strategy::Popular,
        })
        .collect();
    let _ = fill_data(data, &sample);
    for value in data.values_mut() {
        if value.as_str().and_then(data_reference).is_some() {
            *value = Value::String("sample".into());
        }
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::validation(vec![FieldError::new(field, detail)])
}

/// The query as asked: a strategy (default `similar_items`), a limit (default
/// `DEFAULT_LIMIT`), a category.
pub fn parse_query(query: &RecommendQuery) -> Result<(Strategy, usize, Option<String>), Problem> {
    let strategy = match query.strategy.as_deref() {
        None => Strategy::SimilarItems,
        Some(name) => name.parse().map_err(|e: String| invalid("strategy", e))?,
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..=MAX_LIMIT) => n,
            _ => {
                return Err(invalid(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let category = match query.category.as_deref() {
        None => None,
        Some(c) if valid_item_id(c) => Some(c.to_owned()),
        Some(_) => {
            return Err(invalid(
                "category",
                "1 to 128 characters, no control characters",
            ));
        }
    };
    Ok((strategy, limit, category))
}

/// A person's recommendations by one strategy.
#[utoipa::path(get, path = "/v1/users/{user_id}/recommendations", tag = "users",
    params(("user_id" = String, Path, description = "The application's id for the person (one UMP does not know gets the cold start: popular items)", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"),
           ("strategy" = Option<StrategyName>, Query, description = "How the list is made (default similar_items)"),
           ("limit" = Option<u32>, Query, description = "1 to 50 (default 5)", minimum = 1, maximum = 50),
           ("category" = Option<String>, Query, description = "Only items of this category", pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$")),
    responses(
        (status = 200, body = Recommendations),
        (status = 400, description = "A query parameter given twice", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad user id, strategy, limit or category (named)", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_recommendations(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RecommendQuery>, QueryRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let user_id = crate::users::user_id(path)?;
            let Ok(Query(query)) = query else {
                return Err(Problem::bad_query(
                    "strategy",
                    "give strategy, limit and category once each",
                ));
            };
            let (strategy, limit, category) = parse_query(&query)?;
            let wanted = Wanted {
                strategy,
                limit,
                category,
                fallback: true,
            };
            let items = list_for(&app, &tenant.0, &user_id, &wanted, Utc::now())
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "recommendations failed");
                    Problem::unavailable("recommendations are unavailable", RETRY_AFTER_SECONDS)
                })?;
            Ok(Json(Recommendations {
                user_id,
                strategy,
                items,
            }))
        }
        .await,
    )
}

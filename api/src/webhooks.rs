//! `/v1/webhooks`: a tenant's webhook endpoints (Standard Webhooks), their secrets (shown once,
//! rotated with a grace period), their delivery log, and the "send a test event" and "replay
//! since" actions. Deliveries themselves are made by the dispatcher (`ump_worker::webhooks`).

use crate::AppState;
use crate::messages::{SINGLE_LIMIT, read_json};
use crate::problem::{FieldError, Problem, parse_body, respond};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ump_core::webhooks::{
    DeliveryView, Endpoint, EventFilter, EventType, UrlRules, new_endpoint_id, new_secret,
    test_delivery,
};

const RETRY_AFTER_SECONDS: u64 = 5;
/// Endpoints per tenant: every status change of the tenant's messages is matched against each.
pub const MAX_ENDPOINTS: usize = 50;
const MAX_FILTER_ITEMS: usize = 50;
/// How long a rotated secret keeps signing, unless the request says otherwise…
const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// …and at most.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// An endpoint as clients write it. In `POST`, `url` and `event_types` are required; in `PATCH`,
/// every field is optional and only those given change.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// `https` (plain `http` only where the server allows it), resolving to public addresses.
    #[schema(max_length = 2048, example = "https://hooks.example.com/ump")]
    url: Option<String>,
    #[schema(max_length = 255)]
    description: Option<String>,
    /// The events the endpoint gets, at least one.
    #[schema(min_items = 1, max_items = 6)]
    event_types: Option<Vec<EventType>>,
    /// Only messages of these channels (all when empty or absent).
    #[schema(max_items = 50)]
    channels: Option<Vec<String>>,
    /// Only messages carrying at least one of these tags (all when empty or absent).
    #[schema(max_items = 50)]
    tags: Option<Vec<String>>,
    enabled: Option<bool>,
    /// Why it is disabled (kept only while it is).
    #[schema(max_length = 500)]
    disabled_reason: Option<String>,
}

/// A new endpoint, with its signing secret: the only time the secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointCreated {
    #[serde(flatten)]
    endpoint: Endpoint,
    /// `whsec_` and the base64 key: verify signatures with it (Standard Webhooks libraries take
    /// it as is).
    secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    items: Vec<Endpoint>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps signing beside the new one (default 24h, at most 7d).
    #[schema(example = "24h")]
    grace: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The new secret: the only time it is shown.
    secret: String,
    /// Until then deliveries carry a signature with each secret.
    previous_secret_expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Every delivery made since then is sent again, under its own `webhook-id`.
    since: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Deliveries queued again.
    replayed: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TestEventQueued {
    /// The test event's `webhook-id`; its delivery shows in the log.
    id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    /// By message, newest first.
    items: Vec<DeliveryView>,
    /// The `before` of the next page, when there is one.
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    before: Option<String>,
    limit: Option<String>,
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "webhook store failed");
    Problem::unavailable("the webhook store is unavailable", RETRY_AFTER_SECONDS)
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such webhook endpoint",
        "no webhook endpoint with this id in this tenant",
    )
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::validation(vec![FieldError::new(field, detail)])
}

fn endpoint_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    match path {
        Ok(Path(id))
            if id.len() == 35
                && id.starts_with("ep_")
                && id[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(id)
        }
        // Not an id UMP makes: no such endpoint, whatever the tenant.
        _ => Err(not_found()),
    }
}

/// A channel name or a tag: 1 to 64 characters, none of them a control character.
fn check_labels(field: &str, items: &[String]) -> Result<(), Problem> {
    if items.len() > MAX_FILTER_ITEMS {
        return Err(invalid(field, format!("at most {MAX_FILTER_ITEMS} items")));
    }
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() || item.chars().count() > 64 || item.chars().any(char::is_control) {
            return Err(invalid(
                &format!("{field}[{i}]"),
                "1 to 64 characters, no control characters",
            ));
        }
    }
    Ok(())
}

/// Applies a request to `endpoint` (a new one, or the stored one for `PATCH`), checking every
/// field it gives. Pure: the rules say which URLs are allowed.
pub fn apply(
    request: EndpointRequest,
    endpoint: &mut Endpoint,
    rules: &UrlRules,
) -> Result<(), Problem> {
    if let Some(url) = request.url {
        rules.check_url(&url).map_err(|e| invalid("url", e))?;
        endpoint.url = url;
    }
    if let Some(description) = request.description {
        if description.chars().count() > 255 {
            return Err(invalid("description", "at most 255 characters"));
        }
        endpoint.description = description;
    }
    if let Some(mut types) = request.event_types {
        // As documented (`max_items`): each type once is the longest list that means anything.
        if types.len() > EventType::ALL.len() {
            return Err(invalid(
                "event_types",
                format!("at most {} event types", EventType::ALL.len()),
            ));
        }
        types.sort();
        types.dedup();
        if types.is_empty() {
            return Err(invalid("event_types", "at least one event type"));
        }
        endpoint.filter.event_types = types;
    }
    if let Some(channels) = request.channels {
        check_labels("channels", &channels)?;
        endpoint.filter.channels = channels;
    }
    if let Some(tags) = request.tags {
        check_labels("tags", &tags)?;
        endpoint.filter.tags = tags;
    }
    if let Some(reason) = &request.disabled_reason
        && reason.chars().count() > 500
    {
        return Err(invalid("disabled_reason", "at most 500 characters"));
    }
    match (request.enabled, request.disabled_reason) {
        (Some(true), Some(_)) => {
            return Err(invalid(
                "disabled_reason",
                "only for a disabled endpoint (enabled: false)",
            ));
        }
        (Some(true), None) => {
            endpoint.enabled = true;
            endpoint.disabled_reason = None;
        }
        (Some(false), reason) => {
            endpoint.enabled = false;
            endpoint.disabled_reason = Some(reason.unwrap_or_else(|| "disabled by a user".into()));
        }
        (None, Some(reason)) if !endpoint.enabled => endpoint.disabled_reason = Some(reason),
        (None, Some(_)) => {
            return Err(invalid(
                "disabled_reason",
                "only for a disabled endpoint (enabled: false)",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

async fn stored(app: &AppState, tenant: &str, id: &str) -> Result<Endpoint, Problem> {
    app.webhooks
        .endpoint(tenant, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)
}

/// The tenant's webhook endpoints (never their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, body = EndpointList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let items = app
                .webhooks
                .endpoints(&tenant.0)
                .await
                .map_err(unavailable)?;
            Ok(Json(EndpointList { items }))
        }
        .await,
    )
}

/// Creates an endpoint; the answer carries its signing secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body = EndpointRequest,
    responses(
        (status = 201, description = "Created", body = EndpointCreated, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant has the most endpoints it may have", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid field (named), e.g. a URL that is not https or points to a private address", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn create(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let request: EndpointRequest = parse_body(value)?;
            if request.url.is_none() {
                return Err(invalid("url", "is required"));
            }
            if request.event_types.is_none() {
                return Err(invalid(
                    "event_types",
                    "is required: e.g. [\"message.sent\"]",
                ));
            }
            let now = Utc::now();
            let mut endpoint = Endpoint {
                id: new_endpoint_id(),
                tenant: tenant.0.clone(),
                url: String::new(),
                description: String::new(),
                filter: EventFilter::default(),
                enabled: true,
                disabled_reason: None,
                failing_since: None,
                previous_secret_expires_at: None,
                created_at: now,
                updated_at: now,
            };
            apply(request, &mut endpoint, &app.webhook_rules)?;
            let count = app
                .webhooks
                .endpoints(&tenant.0)
                .await
                .map_err(unavailable)?
                .len();
            if count >= MAX_ENDPOINTS {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "too-many-endpoints",
                    "The tenant has the most webhook endpoints it may have",
                    format!("at most {MAX_ENDPOINTS}; delete one first"),
                ));
            }
            let secret = new_secret();
            app.webhooks
                .create_endpoint(&endpoint, &secret)
                .await
                .map_err(unavailable)?;
            let endpoint = stored(&app, &tenant.0, &endpoint.id).await?;
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, format!("/v1/webhooks/{}", endpoint.id))],
                Json(EndpointCreated { endpoint, secret }),
            ))
        }
        .await,
    )
}

/// One endpoint (never its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    responses(
        (status = 200, body = Endpoint),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_one(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            Ok(Json(stored(&app, &tenant.0, &id).await?))
        }
        .await,
    )
}

/// Changes the fields given: url, description, the filter, enabled (with a reason when
/// disabling). Enabling an endpoint UMP disabled starts its failure count afresh.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    request_body = EndpointRequest,
    responses(
        (status = 200, body = Endpoint),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid field (named)", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn update(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let request: EndpointRequest = parse_body(value)?;
            let mut endpoint = stored(&app, &tenant.0, &id).await?;
            apply(request, &mut endpoint, &app.webhook_rules)?;
            endpoint.updated_at = Utc::now();
            if !app
                .webhooks
                .update_endpoint(&endpoint)
                .await
                .map_err(unavailable)?
            {
                return Err(not_found());
            }
            Ok(Json(stored(&app, &tenant.0, &id).await?))
        }
        .await,
    )
}

/// Deletes an endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            if app
                .webhooks
                .delete_endpoint(&tenant.0, &id)
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

/// A new signing secret; the old one keeps signing beside it for the grace period, so receivers
/// can switch without missing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    request_body = RotateRequest,
    responses(
        (status = 200, body = Rotated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid grace period", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn rotate(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let request: RotateRequest = parse_body(value)?;
            let grace = match request.grace {
                None => DEFAULT_GRACE,
                Some(text) => match text.parse::<ump_core::duration::Duration>() {
                    Ok(d) if d.as_std() <= MAX_GRACE => d.as_std(),
                    _ => return Err(invalid("grace", "a duration such as 24h, at most 7d")),
                },
            };
            stored(&app, &tenant.0, &id).await?;
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
            let secret = new_secret();
            if !app
                .webhooks
                .rotate_secret(&tenant.0, &id, &secret, until, now)
                .await
                .map_err(unavailable)?
            {
                return Err(not_found());
            }
            Ok(Json(Rotated {
                secret,
                previous_secret_expires_at: until,
            }))
        }
        .await,
    )
}

/// The endpoint's deliveries, newest message first: state, attempts, the last answer's status
/// code, latency and error.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$"),
           ("before" = Option<String>, Query, description = "The `next` of the previous page"),
           ("limit" = Option<u32>, Query, description = "1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn deliveries(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            let Ok(Query(query)) = query else {
                return Err(Problem::bad_query(
                    "before",
                    "give before and limit once each",
                ));
            };
            let limit = match query.limit.as_deref().map(str::parse::<u32>) {
                None => 100,
                Some(Ok(n @ 1..=1000)) => n,
                Some(_) => {
                    return Err(Problem::bad_query(
                        "limit",
                        "must be an integer from 1 to 1000",
                    ));
                }
            };
            stored(&app, &tenant.0, &id).await?;
            let items = app
                .webhooks
                .deliveries(&tenant.0, &id, query.before.as_deref(), limit)
                .await
                .map_err(unavailable)?;
            let next = (items.len() == limit as usize)
                .then(|| items.last().map(|d| d.id.clone()))
                .flatten();
            Ok(Json(DeliveryPage { items, next }))
        }
        .await,
    )
}

/// Queues a `webhook.test` event for the endpoint (even a disabled one's: it is sent once it is
/// enabled).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    responses(
        (status = 202, description = "Queued", body = TestEventQueued),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn send_test(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            let endpoint = stored(&app, &tenant.0, &id).await?;
            let delivery = test_delivery(&endpoint, Utc::now());
            app.webhooks
                .enqueue(std::slice::from_ref(&delivery))
                .await
                .map_err(unavailable)?;
            Ok((
                StatusCode::ACCEPTED,
                Json(TestEventQueued {
                    id: delivery.event_id,
                }),
            ))
        }
        .await,
    )
}

/// Sends again every delivery of the endpoint made since `since`, delivered or not, under the
/// same `webhook-id`s (receivers that deduplicate by id see them as the same events).
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id", pattern = "^ep_[0-9a-f]{32}$")),
    request_body = ReplayRequest,
    responses(
        (status = 202, description = "Queued again", body = Replayed),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid `since`", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn replay(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = endpoint_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let request: ReplayRequest = parse_body(value)?;
            stored(&app, &tenant.0, &id).await?;
            let replayed = app
                .webhooks
                .replay(&tenant.0, &id, request.since, Utc::now())
                .await
                .map_err(unavailable)?;
            Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Endpoint {
        let now = Utc::now();
        Endpoint {
            id: new_endpoint_id(),
            tenant: "t".into(),
            url: String::new(),
            description: String::new(),
            filter: EventFilter::default(),
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            previous_secret_expires_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn field_of(result: Result<(), Problem>) -> String {
        result.unwrap_err().field.unwrap_or_default()
    }

    fn request(value: serde_json::Value) -> Result<EndpointRequest, Problem> {
        parse_body(value)
    }

    #[test]
    fn each_bad_field_is_named() {
        let rules = UrlRules::default();
        for (body, field) in [
            (serde_json::json!({"url": "http://example.com/"}), "url"),
            (serde_json::json!({"url": "https://10.0.0.1/"}), "url"),
            (serde_json::json!({"event_types": []}), "event_types"),
            (
                serde_json::json!({"event_types": vec!["message.sent"; 7]}),
                "event_types",
            ),
            (serde_json::json!({"channels": [""]}), "channels[0]"),
            (serde_json::json!({"tags": ["ok", "a\u{7}"]}), "tags[1]"),
            (
                serde_json::json!({"description": "x".repeat(256)}),
                "description",
            ),
            (
                serde_json::json!({"enabled": true, "disabled_reason": "why"}),
                "disabled_reason",
            ),
        ] {
            let parsed = request(body.clone()).expect("parses");
            assert_eq!(
                field_of(apply(parsed, &mut blank(), &rules)),
                field,
                "{body}"
            );
        }
        for (body, field) in [
            (
                serde_json::json!({"event_types": ["message.opened"]}),
                "event_types[0]",
            ),
            (serde_json::json!({"secret": "mine"}), "secret"),
            (serde_json::json!({"enabled": "yes"}), "enabled"),
        ] {
            let problem = request(body.clone()).expect_err("refused");
            assert_eq!(problem.status, 422, "{body}");
            assert!(
                problem
                    .field
                    .as_deref()
                    .is_some_and(|f| f.starts_with(field)),
                "{body}: {problem:?}"
            );
        }
    }

    #[test]
    fn disabling_keeps_a_reason_and_enabling_clears_it() {
        let rules = UrlRules::default();
        let mut e = blank();
        apply(
            request(serde_json::json!({"enabled": false})).unwrap(),
            &mut e,
            &rules,
        )
        .unwrap();
        assert_eq!(
            (e.enabled, e.disabled_reason.as_deref()),
            (false, Some("disabled by a user"))
        );
        apply(
            request(serde_json::json!({"disabled_reason": "maintenance"})).unwrap(),
            &mut e,
            &rules,
        )
        .unwrap();
        assert_eq!(e.disabled_reason.as_deref(), Some("maintenance"));
        apply(
            request(serde_json::json!({"enabled": true})).unwrap(),
            &mut e,
            &rules,
        )
        .unwrap();
        assert_eq!((e.enabled, e.disabled_reason), (true, None));
    }

    #[test]
    fn event_types_are_kept_sorted_and_once() {
        let mut e = blank();
        apply(
            request(serde_json::json!({
                "url": "https://hooks.example.com/",
                "event_types": ["message.sent", "message.accepted", "message.sent"]
            }))
            .unwrap(),
            &mut e,
            &UrlRules::default(),
        )
        .unwrap();
        assert_eq!(
            e.filter.event_types,
            [EventType::MessageAccepted, EventType::MessageSent]
        );
    }

    #[test]
    fn ids_ump_never_made_are_not_found_before_any_lookup() {
        assert!(endpoint_id(Ok(Path(new_endpoint_id()))).is_ok());
        for bad in ["ep_", "ep_XYZ", "vip", &format!("ep_{}", "0".repeat(33))] {
            let problem = endpoint_id(Ok(Path(bad.to_owned()))).unwrap_err();
            assert_eq!(problem.status, 404, "{bad}");
        }
    }
}

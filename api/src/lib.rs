//! UMP's HTTP surface: the REST API (`/v1/messages`), probes, metrics and OpenAPI. The same
//! router serves the cluster mode (Kafka, Redis, MySQL) and the all-in-one mode (SQLite): only the
//! ports in `AppState` differ.

// `Problem` (the error response, ~150 bytes) travels in `Result`s only on the error path, where its
// size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

#[cfg(feature = "all-in-one")]
pub mod all_in_one;
pub mod auth;
pub mod broadcast;
pub mod catalog;
pub mod cluster;
pub mod dashboard;
pub mod events;
pub mod idempotency;
pub mod journeys;
pub mod messages;
pub mod metrics;
pub mod problem;
pub mod receipts;
pub mod recommendations;
pub mod request;
pub mod segments;
pub mod users;
pub mod watch;
pub mod webhooks;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use prometheus::{Encoder, TextEncoder};
use std::sync::Arc;
use ump_core::config::ChannelRegistry;
use ump_core::history::HistoryStore;
use ump_core::queue::MessageQueue;
use utoipa::OpenApi;

/// A dependency `/readyz` checks.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ArcSwap<ChannelRegistry>>,
    pub bulk: Arc<dyn MessageQueue>,
    pub realtime: Option<Arc<dyn MessageQueue>>,
    pub history: Arc<dyn HistoryStore>,
    pub profiles: Arc<dyn ump_core::profiles::ProfileStore>,
    /// Where `POST /v1/events` makes events durable.
    pub events: Arc<dyn ump_core::audience::EventLog>,
    pub segments: Arc<dyn ump_core::audience::SegmentStore>,
    pub broadcasts: Arc<dyn ump_core::broadcast::BroadcastStore>,
    /// Journeys, their counts and the outbox of their messages.
    pub journeys: Arc<dyn ump_core::journeys::JourneyStore>,
    /// The tenants' product catalogs.
    pub catalog: Arc<dyn ump_core::catalog::CatalogStore>,
    /// What recommendations are made from (kept by the event processor).
    pub items: Arc<dyn ump_core::recommendations::ItemModel>,
    /// Keeps journeys' send rates: Redis in the cluster mode (every API process shares it),
    /// in memory all-in-one.
    pub journey_limiter: Arc<dyn ump_core::ratelimit::RateLimiter>,
    pub keys: Arc<auth::KeyCache>,
    pub idempotency: Arc<dyn idempotency::IdempotencyStore>,
    pub metrics: metrics::ApiMetrics,
    pub readiness: Vec<(&'static str, ReadinessCheck)>,
    /// Where provider Secrets are mounted (`<dir>/<secret>/<key>`): the delivery-receipt
    /// endpoints read the providers' callback secrets from there.
    pub secrets_dir: std::path::PathBuf,
    /// How long a request body may take to arrive (`UMP_BODY_TIMEOUT`).
    pub body_timeout: std::time::Duration,
    /// Webhook endpoints, their outbox and delivery log.
    pub webhooks: Arc<dyn ump_core::webhooks::WebhookStore>,
    /// Which endpoint URLs are allowed (`UMP_WEBHOOKS_ALLOW_HTTP`, `..._ALLOW_LOOPBACK`).
    pub webhook_rules: ump_core::webhooks::UrlRules,
}

/// Limits on how clients send requests, in both modes.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct RequestSettings {
    /// How long a request body may take to arrive before the answer is 408: a client trickling
    /// bytes must not hold a handler.
    #[arg(long, env = "UMP_BODY_TIMEOUT", default_value = "30s")]
    pub body_timeout: ump_core::duration::Duration,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self {
            body_timeout: ump_core::duration::Duration::from_secs(30),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "UMP — Unified Messaging Platform", description = "One API for email, SMS, push and Kakao (AlimTalk for information, FriendTalk for advertising)."),
    paths(messages::send_message, messages::send_batch, messages::get_message, messages::list_messages, dashboard::stats, receipts::receive,
          users::identify, users::get_user, users::erase_user, recommendations::get_recommendations, events::post_events,
          segments::list_segments, segments::create_segment, segments::get_segment,
          segments::put_segment, segments::delete_segment, segments::members, segments::sizes,
          broadcast::start, broadcast::get_one, broadcast::list,
          journeys::list, journeys::create, journeys::put, journeys::get_one,
          journeys::activate, journeys::pause, journeys::archive, journeys::get_caps,
          journeys::put_caps,
          catalog::put_item, catalog::get_item, catalog::delete_item, catalog::list_items,
          catalog::put_batch,
          webhooks::list, webhooks::create, webhooks::get_one, webhooks::update, webhooks::delete,
          webhooks::rotate, webhooks::deliveries, webhooks::send_test, webhooks::replay),
    components(schemas(
        request::SendMessageRequest, messages::Accepted, messages::BatchRequest, messages::BatchResponse,
        messages::BatchResult, problem::Problem, problem::FieldError, receipts::ReceiptReport,
        ump_core::history::MessageView, ump_core::history::MessagePage, ump_core::model::Event,
        ump_core::model::Status, ump_core::model::Priority, ump_core::stats::Stats,
        ump_core::stats::StatusCounts, ump_core::stats::ChannelStats, ump_core::stats::StatsBucket,
        request::Tag, dashboard::StatsWindow, users::IdentifyRequest, users::ProfileView,
        ump_core::profiles::Erasure, events::EventRequest, events::EventBatchRequest,
        events::EventsAccepted, segments::SegmentRequest, segments::SegmentView,
        segments::SegmentList, segments::MemberPage, segments::PersonActivity,
        segments::JourneyPlace, segments::PastJourney,
        segments::SizeHistory, ump_core::audience::SizePoint, broadcast::BroadcastRequest,
        broadcast::BroadcastList, ump_core::broadcast::Broadcast,
        ump_core::broadcast::BroadcastStatus,
        ump_core::audience::Member, journeys::JourneyRequest, journeys::JourneyView,
        journeys::JourneyList, journeys::CapsDocument, journeys::CapRequest, ump_core::journeys::StatRow,
        catalog::CatalogItemSchema, catalog::CatalogItemRequest, catalog::CatalogBatch, catalog::CatalogBatchResult,
        catalog::CatalogItemPage, recommendations::Recommendations, recommendations::RecommendedItem, recommendations::StrategyName,
        webhooks::EndpointRequest, webhooks::EndpointCreated,
        webhooks::EndpointList, webhooks::RotateRequest, webhooks::Rotated,
        webhooks::ReplayRequest, webhooks::Replayed, webhooks::TestEventQueued,
        webhooks::DeliveryPage, ump_core::webhooks::Endpoint, ump_core::webhooks::EventFilter,
        ump_core::webhooks::EventType, ump_core::webhooks::DeliveryView
    )),
    modifiers(&BearerAuth),
    tags((name = "messages", description = "Send messages and read their history"),
         (name = "dashboard", description = "Figures for the admin dashboard (served at `/`)"),
         (name = "receipts", description = "Delivery receipts from providers"),
         (name = "users", description = "Customer profiles and consents"),
         (name = "events", description = "Behaviour events of people"),
         (name = "segments", description = "Segments of people, kept as events arrive"),
         (name = "journeys", description = "Event-triggered, multi-step journeys and the frequency caps across them"),
         (name = "catalog", description = "The tenant's product catalog, which recommendations draw from"),
         (name = "webhooks", description = "Status events to the application's endpoints (Standard Webhooks)"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/messages",
            post(messages::send_message).get(messages::list_messages),
        )
        .route("/v1/messages/batch", post(messages::send_batch))
        .route("/v1/messages/{id}", get(messages::get_message))
        .route(
            "/v1/users/{user_id}",
            get(users::get_user)
                .put(users::identify)
                .delete(users::erase_user),
        )
        .route(
            "/v1/users/{user_id}/recommendations",
            get(recommendations::get_recommendations),
        )
        .route("/v1/events", post(events::post_events))
        .route(
            "/v1/segments",
            get(segments::list_segments).post(segments::create_segment),
        )
        .route(
            "/v1/segments/{id}",
            get(segments::get_segment)
                .put(segments::put_segment)
                .delete(segments::delete_segment),
        )
        .route("/v1/segments/{id}/members", get(segments::members))
        .route("/v1/segments/{id}/sizes", get(segments::sizes))
        .route("/v1/segments/{id}/broadcast", post(broadcast::start))
        .route("/v1/broadcasts", get(broadcast::list))
        .route("/v1/journeys", get(journeys::list).post(journeys::create))
        .route(
            "/v1/journeys/{id}",
            get(journeys::get_one).put(journeys::put),
        )
        .route("/v1/journeys/{id}/activate", post(journeys::activate))
        .route("/v1/journeys/{id}/pause", post(journeys::pause))
        .route("/v1/journeys/{id}/archive", post(journeys::archive))
        .route(
            "/v1/journey-caps",
            get(journeys::get_caps).put(journeys::put_caps),
        )
        .route("/v1/broadcasts/{id}", get(broadcast::get_one))
        .route(
            "/v1/catalog/items",
            get(catalog::list_items).post(catalog::put_batch),
        )
        .route(
            "/v1/catalog/items/{id}",
            get(catalog::get_item)
                .put(catalog::put_item)
                .delete(catalog::delete_item),
        )
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_one)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/test", post(webhooks::send_test))
        .route("/v1/webhooks/{id}/replay", post(webhooks::replay))
        .route("/v1/receipts/{channel}/{provider}", post(receipts::receive))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(dashboard::routes())
        .fallback(no_route)
        // The send handlers read their bodies with their own limits (413 as problem+json).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Any path the API does not serve: a problem like every other error.
async fn no_route() -> problem::Problem {
    problem::Problem::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "No such endpoint",
        "see /openapi.json for the API's endpoints",
    )
}

async fn readyz(State(state): State<AppState>) -> Response {
    let checks = futures::future::join_all(state.readiness.iter().map(|(name, check)| {
        let check = Arc::clone(check);
        async move { (*name, check().await) }
    }))
    .await;
    let failures: Vec<String> = checks
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|e| format!("{name}: {e}")))
        .collect();
    if failures.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failures.join("\n")).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.metrics.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_route_and_the_problem_type() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("OpenAPI serializes");
        for path in [
            "/v1/messages",
            "/v1/messages/batch",
            "/v1/messages/{id}",
            "/v1/stats",
            "/v1/receipts/{channel}/{provider}",
            "/v1/users/{user_id}",
            "/v1/users/{user_id}/recommendations",
            "/v1/events",
            "/v1/segments",
            "/v1/segments/{id}",
            "/v1/segments/{id}/members",
            "/v1/segments/{id}/sizes",
            "/v1/segments/{id}/broadcast",
            "/v1/broadcasts",
            "/v1/broadcasts/{id}",
            "/v1/journeys",
            "/v1/journeys/{id}",
            "/v1/journeys/{id}/activate",
            "/v1/journeys/{id}/pause",
            "/v1/journeys/{id}/archive",
            "/v1/journey-caps",
            "/v1/catalog/items",
            "/v1/catalog/items/{id}",
            "/v1/webhooks",
            "/v1/webhooks/{id}",
            "/v1/webhooks/{id}/rotate-secret",
            "/v1/webhooks/{id}/deliveries",
            "/v1/webhooks/{id}/test",
            "/v1/webhooks/{id}/replay",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let send = &doc["paths"]["/v1/messages"]["post"];
        for status in [
            "202", "400", "401", "409", "413", "415", "422", "429", "503",
        ] {
            assert!(
                send["responses"][status].is_object(),
                "POST /v1/messages lacks {status}"
            );
        }
        assert!(send["responses"]["422"]["content"]["application/problem+json"].is_object());
        assert!(doc["components"]["schemas"]["Problem"].is_object());
        for status in ["200", "400", "401", "429"] {
            assert!(
                doc["paths"]["/v1/stats"]["get"]["responses"][status].is_object(),
                "GET /v1/stats lacks {status}"
            );
        }
        let catalog = &doc["paths"]["/v1/catalog/items/{id}"];
        for (method, statuses) in [
            (
                "put",
                &[
                    "200", "201", "400", "401", "413", "415", "422", "429", "503",
                ][..],
            ),
            ("get", &["200", "401", "404", "422", "429", "503"][..]),
            ("delete", &["204", "401", "404", "422", "429", "503"][..]),
        ] {
            for status in statuses {
                assert!(
                    catalog[method]["responses"][status].is_object(),
                    "{method} /v1/catalog/items/{{id}} lacks {status}"
                );
            }
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["CatalogItem"]["additionalProperties"], false);
        assert!(schemas["Stats"]["properties"]["series"].is_object());
        assert!(schemas["StatusCounts"]["properties"]["dead_lettered"].is_object());
        assert!(schemas["MessageView"]["properties"]["detail"].is_object());
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    }
}

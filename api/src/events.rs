//! `POST /v1/events`: behaviour events of people (one, or `{"events": [...]}` up to 1,000),
//! checked by `ump_automation::event`, made durable on the event log (Kafka keyed by tenant and
//! person; the SQLite file all-in-one) before `202`. The event processor folds them into each
//! person's state and segment memberships.

use crate::AppState;
use crate::messages::{BATCH_LIMIT, MAX_BATCH, read_json};
use crate::problem::{FieldError, Problem};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use ump_automation::event::{EventInput, Queued};
use ump_core::queue::EnqueueError;

const RETRY_AFTER_SECONDS: u64 = 5;

/// One behaviour event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::event::EventInput`, which parses
pub struct EventRequest {
    /// The application's id for the person (an unknown id creates an anonymous profile).
    #[schema(min_length = 1, max_length = 255)]
    user_id: String,
    /// What happened: letters, digits, `_ . : -` (`product_viewed`, `purchase`).
    #[schema(min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9_.:-]+$")]
    event: String,
    /// Details (`item_id`, `price`…), at most 8 KiB of JSON.
    properties: Option<serde_json::Map<String, Value>>,
    /// When it happened (RFC 3339); default: when UMP received it. At most an hour ahead, at
    /// most 365 days ago.
    timestamp: Option<DateTime<Utc>>,
    /// The application's id of the event: sent again, it is counted once.
    #[schema(min_length = 1, max_length = 255)]
    message_id: Option<String>,
}

/// A batch of events, all accepted or none.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventBatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<EventRequest>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsAccepted {
    /// How many events are now durable.
    pub accepted: usize,
}

/// Records behaviour events.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = EventBatchRequest, description = "`{\"events\": [...]}`, or one event object on its own"),
    responses(
        (status = 202, description = "Durable; the processor folds them in", body = EventsAccepted),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named (`events[3].timestamp`); nothing was accepted", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn post_events(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let (_, value) = read_json(&headers, body, BATCH_LIMIT, app.body_timeout).await?;
        let queued = check(value, Utc::now())?;
        append(&app, &tenant.0, &queued).await?;
        Ok::<_, Problem>(queued.len())
    }
    .await;
    match result {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(EventsAccepted { accepted })).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Makes `entries` durable on the event log, or says why not as a problem.
pub(crate) async fn append(
    app: &AppState,
    tenant: &str,
    entries: &[Queued],
) -> Result<(), Problem> {
    match app.events.append(tenant, entries).await {
        Ok(()) => Ok(()),
        Err(EnqueueError::Unavailable(detail)) => {
            tracing::warn!(error = %detail, "the event log is unavailable");
            Err(Problem::unavailable(
                "the event log is unavailable; nothing was accepted",
                RETRY_AFTER_SECONDS,
            ))
        }
        Err(EnqueueError::Rejected(detail)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            "The event log refused the events",
            detail,
        )),
    }
}

/// The body as events, each checked at `now`: all valid, or every problem named.
fn check(value: Value, now: DateTime<Utc>) -> Result<Vec<Queued>, Problem> {
    let invalid =
        |field: &str, detail: &str| Problem::validation(vec![FieldError::new(field, detail)]);
    let Value::Object(mut object) = value else {
        return Err(invalid(
            "body",
            "must be a JSON object: one event, or {\"events\": [...]}",
        ));
    };
    let items: Vec<(String, Value)> = if object.contains_key("events") {
        if let Some(unknown) = object.keys().find(|k| k.as_str() != "events") {
            return Err(invalid(
                unknown,
                "unknown field (a batch has only \"events\")",
            ));
        }
        let Some(Value::Array(items)) = object.remove("events") else {
            return Err(invalid("events", "must be an array of events"));
        };
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(invalid(
                "events",
                &format!("must hold 1 to {MAX_BATCH} events"),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("events[{i}]"), v))
            .collect()
    } else {
        vec![(String::new(), Value::Object(object))]
    };
    let mut queued = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (at, item) in items {
        let join = |rest: &str| match (at.is_empty(), rest) {
            (true, "") => "body".to_owned(),
            (true, rest) => rest.to_owned(),
            (false, "") => at.clone(),
            (false, rest) => format!("{at}.{rest}"),
        };
        if !item.is_object() {
            errors.push(FieldError::new(join(""), "must be a JSON object"));
            continue;
        }
        let input: EventInput = match serde_path_to_error::deserialize(item) {
            Ok(input) => input,
            Err(e) => {
                let path = e.path().to_string();
                let rest = if path == "." { "" } else { path.as_str() };
                errors.push(FieldError::new(join(rest), e.inner().to_string()));
                continue;
            }
        };
        match input.check(&at, now) {
            Ok(q) => queued.push(q),
            Err(e) => errors.extend(e.into_iter().map(|e| FieldError::new(e.field, e.detail))),
        }
    }
    if errors.is_empty() {
        Ok(queued)
    } else {
        Err(Problem::validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(problem: Problem) -> Vec<String> {
        problem.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn one_event_or_a_batch_and_every_bad_field_named() {
        let now = Utc::now();
        assert_eq!(
            check(json!({"user_id": "u", "event": "purchase"}), now)
                .unwrap()
                .len(),
            1
        );
        let batch = json!({"events": [
            {"user_id": "u", "event": "purchase"},
            {"user_id": "u", "event": "bad name"},
            {"user_id": "u", "event": "e", "properties": []},
            "text",
            {"user_id": "u", "event": "e", "colour": "red"},
        ]});
        assert_eq!(
            fields(check(batch, now).unwrap_err()),
            [
                "events[1].event",
                "events[2].properties",
                "events[3]",
                "events[4].colour"
            ]
        );
        assert_eq!(fields(check(json!([]), now).unwrap_err()), ["body"]);
        assert_eq!(
            fields(check(json!({"events": []}), now).unwrap_err()),
            ["events"]
        );
        assert_eq!(
            fields(check(json!({"events": [], "more": 1}), now).unwrap_err()),
            ["more"]
        );
        assert_eq!(
            fields(check(json!({"user_id": "u"}), now).unwrap_err()),
            ["body"]
        );
    }
}

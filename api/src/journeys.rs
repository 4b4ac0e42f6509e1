//! `/v1/journeys`: a tenant's journeys (`ump_automation::journey`), their versions, status and
//! live counts; `/v1/journey-caps`: the tenant's frequency caps across journeys. A definition is
//! checked on its own and against the channels it sends on (each send step as the message it
//! would make, so a template's missing variable is named at its step). The relay here takes the
//! processor's journey messages from the outbox and sends them through the normal send path
//! (consent, contact points, validation, the queues) with ids derived from their keys.

use crate::AppState;
use crate::auth::Tenant;
use crate::messages::{SINGLE_LIMIT, apply_person, envelope, read_json};
use crate::problem::{FieldError, Problem, parse_body, respond};
use crate::request::validate;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ump_automation::journey::{Cap, Journey, JourneySend, Status, validate_caps};
use ump_automation::recommend::{Wanted, fill_data};
use ump_core::config::ChannelRegistry;
use ump_core::journeys::{JourneyError, QueuedSend, StatRow, StoredJourney};
use ump_core::model::MessageId;
use ump_core::resources::ChannelType;

const RETRY_AFTER_SECONDS: u64 = 5;
/// Relay loops of an API process in the cluster mode (the all-in-one mode's SQLite has one
/// writer, so it runs one).
pub const RELAY_LOOPS: usize = 4;
/// Outbox messages a relay loop takes at once.
const RELAY_BATCH: u32 = 500;
/// How long a relay holds messages it took before another may take them.
pub const RELAY_LEASE: Duration = Duration::from_secs(30);
/// How often the relay counts the outbox (`ump_journey_outbox_messages`).
const OUTBOX_SAMPLE: Duration = Duration::from_secs(15);
/// How often an idle relay looks at the outbox: from `RELAY_IDLE_MIN` after it last found
/// messages, doubling with each empty look to `RELAY_IDLE`. A message a journey step makes after
/// a quiet spell waits at most that for its relay; a busy relay never sleeps.
const RELAY_IDLE: Duration = Duration::from_millis(50);
const RELAY_IDLE_MIN: Duration = Duration::from_millis(5);

/// A journey as clients write it (the YAML files have the same shape).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::journey::Journey`, which parses
pub struct JourneyRequest {
    /// 1 to 63 lowercase letters, digits and dashes; unique in the tenant. In `PUT`, the path's.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    id: String,
    name: Option<String>,
    /// `{event, where}` (an event with property filters) or `{segment}` (entering it).
    #[schema(value_type = Object)]
    entry: Value,
    /// `never` (the default), `always`, or `{after: 7d}`.
    #[schema(value_type = Option<Object>)]
    reentry: Option<Value>,
    max_entries: Option<u32>,
    /// `{event, where, match: [property]}`: ends the journey as a conversion.
    #[schema(value_type = Option<Object>)]
    goal: Option<Value>,
    /// `{start: "21:00", end: "08:00"}` (the default for marketing sends), the person's time.
    #[schema(value_type = Option<Object>)]
    quiet_hours: Option<Value>,
    /// At most this many of the journey's messages a second, over every API process.
    send_rate: Option<u32>,
    /// Each `{id, next?}` with one of `delay` ({for | until_time | until_date}), `wait` ({event,
    /// where, match, timeout, on_event, on_timeout}), `branch` ({condition, then, else}),
    /// `split` ({arms: [{name, weight, next}], holdout, holdout_for}), `send` ({channel,
    /// template, data, category, priority}) or `exit` ({}). People enter at the first.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Value>,
}

/// A journey with its live counts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JourneyView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    journey: StoredJourney,
    /// Per version and step (`step` empty: the journey as a whole; a split arm's name for its
    /// assignments and conversions): entered, reached, waiting, sent, suppressed_cap,
    /// held_quiet, matched, timed_out, converted, exited, assigned.
    stats: Vec<StatRow>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JourneyList {
    items: Vec<JourneyView>,
}

/// The tenant's frequency caps: at most `max` marketing messages per person within `per` (on
/// `channel`, or over all), across every journey.
#[derive(Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapsDocument {
    #[schema(value_type = Vec<CapRequest>)]
    caps: Vec<Cap>,
}

/// One frequency cap.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::journey::Cap`, which parses
pub struct CapRequest {
    /// At most this many marketing messages per person.
    max: u32,
    /// Within this window: a duration longer than 0 (`1d`, `7d`, `12h`).
    #[schema(min_length = 1)]
    per: String,
    /// On this channel only; left out, over all channels.
    #[schema(min_length = 1)]
    channel: Option<String>,
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "journey store failed");
    Problem::unavailable("the journey store is unavailable", RETRY_AFTER_SECONDS)
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such journey",
        "no journey with this id in this tenant",
    )
}

fn refused(e: JourneyError) -> Problem {
    match e {
        JourneyError::Invalid(errors) => Problem::validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.detail))
                .collect(),
        ),
        JourneyError::NotFound => not_found(),
        JourneyError::Conflict(detail) => Problem::new(
            StatusCode::CONFLICT,
            "journey-status",
            "The journey's status does not allow this",
            detail,
        ),
        JourneyError::Store(e) => unavailable(e),
    }
}

/// The body as a journey, checked on its own and against the channels; `path_id` (from `PUT`)
/// fills a missing id and must match a given one.
pub(crate) fn parse(
    value: Value,
    path_id: Option<&str>,
    registry: &ChannelRegistry,
) -> Result<Journey, Problem> {
    let invalid =
        |field: &str, detail: &str| Problem::validation(vec![FieldError::new(field, detail)]);
    let Value::Object(mut object) = value else {
        return Err(invalid("body", "must be a JSON object"));
    };
    if let Some(id) = path_id {
        match object.get("id") {
            None => {
                object.insert("id".into(), Value::String(id.to_owned()));
            }
            Some(Value::String(given)) if given == id => {}
            Some(_) => return Err(invalid("id", "must be the path's id (or left out)")),
        }
    }
    let journey: Journey = parse_body(Value::Object(object))?;
    let mut errors: Vec<FieldError> = match journey.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| FieldError::new(e.field, e.detail))
            .collect(),
    };
    if errors.is_empty() {
        errors.extend(check_sends(&journey, registry));
    }
    if errors.is_empty() {
        Ok(journey)
    } else {
        Err(Problem::validation(errors))
    }
}

/// A contact point of the channel's kind, to check a send step as the message it makes.
fn sample_contact(kind: ChannelType) -> &'static str {
    match kind {
        ChannelType::Email => "someone@example.com",
        ChannelType::Push => "sample-device-token",
        ChannelType::Webhook => "https://example.com/hook",
        _ => "+821012345678",
    }
}

/// Each send step as the message it would make: the channel exists, may carry the category,
/// and its template gets every variable it needs. Fields are named at the step.
fn check_sends(journey: &Journey, registry: &ChannelRegistry) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, step) in journey.steps.iter().enumerate() {
        let Some(send) = &step.send else { continue };
        let at = format!("steps[{i}].send");
        let Some(channel) = registry.get(&send.channel) else {
            errors.push(FieldError::new(
                format!("{at}.channel"),
                format!("no channel named {:?}", send.channel),
            ));
            continue;
        };
        if send.is_marketing()
            && let Some((at_fault, why)) = crate::messages::unfit_for_advertising(channel)
        {
            errors.push(FieldError::new(format!("{at}.{at_fault}"), why));
            continue;
        }
        if channel.channel_type() == ChannelType::Webhook {
            errors.push(FieldError::new(
                format!("{at}.channel"),
                "a webhook channel has no contact point on a profile",
            ));
            continue;
        }
        let mut data = send.data.clone();
        if let Some(wanted) = &send.recommendations {
            crate::recommendations::fill_sample(&mut data, wanted);
        }
        let message = json!({
            "channel": send.channel,
            "to": sample_contact(channel.channel_type()),
            "template": send.template,
            "data": data,
            "priority": send.priority.as_deref().unwrap_or("bulk"),
        });
        if let Err(problems) = validate(&message, registry, "", Utc::now()) {
            for e in problems.into_iter().filter(|e| e.field != "to") {
                errors.push(FieldError::new(format!("{at}.{}", e.field), e.detail));
            }
        }
    }
    errors
}

async fn view(
    app: &AppState,
    tenant: &str,
    journey: StoredJourney,
) -> Result<JourneyView, Problem> {
    let stats = app
        .journeys
        .stats(tenant, &journey.journey.id)
        .await
        .map_err(unavailable)?;
    Ok(JourneyView { journey, stats })
}

async fn view_of(app: &AppState, tenant: &str, id: &str) -> Result<JourneyView, Problem> {
    let journey = app
        .journeys
        .journey(tenant, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    view(app, tenant, journey).await
}

fn journey_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    crate::segments::segment_id(path)
}

/// The tenant's journeys with their counts.
#[utoipa::path(get, path = "/v1/journeys", tag = "journeys",
    responses(
        (status = 200, body = JourneyList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let stored = app
                .journeys
                .journeys(&tenant.0)
                .await
                .map_err(unavailable)?;
            let mut items = Vec::with_capacity(stored.len());
            for journey in stored {
                items.push(view(&app, &tenant.0, journey).await?);
            }
            Ok(Json(JourneyList { items }))
        }
        .await,
    )
}

/// Creates a journey as a draft (activate it to let people in).
#[utoipa::path(post, path = "/v1/journeys", tag = "journeys",
    request_body = JourneyRequest,
    responses(
        (status = 201, description = "Created (a draft)", body = JourneyView, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A journey with this id exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition: each step and field named", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn create(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let journey = parse(value, None, &app.registry.load())?;
            let id = journey.id.clone();
            if app
                .journeys
                .journey(&tenant.0, &id)
                .await
                .map_err(unavailable)?
                .is_some()
            {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "journey-exists",
                    "A journey with this id exists",
                    format!("use PUT /v1/journeys/{id} to change it"),
                ));
            }
            app.journeys
                .put_journey(&tenant.0, journey, Utc::now())
                .await
                .map_err(refused)?;
            let view = view_of(&app, &tenant.0, &id).await?;
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, format!("/v1/journeys/{id}"))],
                Json(view),
            ))
        }
        .await,
    )
}

/// Creates a journey (a draft) or changes it: a draft in place; an active or paused journey by
/// a new version that people enter from now on, while those inside finish on theirs.
#[utoipa::path(put, path = "/v1/journeys/{id}", tag = "journeys",
    params(("id" = String, Path, description = "The journey's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = JourneyRequest,
    responses(
        (status = 200, description = "Changed (see `version`)", body = JourneyView),
        (status = 201, description = "Created (a draft)", body = JourneyView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The journey is archived", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition: each step and field named", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn put(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = journey_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let journey = parse(value, Some(&id), &app.registry.load())?;
            let written = app
                .journeys
                .put_journey(&tenant.0, journey, Utc::now())
                .await
                .map_err(refused)?;
            let view = view_of(&app, &tenant.0, &id).await?;
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(view)))
        }
        .await,
    )
}

/// A journey with its counts.
#[utoipa::path(get, path = "/v1/journeys/{id}", tag = "journeys",
    params(("id" = String, Path, description = "The journey's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = JourneyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a journey id", body = Problem, content_type = "application/problem+json"),
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
            let id = journey_id(path)?;
            Ok(Json(view_of(&app, &tenant.0, &id).await?))
        }
        .await,
    )
}

async fn move_to(
    app: AppState,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    status: Status,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = journey_id(path)?;
            let journey = app
                .journeys
                .set_status(&tenant.0, &id, status, Utc::now())
                .await
                .map_err(refused)?;
            Ok(Json(view(&app, &tenant.0, journey).await?))
        }
        .await,
    )
}

/// Lets people in (a draft or a paused journey); a paused journey's people move on again.
#[utoipa::path(post, path = "/v1/journeys/{id}/activate", tag = "journeys",
    params(("id" = String, Path, description = "The journey's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = JourneyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Archived", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a journey id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn activate(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    move_to(app, headers, path, Status::Active).await
}

/// Stops people entering and holds those inside where they are (a goal still ends theirs).
#[utoipa::path(post, path = "/v1/journeys/{id}/pause", tag = "journeys",
    params(("id" = String, Path, description = "The journey's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = JourneyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not active", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a journey id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn pause(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    move_to(app, headers, path, Status::Paused).await
}

/// Ends the journey: nobody enters, the people inside leave it; it no longer changes.
#[utoipa::path(post, path = "/v1/journeys/{id}/archive", tag = "journeys",
    params(("id" = String, Path, description = "The journey's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = JourneyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a journey id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn archive(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    move_to(app, headers, path, Status::Archived).await
}

/// The tenant's frequency caps.
#[utoipa::path(get, path = "/v1/journey-caps", tag = "journeys",
    responses(
        (status = 200, body = CapsDocument),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_caps(State(app): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let caps = app.journeys.caps(&tenant.0).await.map_err(unavailable)?;
            Ok(Json(CapsDocument { caps }))
        }
        .await,
    )
}

/// Replaces the tenant's frequency caps.
#[utoipa::path(put, path = "/v1/journey-caps", tag = "journeys",
    request_body = CapsDocument,
    responses(
        (status = 200, body = CapsDocument),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid caps, each field named", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn put_caps(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let document: CapsDocument = parse_body(value)?;
            validate_caps(&document.caps).map_err(|errors| {
                Problem::validation(
                    errors
                        .into_iter()
                        .map(|e| FieldError::new(e.field, e.detail))
                        .collect(),
                )
            })?;
            app.journeys
                .put_caps(&tenant.0, &document.caps, Utc::now())
                .await
                .map_err(unavailable)?;
            Ok(Json(document))
        }
        .await,
    )
}

/// Journeys from YAML in the API's shape (one, a list, or `---` documents), each checked on its
/// own (the API also checks the channels a journey sends on).
pub fn from_yaml(text: &str) -> Result<Vec<Journey>, String> {
    let journeys: Vec<Journey> = crate::segments::yaml_documents(text)?;
    for journey in &journeys {
        journey.validate().map_err(|errors| {
            let problems: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.detail))
                .collect();
            format!("journey {:?}: {}", journey.id, problems.join("; "))
        })?;
    }
    Ok(journeys)
}

/// Creates or changes `journeys` in `tenant` (`PUT /v1/journeys/{id}`), and activates each when
/// `activate`. Returns each id with its version.
pub async fn apply(
    store: &dyn ump_core::journeys::JourneyStore,
    tenant: &str,
    journeys: Vec<Journey>,
    activate: bool,
) -> Result<Vec<(String, u32)>, String> {
    let now = Utc::now();
    let mut applied = Vec::with_capacity(journeys.len());
    for journey in journeys {
        let id = journey.id.clone();
        let written = store
            .put_journey(tenant, journey, now)
            .await
            .map_err(|e| format!("journey {id:?}: {e}"))?;
        if activate {
            store
                .set_status(tenant, &id, Status::Active, now)
                .await
                .map_err(|e| format!("journey {id:?}: {e}"))?;
        }
        applied.push((id, written.version));
    }
    Ok(applied)
}

/// The message of a journey send, as `POST /v1/messages` takes it.
fn message_of(user: &str, send: &JourneySend) -> Value {
    json!({
        "channel": send.channel,
        "user": user,
        "template": send.template,
        "data": send.data,
        "category": if send.marketing { "marketing" } else { "transactional" },
        "priority": if send.realtime { "realtime" } else { "bulk" },
        "metadata": {"journey": send.journey, "journey_version": send.version,
                     "journey_step": send.step},
    })
}

/// Puts the person's recommendations into the message's `data` (`fill_data`). A list that
/// cannot give what the data names means no message (`NotSent`); a store away, a retry.
async fn recommended(
    app: &AppState,
    tenant: &str,
    user_id: &str,
    wanted: &Wanted,
    message: &mut Value,
    now: chrono::DateTime<Utc>,
) -> Result<(), Relayed> {
    let list = crate::recommendations::list_for(app, tenant, user_id, wanted, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "recommendations unavailable; the journey message waits");
            Relayed::Later
        })?;
    let Some(data) = message.get_mut("data").and_then(Value::as_object_mut) else {
        return Err(Relayed::Dropped);
    };
    if list.is_empty() {
        tracing::info!(strategy = %wanted.strategy, "no recommendations; journey message not sent");
        return Err(Relayed::NotSent);
    }
    fill_data(data, &list).map_err(|why| {
        tracing::info!(reason = %why, "journey message not sent");
        Relayed::NotSent
    })
}

/// What became of one outbox message.
#[derive(Clone, Copy)]
enum Relayed {
    Enqueued,
    /// No consent or contact point now (checked when sent, as for any message).
    NotSent,
    /// The definition no longer fits its channel (a template changed since).
    Dropped,
    /// The queue or a store is away: left for the lease to run out and a retry.
    Later,
    /// Over the journey's send rate: given back until its turn.
    Paced(Duration),
}

impl Relayed {
    fn label(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::NotSent => "not_sent",
            Self::Dropped => "dropped",
            Self::Later => "retried",
            Self::Paced(_) => "paced",
        }
    }
}

/// Sends the outbox's journey messages until `cancel`, with `loops` relay loops side by side:
/// each claims its own messages (the claims skip what another holds), so a message written while
/// one loop waits on the database or the queue is taken by another rather than after it.
pub async fn run_relay(app: AppState, loops: usize, cancel: CancellationToken) {
    let mut running = tokio::task::JoinSet::new();
    for n in 0..loops.max(1) {
        running.spawn(relay_loop(app.clone(), n == 0, cancel.clone()));
    }
    while running.join_next().await.is_some() {}
}

/// One relay loop; `counts` says whether it samples the outbox's length for the metric.
async fn relay_loop(app: AppState, counts: bool, cancel: CancellationToken) {
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let mut failures = 0u32;
    let mut idle = RELAY_IDLE_MIN;
    let mut sampled: Option<tokio::time::Instant> = None;
    // Clearing what was enqueued overlaps the next claim (those rows are leased to this relay,
    // so no claim can take them meanwhile); one clearing at a time.
    let mut clearing: Option<tokio::task::JoinHandle<()>> = None;
    while !cancel.is_cancelled() {
        if counts && sampled.is_none_or(|at| at.elapsed() >= OUTBOX_SAMPLE) {
            sampled = Some(tokio::time::Instant::now());
            match app.journeys.outbox_len().await {
                Ok(n) => app.metrics.journey_outbox.set(n as i64),
                Err(e) => tracing::warn!(error = %e, "counting the journey outbox failed"),
            }
        }
        let claimed = match app
            .journeys
            .claim_sends(&owner, Utc::now(), RELAY_LEASE, RELAY_BATCH)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming journey messages failed");
                failures += 1;
                crate::broadcast::pause(failures, &cancel).await;
                continue;
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(idle) => {}
            }
            idle = (idle * 2).min(RELAY_IDLE);
            continue;
        }
        idle = RELAY_IDLE_MIN;
        let (done, paced) = relay(&app, claimed).await;
        let all_paced = done.is_empty();
        if let Some(previous) = clearing.take() {
            let _ = previous.await;
        }
        let store = app.journeys.clone();
        let clearer = owner.clone();
        clearing = Some(tokio::spawn(async move {
            if let Err(e) = store.sends_done(&clearer, &done).await {
                // The lease runs out and they go again with the same ids: the dedupe drops them.
                tracing::warn!(error = %e, "clearing relayed journey messages failed");
            }
        }));
        if let Some(turn) = paced.iter().map(|(_, wait)| *wait).min() {
            let ids: Vec<i64> = paced.iter().map(|(id, _)| *id).collect();
            let until = Utc::now() + chrono::Duration::from_std(turn).unwrap_or_default();
            if let Err(e) = app.journeys.release_sends(&owner, &ids, until).await {
                tracing::warn!(error = %e, "giving back paced journey messages failed");
            }
            if all_paced {
                // Everything in hand waits its turn: so does this relay.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(turn.min(RELAY_IDLE)) => {}
                }
            }
        }
        failures = 0;
    }
    if let Some(previous) = clearing.take() {
        let _ = previous.await;
    }
}

/// Sends `claimed` (profiles read per tenant in one go); returns the ids that are done, and
/// those over their journey's send rate with how long until their turn.
async fn relay(app: &AppState, claimed: Vec<QueuedSend>) -> (Vec<i64>, Vec<(i64, Duration)>) {
    let mut by_tenant: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in &claimed {
        by_tenant
            .entry(c.tenant.as_str())
            .or_default()
            .push(c.user_id.clone());
    }
    let mut profiles = std::collections::BTreeMap::new();
    for (tenant, users) in by_tenant {
        match app.profiles.profiles(tenant, &users).await {
            Ok(found) => {
                profiles.insert(tenant.to_owned(), found);
            }
            Err(e) => {
                tracing::warn!(error = %e, "profile store failed; journey messages wait");
                return (Vec::new(), Vec::new());
            }
        }
    }
    let registry = app.registry.load();
    let now = Utc::now();
    let results: Vec<(i64, Relayed)> = futures::stream::iter(claimed)
        .map(|c| {
            let profile = profiles.get(&c.tenant).and_then(|p| p.get(&c.user_id));
            let registry = &registry;
            async move {
                let mut value = message_of(&c.user_id, &c.send);
                if let Some(wanted) = &c.send.recommendations
                    && let Err(result) =
                        recommended(app, &c.tenant, &c.user_id, wanted, &mut value, now).await
                {
                    return (c.id, result);
                }
                let refused = apply_person(&mut value, profile, registry, "", now);
                if !refused.is_empty() {
                    tracing::info!(journey = %c.send.journey, step = %c.send.step,
                        reason = %refused[0].detail, "journey message not sent");
                    return (c.id, Relayed::NotSent);
                }
                let valid = match validate(&value, registry, "", now) {
                    Ok(valid) => valid,
                    Err(errors) => {
                        tracing::warn!(journey = %c.send.journey, step = %c.send.step,
                            field = %errors[0].field, detail = %errors[0].detail,
                            "journey message invalid, dropped");
                        return (c.id, Relayed::Dropped);
                    }
                };
                if let Some(rate) = c.send.send_rate {
                    let key = format!("ump:journey-rate:{}:{}", c.tenant, c.send.journey);
                    match app.journey_limiter.try_acquire(&key, rate, rate).await {
                        Ok(None) => {}
                        Ok(Some(wait)) => return (c.id, Relayed::Paced(wait)),
                        Err(e) => {
                            tracing::warn!(error = %e, "journey send rate unavailable");
                            return (c.id, Relayed::Later);
                        }
                    }
                }
                let millis = c.send.entered_at.timestamp_millis().max(0) as u64;
                let id = MessageId::derived(
                    millis,
                    &format!("{}/{}/{}", c.tenant, c.user_id, c.send.key()),
                );
                let (envelope, channel) = envelope(id, &Tenant(c.tenant.clone()), valid, None, now);
                match app.enqueue(&channel, &envelope).await {
                    Ok(()) => {
                        let waited = (Utc::now() - c.queued_at).to_std().unwrap_or_default();
                        app.metrics
                            .journey_outbox_wait
                            .observe(waited.as_secs_f64());
                        (c.id, Relayed::Enqueued)
                    }
                    Err(problem) if problem.status == 503 => (c.id, Relayed::Later),
                    Err(problem) => {
                        tracing::warn!(journey = %c.send.journey, detail = %problem.detail,
                            "journey message refused, dropped");
                        (c.id, Relayed::Dropped)
                    }
                }
            }
        })
        .buffer_unordered(RELAY_BATCH as usize)
        .collect()
        .await;
    for (_, result) in &results {
        app.metrics
            .journey_relayed
            .with_label_values(&[result.label()])
            .inc();
    }
    let mut done = Vec::new();
    let mut paced = Vec::new();
    for (id, result) in results {
        match result {
            Relayed::Later => {}
            Relayed::Paced(wait) => paced.push((id, wait)),
            _ => done.push(id),
        }
    }
    (done, paced)
}

//! Broadcasts: one message to every member of a segment (`POST /v1/segments/{id}/broadcast`),
//! through the normal send path (consent, contact points, validation, then the bulk queue: dedupe,
//! rate limits, quiet hours and history apply per message). Sent in the background by whichever
//! API process holds the broadcast's lease, a page of members at a time; each member's message id
//! is derived from the broadcast and the person, so a broadcast resumed after a crash sends every
//! member at most once (`ump_core::broadcast`).

use crate::AppState;
use crate::auth::Tenant;
use crate::messages::{
    SINGLE_LIMIT, apply_person, envelope, put_recommendations, read_json, resolve_person,
    take_wanted,
};
use crate::problem::{FieldError, Problem};
use crate::request::validate;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ump_automation::recommend::Recommendation;
use ump_core::broadcast::{Broadcast, BroadcastStatus, Progress};
use ump_core::model::MessageId;

const RETRY_AFTER_SECONDS: u64 = 5;
/// Members read and enqueued per step (the cursor moves after each).
pub const PAGE: u32 = 1000;
/// Messages of a page enqueued at once.
const CONCURRENCY: usize = 1000;
/// Members' recommendations made at once (each a few reads of the history database).
const RECOMMEND_CONCURRENCY: usize = 16;
/// How long a sender holds a broadcast without progress before another takes it over.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often an idle sender looks for a broadcast to send.
const IDLE: Duration = Duration::from_secs(1);

/// The message every member gets: `POST /v1/messages`'s fields without `to` or `user`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body, which is checked as a send per member
pub struct BroadcastRequest {
    /// The broadcast's id (1 to 64 letters, digits, `-`, `_`); a request repeated with the same
    /// id creates nothing new. Generated when absent.
    id: Option<String>,
    channel: String,
    /// `marketing` (the default: each member's consent, the night-time rule) or
    /// `transactional`.
    category: Option<String>,
    template: Option<String>,
    body: Option<String>,
    subject: Option<String>,
    data: Option<serde_json::Map<String, Value>>,
    /// Each member's recommended items, as in `POST /v1/messages`; a member without the items
    /// the message needs is skipped.
    recommendations: Option<crate::recommendations::WantedSchema>,
    tags: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BroadcastList {
    items: Vec<Broadcast>,
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "broadcast store failed");
    Problem::unavailable("the broadcast store is unavailable", RETRY_AFTER_SECONDS)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A member's send: the broadcast's message to `user`, marketing unless it says otherwise.
fn member_send(request: &Value, user: &str) -> Value {
    let mut value = request.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("id");
        object.insert("user".into(), Value::String(user.to_owned()));
        object
            .entry("category")
            .or_insert_with(|| Value::String("marketing".into()));
    }
    value
}

/// What the broadcast's message asks for of each member's recommendations (the request was
/// checked when the broadcast started).
fn wanted_of(request: &Value) -> Option<ump_automation::recommend::Wanted> {
    take_wanted(&mut member_send(request, "member"), "")
        .ok()
        .flatten()
}

/// Fields whose problems are the member's (no consent, no contact point, no recommended items),
/// not the request's.
fn about_the_member(error: &FieldError) -> bool {
    matches!(
        error.field.as_str(),
        "user" | "to" | "locale" | "recommendations"
    )
}

/// What became of one member.
enum Outcome {
    Enqueued,
    Skipped,
    /// The request itself cannot make a message.
    Invalid(Vec<FieldError>),
    /// The queue or a store is away: the page is tried again.
    Unavailable(Problem),
}

/// The message of `broadcast` for one member (whose profile is `profile`, and recommended
/// items `recommended` when the message asks for them), or why not.
fn member_message(
    broadcast: &Broadcast,
    user: &str,
    profile: Option<&ump_automation::profile::Profile>,
    recommended: Option<&[Recommendation]>,
    registry: &ump_core::config::ChannelRegistry,
    now: chrono::DateTime<Utc>,
) -> Result<
    (
        ump_core::model::Envelope,
        std::sync::Arc<ump_core::config::ResolvedChannel>,
    ),
    Outcome,
> {
    let mut value = member_send(&broadcast.request, user);
    let wanted = take_wanted(&mut value, "").map_err(Outcome::Invalid)?;
    let mut refused = apply_person(&mut value, profile, registry, "", now);
    if let (true, Some(wanted)) = (refused.is_empty(), &wanted) {
        refused = put_recommendations(&mut value, wanted, recommended.unwrap_or_default(), "");
    }
    if !refused.is_empty() {
        return Err(if refused.iter().all(about_the_member) {
            Outcome::Skipped
        } else {
            Outcome::Invalid(refused)
        });
    }
    let valid = match validate(&value, registry, "", now) {
        Ok(valid) => valid,
        Err(errors) if errors.iter().all(about_the_member) => return Err(Outcome::Skipped),
        Err(errors) => return Err(Outcome::Invalid(errors)),
    };
    let millis = broadcast.created_at.timestamp_millis().max(0) as u64;
    let id = MessageId::derived(
        millis,
        &format!("{}/{}/{user}", broadcast.tenant, broadcast.id),
    );
    Ok(envelope(
        id,
        &Tenant(broadcast.tenant.clone()),
        valid,
        None,
        now,
    ))
}

/// Sends one page of members: their profiles in one read, their recommended items when the
/// message asks for them, their messages built, then all enqueued at once (the producer packs
/// them into few requests).
async fn send_page(app: &AppState, broadcast: &Broadcast, users: Vec<String>) -> Vec<Outcome> {
    let profiles = match app.profiles.profiles(&broadcast.tenant, &users).await {
        Ok(profiles) => profiles,
        Err(e) => {
            tracing::warn!(error = %e, "profile store failed");
            return vec![Outcome::Unavailable(Problem::unavailable(
                "the profile store is unavailable",
                RETRY_AFTER_SECONDS,
            ))];
        }
    };
    let now = Utc::now();
    let wanted = wanted_of(&broadcast.request);
    let mut recommended: HashMap<String, Vec<Recommendation>> = HashMap::new();
    if let Some(wanted) = &wanted {
        let known: Vec<String> = users
            .iter()
            .filter(|user| profiles.contains_key(*user))
            .cloned()
            .collect();
        let lists: Vec<Result<(String, Vec<Recommendation>), Problem>> =
            futures::stream::iter(known)
                .map(|user| async move {
                    crate::recommendations::list_for(app, &broadcast.tenant, &user, wanted, now)
                        .await
                        .map(|list| (user, list))
                        .map_err(|e| {
                            tracing::warn!(error = %e, "recommendations failed");
                            Problem::unavailable(
                                "recommendations are unavailable",
                                RETRY_AFTER_SECONDS,
                            )
                        })
                })
                .buffer_unordered(RECOMMEND_CONCURRENCY)
                .collect()
                .await;
        for list in lists {
            match list {
                Ok((user, list)) => {
                    recommended.insert(user, list);
                }
                Err(problem) => return vec![Outcome::Unavailable(problem)],
            }
        }
    }
    let registry = app.registry.load();
    let mut outcomes = Vec::with_capacity(users.len());
    let mut messages = Vec::with_capacity(users.len());
    for user in &users {
        let found = recommended.get(user).map(Vec::as_slice);
        match member_message(broadcast, user, profiles.get(user), found, &registry, now) {
            Ok(message) => messages.push(message),
            Err(outcome) => outcomes.push(outcome),
        }
    }
    let sent: Vec<Outcome> = futures::stream::iter(messages)
        .map(|(envelope, channel)| async move {
            match app.enqueue(&channel, &envelope).await {
                Ok(()) => Outcome::Enqueued,
                Err(problem) if problem.status == 503 => Outcome::Unavailable(problem),
                Err(problem) => Outcome::Invalid(problem.errors),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    outcomes.extend(sent);
    outcomes
}

/// Starts a broadcast of a message to every member of a segment.
#[utoipa::path(post, path = "/v1/segments/{id}/broadcast", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = BroadcastRequest,
    responses(
        (status = 202, description = "Started (or, with an id already used, the existing broadcast)", body = Broadcast, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such segment", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The message is invalid, each field named", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn start(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let segment_id = crate::segments::segment_id(path)?;
        let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
        let Some(object) = value.as_object() else {
            return Err(Problem::validation(vec![FieldError::new(
                "body",
                "must be a JSON object",
            )]));
        };
        for field in ["to", "user"] {
            if object.contains_key(field) {
                return Err(Problem::validation(vec![FieldError::new(
                    field,
                    "a broadcast goes to the segment's members: leave it out",
                )]));
            }
        }
        let id = match object.get("id") {
            None => uuid::Uuid::now_v7().to_string(),
            Some(Value::String(id)) if valid_id(id) => id.clone(),
            Some(_) => {
                return Err(Problem::validation(vec![FieldError::new(
                    "id",
                    "1 to 64 letters, digits, '-' or '_'",
                )]));
            }
        };
        crate::segments::view(&app, &tenant.0, &segment_id).await?;
        check_request(&app, &tenant, &value).await?;
        let now = Utc::now();
        let broadcast = Broadcast {
            id: id.clone(),
            tenant: tenant.0.clone(),
            segment_id,
            request: value,
            status: BroadcastStatus::Running,
            cursor: None,
            enqueued: 0,
            skipped: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
        };
        app.broadcasts
            .create(&broadcast)
            .await
            .map_err(unavailable)?;
        let stored = app
            .broadcasts
            .broadcast(&tenant.0, &id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Problem::internal("the broadcast vanished"))?;
        Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/v1/broadcasts/{id}"))],
            Json(stored),
        ))
    }
    .await;
    match result {
        Ok(ok) => ok.into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Checks the message as a send to a placeholder person, so that a request no member could get
/// is refused now rather than failing in the background. Only the fields about the person
/// (`user`, `to`) are left to each member.
async fn check_request(app: &AppState, tenant: &Tenant, request: &Value) -> Result<(), Problem> {
    let registry = app.registry.load();
    let now = Utc::now();
    let mut value = member_send(request, "broadcast-check");
    let mut errors: Vec<FieldError> = resolve_person(app, tenant, &mut value, &registry, "", now)
        .await?
        .into_iter()
        .filter(|e| !about_the_member(e))
        .collect();
    if errors.is_empty()
        && let Some(object) = value.as_object_mut()
    {
        // A recipient of the channel's kind stands in for the person's contact point.
        object.remove("user");
        let stand_in = object
            .get("channel")
            .and_then(Value::as_str)
            .and_then(|c| registry.get(c))
            .map(|c| match c.channel_type() {
                ump_core::resources::ChannelType::Email => "member@example.com",
                _ => "+821000000000",
            });
        if let Some(to) = stand_in {
            object.insert("to".into(), Value::String(to.into()));
        }
        // A sample list stands in for the member's recommended items.
        if let Some(wanted) = wanted_of(request)
            && let Value::Object(data) = object
                .entry("data")
                .or_insert_with(|| Value::Object(Default::default()))
        {
            crate::recommendations::fill_sample(data, &wanted);
        }
        if let Err(invalid) = validate(&value, &registry, "", now) {
            errors.extend(invalid.into_iter().filter(|e| !about_the_member(e)));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors))
    }
}

/// A broadcast and its progress.
#[utoipa::path(get, path = "/v1/broadcasts/{id}", tag = "segments",
    params(("id" = String, Path, description = "The broadcast's id")),
    responses(
        (status = 200, body = Broadcast),
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
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let not_found = || {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such broadcast",
                "no broadcast with this id in this tenant",
            )
        };
        let Ok(Path(id)) = path else {
            return Err(not_found());
        };
        app.broadcasts
            .broadcast(&tenant.0, &id)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)
    }
    .await;
    match result {
        Ok(broadcast) => Json(broadcast).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// The tenant's latest broadcasts, newest first.
#[utoipa::path(get, path = "/v1/broadcasts", tag = "segments",
    responses(
        (status = 200, body = BroadcastList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let items = app
            .broadcasts
            .broadcasts(&tenant.0, 100)
            .await
            .map_err(unavailable)?;
        Ok::<_, Problem>(BroadcastList { items })
    }
    .await;
    match result {
        Ok(list) => Json(list).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Sends broadcasts until `cancel`: claims one, sends it page by page, takes the next.
pub async fn run_senders(app: AppState, cancel: CancellationToken) {
    let owner = uuid::Uuid::new_v4().simple().to_string();
    loop {
        let claimed = match app.broadcasts.claim(&owner, Utc::now(), LEASE).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming a broadcast failed");
                None
            }
        };
        match claimed {
            Some(broadcast) => send(&app, broadcast, &owner, &cancel).await,
            None => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(IDLE) => {}
                }
            }
        }
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Sends `broadcast` from its cursor to the end of the segment (or until the lease is lost or
/// `cancel` fires; the next holder resumes from the cursor).
async fn send(app: &AppState, broadcast: Broadcast, owner: &str, cancel: &CancellationToken) {
    let mut progress = Progress {
        cursor: broadcast.cursor.clone().unwrap_or_default(),
        enqueued: broadcast.enqueued,
        skipped: broadcast.skipped,
    };
    let mut failures = 0u32;
    tracing::info!(broadcast = %broadcast.id, segment = %broadcast.segment_id, "sending a broadcast");
    while !cancel.is_cancelled() {
        let after = (!progress.cursor.is_empty()).then_some(progress.cursor.as_str());
        let members = match app
            .segments
            .members(&broadcast.tenant, &broadcast.segment_id, after, PAGE)
            .await
        {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(error = %e, "reading a segment's members failed");
                failures += 1;
                pause(failures, cancel).await;
                continue;
            }
        };
        let Some(last) = members.last().map(|m| m.user_id.clone()) else {
            finish(app, &broadcast, owner, BroadcastStatus::Done, None).await;
            return;
        };
        let users = members.into_iter().map(|m| m.user_id).collect();
        let outcomes = send_page(app, &broadcast, users).await;
        let mut page = Progress {
            cursor: last,
            ..progress.clone()
        };
        let mut retry = false;
        for outcome in outcomes {
            match outcome {
                Outcome::Enqueued => page.enqueued += 1,
                Outcome::Skipped => page.skipped += 1,
                Outcome::Unavailable(problem) => {
                    tracing::warn!(detail = %problem.detail, "a broadcast page waits for the queue");
                    retry = true;
                }
                Outcome::Invalid(errors) => {
                    let why = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    finish(app, &broadcast, owner, BroadcastStatus::Failed, Some(&why)).await;
                    return;
                }
            }
        }
        if retry {
            // The whole page again: those enqueued keep their ids, and the dedupe drops them.
            failures += 1;
            pause(failures, cancel).await;
            continue;
        }
        match app
            .broadcasts
            .advance(&broadcast, owner, &page, Utc::now(), LEASE)
            .await
        {
            Ok(true) => {
                progress = page;
                failures = 0;
            }
            Ok(false) => {
                tracing::warn!(broadcast = %broadcast.id, "lost a broadcast's lease; another sender resumes it");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording a broadcast's progress failed");
                failures += 1;
                pause(failures, cancel).await;
            }
        }
    }
}

async fn finish(
    app: &AppState,
    broadcast: &Broadcast,
    owner: &str,
    status: BroadcastStatus,
    error: Option<&str>,
) {
    match app
        .broadcasts
        .finish(broadcast, owner, status, error, Utc::now())
        .await
    {
        Ok(_) => tracing::info!(broadcast = %broadcast.id, ?status, "broadcast ended"),
        // The lease runs out and the next sender finds the end again.
        Err(e) => tracing::warn!(error = %e, "recording a broadcast's end failed"),
    }
}

/// Waits after `failures` failures in a row: doubling from 200 ms to 5 s, or until `cancel`.
pub(crate) async fn pause(failures: u32, cancel: &CancellationToken) {
    let wait = Duration::from_millis((200u64 << failures.min(5)).min(5_000));
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

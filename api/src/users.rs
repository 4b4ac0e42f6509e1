//! Customer profiles: `PUT /v1/users/{user_id}` (identify: traits, contact points, locale, time
//! zone, consents with when and how they were given), `GET` it, `DELETE` it (erasure). How an
//! update applies is `ump_automation::profile::Profile::apply`; the store is the tenant's
//! (`ProfileStore`).

use crate::AppState;
use crate::messages::{SINGLE_LIMIT, read_json};
use crate::problem::{FieldError, Problem};
use crate::segments::PersonActivity;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ump_automation::event::Queued;
use ump_automation::profile::{Profile, ProfileUpdate};
use ump_core::profiles::Erasure;

/// `GET /v1/users/{id}`: the profile and what the processor keeps of the person.
#[derive(serde::Serialize)]
struct Person {
    #[serde(flatten)]
    profile: Profile,
    #[serde(flatten)]
    activity: PersonActivity,
}

const RETRY_AFTER_SECONDS: u64 = 5;
/// The longest user id (in characters): the application's own id for the person.
pub const MAX_USER_ID: usize = 255;

/// The body of `PUT /v1/users/{user_id}`: every field optional.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::profile::ProfileUpdate`, which parses
pub struct IdentifyRequest {
    /// Merged into the stored traits; a `null` deletes a trait.
    traits: Option<serde_json::Map<String, serde_json::Value>>,
    /// Replaces the contact points: `phone` and `kakao_phone` (E.164), `email`, `push_tokens`.
    contacts: Option<serde_json::Value>,
    /// A language tag (`ko-KR`): which variant of a template the person gets.
    locale: Option<String>,
    /// An IANA time zone (`Asia/Seoul`, the default): quiet hours and the night-time rule.
    timezone: Option<String>,
    /// Decisions to add to the record: `{purpose: marketing | marketing_night, channel: sms |
    /// email | push | kakao, granted, source, at?}`.
    consents: Option<Vec<serde_json::Value>>,
}

/// A profile as the API shows it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::profile::Profile`, which serializes
pub struct ProfileView {
    user_id: String,
    traits: serde_json::Map<String, serde_json::Value>,
    contacts: serde_json::Value,
    locale: Option<String>,
    timezone: Option<String>,
    /// Every consent decision recorded, oldest first; the newest per purpose and channel holds.
    consents: Vec<serde_json::Value>,
    /// Created by an event before anyone identified the person.
    anonymous: bool,
    /// (`GET` only) The segments the person is in.
    segments: Option<Vec<String>>,
    /// (`GET` only) Newest first: the person's latest events and segment entries and exits.
    recent_events: Option<Vec<serde_json::Value>>,
    /// (`GET` only) When time alone could next change a membership or move a journey.
    next_wake: Option<chrono::DateTime<Utc>>,
    /// (`GET` only) The journeys the person is in now.
    journeys: Option<Vec<crate::segments::JourneyPlace>>,
}

pub(crate) fn user_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let invalid =
        |detail: &str| Problem::validation(vec![FieldError::new("user_id", detail.to_owned())]);
    let Ok(Path(id)) = path else {
        return Err(invalid("not valid text"));
    };
    if id.is_empty() || id.chars().count() > MAX_USER_ID || id.chars().any(char::is_control) {
        return Err(invalid(&format!(
            "1 to {MAX_USER_ID} characters, no control characters"
        )));
    }
    Ok(id)
}

/// Serde would also read a struct from an array of its fields in order: the contract is objects.
fn objects_only(body: &serde_json::Value) -> Result<(), Problem> {
    let not_object = |field: &str| {
        Problem::validation(vec![FieldError::new(
            field.to_owned(),
            "must be a JSON object",
        )])
    };
    let Some(fields) = body.as_object() else {
        return Err(not_object("body"));
    };
    if let Some(contacts) = fields.get("contacts")
        && !(contacts.is_object() || contacts.is_null())
    {
        return Err(not_object("contacts"));
    }
    if let Some(consents) = fields.get("consents").and_then(|c| c.as_array()) {
        for (i, consent) in consents.iter().enumerate() {
            if !consent.is_object() {
                return Err(not_object(&format!("consents[{i}]")));
            }
        }
    }
    Ok(())
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "profile store failed");
    Problem::unavailable("the profile store is unavailable", RETRY_AFTER_SECONDS)
}

/// Creates or updates a person's profile.
#[utoipa::path(put, path = "/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The application's id for the person", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    request_body = IdentifyRequest,
    responses(
        (status = 200, description = "The profile after the update", body = ProfileView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn identify(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let user_id = user_id(path)?;
        let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
        objects_only(&value)?;
        let update: ProfileUpdate = crate::problem::parse_body(value)?;
        let mut profile = app
            .profiles
            .profile(&tenant.0, &user_id)
            .await
            .map_err(unavailable)?
            .unwrap_or_else(|| Profile {
                user_id: user_id.clone(),
                ..Profile::default()
            });
        profile.apply(update, Utc::now()).map_err(|errors| {
            Problem::validation(
                errors
                    .into_iter()
                    .map(|e| FieldError::new(e.field, e.detail))
                    .collect(),
            )
        })?;
        app.profiles
            .save_profile(&tenant.0, &profile)
            .await
            .map_err(unavailable)?;
        // The processor looks at the person again: a trait or a consent may change a segment.
        crate::events::append(&app, &tenant.0, &[Queued::recheck(&user_id, Utc::now())]).await?;
        Ok::<_, Problem>(Json(profile))
    }
    .await;
    match result {
        Ok(profile) => profile.into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// A person's profile.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The application's id for the person", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    responses(
        (status = 200, body = ProfileView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such person in this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a user id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let user_id = user_id(path)?;
        let profile = app
            .profiles
            .profile(&tenant.0, &user_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(Problem::not_found)?;
        let record = app
            .segments
            .person(&tenant.0, &user_id)
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        Ok::<_, Problem>(Person {
            profile,
            activity: PersonActivity {
                segments: record.segments.into_iter().collect(),
                recent_events: record.recent,
                next_wake: record.next_wake,
                journeys: record.journeys.inside.into_iter().map(Into::into).collect(),
                past_journeys: record.journeys.past.into_iter().map(Into::into).collect(),
            },
        })
    }
    .await;
    match result {
        Ok(person) => Json(person).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Erases a person: their profile, and their contact points from the message history (kept
/// masked only). Says what it erased; erasing an unknown person erases nothing.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The application's id for the person", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    responses(
        (status = 200, description = "What was erased", body = Erasure),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a user id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn erase_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let tenant = app.keys.authenticate(&headers).await?;
        let user_id = user_id(path)?;
        let erased = app
            .profiles
            .erase(&tenant.0, &user_id, chrono::Utc::now())
            .await
            .map_err(unavailable)?;
        tracing::info!(
            profile = erased.profile,
            messages_masked = erased.messages_masked,
            "erased a person"
        );
        Ok::<_, Problem>(erased)
    }
    .await;
    match result {
        Ok(erased) => (StatusCode::OK, Json(erased)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

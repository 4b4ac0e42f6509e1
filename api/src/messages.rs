//! `/v1/messages`: send one, send a batch, read one with its timeline, list with filters.

use crate::AppState;
use crate::auth::Tenant;
use crate::idempotency::{Begin, body_hash};
use crate::problem::{FieldError, Problem};
use crate::request::{SendMessageRequest, ValidSend, validate};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Instant;
use ump_core::history::{MessageFilter, MessagePage, MessageView, decode_cursor};
use ump_core::model::{Envelope, MessageId, Priority, Status};
use ump_core::queue::EnqueueError;
use utoipa::ToSchema;

/// Largest body of `POST /v1/messages`.
pub const SINGLE_LIMIT: usize = 256 * 1024;
/// Largest body of `POST /v1/messages/batch`.
pub const BATCH_LIMIT: usize = 16 * 1024 * 1024;
pub const MAX_BATCH: usize = 1000;
/// What a 503 asks the client to wait, in seconds.
const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: MessageId,
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: &'static str,
}

#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents the contract (OpenAPI)
pub struct BatchRequest {
    /// 1 to 1000 messages.
    #[schema(min_items = 1, max_items = 1000)]
    pub messages: Vec<SendMessageRequest>,
}

/// One result of a batch, in the order of the request: the accepted message or its problem.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(Accepted),
    Error { error: Problem },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

pub(crate) async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<(Bytes, Value), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(Problem::unsupported_media_type());
    }
    let bytes = read_body(headers, body, limit, timeout).await?;
    let value =
        serde_json::from_slice(&bytes).map_err(|e| Problem::malformed_json(e.to_string()))?;
    Ok((bytes, value))
}

/// Reads a request body of at most `limit` bytes; a body past it is refused once it passes it.
/// One announced (`Content-Length`) at over twice the limit is refused before a byte is read: the
/// client is sending something else entirely, and must not hold the handler while it does. (One
/// just over the limit is read up to it first, so that a client still writing gets its `413`
/// rather than a connection closed under it.)
/// `timeout` bounds how long the whole body may take to arrive (`408` after it).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Problem> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > 2 * limit as u64) {
        return Err(Problem::too_large(limit));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(Problem::too_large(limit)),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "The body did not arrive in time",
            format!("send the whole body within {} s", timeout.as_secs_f64()),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => {
            let mut problem = Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-idempotency-key",
                "The Idempotency-Key header is invalid",
                "1 to 255 visible ASCII characters",
            );
            problem.field = Some("Idempotency-Key".into());
            Err(problem)
        }
    }
}

pub(crate) fn envelope(
    id: MessageId,
    tenant: &Tenant,
    valid: ValidSend,
    idempotency_key: Option<String>,
    now: DateTime<Utc>,
) -> (Envelope, std::sync::Arc<ump_core::config::ResolvedChannel>) {
    let envelope = Envelope {
        id,
        tenant: tenant.0.clone(),
        channel: valid.channel.name(),
        to: valid.to,
        content: valid.content,
        priority: valid.priority,
        send_at: valid.send_at,
        tags: valid.tags,
        metadata: valid.metadata,
        idempotency_key,
        category: valid.category,
        accepted_at: now,
        attempts: 0,
        fallback: None,
    };
    (envelope, valid.channel)
}

impl AppState {
    pub(crate) async fn enqueue(
        &self,
        channel: &ump_core::config::ResolvedChannel,
        envelope: &Envelope,
    ) -> Result<(), Problem> {
        let queue = match envelope.priority {
            Priority::Bulk => &self.bulk,
            Priority::Realtime => match &self.realtime {
                Some(queue) => queue,
                None => {
                    return Err(Problem::unavailable(
                        "realtime delivery is not configured on this server",
                        RETRY_AFTER_SECONDS,
                    ));
                }
            },
        };
        match queue.enqueue(&channel.resource, envelope).await {
            Ok(()) => {
                tracing::debug!(id = %envelope.id, channel = %envelope.channel,
                    to = %ump_core::pii::Masked(&envelope.to), "accepted");
                self.metrics
                    .accepted
                    .with_label_values(&[envelope.channel.as_str(), envelope.priority.as_str()])
                    .inc();
                Ok(())
            }
            Err(EnqueueError::Unavailable(detail)) => {
                tracing::warn!(channel = %envelope.channel, error = %detail, "queue unavailable");
                self.metrics
                    .rejected
                    .with_label_values(&["unavailable"])
                    .inc();
                Err(Problem::unavailable(
                    "the message broker is unavailable",
                    RETRY_AFTER_SECONDS,
                ))
            }
            Err(EnqueueError::Rejected(detail)) => {
                let mut problem = Problem::validation(vec![FieldError::new(
                    "body",
                    format!("the broker refused the message: {detail}"),
                )]);
                problem.detail = "the message broker refused the message".into();
                Err(problem)
            }
        }
    }

    /// Runs `work` under the request's Idempotency-Key (if any): replays, conflicts, and
    /// remembering the answer. `work` gets the ids of the `count` messages the request may make:
    /// fresh ones, or those of an earlier attempt with the key whose outcome is unknown (see
    /// `crate::idempotency`), so that a retry can never make a second set of messages.
    async fn idempotent<F, Fut>(
        &self,
        tenant: &Tenant,
        key: Option<&str>,
        body: &[u8],
        count: usize,
        work: F,
    ) -> Result<(StatusCode, String), Problem>
    where
        F: FnOnce(Vec<MessageId>) -> Fut,
        Fut: std::future::Future<Output = Result<(StatusCode, String), Problem>>,
    {
        let fresh: Vec<MessageId> = (0..count).map(|_| MessageId::new()).collect();
        let Some(key) = key else {
            return work(fresh).await;
        };
        let hash = body_hash(body);
        let unavailable = |e: crate::idempotency::StoreUnavailable| {
            tracing::warn!(error = %e, "idempotency store unavailable");
            Problem::unavailable("the idempotency store is unavailable", RETRY_AFTER_SECONDS)
        };
        let claim = match self
            .idempotency
            .begin(&tenant.0, key, &hash, &encode_plan(&fresh))
            .await
            .map_err(unavailable)?
        {
            Begin::Go(claim) => claim,
            Begin::Replay(response) => return Ok((StatusCode::ACCEPTED, response)),
            Begin::InFlight(wait) => {
                self.metrics.rejected.with_label_values(&["conflict"]).inc();
                let mut problem = Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-in-flight",
                    "A request with this Idempotency-Key is still in progress",
                    "retry after the time in Retry-After, with the same key and body",
                );
                problem.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                return Err(problem);
            }
            Begin::Mismatch => {
                self.metrics.rejected.with_label_values(&["conflict"]).inc();
                let mut problem = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different body",
                    "use a new key for a different request",
                );
                problem.field = Some("Idempotency-Key".into());
                return Err(problem);
            }
        };
        // The same body makes the same number of messages; a plan that does not fit (a store
        // written by hand) is not trusted.
        let ids = decode_plan(&claim.plan, count).unwrap_or(fresh);
        match work(ids).await {
            Ok((status, response)) if status == StatusCode::ACCEPTED => {
                // The messages are durable already; failing to remember the answer only means a
                // retry produces the same ids again (delivered once), so it must not turn the
                // 202 into an error.
                if let Err(e) = self
                    .idempotency
                    .complete(&tenant.0, key, &hash, &response)
                    .await
                {
                    tracing::warn!(error = %e, "could not remember an idempotent response");
                }
                Ok((status, response))
            }
            // The broker may have taken the messages after all: the next attempt uses the same
            // ids, at once.
            Err(problem) if problem.status == 503 => {
                if let Err(e) = self
                    .idempotency
                    .release(&tenant.0, key, &hash, &claim.token)
                    .await
                {
                    tracing::warn!(error = %e, "could not release an Idempotency-Key; a retry waits for its claim to lapse");
                }
                Err(problem)
            }
            other => {
                if let Err(e) = self
                    .idempotency
                    .abandon(&tenant.0, key, &hash, &claim.token)
                    .await
                {
                    tracing::warn!(error = %e, "could not release an Idempotency-Key");
                }
                other
            }
        }
    }
}

/// Replaces a send's `user` by the person's contact point for the channel (and their locale,
/// when the send gives none), applies the consent rules of `category: marketing`, and puts the
/// person's `recommendations`, when asked for, into `data`; in place, before `validate`. Returns
/// the fields at fault (names under `prefix`); a store that cannot be read is a 503.
pub(crate) async fn resolve_person(
    app: &AppState,
    tenant: &Tenant,
    value: &mut Value,
    registry: &ump_core::config::ChannelRegistry,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<Vec<FieldError>, Problem> {
    let wanted = match take_wanted(value, prefix) {
        Ok(wanted) => wanted,
        Err(errors) => return Ok(errors),
    };
    let user = value
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 4 * crate::users::MAX_USER_ID)
        .map(str::to_owned);
    let profile = match &user {
        Some(user) => app.profiles.profile(&tenant.0, user).await.map_err(|e| {
            tracing::warn!(error = %e, "profile store failed");
            Problem::unavailable("the profile store is unavailable", RETRY_AFTER_SECONDS)
        })?,
        None => None,
    };
    let refused = apply_person(value, profile.as_ref(), registry, prefix, now);
    let (true, Some(wanted), Some(user)) = (refused.is_empty(), wanted, user) else {
        return Ok(refused);
    };
    let list = crate::recommendations::list_for(app, &tenant.0, &user, &wanted, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "recommendations failed");
            Problem::unavailable("recommendations are unavailable", RETRY_AFTER_SECONDS)
        })?;
    Ok(put_recommendations(value, &wanted, &list, prefix))
}

/// Takes a send's `recommendations` ask out of it (`None`: none), with its `data` references
/// checked against it (without an ask, `validate` refuses any). The errors name the request's
/// fields: they are no person's fault.
pub(crate) fn take_wanted(
    value: &mut Value,
    prefix: &str,
) -> Result<Option<ump_automation::recommend::Wanted>, Vec<FieldError>> {
    use ump_automation::recommend::{Wanted, check_references, data_reference};
    let Some(object) = value.as_object_mut() else {
        return Ok(None); // `validate` says what is wrong
    };
    let field = format!("{prefix}recommendations");
    let wanted = match object.remove("recommendations") {
        None | Some(Value::Null) => None,
        Some(ask) => {
            let wanted: Wanted = serde_json::from_value(ask)
                .map_err(|e| vec![FieldError::new(&field, e.to_string())])?;
            let errors: Vec<FieldError> = wanted
                .check(&field)
                .into_iter()
                .map(|e| FieldError::new(e.field, e.detail))
                .collect();
            if !errors.is_empty() {
                return Err(errors);
            }
            if !matches!(object.get("user"), Some(Value::String(_))) {
                return Err(vec![FieldError::new(
                    &field,
                    "recommendations are a person's: give user instead of to",
                )]);
            }
            Some(wanted)
        }
    };
    let (Some(wanted), Some(Value::Object(data))) = (&wanted, object.get("data")) else {
        return Ok(wanted);
    };
    let at = format!("{prefix}data");
    let mut errors: Vec<FieldError> = check_references(data, Some(wanted), &at)
        .into_iter()
        .map(|e| FieldError::new(e.field, e.detail))
        .collect();
    for (name, value) in data {
        if let Some(Err(why)) = value.as_str().and_then(data_reference) {
            errors.push(FieldError::new(format!("{at}.{name}"), why));
        }
    }
    if errors.is_empty() {
        Ok(Some(wanted.clone()))
    } else {
        Err(errors)
    }
}

/// Puts the person's `list` into the send's `data` (`fill_data`). A list that cannot give what
/// the send needs is the person's: `recommendations` is named, with why nothing is sent.
pub(crate) fn put_recommendations(
    value: &mut Value,
    wanted: &ump_automation::recommend::Wanted,
    list: &[ump_automation::recommend::Recommendation],
    prefix: &str,
) -> Vec<FieldError> {
    let field = format!("{prefix}recommendations");
    if list.is_empty() {
        return vec![FieldError::new(
            field,
            format!("not sent: the person has no {} items", wanted.strategy),
        )];
    }
    let Some(object) = value.as_object_mut() else {
        return Vec::new();
    };
    let data = object
        .entry("data")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(data) = data.as_object_mut() else {
        return Vec::new(); // `validate` names `data`
    };
    match ump_automation::recommend::fill_data(data, list) {
        Ok(()) => Vec::new(),
        Err(why) => vec![FieldError::new(field, format!("not sent: {why}"))],
    }
}

/// Why `channel` may not carry advertising, and the field at fault: AlimTalk is wrong for the
/// message's kind (`category`), an SMS channel lacks its configuration (`channel`).
pub(crate) fn unfit_for_advertising(
    channel: &ump_core::config::ResolvedChannel,
) -> Option<(&'static str, String)> {
    let why = ump_core::advertising::unfit_for_advertising(
        &channel.name(),
        channel.channel_type(),
        channel.resource.spec.advertising.as_ref(),
    )?;
    let at_fault = match channel.channel_type() {
        ump_core::resources::ChannelType::Alimtalk => "category",
        _ => "channel",
    };
    Some((at_fault, why))
}

/// `resolve_person` with the person's profile in hand (`None`: no such person).
pub(crate) fn apply_person(
    value: &mut Value,
    profile: Option<&ump_automation::profile::Profile>,
    registry: &ump_core::config::ChannelRegistry,
    prefix: &str,
    now: DateTime<Utc>,
) -> Vec<FieldError> {
    use ump_automation::profile::ChannelKind;
    use ump_core::resources::ChannelType;
    let field = |name: &str| format!("{prefix}{name}");
    let fail = |name: &str, detail: String| vec![FieldError::new(field(name), detail)];
    let Some(object) = value.as_object_mut() else {
        return Vec::new(); // `validate` says what is wrong
    };
    let marketing = object.get("category").and_then(Value::as_str) == Some("marketing");
    let user = match object.get("user") {
        None | Some(Value::Null) if marketing => {
            return fail(
                "user",
                "a marketing message goes to a user (consent is per person), not to an address"
                    .into(),
            );
        }
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::String(user)) => user.clone(),
        Some(_) => return fail("user", "must be a string".into()),
    };
    if object.get("to").is_some_and(|to| !to.is_null()) {
        return fail("user", "give either to or user, not both".into());
    }
    if user.is_empty()
        || user.chars().count() > crate::users::MAX_USER_ID
        || user.chars().any(char::is_control)
    {
        return fail("user", "1 to 255 characters, no control characters".into());
    }
    let Some(channel) = object
        .get("channel")
        .and_then(Value::as_str)
        .and_then(|name| registry.get(name))
    else {
        return Vec::new(); // `validate` names the channel
    };
    if marketing && let Some((at_fault, why)) = unfit_for_advertising(channel) {
        return fail(at_fault, why);
    }
    let kind = match channel.channel_type() {
        ChannelType::Sms => ChannelKind::Sms,
        ChannelType::Email => ChannelKind::Email,
        ChannelType::Push => ChannelKind::Push,
        // One Kakao consent and contact point: FriendTalk (advertising) and AlimTalk alike.
        ChannelType::Alimtalk | ChannelType::Friendtalk => ChannelKind::Kakao,
        ChannelType::Webhook => {
            return fail(
                "user",
                "a webhook channel has no contact point on a profile: give to".into(),
            );
        }
    };
    let Some(profile) = profile else {
        return fail(
            "user",
            "no such person: create the profile with PUT /v1/users/{user_id}".into(),
        );
    };
    let Some(to) = profile.contact(kind).map(str::to_owned) else {
        return fail(
            "user",
            format!("the person has no {} contact point", kind.as_str()),
        );
    };
    if marketing {
        // The night-time rule applies to when the message goes out.
        let at = object
            .get("send_at")
            .and_then(Value::as_str)
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map_or(now, |at| at.with_timezone(&Utc).max(now));
        if let Err(refusal) = profile.marketing_permission(kind, at) {
            return fail("user", format!("not sent: {refusal}"));
        }
    }
    object.remove("user");
    object.insert("to".into(), Value::String(to));
    if !object.contains_key("locale")
        && let Some(locale) = profile
            .locale
            .as_ref()
            .filter(|l| ump_core::template::is_locale_tag(l))
    {
        object.insert("locale".into(), Value::String(locale.clone()));
    }
    Vec::new()
}

/// A request's message ids as the idempotency store keeps them.
fn encode_plan(ids: &[MessageId]) -> String {
    ids.iter()
        .map(|id| id.0.simple().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_plan(plan: &str, count: usize) -> Option<Vec<MessageId>> {
    let ids = plan
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| uuid::Uuid::try_parse(s).ok().map(MessageId))
        .collect::<Option<Vec<_>>>()?;
    (ids.len() == count).then_some(ids)
}

fn json_response(status: StatusCode, body: String, location: Option<&str>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn rejected(app: &AppState, problem: Problem) -> Response {
    let reason = match problem.status {
        400 | 415 => "malformed",
        401 => "unauthorized",
        413 => "too_large",
        422 => "validation",
        429 => "rate_limited",
        503 => "unavailable",
        _ => "other",
    };
    app.metrics.rejected.with_label_values(&[reason]).inc();
    problem.into_response()
}

/// Send one message.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body = SendMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Same key + same body within 24 h: same answer, nothing sent twice")),
    responses(
        (status = 202, description = "Durable in the broker", body = Accepted, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad API key", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within 30 s", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Same Idempotency-Key still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key is over its request rate", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "The broker cannot take the message now", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn send_message(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let tenant = match app.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return rejected(&app, problem),
    };
    // The message's id once it is enqueued; a replayed answer names it in its stored body.
    let sent = std::sync::OnceLock::new();
    let result = async {
        let key = idempotency_key(&headers)?;
        let (bytes, mut value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
        let now = Utc::now();
        let registry = app.registry.load();
        let (app_ref, tenant_ref, key_ref, registry_ref) = (&app, &tenant, &key, &registry);
        let sent_ref = &sent;
        // Checked under the key: a retry replays the first answer even if the channels or the
        // person's consents changed meanwhile; a refused request gives the key back.
        app.idempotent(&tenant, key.as_deref(), &bytes, 1, |ids| async move {
            let (app, tenant, key, registry) = (app_ref, tenant_ref, key_ref, registry_ref);
            let refused = resolve_person(app, tenant, &mut value, registry, "", now).await?;
            if !refused.is_empty() {
                return Err(Problem::validation(refused));
            }
            let valid = validate(&value, registry, "", now).map_err(Problem::validation)?;
            let id = ids.first().copied().unwrap_or_default();
            let (envelope, channel) = envelope(id, tenant, valid, key.clone(), now);
            app.enqueue(&channel, &envelope).await?;
            let _ = sent_ref.set(envelope.id);
            let accepted = Accepted {
                id: envelope.id,
                status: "accepted",
            };
            Ok((
                StatusCode::ACCEPTED,
                serde_json::to_string(&accepted).map_err(|e| Problem::internal(e.to_string()))?,
            ))
        })
        .await
    }
    .await;
    match result {
        Ok((status, body)) => {
            app.metrics
                .accept_seconds
                .with_label_values(&["single"])
                .observe(started.elapsed().as_secs_f64());
            let id = match sent.get() {
                Some(id) => Some(id.to_string()),
                None => serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned)),
            };
            let location = id.map(|id| format!("/v1/messages/{id}"));
            json_response(status, body, location.as_deref())
        }
        Err(problem) => rejected(&app, problem),
    }
}

/// Send up to 1000 messages; results come back in the same order.
#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Covers the whole batch")),
    responses(
        (status = 202, description = "Per-message results in request order", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad API key", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within 30 s", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Same Idempotency-Key still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`messages` missing, empty or over 1000", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key is over its request rate", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "The broker took none of the messages", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn send_batch(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let tenant = match app.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return rejected(&app, problem),
    };
    let result = async {
        let key = idempotency_key(&headers)?;
        let (bytes, value) = read_json(&headers, body, BATCH_LIMIT, app.body_timeout).await?;
        let items = batch_items(&value)?;
        app.metrics.batch_size.observe(items.len() as f64);
        let now = Utc::now();
        let registry = app.registry.load();
        let (app_ref, tenant_ref, key_ref, items_ref) = (&app, &tenant, &key, &items);
        let registry_ref = &registry;
        app.idempotent(
            &tenant,
            key.as_deref(),
            &bytes,
            items.len(),
            |ids| async move {
                let (app, tenant, key, items) = (app_ref, tenant_ref, key_ref, items_ref);
                let registry = registry_ref;
                let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(items.len());
                let mut pending = Vec::new();
                for ((i, item), id) in items.iter().enumerate().zip(ids) {
                    let prefix = format!("messages[{i}].");
                    // Only a send to a person (or a marketing one) needs its copy resolved.
                    let resolved = if item.get("user").is_some() || item.get("category").is_some() {
                        let mut item = item.clone();
                        match resolve_person(app, tenant, &mut item, registry, &prefix, now).await {
                            Ok(refused) if refused.is_empty() => Ok(std::borrow::Cow::Owned(item)),
                            Ok(refused) => Err(Problem::validation(refused)),
                            Err(problem) => Err(problem),
                        }
                    } else {
                        Ok(std::borrow::Cow::Borrowed(item))
                    };
                    let checked = resolved.and_then(|item| {
                        validate(&item, registry, &prefix, now).map_err(Problem::validation)
                    });
                    match checked {
                        Ok(valid) => {
                            let item_key = key.as_ref().map(|k| format!("{k}#{i}"));
                            pending.push((i, envelope(id, tenant, valid, item_key, now)));
                            results.push(None);
                        }
                        Err(problem) => {
                            let reason = if problem.status == 503 {
                                "unavailable"
                            } else {
                                "validation"
                            };
                            app.metrics.rejected.with_label_values(&[reason]).inc();
                            results.push(Some(BatchResult::Error { error: problem }));
                        }
                    }
                }
                let outcomes = futures::future::join_all(
                    pending
                        .iter()
                        .map(|(_, (envelope, channel))| app.enqueue(channel, envelope)),
                )
                .await;
                let (mut accepted, mut unavailable) = (0usize, 0usize);
                for ((i, (envelope, _)), outcome) in pending.iter().zip(outcomes) {
                    results[*i] = Some(match outcome {
                        Ok(()) => {
                            accepted += 1;
                            BatchResult::Accepted(Accepted {
                                id: envelope.id,
                                status: "accepted",
                            })
                        }
                        Err(problem) => {
                            if problem.status == 503 {
                                unavailable += 1;
                            }
                            BatchResult::Error { error: problem }
                        }
                    });
                }
                if accepted == 0 && unavailable > 0 {
                    return Err(Problem::unavailable(
                        "the message broker is unavailable",
                        RETRY_AFTER_SECONDS,
                    ));
                }
                let response = BatchResponse {
                    results: results.into_iter().flatten().collect(),
                };
                Ok((
                    StatusCode::ACCEPTED,
                    serde_json::to_string(&response)
                        .map_err(|e| Problem::internal(e.to_string()))?,
                ))
            },
        )
        .await
    }
    .await;
    match result {
        Ok((status, body)) => {
            app.metrics
                .accept_seconds
                .with_label_values(&["batch"])
                .observe(started.elapsed().as_secs_f64());
            json_response(status, body, None)
        }
        Err(problem) => rejected(&app, problem),
    }
}

fn batch_items(value: &Value) -> Result<&Vec<Value>, Problem> {
    let invalid =
        |field: &str, detail: &str| Problem::validation(vec![FieldError::new(field, detail)]);
    let object = value
        .as_object()
        .ok_or_else(|| invalid("$", "must be a JSON object"))?;
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "messages") {
        return Err(invalid(unknown, "unknown field"));
    }
    let items = object
        .get("messages")
        .ok_or_else(|| invalid("messages", "is required"))?
        .as_array()
        .ok_or_else(|| invalid("messages", "must be an array"))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(invalid(
            "messages",
            &format!("must hold 1 to {MAX_BATCH} messages"),
        ));
    }
    Ok(items)
}

/// One message with its timeline.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key is over its request rate", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_message(
    State(app): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let tenant = match app.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return problem.into_response(),
    };
    // Not even text (invalid UTF-8 in the path): no message has that id either.
    let Some(Ok(id)) = id.ok().map(|Path(id)| id.parse::<MessageId>()) else {
        return Problem::not_found().into_response();
    };
    match app.history.get(&tenant.0, id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => Problem::not_found().into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "history read failed");
            Problem::unavailable("the history store is unavailable", RETRY_AFTER_SECONDS)
                .into_response()
        }
    }
}

/// Messages, newest first, filtered; keyset pagination through `next_cursor`.
#[utoipa::path(get, path = "/v1/messages", tag = "messages",
    params(
        ("to" = Option<String>, Query, description = "The recipient, exactly"), ("channel" = Option<String>, Query),
        ("status" = Option<Status>, Query),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{32}$", description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key is over its request rate", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_messages(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match app.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return problem.into_response(),
    };
    let filter = match parse_filter(&query) {
        Ok(filter) => filter,
        Err(problem) => return problem.into_response(),
    };
    match app.history.list(&tenant.0, &filter).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "history read failed");
            Problem::unavailable("the history store is unavailable", RETRY_AFTER_SECONDS)
                .into_response()
        }
    }
}

fn parse_filter(query: &HashMap<String, String>) -> Result<MessageFilter, Problem> {
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, Problem> {
        query
            .get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Problem::bad_query(name, "must be an RFC 3339 time"))
            })
            .transpose()
    };
    let limit = match query.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| Problem::bad_query("limit", "must be an integer from 1 to 1000"))?,
    };
    let status = query
        .get("status")
        .map(|v| {
            v.parse()
                .map_err(|e: String| Problem::bad_query("status", e))
        })
        .transpose()?;
    let before = query
        .get("cursor")
        .map(|c| {
            decode_cursor(c)
                .ok_or_else(|| Problem::bad_query("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    Ok(MessageFilter {
        to: query.get("to").cloned(),
        channel: query.get("channel").cloned(),
        status,
        since: time("since")?,
        until: time("until")?,
        before,
        limit,
    })
}

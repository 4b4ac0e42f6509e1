//! `/v1/segments`: a tenant's segments (boolean trees over traits, events, consent and random
//! buckets; `ump_automation::segment`), their size and their members. Writing a segment checks it
//! against the tenant's other segments (references, cycles) and has the processor look at every
//! person of the tenant again; membership is then kept as events arrive.

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
use serde_json::Value;
use ump_automation::segment::Segment;
use ump_core::audience::{Member, SIZE_HISTORY, SegmentError, SizePoint, StoredSegment};

const RETRY_AFTER_SECONDS: u64 = 5;
/// The most members one page lists.
pub const MAX_PAGE: u32 = 1000;

/// A segment as clients write it (the YAML files have the same shape).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents `ump_automation::segment::Segment`, which parses
pub struct SegmentRequest {
    /// 1 to 63 lowercase letters, digits and dashes; unique in the tenant. In `PUT`, the path's.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    id: String,
    name: Option<String>,
    /// A tree: `all` / `any` (lists), `not`, and the leaves `trait` ({path, equals | in | exists
    /// | gt | gte | lt | lte | within}), `performed` ({event, where, at_least, at_most, within}),
    /// `last_performed` ({event, older_than}), `consent` ({channel, purpose}), `bucket` ({from,
    /// to}) and `in_segment` (an id).
    condition: serde_json::Map<String, Value>,
}

/// A segment with its size.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SegmentView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    segment: StoredSegment,
    /// People in it now.
    size: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SegmentList {
    items: Vec<SegmentView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberPage {
    items: Vec<Member>,
    /// The `after` of the next page, when there is one.
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct MemberQuery {
    after: Option<String>,
    limit: Option<String>,
}

fn unavailable(e: ump_core::history::HistoryError) -> Problem {
    tracing::warn!(error = %e, "segment store failed");
    Problem::unavailable("the segment store is unavailable", RETRY_AFTER_SECONDS)
}

fn refused(e: SegmentError) -> Problem {
    match e {
        SegmentError::Invalid(errors) => Problem::validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.detail))
                .collect(),
        ),
        SegmentError::InUse(detail) => Problem::new(
            StatusCode::CONFLICT,
            "segment-in-use",
            "Another segment refers to this one",
            detail,
        ),
        SegmentError::Store(e) => unavailable(e),
    }
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such segment",
        "no segment with this id in this tenant",
    )
}

pub(crate) fn segment_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    match path {
        Ok(Path(id)) if valid_id(&id) => Ok(id),
        _ => Err(Problem::validation(vec![FieldError::new(
            "id",
            "1 to 63 lowercase letters, digits and dashes",
        )])),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The body as a segment; `path_id` (from `PUT`) fills a missing id and must match a given one.
fn parse(value: Value, path_id: Option<&str>) -> Result<Segment, Problem> {
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
    if !object.get("condition").is_some_and(Value::is_object) {
        return Err(invalid(
            "condition",
            "is required: an object such as {\"all\": [...]}",
        ));
    }
    parse_body(Value::Object(object))
}

pub(crate) async fn view(app: &AppState, tenant: &str, id: &str) -> Result<SegmentView, Problem> {
    let stored = app
        .segments
        .segments(tenant)
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|s| s.segment.id == id)
        .ok_or_else(not_found)?;
    let size = app
        .segments
        .segment_size(tenant, id)
        .await
        .map_err(unavailable)?;
    Ok(SegmentView {
        segment: stored,
        size,
    })
}

/// The tenant's segments with their sizes.
#[utoipa::path(get, path = "/v1/segments", tag = "segments",
    responses(
        (status = 200, body = SegmentList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn list_segments(State(app): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let stored = app
                .segments
                .segments(&tenant.0)
                .await
                .map_err(unavailable)?;
            let mut items = Vec::with_capacity(stored.len());
            for segment in stored {
                let size = app
                    .segments
                    .segment_size(&tenant.0, &segment.segment.id)
                    .await
                    .map_err(unavailable)?;
                items.push(SegmentView { segment, size });
            }
            Ok(Json(SegmentList { items }))
        }
        .await,
    )
}

/// Creates a segment; its members are found from the people's current state.
#[utoipa::path(post, path = "/v1/segments", tag = "segments",
    request_body = SegmentRequest,
    responses(
        (status = 201, description = "Created", body = SegmentView, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A segment with this id exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition (each field named), an unknown reference or a cycle", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn create_segment(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let segment = parse(value, None)?;
            let id = segment.id.clone();
            let exists = app
                .segments
                .segments(&tenant.0)
                .await
                .map_err(unavailable)?
                .iter()
                .any(|s| s.segment.id == id);
            if exists {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "segment-exists",
                    "A segment with this id exists",
                    format!("use PUT /v1/segments/{id} to change it"),
                ));
            }
            app.segments
                .put_segment(&tenant.0, segment, Utc::now())
                .await
                .map_err(refused)?;
            let view = view(&app, &tenant.0, &id).await?;
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, format!("/v1/segments/{id}"))],
                Json(view),
            ))
        }
        .await,
    )
}

/// Creates or replaces a segment.
#[utoipa::path(put, path = "/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = SegmentRequest,
    responses(
        (status = 200, description = "Replaced", body = SegmentView),
        (status = 201, description = "Created", body = SegmentView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn put_segment(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = segment_id(path)?;
            let (_, value) = read_json(&headers, body, SINGLE_LIMIT, app.body_timeout).await?;
            let segment = parse(value, Some(&id))?;
            let created = app
                .segments
                .put_segment(&tenant.0, segment, Utc::now())
                .await
                .map_err(refused)?;
            let view = view(&app, &tenant.0, &id).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(view)))
        }
        .await,
    )
}

/// A segment with its size.
#[utoipa::path(get, path = "/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = SegmentView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a segment id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn get_segment(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = segment_id(path)?;
            Ok(Json(view(&app, &tenant.0, &id).await?))
        }
        .await,
    )
}

/// Deletes a segment and its memberships.
#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another segment refers to it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a segment id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn delete_segment(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = segment_id(path)?;
            let deleted = app
                .segments
                .delete_segment(&tenant.0, &id, Utc::now())
                .await
                .map_err(refused)?;
            if deleted {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(not_found())
            }
        }
        .await,
    )
}

/// The members of a segment, a page at a time in `user_id` order.
#[utoipa::path(get, path = "/v1/segments/{id}/members", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$"),
           ("after" = Option<String>, Query, description = "The `next` of the previous page"),
           ("limit" = Option<u32>, Query, description = "1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, body = MemberPage),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a segment id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn members(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<MemberQuery>, QueryRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = segment_id(path)?;
            let Ok(Query(query)) = query else {
                return Err(Problem::bad_query(
                    "after",
                    "give after and limit once each",
                ));
            };
            let limit = match query.limit.as_deref().map(str::parse::<u32>) {
                None => 100,
                Some(Ok(n @ 1..=MAX_PAGE)) => n,
                Some(_) => {
                    return Err(Problem::bad_query(
                        "limit",
                        format!("must be an integer from 1 to {MAX_PAGE}"),
                    ));
                }
            };
            // Unknown segments are 404, not an empty page.
            view(&app, &tenant.0, &id).await?;
            let items = app
                .segments
                .members(&tenant.0, &id, query.after.as_deref(), limit)
                .await
                .map_err(unavailable)?;
            let next = (items.len() == limit as usize)
                .then(|| items.last().map(|m| m.user_id.clone()))
                .flatten();
            Ok(Json(MemberPage { items, next }))
        }
        .await,
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SizeHistory {
    /// Oldest first, about one a minute, the last 7 days.
    items: Vec<SizePoint>,
}

/// A segment's size over the last 7 days.
#[utoipa::path(get, path = "/v1/segments/{id}/sizes", tag = "segments",
    params(("id" = String, Path, description = "The segment's id", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = SizeHistory),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a segment id", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ),
    security(("api_key" = [])))]
pub async fn sizes(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond(
        async {
            let tenant = app.keys.authenticate(&headers).await?;
            let id = segment_id(path)?;
            view(&app, &tenant.0, &id).await?;
            let items = app
                .segments
                .sizes(&tenant.0, &id, Utc::now() - SIZE_HISTORY)
                .await
                .map_err(unavailable)?;
            Ok(Json(SizeHistory { items }))
        }
        .await,
    )
}

/// What the processor keeps of a person, as `GET /v1/users/{id}` adds it to the profile.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PersonActivity {
    /// The segments the person is in.
    pub segments: Vec<String>,
    /// Newest first: the person's latest events and segment entries and exits.
    #[schema(value_type = Vec<Object>)]
    pub recent_events: Vec<ump_automation::state::Event>,
    /// When time alone could next change a membership or move a journey.
    pub next_wake: Option<DateTime<Utc>>,
    /// The journeys the person is in now: where, since when, until when.
    pub journeys: Vec<JourneyPlace>,
    /// The journeys the person left, newest first (the latest ten): their journey timeline.
    pub past_journeys: Vec<PastJourney>,
}

/// A journey a person took part in and left.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PastJourney {
    pub journey: String,
    pub version: u32,
    /// Which entry of the person it was (1 for the first).
    pub entry: u32,
    pub entered_at: DateTime<Utc>,
    pub left_at: DateTime<Utc>,
    /// The step they left from.
    pub step: String,
    /// They reached the journey's goal.
    pub converted: bool,
}

impl From<ump_automation::journey::Past> for PastJourney {
    fn from(p: ump_automation::journey::Past) -> Self {
        Self {
            journey: p.journey,
            version: p.version,
            entry: p.entry,
            entered_at: p.entered_at,
            left_at: p.left_at,
            step: p.step,
            converted: p.converted,
        }
    }
}

/// Where a person is in a journey.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JourneyPlace {
    pub journey: String,
    pub version: u32,
    /// Which entry of the person this is (1 for the first).
    pub entry: u32,
    pub entered_at: DateTime<Utc>,
    pub step: String,
    /// When the step lets them go on (a delay's end, a wait's timeout, quiet hours' end).
    pub until: Option<DateTime<Utc>>,
    /// The split arm they are in.
    pub arm: Option<String>,
}

impl From<ump_automation::journey::Instance> for JourneyPlace {
    fn from(i: ump_automation::journey::Instance) -> Self {
        Self {
            journey: i.journey,
            version: i.version,
            entry: i.entry,
            entered_at: i.entered_at,
            step: i.step,
            until: i.until,
            arm: i.arm,
        }
    }
}

/// Segments from YAML in the API's shape: one segment, a list of them, or several documents
/// separated by `---`.
pub fn from_yaml(text: &str) -> Result<Vec<Segment>, String> {
    yaml_documents(text)
}

/// Definitions from YAML in the API's shape (segments, journeys): one, a list, or several
/// documents separated by `---`.
pub fn yaml_documents<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    let mut segments = Vec::new();
    for (n, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", n + 1))?;
        if value.is_null() {
            continue;
        }
        // Through JSON: the file means exactly what the same text means to the API.
        let json = serde_json::to_value(&value).map_err(|e| format!("document {}: {e}", n + 1))?;
        let one_or_many = if json.is_array() {
            serde_json::from_value::<Vec<T>>(json)
        } else {
            serde_json::from_value::<T>(json).map(|s| vec![s])
        };
        segments.extend(one_or_many.map_err(|e| format!("document {}: {e}", n + 1))?);
    }
    Ok(segments)
}

/// Creates or replaces `segments` in `tenant`, in an order where each comes after those it
/// refers to, each checked as `PUT /v1/segments/{id}` checks it. Returns each id with whether it
/// was new.
pub async fn apply(
    store: &dyn ump_core::audience::SegmentStore,
    tenant: &str,
    segments: Vec<Segment>,
) -> Result<Vec<(String, bool)>, String> {
    let ids: std::collections::BTreeSet<String> = segments.iter().map(|s| s.id.clone()).collect();
    let existing: Vec<Segment> = store
        .segments(tenant)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.segment)
        .filter(|s| !ids.contains(&s.id))
        .collect();
    let all =
        ump_automation::segment::SegmentSet::new(existing.into_iter().chain(segments).collect())
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
    let mut applied = Vec::new();
    for segment in all.segments().iter().filter(|s| ids.contains(&s.id)) {
        let created = store
            .put_segment(tenant, segment.clone(), Utc::now())
            .await
            .map_err(|e| match e {
                SegmentError::Invalid(errors) => errors
                    .iter()
                    .map(|e| format!("{}: {}: {}", segment.id, e.field, e.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            })?;
        applied.push((segment.id.clone(), created));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_holds_one_segment_a_list_or_several_documents() {
        let one = "id: vip\ncondition:\n  trait: {path: tier, equals: vip}\n";
        assert_eq!(from_yaml(one).unwrap()[0].id, "vip");
        let list = "- id: a\n  condition: {in_segment: b}\n- id: b\n  condition:\n    performed: {event: purchase, within: 30d}\n";
        let ids: Vec<String> = from_yaml(list).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b"]);
        let docs = format!("{one}---\n{list}---\n");
        assert_eq!(from_yaml(&docs).unwrap().len(), 3);
        let bad = from_yaml("id: x\ncondition: {sometimes: {}}\n").unwrap_err();
        assert!(bad.contains("document 1"), "{bad}");
    }

    #[tokio::test]
    async fn applying_puts_referenced_segments_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ump_core::sqlite::SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .unwrap();
        let list = "- id: a\n  condition: {in_segment: b}\n- id: b\n  condition:\n    performed: {event: purchase, within: 30d}\n";
        let applied = apply(&store, "t", from_yaml(list).unwrap()).await.unwrap();
        assert_eq!(applied, [("b".to_owned(), true), ("a".to_owned(), true)]);
        let again = apply(&store, "t", from_yaml(list).unwrap()).await.unwrap();
        assert!(again.iter().all(|(_, new)| !new));
        let cycle = "id: b\ncondition: {in_segment: a}\n";
        assert!(
            apply(&store, "t", from_yaml(cycle).unwrap())
                .await
                .unwrap_err()
                .contains("cycle")
        );
    }
}

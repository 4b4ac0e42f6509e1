//! The admin dashboard: a static page compiled into the binary (`GET /`, `GET /assets/<file>`, no
//! CDN, works offline) and the one JSON endpoint it adds to the API, `GET /v1/stats`. The page
//! signs in with an API key and reads everything through the tenant-scoped `/v1` endpoints.

use crate::AppState;
use crate::problem::Problem;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;
use ump_core::stats::Stats;

/// Styles may be inline because the outbox preview renders e-mail HTML (which styles itself
/// inline) in a sandboxed `srcdoc` frame, and such a frame inherits this policy. Scripts never
/// may: only the page's own file runs, and nothing is fetched from any other origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A file of the page, as compiled in.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/dashboard/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/dashboard/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/dashboard/favicon.svg"),
    },
];

const INDEX_TEMPLATE: &str = include_str!("../assets/dashboard/index.html");

/// Hash of every asset: the page links `/assets/<file>?v=<version>`, so a new build is fetched at
/// once while an unchanged one is cached for good.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = Sha256::new();
    for asset in ASSETS {
        hasher.update(asset.name.as_bytes());
        hasher.update(asset.body);
    }
    hex::encode(&hasher.finalize()[..8])
});

static INDEX: LazyLock<String> = LazyLock::new(|| INDEX_TEMPLATE.replace("{{version}}", &VERSION));

fn etag(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12]))
}

/// The entity tags of the page and of each asset (in the order of `ASSETS`), computed once.
static INDEX_ETAG: LazyLock<String> = LazyLock::new(|| etag(INDEX.as_bytes()));
static ASSET_ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body)).collect());

/// The routes of the dashboard, merged into the API's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/v1/stats", get(stats))
}

/// A static response with the page's security headers, or `304` when the client holds it.
fn static_response(
    request: &HeaderMap,
    content_type: &'static str,
    cache_control: &'static str,
    body: &'static [u8],
    tag: &str,
) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(tag) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn index(headers: HeaderMap) -> Response {
    // Revalidated on every load (a 304 when unchanged), so a new build's page is seen at once.
    static_response(
        &headers,
        "text/html; charset=utf-8",
        "no-cache",
        INDEX.as_bytes(),
        &INDEX_ETAG,
    )
}

async fn asset(
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some((asset, tag)) = ASSETS
        .iter()
        .zip(ASSET_ETAGS.iter())
        .find(|(a, _)| a.name == file)
    else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such file",
            "the dashboard has no file of this name",
        )
        .into_response();
    };
    let cache = if query.get("v") == Some(&*VERSION) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    static_response(&headers, asset.content_type, cache, asset.body, tag)
}

/// The windows `GET /v1/stats` offers (the `window` parameter's schema).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the contract (OpenAPI); `window` parses the name
pub enum StatsWindow {
    #[serde(rename = "1h")]
    OneHour,
    #[serde(rename = "24h")]
    OneDay,
}

/// A window `GET /v1/stats` offers: how far back, and the width of the series' buckets.
fn window(name: &str) -> Option<(chrono::Duration, Duration)> {
    match name {
        "1h" => Some((chrono::Duration::hours(1), Duration::from_secs(60))),
        "24h" => Some((chrono::Duration::hours(24), Duration::from_secs(15 * 60))),
        _ => None,
    }
}

/// Messages accepted in the window, by channel and current status, with the success rate and a
/// throughput series (per minute over 1 h, per 15 minutes over 24 h). Only the key's tenant.
#[utoipa::path(get, path = "/v1/stats", tag = "dashboard",
    params(("window" = Option<StatsWindow>, Query, description = "`1h` (default; one-minute buckets) or `24h` (15-minute buckets)")),
    responses(
        (status = 200, body = Stats),
        (status = 400, description = "`window` is not 1h or 24h", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad API key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key is over its request rate", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "The history store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn stats(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match app.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return problem.into_response(),
    };
    let name = query.get("window").map_or("1h", String::as_str);
    let Some((span, bucket)) = window(name) else {
        return Problem::bad_query("window", "must be 1h or 24h").into_response();
    };
    match app
        .history
        .stats(&tenant.0, Utc::now() - span, bucket)
        .await
    {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "history read failed");
            Problem::unavailable("the history store is unavailable", 5).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_its_assets_by_version() {
        for asset in ASSETS {
            let link = format!("/assets/{}?v={}", asset.name, *VERSION);
            assert!(INDEX.contains(&link), "index.html does not link {link}");
        }
        assert!(!INDEX.contains("{{"), "an unfilled placeholder is left");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in std::iter::once(INDEX.as_bytes()).chain(ASSETS.iter().map(|a| a.body)) {
            let text = String::from_utf8_lossy(text);
            for needle in [
                "http://",
                "https://",
                "//cdn",
                "innerHTML",
                "outerHTML",
                "eval(",
            ] {
                // The SVG namespace is an identifier, not a fetch.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{needle} found in a dashboard file");
            }
        }
    }

    #[test]
    fn windows_are_one_hour_by_minute_and_a_day_by_quarter_hour() {
        assert_eq!(
            window("1h"),
            Some((chrono::Duration::hours(1), Duration::from_secs(60)))
        );
        assert_eq!(
            window("24h").map(|(_, bucket)| bucket),
            Some(Duration::from_secs(900))
        );
        assert_eq!(window("7d"), None);
    }
}

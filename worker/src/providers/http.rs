//! What the HTTP providers share: the client (rustls, timeouts, no redirects) and the mapping of
//! transport errors, status codes and `Retry-After` onto `Outcome`.

use super::BuildError;
use super::limits::CallLimits;
use super::settings::Settings;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;
use ump_core::provider::Outcome;

/// A client for one provider. With `ca` (PEM), only that CA is trusted instead of the system
/// roots: for an endpoint behind a private CA (and the local fakes in tests).
pub fn client(
    settings: &Settings<'_>,
    limits: &CallLimits,
    ca: Option<&[u8]>,
    customize: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, BuildError> {
    ump_core::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("ump/", env!("CARGO_PKG_VERSION")))
        .timeout(limits.timeout())
        .connect_timeout(limits.timeout())
        // A provider API never redirects a send; following one would re-send credentials to
        // wherever the redirect points.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| settings.invalid(format!("CA certificate: {}", e.without_url())))?;
        builder = builder.tls_certs_only(certs);
    }
    customize(builder)
        .build()
        .map_err(|e| settings.invalid(format!("HTTP client: {}", e.without_url())))
}

/// A request that got no HTTP answer (connect, TLS, timeout, broken body): always worth another
/// try. The URL is left out: some providers carry account ids in it.
pub fn transport_failure(error: reqwest::Error) -> Outcome {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    Outcome::Retryable {
        reason: format!("{what}: {}", error_chain(&error.without_url())),
        retry_after: None,
    }
}

/// `error` and its sources on one line (reqwest's own message alone says little).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The classification every HTTP API shares, for answers the provider's own error codes do not
/// settle: 408, 429 and 5xx are worth another try, as is 401 (the credentials are wrong, not the
/// message: it should wait for a fixed Secret or another provider, not be dropped); any other
/// 4xx is permanent.
pub fn classify_status(status: StatusCode, headers: &HeaderMap, detail: &str) -> Outcome {
    let reason = if detail.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {detail}", status.as_u16())
    };
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retryable {
            reason,
            retry_after: retry_after(headers),
        }
    } else if status == StatusCode::UNAUTHORIZED {
        Outcome::Retryable {
            reason: format!("credentials rejected: {reason}"),
            retry_after: None,
        }
    } else {
        Outcome::Permanent { reason }
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3); a date in the past is "now".
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(text, chrono::Utc::now())
}

fn parse_retry_after(text: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The start of a response body, on one line, for a reason: enough to diagnose, never a page of
/// HTML from a proxy.
pub fn snippet(body: &str) -> String {
    const MAX_CHARS: usize = 200;
    let flat: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_CHARS + 1)
        .collect();
    if flat.chars().count() > MAX_CHARS {
        let cut: String = flat.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn status_classes() {
        let headers = HeaderMap::new();
        let retryable = |code: u16| {
            matches!(
                classify_status(StatusCode::from_u16(code).expect("status"), &headers, "x"),
                Outcome::Retryable { .. }
            )
        };
        for code in [408, 429, 500, 502, 503, 504, 401] {
            assert!(retryable(code), "{code}");
        }
        for code in [400, 403, 404, 410, 413, 422] {
            assert!(!retryable(code), "{code}");
        }
    }

    #[test]
    fn snippets_are_short_and_flat() {
        assert_eq!(snippet("a\n  b\tc"), "a b c");
        let long = "x".repeat(500);
        assert_eq!(snippet(&long).chars().count(), 201);
    }
}

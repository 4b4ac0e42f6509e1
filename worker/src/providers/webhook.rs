//! A generic webhook: each message is POSTed as JSON (`{id, channel, to, subject, text, html,
//! data, metadata}`) to a URL of the user's, signed so the receiver can check it came from UMP.
//!
//! Headers: `X-UMP-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the secret>`,
//! `X-UMP-Timestamp: <unix seconds>`, `Idempotency-Key: <message id>` (the same on every attempt,
//! so the receiver can drop a repeat).
//!
//! Settings: `url` (required); `timeout`; `maxConcurrency`; `caFile` (PEM of a private CA that
//! signs the receiver's certificate). Secret key: `signingSecret`.
//!
//! Classification: 2xx → sent; 408, 429 → retryable; any other 4xx → permanent; anything else
//! (3xx, 5xx, no answer) → retryable. A 2xx JSON answer's `id` becomes the provider message id.
//!
//! The receiver can later acknowledge what became of a message (delivered, failed) at the API's
//! `POST /v1/receipts/{channel}/{provider}`: `{"id": "<message id>", "status", "detail"?}`,
//! signed the same way with the same secret.

use super::http::{client, retry_after, snippet, transport_failure};
use super::limits::{self, CallLimits};
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use reqwest::StatusCode;
use serde_json::json;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

pub const SIGNATURE_HEADER: &str = "X-UMP-Signature";
pub const TIMESTAMP_HEADER: &str = "X-UMP-Timestamp";

pub struct WebhookProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    url: String,
    signing_secret: Secret,
}

/// `sha256=<hex>`: the value of `X-UMP-Signature` for `body` (one definition, which the API's
/// receipt check shares).
pub use ump_core::webhooks::receipt_signature as signature;

impl WebhookProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, limits::PER_CONNECTION)?;
        let url = settings.url("url")?;
        let ca = settings.pem_file("caFile")?;
        let client = client(&settings, &limits, ca.as_deref(), |b| b)?;
        Ok(Self {
            name: spec.name.clone(),
            client,
            limits,
            url,
            signing_secret: secrets.require("signingSecret")?,
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let body = json!({
            "id": message.id,
            "channel": message.channel,
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "data": message.data,
            "metadata": message.metadata,
        })
        .to_string();
        let response = match self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(self.signing_secret.expose().as_bytes(), body.as_bytes()),
            )
            .header(TIMESTAMP_HEADER, chrono::Utc::now().timestamp().to_string())
            .header("Idempotency-Key", message.id.to_string())
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return transport_failure(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        classify(status, &headers, &text)
    }
}

fn classify(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &str) -> Outcome {
    if status.is_success() {
        let id = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
        return Outcome::Sent {
            provider_message_id: id,
        };
    }
    let detail = snippet(body);
    let reason = if detail.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {detail}", status.as_u16())
    };
    let retryable_client_error =
        status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS;
    if status.is_client_error() && !retryable_client_error {
        Outcome::Permanent { reason }
    } else {
        Outcome::Retryable {
            reason,
            retry_after: retry_after(headers),
        }
    }
}

#[async_trait::async_trait]
impl super::Remote for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.signing_secret]
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn status_classes() {
        let h = reqwest::header::HeaderMap::new();
        let class = |code: u16| match classify(StatusCode::from_u16(code).expect("status"), &h, "")
        {
            Outcome::Sent { .. } => "sent",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        };
        for (code, expected) in [
            (200, "sent"),
            (204, "sent"),
            (301, "retryable"),
            (400, "permanent"),
            (404, "permanent"),
            (408, "retryable"),
            (410, "permanent"),
            (429, "retryable"),
            (500, "retryable"),
            (503, "retryable"),
        ] {
            assert_eq!(class(code), expected, "{code}");
        }
    }
}

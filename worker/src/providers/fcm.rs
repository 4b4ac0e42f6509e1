//! Push through Firebase Cloud Messaging HTTP v1: `POST {endpoint}/v1/projects/{project}/messages:send`
//! with an OAuth2 access token got for the service account (a JWT signed RS256 with its private
//! key, exchanged at its `token_uri`), cached and refreshed before it expires.
//!
//! Settings: `projectId` (default: the service account's `project_id`); `endpoint` (default
//! `https://fcm.googleapis.com`); `caFile` (PEM of the CA to trust instead of the system roots);
//! `timeout`; `maxConcurrency`; `adaptiveConcurrency`. Secret key: `service-account.json`
//! (the JSON key file Google issues: `client_email`, `private_key`, `private_key_id`, `token_uri`).
//!
//! The message: `to` is the registration token; `subject`/`text` become the notification's
//! title/body; `data` becomes the data payload (FCM takes strings only: other JSON values are
//! sent as their JSON text). The UMP message id is the Android collapse key and notification tag,
//! the APNs collapse id and the Web Push topic: should a worker die between FCM's acceptance and
//! its `sent` mark, the push sent again replaces the first on the device instead of showing twice.
//!
//! Classification (FCM's `error.details[].errorCode`, else the HTTP status):
//!
//! | answer | outcome |
//! |---|---|
//! | `UNREGISTERED`, HTTP 404 | permanent: "unregistered device token" |
//! | `INVALID_ARGUMENT`, `SENDER_ID_MISMATCH`, other 4xx | permanent |
//! | `QUOTA_EXCEEDED` / 429, `UNAVAILABLE` / 503, `INTERNAL` / 5xx | retryable (`Retry-After` honoured) |
//! | 401 (our access token refused: it is dropped and fetched anew), `THIRD_PARTY_AUTH_ERROR` | retryable |
//! | token endpoint unreachable or refusing the service account | retryable |

use super::http::{classify_status, client, retry_after, snippet, transport_failure};
use super::limits::{self, CallLimits};
use super::secret::{Secret, SecretFiles, redact_outcome};
use super::settings::Settings;
use super::{BuildError, ProviderContext, text_of};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// How long before its expiry an access token is replaced (at most half its lifetime).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The fields of a service-account key file this provider uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct CachedToken {
    value: Secret,
    refresh_at: Instant,
}

/// OAuth2 access tokens of one service account: one request per token lifetime, however many
/// sends run at once (the lock is held while a token is fetched, so concurrent sends wait for it
/// instead of each fetching their own).
struct AccessTokens {
    client: reqwest::Client,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    signing_key: EncodingKey,
    /// The PEM, kept only to redact it should an answer ever echo it.
    private_key: Secret,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

impl AccessTokens {
    async fn current(&self) -> Result<Secret, Outcome> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `token` after FCM refused it, unless a newer one has replaced it already.
    async fn discard(&self, token: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| &t.value == token) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, Outcome> {
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.signing_key).map_err(|e| {
            Outcome::Retryable {
                reason: format!("oauth token: cannot sign the assertion: {e}"),
                retry_after: None,
            }
        })?;
        let requested = Instant::now();
        let response = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", JWT_BEARER),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| token_failure(transport_failure(e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| token_failure(transport_failure(e)))?;
        if !status.is_success() {
            // Whatever the token endpoint says, the message is not at fault: wait for the
            // endpoint or a fixed Secret (or another provider).
            let detail = format!("HTTP {}: {}", status.as_u16(), snippet(&body));
            return Err(Outcome::Retryable {
                reason: format!("oauth token: {}", self.private_key.redact(&detail)),
                retry_after: retry_after(&headers),
            });
        }
        let answer: TokenAnswer = serde_json::from_str(&body).map_err(|_| Outcome::Retryable {
            reason: "oauth token: the answer has no access_token".into(),
            retry_after: None,
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken {
            value: Secret::new(answer.access_token),
            refresh_at: requested + lifetime - margin,
        })
    }
}

fn token_failure(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Retryable {
            reason,
            retry_after,
        } => Outcome::Retryable {
            reason: format!("oauth token: {reason}"),
            retry_after,
        },
        other => other,
    }
}

pub struct FcmProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    /// Parsed once; reqwest would parse a text again for every call.
    send_url: reqwest::Url,
    tokens: AccessTokens,
}

impl FcmProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, limits::MULTIPLEXED)?;
        let endpoint = settings.endpoint("endpoint", DEFAULT_ENDPOINT)?;
        let key_file = secrets.require("service-account.json")?;
        // The parse error could quote the file; say only where it is wrong.
        let key: ServiceAccountKey = serde_json::from_str(key_file.expose()).map_err(|e| {
            settings.invalid(format!(
                "secret key \"service-account.json\" is not a service-account key file \
                 (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let signing_key = EncodingKey::from_rsa_pem(key.private_key.as_bytes()).map_err(|_| {
            settings.invalid(
                "the service account's private_key is not an RSA private key in PEM".into(),
            )
        })?;
        let project = settings
            .get("projectId")
            .map(str::to_owned)
            .or(key.project_id)
            .ok_or_else(|| {
                settings
                    .invalid("set \"projectId\" (the service account names no project_id)".into())
            })?;
        // The project goes into the URL path: refuse anything that would change the path.
        if !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(settings.invalid(format!("projectId {project:?} is not a project id")));
        }
        let token_uri = key
            .token_uri
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        if reqwest::Url::parse(&token_uri).is_err() {
            return Err(settings.invalid("the service account's token_uri is not a URL".into()));
        }
        let send_url =
            reqwest::Url::parse(&format!("{endpoint}/v1/projects/{project}/messages:send"))
                .map_err(|e| settings.invalid(format!("setting \"endpoint\": {e}")))?;
        let ca = settings.pem_file("caFile")?;
        // HTTP/2 where the server offers it in ALPN (FCM does): the calls in flight share one
        // connection as streams.
        let client = client(&settings, &limits, ca.as_deref(), |b| b)?;
        Ok(Self {
            name: spec.name.clone(),
            send_url,
            tokens: AccessTokens {
                client: client.clone(),
                token_uri,
                client_email: key.client_email,
                key_id: key.private_key_id,
                signing_key,
                private_key: Secret::new(key.private_key),
                cached: tokio::sync::Mutex::new(None),
            },
            client,
            limits,
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        if message.to.trim().is_empty() {
            return Outcome::Permanent {
                reason: "empty device token".into(),
            };
        }
        let token = match self.tokens.current().await {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let response = match self
            .client
            .post(self.send_url.clone())
            .bearer_auth(token.expose())
            .json(&request_body(message))
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return transport_failure(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) => return transport_failure(e),
        };
        if status == StatusCode::UNAUTHORIZED {
            self.tokens.discard(&token).await;
        }
        redact_outcome(classify(status, &headers, &body), &[&token])
    }
}

fn request_body(message: &Outgoing) -> Value {
    let mut notification = Map::new();
    if let Some(subject) = &message.subject {
        notification.insert("title".into(), json!(subject));
    }
    notification.insert("body".into(), json!(message.text));
    let mut fcm_message = Map::new();
    fcm_message.insert("token".into(), json!(message.to));
    fcm_message.insert("notification".into(), Value::Object(notification));
    if !message.data.is_empty() {
        let data: Map<String, Value> = message
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(text_of(v))))
            .collect();
        fcm_message.insert("data".into(), Value::Object(data));
    }
    let collapse = message.id.0.simple().to_string();
    fcm_message.insert(
        "android".into(),
        json!({"collapse_key": collapse, "notification": {"tag": collapse}}),
    );
    fcm_message.insert(
        "apns".into(),
        json!({"headers": {"apns-collapse-id": collapse}}),
    );
    // Web Push's Topic: at most 32 URL-safe characters, which the id's 32 hex digits are.
    fcm_message.insert("webpush".into(), json!({"headers": {"Topic": collapse}}));
    json!({ "message": fcm_message })
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorStatus,
}

#[derive(Deserialize)]
struct ErrorStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "errorCode", default)]
    error_code: Option<String>,
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    if status.is_success() {
        let name = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
        return Outcome::Sent {
            provider_message_id: name,
        };
    }
    let error = serde_json::from_str::<ErrorAnswer>(body)
        .ok()
        .map(|a| a.error);
    let code = error
        .as_ref()
        .and_then(|e| e.details.iter().find_map(|d| d.error_code.clone()))
        .or_else(|| error.as_ref().map(|e| e.status.clone()))
        .unwrap_or_default();
    let message = error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| snippet(body));
    if code == "UNREGISTERED" || status == StatusCode::NOT_FOUND {
        return Outcome::Permanent {
            reason: format!("unregistered device token ({code}: {message})"),
        };
    }
    let reason = format!("fcm {code}: {message}");
    match code.as_str() {
        // As every HTTP API's 429 and 5xx (so the concurrency limit reads 429 and 503 as
        // overload), and retryable whatever status came with them.
        "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" => {
            match classify_status(status, headers, &reason) {
                retryable @ Outcome::Retryable { .. } => retryable,
                _ => Outcome::Retryable {
                    reason,
                    retry_after: retry_after(headers),
                },
            }
        }
        "THIRD_PARTY_AUTH_ERROR" => Outcome::Retryable {
            reason: format!("credentials rejected: {reason}"),
            retry_after: None,
        },
        "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH" => Outcome::Permanent { reason },
        _ => classify_status(status, headers, &reason),
    }
}

#[async_trait::async_trait]
impl super::Remote for FcmProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.tokens.private_key]
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: u16, status: &str, error_code: Option<&str>) -> (StatusCode, String) {
        let details = error_code.map_or(json!([]), |c| {
            json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}])
        });
        (
            StatusCode::from_u16(code).expect("status"),
            json!({"error": {"code": code, "message": "m", "status": status, "details": details}})
                .to_string(),
        )
    }

    #[test]
    fn error_codes() {
        let h = HeaderMap::new();
        let (s, b) = error(404, "NOT_FOUND", Some("UNREGISTERED"));
        assert!(matches!(classify(s, &h, &b),
            Outcome::Permanent { reason } if reason.starts_with("unregistered device token")));
        let (s, b) = error(400, "INVALID_ARGUMENT", Some("UNREGISTERED"));
        assert!(matches!(classify(s, &h, &b),
            Outcome::Permanent { reason } if reason.starts_with("unregistered device token")));
        let (s, b) = error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"));
        assert!(matches!(classify(s, &h, &b), Outcome::Permanent { .. }));
        // Quota and unavailability are overload to the concurrency limit; an internal error is not.
        use super::super::limits::Signal;
        let (s, b) = error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"));
        let quota = classify(s, &h, &b);
        assert!(matches!(quota, Outcome::Retryable { .. }));
        assert_eq!(Signal::of(&quota), Signal::Overloaded);
        let (s, b) = error(503, "UNAVAILABLE", Some("UNAVAILABLE"));
        let unavailable = classify(s, &h, &b);
        assert!(matches!(unavailable, Outcome::Retryable { .. }));
        assert_eq!(Signal::of(&unavailable), Signal::Overloaded);
        let (s, b) = error(500, "INTERNAL", Some("INTERNAL"));
        let internal = classify(s, &h, &b);
        assert!(matches!(internal, Outcome::Retryable { .. }));
        assert_eq!(Signal::of(&internal), Signal::Neutral);
        let (s, b) = error(400, "FAILED_PRECONDITION", Some("QUOTA_EXCEEDED"));
        assert!(matches!(classify(s, &h, &b), Outcome::Retryable { .. }));
        let (s, b) = error(503, "UNAVAILABLE", None);
        assert!(matches!(classify(s, &h, &b), Outcome::Retryable { .. }));
        let (s, b) = error(401, "UNAUTHENTICATED", None);
        assert!(matches!(classify(s, &h, &b), Outcome::Retryable { .. }));
        assert_eq!(
            classify(StatusCode::OK, &h, r#"{"name":"projects/p/messages/1"}"#),
            Outcome::Sent {
                provider_message_id: Some("projects/p/messages/1".into())
            }
        );
    }

    #[test]
    fn data_values_become_strings() {
        let mut message = Outgoing {
            id: ump_core::model::MessageId::new(),
            tenant: "t".into(),
            channel: "push".into(),
            channel_type: ump_core::resources::ChannelType::Push,
            to: "device".into(),
            subject: None,
            text: "hi".into(),
            html: None,
            template: None,
            data: Map::new(),
            metadata: Map::new(),
            category: Default::default(),
            attempt: 1,
        };
        message.data.insert("n".into(), json!(3));
        message.data.insert("s".into(), json!("x"));
        let body = request_body(&message);
        assert_eq!(body["message"]["data"], json!({"n": "3", "s": "x"}));
        assert_eq!(body["message"]["notification"], json!({"body": "hi"}));
        // A repeat of the same message replaces the first on the device.
        let collapse = message.id.0.simple().to_string();
        assert_eq!(body["message"]["android"]["collapse_key"], json!(collapse));
        assert_eq!(
            body["message"]["android"]["notification"]["tag"],
            json!(collapse)
        );
        assert_eq!(
            body["message"]["apns"]["headers"]["apns-collapse-id"],
            json!(collapse)
        );
        assert_eq!(
            body["message"]["webpush"]["headers"]["Topic"],
            json!(collapse)
        );
    }
}

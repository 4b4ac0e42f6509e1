//! Push to Apple devices through APNs: HTTP/2 over TLS, `POST {endpoint}/3/device/{token}`,
//! authenticated with a provider token (a JWT signed ES256 with the team's `.p8` key, `kid` = key
//! id, `iss` = team id) that is reused until `tokenLifetime` and then signed anew.
//!
//! Settings: `teamId`, `keyId`, `topic` (the app's bundle id) — required; `pushType` (`alert`
//! default, `background`, …); `priority` (10 for alerts, 5 for background by default);
//! `tokenLifetime` (default 50m; Apple rejects tokens older than 60 minutes and asks for no more
//! than one new token per 20 minutes); `endpoint` (default `https://api.push.apple.com`, the
//! sandbox is `https://api.sandbox.push.apple.com`); `caFile` (PEM of the CA to trust instead of
//! the system roots); `timeout`; `maxConcurrency`. Secret key: `authKey.p8`.
//!
//! Headers: `apns-topic`, `apns-push-type`, `apns-priority`, `apns-id` = the UMP message id (so
//! APNs answers and reports with our id), and `apns-collapse-id` = the message id too: should a
//! worker die between APNs's acceptance and its `sent` mark, the push sent again replaces the
//! first on the device instead of showing twice. The payload is `{"aps": {"alert": {"title", "body"}}}`
//! (`{"aps": {"content-available": 1}}` for background pushes) plus the send's `data` keys.
//!
//! Classification (the `reason` of APNs's JSON answer, else the HTTP status):
//!
//! | answer | outcome |
//! |---|---|
//! | 410, `Unregistered` | permanent: "unregistered device token" |
//! | `BadDeviceToken`, `DeviceTokenNotForTopic` | permanent |
//! | 403 `ExpiredProviderToken` / `InvalidProviderToken` / `MissingProviderToken` | retryable; the token is dropped and signed anew |
//! | 429 `TooManyRequests`, 500, 503 | retryable (`Retry-After` honoured) |
//! | any other 4xx (`PayloadTooLarge`, `BadTopic`, …) | permanent |

use super::http::{classify_status, client, snippet, transport_failure};
use super::limits::{self, CallLimits};
use super::secret::{Secret, SecretFiles, redact_outcome};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

const DEFAULT_ENDPOINT: &str = "https://api.push.apple.com";
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

#[derive(Serialize)]
struct TokenClaims<'a> {
    iss: &'a str,
    iat: i64,
}

/// Provider tokens of one signing key: signed once per lifetime, shared by all sends.
struct ProviderTokens {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    lifetime: Duration,
    /// The `.p8` PEM, kept only to redact it should an answer ever echo it.
    key_pem: Secret,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl ProviderTokens {
    fn current(&self) -> Result<Secret, Outcome> {
        // Signing is quick and synchronous, so a plain mutex held across it is fine.
        let mut cached = self.cached.lock().map_err(|_| Outcome::Retryable {
            reason: "provider token cache poisoned".into(),
            retry_after: None,
        })?;
        if let Some((token, signed)) = cached.as_ref()
            && signed.elapsed() < self.lifetime
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = TokenClaims {
            iss: &self.team_id,
            iat: chrono::Utc::now().timestamp(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| Outcome::Retryable {
                reason: format!("cannot sign the provider token: {e}"),
                retry_after: None,
            })?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Forgets `token` after APNs refused it, unless a newer one has replaced it already.
    fn discard(&self, token: &Secret) {
        if let Ok(mut cached) = self.cached.lock()
            && cached.as_ref().is_some_and(|(t, _)| t == token)
        {
            *cached = None;
        }
    }
}

pub struct ApnsProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    /// `{endpoint}/3/device/`, parsed once: each call only adds its device token.
    devices: reqwest::Url,
    topic: String,
    push_type: String,
    priority: String,
    tokens: ProviderTokens,
}

impl ApnsProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, limits::MULTIPLEXED)?;
        let endpoint = settings.endpoint("endpoint", DEFAULT_ENDPOINT)?;
        let devices = reqwest::Url::parse(&format!("{endpoint}/3/device/"))
            .map_err(|e| settings.invalid(format!("setting \"endpoint\": {e}")))?;
        let push_type = settings.get("pushType").unwrap_or("alert").to_owned();
        let default_priority = if push_type == "background" { "5" } else { "10" };
        let priority = settings
            .get("priority")
            .unwrap_or(default_priority)
            .to_owned();
        let lifetime = settings.duration("tokenLifetime", DEFAULT_TOKEN_LIFETIME)?;
        if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
            return Err(settings
                .invalid("setting \"tokenLifetime\" must be more than 0s and at most 60m".into()));
        }
        let key_pem = secrets.require("authKey.p8")?;
        let key = EncodingKey::from_ec_pem(key_pem.expose().as_bytes()).map_err(|_| {
            settings
                .invalid("secret key \"authKey.p8\" is not an EC (P-256) private key in PEM".into())
        })?;
        let ca = settings.pem_file("caFile")?;
        // APNs speaks only HTTP/2: offer nothing else in ALPN.
        let client = client(&settings, &limits, ca.as_deref(), |b| {
            b.http2_prior_knowledge()
        })?;
        Ok(Self {
            name: spec.name.clone(),
            client,
            limits,
            devices,
            topic: settings.require("topic")?.to_owned(),
            push_type,
            priority,
            tokens: ProviderTokens {
                key,
                key_id: settings.require("keyId")?.to_owned(),
                team_id: settings.require("teamId")?.to_owned(),
                lifetime,
                key_pem,
                cached: Mutex::new(None),
            },
        })
    }

    fn payload(&self, message: &Outgoing) -> Value {
        let aps = if self.push_type == "background" {
            json!({ "content-available": 1 })
        } else {
            let mut alert = Map::new();
            if let Some(subject) = &message.subject {
                alert.insert("title".into(), json!(subject));
            }
            alert.insert("body".into(), json!(message.text));
            json!({ "alert": alert })
        };
        let mut payload: Map<String, Value> = message
            .data
            .iter()
            .filter(|(k, _)| k.as_str() != "aps")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        payload.insert("aps".into(), aps);
        Value::Object(payload)
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        // The token goes into the URL path; APNs tokens are hex.
        let device = message.to.trim();
        if device.is_empty() || device.len() > 200 || !device.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Outcome::Permanent {
                reason: "bad device token (not a hex APNs token)".into(),
            };
        }
        let Ok(url) = self.devices.join(device) else {
            return Outcome::Permanent {
                reason: "bad device token (not a hex APNs token)".into(),
            };
        };
        let token = match self.tokens.current() {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let response = match self
            .client
            .post(url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", token.expose()),
            )
            .header("apns-topic", &self.topic)
            .header("apns-push-type", &self.push_type)
            .header("apns-priority", &self.priority)
            .header("apns-id", message.id.to_string())
            .header("apns-collapse-id", message.id.to_string())
            .json(&self.payload(message))
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return transport_failure(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        let outcome = classify(status, &headers, &body);
        if status == StatusCode::FORBIDDEN && reason_of(&body).ends_with("ProviderToken") {
            self.tokens.discard(&token);
        }
        redact_outcome(outcome, &[&token])
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    reason: String,
}

fn reason_of(body: &str) -> String {
    serde_json::from_str::<ErrorAnswer>(body)
        .map(|a| a.reason)
        .unwrap_or_default()
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    if status.is_success() {
        let id = headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return Outcome::Sent {
            provider_message_id: id,
        };
    }
    let reason = reason_of(body);
    match reason.as_str() {
        "Unregistered" => Outcome::Permanent {
            reason: "unregistered device token (Unregistered)".into(),
        },
        _ if status == StatusCode::GONE => Outcome::Permanent {
            reason: format!("unregistered device token ({reason})"),
        },
        "BadDeviceToken" | "DeviceTokenNotForTopic" => Outcome::Permanent {
            reason: format!("bad device token ({reason})"),
        },
        "ExpiredProviderToken" | "InvalidProviderToken" | "MissingProviderToken" => {
            Outcome::Retryable {
                reason: format!("credentials rejected: apns {reason}"),
                retry_after: None,
            }
        }
        "" => classify_status(status, headers, &snippet(body)),
        _ => classify_status(status, headers, &format!("apns {reason}")),
    }
}

#[async_trait::async_trait]
impl super::Remote for ApnsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.tokens.key_pem]
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let h = HeaderMap::new();
        let class = |code: u16, reason: &str| {
            classify(
                StatusCode::from_u16(code).expect("status"),
                &h,
                &json!({ "reason": reason }).to_string(),
            )
        };
        assert!(matches!(class(410, "Unregistered"),
            Outcome::Permanent { reason } if reason.starts_with("unregistered device token")));
        assert!(matches!(class(410, "ExpiredToken"),
            Outcome::Permanent { reason } if reason.starts_with("unregistered device token")));
        assert!(matches!(class(400, "BadDeviceToken"),
            Outcome::Permanent { reason } if reason.starts_with("bad device token")));
        assert!(matches!(
            class(403, "ExpiredProviderToken"),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            class(429, "TooManyRequests"),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            class(503, "ServiceUnavailable"),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            class(413, "PayloadTooLarge"),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(class(400, "BadTopic"), Outcome::Permanent { .. }));
    }
}

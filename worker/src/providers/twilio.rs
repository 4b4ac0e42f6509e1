//! SMS through Twilio's Messages API: `POST {endpoint}/2010-04-01/Accounts/{AccountSid}/Messages.json`
//! with Basic auth (Account SID + Auth Token) and a form body; the answer's `sid` is the provider
//! message id.
//!
//! Settings: `from` (a Twilio number) or `messagingServiceSid`; `statusCallback` (URL for delivery
//! receipts: the API's `/v1/receipts/{channel}/{provider}` as Twilio reaches it; the API checks
//! Twilio's signature against this exact URL); `endpoint` (default `https://api.twilio.com`);
//! `timeout`; `maxConcurrency`. Secret keys: `accountSid`, `authToken`.
//!
//! Classification of an error answer (`{"code", "message", "status"}`):
//!
//! | answer | outcome |
//! |---|---|
//! | 429, 5xx, code 20429 / 20500 / 20503 / 30001 | retryable (`Retry-After` honoured) |
//! | 401, code 20003 (authenticate) | retryable: the credentials are wrong, not the message |
//! | any other 4xx (e.g. 21211 invalid `To`, 21610 unsubscribed, 21408 region not enabled) | permanent |

use super::http::{classify_status, client, retry_after, snippet, transport_failure};
use super::limits::{self, CallLimits};
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use reqwest::StatusCode;
use serde::Deserialize;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

const DEFAULT_ENDPOINT: &str = "https://api.twilio.com";

/// Twilio error codes that mean "later", whatever the HTTP status says.
const RETRYABLE_CODES: &[i64] = &[20429, 20500, 20503, 30001];
/// Twilio error codes that mean the account's credentials were refused.
const CREDENTIAL_CODES: &[i64] = &[20003];

enum Sender {
    From(String),
    MessagingService(String),
}

pub struct TwilioProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    messages_url: String,
    account_sid: Secret,
    auth_token: Secret,
    sender: Sender,
    status_callback: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

impl TwilioProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, limits::PER_CONNECTION)?;
        let endpoint = settings.endpoint("endpoint", DEFAULT_ENDPOINT)?;
        let sender = match (settings.get("from"), settings.get("messagingServiceSid")) {
            (Some(from), None) => Sender::From(from.to_owned()),
            (None, Some(sid)) => Sender::MessagingService(sid.to_owned()),
            _ => {
                return Err(settings.invalid(
                    "set exactly one of the settings \"from\" and \"messagingServiceSid\"".into(),
                ));
            }
        };
        let account_sid = secrets.require("accountSid")?;
        // The SID goes into the URL path: refuse anything that would change the path.
        if !account_sid
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(settings.invalid("secret key \"accountSid\" is not an account SID".into()));
        }
        let client = client(&settings, &limits, None, |b| b)?;
        Ok(Self {
            name: spec.name.clone(),
            client,
            messages_url: format!(
                "{endpoint}/2010-04-01/Accounts/{}/Messages.json",
                account_sid.expose()
            ),
            limits,
            auth_token: secrets.require("authToken")?,
            account_sid,
            sender,
            status_callback: settings.get("statusCallback").map(str::to_owned),
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let mut form: Vec<(&str, &str)> =
            vec![("To", message.to.as_str()), ("Body", message.text.as_str())];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(url) = &self.status_callback {
            form.push(("StatusCallback", url));
        }
        let response = match self
            .client
            .post(&self.messages_url)
            .basic_auth(self.account_sid.expose(), Some(self.auth_token.expose()))
            .form(&form)
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
        classify(status, &headers, &body)
    }
}

fn classify(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &str) -> Outcome {
    if status.is_success() {
        // Twilio took the message; an unreadable body must not turn into a re-send.
        let sid = serde_json::from_str::<Created>(body)
            .ok()
            .and_then(|c| c.sid);
        return Outcome::Sent {
            provider_message_id: sid,
        };
    }
    let Ok(ErrorBody {
        code: Some(code),
        message,
    }) = serde_json::from_str::<ErrorBody>(body)
    else {
        return classify_status(status, headers, &snippet(body));
    };
    let reason = format!("twilio {code}: {}", message.as_deref().unwrap_or("error"));
    if RETRYABLE_CODES.contains(&code)
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retryable {
            reason,
            retry_after: retry_after(headers),
        }
    } else if CREDENTIAL_CODES.contains(&code) || status == StatusCode::UNAUTHORIZED {
        Outcome::Retryable {
            reason: format!("credentials rejected: {reason}"),
            retry_after: None,
        }
    } else {
        Outcome::Permanent { reason }
    }
}

#[async_trait::async_trait]
impl super::Remote for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.auth_token, &self.account_sid]
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn error_codes() {
        let h = HeaderMap::new();
        let body = |code: i64| format!(r#"{{"code":{code},"message":"m","status":400}}"#);
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h, &body(21211)),
            Outcome::Permanent { reason } if reason == "twilio 21211: m"
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, &body(20429)),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &h, &body(20003)),
            Outcome::Retryable { reason, .. } if reason.starts_with("credentials rejected")
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &h, "<html>bad gateway</html>"),
            Outcome::Retryable { .. }
        ));
        assert_eq!(
            classify(StatusCode::CREATED, &h, r#"{"sid":"SM1"}"#),
            Outcome::Sent {
                provider_message_id: Some("SM1".into())
            }
        );
    }
}

//! Kakao AlimTalk through NHN Cloud BizMessage v2.3: `POST {endpoint}/alimtalk/v2.3/appkeys/{appKey}/messages`
//! with the `X-Secret-Key` header and `{senderKey, templateCode, recipientList: [{recipientNo,
//! templateParameter, buttons?, resendParameter}]}`.
//!
//! The template code is the send's `template` (the stored template it was rendered from), else the
//! `templateCode` setting. `templateParameter` is the send's `data` (values as text); a `buttons`
//! array in `data` goes out as the recipient's `buttons`.
//!
//! NHN can itself resend a failed AlimTalk as SMS/LMS (`resendParameter`). UMP's own fallback
//! (DeliveryPolicy `fallback`) is usually the better place for that, so it is off unless the
//! `resend` setting is true; `isResend` is always sent, so the NHN console's default never
//! decides silently. The resend text is the message's `text`, SMS or LMS by its length.
//!
//! Settings: `templateCode` (default template); `resend` (default false); `resendSendNo` (the
//! registered SMS sender number, required with `resend`); `endpoint` (default
//! `https://api-alimtalk.cloud.toast.com`); `timeout`; `maxConcurrency`. Secret keys: `appKey`,
//! `secretKey`, `senderKey` (the Kakao channel's sender key).
//!
//! Classification. Kakao's result codes (as NHN relays them) are mapped wherever they appear, by
//! [`result_outcome`], so a delivery-receipt poller can reuse it. Reasons of the two permanent
//! failures that an SMS would fix start with a prefix the pipeline can match ([`FALLBACK_PREFIXES`]):
//!
//! | code | meaning | outcome |
//! |---|---|---|
//! | 0, 1000 | accepted / delivered | sent, id = `requestId` |
//! | 3018 | NoSendAvailable: not a KakaoTalk user, or the user blocked the channel or AlimTalk | permanent, `not_kakao_user: …` |
//! | 3015, 3016 | template not found / text does not match the approved template | permanent, `template_rejected: …` |
//! | 3025, 3027–3031 | variables, buttons, title, type or header do not match the template | permanent, `template_rejected: …` |
//! | 3008 | invalid phone number | permanent |
//! | 1003, 1006, 1007 | sender key invalid / deleted / blocked | retryable: the account is at fault, not the message |
//! | -1000, -1001, -1002, -1004, -1005 (NHN header) | app key / service / secret key problems | retryable (as above) |
//! | 3000, 3005, 3006, 9998, 9999 | Kakao system errors, ack timeout | retryable |
//! | HTTP 429, 5xx, 408 | | retryable (`Retry-After` honoured) |
//! | any other code | | permanent |

use super::http::{classify_status, client, retry_after, snippet};
use super::limits::CallLimits;
use super::nhn::RecipientResult;
use super::nhn_sms::{KoreanNumber, korean_number, resend_type};
use super::secret::{Secret, SecretFiles, redact_outcome};
use super::settings::Settings;
use super::{BuildError, ProviderContext, text_of};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::ProviderSpec;

const DEFAULT_ENDPOINT: &str = "https://api-alimtalk.cloud.toast.com";

/// Reason prefix: the recipient cannot get AlimTalk (no KakaoTalk, channel or AlimTalk blocked).
pub const NOT_KAKAO_USER: &str = "not_kakao_user";
/// Reason prefix: Kakao refused the template or the message's fit to it.
pub const TEMPLATE_REJECTED: &str = "template_rejected";
/// Prefixes of permanent reasons that an SMS fallback would fix.
pub const FALLBACK_PREFIXES: &[&str] = &[NOT_KAKAO_USER, TEMPLATE_REJECTED];

/// Whether a permanent `reason` from this provider is one an SMS fallback would fix.
pub fn wants_sms_fallback(reason: &str) -> bool {
    FALLBACK_PREFIXES.iter().any(|prefix| {
        reason
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(':'))
    })
}

const NOT_KAKAO_USER_CODES: &[i64] = &[3018];
const TEMPLATE_CODES: &[i64] = &[3015, 3016, 3025, 3027, 3028, 3029, 3030, 3031];
const ACCOUNT_CODES: &[i64] = &[1003, 1006, 1007, -1000, -1001, -1002, -1004, -1005];
const SYSTEM_CODES: &[i64] = &[3000, 3005, 3006, 9998, 9999];

/// The outcome of a Kakao/NHN result code with its message.
pub fn result_outcome(code: i64, message: &str) -> Outcome {
    let detail = format!("kakao {code}: {message}");
    if code == 0 || code == 1000 {
        Outcome::Sent {
            provider_message_id: None,
        }
    } else if NOT_KAKAO_USER_CODES.contains(&code) {
        Outcome::Permanent {
            reason: format!("{NOT_KAKAO_USER}: {detail}"),
        }
    } else if TEMPLATE_CODES.contains(&code) {
        Outcome::Permanent {
            reason: format!("{TEMPLATE_REJECTED}: {detail}"),
        }
    } else if ACCOUNT_CODES.contains(&code) {
        Outcome::Retryable {
            reason: format!("account rejected: {detail}"),
            retry_after: None,
        }
    } else if SYSTEM_CODES.contains(&code) {
        Outcome::Retryable {
            reason: detail,
            retry_after: None,
        }
    } else {
        Outcome::Permanent { reason: detail }
    }
}

struct Resend {
    send_no: String,
}

pub struct NhnAlimtalkProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    messages_url: String,
    app_key: Secret,
    secret_key: Secret,
    sender_key: Secret,
    default_template: Option<String>,
    resend: Option<Resend>,
}

#[derive(Deserialize)]
struct Answer {
    header: AnswerHeader,
    #[serde(default)]
    message: Option<AnswerMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerHeader {
    is_successful: bool,
    result_code: i64,
    #[serde(default)]
    result_message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerMessage {
    request_id: Option<String>,
    #[serde(default)]
    send_results: Vec<RecipientResult>,
}

impl NhnAlimtalkProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings)?;
        let endpoint = settings.endpoint("endpoint", DEFAULT_ENDPOINT)?;
        let app_key = super::nhn::app_key(&settings, &secrets)?;
        let resend = if settings.flag("resend", false)? {
            Some(Resend {
                send_no: settings.require("resendSendNo")?.to_owned(),
            })
        } else {
            None
        };
        let client = client(&settings, &limits, None, |b| b)?;
        Ok(Self {
            name: spec.name.clone(),
            client,
            messages_url: format!(
                "{endpoint}/alimtalk/v2.3/appkeys/{}/messages",
                app_key.expose()
            ),
            limits,
            app_key,
            secret_key: secrets.require("secretKey")?,
            sender_key: secrets.require("senderKey")?,
            default_template: settings.get("templateCode").map(str::to_owned),
            resend,
        })
    }

    fn recipient(&self, message: &Outgoing, recipient_no: String) -> Value {
        let mut parameters = Map::new();
        let mut buttons = None;
        for (key, value) in &message.data {
            match value {
                Value::Array(list) if key == "buttons" => buttons = Some(list.clone()),
                _ => {
                    parameters.insert(key.clone(), Value::String(text_of(value)));
                }
            }
        }
        let resend = match &self.resend {
            None => json!({ "isResend": false }),
            Some(resend) => {
                let kind = resend_type(&message.text);
                let mut parameter = json!({
                    "isResend": true,
                    "resendType": kind,
                    "resendContent": message.text,
                    "resendSendNo": resend.send_no,
                });
                if let (Some(subject), "LMS") = (&message.subject, kind) {
                    parameter["resendTitle"] = json!(subject);
                }
                parameter
            }
        };
        let mut recipient = json!({
            "recipientNo": recipient_no,
            "templateParameter": parameters,
            "resendParameter": resend,
        });
        if let Some(buttons) = buttons {
            recipient["buttons"] = Value::Array(buttons);
        }
        recipient
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let Some(template) = message
            .template
            .as_deref()
            .or(self.default_template.as_deref())
        else {
            return Outcome::Permanent {
                reason: format!(
                    "{TEMPLATE_REJECTED}: no template code (the send names no template and the \
                     provider has no templateCode setting)"
                ),
            };
        };
        let recipient_no = match korean_number(&message.to) {
            Ok(KoreanNumber::Domestic(no)) => no,
            Ok(KoreanNumber::International(_)) => {
                return Outcome::Permanent {
                    reason: format!("AlimTalk takes Korean numbers only, not {:?}", message.to),
                };
            }
            Err(reason) => return Outcome::Permanent { reason },
        };
        let request = json!({
            "senderKey": self.sender_key.expose(),
            "templateCode": template,
            "recipientList": [self.recipient(message, recipient_no)],
        });
        super::nhn::post(
            &self.client,
            &self.messages_url,
            &self.secret_key,
            &request,
            classify,
        )
        .await
    }
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    let answer = match serde_json::from_str::<Answer>(body) {
        Ok(answer) if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            answer
        }
        _ => return classify_status(status, headers, &snippet(body)),
    };
    if !answer.header.is_successful {
        return with_retry_after(
            result_outcome(answer.header.result_code, &answer.header.result_message),
            headers,
        );
    }
    let request_id = answer.message.as_ref().and_then(|m| m.request_id.clone());
    let first = answer
        .message
        .and_then(|m| m.send_results.into_iter().next());
    match first.map(|r| result_outcome(r.result_code, &r.result_message)) {
        Some(Outcome::Sent { .. }) | None => Outcome::Sent {
            provider_message_id: request_id,
        },
        Some(other) => with_retry_after(other, headers),
    }
}

fn with_retry_after(outcome: Outcome, headers: &HeaderMap) -> Outcome {
    match outcome {
        Outcome::Retryable { reason, .. } => Outcome::Retryable {
            reason,
            retry_after: retry_after(headers),
        },
        other => other,
    }
}

#[async_trait::async_trait]
impl Provider for NhnAlimtalkProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Outgoing) -> Outcome {
        let outcome = self.limits.run(self.deliver(message)).await;
        redact_outcome(
            outcome,
            &[&self.secret_key, &self.sender_key, &self.app_key],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_code_table() {
        let class = |code: i64| match result_outcome(code, "m") {
            Outcome::Sent { .. } => "sent".to_owned(),
            Outcome::Retryable { .. } => "retryable".to_owned(),
            Outcome::Permanent { reason } => reason
                .split_once(':')
                .map(|(head, _)| head.to_owned())
                .unwrap_or_default(),
        };
        for (code, expected) in [
            (0, "sent"),
            (1000, "sent"),
            (3018, NOT_KAKAO_USER),
            (3015, TEMPLATE_REJECTED),
            (3016, TEMPLATE_REJECTED),
            (3027, TEMPLATE_REJECTED),
            (3008, "kakao 3008"),
            (1003, "retryable"),
            (-1004, "retryable"),
            (9999, "retryable"),
        ] {
            assert_eq!(class(code), expected, "{code}");
        }
    }

    #[test]
    fn fallback_reasons() {
        assert!(wants_sms_fallback("not_kakao_user: kakao 3018: x"));
        assert!(wants_sms_fallback("template_rejected: kakao 3016: x"));
        assert!(!wants_sms_fallback("kakao 3008: invalid number"));
        assert!(!wants_sms_fallback("not_kakao_username"));
    }

    #[test]
    fn answers() {
        let h = HeaderMap::new();
        let answer = |code: i64| {
            json!({
                "header": {"resultCode": 0, "resultMessage": "success", "isSuccessful": true},
                "message": {"requestId": "R1", "senderGroupingKey": null, "sendResults": [
                    {"recipientSeq": 1, "recipientNo": "01012345678", "resultCode": code,
                     "resultMessage": "m", "recipientGroupingKey": null}]}
            })
            .to_string()
        };
        assert_eq!(
            classify(StatusCode::OK, &h, &answer(0)),
            Outcome::Sent {
                provider_message_id: Some("R1".into())
            }
        );
        assert!(matches!(classify(StatusCode::OK, &h, &answer(3018)),
            Outcome::Permanent { reason } if reason.starts_with("not_kakao_user: ")));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, "{}"),
            Outcome::Retryable { .. }
        ));
    }
}

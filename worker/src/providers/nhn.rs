//! What NHN Cloud's APIs share: the app key in the URL path and the per-recipient result of a
//! send (SMS, AlimTalk, FriendTalk); and what the two KakaoTalk BizMessage products (AlimTalk and
//! FriendTalk) share: their account (keys, endpoint, limits), their answer and Kakao's result
//! codes.
//!
//! Kakao's result codes (as NHN relays them) are mapped wherever they appear, by
//! [`result_outcome`], so a delivery-receipt poller can reuse it. Reasons of the two permanent
//! failures that an SMS would fix start with a prefix the pipeline can match
//! ([`FALLBACK_PREFIXES`]):
//!
//! | code | meaning | outcome |
//! |---|---|---|
//! | 0, 1000 | accepted / delivered | sent, id = `requestId` |
//! | 3018 | NoSendAvailable: not a KakaoTalk user, blocked the channel (AlimTalk), not a friend of the channel (FriendTalk) | permanent, `not_kakao_user: …` |
//! | 3015, 3016 | template not found / text does not match the approved template | permanent, `template_rejected: …` |
//! | 3025, 3027–3031 | variables, buttons, title, type or header do not match the template | permanent, `template_rejected: …` |
//! | 3008 | invalid phone number | permanent |
//! | 1003, 1006, 1007 | sender key invalid / deleted / blocked | retryable: the account is at fault, not the message |
//! | -1000, -1001, -1002, -1004, -1005 (NHN header) | app key / service / secret key problems | retryable (as above) |
//! | 3000, 3005, 3006, 9998, 9999 | Kakao system errors, ack timeout | retryable |
//! | HTTP 429, 5xx, 408 | | retryable (`Retry-After` honoured) |
//! | any other code | | permanent |

use super::BuildError;
use super::http::{classify_status, client, retry_after, snippet, transport_failure};
use super::limits::{self, CallLimits};
use super::nhn_sms::{KoreanNumber, korean_number};
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use ump_core::provider::Outcome;

/// Public endpoint of NHN Cloud's KakaoTalk BizMessage (AlimTalk and FriendTalk).
pub(super) const BIZMESSAGE_ENDPOINT: &str = "https://api-alimtalk.cloud.toast.com";

/// Reason prefix: the recipient cannot get the Kakao message (no KakaoTalk, the channel or
/// AlimTalk blocked, not a friend of the channel).
pub const NOT_KAKAO_USER: &str = "not_kakao_user";
/// Reason prefix: Kakao refused the template or the message's fit to it.
pub const TEMPLATE_REJECTED: &str = "template_rejected";
/// Prefixes of permanent reasons that an SMS fallback would fix.
pub const FALLBACK_PREFIXES: &[&str] = &[NOT_KAKAO_USER, TEMPLATE_REJECTED];

/// Whether a permanent `reason` from a Kakao provider is one an SMS fallback would fix.
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecipientResult {
    /// The recipient's place in the request, from 1.
    #[serde(default)]
    pub(super) recipient_seq: Option<i64>,
    pub(super) result_code: i64,
    #[serde(default)]
    pub(super) result_message: String,
}

/// The `appKey` secret, checked: it goes into the URL path, so anything that would change the
/// path is refused.
pub(super) fn app_key(
    settings: &Settings<'_>,
    secrets: &SecretFiles,
) -> Result<Secret, BuildError> {
    let app_key = secrets.require("appKey")?;
    if !app_key
        .expose()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(settings.invalid("secret key \"appKey\" is not an NHN app key".into()));
    }
    Ok(app_key)
}

/// POSTs `request` to an NHN Cloud API with its `X-Secret-Key` and lets `classify` read the answer;
/// a request that got no answer is `failed` (its transport failure).
pub(super) async fn post<T>(
    client: &reqwest::Client,
    url: &str,
    secret_key: &Secret,
    request: &impl Serialize,
    classify: impl FnOnce(StatusCode, &HeaderMap, &str) -> T,
    failed: impl FnOnce(Outcome) -> T,
) -> T {
    let response = match client
        .post(url)
        .header("X-Secret-Key", secret_key.expose())
        .json(request)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return failed(transport_failure(e)),
    };
    let status = response.status();
    let headers = response.headers().clone();
    match response.text().await {
        Ok(body) => classify(status, &headers, &body),
        Err(e) => failed(transport_failure(e)),
    }
}

/// One KakaoTalk BizMessage product of an NHN account: where its sends go, with which keys, within
/// which limits. Secret keys: `appKey`, `secretKey`, `senderKey` (the Kakao channel's sender
/// key). Settings: `endpoint` (default [`BIZMESSAGE_ENDPOINT`]), `caFile` (PEM of the CA to trust
/// instead of the system roots), `timeout`, `maxConcurrency`, `adaptiveConcurrency`.
pub(super) struct BizMessage {
    client: reqwest::Client,
    limits: CallLimits,
    messages_url: String,
    app_key: Secret,
    secret_key: Secret,
    sender_key: Secret,
}

impl BizMessage {
    /// `product` is the API's path and version, e.g. `alimtalk/v2.3`.
    pub(super) fn build(
        settings: &Settings<'_>,
        secrets: &SecretFiles,
        product: &str,
    ) -> Result<Self, BuildError> {
        let limits = CallLimits::from_settings(settings, limits::PER_CONNECTION)?;
        let endpoint = settings.endpoint("endpoint", BIZMESSAGE_ENDPOINT)?;
        let app_key = app_key(settings, secrets)?;
        let ca = settings.pem_file("caFile")?;
        let client = client(settings, &limits, ca.as_deref(), |b| b)?;
        Ok(Self {
            client,
            messages_url: format!("{endpoint}/{product}/appkeys/{}/messages", app_key.expose()),
            limits,
            app_key,
            secret_key: secrets.require("secretKey")?,
            sender_key: secrets.require("senderKey")?,
        })
    }

    /// The request's `senderKey`.
    pub(super) fn sender_key(&self) -> &str {
        self.sender_key.expose()
    }

    /// The limits the product's calls run within.
    pub(super) fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The account's credentials, which no answer may show.
    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.secret_key, &self.sender_key, &self.app_key]
    }

    /// POSTs a send request to the product's `messages` and classifies the answer.
    pub(super) async fn post(&self, request: &impl Serialize) -> Outcome {
        post(
            &self.client,
            &self.messages_url,
            &self.secret_key,
            request,
            classify_bizmessage,
            |failed| failed,
        )
        .await
    }

    /// POSTs a send request for `count` recipients; one outcome per recipient, in their order.
    pub(super) async fn post_many(&self, request: &impl Serialize, count: usize) -> Vec<Outcome> {
        post(
            &self.client,
            &self.messages_url,
            &self.secret_key,
            request,
            |status, headers, body| classify_bizmessage_many(status, headers, body, count),
            |failed| vec![failed; count],
        )
        .await
    }
}

/// The `recipientNo` of a Kakao message: Kakao BizMessage takes Korean numbers only.
pub(super) fn kakao_recipient(to: &str, product: &str) -> Result<String, Outcome> {
    match korean_number(to) {
        Ok(KoreanNumber::Domestic(no)) => Ok(no),
        Ok(KoreanNumber::International(_)) => Err(Outcome::Permanent {
            reason: format!("{product} takes Korean numbers only, not {to:?}"),
        }),
        Err(reason) => Err(Outcome::Permanent { reason }),
    }
}

#[derive(Deserialize)]
struct BizAnswer {
    header: BizHeader,
    #[serde(default)]
    message: Option<BizMessageResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BizHeader {
    is_successful: bool,
    result_code: i64,
    #[serde(default)]
    result_message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BizMessageResult {
    request_id: Option<String>,
    #[serde(default)]
    send_results: Vec<RecipientResult>,
}

/// A BizMessage answer `{header: {isSuccessful, resultCode, resultMessage}, message: {requestId,
/// sendResults: [{resultCode, resultMessage}]}}` as an outcome (the table above).
pub(super) fn classify_bizmessage(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    classify_bizmessage_many(status, headers, body, 1)
        .pop()
        .unwrap_or_else(|| classify_status(status, headers, &snippet(body)))
}

/// The answer to a request for `count` recipients, one outcome each in the request's order: a
/// refusal of the whole request (HTTP, or NHN's header) is every recipient's outcome; otherwise
/// each recipient has its own result (matched by `recipientSeq`, 1-based, else by position), and
/// one refused never fails the others. A recipient the answer leaves out was taken with the
/// request (as NHN answers a request it accepted). A sent recipient's id is
/// `{requestId}#{recipientSeq}`.
pub(super) fn classify_bizmessage_many(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    count: usize,
) -> Vec<Outcome> {
    let answer = match serde_json::from_str::<BizAnswer>(body) {
        Ok(answer) if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            answer
        }
        _ => return vec![classify_status(status, headers, &snippet(body)); count],
    };
    if !answer.header.is_successful {
        let outcome = with_retry_after(
            result_outcome(answer.header.result_code, &answer.header.result_message),
            headers,
        );
        return vec![outcome; count];
    }
    let (request_id, results) = answer
        .message
        .map(|m| (m.request_id, m.send_results))
        .unwrap_or_default();
    // A recipient's id: the request's and its place in it, which NHN's result webhook names.
    let sent = |index: usize| Outcome::Sent {
        provider_message_id: request_id.as_ref().map(|id| format!("{id}#{}", index + 1)),
    };
    let mut outcomes: Vec<Outcome> = (0..count).map(sent).collect();
    for (position, result) in results.into_iter().enumerate() {
        let index = result
            .recipient_seq
            .and_then(|seq| usize::try_from(seq).ok()?.checked_sub(1))
            .unwrap_or(position);
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = match result_outcome(result.result_code, &result.result_message) {
                Outcome::Sent { .. } => sent(index),
                other => with_retry_after(other, headers),
            };
        }
    }
    outcomes
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            classify_bizmessage(StatusCode::OK, &h, &answer(0)),
            Outcome::Sent {
                provider_message_id: Some("R1#1".into())
            }
        );
        assert!(
            matches!(classify_bizmessage(StatusCode::OK, &h, &answer(3018)),
            Outcome::Permanent { reason } if reason.starts_with("not_kakao_user: "))
        );
        assert!(matches!(
            classify_bizmessage(StatusCode::SERVICE_UNAVAILABLE, &h, "{}"),
            Outcome::Retryable { .. }
        ));
    }

    #[test]
    fn a_request_for_many_answers_each_recipient_and_one_refused_fails_no_other() {
        let h = HeaderMap::new();
        let body = json!({
            "header": {"resultCode": 0, "resultMessage": "success", "isSuccessful": true},
            "message": {"requestId": "R7", "sendResults": [
                {"recipientSeq": 3, "resultCode": 9999, "resultMessage": "system"},
                {"recipientSeq": 1, "resultCode": 0, "resultMessage": "ok"},
                {"recipientSeq": 2, "resultCode": 3018, "resultMessage": "NoSendAvailable"}]}
        })
        .to_string();
        let outcomes = classify_bizmessage_many(StatusCode::OK, &h, &body, 4);
        let sent = |seq: usize| Outcome::Sent {
            provider_message_id: Some(format!("R7#{seq}")),
        };
        assert_eq!(outcomes[0], sent(1));
        assert!(
            matches!(&outcomes[1], Outcome::Permanent { reason } if reason.starts_with("not_kakao_user: ")),
            "{:?}",
            outcomes[1]
        );
        assert!(matches!(&outcomes[2], Outcome::Retryable { .. }));
        assert_eq!(outcomes[3], sent(4), "left out of the answer: taken");
    }

    #[test]
    fn a_refused_request_is_every_recipients_outcome() {
        let h = HeaderMap::new();
        let header = json!({"header": {"resultCode": -1004, "resultMessage": "Invalid secretKey.", "isSuccessful": false}}).to_string();
        for (status, body) in [
            (StatusCode::OK, header.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "{}"),
            (StatusCode::TOO_MANY_REQUESTS, "busy"),
        ] {
            let outcomes = classify_bizmessage_many(status, &h, body, 3);
            assert_eq!(outcomes.len(), 3);
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, Outcome::Retryable { .. }) && *o == outcomes[0]),
                "{outcomes:?}"
            );
        }
        let refused = classify_bizmessage_many(StatusCode::BAD_REQUEST, &h, "nope", 2);
        assert!(
            refused
                .iter()
                .all(|o| matches!(o, Outcome::Permanent { .. }))
        );
    }

    #[test]
    fn kakao_takes_korean_numbers_only() {
        assert_eq!(
            kakao_recipient("+82 10-1234-5678", "FriendTalk"),
            Ok("01012345678".to_owned())
        );
        assert!(matches!(
            kakao_recipient("+1 415 555 0100", "FriendTalk"),
            Err(Outcome::Permanent { reason }) if reason.starts_with("FriendTalk takes Korean numbers only")
        ));
    }
}

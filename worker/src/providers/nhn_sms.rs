//! SMS and LMS through NHN Cloud SMS API v3.0: `POST {endpoint}/sms/v3.0/appKeys/{appKey}/sender/sms`
//! (SMS, at most 90 bytes) or `.../sender/mms` (LMS, a title and at most 2000 bytes), with the
//! `X-Secret-Key` header. The kind is chosen by the text's length counted the way Korean carriers
//! count it: ASCII 1 byte, anything else (Hangul) 2 bytes.
//!
//! Settings: `sendNo` (the registered sender number, required); `endpoint` (default
//! `https://api-sms.cloud.toast.com`); `timeout`; `maxConcurrency`. Secret keys: `appKey`,
//! `secretKey`; `webhookSignature` (optional: the signature string of NHN Cloud's webhook, which
//! the API's delivery-receipt endpoint checks).
//!
//! Recipients: `+82 10-1234-5678` and `010-1234-5678` become `01012345678`; other `+` numbers go
//! out as `internationalRecipientNo`.
//!
//! Classification of the answer `{header: {isSuccessful, resultCode, resultMessage}, body: {data:
//! {requestId, sendResultList: [{resultCode, resultMessage}]}}}`:
//!
//! | answer | outcome |
//! |---|---|
//! | `isSuccessful` and the recipient's `resultCode` 0 | sent, id = `requestId` |
//! | HTTP 429 / 5xx / 408 | retryable (`Retry-After` honoured) |
//! | HTTP 401, or account codes -1000 (appKey), -1001/-1002 (service missing/disabled), -1004 (secretKey), -1005 (service blocked) | retryable: the account is at fault, not the message |
//! | any other `resultCode` (e.g. -5000 invalid parameter, a recipient's non-zero code) | permanent |

use super::http::{classify_status, client, retry_after, snippet};
use super::limits::{self, CallLimits};
use super::nhn::RecipientResult;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

const DEFAULT_ENDPOINT: &str = "https://api-sms.cloud.toast.com";

/// Longest SMS text, in carrier bytes.
pub const SMS_MAX_BYTES: usize = 90;
/// Longest LMS text, in carrier bytes.
pub const LMS_MAX_BYTES: usize = 2000;
/// Longest LMS title, in carrier bytes.
pub const LMS_TITLE_MAX_BYTES: usize = 40;

/// NHN result codes that blame the account (keys, service state), not the message.
const ACCOUNT_CODES: &[i64] = &[-1000, -1001, -1002, -1004, -1005];

/// Which NHN product a text needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmsKind {
    Sms,
    Lms,
}

/// Length of `text` as Korean carriers count it (EUC-KR style): 1 byte per ASCII character, 2 for
/// any other (Hangul, and characters EUC-KR lacks, which carriers also bill as 2).
pub fn carrier_bytes(text: &str) -> usize {
    text.chars().map(|c| if c.is_ascii() { 1 } else { 2 }).sum()
}

/// SMS when the text fits 90 bytes, LMS up to 2000; `Err(bytes)` when it is longer than that.
pub fn kind_for(text: &str) -> Result<SmsKind, usize> {
    match carrier_bytes(text) {
        n if n <= SMS_MAX_BYTES => Ok(SmsKind::Sms),
        n if n <= LMS_MAX_BYTES => Ok(SmsKind::Lms),
        n => Err(n),
    }
}

/// The longest prefix of `text` within `max` carrier bytes (an LMS title).
pub fn truncate_to_bytes(text: &str, max: usize) -> String {
    let mut used = 0;
    text.chars()
        .take_while(|c| {
            used += carrier_bytes(c.encode_utf8(&mut [0; 4]));
            used <= max
        })
        .collect()
}

/// A recipient as NHN wants it.
#[derive(Debug, PartialEq, Eq)]
pub enum KoreanNumber {
    /// `01012345678`
    Domestic(String),
    /// Country code and number, digits only: `14155550100`
    International(String),
}

/// `+82 10-1234-5678`, `010 1234 5678` → `Domestic("01012345678")`; `+1 415…` → `International`.
pub fn korean_number(to: &str) -> Result<KoreanNumber, String> {
    let compact: String = to
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let (international, digits) = match compact.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, compact.as_str()),
    };
    if digits.len() < 8 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid phone number {to:?}"));
    }
    Ok(match digits.strip_prefix("82") {
        Some(national) if international => {
            KoreanNumber::Domestic(format!("0{}", national.trim_start_matches('0')))
        }
        _ if international => KoreanNumber::International(digits.to_owned()),
        _ => KoreanNumber::Domestic(digits.to_owned()),
    })
}

pub struct NhnSmsProvider {
    name: String,
    client: reqwest::Client,
    limits: CallLimits,
    sender_url: String,
    app_key: Secret,
    secret_key: Secret,
    send_no: String,
}

#[derive(Deserialize)]
struct Answer {
    header: Header,
    #[serde(default)]
    body: Option<Body>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    is_successful: bool,
    result_code: i64,
    #[serde(default)]
    result_message: String,
}

#[derive(Deserialize)]
struct Body {
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    request_id: Option<String>,
    #[serde(default)]
    send_result_list: Vec<RecipientResult>,
}

impl NhnSmsProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, limits::PER_CONNECTION)?;
        let endpoint = settings.endpoint("endpoint", DEFAULT_ENDPOINT)?;
        let app_key = super::nhn::app_key(&settings, &secrets)?;
        let client = client(&settings, &limits, None, |b| b)?;
        Ok(Self {
            name: spec.name.clone(),
            client,
            sender_url: format!("{endpoint}/sms/v3.0/appKeys/{}/sender", app_key.expose()),
            limits,
            app_key,
            secret_key: secrets.require("secretKey")?,
            send_no: settings.require("sendNo")?.to_owned(),
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let recipient = match korean_number(&message.to) {
            Ok(KoreanNumber::Domestic(no)) => json!({ "recipientNo": no }),
            Ok(KoreanNumber::International(no)) => json!({ "internationalRecipientNo": no }),
            Err(reason) => return Outcome::Permanent { reason },
        };
        let (path, request) = match kind_for(&message.text) {
            Ok(SmsKind::Sms) => (
                "sms",
                json!({
                    "body": message.text,
                    "sendNo": self.send_no,
                    "recipientList": [recipient],
                }),
            ),
            Ok(SmsKind::Lms) => (
                "mms",
                json!({
                    "title": lms_title(message),
                    "body": message.text,
                    "sendNo": self.send_no,
                    "recipientList": [recipient],
                }),
            ),
            Err(bytes) => {
                return Outcome::Permanent {
                    reason: format!("text is {bytes} bytes; an LMS takes at most {LMS_MAX_BYTES}"),
                };
            }
        };
        super::nhn::post(
            &self.client,
            &format!("{}/{path}", self.sender_url),
            &self.secret_key,
            &request,
            classify,
            |failed| failed,
        )
        .await
    }
}

/// The LMS title: the subject when there is one, else the text's first line, cut to 40 bytes.
fn lms_title(message: &Outgoing) -> String {
    let source = message
        .subject
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| message.text.lines().next().unwrap_or_default());
    truncate_to_bytes(source.trim(), LMS_TITLE_MAX_BYTES)
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Outcome {
    let answer = match serde_json::from_str::<Answer>(body) {
        Ok(answer) if !status.is_server_error() => answer,
        _ => return classify_status(status, headers, &snippet(body)),
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        return classify_status(status, headers, &answer.header.result_message);
    }
    if !answer.header.is_successful {
        return result_code_outcome(
            answer.header.result_code,
            &answer.header.result_message,
            headers,
        );
    }
    let data = answer.body.and_then(|b| b.data);
    let request_id = data.as_ref().and_then(|d| d.request_id.clone());
    let first = data.and_then(|d| d.send_result_list.into_iter().next());
    match first {
        Some(result) if result.result_code != 0 => {
            result_code_outcome(result.result_code, &result.result_message, headers)
        }
        // Accepted: a missing per-recipient list is NHN's to explain, not a reason to re-send.
        _ => Outcome::Sent {
            provider_message_id: request_id,
        },
    }
}

fn result_code_outcome(code: i64, message: &str, headers: &HeaderMap) -> Outcome {
    let reason = format!("nhn {code}: {message}");
    if ACCOUNT_CODES.contains(&code) {
        Outcome::Retryable {
            reason: format!("account rejected: {reason}"),
            retry_after: retry_after(headers),
        }
    } else {
        Outcome::Permanent { reason }
    }
}

#[async_trait::async_trait]
impl super::Remote for NhnSmsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.secret_key, &self.app_key]
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

/// Shared with the AlimTalk provider, whose SMS resend follows the same rules.
pub(super) fn resend_type(text: &str) -> &'static str {
    match kind_for(text) {
        Ok(SmsKind::Sms) => "SMS",
        _ => "LMS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_byte_counting() {
        let hangul_45 = "가".repeat(45);
        let table: &[(&str, usize)] = &[
            ("", 0),
            ("hello", 5),
            ("안녕", 4),
            ("안녕 hi", 7),
            (&hangul_45, 90),
            ("ｱ", 2),
            ("😀", 2),
            ("é", 2),
        ];
        for (text, bytes) in table {
            assert_eq!(carrier_bytes(text), *bytes, "{text:?}");
        }
    }

    #[test]
    fn sms_or_lms_by_length() {
        let table: Vec<(String, Result<SmsKind, usize>)> = vec![
            ("a".repeat(90), Ok(SmsKind::Sms)),
            ("a".repeat(91), Ok(SmsKind::Lms)),
            ("가".repeat(45), Ok(SmsKind::Sms)),
            // 45 Hangul + 1 ASCII = 91 bytes, although only 46 characters.
            (format!("{}a", "가".repeat(45)), Ok(SmsKind::Lms)),
            ("가".repeat(46), Ok(SmsKind::Lms)),
            ("가".repeat(1000), Ok(SmsKind::Lms)),
            ("가".repeat(1001), Err(2002)),
            ("a".repeat(2001), Err(2001)),
        ];
        for (text, kind) in table {
            assert_eq!(kind_for(&text), kind, "{} chars", text.chars().count());
        }
    }

    #[test]
    fn titles_are_cut_on_character_boundaries() {
        assert_eq!(truncate_to_bytes(&"가".repeat(30), 40), "가".repeat(20));
        assert_eq!(truncate_to_bytes(&format!("a{}", "가".repeat(30)), 40), {
            format!("a{}", "가".repeat(19))
        });
        assert_eq!(truncate_to_bytes("short", 40), "short");
    }

    #[test]
    fn numbers() {
        let domestic = |s: &str| Ok(KoreanNumber::Domestic(s.to_owned()));
        assert_eq!(korean_number("+82 10-1234-5678"), domestic("01012345678"));
        assert_eq!(korean_number("+821012345678"), domestic("01012345678"));
        assert_eq!(korean_number("010-1234-5678"), domestic("01012345678"));
        assert_eq!(
            korean_number("+1 415 555 0100"),
            Ok(KoreanNumber::International("14155550100".into()))
        );
        assert!(korean_number("010-CALL-NOW").is_err());
        assert!(korean_number("123").is_err());
    }

    #[test]
    fn answers() {
        let h = HeaderMap::new();
        let ok = r#"{"header":{"isSuccessful":true,"resultCode":0,"resultMessage":"SUCCESS"},
            "body":{"data":{"requestId":"R1","statusCode":"2","sendResultList":[
            {"recipientNo":"01012345678","resultCode":0,"resultMessage":"SUCCESS","recipientSeq":1}]}}}"#;
        assert_eq!(
            classify(StatusCode::OK, &h, ok),
            Outcome::Sent {
                provider_message_id: Some("R1".into())
            }
        );
        let bad_recipient = r#"{"header":{"isSuccessful":true,"resultCode":0,"resultMessage":"SUCCESS"},
            "body":{"data":{"requestId":"R2","sendResultList":[
            {"recipientNo":"0101","resultCode":-2002,"resultMessage":"invalid recipient"}]}}}"#;
        assert!(matches!(
            classify(StatusCode::OK, &h, bad_recipient),
            Outcome::Permanent { reason } if reason == "nhn -2002: invalid recipient"
        ));
        let bad_key = r#"{"header":{"isSuccessful":false,"resultCode":-1004,"resultMessage":"Invalid secretKey."}}"#;
        assert!(matches!(
            classify(StatusCode::OK, &h, bad_key),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, "busy"),
            Outcome::Retryable { .. }
        ));
    }
}

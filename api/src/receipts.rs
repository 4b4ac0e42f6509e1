//! Delivery receipts: `POST /v1/receipts/{channel}/{provider}`, where a provider reports that a
//! message it took was delivered or failed after all. The `{channel}/{provider}` pair names the
//! provider spec whose credentials authenticate the callback; the message itself is found by the
//! id the provider gave it (or, for the webhook channel, by UMP's id) among the messages *that
//! provider* sent, whichever channel they were accepted on (an AlimTalk message that went out by
//! SMS fallback gets its receipt at the SMS provider's URL).
//!
//! | provider type | authentication | body | message |
//! |---|---|---|---|
//! | `twilio` | `X-Twilio-Signature`: base64 HMAC-SHA1, keyed with the Auth Token, of the `statusCallback` URL followed by every POST parameter's name and value, sorted by name | form: `MessageSid`, `MessageStatus` (`delivered`/`read` → delivered; `failed`/`undelivered` → failed, with `ErrorCode`; others change nothing) | `MessageSid` |
//! | `nhn-sms`, `nhn-alimtalk`, `nhn-friendtalk` | `X-Toast-Webhook-Signature`: the signature string set in NHN Cloud's webhook settings (secret key `webhookSignature`) | NHN Notification webhook: `{hooksId, webhookConfigId, productName, appKey, event, hooks: [...]}`; event `MESSAGE_RESULT_UPDATE` with hooks `{requestId, recipientSeq, resultCode, resultCodeName, msgStatus?}`: `resultCode` `1000` → delivered, another code → failed (`msgStatus` 1 or 2, still in progress, changes nothing); other events are acknowledged and ignored | `requestId` (SMS); `{requestId}#{recipientSeq}` (AlimTalk, FriendTalk: a request carries many recipients), else `requestId` (recorded before) |
//! | `webhook` | `X-UMP-Signature: sha256=<hex HMAC-SHA256 of the body>` with the channel's `signingSecret`, as UMP signs what it sends | JSON `{"id": "<UMP message id>", "status": "delivered" \| "failed", "detail"?: "..."}` | `id` |
//!
//! Answers: `200 {"applied", "unchanged"}` (a receipt for a message that is no longer `sent`
//! changes nothing); `401` without the signature header, `403` with a wrong one, `404` for a
//! channel, provider or provider type without receipts (or whose callback secret is not mounted
//! here), and for a well-signed receipt about no message of that provider; `400`/`422` for a body
//! that cannot be read. Nothing is changed unless the signature is right.
//!
//! A receipt can outrun the worker's history write of the `sent` it follows (that write comes a
//! batch later, usually milliseconds); it is then a `404`, which NHN Cloud and well-behaved
//! webhook receivers retry.

use crate::AppState;
use crate::problem::{FieldError, Problem};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::path::Path as FsPath;
use subtle::ConstantTimeEq;
use ump_core::history::{Receipt, ReceiptFor, ReceiptOutcome};
use ump_core::model::{MessageId, Status};
use ump_core::resources::{ProviderSpec, ProviderType};

/// Largest receipt body (an NHN callback may batch many results).
pub const RECEIPT_LIMIT: usize = 1024 * 1024;

pub const TWILIO_SIGNATURE: &str = "x-twilio-signature";
pub const NHN_SIGNATURE: &str = "x-toast-webhook-signature";
pub const UMP_SIGNATURE: &str = "x-ump-signature";
/// NHN Cloud's event of a message's final result.
pub const NHN_RESULT_EVENT: &str = "MESSAGE_RESULT_UPDATE";

/// What one callback did.
#[derive(Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReceiptReport {
    /// Messages that moved to `delivered` or `failed`.
    pub applied: usize,
    /// Messages the receipt was about that are not `sent` any more (or a status that changes
    /// nothing, like Twilio's `queued`).
    pub unchanged: usize,
}

/// A provider's verdict on one message, before it is looked up.
#[derive(Debug, PartialEq)]
struct Verdict {
    message: ReceiptFor,
    /// Where to look when no message has `message`'s id (an id in an older form).
    or: Option<ReceiptFor>,
    status: Status,
    detail: Option<String>,
}

/// A provider's delivery receipt (Twilio status callback, NHN Cloud webhook, webhook
/// acknowledgement), authenticated by the provider's signature instead of an API key.
#[utoipa::path(post, path = "/v1/receipts/{channel}/{provider}", tag = "receipts",
    params(
        ("channel" = String, Path, description = "The MessageChannel whose provider spec holds the callback secret"),
        ("provider" = String, Path, description = "The provider's name in that channel"),
    ),
    responses(
        (status = 200, body = ReceiptReport),
        (status = 400, description = "An unreadable body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No signature header", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A wrong signature", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No receipts here, or no message of this provider with that id", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within 30 s", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A webhook acknowledgement with invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The history store is unavailable", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    ))]
pub async fn receive(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path((channel, provider))) = path else {
        return no_endpoint("the channel and provider must be text".into()).into_response();
    };
    match handle(&app, &channel, &provider, &headers, body).await {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn handle(
    app: &AppState,
    channel: &str,
    provider: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReceiptReport, Problem> {
    let registry = app.registry.load();
    let spec = registry
        .get(channel)
        .and_then(|c| {
            c.resource
                .spec
                .providers
                .iter()
                .find(|p| p.name == provider)
        })
        .ok_or_else(|| no_endpoint(format!("no provider {provider:?} on channel {channel:?}")))?
        .clone();
    let body = crate::messages::read_body(headers, body, RECEIPT_LIMIT, app.body_timeout).await?;
    let verdicts = match spec.provider_type {
        ProviderType::Twilio => twilio(&spec, &app.secrets_dir, headers, &body)?
            .into_iter()
            .collect(),
        ProviderType::NhnSms | ProviderType::NhnAlimtalk | ProviderType::NhnFriendtalk => {
            let per_recipient = spec.provider_type != ProviderType::NhnSms;
            nhn(&spec, &app.secrets_dir, headers, &body, per_recipient)?
        }
        ProviderType::Webhook => vec![webhook(&spec, &app.secrets_dir, headers, &body)?],
        other => {
            return Err(no_endpoint(format!(
                "providers of type {other:?} send no delivery receipts"
            )));
        }
    };
    let mut report = ReceiptReport::default();
    let mut unknown = 0;
    for verdict in verdicts {
        let mut receipt = Receipt {
            provider: spec.name.clone(),
            message: verdict.message,
            status: verdict.status,
            at: Utc::now(),
            detail: verdict.detail,
        };
        let mut applied = app.history.apply_receipt(&receipt).await;
        if let (Ok(ReceiptOutcome::Unknown), Some(or)) = (&applied, verdict.or) {
            receipt.message = or;
            applied = app.history.apply_receipt(&receipt).await;
        }
        match applied {
            Ok(ReceiptOutcome::Applied(id)) => {
                tracing::debug!(%id, provider = %spec.name, status = %receipt.status, "delivery receipt applied");
                report.applied += 1;
            }
            Ok(ReceiptOutcome::Unchanged { .. }) => report.unchanged += 1,
            Ok(ReceiptOutcome::Unknown) => unknown += 1,
            Err(e) => {
                tracing::warn!(error = %e, "history write of a receipt failed");
                return Err(Problem::unavailable("the history store is unavailable", 5));
            }
        }
    }
    if unknown > 0 && report.applied == 0 && report.unchanged == 0 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-message",
            "No such message",
            format!("provider {:?} sent no message with this id", spec.name),
        ));
    }
    Ok(report)
}

fn no_endpoint(detail: String) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-receipt-endpoint",
        "No delivery receipts are taken here",
        detail,
    )
}

fn missing_signature(header: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unsigned-receipt",
        "The receipt is not signed",
        format!("send the {header} header"),
    )
}

fn bad_signature(header: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "bad-signature",
        "The receipt's signature is wrong",
        format!("{header} does not match"),
    )
}

fn unreadable(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "unreadable-receipt",
        "The receipt cannot be read",
        detail,
    )
}

/// The callback secret `key` of `spec`, read from its mounted Secret at each call (so a rotated
/// Secret takes effect without a restart). Missing: the endpoint is not configured here.
fn secret(spec: &ProviderSpec, dir: &FsPath, key: &str) -> Result<String, Problem> {
    let not_configured = || {
        tracing::warn!(provider = %spec.name, key, "a delivery receipt came in but the provider's callback secret is not mounted here");
        no_endpoint(format!(
            "provider {:?} has no {key:?} secret here",
            spec.name
        ))
    };
    let secret_ref = spec.secret_ref.as_ref().ok_or_else(not_configured)?;
    match std::fs::read_to_string(dir.join(&secret_ref.name).join(key)) {
        Ok(value) if !value.trim_end().is_empty() => Ok(value.trim_end().to_owned()),
        _ => Err(not_configured()),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Problem> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| missing_signature(name))
}

/// Twilio's request signature: base64(HMAC-SHA1(auth token, url + name1 + value1 + ...)) with
/// the POST parameters sorted by name (then value).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn twilio(
    spec: &ProviderSpec,
    dir: &FsPath,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Verdict>, Problem> {
    // Twilio signs the URL it was given, which is ours as the world sees it (behind any proxy).
    let url = spec.settings.get("statusCallback").ok_or_else(|| {
        no_endpoint(format!(
            "provider {:?} has no statusCallback setting",
            spec.name
        ))
    })?;
    let auth_token = secret(spec, dir, "authToken")?;
    let signature = header(headers, TWILIO_SIGNATURE)?;
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let expected = twilio_signature(&auth_token, url, &params);
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(bad_signature(TWILIO_SIGNATURE));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sid = param("MessageSid")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unreadable("MessageSid is missing"))?;
    let status = param("MessageStatus").ok_or_else(|| unreadable("MessageStatus is missing"))?;
    let (status, detail) = match status {
        "delivered" | "read" => (Status::Delivered, format!("twilio: {status}")),
        "failed" | "undelivered" => {
            let detail = match param("ErrorCode").filter(|c| !c.is_empty()) {
                Some(code) => format!("twilio: {status} (error {code})"),
                None => format!("twilio: {status}"),
            };
            (Status::Failed, detail)
        }
        // queued, sending, sent, accepted, scheduled...: nothing new for the history.
        _ => return Ok(None),
    };
    Ok(Some(Verdict {
        message: ReceiptFor::ProviderMessageId(sid.to_owned()),
        or: None,
        status,
        detail: Some(detail),
    }))
}

#[derive(Deserialize)]
struct NhnCallback {
    event: String,
    #[serde(default)]
    hooks: Vec<NhnHook>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NhnHook {
    request_id: Option<String>,
    /// The recipient's place in its request, from 1.
    #[serde(default)]
    recipient_seq: Option<serde_json::Value>,
    #[serde(default)]
    result_code: Option<serde_json::Value>,
    #[serde(default)]
    result_code_name: Option<String>,
    #[serde(default)]
    msg_status: Option<serde_json::Value>,
}

/// A JSON string or number as text (NHN sends codes both ways).
fn code_text(value: &Option<serde_json::Value>) -> Option<String> {
    match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// With `per_recipient` (KakaoTalk BizMessage, whose requests carry many recipients), a message's
/// id is `{requestId}#{recipientSeq}`; messages recorded before that, and SMS, by `requestId`.
fn nhn(
    spec: &ProviderSpec,
    dir: &FsPath,
    headers: &HeaderMap,
    body: &Bytes,
    per_recipient: bool,
) -> Result<Vec<Verdict>, Problem> {
    let expected = secret(spec, dir, "webhookSignature")?;
    let signature = header(headers, NHN_SIGNATURE)?;
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(bad_signature(NHN_SIGNATURE));
    }
    let callback: NhnCallback =
        serde_json::from_slice(body).map_err(|e| unreadable(format!("not an NHN webhook: {e}")))?;
    if callback.event != NHN_RESULT_EVENT {
        // Unsubscriptions and the like arrive at the same URL: acknowledged, nothing to record.
        return Ok(Vec::new());
    }
    let mut verdicts = Vec::new();
    for hook in callback.hooks {
        let Some(request_id) = hook.request_id.filter(|r| !r.is_empty()) else {
            return Err(unreadable("a hook has no requestId"));
        };
        if matches!(code_text(&hook.msg_status).as_deref(), Some("1" | "2")) {
            continue; // requested / in progress: no result yet
        }
        let Some(code) = code_text(&hook.result_code) else {
            continue;
        };
        let name = hook.result_code_name.unwrap_or_default();
        let (status, detail) = if code == "1000" {
            (Status::Delivered, format!("nhn: {code} {name}"))
        } else {
            (Status::Failed, format!("nhn: {code} {name}"))
        };
        let (message, or) = if per_recipient {
            let seq = code_text(&hook.recipient_seq).unwrap_or_else(|| "1".to_owned());
            (
                ReceiptFor::ProviderMessageId(format!("{request_id}#{seq}")),
                Some(ReceiptFor::ProviderMessageId(request_id)),
            )
        } else {
            (ReceiptFor::ProviderMessageId(request_id), None)
        };
        verdicts.push(Verdict {
            message,
            or,
            status,
            detail: Some(detail.trim_end().to_owned()),
        });
    }
    Ok(verdicts)
}

/// Fields beyond these are allowed (a receiver may say more than UMP reads).
#[derive(Deserialize)]
struct WebhookAck {
    id: String,
    status: String,
    #[serde(default)]
    detail: Option<String>,
}

fn webhook(
    spec: &ProviderSpec,
    dir: &FsPath,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Verdict, Problem> {
    let secret = secret(spec, dir, "signingSecret")?;
    let signature = header(headers, UMP_SIGNATURE)?;
    // Constant time, like every signature comparison here.
    if !ump_core::webhooks::receipt_signature_matches(secret.as_bytes(), body, signature) {
        return Err(bad_signature(UMP_SIGNATURE));
    }
    let ack: WebhookAck = serde_json::from_slice(body)
        .map_err(|e| unreadable(format!("not an acknowledgement: {e}")))?;
    let id = ack.id.parse::<MessageId>().ok();
    let status = match ack.status.as_str() {
        "delivered" => Some(Status::Delivered),
        "failed" => Some(Status::Failed),
        _ => None,
    };
    match (id, status) {
        (Some(id), Some(status)) => Ok(Verdict {
            message: ReceiptFor::Message(id),
            or: None,
            status,
            detail: Some(match ack.detail {
                Some(detail) => {
                    format!("webhook: {}", detail.chars().take(900).collect::<String>())
                }
                None => format!("webhook: {}", ack.status),
            }),
        }),
        (id, status) => {
            let mut errors = Vec::new();
            if id.is_none() {
                errors.push(FieldError::new("id", "must be the UMP message id"));
            }
            if status.is_none() {
                errors.push(FieldError::new(
                    "status",
                    "must be \"delivered\" or \"failed\"",
                ));
            }
            Err(Problem::validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signature_matches_twilios_documented_example() {
        // The example of Twilio's security guide (Auth Token 12345).
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .rev()
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
    }
}

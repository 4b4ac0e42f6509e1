//! NHN Cloud SMS API v3.0: `POST /sms/v3.0/appKeys/{appKey}/sender/sms` (SMS, body at most 90
//! bytes) and `/sender/mms` (LMS: a title of at most 40 bytes, body at most 2000), header
//! `X-Secret-Key`, JSON `{body, sendNo, recipientList: [{recipientNo | internationalRecipientNo}]}`;
//! answers `{header: {isSuccessful, resultCode, resultMessage}, body: {data: {requestId,
//! statusCode, sendResultList: [{recipientNo, resultCode, resultMessage, recipientSeq}]}}}`.
//! Lengths are counted as Korean carriers do: ASCII 1 byte, other characters 2.

use super::{Canned, Script, lock, serve};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const APP_KEY: &str = "nhnSmsAppKey123";
pub const SECRET_KEY: &str = "nhn-sms-secret-key-5ecret";
/// The files of a Secret the fake accepts (for `SecretsDir::secret`).
pub const SECRET: &[(&str, &str)] = &[("appKey", APP_KEY), ("secretKey", SECRET_KEY)];

/// A request the fake accepted: which product (`sms` or `mms`) and the JSON body.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub kind: String,
    pub body: Value,
}

pub struct FakeNhnSms {
    pub addr: SocketAddr,
    pub script: Script,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    accepted: Mutex<Vec<Accepted>>,
    /// When set, a wrong secret key is quoted back in the error message.
    echo_credentials: Mutex<bool>,
}

impl FakeNhnSms {
    pub async fn start() -> Self {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route("/sms/v3.0/appKeys/{app_key}/sender/{kind}", post(send))
            .with_state(state.clone());
        Self {
            addr: serve(router).await,
            script: state.script.clone(),
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.state.accepted).clone()
    }

    pub fn echo_credentials(&self) {
        *lock(&self.state.echo_credentials) = true;
    }
}

fn carrier_bytes(text: &str) -> usize {
    text.chars().map(|c| if c.is_ascii() { 1 } else { 2 }).sum()
}

pub fn failure(code: i64, message: &str) -> Canned {
    Canned::json(
        200,
        json!({"header": {"isSuccessful": false, "resultCode": code, "resultMessage": message}}),
    )
}

async fn send(
    State(state): State<Arc<Shared>>,
    Path((app_key, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if app_key != APP_KEY {
        return failure(-1000, "Invalid appKey.").into_response().await;
    }
    let secret = headers
        .get("x-secret-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if secret != SECRET_KEY {
        let message = if *lock(&state.echo_credentials) {
            format!("Invalid secretKey: {secret}")
        } else {
            "Invalid secretKey.".to_owned()
        };
        return failure(-1004, &message).into_response().await;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return failure(-9996, "Only 'application/json' is supported.")
            .into_response()
            .await;
    };
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    let text = request["body"].as_str().unwrap_or_default();
    let send_no = request["sendNo"].as_str().unwrap_or_default();
    let Some(recipients) = request["recipientList"]
        .as_array()
        .filter(|r| !r.is_empty())
    else {
        return failure(-5000, "recipientList is required.")
            .into_response()
            .await;
    };
    if text.is_empty() || send_no.is_empty() {
        return failure(-5000, "body and sendNo are required.")
            .into_response()
            .await;
    }
    let (max_body, title_ok) = match kind.as_str() {
        "sms" => (90, request.get("title").is_none()),
        "mms" => {
            let title = request["title"].as_str().unwrap_or_default();
            (2000, !title.is_empty() && carrier_bytes(title) <= 40)
        }
        _ => return failure(-5000, "Unknown sender type.").into_response().await,
    };
    if carrier_bytes(text) > max_body || !title_ok {
        return failure(-2000, &format!("Invalid {kind} length."))
            .into_response()
            .await;
    }
    let mut results = Vec::new();
    for (seq, recipient) in recipients.iter().enumerate() {
        let number = recipient["recipientNo"]
            .as_str()
            .or_else(|| recipient["internationalRecipientNo"].as_str())
            .unwrap_or_default();
        let valid = number.len() >= 8 && number.bytes().all(|b| b.is_ascii_digit());
        results.push(json!({
            "recipientNo": number,
            "resultCode": if valid { 0 } else { -2002 },
            "resultMessage": if valid { "SUCCESS" } else { "Invalid recipient number." },
            "recipientSeq": seq + 1,
            "recipientGroupingKey": null,
        }));
    }
    let n = {
        let mut accepted = lock(&state.accepted);
        accepted.push(Accepted {
            kind: kind.clone(),
            body: request.clone(),
        });
        accepted.len()
    };
    Canned::json(
        200,
        json!({
            "header": {"isSuccessful": true, "resultCode": 0, "resultMessage": "SUCCESS"},
            "body": {"data": {
                "requestId": format!("20260101000000nhn{n:08}"),
                "statusCode": "2",
                "senderGroupingKey": null,
                "sendResultList": results,
            }},
        }),
    )
    .into_response()
    .await
}

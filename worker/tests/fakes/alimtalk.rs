//! NHN Cloud BizMessage AlimTalk v2.3: `POST /alimtalk/v2.3/appkeys/{appkey}/messages` with
//! `X-Secret-Key` and `{senderKey, templateCode, recipientList: [{recipientNo, templateParameter,
//! buttons?, resendParameter?}]}`; answers `{header: {resultCode, resultMessage, isSuccessful},
//! message: {requestId, senderGroupingKey, sendResults: [{recipientSeq, recipientNo, resultCode,
//! resultMessage, recipientGroupingKey}]}}`.
//!
//! Like Kakao, it knows its approved templates (code → the parameters they need) and which
//! numbers have no KakaoTalk (result 3018); an unknown template is 3015, a missing parameter
//! 3016.

use super::{Canned, Script, lock, serve};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const APP_KEY: &str = "alimtalkAppKey42";
pub const SECRET_KEY: &str = "alimtalk-secret-key-5ecret";
pub const SENDER_KEY: &str = "a1b2c3d4e5f6sender-key-5ecret";

pub struct FakeAlimtalk {
    pub addr: SocketAddr,
    pub script: Script,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    templates: Mutex<HashMap<String, Vec<String>>>,
    not_kakao_users: Mutex<HashSet<String>>,
    accepted: Mutex<Vec<Value>>,
    echo_credentials: Mutex<bool>,
}

impl FakeAlimtalk {
    pub async fn start() -> Self {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route("/alimtalk/v2.3/appkeys/{appkey}/messages", post(send))
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

    /// Approves template `code`, which needs `parameters`.
    pub fn template(&self, code: &str, parameters: &[&str]) {
        lock(&self.state.templates).insert(
            code.to_owned(),
            parameters.iter().map(|p| (*p).to_owned()).collect(),
        );
    }

    pub fn without_kakao(&self, number: &str) {
        lock(&self.state.not_kakao_users).insert(number.to_owned());
    }

    pub fn accepted(&self) -> Vec<Value> {
        lock(&self.state.accepted).clone()
    }

    pub fn echo_credentials(&self) {
        *lock(&self.state.echo_credentials) = true;
    }
}

pub fn header_failure(code: i64, message: &str) -> Canned {
    Canned::json(
        200,
        json!({"header": {"resultCode": code, "resultMessage": message, "isSuccessful": false}}),
    )
}

/// The checks NHN makes of every BizMessage request (AlimTalk and FriendTalk share an account):
/// app key, secret key, a JSON body, sender key. `Err` is NHN's answer to a request that fails
/// one; `echo` quotes a wrong sender key back, as a careless server might.
pub fn check_account(
    app_key: &str,
    headers: &HeaderMap,
    body: &str,
    echo: bool,
) -> Result<Value, Canned> {
    if app_key != APP_KEY {
        return Err(header_failure(-1000, "Invalid appKey."));
    }
    let secret = headers
        .get("x-secret-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if secret != SECRET_KEY {
        return Err(header_failure(-1004, "Invalid secretKey."));
    }
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return Err(header_failure(
            -9996,
            "Only 'application/json' is supported.",
        ));
    };
    let sender_key = request["senderKey"].as_str().unwrap_or_default();
    if sender_key != SENDER_KEY {
        let message = if echo {
            format!("Invalid senderKey {sender_key}")
        } else {
            "Invalid senderKey.".to_owned()
        };
        return Err(header_failure(1003, &message));
    }
    Ok(request)
}

/// NHN's answer to an accepted send: request `n` of `product`, with one result per recipient
/// (`(recipientNo, resultCode, resultMessage)`).
pub fn accepted_answer(product: &str, n: usize, results: &[(String, i64, &str)]) -> Canned {
    let results: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(seq, (number, code, message))| {
            json!({
                "recipientSeq": seq + 1,
                "recipientNo": number,
                "resultCode": code,
                "resultMessage": message,
                "recipientGroupingKey": null,
            })
        })
        .collect();
    Canned::json(
        200,
        json!({
            "header": {"resultCode": 0, "resultMessage": "success", "isSuccessful": true},
            "message": {
                "requestId": format!("20260101-{product}-{n:06}"),
                "senderGroupingKey": null,
                "sendResults": results,
            },
        }),
    )
}

async fn send(
    State(state): State<Arc<Shared>>,
    Path(app_key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let echo = *lock(&state.echo_credentials);
    let request = match check_account(&app_key, &headers, &body, echo) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response().await,
    };
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    let Some(recipients) = request["recipientList"]
        .as_array()
        .filter(|r| !r.is_empty())
    else {
        return header_failure(-5000, "recipientList is required.")
            .into_response()
            .await;
    };
    let template = request["templateCode"].as_str().unwrap_or_default();
    let needed = lock(&state.templates).get(template).cloned();
    let mut results = Vec::new();
    for recipient in recipients {
        let number = recipient["recipientNo"].as_str().unwrap_or_default();
        let parameters = recipient["templateParameter"].as_object();
        let (code, message) = match &needed {
            None => (3015, "TemplateNotFound"),
            Some(needed)
                if !needed.iter().all(|p| {
                    parameters.is_some_and(|map| map.get(p).is_some_and(Value::is_string))
                }) =>
            {
                (3016, "NoMatchedTemplate")
            }
            _ if lock(&state.not_kakao_users).contains(number) => (3018, "NoSendAvailable"),
            _ if !recipient["resendParameter"].is_object() => (-5000, "resendParameter missing"),
            _ => (0, "SUCCESS"),
        };
        results.push((number.to_owned(), code, message));
    }
    let n = {
        let mut accepted = lock(&state.accepted);
        accepted.push(request.clone());
        accepted.len()
    };
    accepted_answer("alimtalk", n, &results)
        .into_response()
        .await
}

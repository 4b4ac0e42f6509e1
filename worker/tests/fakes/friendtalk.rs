//! NHN Cloud BizMessage FriendTalk v2.3: `POST /friendtalk/v2.3/appkeys/{appkey}/messages` with
//! `X-Secret-Key` and `{senderKey, recipientList: [{recipientNo, content, buttons?, imageUrl?,
//! imageLink?, resendParameter?, isAd?}]}`; answers like AlimTalk (same account and keys, the
//! AlimTalk fake's `APP_KEY`, `SECRET_KEY` and `SENDER_KEY`; same answer:
//! `{header: {...}, message: {requestId, sendResults: [...]}}`).
//!
//! Like Kakao, it knows which numbers are friends of the channel (FriendTalk reaches only
//! those: anyone else is 3018 NoSendAvailable, once `friends` is called), refuses an empty or
//! over-long `content`, and a non-boolean `isAd`.

use super::alimtalk::{accepted_answer, check_account, header_failure};
use super::{Script, lock, serve};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub struct FakeFriendtalk {
    pub addr: SocketAddr,
    pub script: Script,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    /// `None`: everyone is a friend of the channel.
    friends: Mutex<Option<HashSet<String>>>,
    accepted: Mutex<Vec<Value>>,
    /// Credentials seen on every request, accepted or not (the `X-Secret-Key` header).
    secret_keys: Mutex<Vec<String>>,
}

impl FakeFriendtalk {
    pub async fn start() -> Self {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route("/friendtalk/v2.3/appkeys/{appkey}/messages", post(send))
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

    /// Only these numbers (`01012345678`) are friends of the channel from now on.
    pub fn friends(&self, numbers: &[&str]) {
        *lock(&self.state.friends) = Some(numbers.iter().map(|n| (*n).to_owned()).collect());
    }

    pub fn accepted(&self) -> Vec<Value> {
        lock(&self.state.accepted).clone()
    }

    pub fn secret_keys(&self) -> Vec<String> {
        lock(&self.state.secret_keys).clone()
    }
}

async fn send(
    State(state): State<Arc<Shared>>,
    Path(app_key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(key) = headers.get("x-secret-key").and_then(|v| v.to_str().ok()) {
        lock(&state.secret_keys).push(key.to_owned());
    }
    let request = match check_account(&app_key, &headers, &body, false) {
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
    let friends = lock(&state.friends).clone();
    let mut results = Vec::new();
    for recipient in recipients {
        let number = recipient["recipientNo"].as_str().unwrap_or_default();
        let content = recipient["content"].as_str().unwrap_or_default();
        let limit = if recipient.get("imageUrl").is_some() {
            400
        } else {
            1000
        };
        let (code, message) = if content.trim().is_empty() {
            (-5000, "content is required.")
        } else if content.chars().count() > limit {
            (-5000, "content is too long.")
        } else if recipient.get("isAd").is_some_and(|v| !v.is_boolean()) {
            (-5000, "isAd must be a boolean.")
        } else if friends.as_ref().is_some_and(|f| !f.contains(number)) {
            (3018, "NoSendAvailable")
        } else {
            (0, "SUCCESS")
        };
        results.push((number.to_owned(), code, message));
    }
    let n = {
        let mut accepted = lock(&state.accepted);
        accepted.push(request.clone());
        accepted.len()
    };
    accepted_answer("friendtalk", n, &results)
        .into_response()
        .await
}

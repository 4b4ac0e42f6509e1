//! A webhook receiver that checks what a careful one would: `X-UMP-Signature` is the HMAC-SHA256
//! of the exact body under the shared secret (recomputed here independently of the provider's
//! code), `X-UMP-Timestamp` is recent, `Idempotency-Key` is the message's id. Bad signatures get
//! 401, everything else 200 with `{"id": "hook-<n>"}` unless a test queued another answer.

use super::{Canned, Script, lock, serve};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const SIGNING_SECRET: &str = "webhook-signing-5ecret";

#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Value,
}

pub struct FakeWebhook {
    pub addr: SocketAddr,
    pub script: Script,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    deliveries: Mutex<Vec<Delivery>>,
    refused: Mutex<usize>,
}

impl FakeWebhook {
    pub async fn start() -> Self {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route("/hooks/ump", post(receive))
            .with_state(state.clone());
        Self {
            addr: serve(router).await,
            script: state.script.clone(),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/ump", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state.deliveries).clone()
    }

    /// Requests refused for a bad signature, timestamp or idempotency key.
    pub fn refused(&self) -> usize {
        *lock(&self.state.refused)
    }
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(SIGNING_SECRET.as_bytes()).expect("HMAC key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn receive(State(state): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let signed = header("x-ump-signature") == expected_signature(body.as_bytes());
    let fresh = header("x-ump-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 300);
    let parsed = serde_json::from_str::<Value>(&body).ok();
    let keyed = parsed
        .as_ref()
        .and_then(|b| b["id"].as_str())
        .is_some_and(|id| id == header("idempotency-key"));
    if !(signed && fresh && keyed) {
        *lock(&state.refused) += 1;
        return Canned::json(401, json!({"error": "bad signature"}))
            .into_response()
            .await;
    }
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    let n = {
        let mut deliveries = lock(&state.deliveries);
        deliveries.push(Delivery {
            headers: headers.clone(),
            body: parsed.unwrap_or_default(),
        });
        deliveries.len()
    };
    Canned::json(200, json!({ "id": format!("hook-{n}") }))
        .into_response()
        .await
}

//! APNs: HTTP/2 over TLS (ALPN `h2` only, a self-signed certificate made per test), `POST
//! /3/device/{token}` with `authorization: bearer <JWT>` (ES256, `kid` = key id, `iss` = team id,
//! checked with the key's public half and refused when older than an hour), `apns-topic`,
//! `apns-push-type`, `apns-priority`, optional `apns-id`; a JSON payload with `aps`. Answers 200
//! with `apns-id`, or `{"reason": "..."}` (410 adds `timestamp`).

use super::{Canned, Script, TlsListener, lock, self_signed_localhost, tls_server_config};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const TEAM_ID: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const TOPIC: &str = "dev.ump.app";

/// What the fake saw of an accepted push.
#[derive(Clone, Debug)]
pub struct Push {
    pub version: Version,
    pub device: String,
    pub headers: HeaderMap,
    pub jwt: String,
    pub payload: Value,
}

pub struct FakeApns {
    pub addr: SocketAddr,
    pub script: Script,
    /// PEM of the certificate the fake serves (self-signed: it is its own CA).
    pub ca_pem: String,
    /// The `.p8` signing key the provider should use.
    pub auth_key_pem: String,
    state: Arc<Shared>,
}

struct Shared {
    script: Script,
    public_key_pem: String,
    unregistered: Mutex<HashSet<String>>,
    pushes: Mutex<Vec<Push>>,
    /// Provider tokens to refuse as expired (as APNs does for tokens older than an hour).
    expired_tokens: Mutex<HashSet<String>>,
    jwts_seen: Mutex<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenClaims {
    iss: String,
    iat: i64,
}

impl FakeApns {
    pub async fn start() -> Self {
        let signing_key = rcgen::KeyPair::generate().expect("P-256 key");
        let state = Arc::new(Shared {
            script: Script::default(),
            public_key_pem: signing_key.public_key_pem(),
            unregistered: Mutex::new(HashSet::new()),
            pushes: Mutex::new(Vec::new()),
            expired_tokens: Mutex::new(HashSet::new()),
            jwts_seen: Mutex::new(Vec::new()),
        });
        let (cert_pem, key_pem) = self_signed_localhost();
        // ALPN h2 only, like api.push.apple.com.
        let listener = TlsListener::bind(tls_server_config(&cert_pem, &key_pem, &[b"h2"])).await;
        let addr = axum::serve::Listener::local_addr(&listener).expect("local addr");
        let router = Router::new()
            .route("/3/device/{device}", post(push))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("fake APNs");
        });
        Self {
            addr,
            script: state.script.clone(),
            ca_pem: cert_pem,
            auth_key_pem: signing_key.serialize_pem(),
            state,
        }
    }

    /// The endpoint by name, so the certificate's `localhost` name is what TLS checks.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn unregister(&self, device: &str) {
        lock(&self.state.unregistered).insert(device.to_owned());
    }

    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.state.pushes).clone()
    }

    /// Every provider token presented so far, in order (accepted or not).
    pub fn jwts_seen(&self) -> Vec<String> {
        lock(&self.state.jwts_seen).clone()
    }

    /// From now on, refuse `jwt` with `403 ExpiredProviderToken`.
    pub fn expire(&self, jwt: &str) {
        lock(&self.state.expired_tokens).insert(jwt.to_owned());
    }
}

fn reason(status: u16, reason: &str) -> Canned {
    Canned::json(status, json!({ "reason": reason }))
}

fn verify(state: &Shared, jwt: &str) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(KEY_ID) {
        return Err("InvalidProviderToken");
    }
    let key = DecodingKey::from_ec_pem(state.public_key_pem.as_bytes())
        .map_err(|_| "InternalServerError")?;
    let mut validation = Validation::new(Algorithm::ES256);
    // Provider tokens carry no `exp`: APNs judges their age by `iat`.
    validation.required_spec_claims = HashSet::from(["iss".to_owned()]);
    validation.validate_exp = false;
    validation.set_issuer(&[TEAM_ID]);
    let claims = jsonwebtoken::decode::<TokenClaims>(jwt, &key, &validation)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    let age = chrono::Utc::now().timestamp() - claims.iat;
    if claims.iss != TEAM_ID || !(-60..=3600).contains(&age) {
        return Err("ExpiredProviderToken");
    }
    if lock(&state.expired_tokens).contains(jwt) {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}

async fn push(
    State(state): State<Arc<Shared>>,
    Path(device): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let jwt = header("authorization")
        .strip_prefix("bearer ")
        .unwrap_or_default()
        .to_owned();
    lock(&state.jwts_seen).push(jwt.clone());
    if jwt.is_empty() {
        return reason(403, "MissingProviderToken").into_response().await;
    }
    if let Err(why) = verify(&state, &jwt) {
        return reason(403, why).into_response().await;
    }
    if header("apns-topic") != TOPIC {
        return reason(400, "BadTopic").into_response().await;
    }
    if !matches!(header("apns-push-type").as_str(), "alert" | "background") {
        return reason(400, "InvalidPushType").into_response().await;
    }
    if !matches!(header("apns-priority").as_str(), "5" | "10") {
        return reason(400, "BadPriority").into_response().await;
    }
    let apns_id = header("apns-id");
    if !apns_id.is_empty() && uuid_like(&apns_id).is_none() {
        return reason(400, "BadMessageId").into_response().await;
    }
    // Apple: at most 64 bytes.
    if header("apns-collapse-id").len() > 64 {
        return reason(400, "BadCollapseId").into_response().await;
    }
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    if device.len() != 64 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(400, "BadDeviceToken").into_response().await;
    }
    let Ok(payload) = serde_json::from_str::<Value>(&body) else {
        return reason(400, "PayloadEmpty").into_response().await;
    };
    if !payload.get("aps").is_some_and(Value::is_object) {
        return reason(400, "PayloadEmpty").into_response().await;
    }
    if lock(&state.unregistered).contains(&device) {
        return Canned::json(
            410,
            json!({"reason": "Unregistered", "timestamp": chrono::Utc::now().timestamp_millis()}),
        )
        .into_response()
        .await;
    }
    lock(&state.pushes).push(Push {
        version,
        device,
        headers: headers.clone(),
        jwt,
        payload,
    });
    let id = if apns_id.is_empty() {
        ump_core::model::MessageId::new().to_string()
    } else {
        apns_id
    };
    ([("apns-id", id)], "").into_response()
}

/// `Some` when `text` is a UUID in 8-4-4-4-12 form, as APNs requires of `apns-id`.
fn uuid_like(text: &str) -> Option<()> {
    let parts: Vec<&str> = text.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    (parts.len() == 5
        && parts
            .iter()
            .zip(shape)
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit())))
    .then_some(())
}

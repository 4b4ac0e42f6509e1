//! FCM HTTP v1 and Google's OAuth2 token endpoint.
//!
//! `POST /token`: form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`;
//! the JWT must be RS256-signed by the service account's key (checked with its public key), with
//! `iss` = the account's email, `aud` = this token URL, the FCM scope, and a lifetime of at most
//! an hour. Answers `{access_token, expires_in, token_type: "Bearer"}` or
//! `{error: "invalid_grant", error_description}`.
//!
//! `POST /v1/projects/{project}/messages:send` with `Authorization: Bearer <access token>` and
//! `{"message": {"token", "notification"?, "data"? (strings only)}}`; answers `{"name":
//! "projects/{project}/messages/{id}"}` or Google's error shape with an `FcmError` detail
//! (`UNREGISTERED`, `INVALID_ARGUMENT`, …).

use super::{Canned, Script, lock, serve};
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PROJECT: &str = "ump-test-project";
pub const CLIENT_EMAIL: &str = "ump-sender@ump-test-project.iam.gserviceaccount.com";
pub const KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
/// A test-only RSA key, committed for these tests alone.
pub const PRIVATE_KEY_PEM: &str = include_str!("fcm-test-key.pem");
const PUBLIC_KEY_PEM: &str = include_str!("fcm-test-key.pub.pem");
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub struct FakeFcm {
    pub addr: SocketAddr,
    /// Answers to sends (the token endpoint is not scripted).
    pub script: Script,
    state: Arc<Shared>,
}

struct Shared {
    script: Script,
    token_uri: Mutex<String>,
    /// Lifetime of the access tokens handed out.
    expires_in: Mutex<u64>,
    issued: Mutex<HashMap<String, Instant>>,
    token_requests: Mutex<usize>,
    unregistered: Mutex<HashSet<String>>,
    sent: Mutex<Vec<Value>>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

impl FakeFcm {
    pub async fn start() -> Self {
        let state = Arc::new(Shared {
            script: Script::default(),
            token_uri: Mutex::new(String::new()),
            expires_in: Mutex::new(3599),
            issued: Mutex::new(HashMap::new()),
            token_requests: Mutex::new(0),
            unregistered: Mutex::new(HashSet::new()),
            sent: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{*rest}", post(send))
            .with_state(state.clone());
        let addr = serve(router).await;
        *lock(&state.token_uri) = format!("http://{addr}/token");
        Self {
            addr,
            script: state.script.clone(),
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_uri(&self) -> String {
        lock(&self.state.token_uri).clone()
    }

    /// The service-account key file Google would issue, pointing at this fake's token endpoint.
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": PRIVATE_KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000000",
            "auth_uri": "http://127.0.0.1:9/auth",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }

    pub fn set_token_lifetime(&self, seconds: u64) {
        *lock(&self.state.expires_in) = seconds;
    }

    pub fn token_requests(&self) -> usize {
        *lock(&self.state.token_requests)
    }

    /// Revokes every access token handed out so far.
    pub fn revoke_tokens(&self) {
        lock(&self.state.issued).clear();
    }

    pub fn unregister(&self, device: &str) {
        lock(&self.state.unregistered).insert(device.to_owned());
    }

    pub fn sent(&self) -> Vec<Value> {
        lock(&self.state.sent).clone()
    }
}

fn oauth_error(description: &str) -> Canned {
    Canned::json(
        400,
        json!({"error": "invalid_grant", "error_description": description}),
    )
}

async fn token(
    State(state): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    *lock(&state.token_requests) += 1;
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Canned::json(400, json!({"error": "unsupported_grant_type"}))
            .into_response()
            .await;
    }
    let assertion = form
        .get("assertion")
        .map(String::as_str)
        .unwrap_or_default();
    let header = match jsonwebtoken::decode_header(assertion) {
        Ok(header) => header,
        Err(_) => return oauth_error("Invalid JWT.").into_response().await,
    };
    if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(KEY_ID) {
        return oauth_error("Invalid JWT: wrong algorithm or key id.")
            .into_response()
            .await;
    }
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY_PEM.as_bytes()).expect("test public key");
    let token_uri = lock(&state.token_uri).clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri.as_str()]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return oauth_error(&format!("Invalid JWT Signature or claims: {e}"))
                .into_response()
                .await;
        }
    };
    if claims.iss != CLIENT_EMAIL
        || claims.aud != token_uri
        || !claims.scope.split(' ').any(|s| s == SCOPE)
        || claims.exp - claims.iat > 3600
    {
        return oauth_error("Invalid JWT claims.").into_response().await;
    }
    let expires_in = *lock(&state.expires_in);
    let access_token = format!("ya29.fake-{}", ump_core::testing::unique_name("at"));
    lock(&state.issued).insert(
        access_token.clone(),
        Instant::now() + Duration::from_secs(expires_in),
    );
    Canned::json(
        200,
        json!({"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"}),
    )
    .into_response()
    .await
}

pub fn fcm_error(
    status: u16,
    grpc_status: &str,
    error_code: Option<&str>,
    message: &str,
) -> Canned {
    let details = error_code.map_or(json!([]), |code| {
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}])
    });
    Canned::json(
        status,
        json!({"error": {"code": status, "message": message, "status": grpc_status, "details": details}}),
    )
}

async fn send(
    State(state): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    // axum cannot route on `{project}/messages:send`; split the rest of the path here.
    let Some(project) = rest.strip_suffix("/messages:send") else {
        return fcm_error(404, "NOT_FOUND", None, "Not found")
            .into_response()
            .await;
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let valid = lock(&state.issued)
        .get(bearer)
        .is_some_and(|expiry| Instant::now() < *expiry);
    if !valid {
        return fcm_error(
            401,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        )
        .into_response()
        .await;
    }
    if project != PROJECT {
        return fcm_error(
            403,
            "PERMISSION_DENIED",
            Some("SENDER_ID_MISMATCH"),
            "SenderId mismatch",
        )
        .into_response()
        .await;
    }
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return fcm_error(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Invalid JSON payload",
        )
        .into_response()
        .await;
    };
    let message = &request["message"];
    let Some(device) = message["token"].as_str().filter(|t| !t.is_empty()) else {
        return fcm_error(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        )
        .into_response()
        .await;
    };
    if let Some(data) = message.get("data") {
        let strings = data
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string));
        if !strings {
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "Invalid value at 'message.data': values must be strings",
            )
            .into_response()
            .await;
        }
    }
    if lock(&state.unregistered).contains(device) {
        return fcm_error(
            404,
            "NOT_FOUND",
            Some("UNREGISTERED"),
            "Requested entity was not found.",
        )
        .into_response()
        .await;
    }
    let n = {
        let mut sent = lock(&state.sent);
        sent.push(request.clone());
        sent.len()
    };
    Canned::json(
        200,
        json!({"name": format!("projects/{PROJECT}/messages/0:{n}")}),
    )
    .into_response()
    .await
}

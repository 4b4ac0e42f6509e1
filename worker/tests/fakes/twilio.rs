//! Twilio's Messages API: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, Basic auth with
//! the Account SID and Auth Token, a form body (`To`, `From` or `MessagingServiceSid`, `Body`,
//! optional `StatusCallback`); `201 {"sid": "SM…", "status": "queued", …}` or an error
//! `{"code", "message", "more_info", "status"}`.

use super::{Canned, Script, lock, serve};
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-auth-token-5ecret";
/// The files of a Secret the fake accepts (for `SecretsDir::secret`).
pub const SECRET: &[(&str, &str)] = &[("accountSid", ACCOUNT_SID), ("authToken", AUTH_TOKEN)];

pub struct FakeTwilio {
    pub addr: SocketAddr,
    pub script: Script,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    /// Form bodies of the accepted messages.
    sent: Mutex<Vec<HashMap<String, String>>>,
    /// When set, error answers quote the Authorization header, as a careless proxy might.
    echo_credentials: Mutex<bool>,
}

impl FakeTwilio {
    pub async fn start() -> Self {
        let state = Arc::new(Shared::default());
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
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

    pub fn sent(&self) -> Vec<HashMap<String, String>> {
        lock(&self.state.sent).clone()
    }

    pub fn echo_credentials(&self) {
        *lock(&self.state.echo_credentials) = true;
    }
}

fn error(status: u16, code: u32, message: &str) -> Canned {
    Canned::json(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

/// The `user:password` of a Basic Authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<String> {
    let encoded = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(decoded).ok()
}

async fn create_message(
    State(state): State<Arc<Shared>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    // Rejects anything but `application/x-www-form-urlencoded`, as Twilio does.
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let credentials = basic_credentials(&headers);
    if sid != ACCOUNT_SID || credentials.as_deref() != Some(&format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    {
        let message = if *lock(&state.echo_credentials) {
            format!("Authenticate (got {})", credentials.unwrap_or_default())
        } else {
            "Authenticate".to_owned()
        };
        return error(401, 20003, &message).into_response().await;
    }
    if let Some(canned) = state.script.next() {
        return canned.into_response().await;
    }
    let Some(to) = form.get("To") else {
        return error(400, 21604, "A 'To' phone number is required.")
            .into_response()
            .await;
    };
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return error(400, 21603, "A 'From' phone number is required.")
            .into_response()
            .await;
    }
    if form.get("Body").is_none_or(|b| b.is_empty()) {
        return error(400, 21602, "Message body is required.")
            .into_response()
            .await;
    }
    if !is_e164(to) {
        return error(
            400,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        )
        .into_response()
        .await;
    }
    let n = {
        let mut sent = lock(&state.sent);
        sent.push(form.clone());
        sent.len()
    };
    Canned::json(
        201,
        json!({
            "sid": format!("SM{n:032x}"),
            "account_sid": ACCOUNT_SID,
            "to": to,
            "from": form.get("From"),
            "body": form.get("Body"),
            "status": "queued",
            "num_segments": "1",
            "api_version": "2010-04-01",
        }),
    )
    .into_response()
    .await
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

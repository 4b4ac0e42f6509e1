//! The receiver of the webhook benchmark (`scripts/bench-webhooks`): answers every POST 204 and
//! counts requests and distinct `webhook-id`s; `GET /count` answers `<requests> <distinct>
//! <first> <last>`, the Unix times (seconds, to the microsecond) at which the first and the latest
//! new id came; `POST /reset` starts counting afresh.
//!
//! cargo run --release -p ump-worker --example webhook_sink -- 127.0.0.1:18095

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Seen {
    requests: u64,
    ids: HashSet<String>,
    first_new: f64,
    last_new: f64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18095".to_owned());
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let counted = Arc::clone(&seen);
    let reset = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |headers: HeaderMap| {
                let seen = Arc::clone(&seen);
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if let Ok(mut s) = seen.lock() {
                        s.requests += 1;
                        if s.ids.insert(id) {
                            s.last_new = unix_now();
                            if s.ids.len() == 1 {
                                s.first_new = s.last_new;
                            }
                        }
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/reset",
            post(move || {
                let reset = Arc::clone(&reset);
                async move {
                    if let Ok(mut s) = reset.lock() {
                        *s = Seen::default();
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/count",
            get(move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted
                        .lock()
                        .map(|s| {
                            format!(
                                "{} {} {:.6} {:.6}",
                                s.requests,
                                s.ids.len(),
                                s.first_new,
                                s.last_new
                            )
                        })
                        .unwrap_or_default()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}

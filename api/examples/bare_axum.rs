//! The ceiling for the accept benchmark: an axum handler that reads the body and answers 202 with
//! a fixed JSON, doing none of UMP's work (no auth, validation, or broker round trip).
//!
//! cargo run --release -p ump-api --example bare_axum -- 127.0.0.1:18081

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let app = axum::Router::new().route(
        "/v1/messages",
        post(|body: Bytes| async move {
            let _ = body.len();
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"id":"01900000-0000-7000-8000-000000000000","status":"accepted"}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}

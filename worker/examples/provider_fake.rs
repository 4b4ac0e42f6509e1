//! A fast local fake of the push providers for `scripts/bench-providers`, answering after a set
//! latency as the real APIs would over the network:
//!
//! - APNs: `POST /3/device/{token}` (the UMP message id in `apns-id`), HTTP/2 with up to 1,000
//!   concurrent streams per connection, as Apple's servers allow;
//! - FCM HTTP v1: `POST /token` (an OAuth2 access token for any assertion: the benchmark measures
//!   UMP, not the token check) and `POST /v1/projects/{project}/messages:send` (the message id is
//!   the Android `collapse_key`).
//!
//! - NHN Cloud AlimTalk v2.3: `POST /alimtalk/v2.3/appkeys/{appKey}/messages` with up to 1,000
//!   recipients (the UMP message id in each `recipientGroupingKey`), each answered `0`.
//!
//! TLS with a certificate made at start (ALPN `h2`, then `http/1.1`). With `BENCH_FAIL_PERCENT`
//! set, that share of sends answers `500` (retryable, and no sign of overload), spread evenly.
//! `GET /stats` answers the counts: requests, accepted, distinct accepted ids, failed.
//!
//!   provider_fake <dir> [127.0.0.1:port]   # writes <dir>/ca.pem, <dir>/apns/authKey.p8,
//!                                          # <dir>/fcm/service-account.json, <dir>/alimtalk/*,
//!                                          # then <dir>/addr
//!                                          # once listening (on a free port by default)
//!
//! Listens on 127.0.0.1 only; stops when killed.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The RSA key of the FCM service account: the test-only key the provider tests use.
const FCM_PRIVATE_KEY: &str = include_str!("../tests/fakes/fcm-test-key.pem");

struct Fake {
    latency: Duration,
    fail_percent: u64,
    requests: AtomicU64,
    failed: AtomicU64,
    accepted: AtomicU64,
    ids: Mutex<HashSet<String>>,
}

impl Fake {
    fn stats(&self) -> String {
        let distinct = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "accepted": self.accepted.load(Ordering::Relaxed),
            "distinct": distinct,
            "failed": self.failed.load(Ordering::Relaxed),
        })
        .to_string()
    }

    /// Whether this send fails: every `100 / fail_percent`-th one, so the share is exact.
    fn fails(&self, n: u64) -> bool {
        self.fail_percent > 0 && (n * self.fail_percent) % 100 < self.fail_percent
    }

    fn accept(&self, id: String) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    fake: Arc<Fake>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_owned();
    if path == "/stats" {
        return Ok(answer(StatusCode::OK, fake.stats()));
    }
    if path == "/token" {
        let token = serde_json::json!({"access_token": "bench-token", "expires_in": 3599, "token_type": "Bearer"});
        return Ok(answer(StatusCode::OK, token.to_string()));
    }
    let apns_id = request
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes();
    let n = fake.requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(fake.latency).await;
    if fake.fails(n) {
        fake.failed.fetch_add(1, Ordering::Relaxed);
        let error = if path.starts_with("/3/device/") {
            serde_json::json!({"reason": "InternalServerError"})
        } else {
            serde_json::json!({"error": {"code": 500, "status": "INTERNAL", "message": "bench"}})
        };
        return Ok(answer(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()));
    }
    if path.starts_with("/3/device/") {
        let id = apns_id.unwrap_or_default();
        fake.accept(id.clone());
        let mut response = answer(StatusCode::OK, String::new());
        if let Ok(value) = hyper::header::HeaderValue::from_str(&id) {
            response.headers_mut().insert("apns-id", value);
        }
        return Ok(response);
    }
    if path.starts_with("/alimtalk/v2.3/appkeys/") && path.ends_with("/messages") {
        let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let recipients = sent["recipientList"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut results = Vec::with_capacity(recipients.len());
        for (seq, recipient) in recipients.iter().enumerate() {
            let id = recipient["recipientGroupingKey"]
                .as_str()
                .unwrap_or_default();
            fake.accept(id.to_owned());
            results.push(serde_json::json!({"recipientSeq": seq + 1, "recipientNo": recipient["recipientNo"], "resultCode": 0, "resultMessage": "SUCCESS", "recipientGroupingKey": id}));
        }
        let answer_body = serde_json::json!({
            "header": {"resultCode": 0, "resultMessage": "SUCCESS", "isSuccessful": true},
            "message": {"requestId": format!("bench-{n}"), "senderGroupingKey": null, "sendResults": results},
        });
        return Ok(answer(StatusCode::OK, answer_body.to_string()));
    }
    if path.starts_with("/v1/projects/") && path.ends_with("/messages:send") {
        let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = sent["message"]["android"]["collapse_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        fake.accept(id.clone());
        let name = serde_json::json!({"name": format!("projects/bench/messages/{id}")});
        return Ok(answer(StatusCode::OK, name.to_string()));
    }
    Ok(answer(StatusCode::NOT_FOUND, "{}".into()))
}

fn tls_config(cert_pem: &str, key_pem: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
    std::fs::write(&path, text).expect("write");
}

#[tokio::main]
async fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: provider_fake <dir>"));
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let fake = Arc::new(Fake {
        latency: Duration::from_millis(number("BENCH_LATENCY_MS", 30)),
        fail_percent: number("BENCH_FAIL_PERCENT", 0).min(100),
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        ids: Mutex::new(HashSet::new()),
    });
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let cert_pem = certified.cert.pem();
    let listen = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listen: std::net::SocketAddr = listen.parse().expect("an address");
    assert!(
        listen.ip().is_loopback(),
        "the fake listens on loopback only"
    );
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    write(dir.join("ca.pem"), &cert_pem);
    let p8 = rcgen::KeyPair::generate()
        .expect("P-256 key")
        .serialize_pem();
    write(dir.join("apns/authKey.p8"), &p8);
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "ump-bench",
        "private_key_id": "bench",
        "private_key": FCM_PRIVATE_KEY,
        "client_email": "bench@ump-bench.iam.gserviceaccount.com",
        "token_uri": format!("https://{addr}/token"),
    });
    write(dir.join("fcm/service-account.json"), &account.to_string());
    for (key, value) in [
        ("appKey", "benchAppKey"),
        ("secretKey", "bench-secret"),
        ("senderKey", "bench-sender"),
    ] {
        write(dir.join("alimtalk").join(key), value);
    }
    write(dir.join("addr"), &addr.to_string());

    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
        &cert_pem,
        &certified.signing_key.serialize_pem(),
    )));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, fake) = (acceptor.clone(), fake.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000);
            let service = hyper::service::service_fn(move |request| handle(fake.clone(), request));
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

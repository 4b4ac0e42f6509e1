//! Local stand-ins for the SaaS APIs UMP's providers call (Twilio, NHN Cloud SMS, AlimTalk and FriendTalk,
//! FCM with its OAuth2 token endpoint, APNs over HTTP/2 + TLS, a webhook receiver), on
//! 127.0.0.1 with a port of their own. Each checks requests the way the real service does
//! (credentials, signatures, required fields) and answers in its documented shapes; a test can
//! queue other answers (429 + Retry-After, 500, a stall, a specific error code) to see them
//! classified.
//!
//! Shared by several test binaries, each using a part of it.
#![allow(dead_code)]

pub mod alimtalk;
pub mod apns;
pub mod fcm;
pub mod friendtalk;
pub mod nhn_sms;
pub mod twilio;
pub mod webhook;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Map;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ump_core::model::MessageId;
use ump_core::provider::Outgoing;
use ump_core::resources::{ChannelType, ProviderSpec, ProviderType, SecretRef};
use ump_worker::providers::ProviderContext;

/// An answer a test wants instead of the fake's normal one.
#[derive(Clone, Debug)]
pub enum Canned {
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Answer nothing for this long (longer than the client's timeout, usually).
    Stall(Duration),
}

impl Canned {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(self, name: &'static str, value: &str) -> Self {
        match self {
            Self::Reply {
                status,
                mut headers,
                body,
            } => {
                headers.push((name, value.to_owned()));
                Self::Reply {
                    status,
                    headers,
                    body,
                }
            }
            stall => stall,
        }
    }

    pub async fn into_response(self) -> Response {
        match self {
            Self::Reply {
                status,
                headers,
                body,
            } => {
                let mut map = HeaderMap::new();
                for (name, value) in headers {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        map.insert(HeaderName::from_static(name), value);
                    }
                }
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
                (status, map, body).into_response()
            }
            Self::Stall(duration) => {
                tokio::time::sleep(duration).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
        }
    }
}

/// Answers queued by a test, used before the fake's normal behaviour; or an outage: one answer
/// to every request until a moment.
#[derive(Clone, Default)]
pub struct Script(Arc<Mutex<ScriptState>>);

#[derive(Default)]
struct ScriptState {
    queued: VecDeque<Canned>,
    outage: Option<(std::time::Instant, Canned)>,
}

impl Script {
    pub fn push(&self, canned: Canned) {
        lock(&self.0).queued.push_back(canned);
    }

    /// Every request gets `canned` for `lasting` from now (the service is down), then the queued
    /// and normal answers resume.
    pub fn outage(&self, canned: Canned, lasting: Duration) {
        lock(&self.0).outage = Some((std::time::Instant::now() + lasting, canned));
    }

    pub fn next(&self) -> Option<Canned> {
        let mut state = lock(&self.0);
        match &state.outage {
            Some((until, canned)) if std::time::Instant::now() < *until => Some(canned.clone()),
            _ => state.queued.pop_front(),
        }
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `router` over plain HTTP on 127.0.0.1 (port chosen by the OS) until the test ends.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("fake server");
    });
    addr
}

/// A directory laid out like a mounted Kubernetes Secret volume: `<root>/<secret>/<key>`.
pub struct SecretsDir {
    root: PathBuf,
}

impl SecretsDir {
    pub fn new() -> Self {
        let root = std::env::temp_dir().join(ump_core::testing::unique_name("ump-secrets"));
        std::fs::create_dir_all(&root).expect("create secrets dir");
        Self { root }
    }

    /// Writes the Secret `name` with `files` (key, value).
    pub fn secret(&self, name: &str, files: &[(&str, &str)]) -> &Self {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).expect("create secret dir");
        for (key, value) in files {
            std::fs::write(dir.join(key), value).expect("write secret file");
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn ctx(&self) -> ProviderContext<'_> {
        ProviderContext {
            secrets_dir: &self.root,
            sandbox_outbox: Path::new("/dev/null"),
        }
    }
}

impl Drop for SecretsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn spec(
    name: &str,
    provider_type: ProviderType,
    secret: Option<&str>,
    settings: &[(&str, &str)],
) -> ProviderSpec {
    ProviderSpec {
        name: name.to_owned(),
        provider_type,
        secret_ref: secret.map(|name| SecretRef {
            name: name.to_owned(),
        }),
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

pub fn message(channel_type: ChannelType, to: &str, text: &str) -> Outgoing {
    Outgoing {
        id: MessageId::new(),
        tenant: "default".into(),
        channel: "test".into(),
        channel_type,
        to: to.to_owned(),
        subject: None,
        text: text.to_owned(),
        html: None,
        template: None,
        data: Map::new(),
        metadata: Map::new(),
        category: Default::default(),
        attempt: 1,
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
pub fn self_signed_localhost() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("generate key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate params");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// A rustls server config for `cert_pem`/`key_pem` offering `alpn` protocols.
pub fn tls_server_config(cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    ump_core::tls::install_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TCP listener that hands axum TLS connections.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    pub async fn bind(config: rustls::ServerConfig) -> Self {
        Self {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0"),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that fails the handshake (a test of an untrusted CA) is just dropped.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

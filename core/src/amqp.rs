//! The realtime queue: one persistent ActiveMQ queue per channel, spoken to over AMQP 1.0. The API
//! answers `202` only once the broker has settled the transfer as `accepted`, i.e. stored it
//! (durable header: ActiveMQ persists the message before it answers). The worker's realtime
//! consumer uses the same connection settings.

use crate::model::Envelope;
use crate::queue::{EnqueueError, MessageQueue};
use crate::resources::MessageChannel;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Header, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Sender, Session};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Connections an `AmqpQueue` sends over, in turn. ActiveMQ works through a connection's commands
/// one after the other and answers a persistent send once it is stored, so over one connection
/// every send waits for the disk writes of the sends before it; over several, the broker stores
/// them side by side and one journal write takes many.
const CONNECTIONS: usize = 4;
/// How long opening a connection (TCP, SASL, AMQP open) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A broker that sends nothing for this long is taken for dead (it heartbeats at half of it).
const IDLE_TIMEOUT_MS: u32 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum AmqpUrlError {
    #[error("UMP_AMQP_URL is not a URL: {0}")]
    Invalid(String),
    #[error("UMP_AMQP_URL must start with amqp:// or amqps://")]
    Scheme,
    #[error("UMP_AMQP_URL has no host")]
    Host,
}

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("AMQP connection to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("AMQP: {0}")]
    Protocol(String),
}

/// Where the broker is and how to log in: `amqp[s]://user:password@host:port`. The password never
/// appears in logs or errors (`Debug` and `endpoint` show scheme, host and port only).
#[derive(Clone)]
pub struct AmqpSettings {
    url: url::Url,
    username: Option<String>,
    password: String,
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for AmqpSettings {
    type Err = AmqpUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

impl AmqpSettings {
    pub fn parse(text: &str) -> Result<Self, AmqpUrlError> {
        // The parser's message never echoes the input, so no password leaks through it.
        let url = url::Url::parse(text.trim()).map_err(|e| AmqpUrlError::Invalid(e.to_string()))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(AmqpUrlError::Scheme);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(AmqpUrlError::Host);
        }
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode).unwrap_or_default();
        Ok(Self {
            url,
            username,
            password,
        })
    }

    /// `scheme://host:port`, for logs.
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}:{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default(),
            self.port()
        )
    }

    fn port(&self) -> u16 {
        self.url.port().unwrap_or(if self.url.scheme() == "amqps" {
            5671
        } else {
            5672
        })
    }

    /// Opens a connection with TCP_NODELAY: a realtime message is one small transfer answered by
    /// one small disposition, exactly the exchange Nagle's algorithm would hold back.
    pub async fn connect(&self, container_id: &str) -> Result<ConnectionHandle<()>, AmqpError> {
        let failed = |detail: String| AmqpError::Connect {
            endpoint: self.endpoint(),
            detail,
        };
        let host = self.url.host_str().unwrap_or_default();
        // `[::1]` in a URL is `::1` to the resolver.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let open = async {
            let stream = TcpStream::connect((bare_host, self.port()))
                .await
                .map_err(|e| failed(e.to_string()))?;
            stream
                .set_nodelay(true)
                .map_err(|e| failed(format!("TCP_NODELAY: {e}")))?;
            let mut builder = Connection::builder()
                .container_id(container_id)
                .scheme(self.url.scheme())
                .hostname(bare_host)
                .idle_time_out(IDLE_TIMEOUT_MS);
            if self.url.scheme() == "amqps" {
                builder = builder.domain(bare_host);
            }
            if let Some(username) = &self.username {
                builder = builder.sasl_profile(SaslProfile::Plain {
                    username: username.clone(),
                    password: self.password.clone(),
                });
            }
            builder
                .open_with_stream(stream)
                .await
                .map_err(|e| failed(e.to_string()))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
    }
}

/// The AMQP message that carries `envelope`: durable (ActiveMQ stores it before it answers
/// `accepted`; a non-durable AMQP message would live in memory only), the envelope as JSON in one
/// data section, the message id in the properties.
pub fn envelope_message(
    envelope: &Envelope,
) -> Result<Message<fe2o3_amqp::types::messaging::Data>, EnqueueError> {
    let payload =
        serde_json::to_vec(envelope).map_err(|e| EnqueueError::Rejected(e.to_string()))?;
    Ok(Message::builder()
        .header(Header {
            durable: true,
            ..Default::default()
        })
        .properties(
            Properties::builder()
                .message_id(envelope.id.to_string())
                .content_type("application/json")
                .build(),
        )
        .data(Binary::from(payload))
        .build())
}

/// The envelope an AMQP message carries (as [`envelope_message`] makes it), or why it carries
/// none.
pub fn envelope_of(body: &Body<Value>) -> Result<Envelope, String> {
    match body {
        Body::Data(sections) => {
            let bytes: Vec<u8> = sections
                .iter()
                .flat_map(|data| data.0.iter().copied())
                .collect();
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        }
        // A broker that turned a JSON payload into a text message hands it back as a string.
        Body::Value(AmqpValue(Value::String(text))) => {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
        Body::Value(AmqpValue(Value::Binary(bytes))) => {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        }
        _ => Err("the message body is not an envelope (expected JSON data)".to_owned()),
    }
}

/// A live connection with one sender link per queue, attached on first use.
struct Link {
    /// Tells a stale failure report (about a connection already replaced) from a current one.
    generation: u64,
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    senders: HashMap<String, Arc<Mutex<Sender>>>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    generation: u64,
    /// After a failed connect, accepts answer `503` at once until this moment instead of each
    /// trying (and waiting) again.
    retry_at: Option<Instant>,
    failures: u32,
}

/// The realtime `MessageQueue`: a few connections used in turn, each with one session and one
/// sender link per channel queue. Sends are pipelined: a sender's lock is held only while the
/// transfer is handed to the connection, not while the broker's disposition is awaited.
pub struct AmqpQueue {
    settings: AmqpSettings,
    container_id: String,
    timeout: Duration,
    links: Vec<Mutex<State>>,
    next: AtomicUsize,
}

/// Why a send failed: before the transfer left (safe to try again on a new connection) or after
/// (the broker may have it: the client must decide, so the answer is 503).
enum SendFailure {
    NotSent(String),
    Unknown(String),
}

impl AmqpQueue {
    /// `timeout` bounds how long an accept waits for the broker before answering 503.
    pub fn new(settings: AmqpSettings, timeout: Duration) -> Self {
        Self {
            settings,
            container_id: format!("ump-api-{}", uuid::Uuid::new_v4().simple()),
            timeout,
            links: (0..CONNECTIONS)
                .map(|_| Mutex::new(State::default()))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The sender of `queue` on connection `index`, connecting first when there is none.
    async fn sender(&self, index: usize, queue: &str) -> Result<(u64, Arc<Mutex<Sender>>), String> {
        let mut state = self.links[index].lock().await;
        if state
            .link
            .as_ref()
            .is_some_and(|l| l.connection.is_closed())
        {
            state.link = None;
        }
        if state.link.is_none() {
            if let Some(at) = state.retry_at
                && Instant::now() < at
            {
                return Err(format!(
                    "{} unreachable; next attempt in {:?}",
                    self.settings.endpoint(),
                    at - Instant::now()
                ));
            }
            // A fresh container id per connection: the broker may not yet have noticed that the
            // previous one is gone, and refuses a second connection with the same id.
            let container_id = format!(
                "{}-{index}-{}",
                self.container_id,
                uuid::Uuid::new_v4().simple()
            );
            match self.open(&container_id).await {
                Ok((connection, session)) => {
                    state.generation += 1;
                    state.failures = 0;
                    state.retry_at = None;
                    state.link = Some(Link {
                        generation: state.generation,
                        connection,
                        session,
                        senders: HashMap::new(),
                    });
                    tracing::info!(broker = %self.settings.endpoint(), "AMQP connected");
                }
                Err(e) => {
                    state.failures += 1;
                    let wait = Duration::from_millis(100)
                        .saturating_mul(1 << state.failures.min(5))
                        .min(Duration::from_secs(2));
                    state.retry_at = Some(Instant::now() + wait);
                    return Err(e.to_string());
                }
            }
        }
        let Some(link) = state.link.as_mut() else {
            return Err("no AMQP connection".to_owned());
        };
        if let Some(sender) = link.senders.get(queue) {
            return Ok((link.generation, Arc::clone(sender)));
        }
        let name = format!("{}-{index}-{queue}", self.container_id);
        match Sender::attach(&mut link.session, name, queue).await {
            Ok(sender) => {
                let sender = Arc::new(Mutex::new(sender));
                link.senders.insert(queue.to_owned(), Arc::clone(&sender));
                Ok((link.generation, sender))
            }
            Err(e) => {
                let generation = link.generation;
                drop(state);
                self.broken(index, generation).await;
                Err(format!("attaching a sender to {queue}: {e}"))
            }
        }
    }

    /// `container_id` must be unique: ActiveMQ refuses a second connection with the same one.
    async fn open(
        &self,
        container_id: &str,
    ) -> Result<(ConnectionHandle<()>, SessionHandle<()>), AmqpError> {
        let mut connection = self.settings.connect(container_id).await?;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| AmqpError::Protocol(format!("beginning a session: {e}")))?;
        Ok((connection, session))
    }

    /// Drops connection `index` if it is still the one of `generation`: the next send over it
    /// opens a new one.
    async fn broken(&self, index: usize, generation: u64) {
        let mut state = self.links[index].lock().await;
        if state
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
            && let Some(mut link) = state.link.take()
        {
            drop(state);
            // Closing tells the broker at once; a dead connection just fails to close.
            let _ = tokio::time::timeout(Duration::from_secs(1), link.connection.close()).await;
        }
    }

    async fn send_once(
        &self,
        index: usize,
        queue: &str,
        message: Message<fe2o3_amqp::types::messaging::Data>,
    ) -> Result<(), SendFailure> {
        let (generation, sender) = self
            .sender(index, queue)
            .await
            .map_err(SendFailure::NotSent)?;
        let pending = {
            let mut sender = sender.lock().await;
            sender.send_batchable(message).await
        };
        let outcome = match pending {
            Ok(pending) => pending.await,
            Err(e) => {
                self.broken(index, generation).await;
                return Err(SendFailure::NotSent(e.to_string()));
            }
        };
        match outcome {
            Ok(Outcome::Accepted(_)) => Ok(()),
            // Rejected: the broker could not store it (store full, no permission); released or
            // modified: it did not take it. None of these is about what the client sent.
            Ok(other) => Err(SendFailure::Unknown(format!("broker answered {other:?}"))),
            Err(e) => {
                self.broken(index, generation).await;
                Err(SendFailure::Unknown(e.to_string()))
            }
        }
    }
}

#[async_trait::async_trait]
impl MessageQueue for AmqpQueue {
    async fn enqueue(
        &self,
        channel: &MessageChannel,
        envelope: &Envelope,
    ) -> Result<(), EnqueueError> {
        let queue = channel.realtime_queue();
        let message = envelope_message(envelope)?;
        let first = self.next.fetch_add(1, Ordering::Relaxed) % self.links.len();
        let mut used = first;
        let attempt = async {
            match self.send_once(first, &queue, message.clone()).await {
                // A connection found dead before the transfer went out (a broker restart since
                // its last send) is no reason to refuse: nothing was sent, so nothing can be
                // doubled by sending over the next one.
                Err(SendFailure::NotSent(error)) => {
                    tracing::debug!(%error, "AMQP send not attempted; trying the next connection");
                    used = (first + 1) % self.links.len();
                    self.send_once(used, &queue, message).await
                }
                other => other,
            }
        };
        let outcome = tokio::time::timeout(self.timeout, attempt).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(SendFailure::NotSent(e) | SendFailure::Unknown(e))) => {
                Err(EnqueueError::Unavailable(e))
            }
            Err(_) => {
                // The broker may be alive but stuck (producer flow control), or the connection
                // half-dead: start that one over.
                let generation = self.links[used]
                    .lock()
                    .await
                    .link
                    .as_ref()
                    .map(|l| l.generation);
                if let Some(generation) = generation {
                    self.broken(used, generation).await;
                }
                Err(EnqueueError::Unavailable(format!(
                    "no answer from the broker within {:?}",
                    self.timeout
                )))
            }
        }
    }

    async fn ready(&self) -> Result<(), String> {
        for link in &self.links {
            if link
                .lock()
                .await
                .link
                .as_ref()
                .is_some_and(|l| !l.connection.is_closed())
            {
                return Ok(());
            }
        }
        let probe = format!(
            "{}-probe-{}",
            self.container_id,
            uuid::Uuid::new_v4().simple()
        );
        let (mut connection, _) = self.open(&probe).await.map_err(|e| e.to_string())?;
        let _ = connection.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keep_the_password_out_of_sight() {
        let settings = AmqpSettings::parse("amqp://ump:s%40cret@127.0.0.1:5672").expect("url");
        assert_eq!(settings.username.as_deref(), Some("ump"));
        assert_eq!(settings.password, "s@cret");
        assert_eq!(settings.endpoint(), "amqp://127.0.0.1:5672");
        assert!(!format!("{settings:?}").contains("cret"));
    }

    #[test]
    fn default_ports_and_bad_urls() {
        assert_eq!(
            AmqpSettings::parse("amqps://broker.example")
                .expect("url")
                .endpoint(),
            "amqps://broker.example:5671"
        );
        assert_eq!(
            AmqpSettings::parse("amqp://broker")
                .expect("url")
                .endpoint(),
            "amqp://broker:5672"
        );
        assert!(matches!(
            AmqpSettings::parse("http://broker"),
            Err(AmqpUrlError::Scheme)
        ));
        let error = AmqpSettings::parse("amqp://user:pw@[bad").expect_err("invalid");
        assert!(!error.to_string().contains("pw"));
    }

    #[test]
    fn the_envelope_comes_back_from_each_body_a_broker_may_hand_over() {
        let envelope = crate::testing::parking::envelope("t", "+821012345678");
        let sent = envelope_message(&envelope).expect("message");
        let json = sent.body.0.to_vec();
        // Split over two data sections, as a broker may.
        let (head, tail) = json.split_at(json.len() / 2);
        let sections = vec![
            fe2o3_amqp::types::messaging::Data(Binary::from(head.to_vec())),
            fe2o3_amqp::types::messaging::Data(Binary::from(tail.to_vec())),
        ];
        assert_eq!(
            envelope_of(&Body::Data(sections.into())),
            Ok(envelope.clone())
        );
        let text = String::from_utf8(json.clone()).expect("JSON is text");
        assert_eq!(
            envelope_of(&Body::Value(AmqpValue(Value::String(text)))),
            Ok(envelope.clone())
        );
        assert_eq!(
            envelope_of(&Body::Value(AmqpValue(Value::Binary(Binary::from(json))))),
            Ok(envelope)
        );
        assert!(envelope_of(&Body::Value(AmqpValue(Value::Int(7)))).is_err());
        assert!(envelope_of(&Body::Empty).is_err());
        let not_json = Body::Data(
            vec![fe2o3_amqp::types::messaging::Data(Binary::from(
                b"{".to_vec(),
            ))]
            .into(),
        );
        assert!(envelope_of(&not_json).is_err());
    }
}

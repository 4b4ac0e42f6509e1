//! The queue port: how an accepted message becomes durable. `202 Accepted` is answered only after
//! `enqueue` returns `Ok`, i.e. the broker has the message (Kafka: acknowledged by all in-sync
//! replicas through an idempotent producer). The embedded mode implements it with SQLite.

use crate::model::Envelope;
use crate::resources::MessageChannel;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The broker cannot take the message now: the client should retry (503 + Retry-After).
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The message itself cannot be queued (e.g. larger than the broker accepts).
    #[error("message rejected by the queue: {0}")]
    Rejected(String),
}

#[async_trait::async_trait]
pub trait MessageQueue: Send + Sync {
    /// Makes `envelope` durable on `channel`'s queue.
    async fn enqueue(
        &self,
        channel: &MessageChannel,
        envelope: &Envelope,
    ) -> Result<(), EnqueueError>;
    /// Whether the queue can take messages now (for `/readyz`).
    async fn ready(&self) -> Result<(), String>;
}

/// Kafka connection settings: the bootstrap servers plus any librdkafka property (TLS, SASL) from
/// `UMP_KAFKA_CONFIG_<PROPERTY>` variables, e.g. `UMP_KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL` →
/// `security.protocol`.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    pub bootstrap: String,
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may hold SASL passwords: show only their names.
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSettings {
    pub fn from_env(bootstrap: String) -> Self {
        let properties = std::env::vars()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix("UMP_KAFKA_CONFIG_")?;
                Some((name.to_lowercase().replace('_', "."), value))
            })
            .collect();
        Self {
            bootstrap,
            properties,
        }
    }

    /// A client config with the connection settings applied.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// A client config with UMP's `defaults` for this client, then the connection settings and
    /// the operator's properties, which win over the defaults. Every client has Nagle's
    /// algorithm off: a request bigger than one TCP segment would otherwise wait for the
    /// broker's delayed ACK (40–200 ms) before its last bytes leave.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("socket.nagle.disable", "true");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// The bulk queue: one Kafka topic per channel, keyed by recipient so a recipient's messages stay
/// in order on one partition.
pub struct KafkaQueue {
    producer: FutureProducer,
    timeout: Duration,
}

impl KafkaQueue {
    /// `timeout` bounds how long an accept waits for Kafka before answering 503.
    pub fn new(settings: &KafkaSettings, timeout: Duration) -> Result<Self, KafkaError> {
        let timeout_ms = timeout.as_millis().to_string();
        let producer: FutureProducer = settings
            .client_config_with(&[
                // No linger: an accept waits for its ack, so lingering is pure latency. Under load
                // messages still batch while earlier requests are in flight.
                ("linger.ms", "0"),
            ])
            // The durability `202` promises is not a setting.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms)
            .create()?;
        Ok(Self { producer, timeout })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

/// Kafka errors that are about the message, not about the broker being unavailable.
fn is_message_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
    )
}

#[async_trait::async_trait]
impl MessageQueue for KafkaQueue {
    async fn enqueue(
        &self,
        channel: &MessageChannel,
        envelope: &Envelope,
    ) -> Result<(), EnqueueError> {
        let payload =
            serde_json::to_vec(envelope).map_err(|e| EnqueueError::Rejected(e.to_string()))?;
        let topic = channel.topic_name();
        let record = FutureRecord::to(&topic)
            .key(envelope.to.as_bytes())
            .payload(&payload);
        match self.producer.send(record, self.timeout).await {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(code), _)) if is_message_error(code) => {
                Err(EnqueueError::Rejected(code.to_string()))
            }
            Err((e, _)) => Err(EnqueueError::Unavailable(e.to_string())),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        kafka_ready(&self.producer).await
    }
}

/// Whether the brokers answer `producer` (for `/readyz`).
pub async fn kafka_ready(producer: &FutureProducer) -> Result<(), String> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| format!("Kafka: {e}"))
    })
    .await
    .map_err(|e| format!("Kafka: {e}"))?
}

/// Lag of a consumer group, by partition offsets: for each partition, the end offset minus the
/// committed offset, or minus the start offset when the group never committed (its first
/// consumer will read from the start) or committed before what retention kept. The worker's
/// `ump_consumer_lag` and the operator's scaling both count it so.
pub fn total_lag(
    low: &HashMap<i32, i64>,
    high: &HashMap<i32, i64>,
    committed: &HashMap<i32, i64>,
) -> i64 {
    high.iter()
        .map(|(partition, end)| {
            let start = low.get(partition).copied().unwrap_or(0);
            let from = committed
                .get(partition)
                .copied()
                .unwrap_or(start)
                .max(start);
            (end - from).max(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(i32, i64)]) -> HashMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn lag_counts_from_the_commit_or_the_start() {
        let low = map(&[(0, 0), (1, 10)]);
        let high = map(&[(0, 100), (1, 50)]);
        assert_eq!(total_lag(&low, &high, &map(&[])), 100 + 40);
        assert_eq!(total_lag(&low, &high, &map(&[(0, 90)])), 10 + 40);
        // A commit older than retention counts from the start; one past the end is no lag.
        assert_eq!(total_lag(&low, &high, &map(&[(0, 100), (1, 5)])), 40);
        assert_eq!(total_lag(&low, &high, &map(&[(0, 200), (1, 50)])), 0);
    }

    fn settings(properties: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            bootstrap: "127.0.0.1:9092".to_owned(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn every_client_has_nagle_off_unless_the_operator_says_otherwise() {
        let config = settings(&[]).client_config_with(&[("linger.ms", "5")]);
        assert_eq!(config.get("socket.nagle.disable"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let config = settings(&[("socket.nagle.disable", "false"), ("linger.ms", "50")])
            .client_config_with(&[("linger.ms", "5")]);
        assert_eq!(config.get("socket.nagle.disable"), Some("false"));
        assert_eq!(config.get("linger.ms"), Some("50"));
    }
}

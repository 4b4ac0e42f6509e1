//! The queue port: how an accepted message becomes durable. `202 Accepted` is answered only after
//! `enqueue` returns `Ok`, i.e. the broker has the message (Kafka: acknowledged by all in-sync
//! replicas through an idempotent producer). The all-in-one mode implements it with SQLite.

use crate::model::Envelope;
use crate::resources::MessageChannel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::Duration;
pub use ump_kafka::{KafkaSettings, total_lag};

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

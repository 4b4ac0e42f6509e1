//! The queue contract (`ump_core::testing::queue`) against the real Kafka and ActiveMQ from
//! `scripts/infra up`: the bulk queue (a channel's topic) and the realtime queue (its ActiveMQ
//! queue), each read back the way the worker consumes it. The all-in-one SQLite queue runs the
//! same contract in `ump_core::sqlite`'s tests.

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::time::Duration;
use ump_core::amqp::{AmqpQueue, AmqpSettings};
use ump_core::model::{Envelope, Priority};
use ump_core::queue::{KafkaQueue, KafkaSettings};
use ump_core::testing::queue::{self, QueueReader};
use ump_core::testing::{infra, unique_name};

/// Reads a topic from its start, as the worker's consumer group does.
struct KafkaReader(StreamConsumer);

#[async_trait::async_trait]
impl QueueReader for KafkaReader {
    async fn read(&mut self, count: usize, wait: Duration) -> Vec<Envelope> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut read = Vec::new();
        while read.len() < count {
            let Ok(message) = tokio::time::timeout_at(deadline, self.0.recv()).await else {
                break;
            };
            let message = message.expect("Kafka: receive");
            let payload = message.payload().expect("a payload");
            read.push(serde_json::from_slice(payload).expect("envelope JSON"));
        }
        read
    }
}

#[tokio::test]
async fn the_bulk_queue_keeps_the_contract() {
    let settings = KafkaSettings::from_env(infra().kafka_bootstrap());
    let channel = queue::channel(&unique_name("contract"));
    let topic = channel.topic_name();
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config().create().expect("Kafka: admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("Kafka: create topic");
    created[0].as_ref().expect("Kafka: create topic");

    let consumer: StreamConsumer = settings
        .client_config()
        .set("group.id", unique_name("contract"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka: consumer");
    consumer.subscribe(&[&topic]).expect("Kafka: subscribe");
    let kafka = KafkaQueue::new(&settings, Duration::from_secs(10)).expect("Kafka: producer");
    queue::accepted_messages_come_back_whole_once_and_in_order(
        &kafka,
        &channel,
        Priority::Bulk,
        &mut KafkaReader(consumer),
    )
    .await;
    admin
        .delete_topics(&[&topic], &options)
        .await
        .expect("Kafka: delete topic");
}

/// Reads a queue on a link of its own, accepting each message, as the realtime consumer does.
struct AmqpReader {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    receiver: Receiver,
}

#[async_trait::async_trait]
impl QueueReader for AmqpReader {
    async fn read(&mut self, count: usize, wait: Duration) -> Vec<Envelope> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut read = Vec::new();
        while read.len() < count {
            let Ok(delivery) =
                tokio::time::timeout_at(deadline, self.receiver.recv::<Body<Value>>()).await
            else {
                break;
            };
            let delivery = delivery.expect("ActiveMQ: receive");
            read.push(ump_core::amqp::envelope_of(delivery.body()).expect("an envelope"));
            self.receiver.accept(&delivery).await.expect("accept");
        }
        read
    }
}

#[tokio::test]
async fn the_realtime_queue_keeps_the_contract() {
    let settings = AmqpSettings::parse(&infra().amqp_url()).expect("UMP_AMQP_URL");
    let channel = queue::channel(&unique_name("contract"));
    let amqp = AmqpQueue::new(settings.clone(), Duration::from_secs(5));
    let mut connection = settings
        .connect("queue-contract")
        .await
        .expect("ActiveMQ: connect");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let receiver = Receiver::attach(
        &mut session,
        "queue-contract",
        channel.realtime_queue().as_str(),
    )
    .await
    .expect("attach receiver");
    let mut reader = AmqpReader {
        connection,
        session,
        receiver,
    };
    queue::accepted_messages_come_back_whole_once_and_in_order(
        &amqp,
        &channel,
        Priority::Realtime,
        &mut reader,
    )
    .await;
    let AmqpReader {
        mut connection,
        mut session,
        receiver,
    } = reader;
    receiver.close().await.expect("close receiver");
    session.end().await.expect("end session");
    connection.close().await.expect("close connection");
}

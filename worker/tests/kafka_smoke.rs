//! Smoke test: rdkafka produces to and consumes from the real Kafka from `scripts/infra up`, with
//! the producer settings the API uses (idempotent, acks=all, key = recipient).

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::Duration;
use ump_core::testing::{infra, unique_name};

const MESSAGES: usize = 30;

#[tokio::test]
async fn produce_and_consume_round_trip_keeps_per_key_order() {
    let bootstrap = infra().kafka_bootstrap();
    let topic = unique_name("ump-smoke");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("Kafka: admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap_or_else(|e| panic!("Kafka at {bootstrap}: create topic: {e}"));
    for result in created {
        result.unwrap_or_else(|(name, code)| panic!("Kafka: create topic {name}: {code}"));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("Kafka: producer");
    let recipients = ["+821000000001", "+821000000002", "+821000000003"];
    for i in 0..MESSAGES {
        let key = recipients[i % recipients.len()];
        let payload = format!("{key}#{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(&payload),
                Duration::from_secs(15),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("Kafka at {bootstrap}: produce: {e}"));
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique_name("ump-smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka: consumer");
    consumer.subscribe(&[&topic]).expect("Kafka: subscribe");

    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for _ in 0..MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("Kafka at {bootstrap}: no message within 30 s"))
            .unwrap_or_else(|e| panic!("Kafka at {bootstrap}: consume: {e}"));
        let payload = std::str::from_utf8(message.payload().expect("payload")).expect("utf-8");
        let (key, seq) = payload.split_once('#').expect("key#seq payload");
        assert_eq!(
            message.key(),
            Some(key.as_bytes()),
            "record key is the recipient"
        );
        per_key
            .entry(key.to_owned())
            .or_default()
            .push(seq.parse().expect("seq"));
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), MESSAGES);
    for (key, seqs) in &per_key {
        assert!(
            seqs.is_sorted(),
            "messages for {key} were reordered: {seqs:?}"
        );
    }

    admin
        .delete_topics(&[&topic], &options)
        .await
        .expect("Kafka: delete topic");
}

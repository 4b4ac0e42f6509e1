//! The realtime queue against the real ActiveMQ from `scripts/infra up`: an accepted enqueue is a
//! durable AMQP message carrying the envelope on the channel's queue; an unreachable broker is a
//! quick `Unavailable` that never shows the password.

use fe2o3_amqp::types::messaging::{Body, MessageId as AmqpMessageId};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};
use std::time::{Duration, Instant};
use ump_core::amqp::{AmqpQueue, AmqpSettings, envelope_of};
use ump_core::model::{Content, Envelope, MessageId, Priority};
use ump_core::queue::{EnqueueError, MessageQueue};
use ump_core::resources::MessageChannel;
use ump_core::testing::{infra, unique_name};

fn channel(queue: &str) -> MessageChannel {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {{name: otp, namespace: amqp-test}}
spec:
  type: sms
  realtime: {{enabled: true, queue: "{queue}"}}
  providers: [{{name: sandbox, type: sandbox}}]
"#
    ))
    .expect("channel YAML")
}

fn envelope(body: &str) -> Envelope {
    Envelope {
        id: MessageId::new(),
        tenant: "t".into(),
        channel: "otp".into(),
        to: "+821012345678".into(),
        content: Content {
            body: Some(body.into()),
            ..Default::default()
        },
        priority: Priority::Realtime,
        send_at: None,
        tags: vec![],
        metadata: Default::default(),
        idempotency_key: None,
        category: Default::default(),
        accepted_at: chrono::Utc::now(),
        attempts: 0,
        fallback: None,
    }
}

#[tokio::test]
async fn an_accepted_enqueue_is_a_durable_envelope_on_the_channels_queue() {
    let url = infra().amqp_url();
    let queue_name = unique_name("ump.test.realtime");
    let channel = channel(&queue_name);
    assert_eq!(channel.realtime_queue(), queue_name);
    let queue = AmqpQueue::new(
        AmqpSettings::parse(&url).expect("UMP_AMQP_URL"),
        Duration::from_secs(5),
    );
    queue.ready().await.expect("ActiveMQ ready");
    let sent: Vec<Envelope> = (0..20)
        .map(|i| envelope(&format!("인증번호 {i}")))
        .collect();
    // Concurrent sends share one sender link.
    let results = futures::future::join_all(sent.iter().map(|e| queue.enqueue(&channel, e))).await;
    for result in results {
        result.expect("ActiveMQ accepted the message");
    }

    let mut connection = AmqpSettings::parse(&url)
        .expect("url")
        .connect("amqp-queue-test")
        .await
        .expect("ActiveMQ: connect");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let mut receiver = Receiver::attach(&mut session, "amqp-queue-test", queue_name.as_str())
        .await
        .expect("attach receiver");
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        let delivery =
            tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
                .await
                .expect("ActiveMQ: message within 10 s")
                .expect("ActiveMQ: receive");
        let message = delivery.message();
        assert!(
            message.header.as_ref().is_some_and(|h| h.durable),
            "the message must be durable (persistent in ActiveMQ)"
        );
        assert!(
            matches!(delivery.body(), Body::Data(_)),
            "the envelope travels as a data section"
        );
        let envelope = envelope_of(delivery.body()).expect("an envelope");
        let id = message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        assert_eq!(id, Some(AmqpMessageId::String(envelope.id.to_string())));
        receiver.accept(&delivery).await.expect("accept");
        received.push(envelope);
    }
    received.sort_by_key(|e| e.id);
    let mut expected = sent.clone();
    expected.sort_by_key(|e| e.id);
    assert_eq!(received, expected);
    receiver.close().await.expect("close receiver");
    connection.close().await.expect("close connection");
}

#[tokio::test]
async fn an_unreachable_broker_answers_unavailable_at_once() {
    // Nothing listens on port 9 (discard) on this machine's loopback.
    let queue = AmqpQueue::new(
        AmqpSettings::parse("amqp://ump:hunter2@127.0.0.1:9").expect("url"),
        Duration::from_secs(60),
    );
    let channel = channel("ump.test.unreachable");
    for _ in 0..3 {
        let started = Instant::now();
        match queue.enqueue(&channel, &envelope("x")).await {
            Err(EnqueueError::Unavailable(detail)) => {
                assert!(!detail.contains("hunter2"), "password in {detail:?}");
                assert!(detail.contains("127.0.0.1:9"), "{detail:?}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // A refused connection is an answer: no waiting for the 60 s accept timeout.
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert!(queue.ready().await.is_err());
}

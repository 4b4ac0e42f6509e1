//! Smoke test: fe2o3-amqp speaks AMQP 1.0 to the real ActiveMQ from `scripts/infra up`: a durable
//! message sent to a queue is accepted by the broker, received, and settled.

use fe2o3_amqp::types::messaging::{Header, Message, Outcome};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use std::time::Duration;
use ump_core::testing::{infra, unique_name};

#[tokio::test]
async fn durable_send_is_accepted_then_received_and_settled() {
    let url = infra().amqp_url();
    let mut connection = tokio::time::timeout(
        Duration::from_secs(15),
        Connection::open("ump-amqp-smoke", url.as_str()),
    )
    .await
    .expect("ActiveMQ: AMQP open timed out")
    .unwrap_or_else(|e| panic!("ActiveMQ: AMQP 1.0 connection: {e}"));
    let mut session = Session::begin(&mut connection)
        .await
        .expect("ActiveMQ: begin session");
    let queue = unique_name("ump.smoke");

    let mut sender = Sender::attach(&mut session, "smoke-sender", queue.as_str())
        .await
        .expect("ActiveMQ: attach sender");
    let body = "안녕하세요, UMP";
    let message = Message::builder()
        .header(Header {
            durable: true,
            ..Default::default()
        })
        .value(body.to_owned())
        .build();
    let outcome = sender.send(message).await.expect("ActiveMQ: send");
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "broker did not accept the message: {outcome:?}"
    );
    sender.close().await.expect("ActiveMQ: close sender");

    let mut receiver = Receiver::attach(&mut session, "smoke-receiver", queue.as_str())
        .await
        .expect("ActiveMQ: attach receiver");
    let delivery = tokio::time::timeout(Duration::from_secs(15), receiver.recv::<String>())
        .await
        .expect("ActiveMQ: no message within 15 s")
        .expect("ActiveMQ: receive");
    assert_eq!(delivery.body(), body);
    receiver.accept(&delivery).await.expect("ActiveMQ: accept");
    receiver.close().await.expect("ActiveMQ: close receiver");

    session.end().await.expect("ActiveMQ: end session");
    connection
        .close()
        .await
        .expect("ActiveMQ: close connection");
}

/// What the realtime consumer relies on (worker/src/realtime.rs): a `modified` (delivery-failed)
/// message comes back with its delivery-count raised, a `released` one without, and a `rejected`
/// one lands in the broker's dead-letter queue `DLQ.<queue>`.
#[tokio::test]
async fn modified_counts_released_does_not_and_rejected_goes_to_the_dead_letter_queue() {
    use fe2o3_amqp::link::receiver::CreditMode;
    use fe2o3_amqp::types::definitions;
    use fe2o3_amqp::types::messaging::Modified;

    let url = infra().amqp_url();
    let mut connection = ump_core::amqp::AmqpSettings::parse(&url)
        .expect("UMP_AMQP_URL")
        .connect("ump-amqp-semantics")
        .await
        .unwrap_or_else(|e| panic!("ActiveMQ: {e}"));
    let mut session = Session::begin(&mut connection).await.expect("session");
    let queue = unique_name("ump.smoke.redelivery");
    let mut sender = Sender::attach(&mut session, "semantics-sender", queue.as_str())
        .await
        .expect("attach sender");
    let message = Message::builder()
        .header(Header {
            durable: true,
            ..Default::default()
        })
        .value("otp 123456".to_owned())
        .build();
    let outcome = sender.send(message).await.expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    sender.close().await.expect("close sender");

    let mut receiver = Receiver::builder()
        .name("semantics-receiver")
        .source(queue.as_str())
        .credit_mode(CreditMode::Auto(10))
        .attach(&mut session)
        .await
        .expect("attach receiver");
    async fn next(receiver: &mut Receiver) -> fe2o3_amqp::link::delivery::Delivery<String> {
        tokio::time::timeout(Duration::from_secs(10), receiver.recv::<String>())
            .await
            .expect("ActiveMQ: a delivery within 10 s")
            .expect("receive")
    }
    let count = |d: &fe2o3_amqp::link::delivery::Delivery<String>| {
        d.message().header.as_ref().map_or(0, |h| h.delivery_count)
    };
    let first = next(&mut receiver).await;
    assert_eq!(count(&first), 0);
    receiver
        .modify(
            &first,
            Modified {
                delivery_failed: Some(true),
                undeliverable_here: Some(false),
                message_annotations: None,
            },
        )
        .await
        .expect("modify");
    let second = next(&mut receiver).await;
    assert_eq!(
        count(&second),
        1,
        "modified(delivery-failed) raises the count"
    );
    receiver.release(&second).await.expect("release");
    let third = next(&mut receiver).await;
    assert_eq!(count(&third), 1, "released does not raise the count");
    receiver
        .reject(
            &third,
            definitions::Error::new(
                definitions::AmqpError::PreconditionFailed,
                Some("out of attempts".to_owned()),
                None,
            ),
        )
        .await
        .expect("reject");
    receiver.close().await.expect("close receiver");

    let dead_letters = format!("DLQ.{queue}");
    let mut dlq = Receiver::attach(&mut session, "semantics-dlq", dead_letters.as_str())
        .await
        .expect("attach to the dead-letter queue");
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.recv::<String>())
        .await
        .unwrap_or_else(|_| panic!("nothing in {dead_letters} within 10 s"))
        .expect("receive dead letter");
    assert_eq!(dead.body(), "otp 123456");
    dlq.accept(&dead).await.expect("accept dead letter");
    dlq.close().await.expect("close");
    connection.close().await.expect("close connection");
}

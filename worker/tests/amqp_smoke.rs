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

//! The behaviour every `MessageQueue` must have — what the API's `202` promises about a message
//! it handed to its queue — run against Kafka and ActiveMQ (`core/tests/queue_contract.rs`) and
//! the all-in-one SQLite queue (`crate::sqlite`'s tests) alike. Each backend reads back what was
//! enqueued the way its consumer would ([`QueueReader`]).

use crate::model::{Content, Envelope, MessageId, Priority};
use crate::queue::MessageQueue;
use crate::resources::MessageChannel;
use std::time::Duration;

/// Reads one queue of a backend (a channel's topic, its realtime queue, its SQLite queue) in the
/// order the backend hands messages to a consumer.
#[async_trait::async_trait]
pub trait QueueReader: Send {
    /// What arrives within `wait`, `count` envelopes at most.
    async fn read(&mut self, count: usize, wait: Duration) -> Vec<Envelope>;
}

/// A channel with realtime delivery on, in `namespace` (its topic `ump.<namespace>.otp`, its
/// realtime queue `ump.realtime.<namespace>.otp`): fresh names for each run.
pub fn channel(namespace: &str) -> MessageChannel {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {{name: otp, namespace: {namespace}}}
spec:
  type: sms
  topic: {{partitions: 3}}
  realtime: {{enabled: true}}
  providers: [{{name: sandbox, type: sandbox}}]
"#
    ))
    .expect("channel YAML")
}

fn envelope(priority: Priority, to: &str, body: &str) -> Envelope {
    Envelope {
        id: MessageId::new(),
        tenant: "tenant-a".into(),
        channel: "otp".into(),
        to: to.into(),
        content: Content {
            body: Some(body.into()),
            ..Default::default()
        },
        priority,
        send_at: None,
        tags: vec!["contract".into()],
        metadata: serde_json::json!({"order": 42, "note": "주문"})
            .as_object()
            .cloned()
            .expect("an object"),
        idempotency_key: Some(format!("key-{body}")),
        category: Default::default(),
        accepted_at: chrono::Utc::now(),
        attempts: 0,
        fallback: None,
    }
}

/// Every accepted enqueue comes back whole (the same envelope, UTF-8 text, metadata, tags,
/// idempotency key) and once; enqueues in flight at once all land; one recipient's messages come
/// back in the order they were accepted. `reader` reads `channel`'s queue for `priority`.
pub async fn accepted_messages_come_back_whole_once_and_in_order(
    queue: &dyn MessageQueue,
    channel: &MessageChannel,
    priority: Priority,
    reader: &mut dyn QueueReader,
) {
    queue.ready().await.expect("the queue is ready");
    let concurrent: Vec<Envelope> = (0..20)
        .map(|i| {
            envelope(
                priority,
                &format!("+82100000{i:04}"),
                &format!("인증번호 {i} ✓"),
            )
        })
        .collect();
    let accepted =
        futures::future::join_all(concurrent.iter().map(|e| queue.enqueue(channel, e))).await;
    for result in accepted {
        result.expect("an enqueue in flight with others is accepted");
    }
    // One recipient, one message after another: what a client sees as accepted in this order.
    let ordered: Vec<Envelope> = (0..5)
        .map(|i| envelope(priority, "+821099998888", &format!("step {i}")))
        .collect();
    for e in &ordered {
        queue.enqueue(channel, e).await.expect("accepted");
    }

    let expected = concurrent.len() + ordered.len();
    let read = reader.read(expected, Duration::from_secs(30)).await;
    assert_eq!(
        read.len(),
        expected,
        "every accepted message is on the queue"
    );
    let mut got = read.clone();
    got.sort_by_key(|e| e.id);
    let mut want: Vec<Envelope> = concurrent.iter().chain(&ordered).cloned().collect();
    want.sort_by_key(|e| e.id);
    assert_eq!(got, want, "the envelopes come back whole, each once");
    let order: Vec<MessageId> = read
        .iter()
        .filter(|e| e.to == "+821099998888")
        .map(|e| e.id)
        .collect();
    assert_eq!(
        order,
        ordered.iter().map(|e| e.id).collect::<Vec<_>>(),
        "a recipient's messages in the order they were accepted"
    );
    let more = reader.read(1, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "nothing twice: {more:?}");
}

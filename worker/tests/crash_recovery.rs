//! kill -9 of the worker at random points of a 20,000-message run, then restarts: nothing
//! accepted is lost, and duplicates stay within the documented guarantee (at most the messages
//! whose provider call had finished but whose "sent" mark had not been written when the worker
//! died: at most one per lane per kill). The same with every message failing twice first (a
//! retry storm: 40,000 parkings through MySQL and the scheduler), where no message may be left
//! `scheduled`.

mod stack;

use stack::{OWN_KEY_CHANNELS, Stack};
use std::time::Duration;

const MESSAGES: usize = 20_000;
const KILLS: usize = 3;
const LANES: usize = 1000; // UMP_WORKER_LANES default

/// One run at a time: each needs the machine's cores to itself.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Each message claims its own key (no content dedupe), which the worker deletes once Kafka
    // has its batch committed: a kill between the two must still find every sent mark.
    let mut stack = Stack::start(OWN_KEY_CHANNELS).await;
    let ids = stack
        .send_many(MESSAGES, |i| format!("주문 {i} 배송 시작"))
        .await;

    // Kill the worker a few times while it works through the backlog: each time once it has made
    // progress since its (re)start, at an uneven moment after that.
    let sent =
        |counts: &std::collections::HashMap<String, i64>| counts.get("sent").copied().unwrap_or(0);
    for kill in 0..KILLS {
        let before = sent(&stack.status_counts().await);
        let target = (before + 1500).min(MESSAGES as i64 - 2000);
        stack
            .wait_for("progress before a kill", Duration::from_secs(120), |c| {
                sent(c) >= target
            })
            .await;
        let pause = Duration::from_millis((uuid::Uuid::new_v4().as_u128() % 300) as u64);
        tokio::time::sleep(pause).await;
        stack.kill_worker();
        eprintln!(
            "kill {kill}: {} sent when killed",
            sent(&stack.status_counts().await)
        );
        stack.start_worker();
    }

    stack
        .wait_for("every message sent", Duration::from_secs(300), |c| {
            c.get("sent").copied().unwrap_or(0) == MESSAGES as i64
        })
        .await;
    stack.record_kill_run(
        &ids,
        "worker-kill-bulk",
        format!("kill -9 of the worker {KILLS} times during a {MESSAGES}-message bulk run"),
        KILLS * LANES,
        "whose sent mark was not yet written (one per lane a kill)",
    );
    assert_eq!(
        stack.status_counts().await.get("sent").copied(),
        Some(MESSAGES as i64)
    );
    stack.finish().await;
}

/// Every message fails its first two attempts, retried after 100–300 ms.
const STORMY: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: storm, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 5, initialBackoff: 100ms, maxBackoff: 300ms}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 4}
  policyRef: storm
  providers: [{name: sandbox, type: sandbox, settings: {failAttempts: "2"}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_with_a_kill_leaves_nothing_scheduled() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(STORMY).await;
    let ids = stack
        .send_many(MESSAGES, |i| format!("쿠폰 {i} 발급"))
        .await;
    let sent =
        |counts: &std::collections::HashMap<String, i64>| counts.get("sent").copied().unwrap_or(0);
    stack
        .wait_for("progress before the kill", Duration::from_secs(180), |c| {
            sent(c) >= MESSAGES as i64 / 3
        })
        .await;
    stack.kill_worker();
    eprintln!("killed with {:?}", stack.status_counts().await);
    stack.start_worker();
    stack
        .wait_for("every message sent", Duration::from_secs(300), |c| {
            sent(c) == MESSAGES as i64
        })
        .await;
    stack.record_kill_run(
        &ids,
        "retry-storm",
        format!(
            "{MESSAGES} messages, each failing twice before it goes through (40,000 retries \
             parked and republished), kill -9 of the worker in the middle"
        ),
        LANES,
        "whose sent mark was not yet written (one per lane)",
    );
    // A copy redelivered after the kill may have been parked as busy while another copy went
    // out: it comes back within seconds, is found sent, and leaves no parking behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let parked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deferred_messages WHERE published_at IS NULL")
                .fetch_one(&stack.db.pool)
                .await
                .expect("count parkings");
        if parked == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{parked} parkings never drained"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.finish().await;
}

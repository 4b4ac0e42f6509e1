//! kill -9 of the worker at random points of a 20,000-message run, then restarts: nothing
//! accepted is lost, and duplicates stay within the documented guarantee (at most the messages
//! whose provider call had finished but whose "sent" mark had not been written when the worker
//! died: at most one per lane per kill).

mod stack;

use stack::{DEFAULT_CHANNELS, Stack};
use std::time::Duration;

const MESSAGES: usize = 20_000;
const KILLS: usize = 3;
const LANES: usize = 256; // UMP_WORKER_LANES default

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing() {
    let mut stack = Stack::start(DEFAULT_CHANNELS).await;
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

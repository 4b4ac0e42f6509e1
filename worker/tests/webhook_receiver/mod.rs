//! A webhook receiver on 127.0.0.1 for the webhook tests (cluster: `worker/tests/webhooks.rs`,
//! all-in-one: `api/tests/webhooks.rs`), flaky on a plan: it refuses connections (nobody listens
//! yet), then answers 500, then lets some requests time out, then answers 204. It keeps every
//! request it answered 2xx; `verify` checks their signatures with the `standardwebhooks` package
//! from PyPI (`scripts/infra up standardwebhooks`), an implementation UMP shares no code with.

#![allow(dead_code)] // each test file uses a different part of the receiver

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When the receiver misbehaves, counted from `Receiver::start`. A phase that answers badly (500,
/// time-out) lasts until its time is up *and* it has answered at least one request that way, so a
/// dispatcher that backs off past a phase's window still meets it (the tests assert both).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Nobody listens: connections are refused.
    pub refuse_for: Duration,
    /// Then every request is answered 500…
    pub fail_until: Duration,
    /// …then every `hang_every`-th request waits `hang` before answering (longer than the
    /// dispatcher's timeout)…
    pub hang_until: Duration,
    pub hang_every: usize,
    pub hang: Duration,
    // …and from then on every request is answered 204.
}

impl Plan {
    pub fn reliable() -> Self {
        Self {
            refuse_for: Duration::ZERO,
            fail_until: Duration::ZERO,
            hang_until: Duration::ZERO,
            hang_every: 1,
            hang: Duration::ZERO,
        }
    }
}

/// A request the receiver answered 2xx.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
}

#[derive(Default)]
struct Seen {
    received: Vec<Received>,
    requests: usize,
    /// Answers other than 2xx by status (0: timed out on purpose).
    refused: HashMap<u16, usize>,
    /// Ids answered 410 (see `Receiver::gone`).
    gone: bool,
    /// Requests answered 500.
    failed: usize,
    /// Requests that came in the time-out phase, and those of them let time out.
    in_hang_phase: usize,
    hung: usize,
}

enum Answer {
    Fail,
    Hang,
    Ok,
}

impl Seen {
    /// How the plan answers a request arriving `elapsed` after `Receiver::start`.
    fn answer(&mut self, plan: &Plan, elapsed: Duration) -> Answer {
        if plan.fail_until > plan.refuse_for && (elapsed < plan.fail_until || self.failed == 0) {
            self.failed += 1;
            return Answer::Fail;
        }
        if plan.hang_until > plan.fail_until && (elapsed < plan.hang_until || self.hung == 0) {
            let k = self.in_hang_phase;
            self.in_hang_phase += 1;
            if k.is_multiple_of(plan.hang_every.max(1)) {
                self.hung += 1;
                return Answer::Hang;
            }
        }
        Answer::Ok
    }
}

pub struct Receiver {
    pub port: u16,
    pub url: String,
    plan: Plan,
    seen: Arc<Mutex<Seen>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1, not listening until `start`.
    pub fn new(plan: Plan) -> Self {
        // Free now, and kept from outgoing connections until `start` binds it.
        let port = ump_core::testing::free_port();
        Self {
            port,
            url: format!("http://127.0.0.1:{port}/hooks/ump"),
            plan,
            seen: Arc::default(),
            task: None,
        }
    }

    /// Starts the plan: listens once `refuse_for` has passed.
    pub fn start(&mut self) {
        let (plan, seen, port) = (self.plan, Arc::clone(&self.seen), self.port);
        let started = Instant::now();
        self.task = Some(tokio::spawn(async move {
            tokio::time::sleep(plan.refuse_for).await;
            let app = axum::Router::new().route(
                "/hooks/ump",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let elapsed = started.elapsed();
                        let planned = {
                            let mut s = seen.lock().expect("lock");
                            s.requests += 1;
                            if s.gone {
                                None
                            } else {
                                Some(s.answer(&plan, elapsed))
                            }
                        };
                        let answer = match planned {
                            None => StatusCode::GONE,
                            Some(Answer::Fail) => StatusCode::INTERNAL_SERVER_ERROR,
                            Some(Answer::Hang) => {
                                // Counted first: the dispatcher gives up before the answer, and
                                // the closed connection cancels this handler.
                                *seen.lock().expect("lock").refused.entry(0).or_insert(0) += 1;
                                tokio::time::sleep(plan.hang).await;
                                return StatusCode::NO_CONTENT;
                            }
                            Some(Answer::Ok) => StatusCode::NO_CONTENT,
                        };
                        let mut s = seen.lock().expect("lock");
                        if answer.is_success() {
                            s.received.push(Received {
                                id: header(&headers, "webhook-id"),
                                timestamp: header(&headers, "webhook-timestamp"),
                                signature: header(&headers, "webhook-signature"),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                        } else {
                            *s.refused.entry(answer.as_u16()).or_insert(0) += 1;
                        }
                        answer
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("the receiver's port is still free");
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// From now on every request is answered 410 Gone.
    pub fn gone(&self) {
        self.seen.lock().expect("lock").gone = true;
    }

    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().expect("lock").received.clone()
    }

    /// Distinct `webhook-id`s answered 2xx.
    pub fn distinct(&self) -> HashSet<String> {
        self.seen
            .lock()
            .expect("lock")
            .received
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    /// Every request that came in, answered or not.
    pub fn requests(&self) -> usize {
        self.seen.lock().expect("lock").requests
    }

    /// Answers other than 2xx by status (0: let time out).
    pub fn refused(&self) -> HashMap<u16, usize> {
        self.seen.lock().expect("lock").refused.clone()
    }

    /// Waits until `done(distinct ids)` holds, failing after `within` with what arrived.
    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(usize) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let distinct = self.distinct().len();
            if done(distinct) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {distinct} distinct events, {} requests, refused {:?}",
                self.requests(),
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The verifier: for each JSON line {id, timestamp, signature, body}, `Webhook(secret).verify`
/// with each secret in turn; prints {"verified": n, "failed": [...]} (ids and reasons).
const VERIFY: &str = r#"
import json, sys
from standardwebhooks import Webhook
hooks = [Webhook(s) for s in sys.argv[2:]]
verified, failed = 0, []
with open(sys.argv[1]) as lines:
    for line in lines:
        r = json.loads(line)
        headers = {"webhook-id": r["id"], "webhook-timestamp": r["timestamp"],
                   "webhook-signature": r["signature"]}
        errors = []
        for hook in hooks:
            try:
                hook.verify(r["body"], headers)
                break
            except Exception as e:
                errors.append(str(e))
        else:
            failed.append([r["id"], errors])
            continue
        verified += 1
print(json.dumps({"verified": verified, "failed": failed[:20], "failures": len(failed)}))
"#;

/// Checks every one of `received` against `secrets` (a delivery may be signed with any of them)
/// with the `standardwebhooks` package. Returns how many verified; fails on any that did not.
pub fn verify(received: &[Received], secrets: &[&str]) -> usize {
    let python =
        ump_core::testing::infra().require("standardwebhooks", "UMP_STANDARDWEBHOOKS_PYTHON");
    assert!(
        std::path::Path::new(&python).is_file(),
        "standardwebhooks: {python} does not exist (run `scripts/infra up standardwebhooks`)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("received.jsonl");
    let mut lines = String::new();
    for r in received {
        lines.push_str(
            &serde_json::json!({"id": r.id, "timestamp": r.timestamp,
                "signature": r.signature, "body": r.body})
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&file, lines).expect("write received");
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(VERIFY)
        .arg(&file)
        .args(secrets)
        .output()
        .expect("run the standardwebhooks verifier");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the verifier failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the verifier's report");
    assert_eq!(
        report["failures"], 0,
        "signatures standardwebhooks refused: {report}"
    );
    let verified = report["verified"].as_u64().expect("verified") as usize;
    assert_eq!(verified, received.len(), "{report}");
    verified
}

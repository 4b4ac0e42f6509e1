//! A client that keeps sending while a test breaks something, the way the README tells clients
//! to: one message after another at a steady pace, a few in flight, each 503 and 409 retried after
//! its `Retry-After` with the same Idempotency-Key (when it has one). It counts each documented
//! answer rather than failing on it. Every message has a text of its own, so
//! what reached a provider can be counted per message whatever the ids of its retries were.

use super::Stack;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use ump_core::testing::Reliability;

/// How a load runs.
#[derive(Clone, Debug)]
pub struct Load {
    /// Tells two loads of a test apart (in texts and Idempotency-Keys).
    pub name: &'static str,
    pub channel: &'static str,
    pub messages: usize,
    /// Sends started per second.
    pub per_second: u32,
    pub in_flight: usize,
    /// `"bulk"` or `"realtime"`.
    pub priority: &'static str,
    /// Which messages carry an Idempotency-Key (the others are retried without one).
    pub keyed: fn(usize) -> bool,
    /// How long one message may keep getting 503s before the test fails.
    pub give_up_after: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            name: "client",
            channel: "sms",
            messages: 1500,
            per_second: 150,
            in_flight: 8,
            priority: "bulk",
            keyed: |_| true,
            give_up_after: Duration::from_secs(180),
        }
    }
}

/// What the client saw.
#[derive(Debug, Default)]
pub struct Sent {
    /// Per accepted message (by index): the id of the 202 that accepted it.
    pub accepted: HashMap<usize, String>,
    /// Answers that were 503 (each retried).
    pub unavailable: usize,
    /// Answers that were 409, the key's earlier request still in flight (each retried).
    pub conflicts: usize,
    /// The text of message `i` is `texts[i]`.
    pub texts: Vec<String>,
}

/// The running client: 503s are counted live, the result comes from `finish`.
pub struct Client {
    unavailable: Arc<AtomicUsize>,
    conflicts: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Sent>,
}

impl Client {
    /// 503 answers so far.
    pub fn unavailable(&self) -> usize {
        self.unavailable.load(Ordering::Relaxed)
    }

    /// 409 answers so far.
    pub fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> Sent {
        self.task.await.expect("the client panicked")
    }
}

/// The text of message `i` of load `name` of run `run`.
pub fn text(run: &str, name: &str, i: usize) -> String {
    format!("{run} {name} message {i:06}")
}

impl Stack {
    /// Starts sending `load` in the background.
    pub fn start_load(&self, load: Load) -> Client {
        let unavailable = Arc::new(AtomicUsize::new(0));
        let conflicts = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let http = self.http.clone();
        let url = format!("{}/v1/messages", self.api);
        let key = self.key.clone();
        let run = self.namespace.clone();
        let task = tokio::spawn({
            let unavailable = Arc::clone(&unavailable);
            let conflicts = Arc::clone(&conflicts);
            let accepted = Arc::clone(&accepted);
            async move {
                let texts: Vec<String> = (0..load.messages)
                    .map(|i| text(&run, load.name, i))
                    .collect();
                let mut tick = tokio::time::interval(Duration::from_secs(1) / load.per_second);
                let mut running = FuturesUnordered::new();
                let mut result = Sent::default();
                for (i, body_text) in texts.iter().enumerate() {
                    while running.len() >= load.in_flight {
                        let (i, id) = running.next().await.expect("a send in flight");
                        result.accepted.insert(i, id);
                    }
                    tick.tick().await;
                    let body = json!({"channel": load.channel, "to": format!("+8210{:08}", i),
                                      "body": body_text, "priority": load.priority});
                    let idempotency = (load.keyed)(i).then(|| format!("{run}-{}-{i}", load.name));
                    let (http, url, key) = (http.clone(), url.clone(), key.clone());
                    let (unavailable, conflicts, accepted) = (
                        Arc::clone(&unavailable),
                        Arc::clone(&conflicts),
                        Arc::clone(&accepted),
                    );
                    let give_up = load.give_up_after;
                    running.push(async move {
                        let deadline = tokio::time::Instant::now() + give_up;
                        loop {
                            let mut request = http.post(&url).bearer_auth(&key).json(&body);
                            if let Some(idempotency) = &idempotency {
                                request = request.header("Idempotency-Key", idempotency);
                            }
                            // A connection error is not an answer: the test's API never goes away.
                            let response = request.send().await.expect("POST /v1/messages");
                            let status = response.status().as_u16();
                            let retry_after = response
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            let answer: Value = response.json().await.unwrap_or(Value::Null);
                            let counter = match status {
                                202 => {
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                    let id = answer["id"].as_str().expect("id").to_owned();
                                    return (i, id);
                                }
                                503 => &unavailable,
                                409 => &conflicts,
                                other => panic!("message {i}: {other} {answer}"),
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            // Both carry Retry-After (the README's contract): wait that long.
                            let wait = retry_after.unwrap_or_else(|| {
                                panic!("message {i}: {status} without Retry-After: {answer}")
                            });
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "message {i} still refused after {give_up:?}: {status} {answer}"
                            );
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                    });
                }
                while let Some((i, id)) = running.next().await {
                    result.accepted.insert(i, id);
                }
                result.unavailable = unavailable.load(Ordering::Relaxed);
                result.conflicts = conflicts.load(Ordering::Relaxed);
                result.texts = texts;
                result
            }
        });
        Client {
            unavailable,
            conflicts,
            accepted,
            task,
        }
    }

    /// Provider calls per text in the sandbox outbox.
    pub fn outbox_texts(&self) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(&self.outbox).unwrap_or_default();
        let mut texts = HashMap::new();
        for line in ump_core::testing::complete_lines(&text) {
            let line: Value = serde_json::from_str(line).expect("outbox line is JSON");
            *texts
                .entry(line["text"].as_str().expect("text").to_owned())
                .or_insert(0) += 1;
        }
        texts
    }

    /// Waits (up to `timeout`) until every accepted message has reached a provider, as
    /// `provider_calls` counts them per text, and the history says `sent` for as many; then
    /// counts lost and duplicated messages, fails on any, and returns the figures.
    pub async fn settle(
        &self,
        sent: &Sent,
        timeout: Duration,
        provider_calls: impl Fn() -> HashMap<String, usize>,
    ) -> Tally {
        let deadline = tokio::time::Instant::now() + timeout;
        let accepted: Vec<&String> = sent.accepted.keys().map(|&i| &sent.texts[i]).collect();
        let calls = loop {
            let calls = provider_calls();
            let missing = accepted.iter().filter(|t| !calls.contains_key(**t)).count();
            if missing == 0 || tokio::time::Instant::now() > deadline {
                break calls;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Every 202 is in the history: sent, or (a client's retry of a send whose 503 came after
        // the broker had taken it) a duplicate that was not sent again.
        let done = |status: Option<&String>| {
            matches!(status.map(String::as_str), Some("sent" | "duplicate"))
        };
        let deadline = deadline + Duration::from_secs(5);
        loop {
            let statuses = self.statuses().await;
            let pending: Vec<(&usize, &String)> = sent
                .accepted
                .iter()
                .filter(|(_, id)| !done(statuses.get(*id)))
                .collect();
            let Some((i, id)) = pending.first() else {
                break;
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} accepted messages are not recorded sent, e.g. message {i} ({id}) is {:?}\n{}",
                pending.len(),
                statuses.get(*id),
                self.worker_log()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let tally = Tally {
            accepted: accepted.len(),
            sent: accepted.iter().filter(|t| calls.contains_key(**t)).count(),
            duplicated: accepted
                .iter()
                .filter(|t| calls.get(**t).copied().unwrap_or(0) > 1)
                .count(),
            lost: accepted.iter().filter(|t| !calls.contains_key(**t)).count(),
            unavailable: sent.unavailable,
            conflicts: sent.conflicts,
        };
        assert_eq!(
            tally.accepted,
            sent.texts.len(),
            "the client gave up on some messages"
        );
        tally
    }

    /// Every message's status in the history, by id.
    pub async fn statuses(&self) -> HashMap<String, String> {
        sqlx::query_as::<_, (Vec<u8>, String)>("SELECT id, status FROM messages")
            .fetch_all(&self.db.pool)
            .await
            .expect("statuses")
            .into_iter()
            .map(|(id, status)| (uuid::Uuid::from_slice(&id).expect("id").to_string(), status))
            .collect()
    }
}

/// The figures of one run.
#[derive(Debug)]
pub struct Tally {
    pub accepted: usize,
    pub sent: usize,
    pub duplicated: usize,
    pub lost: usize,
    pub unavailable: usize,
    pub conflicts: usize,
}

impl Tally {
    /// The figures of two loads of one run together.
    pub fn plus(&self, other: &Tally) -> Tally {
        Tally {
            accepted: self.accepted + other.accepted,
            sent: self.sent + other.sent,
            duplicated: self.duplicated + other.duplicated,
            lost: self.lost + other.lost,
            unavailable: self.unavailable + other.unavailable,
            conflicts: self.conflicts + other.conflicts,
        }
    }

    /// Records the figures for RELIABILITY.md, then fails on anything lost or duplicated.
    pub fn record(&self, scenario: &str, fault: &str, notes: &str) {
        Reliability {
            scenario: scenario.to_owned(),
            fault: fault.to_owned(),
            accepted: self.accepted,
            sent: self.sent,
            duplicated: self.duplicated,
            lost: self.lost,
            notes: notes.to_owned(),
        }
        .record();
        assert_eq!(self.lost, 0, "{scenario}: messages lost: {self:?}");
        assert_eq!(
            self.duplicated, 0,
            "{scenario}: messages sent twice: {self:?}"
        );
    }
}

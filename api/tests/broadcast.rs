//! Broadcasts to a segment, all-in-one: a marketing broadcast reaches exactly the members who
//! agreed to it, each once, even when the process is killed (SIGKILL) mid-broadcast and the next
//! one resumes it; a bad message is refused before anything is sent. (The store keeps the same
//! contract in MySQL: `core/tests/mysql_history.rs`.)

mod common;

use common::{AllInOne, KEY, examples};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const PEOPLE: usize = 3_000;
/// `UMP_WORKER_LANES` of the all-in-one mode: the most deliveries one crash can catch mid-call.
const LANES: usize = 64;

fn phone(i: usize) -> String {
    format!("+8210{:08}", 10_000_000 + i)
}

/// Even people agreed to SMS advertising, at night too; odd ones did not.
fn consenting(i: usize) -> bool {
    i.is_multiple_of(2)
}

async fn identify_everyone(ump: &AllInOne) {
    futures::stream::iter(0..PEOPLE)
        .map(|i| async move {
            let granted = consenting(i);
            let body = json!({"traits": {"campaign": "winter"}, "contacts": {"phone": phone(i)},
                "consents": [
                    {"purpose": "marketing", "channel": "sms", "granted": granted, "source": "test"},
                    {"purpose": "marketing_night", "channel": "sms", "granted": granted, "source": "test"},
                ]});
            let response = ump
                .http
                .put(format!("{}/v1/users/winter-{i:05}", ump.url))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .expect("PUT");
            assert_eq!(response.status(), 200);
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

async fn broadcast(ump: &AllInOne, id: &str) -> Value {
    let (status, body) = ump.get(KEY, &format!("/v1/broadcasts/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_killed_mid_run_resumes_and_reaches_each_consenting_member_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let env = [("UMP_BOOTSTRAP_API_KEY", KEY), ("RUST_LOG", "warn")];
    let mut ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;
    let (status, _) = ump
        .post(
            KEY,
            "/v1/segments",
            &json!({"id": "winter", "condition": {"trait": {"path": "campaign", "equals": "winter"}}}),
        )
        .await;
    assert_eq!(status, 201);
    identify_everyone(&ump).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ump.get(KEY, "/v1/segments/winter").await.1["size"] != PEOPLE {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the segment never filled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A bad message is refused before anything starts.
    let (status, problem) = ump
        .post(
            KEY,
            "/v1/segments/winter/broadcast",
            &json!({"channel": "sms"}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("body")),
        "{problem}"
    );
    let (status, problem) = ump
        .post(
            KEY,
            "/v1/segments/winter/broadcast",
            &json!({"channel": "sms", "body": "x", "to": "+821000000000"}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("to")),
        "{problem}"
    );
    assert_eq!(
        ump.post(
            KEY,
            "/v1/segments/nowhere/broadcast",
            &json!({"channel": "sms", "body": "x"})
        )
        .await
        .0,
        404
    );

    let request = json!({"id": "winter-sale", "channel": "sms", "body": "Winter sale: 20% off"});
    let (status, started) = ump
        .post(KEY, "/v1/segments/winter/broadcast", &request)
        .await;
    assert_eq!(status, 202, "{started}");
    // The same request again (a retry after a lost answer) starts nothing new.
    let (status, again) = ump
        .post(KEY, "/v1/segments/winter/broadcast", &request)
        .await;
    assert_eq!((status, &again["id"]), (202, &json!("winter-sale")));

    // Killed once the first page is in, well before the end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = broadcast(&ump, "winter-sale").await;
        let done = b["enqueued"].as_u64().unwrap_or(0) + b["skipped"].as_u64().unwrap_or(0);
        if done > 0 {
            assert_eq!(
                b["status"], "running",
                "the kill must land mid-broadcast: {b}"
            );
            assert!(done < PEOPLE as u64, "{b}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never started: {b}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ump.kill();

    let ump = AllInOne::start_on(&data, &examples(), "warn", &env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let b = broadcast(&ump, "winter-sale").await;
        if b["status"] != "running" {
            break b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["status"], "done", "{finished}");
    assert_eq!(finished["enqueued"], PEOPLE / 2, "{finished}");
    assert_eq!(finished["skipped"], PEOPLE / 2, "{finished}");

    // Every consenting member got one message, nobody else any. The kill may also land in the
    // delivery's own crash window (README, "Delivery guarantee"): a message the provider took
    // just before the kill, sent again with the same id, at most one per delivery lane.
    let wanted: BTreeSet<String> = (0..PEOPLE).filter(|i| consenting(*i)).map(phone).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (ids, calls) = loop {
        let mut ids: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut calls = 0;
        for record in ump.outbox() {
            // Advertising on SMS, marked with the example channel's sender and opt-out number.
            if record["text"] == "(광고) UMP\nWinter sale: 20% off\n무료수신거부 080-123-4567"
            {
                calls += 1;
                ids.entry(record["to"].as_str().expect("to").to_owned())
                    .or_default()
                    .insert(record["id"].as_str().expect("id").to_owned());
            }
        }
        if ids.len() >= wanted.len() {
            break (ids, calls);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} sent",
            ids.len(),
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reached: BTreeSet<String> = ids.keys().cloned().collect();
    assert_eq!(reached, wanted, "exactly the consenting members");
    let two_messages: Vec<_> = ids.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(
        two_messages.is_empty(),
        "members with two messages: {two_messages:?}"
    );
    let repeats = calls - wanted.len();
    assert!(
        repeats <= LANES,
        "{repeats} provider repeats: more than the crash window allows"
    );
}

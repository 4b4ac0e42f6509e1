//! The event processor (`ump-events`) on the real Kafka and MariaDB: events in, memberships out;
//! killed with SIGKILL three times mid-run, every event is counted exactly once; Kafka and MariaDB
//! stopped and started again mid-run, nothing is lost.
//!
//! Exactly once is read from each person's state: every person gets `EVENTS_EACH` events
//! (numbered, no message id, so nothing but the processor's positions keeps a replay from
//! counting twice); the segment `loyal` holds those who did it exactly `EVENTS_EACH` times
//! (a count the state keeps one past), and the record's recent events list each number once.
//!
//! A test binary of its own whose tests run one at a time: two of them stop shared services.

use chrono::{DateTime, Duration as Span, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use ump_automation::event::{EventInput, Queued};
use ump_core::audience::{EventLog, KafkaEventLog, SegmentStore};
use ump_core::audience_mysql::MySqlAudience;
use ump_core::queue::KafkaSettings;
use ump_core::testing::{TestDatabase, infra, unique_name};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 4;
const EVENTS_EACH: usize = 8;
const TENANT: &str = "t-events";

/// The topic, the group, the database and the processes of one test.
struct Setup {
    topic: String,
    group: String,
    db: TestDatabase,
    audience: MySqlAudience,
    log: KafkaEventLog,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let topic = unique_name("ump-events-test");
        let admin: AdminClient<DefaultClientContext> =
            KafkaSettings::from_env(infra().kafka_bootstrap())
                .client_config()
                .create()
                .expect("Kafka admin client");
        let created = admin
            .create_topics(
                [&NewTopic::new(
                    &topic,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create the events topic");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        let db = TestDatabase::create().await;
        let audience = MySqlAudience::new(db.pool.clone());
        let segment = serde_json::from_value(json!({"id": "loyal", "condition":
            {"performed": {"event": "purchase", "at_least": EVENTS_EACH, "at_most": EVENTS_EACH,
                "within": "30d"}}}))
        .expect("segment");
        audience
            .put_segment(TENANT, segment, Utc::now())
            .await
            .expect("segment stored");
        let log = KafkaEventLog::new(
            &KafkaSettings::from_env(infra().kafka_bootstrap()),
            &topic,
            Duration::from_secs(5),
        )
        .expect("producer");
        Self {
            group: unique_name("ump-events-group"),
            topic,
            db,
            audience,
            log,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn start(&self, run: usize) -> Processor {
        self.start_with(run, &[])
    }

    fn start_with(&self, run: usize, env: &[(&str, &str)]) -> Processor {
        let log_path = self.dir.path().join(format!("processor-{run}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ump-events"))
            .env("UMP_KAFKA_BOOTSTRAP", infra().kafka_bootstrap())
            .env("UMP_MYSQL_URL", &self.db.url)
            .env("UMP_EVENTS_TOPIC", &self.topic)
            .env("UMP_EVENTS_GROUP", &self.group)
            .env("UMP_EVENTS_PARTITIONS", PARTITIONS.to_string())
            .env("UMP_EVENTS_LISTEN", "127.0.0.1:0")
            .env("UMP_EVENTS_BATCH", "500")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            // Its log lines go to stdout: kept, so that a failure shows what the processor did.
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ump-events");
        Processor {
            child,
            log: log_path,
        }
    }

    /// Entries committed so far (the processor's positions, summed over partitions).
    async fn committed(&self) -> i64 {
        self.audience
            .positions(&self.group, &self.topic)
            .await
            .map(|p| p.values().sum())
            .unwrap_or(0)
    }

    /// Waits until `total` entries are committed.
    async fn wait_committed(&self, total: i64, within: Duration, processor: &Processor) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let done = self.committed().await;
            if done >= total {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {done} of {total} entries committed in {within:?}:\n{}",
                processor.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks every person got each of their events exactly once, and is in the segment.
    async fn check_exactly_once(&self, people: usize) {
        let mut wrong = Vec::new();
        for p in 0..people {
            let user = user(p);
            let record = self
                .audience
                .person(TENANT, &user)
                .await
                .expect("read a record")
                .unwrap_or_else(|| panic!("{user} has no record"));
            let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
            for event in record.recent.iter().filter(|e| e.event == "purchase") {
                *counts
                    .entry(event.properties["n"].as_i64().expect("n"))
                    .or_default() += 1;
            }
            let expected: BTreeMap<i64, usize> = (0..EVENTS_EACH as i64).map(|n| (n, 1)).collect();
            if counts != expected {
                wrong.push(format!("{user}: {counts:?}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {people} people were not counted exactly once, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        let size = self
            .audience
            .segment_size(TENANT, "loyal")
            .await
            .expect("size");
        assert_eq!(
            size, people as u64,
            "everyone bought exactly {EVENTS_EACH} times"
        );
    }

    async fn finish(self) {
        self.db.drop_database().await;
    }
}

struct Processor {
    child: Child,
    log: PathBuf,
}

impl Processor {
    fn kill(mut self) {
        // SIGKILL: no shutdown, no batch finished.
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user(p: usize) -> String {
    format!("person-{p:05}")
}

/// Event `n` of person `p`: a purchase, `EVENTS_EACH - n` minutes ago; `id` gives it a message
/// id (a client that retries sends the same one).
fn purchase(p: usize, n: usize, now: DateTime<Utc>, id: bool) -> Queued {
    let mut event = json!({"user_id": user(p), "event": "purchase", "properties": {"n": n},
        "timestamp": (now - Span::minutes((EVENTS_EACH - n) as i64)).to_rfc3339()});
    if id {
        event["message_id"] = json!(format!("{}-{n}", user(p)));
    }
    serde_json::from_value::<EventInput>(event)
        .expect("event")
        .check("", now)
        .expect("valid")
}

/// Appends the events of `people`, round n by round n, in batches of 500; a batch the log
/// refuses (a broker away) is sent again after a pause, as a client retrying a 503 does.
async fn produce(log: &KafkaEventLog, people: std::ops::Range<usize>, id: bool) -> usize {
    let now = Utc::now();
    let mut sent = 0;
    for n in 0..EVENTS_EACH {
        let round: Vec<Queued> = people.clone().map(|p| purchase(p, n, now, id)).collect();
        for batch in round.chunks(500) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while let Err(e) = log.append(TENANT, batch).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the event log refused a batch for 2 minutes: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            sent += batch.len();
        }
    }
    sent
}

fn infra_script(command: &str, component: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra");
    let output = Command::new("bash")
        .arg(&script)
        .args([command, component])
        .output()
        .expect("run scripts/infra");
    assert!(
        output.status.success(),
        "scripts/infra {command} {component} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A shared service taken down; back up when ended or dropped (a failing test never leaves it
/// down for the next).
struct Outage {
    component: &'static str,
    up: bool,
}

impl Outage {
    async fn begin(component: &'static str) -> Self {
        tokio::task::spawn_blocking(move || infra_script("down", component))
            .await
            .expect("scripts/infra down");
        Self {
            component,
            up: false,
        }
    }

    async fn end(mut self) {
        let component = self.component;
        tokio::task::spawn_blocking(move || infra_script("up", component))
            .await
            .expect("scripts/infra up");
        self.up = true;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.up {
            infra_script("up", self.component);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_three_times_mid_run_every_event_is_counted_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    const PEOPLE: usize = 4_000;
    let total = produce(&setup.log, 0..PEOPLE, false).await as i64;
    let mut kills = 0;
    for (run, share) in [0.15, 0.40, 0.65].into_iter().enumerate() {
        let processor = setup.start(run);
        let target = (total as f64 * share) as i64;
        setup
            .wait_committed(target, Duration::from_secs(120), &processor)
            .await;
        let at = setup.committed().await;
        if at < total {
            kills += 1;
        }
        processor.kill();
    }
    assert_eq!(kills, 3, "every kill must land mid-run");
    let processor = setup.start(3);
    setup
        .wait_committed(total, Duration::from_secs(180), &processor)
        .await;
    setup.check_exactly_once(PEOPLE).await;
    drop(processor);
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_and_kafka_restarts_mid_run_lose_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    const PEOPLE: usize = 1_000;
    let processor = setup.start(0);
    // A first half, processed; MariaDB goes away while the second half arrives.
    let first = produce(&setup.log, 0..PEOPLE / 2, true).await as i64;
    setup
        .wait_committed(first, Duration::from_secs(120), &processor)
        .await;
    let outage = Outage::begin("mariadb").await;
    let second = produce(&setup.log, PEOPLE / 2..PEOPLE, true).await as i64;
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.end().await;
    setup
        .wait_committed(first + second, Duration::from_secs(180), &processor)
        .await;
    setup.check_exactly_once(PEOPLE).await;

    // Kafka away while the same people send their events again (a client retrying after a
    // lost answer, with the same message ids): nothing is counted twice, nothing lost. Away for
    // longer than the group session (10 s), so that the processor's assignment is lost and it
    // must join the group again (a processor once sat idle after that, its partitions gone:
    // now it rejoins when the group records nothing while events wait).
    let outage = Outage::begin("kafka").await;
    let resend = {
        let log = &setup.log;
        async move { produce(log, 0..PEOPLE, true).await as i64 }
    };
    let back = async {
        tokio::time::sleep(Duration::from_secs(15)).await;
        outage.end().await;
    };
    let (again, ()) = tokio::join!(resend, back);
    assert!(again >= PEOPLE as i64 * EVENTS_EACH as i64);
    // Everything produced is eventually committed: wait for the topic's end.
    let end = high_watermarks(&setup.topic).await;
    setup
        .wait_committed(end, Duration::from_secs(180), &processor)
        .await;
    setup.check_exactly_once(PEOPLE).await;
    drop(processor);
    setup.finish().await;
}

/// A processor that can see nothing of its group at two quiet looks in a row (here: Kafka away,
/// a look after every 2 s without an event, once the consumer is 20 s old) closes its Kafka
/// consumer and a new one joins the group; the new one takes up where the positions in MySQL are, and every event is counted
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_replaced_while_kafka_is_away_loses_nothing_and_counts_nothing_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    const PEOPLE: usize = 500;
    let processor = setup.start_with(0, &[("UMP_EVENTS_STALL_CHECK", "2s")]);
    let first = produce(&setup.log, 0..PEOPLE / 2, true).await as i64;
    setup
        .wait_committed(first, Duration::from_secs(120), &processor)
        .await;
    // Away long enough for the consumer's first 20 s (its time to join, when it is not judged)
    // and two blind looks after them (each waits up to 5 s for Kafka's answer).
    let outage = Outage::begin("kafka").await;
    let second = {
        let log = &setup.log;
        async move { produce(log, PEOPLE / 2..PEOPLE, true).await as i64 }
    };
    let back = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        outage.end().await;
    };
    let (second, ()) = tokio::join!(second, back);
    assert!(second >= (PEOPLE / 2) as i64 * EVENTS_EACH as i64);
    let end = high_watermarks(&setup.topic).await;
    setup
        .wait_committed(end, Duration::from_secs(180), &processor)
        .await;
    setup.check_exactly_once(PEOPLE).await;
    let log = processor.log_text();
    assert!(
        log.contains("replacing it"),
        "the consumer was never replaced:\n{log}"
    );
    drop(processor);
    setup.finish().await;
}

/// Records that are no event log entry (a producer writing something else to the topic) are
/// passed over, and the positions move past them all the same: the positions reach the end of
/// every partition, even where such a record is the last one. Before, an unreadable last record
/// stayed "waiting" for good, and a processor holding no partition of such a topic judged its
/// group stalled and replaced its consumer every other look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_passed_over_and_their_positions_committed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    const PEOPLE: usize = 50;
    let producer: rdkafka::producer::FutureProducer =
        KafkaSettings::from_env(infra().kafka_bootstrap())
            .client_config()
            .create()
            .expect("producer");
    let garbage = |partition: i32| {
        let producer = &producer;
        let topic = &setup.topic;
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload("not an event log entry"),
                    Duration::from_secs(10),
                )
                .await
                .expect("an unreadable record produced");
        }
    };
    for partition in 0..PARTITIONS {
        garbage(partition).await;
    }
    produce(&setup.log, 0..PEOPLE, true).await;
    for partition in 0..PARTITIONS {
        garbage(partition).await;
    }
    let processor = setup.start(0);
    let end = high_watermarks(&setup.topic).await;
    assert_eq!(
        end,
        (PEOPLE * EVENTS_EACH) as i64 + 2 * PARTITIONS as i64,
        "every record is on the topic"
    );
    setup
        .wait_committed(end, Duration::from_secs(120), &processor)
        .await;
    setup.check_exactly_once(PEOPLE).await;
    let log = processor.log_text();
    assert!(
        log.matches("skipping an unreadable event log entry")
            .count()
            >= 2 * PARTITIONS as usize,
        "each unreadable record is logged:\n{log}"
    );
    drop(processor);
    setup.finish().await;
}

/// The sum of the topic's high watermarks: every record ever produced to it.
async fn high_watermarks(topic: &str) -> i64 {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = KafkaSettings::from_env(infra().kafka_bootstrap())
            .client_config()
            .set("group.id", unique_name("watermarks"))
            .create()
            .expect("consumer");
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .sum()
    })
    .await
    .expect("watermarks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_expires_moves_people_out_without_any_new_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    let segment = serde_json::from_value(json!({"id": "just-viewed", "condition":
        {"performed": {"event": "product_viewed", "within": "10s"}}}))
    .expect("segment");
    setup
        .audience
        .put_segment(TENANT, segment, Utc::now())
        .await
        .expect("segment stored");
    let processor = setup.start(0);
    let event = serde_json::from_value::<EventInput>(
        json!({"user_id": "viewer", "event": "product_viewed"}),
    )
    .expect("event")
    .check("", Utc::now())
    .expect("valid");
    setup.log.append(TENANT, &[event]).await.expect("append");
    let size = |audience: MySqlAudience| async move {
        audience
            .segment_size(TENANT, "just-viewed")
            .await
            .expect("size")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while size(setup.audience.clone()).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never entered:\n{}",
            processor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ten seconds after the view it leaves the window; the wake-up takes the person out. (The
    // window leaves the processor just started room to fold the view while it still counts.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while size(setup.audience.clone()).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never left:\n{}",
            processor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let record = setup
        .audience
        .person(TENANT, "viewer")
        .await
        .expect("record")
        .expect("exists");
    assert_eq!(record.recent[0].event, ump_automation::event::SEGMENT_LEFT);
    assert!(record.next_wake.is_none());
    drop(processor);
    setup.finish().await;
}

/// The founding brief's journey on Kafka and MariaDB: everyone views a product, half of them buy
/// it; the processor is killed (SIGKILL) while they wait. After the restart, the outbox holds
/// exactly one coupon for each who did not buy and none for those who did (the API's relay
/// sends the outbox with ids derived from each message's key: `api/tests/journeys.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_killed_mid_wait_makes_each_coupon_exactly_once() {
    use ump_core::journeys::{JourneyStore, MySqlJourneys};
    let _one = ONE_AT_A_TIME.lock().await;
    let setup = Setup::new().await;
    const PEOPLE: usize = 400;
    let journeys = MySqlJourneys::new(setup.db.pool.clone());
    let journey = serde_json::from_value(json!({
        "id": "viewed-not-bought",
        "entry": {"event": "product_viewed"},
        "quiet_hours": {"start": "00:00", "end": "00:00"},
        "steps": [
            {"id": "wait", "wait": {"event": "purchase", "match": ["item_id"], "timeout": "15s",
              "on_event": "bought", "on_timeout": "coupon"}},
            {"id": "coupon", "send": {"channel": "sms", "template": "coupon",
              "data": {"item": "$entry.item_id"}}},
            {"id": "bought", "exit": {}}
        ]
    }))
    .expect("journey");
    journeys
        .put_journey(TENANT, journey, Utc::now())
        .await
        .expect("stored");
    journeys
        .set_status(
            TENANT,
            "viewed-not-bought",
            ump_automation::journey::Status::Active,
            Utc::now(),
        )
        .await
        .expect("active");
    let processor = setup.start(0);
    let now = Utc::now();
    let mut entries = Vec::new();
    for p in 0..PEOPLE {
        let make = |name: &str| {
            serde_json::from_value::<EventInput>(
                json!({"user_id": user(p), "event": name, "properties": {"item_id": "sku-1"}}),
            )
            .expect("event")
            .check("", now)
            .expect("valid")
        };
        entries.push(make("product_viewed"));
        if p % 2 == 0 {
            entries.push(make("purchase"));
        }
    }
    for chunk in entries.chunks(100) {
        setup.log.append(TENANT, chunk).await.expect("append");
    }
    let stat = |name: &'static str| {
        let journeys = journeys.clone();
        async move {
            journeys
                .stats(TENANT, "viewed-not-bought")
                .await
                .expect("stats")
                .iter()
                .filter(|s| s.counter == name)
                .map(|s| s.value)
                .sum::<i64>()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stat("entered").await < PEOPLE as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everyone entered:\n{}",
            processor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stat("sent").await, 0, "killed before any timeout");
    processor.kill();
    let processor = setup.start(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while stat("sent").await < (PEOPLE / 2) as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coupons missing:\n{}",
            processor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a repeat to show up, if one were coming.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, send FROM journey_sends WHERE tenant_id = ?")
            .bind(TENANT)
            .fetch_all(&setup.db.pool)
            .await
            .expect("outbox");
    let mut keys = std::collections::BTreeSet::new();
    for (user_id, send) in &rows {
        let send: ump_automation::journey::JourneySend =
            serde_json::from_str(send).expect("a send");
        assert!(
            keys.insert(format!("{user_id}/{}", send.key())),
            "{user_id} twice"
        );
        let p: usize = user_id.trim_start_matches("person-").parse().expect("n");
        assert!(p % 2 == 1, "{user_id} bought, yet got a coupon");
        assert_eq!(send.data["item"], "sku-1");
    }
    assert_eq!(rows.len(), PEOPLE / 2);
    assert_eq!(stat("matched").await, (PEOPLE / 2) as i64);
    drop(processor);
    setup.finish().await;
}

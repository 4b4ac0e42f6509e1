//! Test support for suites that run against the real infrastructure started by `scripts/infra up`.
//! A missing or unreachable component fails the test with a message naming it; nothing is skipped.
//! The settings, names and metric reader come from `ump_testkit` (which needs none of UMP's
//! adapters); what is here needs them (a migrated database, the contract suites).

use std::path::PathBuf;
use std::time::Duration;

pub use ump_testkit::{
    Infra, PipeliningSmtpServer, SmtpServer, free_port, metric_value, require_tcp, settings_path,
    unique_name,
};

/// The settings of this test run, read once; the process's TLS crypto provider is installed
/// first, as every client the suites build expects it.
pub fn infra() -> &'static Infra {
    crate::tls::install_crypto_provider();
    ump_testkit::infra()
}

/// A migrated MySQL database of its own for one test, dropped by `drop_database`.
pub struct TestDatabase {
    pub pool: sqlx::MySqlPool,
    pub url: String,
    name: String,
    admin: sqlx::MySqlPool,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let db = Self::create_empty().await;
        crate::store::migrate_mysql(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("MariaDB: {e}"));
        db
    }

    /// A database of its own with no schema at all (not migrated).
    pub async fn create_empty() -> Self {
        let admin_url = infra().mysql_url();
        let admin = crate::store::connect_mysql(&admin_url, 2)
            .await
            .unwrap_or_else(|e| panic!("MariaDB: {e}"));
        let name = unique_name("ump_test").replace('-', "_");
        // `name` is our own hex name, not input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("MariaDB: CREATE DATABASE: {e}"));
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        let pool = crate::store::connect_mysql(&url, 8)
            .await
            .unwrap_or_else(|e| panic!("MariaDB: {e}"));
        Self {
            pool,
            url,
            name,
            admin,
        }
    }

    pub async fn drop_database(self) {
        self.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE `{}`",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap_or_else(|e| panic!("MariaDB: DROP DATABASE: {e}"));
    }
}

/// One row of the bad-input table both modes must answer alike (cluster and all-in-one tests run
/// the same rows): the body of a `POST /v1/messages`, and the status, problem type and field.
#[derive(Clone, Debug)]
pub struct BadInput {
    pub name: &'static str,
    pub body: String,
    pub status: u16,
    /// The problem type's slug (`https://ump.dev/problems/<kind>`).
    pub kind: &'static str,
    pub field: Option<&'static str>,
}

/// The bad-input table. It assumes the channels `sms` and `email`, the latter with a template
/// `welcome` that uses `{{ name }}` (as in `examples/channels`).
#[rustfmt::skip]
pub fn bad_inputs() -> Vec<BadInput> {
    let row = |name, body: &str, status, kind, field| BadInput {
        name,
        body: body.to_owned(),
        status,
        kind,
        field,
    };
    vec![
        row("missing channel", r#"{"to":"+821012345678","body":"x"}"#, 422, "validation", Some("channel")),
        row("unknown channel", r#"{"channel":"fax","to":"+821012345678","body":"x"}"#, 422, "validation", Some("channel")),
        row("malformed phone", r#"{"channel":"sms","to":"010-1234-5678","body":"x"}"#, 422, "validation", Some("to")),
        row("malformed email", r#"{"channel":"email","to":"kim@","subject":"s","body":"x"}"#, 422, "validation", Some("to")),
        row("header injection", r#"{"channel":"email","to":"kim@example.com","subject":"a\r\nBcc: x@evil.test","body":"x"}"#, 422, "validation", Some("subject")),
        row("header injection in the address", r#"{"channel":"email","to":"kim@example.com\r\nBcc: x@evil.test","subject":"s","body":"x"}"#, 422, "validation", Some("to")),
        row("control character in the subject", r#"{"channel":"email","to":"kim@example.com","subject":"a\u0000b","body":"x"}"#, 422, "validation", Some("subject")),
        row("lone surrogate", r#"{"channel":"sms","to":"+821012345678","body":"\ud800"}"#, 400, "malformed-json", None),
        row("empty content", r#"{"channel":"sms","to":"+821012345678","body":""}"#, 422, "validation", Some("body")),
        row("no content", r#"{"channel":"sms","to":"+821012345678"}"#, 422, "validation", Some("body")),
        row("unknown template variable", r#"{"channel":"email","to":"kim@example.com","template":"welcome","data":{}}"#, 422, "validation", Some("data.name")),
        row("unknown template", r#"{"channel":"email","to":"kim@example.com","template":"nope"}"#, 422, "validation", Some("template")),
        row("bad send_at", r#"{"channel":"sms","to":"+821012345678","body":"x","send_at":"next tuesday"}"#, 422, "validation", Some("send_at")),
        row("bad priority", r#"{"channel":"sms","to":"+821012345678","body":"x","priority":"urgent"}"#, 422, "validation", Some("priority")),
        row("malformed JSON", r#"{"channel":"sms","#, 400, "malformed-json", None),
        BadInput {
            name: "deep JSON",
            body: format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            status: 400,
            kind: "malformed-json",
            field: None,
        },
        row("not an object", "[]", 422, "validation", Some("$")),
        BadInput {
            name: "data nested too deep",
            body: format!(
                r#"{{"channel":"sms","to":"+821012345678","body":"x","data":{{"a":{}1{}}}}}"#,
                "[".repeat(40),
                "]".repeat(40)
            ),
            status: 422,
            kind: "validation",
            field: Some("data"),
        },
        BadInput {
            name: "oversized body",
            body: format!(
                r#"{{"channel":"sms","to":"+821012345678","body":"{}"}}"#,
                "x".repeat(300_000)
            ),
            status: 413,
            kind: "too-large",
            field: None,
        },
    ]
}

/// What a fault-injection test counted, for `RELIABILITY.md`: each test writes one to
/// `<target dir>/test-output/reliability/<scenario>.json` and `scripts/reliability` puts them in a
/// table.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reliability {
    /// A stable name, also the file name.
    pub scenario: String,
    /// What was broken, how, for how long.
    pub fault: String,
    /// Messages the API answered 202 for (each client retry counted once).
    pub accepted: usize,
    /// Accepted messages that reached the provider.
    pub sent: usize,
    /// Accepted messages that reached the provider more than once.
    pub duplicated: usize,
    /// Accepted messages that never reached the provider.
    pub lost: usize,
    /// What else the test saw (503 answers, pauses, kills).
    pub notes: String,
}

impl Reliability {
    /// Prints the figures and writes them where `scripts/reliability` looks.
    pub fn record(&self) {
        eprintln!(
            "reliability {}: accepted {}, sent {}, duplicated {}, lost {} ({})",
            self.scenario, self.accepted, self.sent, self.duplicated, self.lost, self.notes
        );
        let Some(dir) = reliability_dir() else {
            return;
        };
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                dir.join(format!("{}.json", self.scenario)),
                serde_json::to_vec_pretty(self).unwrap_or_default(),
            )
        });
        if let Err(e) = written {
            eprintln!("could not write the reliability record: {e}");
        }
    }
}

/// `<target dir>/test-output/reliability`: the test binary runs from `<target>/<profile>/deps/`.
pub fn reliability_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(
        exe.ancestors()
            .nth(3)?
            .join("test-output")
            .join("reliability"),
    )
}

/// Headless Chromium and playwright-core from `scripts/infra up browser`, for the dashboard tests.
pub struct Browser {
    chromium: String,
    playwright: String,
    node: String,
}

/// What the dashboard's browser script (`worker/tests/dashboard/browser.js`) is told to find.
pub struct DashboardCheck<'a> {
    pub url: &'a str,
    pub key: &'a str,
    /// A message that was sent: searched for by id and by recipient.
    pub sent_id: &'a str,
    pub sent_to: &'a str,
    pub sent_channel: &'a str,
    /// A message that failed, and the reason the failures view must show.
    pub failed_id: &'a str,
    pub failed_reason: &'a str,
    /// The channels the overview must list, comma-separated, sorted.
    pub channels: &'a str,
    /// A user id whose profile has `sent_to` as its phone and a marketing SMS consent given by
    /// `signup-form`: the Customers view must show them.
    pub customer: &'a str,
    /// A person the event processor has put in every one of `segments` (comma-separated ids: all
    /// of the tenant's segments), after two `product_viewed` events and then a `purchase` with an
    /// `item_id`: the Customers and Segments views must show all of it.
    pub audience_customer: &'a str,
    pub segments: &'a str,
    /// One of `segments` whose definition is a `trait` condition on `tier`, with this many members
    /// (more than a page of the view's makes it page).
    pub paged_segment: &'a str,
    pub paged_members: usize,
    /// One of `segments` whose definition refers to `paged_segment` (`in_segment`).
    pub referring_segment: &'a str,
    /// An API key of another tenant, which must see none of this tenant's segments or people.
    pub other_key: &'a str,
    /// Whether the sandbox outbox tab is there (all-in-one) or not (cluster mode).
    pub outbox: bool,
    /// Where screenshots go (emptied first).
    pub screenshots: &'a std::path::Path,
}

/// The profile the dashboard tests give `DashboardCheck::customer` (`PUT /v1/users/{id}`).
pub fn dashboard_customer_profile(phone: &str) -> serde_json::Value {
    serde_json::json!({
        "traits": {"tier": "vip"},
        "contacts": {"phone": phone},
        "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                      "source": "signup-form"}],
    })
}

impl Browser {
    /// Fails the test at once, naming the setup step, when the browser is not installed.
    pub fn require() -> Self {
        let chromium = infra().require("Browser", "UMP_CHROMIUM");
        let playwright = infra().require("Browser", "UMP_PLAYWRIGHT");
        let node = infra().require("Browser", "UMP_NODE");
        assert!(
            std::path::Path::new(&chromium).is_file(),
            "Chromium: {chromium} does not exist (run `scripts/infra up browser`)"
        );
        assert!(
            std::path::Path::new(&playwright)
                .join("package.json")
                .is_file(),
            "playwright-core is not installed at {playwright} (run `scripts/infra up browser`)"
        );
        Self {
            chromium,
            playwright,
            node,
        }
    }

    /// Runs the dashboard script against `check.url` (3 minutes at most) and fails the test with
    /// its report when a check fails.
    pub async fn check_dashboard(&self, check: &DashboardCheck<'_>) {
        let _ = std::fs::remove_dir_all(check.screenshots);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../worker/tests/dashboard/browser.js"
        );
        let run = tokio::process::Command::new(&self.node)
            .arg(script)
            .env("UMP_PLAYWRIGHT", &self.playwright)
            .env("UMP_CHROMIUM", &self.chromium)
            .env("DASHBOARD_URL", check.url)
            .env("DASHBOARD_KEY", check.key)
            .env("SENT_ID", check.sent_id)
            .env("SENT_TO", check.sent_to)
            .env("SENT_CHANNEL", check.sent_channel)
            .env("FAILED_ID", check.failed_id)
            .env("FAILED_REASON", check.failed_reason)
            .env("CHANNELS", check.channels)
            .env("CUSTOMER", check.customer)
            .env("AUDIENCE_CUSTOMER", check.audience_customer)
            .env("SEGMENTS", check.segments)
            .env("PAGED_SEGMENT", check.paged_segment)
            .env("PAGED_MEMBERS", check.paged_members.to_string())
            .env("REFERRING_SEGMENT", check.referring_segment)
            .env("OTHER_KEY", check.other_key)
            .env("SCREENSHOTS", check.screenshots)
            .env("OUTBOX", if check.outbox { "present" } else { "absent" })
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .expect("the browser run finished within 180 s")
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.node));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("{report}");
        assert!(
            output.status.success(),
            "the dashboard failed in Chromium (screenshots in {}):\n{report}",
            check.screenshots.display()
        );
    }
}

/// The complete lines of a JSON-lines file read while a process may still be appending to it: a
/// last line without its newline is a write in progress (a reader can see part of a `write(2)`),
/// not a record.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
}

pub mod audience;
pub mod broadcast;
pub mod catalog;
pub mod history;
pub mod journeys;
pub mod keys;
pub mod parking;
pub mod profiles;
pub mod queue;
pub mod recommendations;
pub mod webhooks;

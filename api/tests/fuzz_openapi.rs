//! The API fuzzed from its own `/openapi.json` by Schemathesis (property-based, from PyPI; see
//! `scripts/infra.d/schemathesis.sh`): the real `ump` binary all-in-one (the cluster mode's router
//! and handlers), seeded with delivered messages so the reads return real data. Every check runs:
//! no 5xx, status codes, content types, headers and bodies as documented, invalid input refused,
//! authentication not ignored. Two checks are off where the schema cannot say what the API
//! rightly does (the operations' config below says why).
//!
//! Bounded for CI: `UMP_FUZZ_EXAMPLES` examples per operation and phase (default 40), about a
//! minute. `UMP_FUZZ_SEED` replays a run (every run prints its seed).

mod common;

use common::{AllInOne, KEY};
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Schemathesis' configuration: the key, the seeded message for `{id}`, the receipts' provider,
/// and the checks the schema cannot support.
fn config(message_id: &str) -> String {
    format!(
        r#"
[auth.openapi.api_key]
bearer = "{KEY}"

# Each entry below names its operations exactly, by `include-name` ("METHOD /path"): Schemathesis
# ORs an entry's separate include filters, so `include-path` with `include-method` would apply to
# every operation of that method, on every path.

# Every check runs (Schemathesis' default; `--checks all` on the command line would override the
# operations' settings below). A body over the size limit is refused before it is read: 413.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# Whether a well-typed send is accepted depends on the configuration (channel names, which
# recipient format the channel's type needs, a template's variables), which a schema of the
# request cannot state: only invalid input must be refused, so only that is checked.
[[operations]]
include-name = "POST /v1/messages"
checks.positive_data_acceptance.enabled = false

# The same for a batch; and a batch answers 202 with a problem per invalid message (the contract:
# one bad message does not fail the other 999), so a batch of invalid messages is rightly no 4xx.
[[operations]]
include-name = "POST /v1/messages/batch"
checks.positive_data_acceptance.enabled = false
checks.negative_data_rejection.enabled = false

# Whether a well-typed profile update is accepted depends on values a schema cannot list (an IANA
# time zone, an E.164 number): as for sends, only invalid input must be refused.
[[operations]]
include-name = "PUT /v1/users/{{user_id}}"
checks.positive_data_acceptance.enabled = false

# Whether a well-typed segment is accepted depends on the tenant's other segments (references,
# cycles) and values a schema cannot list (durations such as 7d); a broadcast's message depends on
# the configured channels, as for sends: only invalid input must be refused.
[[operations]]
include-name = "POST /v1/segments"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-name = "PUT /v1/segments/{{id}}"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-name = "POST /v1/segments/{{id}}/broadcast"
checks.positive_data_acceptance.enabled = false

# An event's `timestamp` must lie within an hour ahead and 365 days back of the moment it arrives,
# which a schema cannot state: only invalid input must be refused.
[[operations]]
include-name = "POST /v1/events"
checks.positive_data_acceptance.enabled = false

# Whether a well-typed journey is accepted depends on its step graph (every `next` names a step, no
# step unreachable), the configured channels and templates, and durations such as 5m; and a cap's
# window is such a duration: only invalid input must be refused.
[[operations]]
include-name-regex = "^(POST /v1/journeys|PUT /v1/journeys/\\{{id\\}}|PUT /v1/journey-caps)$"
checks.positive_data_acceptance.enabled = false

# A real segment (the first start's examples), so its reads get past 404.
[[operations]]
include-name-regex = "^GET /v1/segments/\\{{id\\}}(/members|/sizes)?$"
parameters = {{ id = "vip" }}

# A real message, so the reads of one message return it (and its timeline) and not only 404.
[[operations]]
include-path = "/v1/messages/{{id}}"
parameters = {{ id = "{message_id}" }}

# Whether a well-typed webhook endpoint is accepted depends on where its URL points (public
# addresses only), and a rotation's grace on a duration a schema cannot state: only invalid input
# must be refused.
[[operations]]
include-name = "POST /v1/webhooks"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-name-regex = "^(PATCH /v1/webhooks/\\{{id\\}}|POST /v1/webhooks/\\{{id\\}}/rotate-secret)$"
checks.positive_data_acceptance.enabled = false

# Whether a well-typed catalog item is accepted depends on what a schema cannot state exactly: a
# name or category that is not blank, URLs with an http(s) scheme and a host, attributes of at most
# 8 KiB of JSON, and in `PUT` a body id equal to the path's: only invalid input must be refused.
[[operations]]
include-name-regex = "^(POST /v1/catalog/items|PUT /v1/catalog/items/\\{{id\\}})$"
checks.positive_data_acceptance.enabled = false

# A provider that takes receipts, so they get past the routing to the signature check.
[[operations]]
include-path = "/v1/receipts/{{channel}}/{{provider}}"
parameters = {{ channel = "hooks", provider = "crm" }}
"#
    )
}

/// The example channels and a webhook channel, whose provider takes signed receipts.
const HOOKS: &str = r#"
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: hooks}
spec:
  type: webhook
  providers:
    - name: crm
      type: webhook
      secretRef: {name: crm}
      settings: {url: "http://127.0.0.1:9/never-called"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_to_its_openapi_document_under_fuzzing() {
    let st = ump_core::testing::infra().require("Schemathesis", "UMP_SCHEMATHESIS");
    assert!(
        std::path::Path::new(&st).is_file(),
        "Schemathesis: {st} does not exist (run `scripts/infra up schemathesis`)"
    );
    let per_operation: u32 = std::env::var("UMP_FUZZ_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);

    // The fuzzer sends thousands of requests with one key: the per-key rate limit stays on, at a
    // rate this run never reaches, so a 429 would be a bug too.
    let work = tempfile::tempdir().expect("temp dir");
    let channels = work.path().join("channels");
    let secrets = work.path().join("secrets");
    std::fs::create_dir_all(&channels).expect("channels dir");
    std::fs::create_dir_all(secrets.join("crm")).expect("secrets dir");
    let examples = std::fs::read_to_string(common::examples().join("channels.yaml"))
        .expect("example channels");
    std::fs::write(channels.join("channels.yaml"), format!("{examples}{HOOKS}"))
        .expect("write channels");
    std::fs::write(secrets.join("crm/signingSecret"), "fuzz-signing-secret").expect("secret");
    let secrets = secrets.to_string_lossy().into_owned();
    let mut ump = AllInOne::start_with_channels(
        &channels,
        "warn",
        &[
            ("UMP_KEY_RATE_PER_SECOND", "100000"),
            ("UMP_SECRETS_DIR", &secrets),
            // Endpoints the fuzzer creates point anywhere public: nothing is sent to them.
            ("UMP_WEBHOOKS_DISPATCH", "false"),
        ],
    )
    .await;
    let seeds = [
        json!({"channel": "sms", "to": "+821012345678", "body": "안녕하세요", "tags": ["otp"]}),
        json!({"channel": "email", "to": "kim@example.com", "template": "welcome",
               "data": {"name": "김민수"}, "locale": "en"}),
        json!({"channel": "push", "to": "device-token-0001", "subject": "UMP", "body": "ping"}),
        json!({"channel": "alimtalk", "to": "+821012345679", "template": "shipped",
               "data": {"name": "이서연"}}),
    ];
    let mut ids = Vec::new();
    for seed in &seeds {
        ids.push(ump.send(KEY, seed).await);
    }
    for id in &ids {
        ump.wait_status(KEY, id, "sent").await;
    }

    let config_file = work.path().join("schemathesis.toml");
    std::fs::write(&config_file, config(&ids[1])).expect("write config");
    let mut command = tokio::process::Command::new(&st);
    command
        .current_dir(work.path())
        .arg("--config-file")
        .arg(&config_file)
        .args(["run", &format!("{}/openapi.json", ump.url)])
        .args(["--max-examples", &per_operation.to_string()])
        // One worker: with two threads, Hypothesis's lambda descriptions parse source with `ast`
        // concurrently, and CPython 3.11's AST constructor is not thread-safe ("AST constructor
        // recursion depth mismatch", a Runtime Error reported against a random operation, seen
        // once in about a dozen runs).
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(work.path().join("report"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("UMP_FUZZ_SEED") {
        command.args(["--seed", &seed]);
    }
    let started = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("Schemathesis finished within 10 minutes")
        .unwrap_or_else(|e| panic!("cannot run {st}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{report}");
    eprintln!(
        "schemathesis: {per_operation} examples per operation, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        run.status.success(),
        "Schemathesis found the API at odds with its OpenAPI document:\n{report}"
    );
    assert!(
        report.contains("Test cases:"),
        "Schemathesis ran no test cases:\n{report}"
    );
    assert!(ump.alive(), "ump died under fuzzing:\n{}", ump.output());
    let log = ump.output();
    assert!(!log.contains("panicked"), "ump panicked:\n{log}");
    // The seeded messages are intact: the fuzzer's writes went through validation, not around it.
    for id in &ids {
        let (status, view) = ump.get(KEY, &format!("/v1/messages/{id}")).await;
        assert_eq!((status, &view["status"]), (200, &json!("sent")), "{view}");
    }
}

/// Each operations entry selects by one filter: Schemathesis ORs an entry's filters, so an entry
/// with two (`include-path` and `include-method`) reaches every operation either names — which
/// once gave every `GET …/{id}` a segment's id and turned a webhook read into a false failure.
#[test]
fn each_operations_entry_of_the_configuration_selects_by_one_filter() {
    let config = config("01JEXAMPLE");
    let entries: Vec<&str> = config.split("[[operations]]").skip(1).collect();
    assert!(entries.len() > 10, "{config}");
    for entry in entries {
        let filters = entry
            .lines()
            .filter(|line| line.starts_with("include-") || line.starts_with("exclude-"))
            .count();
        assert_eq!(
            filters, 1,
            "an operations entry with {filters} filters:{entry}"
        );
    }
}

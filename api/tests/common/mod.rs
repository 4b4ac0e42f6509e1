//! The real `ump` binary all-in-one on a data folder of its own (or one that outlives it, for
//! restarts), for the all-in-one, hostile-input, security and fuzzing suites: started, waited for,
//! talked to with any key, killed when asked or dropped.

#![allow(dead_code)] // each test file uses a different part of the harness

use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ump_core::testing::complete_lines;
pub use ump_core::testing::free_port;

/// The key of the default tenant (`UMP_BOOTSTRAP_API_KEY`).
pub const KEY: &str = "all-in-one-security-key";

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/channels")
}

/// `Authorization: Bearer <key>`, for tests that call the API's handlers without HTTP.
pub fn bearer(key: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        axum::http::HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    headers
}

pub struct AllInOne {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    /// Everything the process wrote (its log lines and the banner).
    pub log: PathBuf,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl AllInOne {
    /// Starts `ump` on a fresh data folder with the example channels, `RUST_LOG=log_level` and
    /// `env`, and waits until it is ready.
    pub async fn start(log_level: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_channels(&examples(), log_level, env).await
    }

    /// Like `start`, with the channels of the folder `channels`.
    pub async fn start_with_channels(
        channels: &Path,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut with_key = vec![("UMP_BOOTSTRAP_API_KEY", KEY)];
        with_key.extend_from_slice(env);
        let mut ump =
            Self::start_on(&dir.path().join("data"), channels, log_level, &with_key).await;
        ump._dir = Some(dir);
        ump
    }

    /// Starts `ump` on the data folder `data`, which outlives the process (a restart finds what
    /// the last one left), with exactly `env` (no bootstrap key unless it is there). Its output
    /// goes to a file of its own beside the folder.
    pub async fn start_on(
        data: &Path,
        channels: &Path,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        ump_core::tls::install_crypto_provider();
        let port = free_port();
        let log = data.with_extension(format!("{port}.log"));
        let output = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ump"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("UMP_DATA_DIR", data)
            .env("UMP_CONFIG_DIR", channels)
            .env("UMP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log file"))
            .stderr(output);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start ump");
        let ump = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_owned(),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            _dir: None,
        };
        ump.wait_ready().await;
        ump
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ump did not become ready; its output: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (a panic that killed it would show here).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("PUT");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("DELETE");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends `body` as `key`; panics unless it is accepted. Returns the message id.
    pub async fn send(&self, key: &str, body: &Value) -> String {
        let (status, answer) = self.post(key, "/v1/messages", body).await;
        assert_eq!(status, 202, "{body} → {answer}");
        answer["id"].as_str().expect("an id").to_owned()
    }

    /// Waits until message `id` (of `key`'s tenant) has status `status`; returns its view.
    pub async fn wait_status(&self, key: &str, id: &str, status: &str) -> Value {
        self.wait_status_in(key, id, &[status]).await
    }

    /// Waits until message `id` (of `key`'s tenant) has one of `statuses`; returns its view.
    pub async fn wait_status_in(&self, key: &str, id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, view) = self.get(key, &format!("/v1/messages/{id}")).await;
            if code == 200 && statuses.iter().any(|s| view["status"] == *s) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} never became {}: {code} {view}",
                statuses.join(" or ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Statuses of `key`'s tenant's messages in the history, through the API (every page).
    pub async fn statuses(&self, key: &str) -> HashMap<String, String> {
        let mut statuses = HashMap::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(key, &format!("/v1/messages?limit=1000{cursor}"))
                .await;
            assert_eq!(status, 200, "{page}");
            for item in page["items"].as_array().expect("items") {
                statuses.insert(
                    item["id"].as_str().expect("id").to_owned(),
                    item["status"].as_str().expect("status").to_owned(),
                );
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return statuses,
            }
        }
    }

    /// Waits until every one of `ids` (of `key`'s tenant) is `sent`.
    pub async fn wait_all_sent(&self, key: &str, ids: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses(key).await;
            let pending: Vec<&String> = ids
                .iter()
                .filter(|id| statuses.get(*id).map(String::as_str) != Some("sent"))
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} messages not sent in time, e.g. {:?} is {:?}",
                pending.len(),
                ids.len(),
                pending[0],
                statuses.get(pending[0])
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many times the sandbox provider sent each message id.
    pub fn outbox_counts(&self) -> HashMap<String, usize> {
        outbox_counts(&self.data)
    }

    /// The sandbox outbox: every message the sandbox provider "sent", as recorded.
    pub fn outbox(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.data.join("outbox.jsonl")).unwrap_or_default();
        complete_lines(&text)
            .map(|line| serde_json::from_str(line).expect("outbox lines are JSON"))
            .collect()
    }

    /// Runs `ump <args>` (an admin command) beside the running process, on its data folder.
    pub fn admin(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_ump"))
            .args(args)
            .env_remove("UMP_MYSQL_URL")
            .env("UMP_DATA_DIR", &self.data)
            .output()
            .expect("run ump");
        assert!(
            output.status.success(),
            "ump {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// A new key for `tenant` (`ump keys create`): the key and its id.
    pub fn create_key(&self, tenant: &str) -> (String, String) {
        let key = self
            .admin(&["keys", "create", "--tenant", tenant])
            .trim()
            .to_owned();
        let id = ump_core::keys::PresentedKey::parse(&key).key_id;
        (key, id)
    }

    /// Waits (up to the key cache's refresh and a little more) until `key` is accepted.
    pub async fn wait_key_works(&self, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.get(key, "/v1/messages?limit=1").await.0 != 200 {
            assert!(Instant::now() < deadline, "the new key never worked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How many times the sandbox provider sent each message id, from the outbox of data folder
/// `data`.
pub fn outbox_counts(data: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(data.join("outbox.jsonl")).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in complete_lines(&text) {
        let record: Value = serde_json::from_str(line).expect("outbox lines are JSON");
        *counts
            .entry(record["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    counts
}

impl Drop for AllInOne {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Schema migrations are safe when several processes start on one fresh database at once (a fresh
//! Helm install starts API replicas and workers together): MySQL/MariaDB processes take turns
//! under a lock and all succeed; of all-in-one processes started together on one fresh folder, one
//! runs and the others are refused by the folder's lock, naming it.

mod common;

use common::examples;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ump_core::store::MYSQL_MIGRATIONS;
use ump_core::testing::TestDatabase;

const PROCESSES: usize = 8;
const KEY: &str = "migrations-test-key";
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_migrating_one_empty_database_all_succeed() {
    for round in 0..ROUNDS {
        let db = TestDatabase::create_empty().await;
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_ump"))
                    .args(["keys", "--mysql-url", &db.url, "list"])
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start ump keys")
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().expect("ump keys");
            assert!(
                output.status.success(),
                "round {round}: a migrating process failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let applied: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&db.pool)
                .await
                .expect("read _sqlx_migrations");
        let expected: Vec<(i64, bool)> =
            MYSQL_MIGRATIONS.iter().map(|m| (m.version, true)).collect();
        assert_eq!(applied, expected, "round {round}");
        // The schema is whole: the last migration's column is there.
        sqlx::query("SELECT published_at FROM deferred_messages LIMIT 1")
            .fetch_all(&db.pool)
            .await
            .expect("the complete schema");
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_processes_started_together_on_one_folder_leave_one_running() {
    const STARTED: usize = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut children: Vec<(u16, Child)> = (0..STARTED)
        .map(|_| {
            let port = common::free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_ump"))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("UMP_DATA_DIR", &data)
                .env("UMP_CONFIG_DIR", examples())
                .env("UMP_LISTEN", format!("127.0.0.1:{port}"))
                .env("UMP_BOOTSTRAP_API_KEY", KEY)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start ump");
            (port, child)
        })
        .collect();

    // Every process either exits, refused by the folder's lock, or comes up.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut running = Vec::new();
    let mut refused = Vec::new();
    while !children.is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes neither ran nor exited"
        );
        let mut waiting = Vec::new();
        for (port, mut child) in children {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut said = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                refused.push((status, said));
            } else if http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                running.push((port, child));
            } else {
                waiting.push((port, child));
            }
        }
        children = waiting;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running.len(), 1, "refused: {refused:?}");
    for (status, said) in &refused {
        assert!(!status.success(), "{said}");
        assert!(said.contains(&*data.to_string_lossy()), "{said}");
    }

    // The one running has a whole schema and delivers.
    let (port, mut child) = running.pop().expect("one running");
    let url = format!("http://127.0.0.1:{port}");
    let accepted: serde_json::Value = http
        .post(format!("{url}/v1/messages"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"channel": "sms", "to": "+821012345678", "body": "hi"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("answer");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    loop {
        assert!(Instant::now() < deadline, "the message was never sent");
        let view: serde_json::Value = http
            .get(format!("{url}/v1/messages/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("view");
        if view["status"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_recorded_migration_is_finished_by_the_next_start() {
    let db = TestDatabase::create().await;
    let mark_dirty = |version: i64| {
        sqlx::query("UPDATE _sqlx_migrations SET success = FALSE WHERE version = ?").bind(version)
    };
    let done = |pool: sqlx::MySqlPool| async move {
        let dirty: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = FALSE")
                .fetch_one(&pool)
                .await
                .expect("count");
        dirty == 0
    };

    // Died after the schema change, before recording it.
    mark_dirty(4).execute(&db.pool).await.expect("mark");
    ump_core::store::migrate_mysql(&db.pool)
        .await
        .expect("finished");
    assert!(done(db.pool.clone()).await);
    sqlx::query("SELECT published_at FROM deferred_messages LIMIT 1")
        .fetch_all(&db.pool)
        .await
        .expect("migration 4 in place");

    // Died (or failed) before the schema change.
    sqlx::query("DROP TABLE profiles")
        .execute(&db.pool)
        .await
        .expect("drop");
    mark_dirty(5).execute(&db.pool).await.expect("mark");
    ump_core::store::migrate_mysql(&db.pool)
        .await
        .expect("applied");
    assert!(done(db.pool.clone()).await);
    sqlx::query("SELECT COUNT(*) FROM profiles")
        .fetch_one(&db.pool)
        .await
        .expect("migration 5 in place");

    // A migration of several statements cannot be told apart half-done: left for a person.
    mark_dirty(1).execute(&db.pool).await.expect("mark");
    let refused = ump_core::store::migrate_mysql(&db.pool)
        .await
        .expect_err("several statements");
    assert!(refused.to_string().contains('1'), "{refused}");
    db.drop_database().await;
}

//! `UMP_BOOTSTRAP_API_KEY` is any text a client can present, in both modes: arbitrary text, the
//! shape of a generated key, a generated key's exact text that is also stored. A value UMP could
//! not honour (blank, too long, not printable ASCII, another tenant's or a revoked key) stops the
//! start with an error naming the variable; UMP never starts and then answers 401.

mod common;

use common::{AllInOne, bearer, examples};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use ump_api::auth::{KeyCache, Tenant};
use ump_api::cluster::bootstrap_key;
use ump_core::keys::{ApiKeyStore, DEFAULT_TENANT, MAX_BOOTSTRAP_KEY_LEN, MySqlKeys, generate_key};
use ump_core::testing::{TestDatabase, unique_name};

const GENERATED_SHAPE: &str = "ump_bars_0123456789abcdef0123456789abcdef";

/// Whom `key` authenticates as, through a fresh key cache on `store`.
async fn tenant_of(store: &Arc<dyn ApiKeyStore>, key: &str) -> Option<String> {
    let cache = KeyCache::new(Arc::clone(store));
    cache.refresh().await.expect("refresh");
    cache
        .authenticate(&bearer(key))
        .await
        .ok()
        .map(|Tenant(t)| t)
}

fn accepted_shapes() -> Vec<(&'static str, String)> {
    vec![
        ("arbitrary text", "any-string-key".to_owned()),
        ("the generated shape", GENERATED_SHAPE.to_owned()),
        ("with spaces inside", "a key with spaces".to_owned()),
        ("the longest", "k".repeat(MAX_BOOTSTRAP_KEY_LEN)),
    ]
}

fn refused_shapes() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("empty", String::new(), "blank"),
        ("whitespace", " \t ".to_owned(), "blank"),
        (
            "too long",
            "k".repeat(MAX_BOOTSTRAP_KEY_LEN + 1),
            "characters long",
        ),
        ("not ASCII", "비밀-열쇠".to_owned(), "not printable ASCII"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_api_honours_every_shape_or_refuses_it_at_start() {
    let db = TestDatabase::create().await;
    let store: Arc<dyn ApiKeyStore> = Arc::new(MySqlKeys::new(db.pool.clone()));

    let mut previous: Option<String> = None;
    for (shape, key) in accepted_shapes() {
        bootstrap_key(store.as_ref(), Some(key.clone().into()))
            .await
            .unwrap_or_else(|e| panic!("{shape}: {e:#}"));
        assert_eq!(
            tenant_of(&store, &key).await.as_deref(),
            Some(DEFAULT_TENANT),
            "{shape}"
        );
        // A new bootstrap key replaces the one before.
        if let Some(old) = previous.replace(key) {
            assert_eq!(tenant_of(&store, &old).await, None, "{shape}: old key");
        }
    }
    // A Secret written with `echo` ends in a newline: the key is the text without it.
    bootstrap_key(store.as_ref(), Some("dev-key\n".into()))
        .await
        .expect("padded");
    assert_eq!(
        tenant_of(&store, "dev-key").await.as_deref(),
        Some(DEFAULT_TENANT)
    );
    // A key of the generated shape that is neither stored nor the bootstrap key is unknown.
    assert_eq!(tenant_of(&store, GENERATED_SHAPE).await, None);

    for (shape, key, why) in refused_shapes() {
        let refused = bootstrap_key(store.as_ref(), Some(key.into()))
            .await
            .expect_err(shape)
            .to_string();
        assert!(
            refused.contains("UMP_BOOTSTRAP_API_KEY") && refused.contains(why),
            "{shape}: {refused}"
        );
    }

    // A generated key that is stored: fine as the default tenant's, refused as another's or
    // when revoked.
    let (id, own) = generate_key();
    store
        .put(&id, DEFAULT_TENANT, &own, "created with ump keys create")
        .await
        .expect("store");
    bootstrap_key(store.as_ref(), Some(own.clone().into()))
        .await
        .expect("the default tenant's own key");
    assert_eq!(
        tenant_of(&store, &own).await.as_deref(),
        Some(DEFAULT_TENANT)
    );
    let (id, foreign) = generate_key();
    let tenant = unique_name("tenant");
    store
        .put(&id, &tenant, &foreign, "another tenant's")
        .await
        .expect("store");
    let refused = bootstrap_key(store.as_ref(), Some(foreign.clone().into()))
        .await
        .expect_err("another tenant's key")
        .to_string();
    assert!(refused.contains(&tenant), "{refused}");
    assert_eq!(tenant_of(&store, &foreign).await, Some(tenant));
    store.revoke(&id).await.expect("revoke");
    let refused = bootstrap_key(store.as_ref(), Some(foreign.into()))
        .await
        .expect_err("a revoked key")
        .to_string();
    assert!(refused.contains("revoked"), "{refused}");
    db.drop_database().await;
}

/// Runs `ump` all-in-one with `key` as the bootstrap key and expects it to refuse to start.
fn refused_at_start(data: &std::path::Path, key: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ump"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("UMP_DATA_DIR", data)
        .env("UMP_CONFIG_DIR", examples())
        .env("UMP_LISTEN", format!("127.0.0.1:{}", common::free_port()))
        .env("UMP_BOOTSTRAP_API_KEY", key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ump");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ump started with UMP_BOOTSTRAP_API_KEY={key:?} instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    assert!(!status.success(), "ump exited 0 with {key:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_honours_every_shape_or_refuses_it_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    for (shape, key) in accepted_shapes() {
        let ump = AllInOne::start_on(
            &data,
            &examples(),
            "warn",
            &[("UMP_BOOTSTRAP_API_KEY", &key)],
        )
        .await;
        let (status, body) = ump.get(&key, "/v1/messages?limit=1").await;
        assert_eq!(status, 200, "{shape}: {body}");
    }
    for (shape, key, why) in refused_shapes() {
        let output = refused_at_start(&data, &key);
        assert!(
            output.contains("UMP_BOOTSTRAP_API_KEY") && output.contains(why),
            "{shape}: {output}"
        );
    }
    // The exact text of a key created for another tenant is refused; the default tenant's own
    // generated key works as the bootstrap key.
    let (foreign, own) = {
        let ump = AllInOne::start_on(&data, &examples(), "warn", &[]).await;
        let (foreign, _) = ump.create_key(&unique_name("tenant"));
        let (own, _) = ump.create_key(DEFAULT_TENANT);
        (foreign, own)
    };
    let output = refused_at_start(&data, &foreign);
    assert!(
        output.contains("UMP_BOOTSTRAP_API_KEY") && output.contains("of tenant"),
        "{output}"
    );
    let ump = AllInOne::start_on(
        &data,
        &examples(),
        "warn",
        &[("UMP_BOOTSTRAP_API_KEY", &own)],
    )
    .await;
    assert_eq!(ump.get(&own, "/v1/messages?limit=1").await.0, 200);
}

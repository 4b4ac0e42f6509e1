//! Dependency versions UMP must not go back to, read from the workspace's Cargo.lock.
//!
//! sqlx 0.9.0 opened its TCP connections without `TCP_NODELAY` (transact-rs/sqlx#4335, fixed in
//! 0.9.1). With Nagle's algorithm on, a statement bigger than one TCP segment (a batch's insert)
//! waits for the server's delayed ACK: 40–200 ms stalls of a whole transaction, invisible in CPU
//! or lock figures. Journey entry → send p99 went from 145–802 ms to 56–64 ms with 0.9.1.

use std::path::Path;

/// `(name, version)` of every package in Cargo.lock.
fn locked() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&path).expect("Cargo.lock at the workspace root");
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("version = ")
            && let Some(name) = name.take()
        {
            out.push((name, value.trim_matches('"').to_owned()));
        }
    }
    out
}

#[test]
fn sqlx_sets_tcp_nodelay_on_its_connections() {
    let packages = locked();
    let sqlx: Vec<&(String, String)> = packages.iter().filter(|(n, _)| n == "sqlx-core").collect();
    assert!(!sqlx.is_empty(), "sqlx-core is not in Cargo.lock");
    for (_, version) in sqlx {
        assert_ne!(
            version, "0.9.0",
            "sqlx-core 0.9.0 leaves Nagle's algorithm on for MySQL connections (40–200 ms stalls); \
             use 0.9.1 or later"
        );
    }
}

/// The package names of `cargo tree -e normal` with `args` (no dev-dependencies: what ships).
fn normal_tree(args: &[&str]) -> Vec<String> {
    tree(args, "normal")
}

/// The package names of `cargo tree -e <edges>` with `args`.
fn tree(args: &[&str], edges: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .arg("tree")
        .args(args)
        .args(["-e", edges, "--prefix", "none", "--locked", "--offline"])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The operator is built from the domain and the Kafka settings alone: no database client, no
/// AMQP client, no template engine; and its tests (dev-dependencies) need none of them either.
#[test]
fn the_operator_builds_without_the_adapters() {
    for edges in ["normal", "normal,dev"] {
        let tree = tree(&["-p", "ump-operator"], edges);
        assert!(tree.contains(&"ump-domain".to_owned()), "{tree:?}");
        for adapter in ["sqlx-core", "fe2o3-amqp", "minijinja", "ump-core", "redis"] {
            assert!(
                !tree.contains(&adapter.to_owned()),
                "the operator depends on {adapter} (cargo tree -e {edges}): {tree:?}"
            );
        }
    }
}

/// The cluster-mode API is built without the worker crate when the all-in-one mode is left out;
/// the all-in-one `ump` is where the API and the worker meet.
#[test]
fn the_cluster_api_builds_without_the_worker() {
    let tree = normal_tree(&["-p", "ump-api", "--no-default-features"]);
    assert!(tree.contains(&"ump-core".to_owned()), "{tree:?}");
    assert!(
        !tree.contains(&"ump-worker".to_owned()),
        "the cluster API depends on the worker: {tree:?}"
    );
    let all_in_one = normal_tree(&["-p", "ump-api"]);
    assert!(
        all_in_one.contains(&"ump-worker".to_owned()),
        "{all_in_one:?}"
    );
}

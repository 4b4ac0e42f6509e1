//! Smoke test: the chart in `charts/ump` lints and renders with the real helm from
//! `scripts/infra up`.

use std::path::PathBuf;
use std::process::Command;
use ump_core::testing::infra;

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ump")
}

fn helm(args: &[&str]) -> String {
    let helm = infra().helm();
    let output = Command::new(&helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("Helm: cannot run {}: {e}", helm.display()));
    assert!(
        output.status.success(),
        "Helm: `helm {}` failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

#[test]
fn chart_lints_and_renders() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    helm(&["lint", "--strict", chart]);

    let rendered = helm(&["template", "ump", chart, "--namespace", "ump-system"]);
    let mut kinds = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)
            .expect("helm template emits valid YAML");
        if value.is_null() {
            continue;
        }
        assert_eq!(
            value["metadata"]["namespace"].as_str(),
            Some("ump-system"),
            "every namespaced object lands in the release namespace: {value:?}"
        );
        assert_eq!(
            value["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
            Some("Helm")
        );
        kinds.push(value["kind"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        kinds.iter().any(|k| k == "ServiceAccount"),
        "rendered kinds: {kinds:?}"
    );
}

//! The CustomResourceDefinitions of `MessageChannel` and `DeliveryPolicy`, rendered as the YAML
//! checked in under `crds/` (by the `crdgen` binary; a test fails when the files drift).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, ResourceExt};
use std::path::PathBuf;
use ump_domain::resources::{DeliveryPolicy, MessageChannel};

/// Every CRD the operator serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MessageChannel::crd(), DeliveryPolicy::crd()]
}

/// The file a CRD is checked in as: `<plural>.<group>.yaml`, the CRD's own name.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.name_any())
}

/// The YAML of one CRD, with a header saying where it comes from.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in domain/src/resources.rs: do not edit.\n\
         # Regenerate with `cargo run -p ump-operator --bin crdgen`.\n{body}"
    ))
}

/// `crds/` at the top of the workspace.
pub fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

/// The Helm chart's copy, which it installs and upgrades as templates (Helm reads no file outside
/// the chart, and never upgrades a chart's `crds/`).
pub fn chart_crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ump/files/crds")
}

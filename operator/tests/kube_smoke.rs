//! Smoke test: a kube `Client` reaches the real kube-apiserver from `scripts/infra up`, applies a
//! CRD with server-side apply, and creates and reads back a custom object in its own namespace.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use ump_testkit::{infra, unique_name};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "smoke.ump.dev",
    version = "v1",
    kind = "SmokeCheck",
    namespaced
)]
pub struct SmokeCheckSpec {
    message: String,
    replicas: i32,
}

async fn client() -> Client {
    let path = infra().kubeconfig();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("Kubernetes: kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: kubeconfig {}: {e}", path.display()));
    let client = Client::try_from(config).expect("Kubernetes: client");
    let version = client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("Kubernetes: kube-apiserver is not reachable: {e}"));
    assert!(!version.git_version.is_empty());
    client
}

#[tokio::test]
async fn crd_applies_and_custom_objects_round_trip() {
    let client = client().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SmokeCheck::crd();
    let apply = PatchParams::apply("ump-smoke-test").force();
    crds.patch(&crd.name_any(), &apply, &Patch::Apply(&crd))
        .await
        .expect("Kubernetes: apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("Kubernetes: CRD not established within 30 s")
    .expect("Kubernetes: watch CRD");

    let namespace = unique_name("ump-smoke");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(namespace.clone());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("Kubernetes: create namespace");

    let checks: Api<SmokeCheck> = Api::namespaced(client.clone(), &namespace);
    let spec = SmokeCheckSpec {
        message: "안녕".to_owned(),
        replicas: 3,
    };
    // Right after the CRD is established, discovery may lag for a moment: retry creation briefly.
    let mut created = None;
    for _ in 0..50 {
        match checks
            .create(
                &PostParams::default(),
                &SmokeCheck::new("first", spec.clone()),
            )
            .await
        {
            Ok(object) => {
                created = Some(object);
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("Kubernetes: create SmokeCheck: {e}"),
        }
    }
    let created = created.expect("Kubernetes: SmokeCheck type never became servable");
    assert!(created.metadata.uid.is_some());

    let read = checks
        .get("first")
        .await
        .expect("Kubernetes: get SmokeCheck");
    assert_eq!(read.spec, spec);
    assert_eq!(read.metadata.generation, Some(1));

    // A value the schema rejects never reaches etcd.
    let bad = serde_json::json!({
        "apiVersion": "smoke.ump.dev/v1", "kind": "SmokeCheck",
        "metadata": {"name": "bad"}, "spec": {"message": "x", "replicas": "three"}
    });
    let resource = kube::api::ApiResource::erase::<SmokeCheck>(&());
    let dynamic: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &resource);
    let raw: kube::api::DynamicObject = serde_json::from_value(bad).expect("dynamic object");
    match dynamic.create(&PostParams::default(), &raw).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("replicas"), "{}", status.message);
        }
        other => panic!("Kubernetes accepted an invalid object: {other:?}"),
    }

    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("Kubernetes: delete namespace");
}

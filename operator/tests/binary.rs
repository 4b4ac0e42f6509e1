//! The `ump-operator` binary end to end: it takes the lease, serves `/healthz`, `/readyz` and
//! `/metrics`, reconciles, and on SIGTERM stops cleanly and gives the lease up.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ump_domain::resources::MessageChannel;
use ump_testkit::{free_port, infra};

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_leads_serves_probes_and_shuts_down_gracefully() {
    let client = support::client().await;
    support::apply_crds(&client).await;
    let ns = support::namespace(&client, "ump-op-bin").await;
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ump-operator"))
        .env("KUBECONFIG", infra().kubeconfig())
        .env("UMP_KAFKA_BOOTSTRAP", infra().kafka_bootstrap())
        .env("UMP_WATCH_NAMESPACE", &ns)
        .env("UMP_LEASE_NAMESPACE", &ns)
        .env("UMP_LEASE_DURATION", "3s")
        .env("POD_NAME", "operator-under-test")
        .env("UMP_OPERATOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("UMP_OPERATOR_RESYNC", "2s")
        .env("RUST_LOG", "ump_operator=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ump-operator");
    let mut operator = Operator(child);

    support::eventually("/healthz", Duration::from_secs(30), || async {
        http_get(port, "/healthz").filter(|(code, _)| *code == 200)
    })
    .await;
    support::eventually("leading and ready", Duration::from_secs(30), || async {
        let (_, metrics) = http_get(port, "/metrics")?;
        let ready = http_get(port, "/readyz")?.0 == 200;
        (ready && metrics.contains("ump_operator_leader 1")).then_some(())
    })
    .await;

    let channels: Api<MessageChannel> = Api::namespaced(client.clone(), &ns);
    let channel: MessageChannel = serde_json::from_value(json!({
        "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel", "metadata": {"name": "hook"},
        "spec": {"type": "webhook", "deletionPolicy": "Delete",
                 "providers": [{"name": "w", "type": "webhook"}], "topic": {"partitions": 1}},
    }))
    .expect("channel");
    channels
        .create(&PostParams::default(), &channel)
        .await
        .expect("create channel");
    support::eventually("channel Ready", Duration::from_secs(60), || async {
        let c = channels.get("hook").await.ok()?;
        c.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    for family in [
        "ump_operator_reconciliations_total{controller=\"channel\"}",
        "ump_operator_reconcile_duration_seconds_bucket",
        "ump_operator_api_writes_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    // Delete while the operator runs, so the finalizer can remove the topic.
    channels
        .delete("hook", &DeleteParams::default())
        .await
        .expect("delete");
    support::eventually("channel gone", Duration::from_secs(60), || async {
        channels.get_opt("hook").await.ok()?.is_none().then_some(())
    })
    .await;

    // SIGTERM: a clean exit, and the lease is handed back.
    let status = Command::new("kill")
        .args(["-TERM", &operator.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = support::eventually("the operator exits", Duration::from_secs(20), || {
        let waited = operator.0.try_wait().ok().flatten();
        async move { waited }
    })
    .await;
    assert!(exit.success(), "exit status {exit:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = leases.get("ump-operator").await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "lease released"
    );

    support::delete_namespace(&client, &ns).await;
}

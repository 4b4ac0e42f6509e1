//! Lease-based leader election against the real kube-apiserver: one leader at a time, a clean
//! hand-over on release, take-over after the holder goes silent, and a leader that notices when
//! its lease was taken.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use std::time::{Duration, Instant};
use ump_operator::leader::LeaseElector;
use ump_operator::settings::LeaderElection;

fn election(namespace: &str, identity: &str) -> LeaderElection {
    LeaderElection {
        namespace: namespace.to_owned(),
        lease_name: "ump-operator".to_owned(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn one_leader_at_a_time_with_hand_over_and_expiry() {
    let client = support::client().await;
    let ns = support::namespace(&client, "ump-op-lease").await;
    let mut a = LeaseElector::new(client.clone(), election(&ns, "a"));
    let mut b = LeaseElector::new(client.clone(), election(&ns, "b"));

    assert!(
        a.try_lead().await.expect("a"),
        "the first candidate takes a free lease"
    );
    assert!(!b.try_lead().await.expect("b"), "a live holder is followed");
    assert!(a.try_lead().await.expect("a renews"));
    assert!(!b.try_lead().await.expect("b"));

    // Release: the follower takes over at once.
    a.release().await.expect("release");
    assert!(b.try_lead().await.expect("b"), "a released lease is free");
    assert!(!a.try_lead().await.expect("a"));

    // The holder goes silent: the follower waits a whole lease duration, then takes over.
    let silent_since = Instant::now();
    loop {
        if a.try_lead().await.expect("a") {
            break;
        }
        assert!(
            silent_since.elapsed() < Duration::from_secs(10),
            "a never took the expired lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        silent_since.elapsed() >= Duration::from_secs(2),
        "taken after {:?}, before the lease expired",
        silent_since.elapsed()
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let spec = leases
        .get("ump-operator")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_transitions, Some(2));

    support::delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops() {
    let client = support::client().await;
    let ns = support::namespace(&client, "ump-op-lost").await;
    let mut a = LeaseElector::new(client.clone(), election(&ns, "a"));
    assert!(a.try_lead().await.expect("a"));

    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let holding = tokio::spawn(async move { a.hold(&mut stopped).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    leases
        .patch(
            "ump-operator",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "intruder"}})),
        )
        .await
        .expect("steal the lease");
    let result = tokio::time::timeout(Duration::from_secs(5), holding)
        .await
        .expect("hold returns within 5 s")
        .expect("task");
    let err = result.expect_err("the lease was taken");
    assert!(
        err.to_string().contains("taken by another replica"),
        "{err}"
    );

    support::delete_namespace(&client, &ns).await;
}

//! A worker in a cluster reads its channel from the ConfigMap the operator writes for it
//! (`channel.yaml`, `policy.yaml`, mounted as files). The two sides are separate crates; this
//! checks that what the one writes is what the other loads.

use ump_core::config::ChannelRegistry;
use ump_core::resources::{DeliveryPolicy, MessageChannel};
use ump_operator::builders::config_map;

const CHANNEL: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: alerts, namespace: shop, uid: 0b7e6c1a-0000-4000-8000-000000000002, generation: 4}
spec:
  type: sms
  policyRef: careful
  providers: [{name: sandbox, type: sandbox}]
  templates: [{name: code, text: "Your code is {{ code }}"}]
status:
  observedGeneration: 4
"#;

const POLICY: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: careful, namespace: shop, resourceVersion: "12"}
spec:
  rateLimit: {perSecond: 20, burst: 5}
  retry: {maxAttempts: 4, initialBackoff: 1s, maxBackoff: 30s}
"#;

fn load(files: &std::collections::BTreeMap<String, String>) -> ChannelRegistry {
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, text) in files {
        std::fs::write(dir.path().join(file), text).expect("write");
    }
    ChannelRegistry::load_dir(dir.path()).expect("the worker loads the operator's ConfigMap")
}

#[test]
fn the_worker_loads_the_channel_and_policy_the_operator_hands_it() {
    let channel: MessageChannel = serde_yaml_ng::from_str(CHANNEL).expect("channel");
    let policy: DeliveryPolicy = serde_yaml_ng::from_str(POLICY).expect("policy");
    let map = config_map(&channel, Some(&policy)).expect("config map");
    let registry = load(&map.data.expect("data"));

    let alerts = registry.get("alerts").expect("the channel");
    assert_eq!(alerts.resource.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(alerts.resource.spec, channel.spec);
    assert_eq!(alerts.missing_policy, None);
    let limit = alerts
        .policy
        .rate_limit
        .as_ref()
        .expect("the policy's rate limit");
    assert_eq!((limit.per_second, limit.burst), (20, Some(5)));
    assert_eq!(alerts.policy.retry.max_attempts, 4);
}

#[test]
fn without_its_policy_the_worker_says_which_one_is_missing() {
    let channel: MessageChannel = serde_yaml_ng::from_str(CHANNEL).expect("channel");
    let map = config_map(&channel, None).expect("config map");
    let registry = load(&map.data.expect("data"));
    let alerts = registry.get("alerts").expect("the channel");
    assert_eq!(alerts.missing_policy.as_deref(), Some("careful"));
}

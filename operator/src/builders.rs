//! The objects a `MessageChannel` becomes (pure: fixture in, objects out): the worker ConfigMap
//! holding the effective configuration (`channel.yaml`, `policy.yaml`) and the worker Deployment.
//! The worker contract: `ump-worker --config-dir /etc/ump/config --channel <name>`, provider
//! secrets under `/etc/ump/secrets/<secret>/`, probes and metrics on port 9090.

use crate::error::{Error, Result};
use crate::settings::Settings;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use ump_domain::resources::{DeliveryPolicy, MessageChannel};

pub const CONFIG_DIR: &str = "/etc/ump/config";
pub const SECRETS_DIR: &str = "/etc/ump/secrets";
/// Where `UMP_WORKER_TLS_SECRET` is mounted (CA bundles that URLs and Kafka properties name).
pub const TLS_DIR: &str = "/etc/ump/tls";
pub const WORKER_PORT: i32 = 9090;
/// Label on every object the operator makes, and the selector of its ConfigMap/Deployment caches.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ump-operator");
pub const CHANNEL_LABEL: &str = "ump.dev/channel";
/// Pod-template annotation carrying a hash of the ConfigMap: a config change rolls the workers
/// (they read their configuration at start).
pub const CONFIG_HASH: &str = "ump.dev/config-hash";
/// Non-root user of the worker image (distroless `nonroot`).
const WORKER_UID: i64 = 65532;

/// Name of a channel's ConfigMap and Deployment.
pub fn worker_name(channel: &MessageChannel) -> String {
    format!("ump-worker-{}", channel.name_any())
}

fn selector_labels(channel: &MessageChannel) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "ump-worker".to_owned()),
        (CHANNEL_LABEL.to_owned(), channel.name_any()),
    ])
}

fn labels(channel: &MessageChannel) -> BTreeMap<String, String> {
    let mut labels = selector_labels(channel);
    labels.extend([
        ("app.kubernetes.io/instance".to_owned(), channel.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            "worker".to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "ump".to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    labels
}

fn owner_reference(channel: &MessageChannel) -> Result<OwnerReference> {
    channel
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Serialize {
            what: "owner reference",
            detail: format!("channel {} has no uid yet", channel.name_any()),
        })
}

fn metadata(channel: &MessageChannel) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(worker_name(channel)),
        namespace: channel.namespace(),
        labels: Some(labels(channel)),
        owner_references: Some(vec![owner_reference(channel)?]),
        ..ObjectMeta::default()
    })
}

/// `channel.yaml` and `policy.yaml` as the worker reads them: the objects with only their name and
/// namespace (no status, no server fields), so the file changes only when the configuration does.
pub fn config_map(channel: &MessageChannel, policy: Option<&DeliveryPolicy>) -> Result<ConfigMap> {
    let mut clean_channel = MessageChannel::new(&channel.name_any(), channel.spec.clone());
    clean_channel.metadata.namespace = channel.namespace();
    let mut data = BTreeMap::from([(
        "channel.yaml".to_owned(),
        yaml(&clean_channel, "channel.yaml")?,
    )]);
    if let Some(policy) = policy {
        let mut clean_policy = DeliveryPolicy::new(&policy.name_any(), policy.spec.clone());
        clean_policy.metadata.namespace = policy.namespace();
        data.insert(
            "policy.yaml".to_owned(),
            yaml(&clean_policy, "policy.yaml")?,
        );
    }
    Ok(ConfigMap {
        metadata: metadata(channel)?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

fn yaml<T: serde::Serialize>(value: &T, what: &'static str) -> Result<String> {
    serde_yaml_ng::to_string(value).map_err(|e| Error::Serialize {
        what,
        detail: e.to_string(),
    })
}

/// A short, stable digest of the ConfigMap's data.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Volume name of a provider secret: DNS label, stable, whatever the secret's name looks like.
fn secret_volume(secret: &str) -> String {
    format!(
        "secret-{}",
        hex::encode(&Sha256::digest(secret.as_bytes())[..6])
    )
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(source),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The worker Deployment of `channel`: `replicas` pods of the worker container (see
/// [`worker_container`]) with the channel's ConfigMap and provider Secrets mounted, rolled when
/// `config_hash` changes.
pub fn deployment(
    channel: &MessageChannel,
    settings: &Settings,
    replicas: i32,
    config_hash: &str,
) -> Result<Deployment> {
    let (volumes, mounts) = worker_volumes(channel, settings);
    let container = worker_container(channel, settings, worker_env(settings), mounts);
    let mut pod_labels = labels(channel);
    pod_labels.remove(MANAGED_BY.0);
    Ok(Deployment {
        metadata: metadata(channel)?,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(channel)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    service_account_name: settings.worker_service_account.clone(),
                    // Workers need no Kubernetes API access.
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// The worker's environment: where Kafka and Redis are, its listen address and pod name, the
/// MySQL and AMQP URLs from their Secrets, then the operator's extra `worker_env`.
fn worker_env(settings: &Settings) -> Vec<EnvVar> {
    let mut env_vars = vec![
        env("UMP_KAFKA_BOOTSTRAP", &settings.kafka_bootstrap),
        env("UMP_WORKER_LISTEN", &format!("0.0.0.0:{WORKER_PORT}")),
        env_from(
            "POD_NAME",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            },
        ),
    ];
    if let Some(redis) = &settings.redis_url {
        env_vars.push(env("UMP_REDIS_URL", redis));
    }
    for (var, secret) in [
        ("UMP_MYSQL_URL", &settings.mysql_url_secret),
        ("UMP_AMQP_URL", &settings.amqp_url_secret),
    ] {
        if let Some(secret) = secret {
            env_vars.push(env_from(
                var,
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                },
            ));
        }
    }
    env_vars.extend(settings.worker_env.iter().cloned());
    env_vars
}

/// A read-only mount of Secret `secret` at `path`, as a volume and its mount.
fn secret_mount(volume: String, secret: &str, path: String) -> (Volume, VolumeMount) {
    (
        Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: volume,
            mount_path: path,
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The worker's volumes and their mounts: its ConfigMap, a `/tmp`, the TLS bundle Secret (when
/// set), and each provider Secret the channel names (once, however many providers share it).
fn worker_volumes(
    channel: &MessageChannel,
    settings: &Settings,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: worker_name(channel),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // The root filesystem is read-only; librdkafka and TLS libraries may still want a /tmp.
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    let secrets: BTreeSet<&str> = channel
        .spec
        .providers
        .iter()
        .filter_map(|p| p.secret_ref.as_ref().map(|s| s.name.as_str()))
        .collect();
    let tls = settings
        .worker_tls_secret
        .as_deref()
        .map(|tls| secret_mount("tls".to_owned(), tls, TLS_DIR.to_owned()));
    let providers = secrets.into_iter().map(|secret| {
        secret_mount(
            secret_volume(secret),
            secret,
            format!("{SECRETS_DIR}/{secret}"),
        )
    });
    for (volume, mount) in tls.into_iter().chain(providers) {
        volumes.push(volume);
        mounts.push(mount);
    }
    (volumes, mounts)
}

/// The worker container: `ump-worker --config-dir … --channel <name>`, probes and metrics on
/// [`WORKER_PORT`], the channel's resources, no privileges and a read-only root filesystem.
fn worker_container(
    channel: &MessageChannel,
    settings: &Settings,
    env_vars: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: "worker".to_owned(),
        image: Some(settings.worker_image.clone()),
        image_pull_policy: settings.worker_image_pull_policy.clone(),
        command: Some(vec!["ump-worker".to_owned()]),
        args: Some(vec![
            "--config-dir".to_owned(),
            CONFIG_DIR.to_owned(),
            "--channel".to_owned(),
            channel.name_any(),
        ]),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: channel.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The worker pod's security: the image's non-root user and group, the runtime's seccomp profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID),
        run_as_group: Some(WORKER_UID),
        fs_group: Some(WORKER_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Whether every field of `desired` is present with the same value in `observed` (what the
/// apiserver returns: `desired` plus defaults). When it is, a server-side apply would change
/// nothing, so it is skipped: a steady operator makes no API writes at all.
pub fn is_applied(desired: &serde_json::Value, observed: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(key, value)| have.get(key).is_some_and(|h| is_applied(value, h))),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_applied(w, h))
        }
        (want, have) => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SecretKey;

    const CHANNEL: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: shop, uid: 4f7e6c1a-0000-4000-8000-000000000001, generation: 3}
spec:
  type: sms
  policyRef: standard
  providers:
    - {name: nhn, type: nhn-sms, secretRef: {name: nhn-credentials}}
    - {name: twilio, type: twilio, secretRef: {name: twilio.credentials}}
    - {name: backup, type: twilio, secretRef: {name: nhn-credentials}}
  topic: {partitions: 6, config: {retention.ms: "86400000"}}
  scaling: {minReplicas: 1, maxReplicas: 5, lagPerReplica: 500}
  resources: {requests: {cpu: 100m, memory: 64Mi}}
status:
  observedGeneration: 2
"#;

    const POLICY: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: standard, namespace: shop, resourceVersion: "77"}
spec:
  rateLimit: {perSecond: 50}
  quietHours: {start: "21:00", end: "08:00", timezone: Asia/Seoul}
"#;

    fn channel() -> MessageChannel {
        serde_yaml_ng::from_str(CHANNEL).expect("channel fixture")
    }

    fn policy() -> DeliveryPolicy {
        serde_yaml_ng::from_str(POLICY).expect("policy fixture")
    }

    fn settings() -> Settings {
        let mut settings = Settings::from_lookup(|key| match key {
            "UMP_KAFKA_BOOTSTRAP" => Some("kafka:9092".to_owned()),
            "UMP_WORKER_IMAGE" => Some("registry.example/ump-worker:1.2.3".to_owned()),
            "UMP_REDIS_URL" => Some("redis://redis:6379".to_owned()),
            _ => None,
        })
        .expect("settings");
        settings.mysql_url_secret = Some(SecretKey {
            name: "ump-mysql".into(),
            key: "url".into(),
        });
        settings
    }

    #[test]
    fn config_map_holds_the_clean_channel_and_policy() {
        let cm = config_map(&channel(), Some(&policy())).expect("config map");
        assert_eq!(cm.metadata.name.as_deref(), Some("ump-worker-sms"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        let owner = &cm.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("MessageChannel", "sms")
        );
        assert_eq!(owner.controller, Some(true));

        let data = cm.data.expect("data");
        let channel_yaml = &data["channel.yaml"];
        assert!(!channel_yaml.contains("status"), "{channel_yaml}");
        assert!(!channel_yaml.contains("uid"), "{channel_yaml}");
        // The files read back as the resources they were made from (that the worker's registry
        // loads them is `worker/tests/operator_config_map.rs`).
        let read: MessageChannel = serde_yaml_ng::from_str(channel_yaml).expect("channel.yaml");
        assert_eq!(read.namespace().as_deref(), Some("shop"));
        assert_eq!(read.spec, channel().spec);
        let read: DeliveryPolicy =
            serde_yaml_ng::from_str(&data["policy.yaml"]).expect("policy.yaml");
        assert_eq!(read.spec.rate_limit.map(|r| r.per_second), Some(50));
    }

    #[test]
    fn config_map_without_policy_has_only_the_channel() {
        let cm = config_map(&channel(), None).expect("config map");
        let data = cm.data.expect("data");
        assert_eq!(data.keys().collect::<Vec<_>>(), ["channel.yaml"]);
    }

    #[test]
    fn config_hash_follows_the_content_only() {
        let a = config_map(&channel(), Some(&policy())).expect("cm");
        let mut other = policy();
        other.metadata.resource_version = Some("78".into());
        assert_eq!(
            config_hash(&a),
            config_hash(&config_map(&channel(), Some(&other)).expect("cm"))
        );
        other.spec.rate_limit = None;
        assert_ne!(
            config_hash(&a),
            config_hash(&config_map(&channel(), Some(&other)).expect("cm"))
        );
    }

    #[test]
    fn deployment_follows_the_worker_contract() {
        let d = deployment(&channel(), &settings(), 3, "abc").expect("deployment");
        assert_eq!(d.metadata.name.as_deref(), Some("ump-worker-sms"));
        assert_eq!(
            d.metadata.labels.as_ref().expect("labels")[MANAGED_BY.0],
            MANAGED_BY.1
        );
        assert!(d.metadata.owner_references.is_some());
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let template = spec.template;
        let template_labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        for (k, v) in spec.selector.match_labels.expect("selector") {
            assert_eq!(template_labels.as_ref().and_then(|l| l.get(&k)), Some(&v));
        }
        let pod = template.spec.expect("pod");
        let security = pod.security_context.expect("pod security");
        assert_eq!(security.run_as_non_root, Some(true));
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/ump-worker:1.2.3")
        );
        assert_eq!(c.command.as_deref(), Some(&["ump-worker".to_owned()][..]));
        assert_eq!(
            c.args.as_deref().expect("args"),
            ["--config-dir", "/etc/ump/config", "--channel", "sms"]
        );
        let env = c.env.as_ref().expect("env");
        let var = |name: &str| env.iter().find(|e| e.name == name).expect(name);
        assert_eq!(
            var("UMP_KAFKA_BOOTSTRAP").value.as_deref(),
            Some("kafka:9092")
        );
        assert_eq!(
            var("UMP_WORKER_LISTEN").value.as_deref(),
            Some("0.0.0.0:9090")
        );
        assert_eq!(
            var("UMP_REDIS_URL").value.as_deref(),
            Some("redis://redis:6379")
        );
        let mysql = var("UMP_MYSQL_URL");
        assert_eq!(mysql.value, None, "credentials never inline");
        let key = mysql
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!((key.name.as_str(), key.key.as_str()), ("ump-mysql", "url"));
        assert!(
            env.iter().all(|e| e.name != "UMP_AMQP_URL"),
            "not configured"
        );

        assert_eq!(
            c.liveness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/healthz")
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/readyz")
        );
        assert_eq!(c.ports.as_ref().expect("ports")[0].container_port, 9090);
        assert_eq!(c.resources, channel().spec.resources);
        let sc = c.security_context.as_ref().expect("container security");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));

        // One mount per distinct secret, at /etc/ump/secrets/<name>.
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            [
                "/etc/ump/config",
                "/tmp",
                "/etc/ump/secrets/nhn-credentials",
                "/etc/ump/secrets/twilio.credentials"
            ]
        );
        let volumes = pod.volumes.expect("volumes");
        assert_eq!(volumes.len(), 4);
        for v in &volumes {
            assert!(v.name.len() <= 63 && !v.name.contains('.'), "{}", v.name);
        }
        assert_eq!(
            template
                .metadata
                .and_then(|m| m.annotations)
                .expect("annotations")[CONFIG_HASH],
            "abc"
        );
    }

    #[test]
    fn workers_get_the_charts_env_and_tls_secret() {
        let mut settings = settings();
        settings.worker_env = serde_json::from_str(
            r#"[{"name": "UMP_KAFKA_CONFIG_SASL_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": "msk", "key": "password"}}}]"#,
        )
        .expect("env");
        settings.worker_tls_secret = Some("ump-tls".into());
        let d = deployment(&channel(), &settings, 1, "abc").expect("deployment");
        let pod = d.spec.expect("spec").template.spec.expect("pod");
        let c = &pod.containers[0];
        let env = c.env.as_ref().expect("env");
        assert_eq!(
            env.last().map(|e| e.name.as_str()),
            Some("UMP_KAFKA_CONFIG_SASL_PASSWORD")
        );
        let names: BTreeSet<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), env.len(), "no name twice");
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == TLS_DIR)
            .expect("tls mount");
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("tls volume");
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("ump-tls")
        );
    }

    #[test]
    fn applied_means_contained_with_defaults_tolerated() {
        let want = serde_json::json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "w"}]}}});
        let defaulted = serde_json::json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "w", "terminationMessagePath": "/dev/termination-log"}]}}});
        assert!(is_applied(&want, &defaulted));
        let scaled = serde_json::json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "w"}]}}});
        assert!(!is_applied(&want, &scaled));
        let extra = serde_json::json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "w"}, {"name": "x"}]}}});
        assert!(!is_applied(&want, &extra), "lists must match in length");
    }
}

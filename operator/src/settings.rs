//! The operator's own settings, read from `UMP_*` environment variables: what it needs to talk to
//! Kafka and the cluster, and what it passes on to the workers it deploys.

use k8s_openapi::api::core::v1::EnvVar;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;
use ump_domain::resources::ScalingSpec;

/// Name of the field manager of every server-side apply, and of the event reporter.
pub const FIELD_MANAGER: &str = "ump-operator";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{key}: {detail}")]
    Invalid { key: &'static str, detail: String },
}

/// A key of a Secret, for settings the workers must read from a Secret rather than inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

/// Lease-based leader election: one replica reconciles, the others wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

/// The event processor's Deployment (`ump-events`), which the operator scales from its consumer
/// group's lag on the events topic as it scales the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorScaling {
    pub namespace: String,
    pub deployment: String,
    pub topic: String,
    pub group: String,
    /// Bounds, lag per replica and scale-down stabilization, as a channel's `spec.scaling`.
    pub scaling: ScalingSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Kafka bootstrap servers, used by the operator and handed to the workers.
    pub kafka_bootstrap: String,
    pub worker_image: String,
    pub worker_image_pull_policy: Option<String>,
    pub worker_service_account: Option<String>,
    /// Passed to the workers as `UMP_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Secret key the workers read `UMP_MYSQL_URL` from (credentials never go inline).
    pub mysql_url_secret: Option<SecretKey>,
    /// Secret key the workers read `UMP_AMQP_URL` from.
    pub amqp_url_secret: Option<SecretKey>,
    /// More environment for the workers (`UMP_WORKER_ENV`, a JSON list of Kubernetes `EnvVar`s):
    /// how the Helm chart hands them the connection settings it gives the API, secrets as
    /// `secretKeyRef`s (Kafka SASL, Redis and MySQL URLs, ...).
    pub worker_env: Vec<EnvVar>,
    /// A Secret mounted read-only at `/etc/ump/tls` in every worker (CA bundles such as RDS's).
    pub worker_tls_secret: Option<String>,
    /// Reconcile only this namespace (all namespaces when unset).
    pub watch_namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// How often each channel is looked at again without a change (consumer lag moves on its own).
    pub resync: Duration,
    /// Channels reconciled at once.
    pub concurrency: u16,
    pub leader_election: Option<LeaderElection>,
    /// The processor to scale (`UMP_EVENTS_DEPLOYMENT`); none is touched when unset.
    pub processor: Option<ProcessorScaling>,
}

impl Settings {
    /// Settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|key| std::env::var(key).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Settings from any key → value lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let kafka_bootstrap =
            get("UMP_KAFKA_BOOTSTRAP").ok_or(SettingsError::Missing("UMP_KAFKA_BOOTSTRAP"))?;
        let secret = |name_key: &'static str, key_key: &'static str| {
            get(name_key).map(|name| SecretKey {
                name,
                key: get(key_key).unwrap_or_else(|| "url".to_owned()),
            })
        };
        let listen = match get("UMP_OPERATOR_LISTEN") {
            Some(text) => text.parse().map_err(|e| SettingsError::Invalid {
                key: "UMP_OPERATOR_LISTEN",
                detail: format!("{text:?}: {e}"),
            })?,
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let resync = duration(&get, "UMP_OPERATOR_RESYNC", Duration::from_secs(30))?;
        let concurrency = match get("UMP_OPERATOR_CONCURRENCY") {
            Some(text) => text.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
                SettingsError::Invalid {
                    key: "UMP_OPERATOR_CONCURRENCY",
                    detail: format!("{text:?} is not a positive number"),
                }
            })?,
            None => 8,
        };
        let worker_env = match get("UMP_WORKER_ENV") {
            Some(json) => worker_env(&json)?,
            None => Vec::new(),
        };
        let leader_election = match get("UMP_LEADER_ELECTION").as_deref() {
            Some("false" | "0" | "off") => None,
            _ => {
                let lease_duration = duration(&get, "UMP_LEASE_DURATION", Duration::from_secs(15))?;
                Some(LeaderElection {
                    namespace: get("UMP_LEASE_NAMESPACE")
                        .or_else(|| get("POD_NAMESPACE"))
                        .unwrap_or_else(|| "default".to_owned()),
                    lease_name: get("UMP_LEASE_NAME").unwrap_or_else(|| "ump-operator".to_owned()),
                    identity: get("POD_NAME")
                        .or_else(|| get("HOSTNAME"))
                        .unwrap_or_else(|| format!("ump-operator-{}", std::process::id())),
                    lease_duration,
                    // Renew well inside the lease so one slow round trip never costs the lease.
                    renew_interval: lease_duration / 3,
                })
            }
        };
        let processor = match get("UMP_EVENTS_DEPLOYMENT") {
            Some(deployment) => Some(processor_scaling(&get, deployment)?),
            None => None,
        };
        let settings = Self {
            kafka_bootstrap,
            worker_image: get("UMP_WORKER_IMAGE")
                .unwrap_or_else(|| format!("ghcr.io/ump/ump:{}", env!("CARGO_PKG_VERSION"))),
            worker_image_pull_policy: get("UMP_WORKER_IMAGE_PULL_POLICY"),
            worker_service_account: get("UMP_WORKER_SERVICE_ACCOUNT"),
            redis_url: get("UMP_REDIS_URL"),
            mysql_url_secret: secret("UMP_MYSQL_URL_SECRET", "UMP_MYSQL_URL_SECRET_KEY"),
            amqp_url_secret: secret("UMP_AMQP_URL_SECRET", "UMP_AMQP_URL_SECRET_KEY"),
            worker_env,
            worker_tls_secret: get("UMP_WORKER_TLS_SECRET"),
            watch_namespace: get("UMP_WATCH_NAMESPACE"),
            listen,
            resync,
            concurrency,
            leader_election,
            processor,
        };
        // A name set twice would make every worker Deployment fail server-side apply.
        for (setting, name) in [
            (settings.redis_url.is_some(), "UMP_REDIS_URL"),
            (settings.mysql_url_secret.is_some(), "UMP_MYSQL_URL"),
            (settings.amqp_url_secret.is_some(), "UMP_AMQP_URL"),
        ] {
            if setting && settings.worker_env.iter().any(|e| e.name == name) {
                return Err(SettingsError::Invalid {
                    key: "UMP_WORKER_ENV",
                    detail: format!("{name} is already given by its own setting; set it once"),
                });
            }
        }
        Ok(settings)
    }
}

/// Variables the operator sets on every worker itself (the probes and the Kafka it reconciles
/// must be the ones the workers use).
pub const RESERVED_WORKER_ENV: [&str; 4] = [
    "UMP_KAFKA_BOOTSTRAP",
    "UMP_WORKER_LISTEN",
    "POD_NAME",
    "UMP_CONFIG_DIR",
];

fn worker_env(json: &str) -> Result<Vec<EnvVar>, SettingsError> {
    let invalid = |detail: String| SettingsError::Invalid {
        key: "UMP_WORKER_ENV",
        detail,
    };
    // The error names the position, never the text: a value may be a password.
    let env: Vec<EnvVar> = serde_json::from_str(json).map_err(|e| {
        invalid(format!(
            "not a JSON list of Kubernetes EnvVar objects (line {}, column {}): {:?}",
            e.line(),
            e.column(),
            e.classify()
        ))
    })?;
    let mut seen = std::collections::BTreeSet::new();
    for var in &env {
        if var.name.trim().is_empty() {
            return Err(invalid("an entry has no name".to_owned()));
        }
        if RESERVED_WORKER_ENV.contains(&var.name.as_str()) {
            return Err(invalid(format!(
                "{} is set by the operator itself and cannot be overridden",
                var.name
            )));
        }
        if !seen.insert(var.name.as_str()) {
            return Err(invalid(format!("{} appears twice", var.name)));
        }
    }
    Ok(env)
}

fn processor_scaling(
    get: &impl Fn(&str) -> Option<String>,
    deployment: String,
) -> Result<ProcessorScaling, SettingsError> {
    let namespace = get("UMP_EVENTS_NAMESPACE")
        .or_else(|| get("POD_NAMESPACE"))
        .ok_or(SettingsError::Missing("UMP_EVENTS_NAMESPACE"))?;
    // At least one processor always: it also queues the time-window rechecks, which nothing else
    // does, and creates the events topic.
    let min_replicas = number(get, "UMP_EVENTS_MIN_REPLICAS", 1, 1)?;
    let max_replicas = number(get, "UMP_EVENTS_MAX_REPLICAS", 6, 1)?;
    if min_replicas > max_replicas {
        return Err(SettingsError::Invalid {
            key: "UMP_EVENTS_MIN_REPLICAS",
            detail: format!("{min_replicas} is above UMP_EVENTS_MAX_REPLICAS ({max_replicas})"),
        });
    }
    let scaling = ScalingSpec {
        min_replicas,
        max_replicas,
        lag_per_replica: number(get, "UMP_EVENTS_LAG_PER_REPLICA", 5000, 1)?,
        scale_down_stabilization: duration(
            get,
            "UMP_EVENTS_SCALE_DOWN_STABILIZATION",
            Duration::from_secs(300),
        )?
        .into(),
    };
    Ok(ProcessorScaling {
        namespace,
        deployment,
        topic: get("UMP_EVENTS_TOPIC")
            .unwrap_or_else(|| ump_domain::resources::DEFAULT_EVENTS_TOPIC.to_owned()),
        group: get("UMP_EVENTS_GROUP")
            .unwrap_or_else(|| ump_domain::resources::DEFAULT_EVENTS_GROUP.to_owned()),
        scaling,
    })
}

/// A whole number of at least `min`.
fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &'static str,
    default: T,
    min: T,
) -> Result<T, SettingsError>
where
    T: FromStr + PartialOrd + std::fmt::Display,
{
    match get(key) {
        Some(text) => text
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| SettingsError::Invalid {
                key,
                detail: format!("{text:?} is not a whole number of at least {min}"),
            }),
        None => Ok(default),
    }
}

fn duration(
    get: &impl Fn(&str) -> Option<String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, SettingsError> {
    match get(key) {
        Some(text) => text
            .parse::<ump_domain::duration::Duration>()
            .map(|d| d.as_std())
            .map_err(|detail| SettingsError::Invalid { key, detail }),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_only_kafka() {
        let settings =
            from(&[("UMP_KAFKA_BOOTSTRAP", "k:9092"), ("POD_NAME", "op-0")]).expect("settings");
        assert_eq!(settings.resync, Duration::from_secs(30));
        assert_eq!(settings.concurrency, 8);
        let election = settings.leader_election.expect("on by default");
        assert_eq!(election.identity, "op-0");
        assert_eq!(election.renew_interval, Duration::from_secs(5));
        assert!(settings.mysql_url_secret.is_none());
    }

    #[test]
    fn secrets_and_overrides() {
        let settings = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k:9092"),
            ("UMP_MYSQL_URL_SECRET", "ump-mysql"),
            ("UMP_AMQP_URL_SECRET", "ump-amqp"),
            ("UMP_AMQP_URL_SECRET_KEY", "amqp-url"),
            ("UMP_LEADER_ELECTION", "false"),
            ("UMP_OPERATOR_RESYNC", "2s"),
        ])
        .expect("settings");
        assert_eq!(
            settings.mysql_url_secret,
            Some(SecretKey {
                name: "ump-mysql".into(),
                key: "url".into()
            })
        );
        assert_eq!(settings.amqp_url_secret.expect("amqp").key, "amqp-url");
        assert!(settings.leader_election.is_none());
        assert_eq!(settings.resync, Duration::from_secs(2));
    }

    #[test]
    fn worker_env_is_a_list_of_env_vars() {
        let json = r#"[
            {"name": "UMP_KAFKA_CONFIG_SECURITY_PROTOCOL", "value": "SASL_SSL"},
            {"name": "UMP_KAFKA_CONFIG_SASL_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": "msk", "key": "password"}}}
        ]"#;
        let settings = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k:9092"),
            ("UMP_WORKER_ENV", json),
            ("UMP_WORKER_TLS_SECRET", "ump-tls"),
        ])
        .expect("settings");
        assert_eq!(settings.worker_env.len(), 2);
        let password = &settings.worker_env[1];
        assert_eq!(
            password
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| (s.name.as_str(), s.key.as_str())),
            Some(("msk", "password"))
        );
        assert_eq!(settings.worker_tls_secret.as_deref(), Some("ump-tls"));
    }

    #[test]
    fn worker_env_refuses_what_would_break_the_workers() {
        let cases = [
            (r#"{"name": "A"}"#, "not a JSON list"),
            (r#"[{"value": "x"}]"#, "has no name"),
            (r#"[{"name": " ", "value": "x"}]"#, "has no name"),
            (
                r#"[{"name": "UMP_WORKER_LISTEN", "value": "0.0.0.0:1"}]"#,
                "UMP_WORKER_LISTEN is set by the operator",
            ),
            (
                r#"[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]"#,
                "A appears twice",
            ),
        ];
        for (json, expected) in cases {
            let err = from(&[("UMP_KAFKA_BOOTSTRAP", "k"), ("UMP_WORKER_ENV", json)])
                .expect_err(json)
                .to_string();
            assert!(err.starts_with("UMP_WORKER_ENV: "), "{err}");
            assert!(err.contains(expected), "{json}: {err}");
        }
        let err = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k"),
            ("UMP_REDIS_URL", "redis://r"),
            (
                "UMP_WORKER_ENV",
                r#"[{"name": "UMP_REDIS_URL", "value": "redis://s"}]"#,
            ),
        ])
        .expect_err("twice");
        assert!(err.to_string().contains("set it once"), "{err}");
        // A password in a malformed list never reaches the message.
        let err = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k"),
            ("UMP_WORKER_ENV", r#"[{"name": "P", "value": "hunter2"#),
        ])
        .expect_err("truncated");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_processor_is_scaled_only_when_named() {
        let settings = from(&[("UMP_KAFKA_BOOTSTRAP", "k")]).expect("settings");
        assert!(settings.processor.is_none());
        let settings = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k"),
            ("POD_NAMESPACE", "ump"),
            ("UMP_EVENTS_DEPLOYMENT", "ump-events"),
            ("UMP_EVENTS_MAX_REPLICAS", "12"),
            ("UMP_EVENTS_SCALE_DOWN_STABILIZATION", "10m"),
        ])
        .expect("settings");
        let processor = settings.processor.expect("processor");
        assert_eq!(
            (
                processor.namespace.as_str(),
                processor.deployment.as_str(),
                processor.topic.as_str(),
                processor.group.as_str()
            ),
            ("ump", "ump-events", "ump.events", "ump-events")
        );
        let scaling = processor.scaling;
        assert_eq!(
            (
                scaling.min_replicas,
                scaling.max_replicas,
                scaling.lag_per_replica
            ),
            (1, 12, 5000)
        );
        assert_eq!(
            scaling.scale_down_stabilization.as_std(),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn processor_bounds_are_checked() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[("UMP_EVENTS_MIN_REPLICAS", "0")],
                "UMP_EVENTS_MIN_REPLICAS: \"0\" is not a whole number of at least 1",
            ),
            (
                &[
                    ("UMP_EVENTS_MIN_REPLICAS", "5"),
                    ("UMP_EVENTS_MAX_REPLICAS", "2"),
                ],
                "UMP_EVENTS_MIN_REPLICAS: 5 is above UMP_EVENTS_MAX_REPLICAS (2)",
            ),
            (
                &[("UMP_EVENTS_LAG_PER_REPLICA", "lots")],
                "UMP_EVENTS_LAG_PER_REPLICA: \"lots\" is not a whole number of at least 1",
            ),
            (
                &[("UMP_EVENTS_SCALE_DOWN_STABILIZATION", "soon")],
                "UMP_EVENTS_SCALE_DOWN_STABILIZATION: invalid duration",
            ),
        ];
        for (extra, expected) in cases {
            let mut pairs = vec![
                ("UMP_KAFKA_BOOTSTRAP", "k"),
                ("UMP_EVENTS_NAMESPACE", "ump"),
                ("UMP_EVENTS_DEPLOYMENT", "ump-events"),
            ];
            pairs.extend_from_slice(extra);
            let err = from(&pairs).expect_err(expected).to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        let err = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k"),
            ("UMP_EVENTS_DEPLOYMENT", "ump-events"),
        ])
        .expect_err("no namespace");
        assert_eq!(err.to_string(), "UMP_EVENTS_NAMESPACE is required");
    }

    #[test]
    fn errors_name_the_variable() {
        let err = from(&[]).expect_err("no kafka");
        assert_eq!(err.to_string(), "UMP_KAFKA_BOOTSTRAP is required");
        let err = from(&[
            ("UMP_KAFKA_BOOTSTRAP", "k"),
            ("UMP_OPERATOR_RESYNC", "soon"),
        ])
        .expect_err("bad duration");
        assert!(err.to_string().starts_with("UMP_OPERATOR_RESYNC:"), "{err}");
    }
}

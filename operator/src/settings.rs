//! The operator's own settings, read from `UMP_*` environment variables: what it needs to talk to
//! Kafka and the cluster, and what it passes on to the workers it deploys.

use std::net::SocketAddr;
use std::time::Duration;

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

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Reconcile only this namespace (all namespaces when unset).
    pub watch_namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// How often each channel is looked at again without a change (consumer lag moves on its own).
    pub resync: Duration,
    /// Channels reconciled at once.
    pub concurrency: u16,
    pub leader_election: Option<LeaderElection>,
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
        Ok(Self {
            kafka_bootstrap,
            worker_image: get("UMP_WORKER_IMAGE")
                .unwrap_or_else(|| format!("ghcr.io/ump/ump-worker:{}", env!("CARGO_PKG_VERSION"))),
            worker_image_pull_policy: get("UMP_WORKER_IMAGE_PULL_POLICY"),
            worker_service_account: get("UMP_WORKER_SERVICE_ACCOUNT"),
            redis_url: get("UMP_REDIS_URL"),
            mysql_url_secret: secret("UMP_MYSQL_URL_SECRET", "UMP_MYSQL_URL_SECRET_KEY"),
            amqp_url_secret: secret("UMP_AMQP_URL_SECRET", "UMP_AMQP_URL_SECRET_KEY"),
            watch_namespace: get("UMP_WATCH_NAMESPACE"),
            listen,
            resync,
            concurrency,
            leader_election,
        })
    }
}

fn duration(
    get: &impl Fn(&str) -> Option<String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, SettingsError> {
    match get(key) {
        Some(text) => text
            .parse::<ump_core::duration::Duration>()
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

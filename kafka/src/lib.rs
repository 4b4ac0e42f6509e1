//! Kafka as every UMP client reaches it: connection settings (bootstrap servers plus any
//! librdkafka property from `UMP_KAFKA_CONFIG_*`), the client defaults every client shares, and
//! how a consumer group's lag is counted. The API, the worker, the event processor and the
//! operator all build their clients here.

use rdkafka::ClientConfig;
use std::collections::{BTreeMap, HashMap};

/// Kafka connection settings: the bootstrap servers plus any librdkafka property (TLS, SASL) from
/// `UMP_KAFKA_CONFIG_<PROPERTY>` variables, e.g. `UMP_KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL` →
/// `security.protocol`.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    pub bootstrap: String,
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may hold SASL passwords: show only their names.
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSettings {
    pub fn from_env(bootstrap: String) -> Self {
        let properties = std::env::vars()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix("UMP_KAFKA_CONFIG_")?;
                Some((name.to_lowercase().replace('_', "."), value))
            })
            .collect();
        Self {
            bootstrap,
            properties,
        }
    }

    /// A client config with the connection settings applied.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// A client config with UMP's `defaults` for this client, then the connection settings and
    /// the operator's properties, which win over the defaults. Every client has Nagle's
    /// algorithm off: a request bigger than one TCP segment would otherwise wait for the
    /// broker's delayed ACK (40–200 ms) before its last bytes leave.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("socket.nagle.disable", "true");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Lag of a consumer group, by partition offsets: for each partition, the end offset minus the
/// committed offset, or minus the start offset when the group never committed (its first
/// consumer will read from the start) or committed before what retention kept. The worker's
/// `ump_consumer_lag` and the operator's scaling both count it so.
pub fn total_lag(
    low: &HashMap<i32, i64>,
    high: &HashMap<i32, i64>,
    committed: &HashMap<i32, i64>,
) -> i64 {
    high.iter()
        .map(|(partition, end)| {
            let start = low.get(partition).copied().unwrap_or(0);
            let from = committed
                .get(partition)
                .copied()
                .unwrap_or(start)
                .max(start);
            (end - from).max(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(i32, i64)]) -> HashMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn lag_counts_from_the_commit_or_the_start() {
        let low = map(&[(0, 0), (1, 10)]);
        let high = map(&[(0, 100), (1, 50)]);
        assert_eq!(total_lag(&low, &high, &map(&[])), 100 + 40);
        assert_eq!(total_lag(&low, &high, &map(&[(0, 90)])), 10 + 40);
        // A commit older than retention counts from the start; one past the end is no lag.
        assert_eq!(total_lag(&low, &high, &map(&[(0, 100), (1, 5)])), 40);
        assert_eq!(total_lag(&low, &high, &map(&[(0, 200), (1, 50)])), 0);
    }

    fn settings(properties: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            bootstrap: "127.0.0.1:9092".to_owned(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn every_client_has_nagle_off_unless_the_operator_says_otherwise() {
        let config = settings(&[]).client_config_with(&[("linger.ms", "5")]);
        assert_eq!(config.get("socket.nagle.disable"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let config = settings(&[("socket.nagle.disable", "false"), ("linger.ms", "50")])
            .client_config_with(&[("linger.ms", "5")]);
        assert_eq!(config.get("socket.nagle.disable"), Some("false"));
        assert_eq!(config.get("linger.ms"), Some("50"));
    }
}

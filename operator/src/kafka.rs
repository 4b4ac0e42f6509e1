//! The operator's Kafka I/O: topics through the Admin API, and consumer lag from the committed
//! offsets of a channel's consumer group. One admin client and one group-less consumer (for
//! metadata and offsets) are shared by every reconcile; a short-lived consumer carrying a channel's
//! group id is made only when the topic holds messages, since librdkafka reads committed offsets
//! only for its own group.

use crate::error::{Error, Result};
use crate::topic::{DesiredTopic, ObservedTopic};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use ump_kafka::{KafkaSettings, total_lag};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct KafkaAdmin {
    kafka: KafkaSettings,
    admin: Arc<AdminClient<DefaultClientContext>>,
    metadata: Arc<BaseConsumer>,
    /// Bounds the short-lived group consumers alive at once (each has its own threads and sockets).
    group_readers: Arc<Semaphore>,
}

impl KafkaAdmin {
    /// Clients for `kafka`: its bootstrap servers and its `UMP_KAFKA_CONFIG_*` properties (TLS,
    /// SASL), the same ones the API and the workers use.
    pub fn new(kafka: &KafkaSettings) -> Result<Self> {
        let admin = base_config(kafka)
            .create()
            .map_err(|e| Error::kafka("creating the admin client", e))?;
        let metadata = base_config(kafka)
            // The brokers may auto-create topics; a metadata lookup must never be what creates one.
            .set("allow.auto.create.topics", "false")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| Error::kafka("creating the metadata client", e))?;
        Ok(Self {
            kafka: kafka.clone(),
            admin: Arc::new(admin),
            metadata: Arc::new(metadata),
            group_readers: Arc::new(Semaphore::new(2)),
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(TIMEOUT))
            .operation_timeout(Some(TIMEOUT))
    }

    /// The topic as the broker has it, or `None` when it does not exist.
    pub async fn observe(&self, topic: &str) -> Result<Option<ObservedTopic>> {
        let metadata = self.metadata.clone();
        let name = topic.to_owned();
        let shape = blocking(move || {
            with_retries(|| {
                let metadata = metadata
                    .fetch_metadata(Some(&name), TIMEOUT)
                    .map_err(|e| Error::kafka(format!("metadata of {name}"), e))?;
                let Some(found) = metadata.topics().iter().find(|t| t.name() == name) else {
                    return Ok(None);
                };
                match found.error().map(RDKafkaErrorCode::from) {
                    None => {}
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
                    Some(code) => {
                        return Err(Error::kafka(
                            format!("metadata of {name}"),
                            KafkaError::MetadataFetch(code),
                        ));
                    }
                }
                let partitions = found.partitions();
                let replication = partitions.first().map_or(0, |p| p.replicas().len());
                Ok(Some((
                    i32::try_from(partitions.len()).unwrap_or(i32::MAX),
                    i32::try_from(replication).unwrap_or(i32::MAX),
                )))
            })
        })
        .await?;
        let Some((partitions, replication_factor)) = shape else {
            return Ok(None);
        };
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &Self::options())
            .await
            .map_err(|e| Error::kafka(format!("describing the config of {topic}"), e))?;
        let mut config = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| {
                Error::kafka(
                    format!("describing the config of {topic}"),
                    KafkaError::AdminOp(code),
                )
            })?;
            for entry in resource.entries {
                if entry.source == ConfigSource::DynamicTopic
                    && let Some(value) = entry.value
                {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(Some(ObservedTopic {
            partitions,
            replication_factor,
            config,
        }))
    }

    pub async fn create(&self, topic: &DesiredTopic) -> Result<()> {
        let mut new = NewTopic::new(
            &topic.name,
            topic.partitions,
            TopicReplication::Fixed(topic.replication_factor),
        );
        for (key, value) in &topic.config {
            new = new.set(key, value);
        }
        let results = self
            .admin
            .create_topics(&[new], &Self::options())
            .await
            .map_err(|e| Error::kafka(format!("creating {}", topic.name), e))?;
        for result in results {
            match result {
                Ok(_) => {}
                // Someone (or an earlier, interrupted reconcile) was faster: the next look converges it.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::kafka(
                        format!("creating {}", topic.name),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }

    pub async fn grow_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let total = usize::try_from(total).unwrap_or(0);
        let results = self
            .admin
            .create_partitions(&[NewPartitions::new(topic, total)], &Self::options())
            .await
            .map_err(|e| Error::kafka(format!("adding partitions to {topic}"), e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(Error::kafka(
                    format!("adding partitions to {topic}"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
        Ok(())
    }

    /// Makes `config` the topic's complete set of overrides (AlterConfigs replaces the set).
    pub async fn replace_config(
        &self,
        topic: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in config {
            alter = alter.set(key, value);
        }
        let results = self
            .admin
            .alter_configs(&[alter], &Self::options())
            .await
            .map_err(|e| Error::kafka(format!("altering the config of {topic}"), e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(Error::kafka(
                    format!("altering the config of {topic}"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
        Ok(())
    }

    /// Deletes the topic; a topic that is already gone counts as deleted.
    pub async fn delete(&self, topic: &str) -> Result<()> {
        let results = self
            .admin
            .delete_topics(&[topic], &Self::options())
            .await
            .map_err(|e| Error::kafka(format!("deleting {topic}"), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(Error::kafka(
                        format!("deleting {topic}"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Messages of `topic` not yet committed by `group`, over all partitions.
    pub async fn consumer_lag(&self, topic: &str, group: &str, partitions: i32) -> Result<i64> {
        let metadata = self.metadata.clone();
        let name = topic.to_owned();
        let (low, high) = blocking(move || {
            let query = |at: Offset| {
                let mut tpl = TopicPartitionList::new();
                for partition in 0..partitions {
                    tpl.add_partition_offset(&name, partition, at)
                        .map_err(|e| Error::kafka(format!("offsets of {name}"), e))?;
                }
                let found = with_retries(|| {
                    metadata
                        .offsets_for_times(tpl.clone(), TIMEOUT)
                        .map_err(|e| Error::kafka(format!("offsets of {name}"), e))
                })?;
                Ok::<_, Error>(offsets_by_partition(&found))
            };
            Ok((query(Offset::Beginning)?, query(Offset::End)?))
        })
        .await?;
        // An empty topic has no lag whoever reads it: no need to ask for the group's offsets.
        if high.iter().all(|(p, h)| low.get(p).is_some_and(|l| l >= h)) {
            return Ok(0);
        }
        let _permit = self
            .group_readers
            .acquire()
            .await
            .map_err(|e| Error::KafkaTask(e.to_string()))?;
        let kafka = self.kafka.clone();
        let group = group.to_owned();
        let name = topic.to_owned();
        let committed = blocking(move || {
            let consumer: BaseConsumer = base_config(&kafka)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("allow.auto.create.topics", "false")
                .create()
                .map_err(|e| Error::kafka("creating a group offsets reader", e))?;
            let mut tpl = TopicPartitionList::new();
            for partition in 0..partitions {
                tpl.add_partition(&name, partition);
            }
            let committed = consumer
                .committed_offsets(tpl, TIMEOUT)
                .map_err(|e| Error::kafka(format!("committed offsets of {group}"), e))?;
            Ok(offsets_by_partition(&committed))
        })
        .await?;
        Ok(total_lag(&low, &high, &committed))
    }
}

fn base_config(kafka: &KafkaSettings) -> ClientConfig {
    kafka.client_config_with(&[("client.id", "ump-operator"), ("log_level", "4")])
}

/// Runs `attempt` again (a few times, briefly) while Kafka answers that a leader is being elected:
/// what it says for a moment after a topic is created or grows.
fn with_retries<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match attempt() {
            Err(Error::Kafka { source, .. }) if tries < 10 && is_leader_election(&source) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn is_leader_election(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::MetadataFetch(code) | KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    matches!(
        code,
        Some(
            RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::UnknownLeaderEpoch
                | RDKafkaErrorCode::FencedLeaderEpoch
        )
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::KafkaTask(e.to_string()))?
}

/// Partition → offset, for the partitions that have a real offset.
fn offsets_by_partition(tpl: &TopicPartitionList) -> HashMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if e.error().is_ok() => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Whether a Kafka failure is the broker refusing the request (bad config, too many replicas) as
/// opposed to Kafka being unreachable: the first is the user's to fix, the second is retried.
pub fn is_rejection(error: &Error) -> bool {
    let Error::Kafka { source, .. } = error else {
        return false;
    };
    let code = match source {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    matches!(
        code,
        Some(
            RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidRequest
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_told_from_outages() {
        let rejected = Error::kafka(
            "creating t",
            KafkaError::AdminOp(RDKafkaErrorCode::InvalidReplicationFactor),
        );
        assert!(is_rejection(&rejected));
        let down = Error::kafka(
            "creating t",
            KafkaError::AdminOp(RDKafkaErrorCode::BrokerTransportFailure),
        );
        assert!(!is_rejection(&down));
    }
}

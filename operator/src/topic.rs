//! What to do to a channel's Kafka topic (pure): create it, grow its partitions, converge its
//! configuration. Kafka cannot remove partitions and this operator does not reassign replicas, so
//! a shrink or a replication-factor change is reported as not supported instead of retried.

use std::collections::BTreeMap;
use ump_domain::resources::MessageChannel;

/// The topic a channel asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

impl DesiredTopic {
    pub fn of(channel: &MessageChannel) -> Self {
        let topic = &channel.spec.topic;
        Self {
            name: channel.topic_name(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            config: topic.config.clone(),
        }
    }
}

/// The topic as the broker has it. `config` holds only the topic-level overrides (entries whose
/// source is the topic itself), which is the set a channel's `topic.config` declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicAction {
    Create,
    /// Raise the partition count to this total.
    GrowPartitions(i32),
    /// Make the topic's overrides exactly this set. Kafka's (non-incremental) AlterConfigs replaces
    /// the whole set, which is what converging wants: keys set out of band are reverted too.
    ReplaceConfig(BTreeMap<String, String>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPlan {
    pub actions: Vec<TopicAction>,
    /// Requests that are reported (condition `NotSupported`), never retried.
    pub unsupported: Vec<String>,
}

pub fn plan(desired: &DesiredTopic, observed: Option<&ObservedTopic>) -> TopicPlan {
    let Some(observed) = observed else {
        return TopicPlan {
            actions: vec![TopicAction::Create],
            unsupported: Vec::new(),
        };
    };
    let mut plan = TopicPlan::default();
    if desired.partitions > observed.partitions {
        plan.actions
            .push(TopicAction::GrowPartitions(desired.partitions));
    } else if desired.partitions < observed.partitions {
        plan.unsupported.push(format!(
            "spec.topic.partitions is {} but topic {} has {}: Kafka cannot remove partitions \
             (keeping {})",
            desired.partitions, desired.name, observed.partitions, observed.partitions
        ));
    }
    if desired.replication_factor != observed.replication_factor {
        plan.unsupported.push(format!(
            "spec.topic.replicationFactor is {} but topic {} has {}: changing it needs a \
             partition reassignment, which the operator does not do",
            desired.replication_factor, desired.name, observed.replication_factor
        ));
    }
    if desired.config != observed.config {
        plan.actions
            .push(TopicAction::ReplaceConfig(desired.config.clone()));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(partitions: i32, config: &[(&str, &str)]) -> DesiredTopic {
        DesiredTopic {
            name: "ump.ns.sms".into(),
            partitions,
            replication_factor: 1,
            config: map(config),
        }
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: 1,
            config: map(config),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn missing_topic_is_created() {
        assert_eq!(plan(&desired(3, &[]), None).actions, [TopicAction::Create]);
    }

    #[test]
    fn converged_topic_needs_nothing() {
        let c = [("retention.ms", "60000")];
        assert_eq!(
            plan(&desired(3, &c), Some(&observed(3, &c))),
            TopicPlan::default()
        );
    }

    #[test]
    fn partitions_grow_and_never_shrink() {
        let grown = plan(&desired(6, &[]), Some(&observed(3, &[])));
        assert_eq!(grown.actions, [TopicAction::GrowPartitions(6)]);
        assert!(grown.unsupported.is_empty());

        let shrink = plan(&desired(2, &[]), Some(&observed(3, &[])));
        assert!(shrink.actions.is_empty());
        assert_eq!(shrink.unsupported.len(), 1);
        assert!(shrink.unsupported[0].contains("cannot remove partitions"));
    }

    #[test]
    fn replication_change_is_reported_next_to_other_actions() {
        let mut want = desired(6, &[("cleanup.policy", "compact")]);
        want.replication_factor = 3;
        let p = plan(&want, Some(&observed(3, &[])));
        assert_eq!(
            p.actions,
            [
                TopicAction::GrowPartitions(6),
                TopicAction::ReplaceConfig(map(&[("cleanup.policy", "compact")]))
            ]
        );
        assert!(p.unsupported[0].contains("replicationFactor is 3"));
    }

    #[test]
    fn config_converges_to_exactly_the_declared_set() {
        // Changed out of band, and a key nobody declared: both reverted by one replacement.
        let p = plan(
            &desired(3, &[("retention.ms", "60000")]),
            Some(&observed(
                3,
                &[("retention.ms", "1"), ("max.message.bytes", "10")],
            )),
        );
        assert_eq!(
            p.actions,
            [TopicAction::ReplaceConfig(map(&[(
                "retention.ms",
                "60000"
            )]))]
        );
        // Removing every override is a replacement with the empty set.
        let p = plan(
            &desired(3, &[]),
            Some(&observed(3, &[("retention.ms", "1")])),
        );
        assert_eq!(p.actions, [TopicAction::ReplaceConfig(BTreeMap::new())]);
    }
}

//! Status conditions: built from what a reconcile found, merged with the ones already on the
//! object (a condition keeps its `lastTransitionTime` until its status really changes), and
//! compared ignoring timestamps, so an unchanged status is never written again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const TOPIC_READY: &str = "TopicReady";
pub const WORKERS_READY: &str = "WorkersReady";
/// The one condition of a `DeliveryPolicy`.
pub const VALID: &str = "Valid";

/// One condition as a reconcile decides it, before timestamps and generations are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase, machine-readable: `TopicReady`, `NotSupported`, `PolicyNotFound`, ...
    pub reason: &'static str,
    pub message: String,
}

impl Observation {
    pub fn truth(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(type_, "True", reason, message)
    }
    pub fn failure(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(type_, "False", reason, message)
    }
    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(type_, "Unknown", reason, message)
    }
    fn new(
        type_: &'static str,
        status: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// `Ready` from the other conditions: true when all are, else the first one that is not explains.
pub fn ready(parts: &[&Observation]) -> Observation {
    match parts.iter().find(|o| !o.is_true()) {
        None => Observation::truth(READY, "Ready", "topic and workers are in place"),
        Some(blocker) => Observation {
            type_: READY,
            status: if blocker.status == "Unknown" {
                "Unknown"
            } else {
                "False"
            },
            reason: blocker.reason,
            message: format!("{}: {}", blocker.type_, blocker.message),
        },
    }
}

/// The conditions to write: `observations` stamped with `generation`, keeping the transition time
/// of an existing condition whose status is unchanged. Conditions of other types (set by someone
/// else) are kept as they are.
pub fn merge(
    existing: &[Condition],
    observations: &[Observation],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = existing
        .iter()
        .filter(|c| !observations.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    for observation in observations {
        let previous = existing.iter().find(|c| c.type_ == observation.type_);
        let last_transition_time = match previous {
            Some(c) if c.status == observation.status => c.last_transition_time.clone(),
            _ => Time(now),
        };
        merged.push(Condition {
            type_: observation.type_.to_owned(),
            status: observation.status.to_owned(),
            reason: observation.reason.to_owned(),
            message: observation.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

/// Whether two condition lists say the same thing, whatever their timestamps and order.
pub fn same_ignoring_timestamps(a: &[Condition], b: &[Condition]) -> bool {
    let key = |conditions: &[Condition]| {
        let mut list: Vec<(String, String, String, String, Option<i64>)> = conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect();
        list.sort();
        list
    };
    key(a) == key(b)
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[Observation::failure(TOPIC_READY, "Creating", "creating")],
            Some(1),
            at(100),
        );
        assert_eq!(first[0].last_transition_time, Time(at(100)));

        // Same status, new message: the transition time stays.
        let second = merge(
            &first,
            &[Observation::failure(
                TOPIC_READY,
                "KafkaUnavailable",
                "down",
            )],
            Some(2),
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].reason, "KafkaUnavailable");
        assert_eq!(second[0].observed_generation, Some(2));

        let third = merge(
            &second,
            &[Observation::truth(TOPIC_READY, "TopicReady", "ok")],
            Some(2),
            at(300),
        );
        assert_eq!(third[0].last_transition_time, Time(at(300)));
    }

    #[test]
    fn comparison_ignores_timestamps_and_order() {
        let observations = [
            Observation::truth(TOPIC_READY, "TopicReady", "ok"),
            Observation::truth(WORKERS_READY, "DeploymentApplied", "ok"),
        ];
        let a = merge(&[], &observations, Some(3), at(1));
        let mut b = merge(&[], &observations, Some(3), at(999));
        b.reverse();
        assert!(same_ignoring_timestamps(&a, &b));
        let c = merge(&[], &observations, Some(4), at(1));
        assert!(!same_ignoring_timestamps(&a, &c), "generation matters");
    }

    #[test]
    fn foreign_conditions_are_kept() {
        let foreign = merge(
            &[],
            &[Observation::truth("Audited", "Done", "")],
            None,
            at(1),
        );
        let merged = merge(
            &foreign,
            &[Observation::truth(READY, "Ready", "")],
            Some(1),
            at(2),
        );
        assert_eq!(
            merged.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Audited", "Ready"]
        );
    }

    #[test]
    fn ready_explains_the_first_blocker() {
        let topic = Observation::failure(TOPIC_READY, "NotSupported", "cannot shrink");
        let workers = Observation::truth(WORKERS_READY, "DeploymentApplied", "");
        let ready = ready(&[&topic, &workers]);
        assert_eq!((ready.status, ready.reason), ("False", "NotSupported"));
        assert_eq!(ready.message, "TopicReady: cannot shrink");
        let ok = super::ready(&[&workers]);
        assert!(ok.is_true());
    }
}

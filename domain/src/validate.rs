//! The one validation of `MessageChannel` and `DeliveryPolicy` specs beyond what their schema says
//! (pure). The operator turns the problems into conditions on the object; the channel registry
//! (API, worker, all-in-one) leaves a channel with problems out, naming them.

use crate::policy::QuietWindow;
use crate::resources::{DeliveryPolicySpec, MessageChannel};
use kube::ResourceExt;
use std::collections::BTreeSet;

/// Longest channel name: it becomes a label value (63 characters at most).
pub const MAX_CHANNEL_NAME: usize = 63;

/// What is wrong with a channel's spec, one sentence per problem.
pub fn channel_problems(channel: &MessageChannel) -> Vec<String> {
    let mut problems = Vec::new();
    let name = channel.name_any();
    if name.len() > MAX_CHANNEL_NAME {
        problems.push(format!(
            "the channel name is {} characters long; at most {MAX_CHANNEL_NAME} fit in the labels of its workers",
            name.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for provider in &channel.spec.providers {
        if !seen.insert(provider.name.as_str()) {
            problems.push(format!(
                "provider name {:?} is used twice; names identify providers in metrics and history",
                provider.name
            ));
        }
    }
    if channel.spec.providers.is_empty() {
        problems.push("the channel has no providers".to_owned());
    }
    if channel.topic_name().starts_with("__") {
        problems.push(format!(
            "topic {} is reserved for Kafka's internal topics",
            channel.topic_name()
        ));
    }
    problems
}

/// What is wrong with a policy's spec.
pub fn policy_problems(spec: &DeliveryPolicySpec) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(quiet) = &spec.quiet_hours {
        if quiet.timezone.parse::<chrono_tz::Tz>().is_err() {
            problems.push(format!(
                "quietHours.timezone {:?} is not an IANA time zone (e.g. Asia/Seoul)",
                quiet.timezone
            ));
        }
        for (field, time) in [("start", &quiet.start), ("end", &quiet.end)] {
            if !QuietWindow::is_time(time) {
                problems.push(format!(
                    "quietHours.{field} {time:?} is not HH:MM (e.g. 21:00)"
                ));
            }
        }
        if quiet.start == quiet.end {
            problems.push("quietHours.start and quietHours.end are equal".to_owned());
        }
    }
    if spec.retry.initial_backoff > spec.retry.max_backoff {
        problems.push(format!(
            "retry.initialBackoff ({}) is longer than retry.maxBackoff ({})",
            spec.retry.initial_backoff, spec.retry.max_backoff
        ));
    }
    if let Some(rate) = &spec.rate_limit
        && rate.burst == Some(0)
    {
        problems.push("rateLimit.burst must be at least 1".to_owned());
    }
    if let Some(fallback) = &spec.fallback
        && fallback.channel.trim().is_empty()
    {
        problems.push("fallback.channel is empty".to_owned());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{MessageChannelSpec, QuietHours};

    fn channel(yaml: &str) -> MessageChannel {
        let spec: MessageChannelSpec = serde_yaml_ng::from_str(yaml).expect("spec");
        MessageChannel::new("sms", spec)
    }

    #[test]
    fn a_good_channel_has_no_problems() {
        let c = channel("{type: sms, providers: [{name: a, type: sandbox}]}");
        assert!(channel_problems(&c).is_empty());
    }

    #[test]
    fn channel_problems_are_explained() {
        let mut c = channel(
            "{type: sms, topic: {name: __consumer_offsets}, providers: [{name: a, type: sandbox}, {name: a, type: twilio}]}",
        );
        c.metadata.name = Some("x".repeat(64));
        let problems = channel_problems(&c);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("64 characters"));
        assert!(problems[1].contains("\"a\" is used twice"));
        assert!(problems[2].contains("reserved"));
    }

    #[test]
    fn policy_time_zone_and_backoff_are_checked() {
        let mut spec = DeliveryPolicySpec {
            quiet_hours: Some(QuietHours {
                start: "21:00".into(),
                end: "08:00".into(),
                timezone: "Asia/Seoul".into(),
            }),
            ..DeliveryPolicySpec::default()
        };
        assert!(policy_problems(&spec).is_empty());
        if let Some(q) = spec.quiet_hours.as_mut() {
            q.timezone = "Mars/Olympus".into();
        }
        spec.retry.initial_backoff = crate::resources::Duration::from_secs(600);
        let problems = policy_problems(&spec);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("Mars/Olympus"));
        assert!(problems[1].contains("initialBackoff (10m)"));
    }

    #[test]
    fn policy_times_burst_and_fallback_are_checked() {
        let spec: DeliveryPolicySpec = serde_yaml_ng::from_str(
            "{quietHours: {start: '25:00', end: '8', timezone: Asia/Seoul}, \
              rateLimit: {perSecond: 10, burst: 0}, fallback: {channel: ' '}}",
        )
        .expect("spec");
        assert_eq!(
            policy_problems(&spec),
            [
                "quietHours.start \"25:00\" is not HH:MM (e.g. 21:00)",
                "quietHours.end \"8\" is not HH:MM (e.g. 21:00)",
                "rateLimit.burst must be at least 1",
                "fallback.channel is empty",
            ]
        );
        assert!(policy_problems(&DeliveryPolicySpec::default()).is_empty());
    }
}

//! The event processor's Deployment (`ump-events`, installed by the chart) scaled from its consumer
//! group's lag on the events topic, with the workers' formula and scale-down stabilization.

use crate::error::Result;
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;
use crate::scaling::{Stabilizer, recommended_replicas};
use crate::settings::{FIELD_MANAGER, ProcessorScaling};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::future::Future;
use std::time::{Duration, Instant};
use ump_domain::resources::ScalingSpec;

/// The labels the chart gives the processor's Deployment.
pub const PROCESSOR_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/component", "events"),
    ("app.kubernetes.io/part-of", "ump"),
];

/// Whether `deployment` is labelled as the processor: the operator scales no other Deployment,
/// whatever name its settings give.
pub fn is_processor(deployment: &Deployment) -> bool {
    let labels = deployment.labels();
    PROCESSOR_LABELS
        .iter()
        .all(|(key, value)| labels.get(*key).is_some_and(|l| l == value))
}

/// The events topic as Kafka reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// The topic does not exist yet (the processor creates it when it starts): nothing waits.
    NoTopic,
    Lag {
        lag: i64,
        partitions: i32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Scale {
        from: i32,
        to: i32,
    },
    Steady(i32),
    /// No Deployment of that name: the processor is disabled or not installed yet.
    Absent,
    /// A Deployment of that name that is not labelled as the processor: never touched.
    NotTheProcessor,
    /// The lag could not be read: the processor keeps what it runs until it can.
    LagUnknown,
}

/// What to do with the processor's Deployment (pure, given the stabilizer's history and `now`).
pub fn decide(
    deployment: Option<&Deployment>,
    backlog: Option<Backlog>,
    scaling: &ScalingSpec,
    stabilizer: &mut Stabilizer,
    now: Instant,
) -> Decision {
    let Some(deployment) = deployment else {
        return Decision::Absent;
    };
    if !is_processor(deployment) {
        return Decision::NotTheProcessor;
    }
    let Some(backlog) = backlog else {
        return Decision::LagUnknown;
    };
    // The apiserver defaults a Deployment's replicas to 1.
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let recommended = match backlog {
        // The partition count only caps what lag adds: with no lag, any count keeps the minimum.
        Backlog::NoTopic => recommended_replicas(0, scaling, 1),
        Backlog::Lag { lag, partitions } => recommended_replicas(lag, scaling, partitions),
    };
    let to = stabilizer.stabilize(
        &deployment.name_any(),
        Some(current),
        recommended,
        scaling.scale_down_stabilization.as_std(),
        now,
    );
    if to == current {
        Decision::Steady(current)
    } else {
        Decision::Scale { from: current, to }
    }
}

/// Looks at the processor every `resync` until `shutdown` resolves. Runs only on the leader, with
/// the reconcilers.
pub async fn run(
    client: Client,
    kafka: KafkaAdmin,
    processor: ProcessorScaling,
    resync: Duration,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Deployment> = Api::namespaced(client, &processor.namespace);
    let mut stabilizer = Stabilizer::default();
    let mut last = None;
    tokio::pin!(shutdown);
    loop {
        match look(&api, &kafka, &processor, &mut stabilizer, &metrics).await {
            Ok(decision) => {
                // Said once per change, not every resync.
                if last != Some(decision) {
                    report(&processor, decision);
                }
                last = Some(decision);
            }
            Err(e) => {
                tracing::warn!(error = %e, deployment = %processor.deployment,
                    "scaling the event processor failed");
                last = None;
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

async fn look(
    api: &Api<Deployment>,
    kafka: &KafkaAdmin,
    processor: &ProcessorScaling,
    stabilizer: &mut Stabilizer,
    metrics: &Metrics,
) -> Result<Decision> {
    let deployment = api.get_opt(&processor.deployment).await?;
    // Kafka is asked only about a Deployment that may be scaled.
    let backlog = match deployment.as_ref().filter(|d| is_processor(d)) {
        Some(_) => backlog(kafka, processor).await,
        None => None,
    };
    let decision = decide(
        deployment.as_ref(),
        backlog,
        &processor.scaling,
        stabilizer,
        Instant::now(),
    );
    if let Decision::Scale { to, .. } = decision {
        let scale = serde_json::json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": processor.deployment, "namespace": processor.namespace},
            "spec": {"replicas": to},
        });
        metrics.api_write("Deployment", "scale");
        api.patch_scale(
            &processor.deployment,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&scale),
        )
        .await?;
    }
    Ok(decision)
}

async fn backlog(kafka: &KafkaAdmin, processor: &ProcessorScaling) -> Option<Backlog> {
    let read = async {
        let Some(topic) = kafka.observe(&processor.topic).await? else {
            return Ok(Backlog::NoTopic);
        };
        let lag = kafka
            .consumer_lag(&processor.topic, &processor.group, topic.partitions)
            .await?;
        Ok::<_, crate::error::Error>(Backlog::Lag {
            lag,
            partitions: topic.partitions,
        })
    };
    match read.await {
        Ok(backlog) => Some(backlog),
        Err(e) => {
            tracing::info!(error = %e, topic = %processor.topic, "event processor lag unavailable");
            None
        }
    }
}

fn report(processor: &ProcessorScaling, decision: Decision) {
    let deployment = format!("{}/{}", processor.namespace, processor.deployment);
    match decision {
        Decision::Scale { from, to } => {
            tracing::info!(%deployment, from, to, "scaled the event processor")
        }
        Decision::Steady(replicas) => {
            tracing::debug!(%deployment, replicas, "event processor replicas steady")
        }
        Decision::Absent => {
            tracing::info!(%deployment, "no event processor Deployment; nothing to scale")
        }
        Decision::NotTheProcessor => tracing::warn!(
            %deployment,
            "not scaling: the Deployment lacks the processor's labels \
             (app.kubernetes.io/component=events, app.kubernetes.io/part-of=ump)"
        ),
        Decision::LagUnknown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(labels: &[(&str, &str)], replicas: Option<i32>) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ump-events", "namespace": "ump"},
            "spec": {"selector": {}, "template": {}},
        }))
        .expect("deployment");
        d.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        if let Some(spec) = d.spec.as_mut() {
            spec.replicas = replicas;
        }
        d
    }

    fn processor(replicas: i32) -> Deployment {
        deployment(&PROCESSOR_LABELS, Some(replicas))
    }

    fn scaling(min: i32, max: i32, lag_per_replica: i64, window: u64) -> ScalingSpec {
        ScalingSpec {
            min_replicas: min,
            max_replicas: max,
            lag_per_replica,
            scale_down_stabilization: ump_domain::duration::Duration::from_secs(window),
        }
    }

    fn lag(lag: i64, partitions: i32) -> Option<Backlog> {
        Some(Backlog::Lag { lag, partitions })
    }

    #[test]
    fn only_the_labelled_processor_is_scaled() {
        let s = scaling(1, 8, 100, 60);
        let now = Instant::now();
        let mut st = Stabilizer::default();
        assert_eq!(
            decide(None, lag(10_000, 12), &s, &mut st, now),
            Decision::Absent
        );
        for labels in [
            &[][..],
            &[("app.kubernetes.io/component", "events")][..],
            &[
                ("app.kubernetes.io/component", "api"),
                ("app.kubernetes.io/part-of", "ump"),
            ][..],
        ] {
            let other = deployment(labels, Some(1));
            assert_eq!(
                decide(Some(&other), lag(10_000, 12), &s, &mut st, now),
                Decision::NotTheProcessor,
                "{labels:?}"
            );
        }
        assert_eq!(
            decide(Some(&processor(1)), lag(10_000, 12), &s, &mut st, now),
            Decision::Scale { from: 1, to: 8 }
        );
    }

    #[test]
    fn lag_scales_within_bounds_and_the_partition_count() {
        let s = scaling(2, 10, 1000, 60);
        let now = Instant::now();
        let cases = [
            (lag(0, 12), 2),
            (lag(2_500, 12), 3),
            (lag(1_000_000, 12), 10),
            (lag(1_000_000, 4), 4),
            // No topic yet: nothing waits, the minimum runs (one of them creates the topic).
            (Some(Backlog::NoTopic), 2),
        ];
        for (backlog, expected) in cases {
            // From one replica, so the recommendation shows at once (scaling up is immediate).
            let mut st = Stabilizer::default();
            let decision = decide(Some(&processor(1)), backlog, &s, &mut st, now);
            assert_eq!(
                decision,
                Decision::Scale {
                    from: 1,
                    to: expected
                },
                "{backlog:?}"
            );
        }
    }

    #[test]
    fn an_unknown_lag_leaves_the_replicas_alone() {
        let mut st = Stabilizer::default();
        let decision = decide(
            Some(&processor(5)),
            None,
            &scaling(1, 8, 100, 60),
            &mut st,
            Instant::now(),
        );
        assert_eq!(decision, Decision::LagUnknown);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let s = scaling(1, 8, 100, 60);
        let t0 = Instant::now();
        let mut st = Stabilizer::default();
        assert_eq!(
            decide(Some(&processor(1)), lag(450, 12), &s, &mut st, t0),
            Decision::Scale { from: 1, to: 5 }
        );
        let drained = lag(0, 12);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            decide(Some(&processor(5)), drained, &s, &mut st, at(30)),
            Decision::Steady(5)
        );
        assert_eq!(
            decide(Some(&processor(5)), drained, &s, &mut st, at(61)),
            Decision::Scale { from: 5, to: 1 }
        );
    }

    #[test]
    fn a_deployment_without_replicas_counts_as_one() {
        let mut st = Stabilizer::default();
        let unset = deployment(&PROCESSOR_LABELS, None);
        assert_eq!(
            decide(
                Some(&unset),
                lag(0, 12),
                &scaling(2, 4, 100, 60),
                &mut st,
                Instant::now()
            ),
            Decision::Scale { from: 1, to: 2 }
        );
    }
}

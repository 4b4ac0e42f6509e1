//! The `DeliveryPolicy` reconciler: checks what the schema cannot (time zone, backoff order) and
//! reports it as the `Valid` condition. Channels that use a policy are re-reconciled by the channel
//! controller when it changes; this one only keeps the policy's own status.

use crate::conditions::{self, Observation, VALID};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::settings::FIELD_MANAGER;
use crate::status;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use ump_domain::resources::{DeliveryPolicy, DeliveryPolicyStatus};
use ump_domain::validate;

const CONTROLLER: &str = "policy";

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
}

/// The `Valid` condition of a policy spec (pure).
pub fn validity(policy: &DeliveryPolicy) -> Observation {
    let problems = validate::policy_problems(&policy.spec);
    if problems.is_empty() {
        Observation::truth(VALID, "Valid", "the policy can be used")
    } else {
        Observation::failure(VALID, "InvalidSpec", problems.join("; "))
    }
}

pub async fn reconcile(
    object: Arc<DeserializeGuard<DeliveryPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let policy = match &object.0 {
        Ok(policy) => policy,
        Err(invalid) => {
            return status::report_invalid::<DeliveryPolicy>(
                &ctx.client,
                &ctx.recorder,
                &ctx.metrics,
                &object,
                "",
                &invalid.error,
            )
            .await;
        }
    };
    let namespace = policy
        .namespace()
        .ok_or_else(|| Error::NoNamespace(policy.name_any()))?;
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.meta().generation;
    let next = DeliveryPolicyStatus {
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &[validity(policy)],
            generation,
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    if next.observed_generation == previous.observed_generation
        && conditions::same_ignoring_timestamps(&next.conditions, &previous.conditions)
    {
        return Ok(Action::await_change());
    }
    let api: Api<DeliveryPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": DeliveryPolicy::api_version(&()),
        "kind": DeliveryPolicy::kind(&()),
        "status": next,
    });
    ctx.metrics.api_write("DeliveryPolicy", "status");
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(Action::await_change())
}

pub fn error_policy(
    _object: Arc<DeserializeGuard<DeliveryPolicy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(%error, "policy reconcile failed");
    ctx.metrics
        .reconcile_failed(CONTROLLER, error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_names_the_problem() {
        let good: DeliveryPolicy = serde_yaml_ng::from_str(
            "apiVersion: ump.dev/v1alpha1\nkind: DeliveryPolicy\nmetadata: {name: p}\nspec: {}\n",
        )
        .expect("policy");
        assert!(validity(&good).is_true());
        let bad: DeliveryPolicy = serde_yaml_ng::from_str(
            "apiVersion: ump.dev/v1alpha1\nkind: DeliveryPolicy\nmetadata: {name: p}\n\
             spec: {quietHours: {start: '22:00', end: '07:00', timezone: Nowhere/City}}\n",
        )
        .expect("policy");
        let v = validity(&bad);
        assert_eq!((v.status, v.reason), ("False", "InvalidSpec"));
        assert!(v.message.contains("Nowhere/City"));
    }
}

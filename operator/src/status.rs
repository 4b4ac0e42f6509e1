//! Status of an object whose spec cannot be read (it no longer deserializes into the Rust type,
//! e.g. after a schema change): the error becomes a condition on that object instead of a broken
//! watch. Its status is read raw, so an unchanged error is not written again.

use crate::conditions::{self, Observation};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::settings::FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};

/// Why `object` (the raw JSON of the whole object) does not fit `K`, with the path of the field
/// at fault (`spec.retry.maxAttempts: invalid type …`): the error the watch gave names no field.
fn located<K: serde::de::DeserializeOwned>(object: &serde_json::Value) -> Option<String> {
    match serde_path_to_error::deserialize::<_, K>(object) {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {}", e.path(), e.inner())),
    }
}

/// Reports `error` as `condition_type=False` (reason `InvalidSpec`) on the object. A deleting
/// object loses `finalizer` (if it carries it): its spec cannot say what cleanup it wanted, so the
/// safe choice — keeping external state such as a topic — is made and announced in an event.
pub async fn report_invalid<K>(
    client: &Client,
    recorder: &Recorder,
    metrics: &Metrics,
    object: &DeserializeGuard<K>,
    finalizer: &str,
    error: &str,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    let reference = object.object_ref(&());

    if object.meta().deletion_timestamp.is_some() {
        let finalizers = object.finalizers();
        if finalizers.iter().any(|f| f == finalizer) {
            let remaining: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
            // The resourceVersion makes this a compare-and-swap: never drop someone else's entry.
            let patch = serde_json::json!({"metadata": {
                "finalizers": remaining,
                "resourceVersion": object.resource_version(),
            }});
            metrics.api_write(&K::kind(&()), "finalizer");
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            metrics.api_write("Event", "create");
            let event = Event {
                type_: EventType::Warning,
                reason: "CleanupSkipped".to_owned(),
                note: Some(format!(
                    "the spec cannot be read ({error}); external state such as the Kafka topic is kept"
                )),
                action: "Cleanup".to_owned(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish event");
            }
        }
        return Ok(Action::await_change());
    }

    let condition_type = if K::kind(&()) == "DeliveryPolicy" {
        conditions::VALID
    } else {
        conditions::READY
    };
    let raw = api.get(&name).await?;
    let previous: Vec<Condition> = raw
        .data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let previous_generation = raw
        .data
        .pointer("/status/observedGeneration")
        .and_then(serde_json::Value::as_i64);
    let observation = Observation::failure(
        condition_type,
        "InvalidSpec",
        format!(
            "the spec cannot be read: {}",
            serde_json::to_value(&raw)
                .ok()
                .and_then(|object| located::<K>(&object))
                .unwrap_or_else(|| error.to_owned())
        ),
    );
    let generation = object.meta().generation;
    let merged = conditions::merge(
        &previous,
        std::slice::from_ref(&observation),
        generation,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if previous_generation == generation && conditions::same_ignoring_timestamps(&merged, &previous)
    {
        return Ok(Action::await_change());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": {"observedGeneration": generation, "conditions": merged},
    });
    metrics.api_write(&K::kind(&()), "status");
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    metrics.api_write("Event", "create");
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".to_owned(),
        note: Some(observation.message),
        action: "Validate".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "could not publish event");
    }
    Ok(Action::await_change())
}

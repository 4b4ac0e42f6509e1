//! Wires the watches, caches, both reconcilers and the event processor's scaling together and runs
//! them until shutdown. Every cache drops `managedFields` (the bulk of a stored object) so a
//! thousand channels stay cheap.

use crate::builders::MANAGED_BY;
use crate::channel;
use crate::error::{Error, Result};
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;
use crate::policy;
use crate::processor;
use crate::scaling::Stabilizer;
use crate::settings::{FIELD_MANAGER, Settings};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use ump_domain::resources::{DeliveryPolicy, MessageChannel};
use ump_kafka::KafkaSettings;

fn api<K>(client: &Client, settings: &Settings) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &settings.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A watch of `K` feeding a cache, with `managedFields` stripped before anything is stored.
fn cached_watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Runs the channel and policy controllers until `shutdown` resolves, then lets in-flight
/// reconciles finish.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let kafka = KafkaAdmin::new(&KafkaSettings::from_env(settings.kafka_bootstrap.clone()))?;
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));

    let (config_maps, config_map_events) =
        cached_watch(api::<ConfigMap>(&client, &settings), managed.clone());
    let (deployments, deployment_events) =
        cached_watch(api::<Deployment>(&client, &settings), managed);
    let (policies, policy_events) = cached_watch(
        api::<DeserializeGuard<DeliveryPolicy>>(&client, &settings),
        watcher::Config::default(),
    );
    let (channels, channel_events) = cached_watch(
        api::<DeserializeGuard<MessageChannel>>(&client, &settings),
        watcher::Config::default(),
    );

    // Fan the shutdown out to both controllers.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let processor = {
        let scaling = settings
            .processor
            .clone()
            .map(|p| (p, kafka.clone(), client.clone(), metrics.clone()));
        let resync = settings.resync;
        let stopped = until_stopped(stopped.clone());
        async move {
            if let Some((processor, kafka, client, metrics)) = scaling {
                processor::run(client, kafka, processor, resync, metrics, stopped).await;
            }
        }
    };
    let channel_ctx = Arc::new(channel::Context {
        client: client.clone(),
        settings: settings.clone(),
        kafka,
        recorder: recorder.clone(),
        metrics: metrics.clone(),
        stabilizer: Mutex::new(Stabilizer::default()),
        config_maps,
        deployments,
        policies,
    });
    let channel_index = channels.clone();
    let channel_controller = Controller::for_stream(channel_events, channels.clone())
    .with_config(controller::Config::default().concurrency(settings.concurrency))
    .owns_stream(config_map_events)
    .owns_stream(deployment_events)
    .watches_stream(policy_events, move |policy: DeserializeGuard<DeliveryPolicy>| {
        let namespace = policy.namespace();
        let name = policy.name_any();
        channel_index
            .state()
            .into_iter()
            .filter(|c| {
                c.namespace() == namespace
                    && matches!(&c.0, Ok(ch) if ch.spec.policy_ref.as_deref() == Some(name.as_str()))
            })
            .map(|c| ObjectRef::from_obj(&*c))
            .collect::<Vec<_>>()
    })
    .graceful_shutdown_on(until_stopped(stopped.clone()))
    .run(channel::reconcile, channel::error_policy, channel_ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "channel controller");
        }
    });

    let policy_ctx = Arc::new(policy::Context {
        client: client.clone(),
        recorder,
        metrics: metrics.clone(),
    });
    let policy_controller = Controller::new(
        api::<DeserializeGuard<DeliveryPolicy>>(&client, &settings),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(until_stopped(stopped.clone()))
    .run(policy::reconcile, policy::error_policy, policy_ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "policy controller");
        }
    });

    let ready = {
        let metrics = metrics.clone();
        async move {
            if channels.wait_until_ready().await.is_ok() {
                metrics.set_ready(true);
                tracing::info!("caches synced; reconciling");
            }
        }
    };
    tokio::join!(channel_controller, policy_controller, processor, ready);
    metrics.set_ready(false);
    Ok::<(), Error>(())
}

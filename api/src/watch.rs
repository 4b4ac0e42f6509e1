//! Cluster mode without restarts: the API keeps its channel registry in step with the
//! `MessageChannel` and `DeliveryPolicy` objects of its namespace, so a channel created (or a
//! policy or template changed) with `kubectl apply` is usable at once.

use arc_swap::ArcSwap;
use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus::IntGaugeVec;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use ump_core::config::{ChannelRegistry, ConfigError};
use ump_core::resources::{DeliveryPolicy, MessageChannel};

/// Watches `namespace` until the process ends, replacing `registry` on every change. `synced`
/// turns true once both kinds have been listed (the API is ready only then); `invalid` counts
/// the channels kept on their last valid configuration and those left out.
///
/// Channels and policies come in two watch streams, and nothing orders one kind's changes
/// against the other's: a channel changed just after its policy turned invalid may be seen
/// before the policy, and then applied with the policy as it was.
pub async fn keep_registry_in_step(
    client: kube::Client,
    namespace: String,
    registry: Arc<ArcSwap<ChannelRegistry>>,
    synced: Arc<AtomicBool>,
    invalid: IntGaugeVec,
) {
    let channels_api: Api<MessageChannel> = Api::namespaced(client.clone(), &namespace);
    let policies_api: Api<DeliveryPolicy> = Api::namespaced(client, &namespace);
    let (channels, channel_writer) = reflector::store();
    let (policies, policy_writer) = reflector::store();
    // Both watchers retry with backoff on their own; an error is logged and the last good
    // registry stays in place.
    let channel_events = reflector::reflector(
        channel_writer,
        watcher(channels_api, watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| event.map(|_| ()).map_err(|e| e.to_string()));
    let policy_events = reflector::reflector(
        policy_writer,
        watcher(policies_api, watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| event.map(|_| ()).map_err(|e| e.to_string()));
    let mut events = std::pin::pin!(futures::stream::select(channel_events, policy_events));
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching channels and policies");
            continue;
        }
        let (Some(()), Some(())) = (ready(&channels), ready(&policies)) else {
            continue;
        };
        let (mut fresh, errors) =
            ChannelRegistry::resolve_valid(cloned(&channels), cloned(&policies));
        let kept = fresh.keep_last_valid(&registry.load(), &errors);
        let left_out: BTreeSet<&str> = errors
            .iter()
            .filter_map(ConfigError::channel)
            .filter(|c| fresh.get(c).is_none())
            .collect();
        invalid.with_label_values(&["kept"]).set(gauge(kept.len()));
        invalid
            .with_label_values(&["left_out"])
            .set(gauge(left_out.len()));
        for error in &errors {
            match error.channel().filter(|c| kept.iter().any(|k| k == c)) {
                Some(_) => tracing::warn!(%error, "channel keeps its last valid configuration"),
                None => tracing::warn!(%error, "channel left out"),
            }
        }
        let names: Vec<String> = fresh.names().map(str::to_owned).collect();
        let changed = names
            != registry
                .load()
                .names()
                .map(str::to_owned)
                .collect::<Vec<_>>();
        registry.store(Arc::new(fresh));
        if changed {
            tracing::info!(channels = ?names, "channels updated");
        }
        synced.store(true, Ordering::Release);
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn ready<K: kube::Resource + Clone + 'static>(store: &Store<K>) -> Option<()>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // A store answers only after its first complete list.
    futures::FutureExt::now_or_never(store.wait_until_ready()).and_then(Result::ok)
}

fn cloned<K: kube::Resource + Clone + 'static>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .map(|object| object.as_ref().clone())
        .collect()
}

//! The all-in-one mode: the API and the worker in one process on one SQLite file, no
//! Kafka, Redis, MySQL or Kubernetes. The API contract, validation and statuses are the cluster
//! mode's (the same router and handlers); only the ports differ:
//!
//! | port | cluster mode | all-in-one mode |
//! |---|---|---|
//! | queue | Kafka topic / ActiveMQ queue per channel | SQLite `queue` table (bulk and realtime queues per channel) |
//! | history, keys | MySQL | SQLite |
//! | dedupe, Idempotency-Key | Redis | SQLite `expiring_keys` |
//! | rate limit | Redis GCRA | in-process GCRA |

use crate::auth::KeyCache;
use crate::cluster::bootstrap_key;
use crate::idempotency::SqliteIdempotency;
use crate::metrics::ApiMetrics;
use crate::problem::Problem;
use crate::{AppState, ReadinessCheck};
use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ump_core::audience_sqlite::SqliteEventLog;
use ump_core::config::ChannelRegistry;
use ump_core::keys::{ApiKeyStore, DEFAULT_TENANT, generate_key};
use ump_core::queue::MessageQueue;
use ump_core::sqlite::{DataDirLock, SqliteQueue, SqliteStore, Wakers};
use ump_events::EventMetrics;
use ump_worker::all_in_one::{LocalConsumer, LocalRateLimiter, SqliteDedupe};
use ump_worker::fallback::FallbackRoute;
use ump_worker::metrics::{DeliveryPath, WorkerMetrics};
use ump_worker::pipeline::PipelineBuilder;
use ump_worker::providers::ProviderContext;

/// The example channels (email, sms, push, alimtalk, friendtalk on the sandbox provider), used when no
/// channel folder is configured and `examples/channels` is not at hand.
const EXAMPLE_CHANNELS: &str = include_str!("../../examples/channels/channels.yaml");
/// The example journeys, active on the first start.
const EXAMPLE_JOURNEYS: &str = include_str!("../../examples/journeys/journeys.yaml");

/// Settings of the all-in-one mode (environment variables of the same names, upper-cased).
#[derive(Clone, Debug, clap::Args)]
pub struct AllInOneSettings {
    /// Address of the API and dashboard.
    #[arg(long, env = "UMP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folder of the SQLite file (`ump.db`) and the sandbox outbox (`outbox.jsonl`).
    #[arg(long, env = "UMP_DATA_DIR", default_value = "ump-data")]
    pub data_dir: PathBuf,
    /// Folder of MessageChannel / DeliveryPolicy YAML. Default: `examples/channels` when it
    /// exists (a clone of the repository), else the same examples written to `<data dir>/channels`.
    #[arg(long, env = "UMP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Where provider credentials live: `<dir>/<secretRef.name>/<key>`.
    #[arg(long, env = "UMP_SECRETS_DIR", default_value = "secrets")]
    pub secrets_dir: PathBuf,
    /// Messages taken from a queue at a time.
    #[arg(long, env = "UMP_WORKER_BATCH", default_value_t = 256)]
    pub batch: u32,
    /// Recipients delivered in parallel within a batch.
    #[arg(long, env = "UMP_WORKER_LANES", default_value_t = 64)]
    pub lanes: usize,
    #[command(flatten)]
    pub key_rate: crate::auth::KeyRateSettings,
    #[command(flatten)]
    pub requests: crate::RequestSettings,
    #[command(flatten)]
    pub webhooks: ump_worker::webhooks::WebhookSettings,
}

impl AllInOneSettings {
    pub fn database(&self) -> PathBuf {
        self.data_dir.join("ump.db")
    }

    pub fn outbox(&self) -> PathBuf {
        self.data_dir.join("outbox.jsonl")
    }

    /// The channel folder to read, materialising the built-in examples when needed.
    fn channel_folder(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.config_dir {
            return Ok(dir.clone());
        }
        let examples = PathBuf::from("examples/channels");
        if examples.is_dir() {
            return Ok(examples);
        }
        let dir = self.data_dir.join("channels");
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("channels.yaml"), EXAMPLE_CHANNELS)
                .with_context(|| format!("writing the example channels to {}", dir.display()))?;
        }
        Ok(dir)
    }
}

/// Makes sure a key exists: `UMP_BOOTSTRAP_API_KEY` when set; otherwise, on a first start (no
/// active key), a generated key for the default tenant, returned so it can be shown once.
async fn first_key(store: &SqliteStore) -> anyhow::Result<Option<String>> {
    bootstrap_key(store, std::env::var_os("UMP_BOOTSTRAP_API_KEY")).await?;
    if !store.active().await.context("reading API keys")?.is_empty() {
        return Ok(None);
    }
    let (key_id, key) = generate_key();
    store
        .put(&key_id, DEFAULT_TENANT, &key, "generated on first start")
        .await
        .context("storing the generated API key")?;
    Ok(Some(key))
}

/// Runs UMP all-in-one until `shutdown` fires; the batches in hand are recorded before it returns.
pub async fn run(settings: AllInOneSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&settings.data_dir)?;
    let fresh = !settings.database().exists();
    let store = SqliteStore::open(&settings.database()).await?;
    let events_wake = Arc::new(tokio::sync::Notify::new());
    if fresh {
        example_customer(&store).await?;
        example_catalog(&store).await?;
        example_journeys(&store).await?;
        example_audience(
            &store,
            &SqliteEventLog::new(store.clone(), Arc::clone(&events_wake)),
        )
        .await?;
    }
    store
        .release_broadcasts()
        .await
        .context("resuming broadcasts")?;
    let folder = settings.channel_folder()?;
    let channels = Arc::new(
        ChannelRegistry::load_dir(&folder)
            .with_context(|| format!("loading channels from {}", folder.display()))?,
    );
    let generated = first_key(&store).await?;

    let registry = prometheus::Registry::new();
    let worker_metrics = WorkerMetrics::new(registry.clone())?;
    let wakers = Wakers::default();
    let queue: Arc<dyn MessageQueue> = Arc::new(SqliteQueue::new(store.clone(), wakers.clone()));
    let keys = KeyCache::new(Arc::new(store.clone()));
    keys.refresh().await.context("loading API keys")?;
    keys.limit_rate(settings.key_rate);
    keys.spawn_refresh(crate::auth::REFRESH_EVERY);
    let readiness: Vec<(&'static str, ReadinessCheck)> = vec![("sqlite", {
        let queue = Arc::clone(&queue);
        Arc::new(move || {
            let queue = Arc::clone(&queue);
            Box::pin(async move { queue.ready().await })
        })
    })];
    let state = AppState {
        registry: Arc::new(ArcSwap::new(Arc::clone(&channels))),
        bulk: Arc::clone(&queue),
        realtime: Some(queue),
        history: Arc::new(store.clone()),
        profiles: Arc::new(store.clone()),
        events: Arc::new(SqliteEventLog::new(store.clone(), Arc::clone(&events_wake))),
        segments: Arc::new(store.clone()),
        broadcasts: Arc::new(store.clone()),
        journeys: Arc::new(ump_core::journeys::SqliteJourneys::new(store.clone())),
        catalog: Arc::new(ump_core::catalog::SqliteCatalog::new(store.clone())),
        items: Arc::new(ump_core::recommendations::SqliteItemModel::new(
            store.clone(),
        )),
        journey_limiter: Arc::new(ump_worker::all_in_one::LocalRateLimiter::new()),
        keys: Arc::clone(&keys),
        idempotency: Arc::new(SqliteIdempotency::new(store.clone())),
        metrics: ApiMetrics::new(registry.clone())?,
        readiness,
        secrets_dir: settings.secrets_dir.clone(),
        body_timeout: settings.requests.body_timeout.as_std(),
        webhooks: Arc::new(store.clone()),
        webhook_rules: settings.webhooks.rules(),
    };

    let workers = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // One process owns the file (the lock above): a `sending` mark left by an earlier process is
    // from a process that is gone, so it never needs to be waited out.
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let dedupe = Arc::new(SqliteDedupe::new(store.clone(), instance, Duration::ZERO));
    let outbox = settings.outbox();
    let builder = PipelineBuilder {
        path: DeliveryPath::AllInOne,
        limiter: Arc::new(LocalRateLimiter::new()),
        metrics: &worker_metrics,
        providers: ProviderContext {
            secrets_dir: &settings.secrets_dir,
            sandbox_outbox: &outbox,
        },
        lanes: settings.lanes,
        busy_retry: Duration::from_secs(1),
    };
    for channel in channels.channels() {
        let name = channel.name();
        channel.warn_if_policy_missing();
        // The fallback channel's bulk queue is its topic name, as in the cluster mode.
        let pipeline = builder
            .build(
                channel,
                dedupe.clone(),
                FallbackRoute::of(channel, &channels),
            )
            .with_context(|| format!("channel {name}"))?;
        let pipeline = Arc::new(pipeline);
        for queue in [
            channel.resource.topic_name(),
            channel.resource.realtime_queue(),
        ] {
            let consumer = LocalConsumer {
                pipeline: Arc::clone(&pipeline),
                store: store.clone(),
                wake: wakers.of(&queue),
                queue,
                batch: settings.batch.max(1),
                metrics: worker_metrics.clone(),
            };
            tasks.spawn(consumer.run(workers.clone()));
        }
    }
    tasks.spawn(
        ump_events::all_in_one::LocalProcessor {
            store: store.clone(),
            wake: events_wake,
            metrics: EventMetrics::new(registry.clone())?,
        }
        .run(workers.clone()),
    );
    tasks.spawn(ump_events::items::run(
        Arc::new(ump_core::recommendations::SqliteItemModel::new(
            store.clone(),
        )),
        ump_events::items::ItemMetrics::new(&registry)?,
        workers.clone(),
    ));
    tasks.spawn(crate::broadcast::run_senders(
        state.clone(),
        workers.clone(),
    ));
    tasks.spawn(crate::journeys::run_relay(
        state.clone(),
        1,
        workers.clone(),
    ));
    tasks.spawn(ump_events::sample_sizes(
        Arc::new(store.clone()),
        workers.clone(),
    ));
    tasks.spawn(sweep_expired_keys(store.clone(), workers.clone()));
    if settings.webhooks.dispatch {
        let (webhooks, cancel) = (settings.webhooks.clone(), workers.clone());
        let store = Arc::new(store.clone());
        let webhook_metrics = ump_worker::webhooks::WebhookMetrics::new(&registry)?;
        tasks.spawn(async move {
            if let Err(e) =
                ump_worker::webhooks::run(store, webhooks, webhook_metrics, cancel).await
            {
                tracing::error!(error = %e, "the webhook dispatcher stopped");
            }
        });
    }
    tasks.spawn(watch_parking(
        store.clone(),
        channels
            .channels()
            .flat_map(|c| [c.resource.topic_name(), c.resource.realtime_queue()])
            .collect(),
        worker_metrics.clone(),
        workers.clone(),
    ));

    let app = crate::router(state).merge(outbox_routes(Arc::clone(&keys), outbox));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    announce(
        &settings,
        &folder,
        channels.channels().count(),
        generated.as_deref(),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    workers.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Tells the user where UMP is and, on a first start, the key it generated. The key goes to
/// stdout once, never into the logs.
fn announce(settings: &AllInOneSettings, folder: &Path, channels: usize, key: Option<&str>) {
    let host = if settings.listen.ip().is_unspecified() || settings.listen.ip().is_loopback() {
        format!("localhost:{}", settings.listen.port())
    } else {
        settings.listen.to_string()
    };
    tracing::info!(listen = %settings.listen, data = %settings.data_dir.display(),
        channels, folder = %folder.display(), "UMP all-in-one running");
    let mut banner = format!(
        "\nUMP all-in-one is running.\n  API and dashboard: http://{host}/\n  \
         data: {}   channels: {} ({channels})\n  \
         an example customer: example-kim (the dashboard's Customers tab, GET /v1/users/example-kim)\n  \
         example segments: GET /v1/segments (vip, browsers, sms-marketing, vip-buyers)\n  \
         example journeys: GET /v1/journeys (viewed-not-bought, vip-discount)\n  \
         an example catalog: GET /v1/catalog/items (sku-1001, sku-2002, ...)\n  \
         recommendations: GET /v1/users/example-kim/recommendations?strategy=similar_items\n",
        settings.data_dir.display(),
        folder.display()
    );
    match key {
        Some(key) => banner.push_str(&format!(
            "\n  Your API key (shown once; only its hash is stored): {key}\n  \
             Dashboard, signed in: http://{host}/#key={key}\n  \
             Send a message:\n    curl -s http://{host}/v1/messages \\\n      \
             -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n      \
             -d '{{\"channel\":\"sms\",\"to\":\"+821012345678\",\"body\":\"Hello from UMP\"}}'\n"
        )),
        None => banner.push_str(
            "  API keys: the one printed on the first start, UMP_BOOTSTRAP_API_KEY, or\n  \
             `ump keys create --tenant default` (run beside this data folder).\n",
        ),
    }
    println!("{banner}");
}

/// The person a newcomer finds in the dashboard's Customers view (and at `GET
/// /v1/users/example-kim`) on the first start: a phone, an email, and the consents of a sign-up
/// form.
async fn example_customer(store: &SqliteStore) -> anyhow::Result<()> {
    use ump_automation::profile::{Profile, ProfileUpdate};
    use ump_core::profiles::ProfileStore;
    let update: ProfileUpdate = serde_json::from_value(serde_json::json!({
        "traits": {"name": "김민수", "tier": "vip"},
        "contacts": {"phone": "+821012345678", "email": "minsu.kim@example.com"},
        "locale": "ko",
        "timezone": "Asia/Seoul",
        "consents": [
            {"purpose": "marketing", "channel": "sms", "granted": true, "source": "example: sign-up form"},
            {"purpose": "marketing", "channel": "email", "granted": true, "source": "example: sign-up form"},
            {"purpose": "marketing", "channel": "kakao", "granted": true, "source": "example: sign-up form"},
            {"purpose": "marketing_night", "channel": "sms", "granted": false, "source": "example: sign-up form"},
        ],
    }))
    .context("the example profile")?;
    let mut profile = Profile {
        user_id: "example-kim".into(),
        ..Profile::default()
    };
    profile
        .apply(update, chrono::Utc::now())
        .map_err(|e| anyhow::anyhow!("the example profile: {e:?}"))?;
    store
        .save_profile(DEFAULT_TENANT, &profile)
        .await
        .context("storing the example profile")
}

/// The products a newcomer finds on the first start (`GET /v1/catalog/items`): those the example
/// events name, and a few more in their categories.
async fn example_catalog(store: &SqliteStore) -> anyhow::Result<()> {
    use ump_core::catalog::CatalogStore;
    let items: Vec<ump_automation::recommend::CatalogItem> = serde_json::from_value(serde_json::json!([
        {"id": "sku-1001", "name": "Wireless earbuds", "price": 89000, "currency": "KRW",
         "url": "https://shop.example/p/sku-1001", "category": "audio"},
        {"id": "sku-1002", "name": "Over-ear headphones", "price": 159000, "currency": "KRW",
         "url": "https://shop.example/p/sku-1002", "category": "audio"},
        {"id": "sku-2002", "name": "Phone case", "price": 15000, "currency": "KRW",
         "url": "https://shop.example/p/sku-2002", "category": "accessories"},
        {"id": "sku-2003", "name": "Screen protector", "price": 9000, "currency": "KRW",
         "url": "https://shop.example/p/sku-2003", "category": "accessories", "in_stock": false},
    ]))
    .context("the example catalog")?;
    ump_core::catalog::SqliteCatalog::new(store.clone())
        .put_items(DEFAULT_TENANT, &items, chrono::Utc::now())
        .await
        .map_err(|e| anyhow::anyhow!("storing the example catalog: {e:?}"))?;
    Ok(())
}

/// The journeys a newcomer finds on the first start, active (`examples/journeys`). The example
/// events are older than the journeys, so they enter nobody: a first start sends nothing on its
/// own (the README shows the events that do).
async fn example_journeys(store: &SqliteStore) -> anyhow::Result<()> {
    let journeys = crate::journeys::from_yaml(EXAMPLE_JOURNEYS)
        .map_err(|e| anyhow::anyhow!("the example journeys: {e}"))?;
    crate::journeys::apply(
        &ump_core::journeys::SqliteJourneys::new(store.clone()),
        DEFAULT_TENANT,
        journeys,
        true,
    )
    .await
    .map_err(|e| anyhow::anyhow!("storing the example journeys: {e}"))?;
    Ok(())
}

/// The segments and events a newcomer finds on the first start: example-kim viewed two products
/// and bought one, and is in the segments that describe.
async fn example_audience(store: &SqliteStore, log: &SqliteEventLog) -> anyhow::Result<()> {
    use ump_automation::event::EventInput;
    use ump_core::audience::{EventLog, SegmentStore};
    let segments = serde_json::json!([
        {"id": "vip", "name": "VIP customers", "condition": {"trait": {"path": "tier", "equals": "vip"}}},
        {"id": "browsers", "name": "Viewed at least two products in the last 7 days",
         "condition": {"performed": {"event": "product_viewed", "at_least": 2, "within": "7d"}}},
        {"id": "sms-marketing", "name": "Agreed to SMS advertising",
         "condition": {"consent": {"channel": "sms", "purpose": "marketing"}}},
        {"id": "vip-buyers", "name": "VIP customers who bought this month",
         "condition": {"all": [{"in_segment": "vip"},
                               {"performed": {"event": "purchase", "within": "30d"}}]}},
    ]);
    let now = chrono::Utc::now();
    for segment in serde_json::from_value::<Vec<ump_automation::segment::Segment>>(segments)
        .context("the example segments")?
    {
        store
            .put_segment(DEFAULT_TENANT, segment, now)
            .await
            .map_err(|e| anyhow::anyhow!("storing the example segments: {e:?}"))?;
    }
    let minutes_ago = |m: i64| (now - chrono::Duration::minutes(m)).to_rfc3339();
    let events = serde_json::json!([
        {"user_id": "example-kim", "event": "product_viewed", "timestamp": minutes_ago(30),
         "properties": {"item_id": "sku-1001", "name": "Wireless earbuds", "price": 89000}},
        {"user_id": "example-kim", "event": "product_viewed", "timestamp": minutes_ago(20),
         "properties": {"item_id": "sku-2002", "name": "Phone case", "price": 15000}},
        {"user_id": "example-kim", "event": "purchase", "timestamp": minutes_ago(10),
         "properties": {"item_id": "sku-2002", "price": 15000}},
        // Another shopper who viewed the earbuds and headphones: what makes the headphones
        // similar to the earbuds for example-kim's `similar_items`.
        {"user_id": "example-lee", "event": "product_viewed", "timestamp": minutes_ago(25),
         "properties": {"item_id": "sku-1001"}},
        {"user_id": "example-lee", "event": "product_viewed", "timestamp": minutes_ago(24),
         "properties": {"item_id": "sku-1002"}},
    ]);
    let queued = serde_json::from_value::<Vec<EventInput>>(events)
        .context("the example events")?
        .into_iter()
        .map(|e| {
            e.check("", now)
                .map_err(|e| anyhow::anyhow!("the example events: {e:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    log.append(DEFAULT_TENANT, &queued)
        .await
        .context("storing the example events")
}

/// Removes expired dedupe and Idempotency-Key records now and then.
async fn sweep_expired_keys(store: SqliteStore, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(e) = store.sweep_expired(chrono::Utc::now()).await {
            tracing::warn!(error = %e, "sweeping expired keys failed");
        }
    }
}

/// Keeps the parking metrics (`ump_parked_overdue_messages`) current, as the cluster mode's
/// scheduler does.
async fn watch_parking(
    store: SqliteStore,
    queues: Vec<String>,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) {
    loop {
        ump_worker::consumer::sweep_parking(&store, &queues, &metrics).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ump_worker::consumer::SWEEP_EVERY) => {}
        }
    }
}

#[derive(Clone)]
struct OutboxState {
    keys: Arc<KeyCache>,
    path: PathBuf,
}

/// What the sandbox provider recorded, as `GET /v1/outbox` shows it.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct OutboxItem {
    pub id: String,
    pub channel: String,
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub provider: String,
    pub at: String,
    /// `marketing` for advertising (what FriendTalk's ad flag would carry); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing)]
    pub tenant: String,
}

#[derive(Debug, Serialize)]
struct OutboxPage {
    items: Vec<OutboxItem>,
}

#[derive(Debug, Deserialize)]
struct OutboxQuery {
    limit: Option<String>,
}

fn outbox_routes(keys: Arc<KeyCache>, path: PathBuf) -> axum::Router {
    axum::Router::new()
        .route("/v1/outbox", get(outbox))
        .with_state(OutboxState { keys, path })
}

/// How much of the end of the outbox file is read: the newest messages are at the end.
const OUTBOX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// `GET /v1/outbox?limit=N`: the newest messages the sandbox provider captured for the caller's
/// tenant (all-in-one mode only), rendered as they would have been sent.
async fn outbox(
    State(state): State<OutboxState>,
    headers: HeaderMap,
    query: Result<Query<OutboxQuery>, QueryRejection>,
) -> Response {
    let tenant = match state.keys.authenticate(&headers).await {
        Ok(tenant) => tenant,
        Err(problem) => return problem.into_response(),
    };
    let Ok(Query(query)) = query else {
        return Problem::bad_query("limit", "give it once, as an integer from 1 to 500")
            .into_response();
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n @ 1..=500)) => n,
        Some(_) => {
            return Problem::bad_query("limit", "must be an integer from 1 to 500").into_response();
        }
    };
    let path = state.path.clone();
    let read = tokio::task::spawn_blocking(move || read_outbox(&path, &tenant.0, limit)).await;
    match read {
        Ok(Ok(items)) => Json(OutboxPage { items }).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the sandbox outbox failed");
            Problem::unavailable("the sandbox outbox is unreadable", 5).into_response()
        }
        Err(e) => Problem::internal(e.to_string()).into_response(),
    }
}

fn read_outbox(path: &Path, tenant: &str, limit: usize) -> std::io::Result<Vec<OutboxItem>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(OUTBOX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
    if start > 0 && !lines.is_empty() {
        // The first line is cut.
        lines.remove(0);
    }
    Ok(lines
        .into_iter()
        .rev()
        .filter_map(|line| serde_json::from_slice::<OutboxItem>(line).ok())
        .filter(|item| item.tenant == tenant)
        .take(limit)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_shows_the_newest_lines_of_the_tenant_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let line = |id: &str, tenant: &str| {
            serde_json::json!({"id": id, "tenant": tenant, "channel": "sms", "provider": "sandbox",
                "to": "+821012345678", "subject": null, "text": "hi", "html": null, "attempt": 1,
                "at": "2026-11-24T00:00:00Z"})
            .to_string()
        };
        let text = [
            line("1", "a"),
            line("2", "b"),
            line("3", "a"),
            "{torn".into(),
        ]
        .join("\n");
        std::fs::write(&path, text).unwrap();
        let items = read_outbox(&path, "a", 10).unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["3", "1"]);
        assert_eq!(read_outbox(&path, "a", 1).unwrap().len(), 1);
        assert!(
            read_outbox(&dir.path().join("none"), "a", 1)
                .unwrap()
                .is_empty()
        );
    }
}

//! Wiring of a worker process: its channels' consumers, the scheduler, and `/healthz`, `/readyz`,
//! `/metrics`.

use crate::consumer::{BatchSettings, ChannelConsumer, ParkingAlarm, Scheduler};
use crate::dedupe::RedisDedupe;
use crate::fallback::FallbackRoute;
use crate::metrics::{DeliveryPath, WorkerMetrics};
use crate::pipeline::PipelineBuilder;
use crate::providers::ProviderContext;
use crate::ratelimit::RedisRateLimiter;
use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ump_core::config::{ChannelRegistry, ResolvedChannel};
use ump_core::history::HistoryStore;
use ump_core::queue::KafkaSettings;
use ump_core::store::{MySqlHistory, connect_mysql, migrate_mysql};

#[derive(Clone, clap::Args)]
pub struct WorkerSettings {
    /// Folder of MessageChannel / DeliveryPolicy YAML (the operator mounts a ConfigMap here).
    #[arg(long, env = "UMP_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Channels to deliver (repeatable); all channels of the folder when absent.
    #[arg(long = "channel", env = "UMP_CHANNEL", value_delimiter = ',')]
    pub channels: Vec<String>,
    #[arg(long, env = "UMP_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,
    #[arg(long, env = "UMP_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
    pub mysql_url: String,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, env = "UMP_WORKER_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Where provider Secrets are mounted (`<dir>/<secret name>/<key>`).
    #[arg(long, env = "UMP_SECRETS_DIR", default_value = "/etc/ump/secrets")]
    pub secrets_dir: PathBuf,
    /// Where the sandbox provider records what it would have sent.
    #[arg(
        long,
        env = "UMP_SANDBOX_OUTBOX",
        default_value = "ump-sandbox-outbox.jsonl"
    )]
    pub sandbox_outbox: PathBuf,
    /// Recipients delivered in parallel per batch (as many as a batch holds: with providers
    /// answering in tens of milliseconds, the calls in flight are what sets the rate).
    #[arg(long, env = "UMP_WORKER_LANES", default_value_t = 1000)]
    pub lanes: usize,
    /// Largest batch consumed at once.
    #[arg(long, env = "UMP_WORKER_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// How long a worker's in-progress mark on a message holds off other workers; after a crash,
    /// the messages it was sending go out again once this has passed.
    #[arg(long, env = "UMP_WORKER_CLAIM_LEASE", default_value = "60s")]
    pub claim_lease: ump_core::duration::Duration,
    /// Longest wait to fill a batch.
    #[arg(long, env = "UMP_WORKER_BATCH_WAIT", default_value = "20ms")]
    pub batch_wait: ump_core::duration::Duration,
    /// How often the scheduler looks for due parked messages it has no alarm for (parked by
    /// another worker); what this worker parked goes back onto its topic when it falls due.
    #[arg(long, env = "UMP_WORKER_SCHEDULER_POLL", default_value = "250ms")]
    pub scheduler_poll: ump_core::duration::Duration,
    /// Bulk batches of a channel delivered at once: the next starts as the lanes of the one
    /// before end (`UMP_WORKER_LANES` holds across them), so a batch's slowest provider calls do
    /// not leave the provider idle. `1` delivers one batch after another.
    #[arg(long, env = "UMP_WORKER_BATCHES_IN_FLIGHT", default_value_t = 2)]
    pub batches_in_flight: usize,
    /// ActiveMQ (AMQP 1.0) holding the realtime queues: `amqp[s]://user:password@host:port`.
    /// Required when a channel enables realtime delivery.
    #[arg(long, env = "UMP_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Realtime messages a worker holds unsettled per queue (AMQP link credit).
    #[arg(long, env = "UMP_REALTIME_CREDIT", default_value_t = 256)]
    pub realtime_credit: u32,
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookSettings,
}

impl std::fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("config_dir", &self.config_dir)
            .field("channels", &self.channels)
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Probes {
    metrics: WorkerMetrics,
    redis: redis::aio::ConnectionManager,
    mysql: sqlx::MySqlPool,
    producer: FutureProducer,
}

/// Runs the worker until `shutdown` fires, then drains: the batches in hand are recorded and
/// committed before this returns.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry = ChannelRegistry::load_dir(&settings.config_dir)
        .with_context(|| format!("loading channels from {}", settings.config_dir.display()))?;
    let channels = channels_to_serve(&settings, &registry)?;

    let pool = connect_mysql(&settings.mysql_url, 8).await?;
    migrate_mysql(&pool).await?;
    let history: Arc<dyn HistoryStore> = Arc::new(MySqlHistory::new(pool.clone()));
    let redis = crate::dedupe::connect_redis(&settings.redis_url).await?;
    let kafka = KafkaSettings::from_env(settings.kafka_bootstrap.clone());
    let producer: FutureProducer = kafka
        .client_config_with(&[("linger.ms", "5")])
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("creating the Kafka producer")?;
    ensure_topics(&kafka, &channels).await;
    let metrics = WorkerMetrics::new(prometheus::Registry::new())?;

    let mut tasks = tokio::task::JoinSet::new();
    let ports = BulkPorts {
        dedupe: Arc::new(RedisDedupe::new(
            redis.clone(),
            uuid::Uuid::new_v4().simple().to_string(),
            settings.claim_lease.as_std(),
        )),
        limiter: Arc::new(RedisRateLimiter::new(redis.clone())),
        history: Arc::clone(&history),
        producer: producer.clone(),
        metrics: metrics.clone(),
        alarm: ParkingAlarm::default(),
    };
    let mut fallback_queues = Vec::new();
    // Each channel's realtime consumers, with the same fallback route as its bulk consumer.
    let mut realtime = Vec::new();
    for channel in &channels {
        let route = FallbackRoute::of(channel, &registry);
        fallback_queues.extend(route.as_ref().map(|r| r.queue.clone()));
        if channel.resource.spec.realtime.enabled {
            realtime.push((Arc::clone(channel), route.clone()));
        }
        let consumer = bulk_consumer(&settings, &kafka, channel, route, &ports)?;
        tasks.spawn(consumer.run(shutdown.clone()));
    }
    if !realtime.is_empty() {
        let settings = crate::realtime::RealtimeSettings::from_worker(&settings)?;
        let handle = crate::realtime::start(
            settings,
            realtime,
            metrics.clone(),
            ports.alarm.clone(),
            shutdown.clone(),
        )
        .await?;
        tasks.spawn(handle.stopped());
    }
    let scheduler = Scheduler {
        history: Arc::clone(&history),
        producer: producer.clone(),
        // Fallback copies too: this worker hands them on even when no worker of their channel
        // runs here.
        queues: scheduled_queues(&channels, fallback_queues),
        metrics: metrics.clone(),
        alarm: ports.alarm.clone(),
        poll: settings.scheduler_poll.as_std(),
    };
    tasks.spawn(scheduler.run(shutdown.clone()));
    if settings.webhooks.dispatch {
        spawn_webhooks(&mut tasks, &settings, &metrics, &shutdown).await?;
    }
    let probes = Probes {
        metrics,
        redis,
        mysql: pool,
        producer,
    };
    spawn_probe_server(
        &mut tasks,
        settings.listen,
        probes,
        channels.len(),
        &shutdown,
    )
    .await?;

    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The channels named by `--channel` (all of the folder's without), each warned about when its
/// policy is missing.
fn channels_to_serve(
    settings: &WorkerSettings,
    registry: &ChannelRegistry,
) -> anyhow::Result<Vec<Arc<ResolvedChannel>>> {
    let channels: Vec<Arc<ResolvedChannel>> = if settings.channels.is_empty() {
        registry.channels().cloned().collect()
    } else {
        settings
            .channels
            .iter()
            .map(|name| {
                registry
                    .get(name)
                    .cloned()
                    .with_context(|| format!("channel {name} is not in the config folder"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for channel in &channels {
        channel.warn_if_policy_missing();
    }
    Ok(channels)
}

/// What every channel's bulk consumer shares.
struct BulkPorts {
    dedupe: Arc<RedisDedupe>,
    limiter: Arc<dyn crate::ratelimit::RateLimiter>,
    history: Arc<dyn HistoryStore>,
    producer: FutureProducer,
    metrics: WorkerMetrics,
    /// Rung by the consumers' parkings, heard by the scheduler.
    alarm: ParkingAlarm,
}

/// The Kafka consumer of `channel`, its pipeline built for the bulk path with its fallback `route`.
fn bulk_consumer(
    settings: &WorkerSettings,
    kafka: &KafkaSettings,
    channel: &Arc<ResolvedChannel>,
    route: Option<FallbackRoute>,
    ports: &BulkPorts,
) -> anyhow::Result<ChannelConsumer> {
    let builder = PipelineBuilder {
        path: DeliveryPath::Bulk,
        limiter: ports.limiter.clone(),
        metrics: &ports.metrics,
        providers: ProviderContext {
            secrets_dir: &settings.secrets_dir,
            sandbox_outbox: &settings.sandbox_outbox,
        },
        lanes: settings.lanes,
        busy_retry: settings.claim_lease.as_std() / 2,
    };
    let pipeline = builder.build(channel, ports.dedupe.clone(), route)?;
    let batch = BatchSettings {
        max_messages: settings.batch.max(1),
        max_wait: settings.batch_wait.as_std(),
        in_flight: settings.batches_in_flight.max(1),
    };
    ChannelConsumer::new(
        Arc::new(pipeline),
        kafka,
        ports.producer.clone(),
        Arc::clone(&ports.history),
        ports.metrics.clone(),
        batch,
        ports.alarm.clone(),
    )
}

/// The webhook dispatcher, on a MySQL pool of its own: however busy the endpoints, the history's
/// writes never wait for a connection the dispatcher holds.
async fn spawn_webhooks(
    tasks: &mut tokio::task::JoinSet<()>,
    settings: &WorkerSettings,
    metrics: &WorkerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let webhook_pool = connect_mysql(&settings.mysql_url, 4).await?;
    let store = Arc::new(ump_core::webhooks_store::MySqlWebhooks::new(webhook_pool));
    let webhook_metrics = crate::webhooks::WebhookMetrics::new(&metrics.registry)?;
    let (webhooks, shutdown) = (settings.webhooks.clone(), shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) = crate::webhooks::run(store, webhooks, webhook_metrics, shutdown).await {
            tracing::error!(error = %e, "the webhook dispatcher stopped");
        }
    });
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics` on `listen`, until `shutdown`.
async fn spawn_probe_server(
    tasks: &mut tokio::task::JoinSet<()>,
    listen: SocketAddr,
    probes: Probes,
    channels: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(probes);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // The bound address: with port 0 (as in tests) the one the system chose.
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %bound, channels, "worker running");
    let server_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "probe server failed");
        }
    });
    Ok(())
}

/// The topics whose parked messages this worker's scheduler publishes: its channels' and those of
/// their fallback channels.
fn scheduled_queues(channels: &[Arc<ResolvedChannel>], fallback: Vec<String>) -> Vec<String> {
    let mut queues: Vec<String> = channels.iter().map(|c| c.resource.topic_name()).collect();
    queues.extend(fallback);
    queues.sort();
    queues.dedup();
    queues
}

/// Creates missing topics (the operator normally has, so this only matters without it); a failure
/// is logged, not fatal: the operator or an administrator may own topic creation.
async fn ensure_topics(kafka: &KafkaSettings, channels: &[Arc<ResolvedChannel>]) {
    let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
        Ok(admin) => admin,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a Kafka admin client");
            return;
        }
    };
    let mut names = Vec::new();
    for channel in channels {
        let spec = &channel.resource.spec.topic;
        names.push((
            channel.resource.topic_name(),
            spec.partitions,
            spec.replication_factor,
        ));
        names.push((
            channel.resource.dead_letter_topic(),
            1,
            spec.replication_factor,
        ));
    }
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|(name, partitions, replication)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(*replication))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics(&topics, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => tracing::info!(topic = %name, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        tracing::warn!(topic = %name, %code, "could not create topic")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not create topics"),
    }
}

async fn readyz(State(probes): State<Probes>) -> Response {
    let mut failures = Vec::new();
    let mut redis = probes.redis.clone();
    if let Err(e) = redis::cmd("PING").query_async::<String>(&mut redis).await {
        failures.push(format!("redis: {e}"));
    }
    if let Err(e) = sqlx::query("SELECT 1").execute(&probes.mysql).await {
        failures.push(format!("mysql: {e}"));
    }
    let producer = probes.producer.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
    })
    .await;
    if !matches!(kafka, Ok(Ok(()))) {
        failures.push("kafka: metadata request failed".to_owned());
    }
    if failures.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failures.join("\n")).into_response()
    }
}

async fn metrics_text(State(probes): State<Probes>) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&probes.metrics.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

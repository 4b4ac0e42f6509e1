//! Wiring of the cluster mode: the API on Kafka, Redis and MySQL.

use crate::auth::KeyCache;
use crate::idempotency::RedisIdempotency;
use crate::metrics::ApiMetrics;
use crate::{AppState, ReadinessCheck};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use ump_core::amqp::{AmqpQueue, AmqpSettings};
use ump_core::audience::{EventLog, KafkaEventLog};
use ump_core::audience_mysql::MySqlAudience;
use ump_core::config::ChannelRegistry;
use ump_core::keys::{
    ApiKeyStore, BOOTSTRAP_KEY_ID, DEFAULT_TENANT, MySqlKeys, PresentedKey, check_bootstrap_key,
};
use ump_core::queue::{KafkaQueue, KafkaSettings, MessageQueue};
use ump_core::store::{MySqlHistory, connect_mysql, migrate_mysql};

/// Settings of the cluster-mode API (environment variables of the same names, upper-cased).
#[derive(Clone, clap::Args)]
pub struct ClusterSettings {
    /// Kafka bootstrap servers.
    #[arg(long, env = "UMP_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,
    /// Redis URL (`redis://` or `rediss://` for TLS).
    #[arg(long, env = "UMP_REDIS_URL")]
    pub redis_url: String,
    /// MySQL URL of the history database.
    #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
    pub mysql_url: String,
    /// Folder of MessageChannel / DeliveryPolicy YAML (or watch the cluster: UMP_WATCH_NAMESPACE).
    #[arg(long, env = "UMP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Namespace whose MessageChannel / DeliveryPolicy objects the API follows, live.
    #[arg(long, env = "UMP_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// ActiveMQ (AMQP 1.0) for `"priority": "realtime"` sends: `amqp[s]://user:password@host:port`.
    /// Without it, realtime sends are answered 503.
    #[arg(long, env = "UMP_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// The Kafka topic of behaviour events (`POST /v1/events`), keyed by tenant and person.
    #[arg(long, env = "UMP_EVENTS_TOPIC", default_value = ump_core::audience::DEFAULT_EVENTS_TOPIC)]
    pub events_topic: String,
    /// How long an accept waits for the broker before answering 503.
    #[arg(long, env = "UMP_ACCEPT_TIMEOUT", default_value = "5s")]
    pub accept_timeout: ump_core::duration::Duration,
    /// Where provider Secrets are mounted (`<dir>/<secret name>/<key>`); the delivery-receipt
    /// endpoints read callback secrets (Twilio's authToken, NHN's webhookSignature, a webhook's
    /// signingSecret) from there.
    #[arg(long, env = "UMP_SECRETS_DIR", default_value = "/etc/ump/secrets")]
    pub secrets_dir: PathBuf,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords: never print them.
        f.debug_struct("ClusterSettings")
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field("config_dir", &self.config_dir)
            .field("watch_namespace", &self.watch_namespace)
            .finish_non_exhaustive()
    }
}

/// Where the API learns its channels.
pub enum ChannelSource {
    /// A folder of YAML, read at start.
    Folder(PathBuf),
    /// The cluster: the objects of a namespace, followed as they change.
    Cluster {
        client: kube::Client,
        namespace: String,
    },
}

impl ClusterSettings {
    /// The configured source; a kube client comes from the in-cluster service account or
    /// `KUBECONFIG`.
    pub async fn channel_source(&self) -> anyhow::Result<ChannelSource> {
        match (&self.config_dir, &self.watch_namespace) {
            (Some(dir), None) => Ok(ChannelSource::Folder(dir.clone())),
            (None, Some(namespace)) => Ok(ChannelSource::Cluster {
                client: kube::Client::try_default()
                    .await
                    .context("connecting to Kubernetes")?,
                namespace: namespace.clone(),
            }),
            _ => anyhow::bail!(
                "set exactly one of UMP_CONFIG_DIR (a folder of channels) and UMP_WATCH_NAMESPACE \
                 (follow the cluster's MessageChannel objects)"
            ),
        }
    }
}

/// Stores `value`, the value of `UMP_BOOTSTRAP_API_KEY` (when set), as the default tenant's key.
/// A value no client could present, or the text of another stored key, is refused here rather
/// than answered 401 later.
pub async fn bootstrap_key(
    keys: &dyn ApiKeyStore,
    value: Option<std::ffi::OsString>,
) -> anyhow::Result<()> {
    let Some(raw) = value else {
        return Ok(());
    };
    let raw = raw.into_string().map_err(|_| {
        anyhow::anyhow!("UMP_BOOTSTRAP_API_KEY is not valid text: no client could present it")
    })?;
    let key = check_bootstrap_key(&raw)
        .map_err(|why| anyhow::anyhow!("UMP_BOOTSTRAP_API_KEY is refused: {why}"))?;
    // The text of a generated key that is stored under its own id authenticates as that key:
    // fine when it is the default tenant's, a trap when it is another tenant's or revoked.
    let presented = PresentedKey::parse(key);
    if presented.key_id != BOOTSTRAP_KEY_ID
        && let Some(stored) = keys
            .find(&presented.key_id)
            .await
            .context("reading API keys")?
        && presented.matches(&stored.hash)
    {
        if stored.revoked_at.is_some() {
            anyhow::bail!(
                "UMP_BOOTSTRAP_API_KEY is refused: it is the revoked key {}; give another key",
                stored.key_id
            );
        }
        if stored.tenant != DEFAULT_TENANT {
            anyhow::bail!(
                "UMP_BOOTSTRAP_API_KEY is refused: it is key {} of tenant {:?}, and the bootstrap \
                 key belongs to tenant {DEFAULT_TENANT:?}; give another key",
                stored.key_id,
                stored.tenant
            );
        }
    }
    keys.put(
        BOOTSTRAP_KEY_ID,
        DEFAULT_TENANT,
        key,
        "UMP_BOOTSTRAP_API_KEY",
    )
    .await
    .context("storing the bootstrap API key")?;
    Ok(())
}

pub async fn state(
    settings: &ClusterSettings,
    source: ChannelSource,
    registry: prometheus::Registry,
) -> anyhow::Result<AppState> {
    let metrics = ApiMetrics::new(registry)?;
    let channels = Arc::new(ArcSwap::from_pointee(ChannelRegistry::default()));
    let synced = Arc::new(AtomicBool::new(false));
    match source {
        ChannelSource::Folder(dir) => {
            let loaded = ChannelRegistry::load_dir(&dir)
                .with_context(|| format!("loading channels from {}", dir.display()))?;
            channels.store(Arc::new(loaded));
            synced.store(true, Ordering::Release);
        }
        ChannelSource::Cluster { client, namespace } => {
            tokio::spawn(crate::watch::keep_registry_in_step(
                client,
                namespace,
                Arc::clone(&channels),
                Arc::clone(&synced),
                metrics.channels_invalid.clone(),
            ));
        }
    }

    let pool = connect_mysql(&settings.mysql_url, 16).await?;
    migrate_mysql(&pool).await?;
    let keys = Arc::new(MySqlKeys::new(pool.clone()));
    bootstrap_key(keys.as_ref(), std::env::var_os("UMP_BOOTSTRAP_API_KEY")).await?;
    let key_cache = KeyCache::new(keys);
    key_cache.refresh().await.context("loading API keys")?;
    key_cache.spawn_refresh(crate::auth::REFRESH_EVERY);

    let redis = ump_core::redis_conn::connect_redis(&settings.redis_url).await?;
    let kafka = Arc::new(
        KafkaQueue::new(
            &KafkaSettings::from_env(settings.kafka_bootstrap.clone()),
            settings.accept_timeout.as_std(),
        )
        .context("creating the Kafka producer")?,
    );

    let events: Arc<dyn EventLog> = Arc::new(
        KafkaEventLog::new(
            &KafkaSettings::from_env(settings.kafka_bootstrap.clone()),
            &settings.events_topic,
            settings.accept_timeout.as_std(),
        )
        .context("creating the Kafka producer of events")?,
    );

    // Realtime sends fail on their own (503) while ActiveMQ is away, so it is not a readiness
    // check: an API that cannot reach it still takes bulk traffic.
    let realtime = match &settings.amqp_url {
        Some(url) => {
            let amqp = AmqpSettings::parse(url)?;
            tracing::info!(broker = %amqp.endpoint(), "realtime sends go to ActiveMQ");
            Some(
                Arc::new(AmqpQueue::new(amqp, settings.accept_timeout.as_std()))
                    as Arc<dyn MessageQueue>,
            )
        }
        None => None,
    };

    let readiness: Vec<(&'static str, ReadinessCheck)> = vec![
        ("channels", {
            let synced = Arc::clone(&synced);
            Arc::new(move || {
                let synced = synced.load(Ordering::Acquire);
                Box::pin(async move {
                    if synced {
                        Ok(())
                    } else {
                        Err("MessageChannels not listed yet".to_owned())
                    }
                })
            })
        }),
        ("kafka", {
            let kafka = Arc::clone(&kafka);
            Arc::new(move || {
                let kafka = Arc::clone(&kafka);
                Box::pin(async move { kafka.ready().await })
            })
        }),
        ("redis", {
            let redis = redis.clone();
            Arc::new(move || {
                let mut redis = redis.clone();
                Box::pin(async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut redis)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
        }),
        ("mysql", {
            let pool = pool.clone();
            Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    sqlx::query("SELECT 1")
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
        }),
    ];

    Ok(AppState {
        registry: channels,
        bulk: kafka as Arc<dyn MessageQueue>,
        realtime,
        history: Arc::new(MySqlHistory::new(pool.clone())),
        profiles: Arc::new(MySqlHistory::new(pool.clone())),
        events,
        segments: Arc::new(MySqlAudience::new(pool.clone())),
        broadcasts: Arc::new(ump_core::broadcast::MySqlBroadcasts::new(pool.clone())),
        journeys: Arc::new(ump_core::journeys::MySqlJourneys::new(pool.clone())),
        catalog: Arc::new(ump_core::catalog::MySqlCatalog::new(pool.clone())),
        items: Arc::new(ump_core::recommendations::MySqlItemModel::new(pool.clone())),
        journey_limiter: Arc::new(ump_core::ratelimit::RedisRateLimiter::new(redis.clone())),
        webhooks: Arc::new(ump_core::webhooks_store::MySqlWebhooks::new(pool)),
        // Production's rules; `ump api` sets them from its settings.
        webhook_rules: ump_core::webhooks::UrlRules::default(),
        keys: key_cache,
        idempotency: Arc::new(RedisIdempotency::new(redis)),
        metrics,
        readiness,
        secrets_dir: settings.secrets_dir.clone(),
        body_timeout: crate::RequestSettings::default().body_timeout.as_std(),
    })
}

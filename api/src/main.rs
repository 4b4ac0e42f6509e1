//! `ump`: UMP's API server and its admin commands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
#[cfg(feature = "all-in-one")]
use ump_api::all_in_one::AllInOneSettings;
use ump_api::cluster::{self, ClusterSettings};
use ump_core::keys::{ApiKeyStore, MySqlKeys, generate_key};

/// Each request allocates and frees many small values (JSON, envelopes, Kafka records) from
/// several threads. With mimalloc instead of glibc's allocator the cluster API accepted 18% more
/// single messages a second on the same cores (30,151 against 25,602, medians of three pipeline
/// benchmark runs), for more memory (BENCHMARKS.md, "Send pipeline"). The image and the cluster
/// benchmarks build it (feature `mimalloc`); the all-in-one process, which gained nothing from it,
/// keeps glibc's (`cargo run --release`: 91 MiB at peak against 115 in its benchmark).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ump",
    version,
    about = "UMP, the Unified Messaging Platform",
    after_help = "Without a command, UMP runs all-in-one (`ump all-in-one`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the worker and the dashboard in one process on one SQLite file (the default).
    #[cfg(feature = "all-in-one")]
    AllInOne(AllInOneSettings),
    /// Run the API of the cluster mode (Kafka, Redis, MySQL).
    Api {
        /// Address to listen on.
        #[arg(long, env = "UMP_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: ClusterSettings,
        #[command(flatten)]
        key_rate: ump_api::auth::KeyRateSettings,
        #[command(flatten)]
        requests: ump_api::RequestSettings,
        #[command(flatten)]
        webhook_urls: ump_core::webhooks::WebhookUrlSettings,
    },
    /// Manage API keys: in MySQL with UMP_MYSQL_URL (cluster mode), else in the all-in-one
    /// mode's data folder.
    Keys {
        #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
        mysql_url: Option<String>,
        /// The all-in-one mode's data folder (when no MySQL URL is given).
        #[arg(long, env = "UMP_DATA_DIR", default_value = "ump-data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Manage a tenant's segments from YAML files (the API's shape): in MySQL with UMP_MYSQL_URL,
    /// else in the all-in-one mode's data folder.
    Segments {
        #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
        mysql_url: Option<String>,
        /// The all-in-one mode's data folder (when no MySQL URL is given).
        #[arg(long, env = "UMP_DATA_DIR", default_value = "ump-data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: SegmentAction,
    },
    /// Manage a tenant's journeys from YAML files (the API's shape): in MySQL with UMP_MYSQL_URL,
    /// else in the all-in-one mode's data folder.
    Journeys {
        #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
        mysql_url: Option<String>,
        /// The all-in-one mode's data folder (when no MySQL URL is given).
        #[arg(long, env = "UMP_DATA_DIR", default_value = "ump-data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: JourneyAction,
    },
    /// Delete message history older than a cutoff (run it from a CronJob to keep a retention):
    /// in MySQL with UMP_MYSQL_URL, else in the all-in-one mode's data folder.
    Prune {
        #[arg(long, env = "UMP_MYSQL_URL", hide_env_values = true)]
        mysql_url: Option<String>,
        /// The all-in-one mode's data folder (when no MySQL URL is given).
        #[arg(long, env = "UMP_DATA_DIR", default_value = "ump-data")]
        data_dir: PathBuf,
        /// Age of the oldest history kept, e.g. 90d.
        #[arg(long)]
        older_than: ump_core::duration::Duration,
    },
}

#[derive(Subcommand)]
enum SegmentAction {
    /// Create or replace the segments of a file (one segment, a list, or `---` documents).
    Apply {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
    },
    /// List a tenant's segments (id, name).
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum JourneyAction {
    /// Create or change the journeys of a file (one, a list, or `---` documents): a new journey
    /// is a draft, an active one gets a new version.
    Apply {
        #[arg(long)]
        tenant: String,
        /// Activate each journey too (a draft or paused one starts letting people in).
        #[arg(long)]
        activate: bool,
        file: PathBuf,
    },
    /// List a tenant's journeys (id, status, version, name).
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Create a key for a tenant; the key is printed once and never stored.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a key by its id (the part after `ump_`).
    Revoke { key_id: String },
    /// List active keys (ids and tenants, never secrets).
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ump_core::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let command = match Cli::parse().command {
        Some(command) => command,
        #[cfg(feature = "all-in-one")]
        None => Cli::parse_from(["ump", "all-in-one"])
            .command
            .context("all-in-one is a command")?,
        #[cfg(not(feature = "all-in-one"))]
        None => anyhow::bail!("this ump is built without the all-in-one mode: run `ump api`"),
    };
    match command {
        #[cfg(feature = "all-in-one")]
        Command::AllInOne(settings) => {
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                signal.cancel();
            });
            ump_api::all_in_one::run(settings, shutdown).await
        }
        Command::Api {
            listen,
            settings,
            key_rate,
            requests,
            webhook_urls,
        } => {
            let source = settings.channel_source().await?;
            let mut state = cluster::state(&settings, source, prometheus::Registry::new()).await?;
            state.keys.limit_rate(key_rate);
            state.body_timeout = requests.body_timeout.as_std();
            state.webhook_rules = webhook_urls.rules();
            let senders = CancellationToken::new();
            let broadcasts = tokio::spawn(ump_api::broadcast::run_senders(
                state.clone(),
                senders.clone(),
            ));
            let relay = tokio::spawn(ump_api::journeys::run_relay(
                state.clone(),
                ump_api::journeys::RELAY_LOOPS,
                senders.clone(),
            ));
            let served = serve(listen, ump_api::router(state)).await;
            // A broadcast in hand stops after its page; another API resumes it from its cursor.
            // Journey messages in hand are sent; any not cleared go again after their lease.
            senders.cancel();
            let _ = broadcasts.await;
            let _ = relay.await;
            served
        }
        Command::Keys {
            mysql_url,
            data_dir,
            action,
        } => {
            let keys: Arc<dyn ApiKeyStore> = match mysql_url {
                Some(url) => {
                    let pool = ump_core::store::connect_mysql(&url, 2).await?;
                    ump_core::store::migrate_mysql(&pool).await?;
                    Arc::new(MySqlKeys::new(pool))
                }
                None => {
                    Arc::new(ump_core::sqlite::SqliteStore::open(&data_dir.join("ump.db")).await?)
                }
            };
            match action {
                KeyAction::Create {
                    tenant,
                    description,
                } => {
                    let (key_id, key) = generate_key();
                    keys.put(&key_id, &tenant, &key, &description).await?;
                    println!("{key}");
                    eprintln!(
                        "key id {key_id} for tenant {tenant}: store the key now, it is not shown again"
                    );
                }
                KeyAction::Revoke { key_id } => {
                    keys.revoke(&key_id).await?;
                    eprintln!("revoked {key_id}");
                }
                KeyAction::List => {
                    for key in keys.active().await? {
                        println!(
                            "{}\t{}\t{}\t{}",
                            key.key_id,
                            key.tenant,
                            key.created_at.to_rfc3339(),
                            key.description
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Segments {
            mysql_url,
            data_dir,
            action,
        } => {
            let store: Arc<dyn ump_core::audience::SegmentStore> = match mysql_url {
                Some(url) => {
                    let pool = ump_core::store::connect_mysql(&url, 2).await?;
                    ump_core::store::migrate_mysql(&pool).await?;
                    Arc::new(ump_core::audience_mysql::MySqlAudience::new(pool))
                }
                None => {
                    std::fs::create_dir_all(&data_dir)
                        .with_context(|| format!("creating {}", data_dir.display()))?;
                    Arc::new(ump_core::sqlite::SqliteStore::open(&data_dir.join("ump.db")).await?)
                }
            };
            match action {
                SegmentAction::Apply { tenant, file } => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let segments = ump_api::segments::from_yaml(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let applied = ump_api::segments::apply(store.as_ref(), &tenant, segments)
                        .await
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    for (id, created) in applied {
                        println!("{id}\t{}", if created { "created" } else { "replaced" });
                    }
                }
                SegmentAction::List { tenant } => {
                    for stored in store.segments(&tenant).await? {
                        println!("{}\t{}", stored.segment.id, stored.segment.name);
                    }
                }
            }
            Ok(())
        }
        Command::Journeys {
            mysql_url,
            data_dir,
            action,
        } => {
            let store: Arc<dyn ump_core::journeys::JourneyStore> = match mysql_url {
                Some(url) => {
                    let pool = ump_core::store::connect_mysql(&url, 2).await?;
                    ump_core::store::migrate_mysql(&pool).await?;
                    Arc::new(ump_core::journeys::MySqlJourneys::new(pool))
                }
                None => {
                    std::fs::create_dir_all(&data_dir)
                        .with_context(|| format!("creating {}", data_dir.display()))?;
                    let store =
                        ump_core::sqlite::SqliteStore::open(&data_dir.join("ump.db")).await?;
                    Arc::new(ump_core::journeys::SqliteJourneys::new(store))
                }
            };
            match action {
                JourneyAction::Apply {
                    tenant,
                    activate,
                    file,
                } => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let journeys = ump_api::journeys::from_yaml(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let applied =
                        ump_api::journeys::apply(store.as_ref(), &tenant, journeys, activate)
                            .await
                            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    for (id, version) in applied {
                        println!("{id}	version {version}");
                    }
                }
                JourneyAction::List { tenant } => {
                    for stored in store.journeys(&tenant).await? {
                        println!(
                            "{}	{}	version {}	{}",
                            stored.journey.id,
                            stored.status.as_str(),
                            stored.version,
                            stored.journey.name
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Prune {
            mysql_url,
            data_dir,
            older_than,
        } => {
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(older_than.as_std())?;
            let deleted = match mysql_url {
                Some(url) => {
                    let pool = ump_core::store::connect_mysql(&url, 2).await?;
                    ump_core::store::MySqlHistory::new(pool)
                        .prune(cutoff, 5000)
                        .await?
                }
                // Beside a running all-in-one process: SQLite takes turns between the two.
                None => {
                    ump_core::sqlite::SqliteStore::open(&data_dir.join("ump.db"))
                        .await?
                        .prune(cutoff, 1000)
                        .await?
                }
            };
            eprintln!(
                "deleted the history of {deleted} messages accepted before {}",
                cutoff.to_rfc3339()
            );
            Ok(())
        }
    }
}

async fn serve(listen: SocketAddr, app: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "UMP API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends), so in-flight requests finish.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

//! `ump-events`: the event processor of the cluster mode.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use ump_events::cluster::{ProcessorSettings, run};

/// The processor allocates and frees many small values per event from several threads: glibc's
/// allocator took about 45% of its CPU time (`perf`, 100,000 people), mimalloc about 16%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ump-events",
    version,
    about = "UMP event processor: people's state and segment memberships from behaviour events"
)]
struct Cli {
    #[command(flatten)]
    settings: ProcessorSettings,
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
    let settings = Cli::parse().settings;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
        tracing::info!("shutting down: committing the batch in hand");
        signal.cancel();
    });
    run(settings, shutdown).await
}

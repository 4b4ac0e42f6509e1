//! `ump-worker`: delivers the messages of one or more channels.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use ump_worker::service::{WorkerSettings, run};

/// Per message the worker allocates and frees many small values from several threads (envelopes,
/// JSON, Redis commands, history rows): glibc's `malloc` and `free` took more of the machine than
/// the worker's own code in the provider benchmark (`perf`); with mimalloc APNs and FCM went 4 to
/// 20% faster. Its cost is memory: mimalloc keeps freed memory a while before giving it back, and
/// the worker's peak RSS in the pipeline benchmark went from 139 to 167 MiB with one batch in
/// flight, and is 173–178 MiB with two (156 with `MIMALLOC_PURGE_DELAY=0`, which gives freed
/// memory back at once, at the same throughput; BENCHMARKS.md, "Send pipeline").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ump-worker", version, about = "UMP delivery worker")]
struct Cli {
    #[command(flatten)]
    settings: WorkerSettings,
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
        tracing::info!("shutting down: finishing the batches in hand");
        signal.cancel();
    });
    run(settings, shutdown).await
}

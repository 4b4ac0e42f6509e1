//! `ump-operator`: serves metrics and probes, wins the leader lease (unless disabled), then runs
//! the reconcilers until SIGTERM/SIGINT; a lost lease ends the process.

use std::process::ExitCode;
use tokio::sync::watch;
use ump_operator::controller;
use ump_operator::leader::LeaseElector;
use ump_operator::metrics::{self, Metrics};
use ump_operator::settings::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::env::var("UMP_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let (address, server) =
        metrics::serve(metrics.clone(), settings.listen, until(stopped.clone())).await?;
    tracing::info!(%address, "serving /metrics, /healthz, /readyz");

    let Some(election) = settings.leader_election.clone() else {
        metrics.leader.set(1);
        controller::run(client, settings, metrics, until(stopped.clone())).await?;
        server.await??;
        return Ok(());
    };

    let mut elector = LeaseElector::new(client.clone(), election);
    let mut signal = stopped.clone();
    // A follower is healthy and ready: readiness must not hold up a rolling update of standbys.
    metrics.set_ready(true);
    tracing::info!(
        identity = elector.identity(),
        "waiting for the leader lease"
    );
    if !elector.acquire(&mut signal).await? {
        server.await??;
        return Ok(());
    }
    tracing::info!(identity = elector.identity(), "leading");
    metrics.leader.set(1);
    metrics.set_ready(false);

    let (stop_controllers, controllers_stopped) = watch::channel(false);
    let controllers = tokio::spawn(controller::run(
        client,
        settings,
        metrics.clone(),
        until(controllers_stopped),
    ));
    let held = elector.hold(&mut signal).await;
    if let Err(e) = held {
        // Another replica may be leading already: stop at once, without finishing reconciles.
        controllers.abort();
        return Err(e.into());
    }
    let _ = stop_controllers.send(true);
    controllers.await??;
    // Only now, with no reconcile in flight, may a follower take over.
    elector.release().await?;
    metrics.leader.set(0);
    server.await??;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! Waiting out a dependency that is down: the worker pauses rather than lose or skip a message.

use crate::metrics::WorkerMetrics;
use crate::pipeline::Aborted;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Retries `op` until it succeeds (a dependency is down: wait for it), unless shutting down.
pub async fn until_available<T, E, F, Fut>(
    dependency: &'static str,
    metrics: &WorkerMetrics,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, Aborted>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                tracing::warn!(dependency, error = %e, "dependency unavailable; pausing");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Aborted(dependency)),
                    _ = tokio::time::sleep(wait) => {}
                }
                metrics
                    .paused_seconds
                    .with_label_values(&[dependency])
                    .inc_by(wait.as_secs().max(1));
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

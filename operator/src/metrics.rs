//! Prometheus metrics of the operator and the HTTP endpoints that serve them with the probes:
//! `/metrics`, `/healthz` (the process is alive), `/readyz` (leading with caches synced, or
//! standing by as a healthy follower).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciliations: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    /// Writes to the Kubernetes API by kind and verb: a steady operator keeps these flat.
    pub api_writes: IntCounterVec,
    pub kafka_actions: IntCounterVec,
    pub leader: IntGauge,
    /// Worker replicas each channel was given, by namespace and channel.
    pub channel_replicas: IntGaugeVec,
    /// Consumer lag of each channel's group as the operator last read it (whole topic, even with
    /// no worker running), by namespace and channel.
    pub channel_lag: IntGaugeVec,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("ump_operator".to_owned()), None).unwrap_or_default();
        let reconciliations = IntCounterVec::new(
            Opts::new("reconciliations_total", "Reconciles run, by controller"),
            &["controller"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciles that failed, by controller and reason",
            ),
            &["controller", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            &["controller"],
        )
        .expect("valid metric");
        let api_writes = IntCounterVec::new(
            Opts::new(
                "api_writes_total",
                "Writes to the Kubernetes API, by kind and verb",
            ),
            &["kind", "verb"],
        )
        .expect("valid metric");
        let kafka_actions = IntCounterVec::new(
            Opts::new(
                "kafka_actions_total",
                "Changes made to Kafka topics, by action",
            ),
            &["action"],
        )
        .expect("valid metric");
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease")
            .expect("valid metric");
        let channel_replicas = IntGaugeVec::new(
            Opts::new(
                "channel_replicas",
                "Worker replicas the operator gave each channel",
            ),
            &["namespace", "channel"],
        )
        .expect("valid metric");
        let channel_lag = IntGaugeVec::new(
            Opts::new(
                "channel_consumer_lag",
                "Messages of each channel's topic its workers have not consumed yet",
            ),
            &["namespace", "channel"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(api_writes.clone()),
            Box::new(kafka_actions.clone()),
            Box::new(leader.clone()),
            Box::new(channel_replicas.clone()),
            Box::new(channel_lag.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            api_writes,
            kafka_actions,
            leader,
            channel_replicas,
            channel_lag,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts timing one reconcile; the returned guard records its duration when dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciliations.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[controller]),
            started: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, reason: &str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }

    pub fn api_write(&self, kind: &str, verb: &str) {
        self.api_writes.with_label_values(&[kind, verb]).inc();
    }

    /// Total API writes so far (tests and the benchmark watch this stay flat).
    pub fn api_writes_total(&self) -> u64 {
        prometheus::core::Collector::collect(&self.api_writes)
            .iter()
            .flat_map(|family| family.get_metric().iter())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Records what a reconcile decided for a channel (lag only when it could be read).
    pub fn channel_observed(
        &self,
        namespace: &str,
        channel: &str,
        replicas: i32,
        lag: Option<i64>,
    ) {
        self.channel_replicas
            .with_label_values(&[namespace, channel])
            .set(i64::from(replicas));
        if let Some(lag) = lag {
            self.channel_lag
                .with_label_values(&[namespace, channel])
                .set(lag);
        }
    }

    /// Drops a deleted channel's series, so dashboards do not show it forever.
    pub fn channel_deleted(&self, namespace: &str, channel: &str) {
        let _ = self
            .channel_replicas
            .remove_label_values(&[namespace, channel]);
        let _ = self.channel_lag.remove_label_values(&[namespace, channel]);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The text exposition of every metric, plus the process's resident memory.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        if let Some(rss) = resident_memory_bytes() {
            let gauge = IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory of the operator process",
            )
            .expect("valid metric");
            gauge.set(rss);
            families.extend(prometheus::core::Collector::collect(&gauge));
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move {
                ([(CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Metrics>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
                }
            }),
        )
        .with_state(metrics)
}

/// Serves the router on `addr` until `shutdown` resolves; returns the bound address first so a
/// caller that asked for port 0 learns the real one.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router(metrics))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_labels() {
        let m = Metrics::new();
        drop(m.reconcile_started("channel"));
        m.reconcile_failed("channel", "kafka");
        m.api_write("Deployment", "apply");
        m.api_write("Deployment", "apply");
        m.channel_observed("shop", "sms", 3, Some(1200));
        m.channel_observed("shop", "email", 1, None);
        let text = m.render();
        assert!(
            text.contains("ump_operator_channel_replicas{channel=\"sms\",namespace=\"shop\"} 3")
        );
        assert!(text.contains(
            "ump_operator_channel_consumer_lag{channel=\"sms\",namespace=\"shop\"} 1200"
        ));
        assert!(!text.contains("ump_operator_channel_consumer_lag{channel=\"email\""));
        m.channel_deleted("shop", "sms");
        assert!(!m.render().contains("channel=\"sms\""));
        assert!(text.contains("ump_operator_reconciliations_total{controller=\"channel\"} 1"));
        assert!(text.contains(
            "ump_operator_reconcile_errors_total{controller=\"channel\",reason=\"kafka\"} 1"
        ));
        assert!(text.contains("ump_operator_reconcile_duration_seconds_count"));
        assert_eq!(m.api_writes_total(), 2);
    }
}

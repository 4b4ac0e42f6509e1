//! The worker's Prometheus metrics. Names are part of the operations contract (dashboards, alerts).

use crate::providers::failover::CircuitState;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    /// Outcomes, by channel, provider and outcome (sent, retried, failed, duplicate,
    /// dead_lettered, expired, scheduled, fallback).
    pub outcomes: IntCounterVec,
    /// Provider call duration, by channel and provider.
    pub provider_seconds: HistogramVec,
    /// Acceptance to sent, by channel.
    pub end_to_end_seconds: HistogramVec,
    pub batch_size: Histogram,
    pub history_write_seconds: Histogram,
    /// Messages behind the end of each partition, by channel.
    pub consumer_lag: IntGaugeVec,
    /// Time spent waiting on a dependency that is down (redis, mysql, kafka), by dependency.
    pub paused_seconds: IntCounterVec,
    /// 1 while a provider's circuit keeps traffic away (open, or half-open awaiting its probe), by
    /// channel and provider; channels with failover only.
    pub circuit_open: IntGaugeVec,
    /// Parked messages of this worker's queues due more than a minute ago and still waiting.
    pub parked_overdue: IntGauge,
    /// Messages the last parking sweep found with no outcome and no live parking (their
    /// republished copy went missing), before it parked them again.
    pub scheduled_unparked: IntGauge,
    /// Messages the parking sweep parked again, in all.
    pub parking_repairs: IntCounter,
}

impl WorkerMetrics {
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let outcomes = IntCounterVec::new(
            Opts::new("ump_messages_total", "Delivery outcomes"),
            &["channel", "provider", "outcome"],
        )?;
        let provider_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ump_provider_request_duration_seconds",
                "Provider call duration",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["channel", "provider"],
        )?;
        let end_to_end_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ump_end_to_end_duration_seconds",
                "From acceptance to the provider taking the message",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["channel"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("ump_worker_batch_size", "Messages per consumed batch")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0]),
        )?;
        let history_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ump_history_write_duration_seconds",
                "Time to record a batch in the history",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new("ump_consumer_lag", "Messages not yet consumed"),
            &["channel"],
        )?;
        let paused_seconds = IntCounterVec::new(
            Opts::new(
                "ump_worker_paused_seconds_total",
                "Seconds spent waiting for a dependency to come back",
            ),
            &["dependency"],
        )?;
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "ump_provider_circuit_open",
                "1 while the provider's circuit breaker keeps traffic away from it",
            ),
            &["channel", "provider"],
        )?;
        let parked_overdue = IntGauge::new(
            "ump_parked_overdue_messages",
            "Parked messages due more than a minute ago and still waiting to be published",
        )?;
        let scheduled_unparked = IntGauge::new(
            "ump_scheduled_unparked_messages",
            "Messages without an outcome whose republished copy went missing, at the last sweep",
        )?;
        let parking_repairs = IntCounter::new(
            "ump_parking_repairs_total",
            "Messages parked again by the sweep because their republished copy went missing",
        )?;
        // Known from the start, so that rate() over them works before the first pause.
        for dependency in ["redis", "mysql", "kafka"] {
            paused_seconds.with_label_values(&[dependency]);
        }
        for metric in [
            Box::new(outcomes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(provider_seconds.clone()),
            Box::new(end_to_end_seconds.clone()),
            Box::new(batch_size.clone()),
            Box::new(history_write_seconds.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(paused_seconds.clone()),
            Box::new(circuit_open.clone()),
            Box::new(parked_overdue.clone()),
            Box::new(scheduled_unparked.clone()),
            Box::new(parking_repairs.clone()),
        ] {
            registry.register(metric)?;
        }
        Ok(Self {
            registry,
            outcomes,
            provider_seconds,
            end_to_end_seconds,
            batch_size,
            history_write_seconds,
            consumer_lag,
            paused_seconds,
            circuit_open,
            parked_overdue,
            scheduled_unparked,
            parking_repairs,
        })
    }

    /// Publishes a failover channel's circuits (primary first), as `FailoverProvider::circuits`
    /// reports them.
    pub fn circuits(&self, channel: &str, circuits: &[(String, CircuitState)]) {
        for (provider, state) in circuits {
            self.circuit_open
                .with_label_values(&[channel, provider])
                .set(i64::from(*state != CircuitState::Closed));
        }
    }

    pub fn outcome(&self, channel: &str, provider: &str, outcome: &str) {
        self.outcomes
            .with_label_values(&[channel, provider, outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuits_show_as_open_until_closed() {
        let metrics = WorkerMetrics::new(Registry::new()).expect("metrics");
        metrics.circuits(
            "sms",
            &[
                ("nhn".to_owned(), CircuitState::Open),
                ("twilio".to_owned(), CircuitState::Closed),
            ],
        );
        let open = |provider: &str| {
            metrics
                .circuit_open
                .with_label_values(&["sms", provider])
                .get()
        };
        assert_eq!((open("nhn"), open("twilio")), (1, 0));
        metrics.circuits("sms", &[("nhn".to_owned(), CircuitState::HalfOpen)]);
        assert_eq!(open("nhn"), 1, "half-open still keeps traffic away");
        metrics.circuits("sms", &[("nhn".to_owned(), CircuitState::Closed)]);
        assert_eq!(open("nhn"), 0);
    }
}

//! The worker's Prometheus metrics. Names are part of the operations contract (dashboards, alerts).

use crate::providers::failover::CircuitState;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::{Arc, Mutex};
use ump_core::provider::Provider;

/// The delivery path a provider serves. Each path builds its own providers (their connection
/// pools live on its runtime), so each has circuit breakers of its own: the `path` label of
/// `ump_provider_circuit_open` tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryPath {
    /// Kafka topics (cluster mode).
    Bulk,
    /// ActiveMQ queues (cluster mode).
    Realtime,
    /// The SQLite queue of the all-in-one mode.
    AllInOne,
}

impl DeliveryPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Realtime => "realtime",
            Self::AllInOne => "all-in-one",
        }
    }
}

/// Whatever keeps circuit breakers (a failover provider): their states, primary first.
pub trait CircuitSource: Send + Sync {
    fn circuits(&self) -> Vec<(String, CircuitState)>;
}

/// A gauge per channel, provider and path, read from what it reports on at each scrape (the
/// breakers, the concurrency limits): no path has to remember to publish it.
struct WatchedGauge<S: ?Sized> {
    gauge: IntGaugeVec,
    watched: Arc<Mutex<Vec<Watched<S>>>>,
    /// The value per provider of one source.
    read: fn(&S) -> Vec<(String, i64)>,
}

/// A channel whose providers are published.
struct Watched<S: ?Sized> {
    path: DeliveryPath,
    channel: String,
    source: Arc<S>,
}

impl<S: ?Sized> Clone for WatchedGauge<S> {
    fn clone(&self) -> Self {
        Self {
            gauge: self.gauge.clone(),
            watched: Arc::clone(&self.watched),
            read: self.read,
        }
    }
}

impl<S: ?Sized> WatchedGauge<S> {
    fn new(name: &str, help: &str, read: fn(&S) -> Vec<(String, i64)>) -> prometheus::Result<Self> {
        Ok(Self {
            gauge: IntGaugeVec::new(Opts::new(name, help), &["channel", "provider", "path"])?,
            watched: Arc::default(),
            read,
        })
    }

    fn watch(&self, path: DeliveryPath, channel: &str, source: Arc<S>) {
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Watched {
                path,
                channel: channel.to_owned(),
                source,
            });
    }
}

impl<S: ?Sized + Send + Sync> Collector for WatchedGauge<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Held through the collection: two scrapes at once never interleave reset and set.
        let watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.gauge.reset();
        for w in watched.iter() {
            for (provider, value) in (self.read)(&w.source) {
                self.gauge
                    .with_label_values(&[w.channel.as_str(), &provider, w.path.as_str()])
                    .set(value);
            }
        }
        self.gauge.collect()
    }
}

fn circuits_open(source: &dyn CircuitSource) -> Vec<(String, i64)> {
    source
        .circuits()
        .into_iter()
        .map(|(provider, state)| (provider, i64::from(state != CircuitState::Closed)))
        .collect()
}

fn concurrency_limits(provider: &dyn Provider) -> Vec<(String, i64)> {
    provider
        .concurrency_limits()
        .into_iter()
        .map(|(name, limit)| (name, i64::try_from(limit).unwrap_or(i64::MAX)))
        .collect()
}

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
    /// channel, provider and delivery path; channels with failover only.
    circuits: WatchedGauge<dyn CircuitSource>,
    /// Calls each provider allows in flight now (learnt by AIMD), by channel, provider and
    /// delivery path.
    concurrency: WatchedGauge<dyn Provider>,
    /// Parked messages of this worker's queues due more than a minute ago and still waiting.
    pub parked_overdue: IntGauge,
    /// Messages the last parking sweep found with no outcome and no live parking (their
    /// republished copy went missing), before it parked them again.
    pub scheduled_unparked: IntGauge,
    /// Messages the parking sweep parked again, in all.
    pub parking_repairs: IntCounter,
    /// How long after falling due a parked message was published again (the scheduler's
    /// lateness; cluster mode).
    pub parked_publish_delay_seconds: Histogram,
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
        let circuits = WatchedGauge::new(
            "ump_provider_circuit_open",
            "1 while the provider's circuit breaker keeps traffic away from it",
            circuits_open,
        )?;
        let concurrency = WatchedGauge::new(
            "ump_provider_concurrency_limit",
            "Calls the provider allows in flight now, as learnt from its latency and overload",
            concurrency_limits,
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
        let parked_publish_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ump_parked_publish_delay_seconds",
                "How long after falling due a parked message was published again",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
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
            Box::new(circuits.clone()),
            Box::new(concurrency.clone()),
            Box::new(parked_overdue.clone()),
            Box::new(scheduled_unparked.clone()),
            Box::new(parking_repairs.clone()),
            Box::new(parked_publish_delay_seconds.clone()),
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
            circuits,
            concurrency,
            parked_overdue,
            scheduled_unparked,
            parking_repairs,
            parked_publish_delay_seconds,
        })
    }

    /// Publishes the circuits of `channel`'s failover provider on `path`, as they are at each
    /// scrape.
    pub fn watch_circuits(
        &self,
        path: DeliveryPath,
        channel: &str,
        source: Arc<dyn CircuitSource>,
    ) {
        self.circuits.watch(path, channel, source);
    }

    /// Publishes the concurrency limits of `channel`'s providers on `path`, as they are at each
    /// scrape.
    pub fn watch_concurrency(
        &self,
        path: DeliveryPath,
        channel: &str,
        provider: Arc<dyn Provider>,
    ) {
        self.concurrency.watch(path, channel, provider);
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

    struct Breakers(Mutex<Vec<(String, CircuitState)>>);

    impl CircuitSource for Breakers {
        fn circuits(&self) -> Vec<(String, CircuitState)> {
            self.0.lock().expect("lock").clone()
        }
    }

    /// `ump_provider_circuit_open` samples as `(channel, provider, path) → value`.
    fn scraped(registry: &Registry) -> Vec<(String, String, String, f64)> {
        let mut samples = Vec::new();
        for family in registry.gather() {
            if family.name() != "ump_provider_circuit_open" {
                continue;
            }
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                samples.push((
                    label("channel"),
                    label("provider"),
                    label("path"),
                    metric.get_gauge().get_value(),
                ));
            }
        }
        samples.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        samples
    }

    #[test]
    fn circuits_show_as_open_until_closed_on_each_path_at_each_scrape() {
        let registry = Registry::new();
        let metrics = WorkerMetrics::new(registry.clone()).expect("metrics");
        let sample = |provider: &str, path: &str, value: f64| {
            (
                "sms".to_owned(),
                provider.to_owned(),
                path.to_owned(),
                value,
            )
        };
        assert!(
            scraped(&registry).is_empty(),
            "no failover channel, no series"
        );
        let bulk = Arc::new(Breakers(Mutex::new(vec![
            ("twilio".to_owned(), CircuitState::Open),
            ("nhn".to_owned(), CircuitState::Closed),
        ])));
        let realtime = Arc::new(Breakers(Mutex::new(vec![
            ("twilio".to_owned(), CircuitState::Closed),
            ("nhn".to_owned(), CircuitState::Closed),
        ])));
        metrics.watch_circuits(DeliveryPath::Bulk, "sms", bulk.clone());
        metrics.watch_circuits(DeliveryPath::Realtime, "sms", realtime);
        assert_eq!(
            scraped(&registry),
            [
                sample("nhn", "bulk", 0.0),
                sample("nhn", "realtime", 0.0),
                sample("twilio", "bulk", 1.0),
                sample("twilio", "realtime", 0.0),
            ]
        );
        bulk.0.lock().expect("lock")[0].1 = CircuitState::HalfOpen;
        assert_eq!(
            scraped(&registry)[2],
            sample("twilio", "bulk", 1.0),
            "half-open still keeps traffic away"
        );
        bulk.0.lock().expect("lock")[0].1 = CircuitState::Closed;
        assert_eq!(scraped(&registry)[2], sample("twilio", "bulk", 0.0));
    }
}

//! The API's Prometheus metrics. Names are part of the operations contract (dashboards, alerts).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// Messages accepted (durable in the broker), by channel and priority.
    pub accepted: IntCounterVec,
    /// Requests refused, by reason (validation, unauthorized, unavailable, conflict, ...).
    pub rejected: IntCounterVec,
    /// Time from request to 202, by endpoint.
    pub accept_seconds: HistogramVec,
    /// Messages per batch request.
    pub batch_size: prometheus::Histogram,
    /// Journey messages the relay took from the outbox, by result: enqueued, not_sent (no
    /// consent or contact point now), dropped (the definition no longer fits its channel),
    /// retried (the queue was away).
    pub journey_relayed: IntCounterVec,
    /// Journey messages waiting in the outbox (all tenants; every API process reports it).
    pub journey_outbox: prometheus::IntGauge,
    /// From a journey step putting its message in the outbox (the processor's batch) to the
    /// relay enqueuing it.
    pub journey_outbox_wait: prometheus::Histogram,
    /// Time to make one person's recommendations (`GET …/recommendations`, journey sends), by
    /// strategy.
    pub recommend_seconds: HistogramVec,
    /// Channels of the watched namespace whose spec or policy is invalid now, as this API sees
    /// them, by state: `kept` (serving their last valid configuration) or `left_out` (never
    /// valid, so not usable). Cluster mode with `UMP_WATCH_NAMESPACE` sets it; elsewhere an
    /// invalid channel stops the start, so it stays 0.
    pub channels_invalid: IntGaugeVec,
}

impl ApiMetrics {
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let accepted = IntCounterVec::new(
            Opts::new(
                "ump_messages_accepted_total",
                "Messages accepted (durable in the broker)",
            ),
            &["channel", "priority"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new("ump_api_rejected_total", "Send requests refused, by reason"),
            &["reason"],
        )?;
        let accept_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ump_accept_duration_seconds",
                "Time from request to 202 Accepted",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["endpoint"],
        )?;
        let batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new("ump_batch_size", "Messages per batch request")
                .buckets(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
        )?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(accept_seconds.clone()))?;
        let journey_relayed = IntCounterVec::new(
            Opts::new(
                "ump_journey_messages_relayed_total",
                "Journey messages the relay took from the outbox, by result \
                 (enqueued, not_sent, dropped, retried, paced)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(batch_size.clone()))?;
        let journey_outbox = prometheus::IntGauge::new(
            "ump_journey_outbox_messages",
            "Journey messages waiting in the outbox for the relay (all tenants)",
        )?;
        registry.register(Box::new(journey_relayed.clone()))?;
        registry.register(Box::new(journey_outbox.clone()))?;
        let journey_outbox_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "ump_journey_outbox_wait_seconds",
                "From a journey step's message entering the outbox to the relay enqueuing it",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(journey_outbox_wait.clone()))?;
        let recommend_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ump_recommend_duration_seconds",
                "Time to make one person's recommendations, by strategy",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["strategy"],
        )?;
        registry.register(Box::new(recommend_seconds.clone()))?;
        let channels_invalid = IntGaugeVec::new(
            Opts::new(
                "ump_api_channels_invalid",
                "Channels whose spec or policy is invalid now, by state: kept (on their last \
                 valid configuration) or left_out",
            ),
            &["state"],
        )?;
        for state in ["kept", "left_out"] {
            channels_invalid.with_label_values(&[state]).set(0);
        }
        registry.register(Box::new(channels_invalid.clone()))?;
        Ok(Self {
            registry,
            accepted,
            rejected,
            accept_seconds,
            batch_size,
            journey_relayed,
            journey_outbox,
            journey_outbox_wait,
            recommend_seconds,
            channels_invalid,
        })
    }
}

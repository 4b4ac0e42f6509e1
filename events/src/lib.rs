//! UMP's event processor: takes behaviour events from the event log in batches and folds them into
//! each person's state and segment memberships (`ump_core::audience::fold`, over
//! `ump_automation`'s pure step), committing the result and the log position together so that a
//! crash or a rebalance never counts an event twice or loses one. People whose segments time
//! alone could change are looked at again when that moment comes.
//!
//! Two runtimes around the same fold: `cluster` (Kafka and MySQL, its own Deployment, scaled by
//! the events topic's lag) and `all_in_one` (the all-in-one mode's SQLite file).

pub mod all_in_one;
pub mod cluster;
pub mod items;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use ump_core::audience::BatchReport;

/// The processor's metrics.
#[derive(Clone)]
pub struct EventMetrics {
    pub registry: Registry,
    /// Entries taken, by `result`: counted, repeated (already counted), recheck.
    pub entries: IntCounterVec,
    /// Segment entries and exits.
    pub memberships: IntCounterVec,
    pub batch_seconds: Histogram,
    /// Entries of the log that could not be read (logged, skipped).
    pub unreadable: IntCounter,
    /// Entries waiting: the events topic's lag of this processor's partitions (cluster), the
    /// SQLite event log's length (all-in-one).
    pub backlog: IntGauge,
    /// Rechecks put on the log because a wake-up came.
    pub wakeups: IntCounter,
    /// Failed batch commits (retried).
    pub failures: IntCounter,
    /// Times the processor left and joined its consumer group again because the group recorded
    /// nothing while events waited (cluster).
    pub rejoins: IntCounter,
    /// From an event's acceptance (its `202`) to its effect on the person's segments being
    /// committed.
    pub visible_seconds: Histogram,
    /// Journey steps' counts committed (entered, sent, converted, ...), by counter.
    pub journey_steps: IntCounterVec,
}

impl EventMetrics {
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let entries = IntCounterVec::new(
            Opts::new(
                "ump_events_processed_total",
                "Event log entries the processor took, by result (counted, repeated, recheck, erased)",
            ),
            &["result"],
        )?;
        let memberships = IntCounterVec::new(
            Opts::new(
                "ump_segment_membership_changes_total",
                "People entering and leaving segments, by change (entered, left)",
            ),
            &["change"],
        )?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ump_event_batch_seconds",
                "Time to load, fold and commit one batch of events",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let unreadable = IntCounter::new(
            "ump_events_unreadable_total",
            "Event log entries that could not be read, passed over (their positions committed)",
        )?;
        let backlog = IntGauge::new(
            "ump_event_backlog",
            "Event log entries not yet processed (the events topic's lag in the cluster mode)",
        )?;
        let wakeups = IntCounter::new(
            "ump_event_wakeups_total",
            "Rechecks of people queued because a time window could change their segments",
        )?;
        let failures = IntCounter::new(
            "ump_event_batch_failures_total",
            "Batches whose commit failed and was retried",
        )?;
        let rejoins = IntCounter::new(
            "ump_event_group_rejoins_total",
            "Times the processor replaced its Kafka consumer (the new one joins the group): the group recorded nothing while events waited, or its progress could not be seen",
        )?;
        let visible_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ump_event_visible_seconds",
                "From an event's acceptance to its segment memberships being committed",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        let journey_steps = IntCounterVec::new(
            Opts::new(
                "ump_journey_steps_total",
                "Journey counts committed by the processor, by counter (entered, reached, sent, \
                 suppressed_cap, held_quiet, matched, timed_out, converted, exited, assigned)",
            ),
            &["counter"],
        )?;
        registry.register(Box::new(journey_steps.clone()))?;
        registry.register(Box::new(visible_seconds.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(memberships.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(unreadable.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(wakeups.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(rejoins.clone()))?;
        Ok(Self {
            registry,
            entries,
            memberships,
            batch_seconds,
            unreadable,
            backlog,
            wakeups,
            failures,
            rejoins,
            visible_seconds,
            journey_steps,
        })
    }

    pub fn record(&self, report: &BatchReport) {
        for (result, n) in [
            ("counted", report.counted),
            ("repeated", report.repeated),
            ("recheck", report.rechecks),
            ("erased", report.erased),
        ] {
            self.entries.with_label_values(&[result]).inc_by(n);
        }
        self.memberships
            .with_label_values(&["entered"])
            .inc_by(report.entered);
        self.memberships
            .with_label_values(&["left"])
            .inc_by(report.left);
        for ((_, stat), n) in &report.journey_stats {
            // `waiting` moves both ways: the live number is in the journey's counts (the API).
            if stat.counter != ump_automation::journey::counter::WAITING && *n > 0 {
                self.journey_steps
                    .with_label_values(&[stat.counter])
                    .inc_by(*n as u64);
            }
        }
    }
}

/// How often due wake-ups (segment windows, journey timers) are looked for: a journey's timer
/// fires within this of its time, plus the recheck's trip through the log.
pub const WAKE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How often segment sizes are sampled (the dashboard's chart).
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Samples every segment's size soon after start and every `SAMPLE_EVERY` until `cancel`.
pub async fn sample_sizes(
    store: std::sync::Arc<dyn ump_core::audience::SegmentStore>,
    cancel: tokio_util::sync::CancellationToken,
) {
    // The first a few seconds after start: the events a start finds waiting are in by then.
    let first = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut tick = tokio::time::interval_at(first, SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.sample_sizes(chrono::Utc::now()).await {
            tracing::warn!(error = %e, "sampling segment sizes failed");
        }
    }
}

/// How long to wait before retrying a failed commit: doubling from 100 ms to 5 s.
pub fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis((100u64 << failures.min(6)).min(5_000))
}

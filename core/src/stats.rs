//! Delivery statistics of a tenant over a recent window (the dashboard's overview): counts by
//! channel and status, the success rate, and a throughput series. The stores only count
//! `(channel, status, bucket)` groups; turning those into `Stats` is the same for every store.

use crate::model::Status;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Messages by current status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    /// Every message, whatever its status.
    pub total: u64,
    pub accepted: u64,
    pub scheduled: u64,
    pub sending: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub duplicate: u64,
    pub dead_lettered: u64,
}

impl StatusCounts {
    pub fn add(&mut self, status: Status, count: u64) {
        self.total += count;
        let slot = match status {
            Status::Accepted => &mut self.accepted,
            Status::Scheduled => &mut self.scheduled,
            Status::Sending => &mut self.sending,
            Status::Sent => &mut self.sent,
            Status::Delivered => &mut self.delivered,
            Status::Failed => &mut self.failed,
            Status::Duplicate => &mut self.duplicate,
            Status::DeadLettered => &mut self.dead_lettered,
        };
        *slot += count;
    }

    /// Share of the messages that reached an end that went out: (sent + delivered) over
    /// (sent + delivered + failed + dead_lettered). Duplicates were never meant to be sent and
    /// messages still on their way have no outcome yet, so neither counts. `None` when no
    /// message has an outcome.
    pub fn success_rate(&self) -> Option<f64> {
        let ok = self.sent + self.delivered;
        let finished = ok + self.failed + self.dead_lettered;
        (finished > 0).then(|| ok as f64 / finished as f64)
    }
}

/// One channel's messages in the window.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChannelStats {
    pub channel: String,
    pub counts: StatusCounts,
    pub success_rate: Option<f64>,
}

/// Messages accepted in `[at, at + bucket_seconds)`, by their current status.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatsBucket {
    pub at: DateTime<Utc>,
    pub counts: StatusCounts,
}

/// A tenant's messages accepted since `since`, by their current status.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Width of each bucket of `series`.
    pub bucket_seconds: u64,
    /// All channels together.
    pub totals: StatusCounts,
    /// See `StatusCounts::success_rate`; `null` when no message has an outcome yet.
    pub success_rate: Option<f64>,
    /// By channel name; channels without messages in the window are absent.
    pub channels: Vec<ChannelStats>,
    /// Every bucket from the one holding `since` to the one holding `until`, oldest first, empty
    /// buckets included (the throughput chart).
    pub series: Vec<StatsBucket>,
    /// The tenant's parked messages (retries, `send_at`, quiet hours) due more than a minute ago
    /// and still waiting, whenever they were accepted: should stay 0; more means the scheduler or
    /// the consumer is not keeping up.
    pub overdue: u64,
}

/// What a store counts: messages of `channel` in `status` accepted in the bucket starting at
/// `bucket_start_ms` (milliseconds since the epoch, a multiple of the bucket width).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsCount {
    pub channel: String,
    pub status: Status,
    pub bucket_start_ms: i64,
    pub count: u64,
}

/// Width of a bucket in whole milliseconds, at least one.
pub fn bucket_millis(bucket: Duration) -> i64 {
    i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Start of the bucket holding `millis`: buckets are aligned on the epoch, so the same minute
/// (or quarter hour) is the same bucket in every query.
pub fn bucket_start(millis: i64, width: i64) -> i64 {
    millis.div_euclid(width) * width
}

fn at_millis(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

impl Stats {
    /// Assembles the counts of a store into totals, per-channel figures and a gap-free series.
    /// A count outside the series (an id minted by a clock ahead of this one) still counts in the
    /// totals and lands in the nearest bucket, so the series always sums to the totals.
    pub fn from_counts(
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        bucket: Duration,
        counts: impl IntoIterator<Item = StatsCount>,
    ) -> Self {
        let width = bucket_millis(bucket);
        let first = bucket_start(since.timestamp_millis(), width);
        let last = bucket_start(until.timestamp_millis(), width).max(first);
        let buckets = usize::try_from((last - first) / width + 1).unwrap_or(1);
        let mut series = vec![StatusCounts::default(); buckets];
        let mut totals = StatusCounts::default();
        let mut channels: BTreeMap<String, StatusCounts> = BTreeMap::new();
        for c in counts {
            totals.add(c.status, c.count);
            channels
                .entry(c.channel)
                .or_default()
                .add(c.status, c.count);
            let index = (bucket_start(c.bucket_start_ms, width).clamp(first, last) - first) / width;
            if let Some(slot) = usize::try_from(index).ok().and_then(|i| series.get_mut(i)) {
                slot.add(c.status, c.count);
            }
        }
        Self {
            since,
            until,
            bucket_seconds: bucket.as_secs().max(1),
            success_rate: totals.success_rate(),
            totals,
            channels: channels
                .into_iter()
                .map(|(channel, counts)| ChannelStats {
                    channel,
                    success_rate: counts.success_rate(),
                    counts,
                })
                .collect(),
            series: series
                .into_iter()
                .enumerate()
                .map(|(i, counts)| StatsBucket {
                    at: at_millis(first + i as i64 * width),
                    counts,
                })
                .collect(),
            overdue: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(channel: &str, status: Status, at: DateTime<Utc>, n: u64) -> StatsCount {
        StatsCount {
            channel: channel.into(),
            status,
            bucket_start_ms: bucket_start(at.timestamp_millis(), 60_000),
            count: n,
        }
    }

    fn time(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn counts_become_totals_channels_and_a_gap_free_series() {
        let since = time("2026-11-24T10:00:30Z");
        let until = time("2026-11-24T10:03:10Z");
        let stats = Stats::from_counts(
            since,
            until,
            Duration::from_secs(60),
            [
                count("sms", Status::Sent, time("2026-11-24T10:00:40Z"), 3),
                count("sms", Status::Failed, time("2026-11-24T10:02:00Z"), 1),
                count("email", Status::Delivered, time("2026-11-24T10:03:05Z"), 2),
                count("email", Status::Duplicate, time("2026-11-24T10:03:05Z"), 4),
            ],
        );
        assert_eq!(stats.bucket_seconds, 60);
        assert_eq!(stats.totals.total, 10);
        assert_eq!(stats.totals.sent, 3);
        assert_eq!(stats.totals.duplicate, 4);
        // 5 out of 6 with an outcome went out; duplicates do not count.
        assert_eq!(stats.success_rate, Some(5.0 / 6.0));
        let names: Vec<&str> = stats.channels.iter().map(|c| c.channel.as_str()).collect();
        assert_eq!(names, ["email", "sms"]);
        assert_eq!(stats.channels[0].success_rate, Some(1.0));
        assert_eq!(stats.channels[1].counts.failed, 1);
        assert_eq!(stats.channels[1].success_rate, Some(0.75));

        let at: Vec<DateTime<Utc>> = stats.series.iter().map(|b| b.at).collect();
        assert_eq!(
            at,
            [
                time("2026-11-24T10:00:00Z"),
                time("2026-11-24T10:01:00Z"),
                time("2026-11-24T10:02:00Z"),
                time("2026-11-24T10:03:00Z"),
            ]
        );
        let per_bucket: Vec<u64> = stats.series.iter().map(|b| b.counts.total).collect();
        assert_eq!(per_bucket, [3, 0, 1, 6]);
    }

    #[test]
    fn counts_outside_the_window_land_in_the_nearest_bucket() {
        let since = time("2026-11-24T10:00:00Z");
        let until = time("2026-11-24T10:01:00Z");
        let stats = Stats::from_counts(
            since,
            until,
            Duration::from_secs(60),
            [count("sms", Status::Sent, time("2026-11-24T10:09:00Z"), 2)],
        );
        assert_eq!(stats.series.len(), 2);
        assert_eq!(stats.series[1].counts.sent, 2);
        assert_eq!(
            stats.series.iter().map(|b| b.counts.total).sum::<u64>(),
            stats.totals.total
        );
    }

    #[test]
    fn no_outcome_means_no_success_rate() {
        let mut counts = StatusCounts::default();
        assert_eq!(counts.success_rate(), None);
        counts.add(Status::Accepted, 5);
        counts.add(Status::Duplicate, 1);
        assert_eq!(counts.success_rate(), None);
        assert_eq!(counts.total, 6);
    }
}

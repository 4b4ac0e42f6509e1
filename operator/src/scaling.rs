//! Worker replicas from consumer lag: KEDA's Kafka scaler formula, `ceil(lag / lagPerReplica)`,
//! clamped to the channel's bounds and to the partition count, with an HPA-style scale-down
//! stabilization window so a lag that dips for a moment does not remove workers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use ump_domain::resources::ScalingSpec;

/// The replica count the lag asks for, before stabilization.
///
/// `minReplicas` always holds (it is an explicit request for standby workers); the partition count
/// only caps what lag adds, since a consumer beyond the partition count would sit idle.
pub fn recommended_replicas(total_lag: i64, scaling: &ScalingSpec, partitions: i32) -> i32 {
    let per_replica = scaling.lag_per_replica.max(1);
    let lag = total_lag.max(0);
    // i64::div_ceil is not stable for signed integers; lag and per_replica are both positive here.
    let wanted = (lag / per_replica) + i64::from(lag % per_replica != 0);
    let min = scaling.min_replicas.max(0);
    let upper = scaling.max_replicas.min(partitions.max(1)).max(min);
    i32::try_from(wanted).unwrap_or(i32::MAX).clamp(min, upper)
}

/// Recommendations of the last window, per channel. Scaling up is immediate; scaling down takes
/// the highest recommendation seen within the window, so workers go only after the lower count has
/// held for the whole window.
#[derive(Debug, Default)]
pub struct Stabilizer {
    history: HashMap<String, VecDeque<(Instant, i32)>>,
}

impl Stabilizer {
    /// The replicas to run now. `current` is what the Deployment has: on the first look at a
    /// channel (e.g. after an operator restart) it seeds the window, so a restart never scales down
    /// at once.
    pub fn stabilize(
        &mut self,
        channel: &str,
        current: Option<i32>,
        recommended: i32,
        window: Duration,
        now: Instant,
    ) -> i32 {
        let history = self.history.entry(channel.to_owned()).or_default();
        if history.is_empty()
            && let Some(current) = current
        {
            history.push_back((now, current));
        }
        history.push_back((now, recommended));
        while history
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            history.pop_front();
        }
        history
            .iter()
            .map(|(_, replicas)| *replicas)
            .max()
            .unwrap_or(recommended)
    }

    /// Forgets a deleted channel.
    pub fn forget(&mut self, channel: &str) {
        self.history.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min: i32, max: i32, lag_per_replica: i64) -> ScalingSpec {
        ScalingSpec {
            min_replicas: min,
            max_replicas: max,
            lag_per_replica,
            ..ScalingSpec::default()
        }
    }

    #[test]
    fn keda_formula_clamped_to_bounds_and_partitions() {
        let s = scaling(1, 10, 100);
        assert_eq!(recommended_replicas(0, &s, 12), 1, "min holds");
        assert_eq!(recommended_replicas(1, &s, 12), 1);
        assert_eq!(recommended_replicas(101, &s, 12), 2, "ceil");
        assert_eq!(recommended_replicas(550, &s, 12), 6);
        assert_eq!(recommended_replicas(1_000_000, &s, 12), 10, "max");
        assert_eq!(recommended_replicas(1_000_000, &s, 3), 3, "partitions cap");
        assert_eq!(recommended_replicas(-5, &s, 3), 1, "negative lag is none");
        assert_eq!(recommended_replicas(i64::MAX, &s, 12), 10, "no overflow");
    }

    #[test]
    fn min_wins_over_the_partition_cap_and_zero_is_allowed() {
        assert_eq!(recommended_replicas(0, &scaling(2, 4, 10), 1), 2);
        assert_eq!(recommended_replicas(0, &scaling(0, 4, 10), 6), 0);
        assert_eq!(recommended_replicas(5, &scaling(0, 4, 10), 6), 1);
    }

    #[test]
    fn scale_up_is_immediate_scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert_eq!(s.stabilize("a", None, 1, window, t0), 1);
        assert_eq!(s.stabilize("a", Some(1), 4, window, t0 + secs(10)), 4);
        // The lag drains: the recommendation drops but 4 holds within the window...
        assert_eq!(s.stabilize("a", Some(4), 1, window, t0 + secs(20)), 4);
        assert_eq!(s.stabilize("a", Some(4), 1, window, t0 + secs(69)), 4);
        // ...and goes once the 4 has aged out.
        assert_eq!(s.stabilize("a", Some(4), 1, window, t0 + secs(71)), 1);
    }

    #[test]
    fn a_dip_inside_the_window_does_not_flap() {
        let window = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        s.stabilize("a", None, 3, window, t0);
        for (i, recommended) in [1, 3, 1, 3, 1].into_iter().enumerate() {
            let at = t0 + secs(5 * (i as u64 + 1));
            assert_eq!(s.stabilize("a", Some(3), recommended, window, at), 3);
        }
    }

    #[test]
    fn restart_seeds_the_window_with_the_current_replicas() {
        let window = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert_eq!(s.stabilize("a", Some(4), 1, window, t0), 4);
        assert_eq!(s.stabilize("a", Some(4), 1, window, t0 + secs(31)), 1);
        s.forget("a");
        assert_eq!(s.stabilize("a", None, 2, window, t0 + secs(32)), 2);
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}

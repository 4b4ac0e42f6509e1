//! The bounds every provider call runs within: an answer within `timeout`, and at most as many
//! calls in flight as the provider takes without slowing down.
//!
//! How many that is, is learnt per provider and worker by AIMD (additive increase,
//! multiplicative decrease, as TCP's congestion control and Netflix's `concurrency-limits`
//! `AIMDLimit`): every call that comes back fast while the limit is in use raises the limit by
//! one; a sign of overload (no answer within `timeout`, `429`/`503`, an answer slower than twice
//! the provider's usual latency) cuts it by a fifth, at most once per round trip. The limit stays
//! between 1 and `maxConcurrency`; `adaptiveConcurrency: false` holds it at `maxConcurrency`. The
//! channel's rate limit is applied before a call asks for a slot, so the limit never lets more
//! through than the policy allows. The decisions are in [`Aimd`] (pure, explicit time).

use super::BuildError;
use super::settings::Settings;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use ump_core::provider::Outcome;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default ceiling of a provider whose calls share connections (HTTP/2 streams: APNs, FCM).
pub const MULTIPLEXED: usize = 1000;
/// The default ceiling of a provider with one connection per call in flight (HTTP/1.1).
pub const PER_CONNECTION: usize = 256;
/// The limit a provider starts from (and the old fixed default).
const START: usize = 32;
/// How much of the limit a sign of overload takes away.
const BACKOFF: f64 = 0.8;
/// An answer slower than `SLOW_FACTOR` × the usual latency (plus `SLOW_MARGIN`, so that the
/// jitter of a provider answering in microseconds is no sign) counts as overload.
const SLOW_FACTOR: u32 = 2;
const SLOW_MARGIN: Duration = Duration::from_millis(5);
/// The usual latency is the fastest answer of the last window: it follows a provider whose floor
/// moved (another region, a slower network) within two windows.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);

/// What one finished call says about the provider's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Answered (sent or refused for good).
    Answered,
    /// Overloaded: timed out, `429`, `503`, or asked to retry after a while.
    Overloaded,
    /// Failed for a reason that says nothing of the load (a `500`, a refused credential).
    Neutral,
}

impl Signal {
    /// The signal of `outcome` (a call past the timeout is [`Signal::Overloaded`] by the caller).
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Sent { .. } | Outcome::Permanent { .. } => Self::Answered,
            Outcome::Retryable {
                retry_after: Some(_),
                ..
            } => Self::Overloaded,
            Outcome::Retryable { reason, .. } => {
                // The shapes `http::classify_status` and `http::transport_failure` give.
                let overloaded = ["HTTP 429", "HTTP 503", "timed out"]
                    .iter()
                    .any(|sign| reason.starts_with(sign));
                if overloaded {
                    Self::Overloaded
                } else {
                    Self::Neutral
                }
            }
        }
    }
}

/// The AIMD limit of one provider. Time is a monotonic offset given by the caller.
#[derive(Clone, Debug)]
pub struct Aimd {
    limit: f64,
    max: usize,
    /// The fastest answer of the previous window (the usual latency), and of this one.
    baseline: Option<Duration>,
    window_fastest: Option<Duration>,
    window_start: Duration,
    last_cut: Option<Duration>,
}

impl Aimd {
    pub fn new(start: usize, max: usize) -> Self {
        let max = max.max(1);
        Self {
            limit: start.clamp(1, max) as f64,
            max,
            baseline: None,
            window_fastest: None,
            window_start: Duration::ZERO,
            last_cut: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Takes in a call that finished at `now` after `latency`, `in_flight` calls (itself
    /// included) having been open when it finished.
    pub fn sample(&mut self, now: Duration, latency: Duration, signal: Signal, in_flight: usize) {
        if now.saturating_sub(self.window_start) >= BASELINE_WINDOW {
            self.baseline = self.window_fastest.or(self.baseline);
            self.window_fastest = None;
            self.window_start = now;
        }
        if signal == Signal::Answered {
            self.window_fastest = Some(self.window_fastest.map_or(latency, |f| f.min(latency)));
            if self.baseline.is_none() {
                self.baseline = self.window_fastest;
            }
        }
        let usual = self.baseline.unwrap_or(latency);
        let slow = latency > usual * SLOW_FACTOR + SLOW_MARGIN;
        match signal {
            Signal::Overloaded => self.cut(now, usual),
            Signal::Answered if slow => self.cut(now, usual),
            // Raised only while the limit is what holds calls back: a provider used at a tenth
            // of its limit proves nothing about a higher one.
            Signal::Answered if in_flight * 2 >= self.limit() => {
                self.limit = (self.limit + 1.0).min(self.max as f64);
            }
            Signal::Answered | Signal::Neutral => {}
        }
    }

    /// One cut per round trip: the calls already in flight when the provider showed overload
    /// report the same overload, and are not news.
    fn cut(&mut self, now: Duration, usual: Duration) {
        let round_trip = usual.max(Duration::from_millis(1));
        if self
            .last_cut
            .is_some_and(|at| now.saturating_sub(at) < round_trip)
        {
            return;
        }
        self.last_cut = Some(now);
        self.limit = (self.limit * BACKOFF).max(1.0);
    }
}

struct Slots {
    aimd: Aimd,
    /// `false`: the limit stays at `maxConcurrency`.
    adaptive: bool,
    in_flight: usize,
}

pub struct CallLimits {
    timeout: Duration,
    slots: Mutex<Slots>,
    freed: Notify,
    epoch: Instant,
}

impl CallLimits {
    /// `timeout` (e.g. `10s`), `maxConcurrency` (default `default_max`) and
    /// `adaptiveConcurrency` (default `true`) from the provider's settings.
    pub fn from_settings(settings: &Settings<'_>, default_max: usize) -> Result<Self, BuildError> {
        let timeout = settings.duration("timeout", DEFAULT_TIMEOUT)?;
        let max = settings.number("maxConcurrency", default_max)?;
        let adaptive = settings.flag("adaptiveConcurrency", true)?;
        if timeout.is_zero() {
            return Err(settings.invalid("setting \"timeout\" must be more than 0s".into()));
        }
        if max == 0 {
            return Err(settings.invalid("setting \"maxConcurrency\" must be at least 1".into()));
        }
        let start = if adaptive { START } else { max };
        Ok(Self {
            timeout,
            slots: Mutex::new(Slots {
                aimd: Aimd::new(start, max),
                adaptive,
                in_flight: 0,
            }),
            freed: Notify::new(),
            epoch: Instant::now(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().aimd.limit()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `call` once a slot is free. Waiting for the slot does not count against the
    /// timeout: only the provider's own slowness does.
    pub async fn run(&self, call: impl Future<Output = Outcome>) -> Outcome {
        self.bounded(call, Signal::of, |timed_out| timed_out).await
    }

    /// Runs `call`, one request for `count` messages, as [`CallLimits::run`] does a single one:
    /// it takes one slot. A timeout is every message's outcome; the request says the provider is
    /// overloaded when every message got the same sign of it (the whole request was refused).
    pub async fn run_many(
        &self,
        count: usize,
        call: impl Future<Output = Vec<Outcome>>,
    ) -> Vec<Outcome> {
        let signal = |outcomes: &Vec<Outcome>| {
            let signals: Vec<Signal> = outcomes.iter().map(Signal::of).collect();
            if signals.contains(&Signal::Answered) {
                Signal::Answered
            } else if !signals.is_empty() && signals.iter().all(|s| *s == Signal::Overloaded) {
                Signal::Overloaded
            } else {
                Signal::Neutral
            }
        };
        self.bounded(call, signal, |timed_out| vec![timed_out; count])
            .await
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = T>,
        signal_of: impl Fn(&T) -> Signal,
        timed_out: impl FnOnce(Outcome) -> T,
    ) -> T {
        let slot = self.acquire().await;
        let started = Instant::now();
        let (answer, signal) = match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => {
                let signal = signal_of(&answer);
                (answer, signal)
            }
            Err(_) => (
                timed_out(Outcome::Retryable {
                    reason: format!(
                        "no answer within {}",
                        ump_core::resources::Duration::from(self.timeout)
                    ),
                    retry_after: None,
                }),
                Signal::Overloaded,
            ),
        };
        slot.release(started.elapsed(), signal);
        answer
    }

    async fn acquire(&self) -> Slot<'_> {
        loop {
            // Registered as a waiter before the check: a slot freed between the check and the
            // wait wakes this call instead of being lost.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut slots = self.lock();
                if slots.in_flight < slots.aimd.limit() {
                    slots.in_flight += 1;
                    return Slot {
                        limits: self,
                        released: false,
                    };
                }
            }
            freed.await;
        }
    }
}

/// A call's place among those in flight; given back (with what the call showed) when it ends,
/// or, should the call be dropped half-way, given back without a sample.
struct Slot<'a> {
    limits: &'a CallLimits,
    released: bool,
}

impl Slot<'_> {
    fn release(mut self, latency: Duration, signal: Signal) {
        self.released = true;
        let limits = self.limits;
        let mut slots = limits.lock();
        if slots.adaptive {
            let in_flight = slots.in_flight;
            let now = limits.epoch.elapsed();
            slots.aimd.sample(now, latency, signal, in_flight);
        }
        slots.in_flight -= 1;
        let free = slots.aimd.limit().saturating_sub(slots.in_flight);
        drop(slots);
        // A raised limit may let more than one waiting call go.
        for _ in 0..free.min(2) {
            limits.freed.notify_one();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.limits.lock().in_flight -= 1;
            self.limits.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    const MS: Duration = Duration::from_millis(1);

    fn answered(aimd: &mut Aimd, now_ms: u64, latency_ms: u64) {
        let in_flight = aimd.limit();
        aimd.sample(
            MS * now_ms as u32,
            MS * latency_ms as u32,
            Signal::Answered,
            in_flight,
        );
    }

    #[test]
    fn fast_answers_under_load_raise_the_limit_by_one_each_up_to_the_ceiling() {
        let mut aimd = Aimd::new(32, 40);
        for i in 0..5 {
            answered(&mut aimd, i, 30);
        }
        assert_eq!(aimd.limit(), 37);
        for i in 5..100 {
            answered(&mut aimd, i, 30);
        }
        assert_eq!(aimd.limit(), 40);
    }

    #[test]
    fn a_limit_little_used_is_not_raised() {
        let mut aimd = Aimd::new(32, 1000);
        for i in 0..50 {
            aimd.sample(MS * i, MS * 30, Signal::Answered, 3);
        }
        assert_eq!(aimd.limit(), 32);
    }

    #[test]
    fn overload_cuts_a_fifth_once_per_round_trip() {
        let mut aimd = Aimd::new(100, 1000);
        answered(&mut aimd, 0, 30);
        assert_eq!(aimd.limit(), 101);
        // A burst of 429s within one round trip of 30 ms: one cut.
        for t in 10..20 {
            aimd.sample(MS * t, MS * 30, Signal::Overloaded, 50);
        }
        assert_eq!(aimd.limit(), 80);
        // The next round trip's overload: another.
        aimd.sample(MS * 45, MS * 30, Signal::Overloaded, 50);
        assert_eq!(aimd.limit(), 64);
    }

    #[test]
    fn an_answer_twice_as_slow_as_usual_is_overload() {
        let mut aimd = Aimd::new(100, 1000);
        answered(&mut aimd, 0, 30);
        answered(&mut aimd, 1, 60);
        assert_eq!(aimd.limit(), 102, "within 2 × 30 ms + 5 ms");
        answered(&mut aimd, 2, 70);
        assert_eq!(aimd.limit(), 81);
    }

    #[test]
    fn the_usual_latency_follows_a_provider_whose_floor_moved() {
        let mut aimd = Aimd::new(100, 1000);
        answered(&mut aimd, 0, 10);
        // The provider now answers in 40 ms: overload at first, then its new normal once a
        // window has passed without faster answers.
        for t in 1..=25 {
            answered(&mut aimd, t * 1000, 40);
        }
        let settled = aimd.limit();
        answered(&mut aimd, 26_000, 40);
        assert_eq!(aimd.limit(), settled + 1);
    }

    #[test]
    fn neutral_failures_neither_raise_nor_cut_and_the_floor_is_one() {
        let mut aimd = Aimd::new(2, 10);
        aimd.sample(MS, MS * 30, Signal::Neutral, 2);
        assert_eq!(aimd.limit(), 2);
        for t in 0..20 {
            aimd.sample(MS * (t * 100), MS * 30, Signal::Overloaded, 1);
        }
        assert_eq!(aimd.limit(), 1);
    }

    #[test]
    fn signals_of_outcomes() {
        let retry = |reason: &str, after: Option<Duration>| Outcome::Retryable {
            reason: reason.into(),
            retry_after: after,
        };
        assert_eq!(Signal::of(&retry("HTTP 429", None)), Signal::Overloaded);
        assert_eq!(
            Signal::of(&retry("HTTP 503: busy", None)),
            Signal::Overloaded
        );
        assert_eq!(
            Signal::of(&retry("timed out: operation timed out", None)),
            Signal::Overloaded
        );
        assert_eq!(
            Signal::of(&retry("HTTP 500: oops", Some(Duration::from_secs(1)))),
            Signal::Overloaded
        );
        assert_eq!(Signal::of(&retry("HTTP 500: oops", None)), Signal::Neutral);
        assert_eq!(
            Signal::of(&Outcome::Permanent {
                reason: "bad".into()
            }),
            Signal::Answered
        );
    }

    fn limits(settings: &[(&str, &str)]) -> CallLimits {
        let spec = ump_core::resources::ProviderSpec {
            name: "p".into(),
            provider_type: ump_core::resources::ProviderType::Webhook,
            secret_ref: None,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        CallLimits::from_settings(&Settings::of(&spec), 1000).expect("limits")
    }

    /// `calls` calls that each wait until `gate` opens; the most found in flight at once.
    async fn gated_calls(limits: &CallLimits, calls: usize) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = tokio::sync::Semaphore::new(0);
        let (open, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let calls = (0..calls).map(|_| {
            limits.run(async {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= limits.limit(), "{now} in flight past the limit");
                most.fetch_max(now, Ordering::SeqCst);
                drop(gate.acquire().await);
                open.fetch_sub(1, Ordering::SeqCst);
                Outcome::Sent {
                    provider_message_id: None,
                }
            })
        });
        let opener = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            gate.add_permits(Semaphore::MAX_PERMITS);
        };
        tokio::join!(futures::future::join_all(calls), opener);
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn calls_past_the_limit_wait_for_a_slot_and_the_limit_grows_with_use() {
        let limits = limits(&[("timeout", "5s")]);
        assert_eq!(limits.limit(), START);
        // The first START calls fill the limit until the gate opens; as they come back, the
        // limit (and with it the calls let in) grows.
        let most = gated_calls(&limits, 400).await;
        assert!(most >= START, "{most}");
        assert!(limits.limit() > START, "{}", limits.limit());
    }

    #[tokio::test]
    async fn a_fixed_limit_holds() {
        let limits = limits(&[("maxConcurrency", "3"), ("adaptiveConcurrency", "false")]);
        assert_eq!(gated_calls(&limits, 20).await, 3);
        assert_eq!(limits.limit(), 3);
    }

    #[tokio::test]
    async fn a_fixed_limit_is_not_cut() {
        let limits = limits(&[("maxConcurrency", "3"), ("adaptiveConcurrency", "false")]);
        assert_eq!(limits.limit(), 3);
        limits
            .run(async {
                Outcome::Retryable {
                    reason: "HTTP 429".into(),
                    retry_after: None,
                }
            })
            .await;
        assert_eq!(limits.limit(), 3);
    }
}

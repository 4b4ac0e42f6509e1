//! Provider failover for a channel with several providers (primary first): each provider sits
//! behind a circuit breaker, and a send goes to the first provider whose circuit lets it through.
//!
//! A circuit opens after `circuitFailureThreshold` consecutive retryable outcomes (429, 5xx,
//! timeouts: the provider is in trouble); permanent outcomes say nothing about the provider's
//! health and count as successes. After `circuitCoolDown` one probe is let through (half-open):
//! success closes the circuit and traffic returns to the primary, failure opens it for another
//! cool-down. Both settings are read from the primary's settings (defaults 5 and 30s).
//!
//! One send goes to one provider: a retryable outcome is returned as is, and the retry the
//! pipeline schedules takes the route the circuits then allow. Trying the next provider at once
//! would send twice whenever the first one took the message but answered too late.

use super::BuildError;
use super::settings::Settings;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ump_core::provider::{Answer, Outcome, Outgoing, Provider};
use ump_core::resources::ProviderSpec;

const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(30);

/// Where time comes from, so the state machine can be tested with a clock that tests move.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A circuit as a metric shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Traffic flows.
    Closed,
    /// Traffic is kept away until the cool-down ends.
    Open,
    /// The cool-down is over: the next send is a probe.
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe went out at `started`. Another is admitted only when that one is older than a
    /// cool-down, so a probe whose send was cancelled cannot keep the circuit half-open forever.
    Probing {
        started: Instant,
    },
}

/// The circuit of one provider: pure state, driven by the times it is given.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    state: Breaker,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            state: Breaker::Closed { failures: 0 },
        }
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { until } if now < until => CircuitState::Open,
            Breaker::Open { .. } | Breaker::Probing { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether a send may go to this provider at `now`. Admitting the half-open probe records it,
    /// so concurrent sends do not all become probes.
    pub fn try_admit(&mut self, now: Instant) -> bool {
        match self.state {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } if now < until => false,
            Breaker::Probing { started } if now < started + self.cool_down => false,
            Breaker::Open { .. } | Breaker::Probing { .. } => {
                self.state = Breaker::Probing { started: now };
                true
            }
        }
    }

    /// The provider answered (sent, or refused the message itself): it is healthy.
    pub fn record_success(&mut self) {
        self.state = Breaker::Closed { failures: 0 };
    }

    /// The provider failed in a way worth retrying: count it, and open past the threshold.
    pub fn record_failure(&mut self, now: Instant) {
        self.state = match self.state {
            Breaker::Closed { failures } if failures + 1 < self.threshold => Breaker::Closed {
                failures: failures + 1,
            },
            _ => Breaker::Open {
                until: now + self.cool_down,
            },
        };
    }

    /// How long until this circuit admits a send again (zero when it does now).
    pub fn admits_in(&self, now: Instant) -> Duration {
        match self.state {
            Breaker::Closed { .. } => Duration::ZERO,
            Breaker::Open { until } => until.saturating_duration_since(now),
            Breaker::Probing { started } => {
                (started + self.cool_down).saturating_duration_since(now)
            }
        }
    }
}

struct Member {
    provider: Arc<dyn Provider>,
    circuit: Mutex<CircuitBreaker>,
}

pub struct FailoverProvider {
    name: String,
    members: Vec<Member>,
    clock: Arc<dyn Clock>,
}

impl FailoverProvider {
    /// `providers` in order of preference; thresholds from the primary's spec.
    pub fn new(
        name: &str,
        primary: &ProviderSpec,
        providers: Vec<Arc<dyn Provider>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BuildError> {
        let settings = Settings::of(primary);
        let threshold = settings.number("circuitFailureThreshold", DEFAULT_FAILURE_THRESHOLD)?;
        let cool_down = settings.duration("circuitCoolDown", DEFAULT_COOL_DOWN)?;
        if threshold == 0 {
            return Err(
                settings.invalid("setting \"circuitFailureThreshold\" must be at least 1".into())
            );
        }
        Ok(Self::with_breakers(
            name,
            providers,
            CircuitBreaker::new(threshold, cool_down),
            clock,
        ))
    }

    /// Every provider gets a copy of `breaker` (closed).
    pub fn with_breakers(
        name: &str,
        providers: Vec<Arc<dyn Provider>>,
        breaker: CircuitBreaker,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            members: providers
                .into_iter()
                .map(|provider| Member {
                    provider,
                    circuit: Mutex::new(breaker.clone()),
                })
                .collect(),
            clock,
        }
    }

    /// Each provider's name and circuit state, primary first (for the circuit metric).
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        let now = self.clock.now();
        self.members
            .iter()
            .map(|m| {
                let state = lock(&m.circuit).state(now);
                (m.provider.name().to_owned(), state)
            })
            .collect()
    }
}

impl crate::metrics::CircuitSource for FailoverProvider {
    fn circuits(&self) -> Vec<(String, CircuitState)> {
        FailoverProvider::circuits(self)
    }
}

/// The breaker even if a panicking thread poisoned its lock: its state is always consistent
/// (every update is a single assignment).
fn lock(circuit: &Mutex<CircuitBreaker>) -> std::sync::MutexGuard<'_, CircuitBreaker> {
    circuit
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Provider for FailoverProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Outgoing) -> Outcome {
        self.send_named(message).await.outcome
    }

    /// The member the circuits let through answers, under its own name; with every circuit
    /// open, the failover itself answers (retry after the nearest cool-down).
    async fn send_named(&self, message: &Outgoing) -> Answer {
        let now = self.clock.now();
        let Some(member) = self
            .members
            .iter()
            .find(|m| lock(&m.circuit).try_admit(now))
        else {
            let wait = self
                .members
                .iter()
                .map(|m| lock(&m.circuit).admits_in(now))
                .min();
            return Answer {
                provider: self.name.clone(),
                outcome: Outcome::Retryable {
                    reason: "every provider's circuit is open".into(),
                    retry_after: wait,
                },
            };
        };
        let answer = member.provider.send_named(message).await;
        let mut circuit = lock(&member.circuit);
        match answer.outcome {
            Outcome::Retryable { .. } => circuit.record_failure(self.clock.now()),
            Outcome::Sent { .. } | Outcome::Permanent { .. } => circuit.record_success(),
        }
        answer
    }

    fn concurrency_limits(&self) -> Vec<(String, usize)> {
        self.members
            .iter()
            .flat_map(|m| m.provider.concurrency_limits())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct FakeClock(Mutex<Instant>);

    impl FakeClock {
        fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(Instant::now())))
        }
        fn advance(&self, by: Duration) {
            let mut now = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *now += by;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    /// Answers from a script (then `Sent`), counting its calls.
    struct Scripted {
        name: &'static str,
        script: Mutex<VecDeque<Outcome>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(name: &'static str) -> Arc<Self> {
            Arc::new(Self {
                name,
                script: Mutex::new(VecDeque::new()),
                calls: AtomicUsize::new(0),
            })
        }
        fn then(&self, outcome: Outcome, times: usize) {
            let mut script = self
                .script
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            script.extend(std::iter::repeat_n(outcome, times));
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn send(&self, _: &Outgoing) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = self
                .script
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front();
            next.unwrap_or(Outcome::Sent {
                provider_message_id: Some(self.name.to_owned()),
            })
        }
    }

    fn retryable() -> Outcome {
        Outcome::Retryable {
            reason: "HTTP 503".into(),
            retry_after: None,
        }
    }

    use super::super::tests::message;

    const COOL_DOWN: Duration = Duration::from_secs(30);

    #[test]
    fn breaker_opens_at_the_threshold_and_probes_after_the_cool_down() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, COOL_DOWN);
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
        assert!(b.try_admit(t0));
        b.record_failure(t0);
        assert_eq!(b.state(t0), CircuitState::Open);
        assert!(!b.try_admit(t0 + COOL_DOWN - Duration::from_millis(1)));
        assert_eq!(
            b.admits_in(t0 + Duration::from_secs(10)),
            Duration::from_secs(20)
        );

        let t1 = t0 + COOL_DOWN;
        assert_eq!(b.state(t1), CircuitState::HalfOpen);
        assert!(b.try_admit(t1), "the probe");
        assert!(!b.try_admit(t1), "only one probe at a time");
        b.record_failure(t1);
        assert_eq!(b.state(t1), CircuitState::Open, "a failed probe reopens");

        let t2 = t1 + COOL_DOWN;
        assert!(b.try_admit(t2));
        b.record_success();
        assert_eq!(b.state(t2), CircuitState::Closed);
        assert!(b.try_admit(t2));
    }

    #[test]
    fn success_resets_the_count_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, COOL_DOWN);
        b.record_failure(t0);
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_circuit() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, COOL_DOWN);
        b.record_failure(t0);
        assert!(b.try_admit(t0 + COOL_DOWN));
        // The probe's send was cancelled: nothing is recorded. A cool-down later, another probe.
        assert!(!b.try_admit(t0 + COOL_DOWN + Duration::from_secs(1)));
        assert!(b.try_admit(t0 + COOL_DOWN * 2));
    }

    #[tokio::test]
    async fn traffic_moves_to_the_secondary_and_back() {
        let clock = FakeClock::new();
        let primary = Scripted::new("primary");
        let secondary = Scripted::new("secondary");
        let failover = FailoverProvider::with_breakers(
            "sms",
            vec![primary.clone(), secondary.clone()],
            CircuitBreaker::new(3, COOL_DOWN),
            clock.clone(),
        );
        primary.then(retryable(), 4);

        for _ in 0..3 {
            assert!(matches!(
                failover.send(&message()).await,
                Outcome::Retryable { .. }
            ));
        }
        assert_eq!(
            failover.circuits(),
            vec![
                ("primary".to_owned(), CircuitState::Open),
                ("secondary".to_owned(), CircuitState::Closed)
            ]
        );
        for _ in 0..5 {
            assert_eq!(
                failover.send(&message()).await,
                Outcome::Sent {
                    provider_message_id: Some("secondary".into())
                }
            );
        }
        assert_eq!((primary.calls(), secondary.calls()), (3, 5));

        // Cool-down over: one probe to the primary, which still fails → back to the secondary.
        clock.advance(COOL_DOWN);
        assert_eq!(failover.circuits()[0].1, CircuitState::HalfOpen);
        assert!(matches!(
            failover.send(&message()).await,
            Outcome::Retryable { .. }
        ));
        assert_eq!(failover.circuits()[0].1, CircuitState::Open);
        failover.send(&message()).await;
        assert_eq!((primary.calls(), secondary.calls()), (4, 6));

        // Next probe succeeds: the primary takes the traffic again.
        clock.advance(COOL_DOWN);
        assert_eq!(
            failover.send(&message()).await,
            Outcome::Sent {
                provider_message_id: Some("primary".into())
            }
        );
        assert_eq!(failover.circuits()[0].1, CircuitState::Closed);
        failover.send(&message()).await;
        assert_eq!((primary.calls(), secondary.calls()), (6, 6));
    }

    #[tokio::test]
    async fn the_answer_names_the_member_that_took_the_call() {
        let clock = FakeClock::new();
        let primary = Scripted::new("primary");
        let secondary = Scripted::new("secondary");
        let failover = FailoverProvider::with_breakers(
            "sms",
            vec![primary.clone(), secondary.clone()],
            CircuitBreaker::new(1, COOL_DOWN),
            clock.clone(),
        );
        assert_eq!(failover.send_named(&message()).await.provider, "primary");
        primary.then(retryable(), 1);
        let failed = failover.send_named(&message()).await;
        assert_eq!(failed.provider, "primary");
        assert!(matches!(failed.outcome, Outcome::Retryable { .. }));
        let answer = failover.send_named(&message()).await;
        assert_eq!(
            answer,
            Answer {
                provider: "secondary".into(),
                outcome: Outcome::Sent {
                    provider_message_id: Some("secondary".into())
                },
            }
        );
        secondary.then(retryable(), 1);
        failover.send_named(&message()).await;
        // Both circuits open: the failover answers under the channel's name.
        assert_eq!(failover.send_named(&message()).await.provider, "sms");
    }

    #[tokio::test]
    async fn permanent_outcomes_do_not_open_the_circuit() {
        let clock = FakeClock::new();
        let primary = Scripted::new("primary");
        let secondary = Scripted::new("secondary");
        let failover = FailoverProvider::with_breakers(
            "sms",
            vec![primary.clone(), secondary.clone()],
            CircuitBreaker::new(2, COOL_DOWN),
            clock.clone(),
        );
        primary.then(
            Outcome::Permanent {
                reason: "invalid number".into(),
            },
            10,
        );
        for _ in 0..10 {
            assert!(matches!(
                failover.send(&message()).await,
                Outcome::Permanent { .. }
            ));
        }
        assert_eq!(primary.calls(), 10);
        assert_eq!(secondary.calls(), 0);
        assert_eq!(failover.circuits()[0].1, CircuitState::Closed);
    }

    #[tokio::test]
    async fn all_circuits_open_means_retry_after_the_nearest_cool_down() {
        let clock = FakeClock::new();
        let a = Scripted::new("a");
        let b = Scripted::new("b");
        let failover = FailoverProvider::with_breakers(
            "sms",
            vec![a.clone(), b.clone()],
            CircuitBreaker::new(1, COOL_DOWN),
            clock.clone(),
        );
        a.then(retryable(), 1);
        b.then(retryable(), 1);
        failover.send(&message()).await;
        clock.advance(Duration::from_secs(10));
        failover.send(&message()).await;
        assert_eq!(
            failover.send(&message()).await,
            Outcome::Retryable {
                reason: "every provider's circuit is open".into(),
                retry_after: Some(Duration::from_secs(20)),
            }
        );
        assert_eq!((a.calls(), b.calls()), (1, 1));
    }
}

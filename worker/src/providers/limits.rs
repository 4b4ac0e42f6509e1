//! The bounds every provider call runs within: at most `maxConcurrency` calls in flight (so one
//! slow provider cannot take every worker task) and an answer within `timeout`.

use super::BuildError;
use super::settings::Settings;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Semaphore;
use ump_core::provider::Outcome;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_CONCURRENCY: usize = 32;

pub struct CallLimits {
    timeout: Duration,
    permits: Semaphore,
}

impl CallLimits {
    /// `timeout` (e.g. `10s`) and `maxConcurrency` from the provider's settings.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, BuildError> {
        let timeout = settings.duration("timeout", DEFAULT_TIMEOUT)?;
        let max = settings.number("maxConcurrency", DEFAULT_MAX_CONCURRENCY)?;
        if timeout.is_zero() {
            return Err(settings.invalid("setting \"timeout\" must be more than 0s".into()));
        }
        if max == 0 {
            return Err(settings.invalid("setting \"maxConcurrency\" must be at least 1".into()));
        }
        Ok(Self {
            timeout,
            permits: Semaphore::new(max),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `call` once a permit is free. Waiting for the permit does not count against the
    /// timeout: only the provider's own slowness does.
    pub async fn run(&self, call: impl Future<Output = Outcome>) -> Outcome {
        let Ok(_permit) = self.permits.acquire().await else {
            // The semaphore is never closed; answer sanely all the same.
            return Outcome::Retryable {
                reason: "provider is shutting down".into(),
                retry_after: None,
            };
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retryable {
                reason: format!(
                    "no answer within {}",
                    ump_core::resources::Duration::from(self.timeout)
                ),
                retry_after: None,
            },
        }
    }
}

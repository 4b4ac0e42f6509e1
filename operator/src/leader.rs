//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! the lease; a follower takes it once the record has not changed for a whole lease duration
//! measured on its own clock (so clock skew between nodes does not matter); every write is a
//! compare-and-swap on the resourceVersion, so two candidates can never both win. The leader that
//! cannot renew in time stops: the process exits rather than risk two writers.

use crate::error::{Error, Result};
use crate::settings::LeaderElection;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

/// What to do with the lease record just read (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder stopped renewing: take it.
    Take,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it and is alive.
    Follow { holder: String },
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or(Duration::from_secs(15), |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    if unchanged_for >= duration {
        Decision::Take
    } else {
        Decision::Follow { holder }
    }
}

pub struct LeaseElector {
    api: Api<Lease>,
    settings: LeaderElection,
    /// The record last seen (its resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl LeaseElector {
    pub fn new(client: Client, settings: LeaderElection) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    fn spec(&self, previous: Option<&LeaseSpec>, taking: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking {
                Some(now.clone())
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One round: read the lease and take or renew it if the rules allow. `Ok(true)` while leading.
    pub async fn try_lead(&mut self) -> Result<bool> {
        let current = self
            .api
            .get_opt(&self.settings.lease_name)
            .await
            .map_err(lease_error)?;
        let Some(mut lease) = current else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.settings.lease_name.clone());
            lease.spec = Some(self.spec(None, true));
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(lease_error(e)),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let now = Instant::now();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => now,
        };
        self.observed = Some((version, first_seen));
        let decision = decide(
            lease.spec.as_ref(),
            &self.settings.identity,
            now.duration_since(first_seen),
        );
        let taking = match decision {
            Decision::Follow { .. } => return Ok(false),
            Decision::Take => true,
            Decision::Renew => false,
        };
        lease.spec = Some(self.spec(lease.spec.as_ref(), taking));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|v| (v, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(lease_error(e)),
        }
    }

    /// Waits until this replica leads (or `stop` fires: `Ok(false)`).
    pub async fn acquire(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<bool> {
        loop {
            match self.try_lead().await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read the lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_interval) => {}
                _ = stop.wait_for(|s| *s) => return Ok(false),
            }
        }
    }

    /// Renews until `stop` fires (then returns `Ok`), or fails once the lease could not be renewed
    /// within a lease duration, or someone else took it.
    pub async fn hold(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<()> {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_interval) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            match self.try_lead().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    return Err(Error::LeaderElection(format!(
                        "lease {} was taken by another replica",
                        self.settings.lease_name
                    )));
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
            }
            if last_renewal.elapsed() >= self.settings.lease_duration {
                return Err(Error::LeaderElection(format!(
                    "lease {} not renewed for {:?}",
                    self.settings.lease_name, self.settings.lease_duration
                )));
            }
        }
    }

    /// Gives the lease up so a follower takes over at once instead of waiting for it to expire.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.lease_name)
            .await
            .map_err(lease_error)?
        else {
            return Ok(());
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.settings.identity.as_str());
        if !ours {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        self.api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await
            .map_err(lease_error)?;
        Ok(())
    }
}

fn lease_error(e: kube::Error) -> Error {
    Error::LeaderElection(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_or_own_leases_are_taken_or_renewed() {
        assert_eq!(decide(None, "a", Duration::ZERO), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", Duration::ZERO),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&held_by("a", 15)), "a", Duration::ZERO),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_holder_is_followed_until_its_record_goes_stale() {
        let lease = held_by("b", 15);
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(14)),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(15)),
            Decision::Take
        );
    }
}

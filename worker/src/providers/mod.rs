//! Providers: one module per protocol, all behind `ump_core::provider::Provider`. `build` makes
//! one provider from its spec; `for_delivery` makes a channel's provider for a delivery path,
//! behind failover when there are several.

pub mod apns;
mod batch;
pub mod failover;
pub mod fcm;
mod http;
mod limits;
mod nhn;
pub mod nhn_alimtalk;
pub mod nhn_friendtalk;
pub mod nhn_sms;
pub mod sandbox;
pub mod secret;
mod settings;
pub mod smtp;
pub mod twilio;
pub mod webhook;

use crate::metrics::{DeliveryPath, WorkerMetrics};
use limits::CallLimits;
use secret::{Secret, redact_outcome};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use ump_core::config::ResolvedChannel;
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::{ProviderSpec, ProviderType};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("provider {name}: type {provider_type:?} is not supported yet")]
    Unsupported {
        name: String,
        provider_type: ProviderType,
    },
    #[error("provider {name}: {detail}")]
    Invalid { name: String, detail: String },
}

/// Everything a provider may need besides its spec.
#[derive(Clone, Debug)]
pub struct ProviderContext<'a> {
    /// Where the provider's Secret is mounted: `<secrets_dir>/<secretRef.name>/<key>`.
    pub secrets_dir: &'a Path,
    /// Where the sandbox provider appends what it would have sent.
    pub sandbox_outbox: &'a Path,
}

/// A provider that calls a remote service. Each says how it calls, within which limits, with
/// which credentials; [`Bounded`] runs every one the same way.
#[async_trait::async_trait]
pub(crate) trait Remote: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// `timeout` and `maxConcurrency` from its settings.
    fn limits(&self) -> &CallLimits;
    /// The credentials no answer may show (a remote server may echo what it was sent).
    fn secrets(&self) -> Vec<&Secret>;
    /// One call as the protocol makes it, unbounded (unless [`Remote::bounds_its_calls`]) and
    /// unscrubbed.
    async fn call(&self, message: &Outgoing) -> Outcome;
    /// Whether `call` runs its requests within `limits` itself: a provider whose messages share
    /// requests (see `batch`) takes a slot per request, not per message.
    fn bounds_its_calls(&self) -> bool {
        false
    }
}

/// A remote provider as the pipeline gets it from [`build`]: each call within the provider's
/// limits (a permit of `maxConcurrency`, an answer within `timeout`), and no credential in the
/// reason of its outcome.
pub(crate) struct Bounded<R>(R);

#[async_trait::async_trait]
impl<R: Remote> Provider for Bounded<R> {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn send(&self, message: &Outgoing) -> Outcome {
        let outcome = if self.0.bounds_its_calls() {
            self.0.call(message).await
        } else {
            self.0.limits().run(self.0.call(message)).await
        };
        redact_outcome(outcome, &self.0.secrets())
    }

    fn concurrency_limits(&self) -> Vec<(String, usize)> {
        vec![(self.0.name().to_owned(), self.0.limits().limit())]
    }
}

fn bounded(remote: impl Remote) -> Arc<dyn Provider> {
    Arc::new(Bounded(remote))
}

/// One provider from its spec. Every provider but the in-process sandbox is [`Bounded`].
pub fn build(
    spec: &ProviderSpec,
    ctx: &ProviderContext<'_>,
) -> Result<Arc<dyn Provider>, BuildError> {
    Ok(match spec.provider_type {
        ProviderType::Sandbox => Arc::new(sandbox::SandboxProvider::build(spec, ctx)?),
        ProviderType::Smtp => bounded(smtp::SmtpProvider::build(spec, ctx)?),
        ProviderType::Twilio => bounded(twilio::TwilioProvider::build(spec, ctx)?),
        ProviderType::NhnSms => bounded(nhn_sms::NhnSmsProvider::build(spec, ctx)?),
        ProviderType::Fcm => bounded(fcm::FcmProvider::build(spec, ctx)?),
        ProviderType::Apns => bounded(apns::ApnsProvider::build(spec, ctx)?),
        ProviderType::NhnAlimtalk => bounded(nhn_alimtalk::NhnAlimtalkProvider::build(spec, ctx)?),
        ProviderType::NhnFriendtalk => {
            bounded(nhn_friendtalk::NhnFriendtalkProvider::build(spec, ctx)?)
        }
        ProviderType::Webhook => bounded(webhook::WebhookProvider::build(spec, ctx)?),
    })
}

/// The provider a delivery path uses for `channel`, as every path builds it: its only provider,
/// or failover across its providers (primary first, with the primary's circuit settings; named
/// after the channel) whose circuits `metrics` publishes, labelled with `path`
/// (`ump_provider_circuit_open`); the concurrency limits of its providers too
/// (`ump_provider_concurrency_limit`).
pub fn for_delivery(
    channel: &ResolvedChannel,
    ctx: &ProviderContext<'_>,
    metrics: &WorkerMetrics,
    path: DeliveryPath,
) -> Result<Arc<dyn Provider>, BuildError> {
    let (name, specs) = (channel.name(), &channel.resource.spec.providers);
    let provider: Arc<dyn Provider> = if let [only] = &specs[..] {
        build(only, ctx)?
    } else {
        let failover = Arc::new(build_failover(&name, specs, ctx)?);
        metrics.watch_circuits(path, &name, failover.clone());
        failover
    };
    metrics.watch_concurrency(path, &name, provider.clone());
    Ok(provider)
}

/// Failover across `specs` (primary first), as a concrete type for whoever reports its circuits
/// (`FailoverProvider::circuits`, e.g. as a metric).
pub fn build_failover(
    channel: &str,
    specs: &[ProviderSpec],
    ctx: &ProviderContext<'_>,
) -> Result<failover::FailoverProvider, BuildError> {
    let Some(primary) = specs.first() else {
        return Err(BuildError::Invalid {
            name: channel.to_owned(),
            detail: "the channel has no providers".into(),
        });
    };
    let providers = specs
        .iter()
        .map(|spec| build(spec, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    failover::FailoverProvider::new(channel, primary, providers, Arc::new(failover::SystemClock))
}

/// A JSON value as text, for APIs whose maps take strings only (FCM data, AlimTalk template
/// parameters): strings as they are, anything else as its JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use settings::Settings;
    use std::time::Duration;

    /// Answers with its secret in the reason, after `delay`.
    struct Echo {
        limits: CallLimits,
        token: Secret,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Remote for Echo {
        fn name(&self) -> &str {
            "echo"
        }

        fn limits(&self) -> &CallLimits {
            &self.limits
        }

        fn secrets(&self) -> Vec<&Secret> {
            vec![&self.token]
        }

        async fn call(&self, _: &Outgoing) -> Outcome {
            tokio::time::sleep(self.delay).await;
            Outcome::Permanent {
                reason: format!("401: bad token {}", self.token.expose()),
            }
        }
    }

    fn echo(delay: Duration) -> Bounded<Echo> {
        let spec = ProviderSpec {
            name: "echo".into(),
            provider_type: ProviderType::Webhook,
            secret_ref: None,
            settings: [("timeout", "200ms"), ("maxConcurrency", "1")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        Bounded(Echo {
            limits: CallLimits::from_settings(&Settings::of(&spec), 1).expect("limits"),
            token: Secret::new("tok-123456"),
            delay,
        })
    }

    /// A message for the providers' unit tests.
    pub(super) fn message() -> Outgoing {
        Outgoing {
            id: ump_core::model::MessageId::new(),
            tenant: "t".into(),
            channel: "sms".into(),
            channel_type: ump_core::resources::ChannelType::Sms,
            to: "+821012345678".into(),
            subject: None,
            text: "hi".into(),
            html: None,
            template: None,
            data: Default::default(),
            metadata: Default::default(),
            category: Default::default(),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn a_remote_provider_answers_within_its_limits_without_its_secrets() {
        let fast = echo(Duration::from_millis(10));
        assert_eq!(fast.name(), "echo");
        assert_eq!(
            fast.send(&message()).await,
            Outcome::Permanent {
                reason: "401: bad token <redacted>".into()
            }
        );
        let slow = echo(Duration::from_secs(5));
        match slow.send(&message()).await {
            Outcome::Retryable { reason, .. } => assert!(reason.contains("200ms"), "{reason}"),
            other => panic!("a call past its timeout is retryable: {other:?}"),
        }
    }
}

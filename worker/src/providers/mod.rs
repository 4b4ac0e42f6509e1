//! Providers: one module per protocol, all behind `ump_core::provider::Provider`. `build` makes
//! one provider from its spec; `build_channel` makes a channel's providers, behind failover when
//! there are several.

pub mod apns;
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

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use ump_core::provider::Provider;
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

pub fn build(
    spec: &ProviderSpec,
    ctx: &ProviderContext<'_>,
) -> Result<Arc<dyn Provider>, BuildError> {
    Ok(match spec.provider_type {
        ProviderType::Sandbox => Arc::new(sandbox::SandboxProvider::build(spec, ctx)?),
        ProviderType::Smtp => Arc::new(smtp::SmtpProvider::build(spec, ctx)?),
        ProviderType::Twilio => Arc::new(twilio::TwilioProvider::build(spec, ctx)?),
        ProviderType::NhnSms => Arc::new(nhn_sms::NhnSmsProvider::build(spec, ctx)?),
        ProviderType::Fcm => Arc::new(fcm::FcmProvider::build(spec, ctx)?),
        ProviderType::Apns => Arc::new(apns::ApnsProvider::build(spec, ctx)?),
        ProviderType::NhnAlimtalk => Arc::new(nhn_alimtalk::NhnAlimtalkProvider::build(spec, ctx)?),
        ProviderType::NhnFriendtalk => {
            Arc::new(nhn_friendtalk::NhnFriendtalkProvider::build(spec, ctx)?)
        }
        ProviderType::Webhook => Arc::new(webhook::WebhookProvider::build(spec, ctx)?),
    })
}

/// The provider of a channel: its only provider, or failover across `specs` (primary first)
/// with the circuit settings of the primary. `channel` names the failover provider.
pub fn build_channel(
    channel: &str,
    specs: &[ProviderSpec],
    ctx: &ProviderContext<'_>,
) -> Result<Arc<dyn Provider>, BuildError> {
    match specs {
        [only] => build(only, ctx),
        _ => Ok(Arc::new(build_failover(channel, specs, ctx)?)),
    }
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

//! The provider port: what the worker hands a provider (an email server, an SMS API, FCM, APNs,
//! Kakao AlimTalk and FriendTalk, a webhook, the sandbox) and how the provider answers.

use crate::model::{Category, MessageId};
use crate::resources::ChannelType;
use serde_json::{Map, Value};
use std::time::Duration;

/// A message ready to go out: recipient validated, content rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub id: MessageId,
    pub tenant: String,
    pub channel: String,
    pub channel_type: ChannelType,
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    /// The provider's id of the stored template the message was rendered from (its `code`, else
    /// its name; AlimTalk sends it as the template code), if any.
    pub template: Option<String>,
    /// The send's template variables (AlimTalk template parameters, push data).
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
    /// Advertising or not: the text is already marked where the channel marks in the text (see
    /// `crate::advertising`); a provider whose service marks advertising itself (FriendTalk's ad
    /// flag) reads it here.
    pub category: Category,
    /// Which attempt this is (1 on the first try).
    pub attempt: u32,
}

/// How a provider answered. Every response maps to exactly one of these.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The provider took the message.
    Sent { provider_message_id: Option<String> },
    /// Try again later (429, 5xx, timeouts, connection errors).
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Never going to work (bad number, unregistered device, rejected template).
    Permanent { reason: String },
}

/// An outcome and the provider that gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The name of the provider that took the call (a failover channel's member).
    pub provider: String,
    pub outcome: Outcome,
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name from the channel spec (metrics, logs, the message's `provider`).
    fn name(&self) -> &str;
    async fn send(&self, message: &Outgoing) -> Outcome;
    /// The calls each provider behind this one allows in flight now (by provider name), for
    /// those that learn it; none for an in-process provider.
    fn concurrency_limits(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    /// Sends and names who answered: this provider, or for one that routes to others
    /// (failover) the member that took the call. The pipeline records that name as the
    /// message's `provider`, which is also what delivery receipts are matched against.
    async fn send_named(&self, message: &Outgoing) -> Answer {
        Answer {
            provider: self.name().to_owned(),
            outcome: self.send(message).await,
        }
    }
}

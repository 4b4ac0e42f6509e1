//! Customer profiles: the port the API uses to keep them (MySQL in the cluster mode, SQLite
//! all-in-one), and erasure. What a profile holds and how an update applies is
//! `ump_automation::profile`; here it is only stored, per tenant.

use crate::history::HistoryError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use ump_automation::profile::Profile;

/// What erasing a person removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Erasure {
    /// The profile (traits, contact points, consents) was deleted.
    pub profile: bool,
    /// Messages to the person's contact points whose recipient is now kept masked only.
    pub messages_masked: u64,
    /// What the event processor kept of the person (recent events, event counters, segment
    /// memberships) was deleted.
    pub automation_state: bool,
    /// Webhook events about those messages, waiting or kept in an endpoint's delivery log, that
    /// now carry no tags or metadata and only the masked recipient (they stay, under their
    /// `webhook-id`, so the application still learns what became of its message).
    pub webhook_events_redacted: u64,
}

#[async_trait::async_trait]
pub trait ProfileStore: Send + Sync {
    async fn profile(&self, tenant: &str, user_id: &str) -> Result<Option<Profile>, HistoryError>;
    /// The profiles of those of `user_ids` who have one, in one read.
    async fn profiles(
        &self,
        tenant: &str,
        user_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Profile>, HistoryError>;
    /// Creates or replaces the profile `profile.user_id` of `tenant`.
    async fn save_profile(&self, tenant: &str, profile: &Profile) -> Result<(), HistoryError>;
    /// Deletes the person's profile and automation state (events, counters, segment
    /// memberships) and masks the recipient of every message of the tenant sent to one of their
    /// contact points, in one transaction. It also records that the person was erased at `now`
    /// (`erasure_key`), so their events accepted until then and not yet processed are discarded.
    async fn erase(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Erasure, HistoryError>;
}

/// How an erasure names the person: a SHA-256 of their user id, never the id itself.
pub(crate) fn erasure_key(user_id: &str) -> Vec<u8> {
    Sha256::digest(user_id.as_bytes()).to_vec()
}

/// The contact points of `profile`, as message recipients.
pub(crate) fn recipients(profile: &Profile) -> Vec<String> {
    let c = &profile.contacts;
    let mut all: Vec<String> = [&c.phone, &c.email, &c.kakao_phone]
        .into_iter()
        .flatten()
        .cloned()
        .chain(c.push_tokens.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// How an erased recipient is kept: as logs show it.
pub(crate) fn masked(recipient: &str) -> String {
    crate::pii::Masked(recipient).to_string()
}

pub(crate) fn encode(profile: &Profile) -> Result<String, HistoryError> {
    serde_json::to_string(profile).map_err(|e| HistoryError::Corrupt(format!("profile: {e}")))
}

pub(crate) fn decode(text: &str) -> Result<Profile, HistoryError> {
    serde_json::from_str(text).map_err(|e| HistoryError::Corrupt(format!("profile: {e}")))
}

//! The sandbox provider: records what would have been sent, one JSON line per message, instead of
//! sending it (the text as the provider would get it, advertising markings included, and
//! `"category": "marketing"` for advertising). Each line is written with a single `write(2)` on an append-only file before the
//! provider answers `Sent`, so a killed worker never loses a line it reported.
//!
//! Settings (all optional) make it behave like a troubled provider, to try retries, dead letters
//! and failures end to end:
//! - `failAttempts: "2"`: the first 2 attempts of every message fail (retryable);
//! - `rejectTo: "+821000000000,bad@example.com"`: these recipients fail permanently;
//! - `latency: "5ms"`: each call takes this long.

use super::{BuildError, ProviderContext};
use serde_json::json;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use ump_core::model::Category;
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::ProviderSpec;

pub struct SandboxProvider {
    name: String,
    path: PathBuf,
    file: Mutex<File>,
    fail_attempts: u32,
    reject: HashSet<String>,
    latency: Option<Duration>,
}

impl SandboxProvider {
    pub fn open(name: &str, path: &Path) -> Result<Self, BuildError> {
        let invalid = |e: std::io::Error| BuildError::Invalid {
            name: name.to_owned(),
            detail: format!("sandbox outbox {}: {e}", path.display()),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(invalid)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(invalid)?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
            file: Mutex::new(file),
            fail_attempts: 0,
            reject: HashSet::new(),
            latency: None,
        })
    }

    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let mut provider = Self::open(&spec.name, ctx.sandbox_outbox)?;
        let invalid = |key: &str, detail: String| BuildError::Invalid {
            name: spec.name.clone(),
            detail: format!("setting {key}: {detail}"),
        };
        if let Some(value) = spec.settings.get("failAttempts") {
            provider.fail_attempts = value
                .parse()
                .map_err(|_| invalid("failAttempts", format!("{value:?} is not a number")))?;
        }
        if let Some(value) = spec.settings.get("rejectTo") {
            provider.reject = value
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(value) = spec.settings.get("latency") {
            let latency: ump_core::duration::Duration =
                value.parse().map_err(|e| invalid("latency", e))?;
            provider.latency = Some(latency.as_std());
        }
        Ok(provider)
    }
}

#[async_trait::async_trait]
impl Provider for SandboxProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Outgoing) -> Outcome {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
        if message.attempt <= self.fail_attempts {
            return Outcome::Retryable {
                reason: format!("sandbox: simulated failure of attempt {}", message.attempt),
                retry_after: None,
            };
        }
        if self.reject.contains(&message.to) {
            return Outcome::Permanent {
                reason: "sandbox: recipient rejected".to_owned(),
            };
        }
        let mut record = json!({
            "id": message.id,
            "tenant": message.tenant,
            "channel": message.channel,
            "provider": self.name,
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "attempt": message.attempt,
            "at": chrono::Utc::now(),
        });
        // What a provider that marks advertising itself (FriendTalk's ad flag) would be told.
        if message.category == Category::Marketing {
            record["category"] = json!("marketing");
        }
        let mut line = record.to_string();
        line.push('\n');
        let written = match self.file.lock() {
            Ok(mut file) => file.write_all(line.as_bytes()),
            Err(_) => Err(std::io::Error::other("sandbox outbox lock poisoned")),
        };
        match written {
            Ok(()) => Outcome::Sent {
                provider_message_id: Some(format!("sandbox-{}", message.id)),
            },
            Err(e) => Outcome::Retryable {
                reason: format!("sandbox outbox {}: {e}", self.path.display()),
                retry_after: None,
            },
        }
    }
}

//! The sandbox provider: records what would have been sent, one JSON line per message, instead of
//! sending it. Each line is written with a single `write(2)` on an append-only file before the
//! provider answers `Sent`, so a killed worker never loses a line it reported.

use super::BuildError;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use ump_core::provider::{Outcome, Outgoing, Provider};

pub struct SandboxProvider {
    name: String,
    path: PathBuf,
    file: Mutex<File>,
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
        })
    }
}

#[async_trait::async_trait]
impl Provider for SandboxProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Outgoing) -> Outcome {
        let record = json!({
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

//! Provider credentials: read from the files Kubernetes mounts for a Secret
//! (`<secrets_dir>/<secretRef.name>/<key>`) and kept out of logs, errors, `Debug` and outcomes.

use super::{BuildError, ProviderContext};
use std::fmt;
use std::path::PathBuf;
use ump_core::provider::Outcome;
use ump_core::resources::ProviderSpec;

/// A credential. Nothing prints it: `Debug` is redacted and there is no `Display`; only `expose`
/// hands out the value, at the one place it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret masked. Providers run their reasons through
    /// this because a remote server may echo what it was sent (a token in an error message).
    pub fn redact(&self, text: &str) -> String {
        // Masking a one- or two-character "secret" would shred ordinary text; such a value
        // protects nothing anyway.
        if self.0.len() < 3 {
            return text.to_owned();
        }
        text.replace(&self.0, "<redacted>")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `outcome` with every secret masked in its reason.
pub fn redact_outcome(outcome: Outcome, secrets: &[&Secret]) -> Outcome {
    let scrub = |reason: String| {
        secrets
            .iter()
            .fold(reason, |text, secret| secret.redact(&text))
    };
    match outcome {
        Outcome::Sent { .. } => outcome,
        Outcome::Retryable {
            reason,
            retry_after,
        } => Outcome::Retryable {
            reason: scrub(reason),
            retry_after,
        },
        Outcome::Permanent { reason } => Outcome::Permanent {
            reason: scrub(reason),
        },
    }
}

/// The mounted Secret of one provider.
pub struct SecretFiles {
    provider: String,
    dir: Option<PathBuf>,
}

impl SecretFiles {
    pub fn of(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Self {
        Self {
            provider: spec.name.clone(),
            dir: spec
                .secret_ref
                .as_ref()
                .map(|secret| ctx.secrets_dir.join(&secret.name)),
        }
    }

    /// The value under `key`; an error (naming the file, never its content) when it is missing.
    pub fn require(&self, key: &str) -> Result<Secret, BuildError> {
        self.optional(key)?.ok_or_else(|| match &self.dir {
            None => self.invalid(format!("needs a secretRef with the key {key:?}")),
            Some(dir) => self.invalid(format!(
                "secret key {key:?} is missing ({} does not exist)",
                dir.join(key).display()
            )),
        })
    }

    /// The value under `key`, or `None` when the provider has no Secret or the key is absent.
    pub fn optional(&self, key: &str) -> Result<Option<Secret>, BuildError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(key);
        match std::fs::read_to_string(&path) {
            // `echo value > file` and editors leave a trailing newline that is not part of the
            // credential.
            Ok(text) => Ok(Some(Secret::new(text.trim_end()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.invalid(format!("secret file {}: {e}", path.display()))),
        }
    }

    fn invalid(&self, detail: String) -> BuildError {
        BuildError::Invalid {
            name: self.provider.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", Some(&secret)).contains("hunter2"));
    }

    #[test]
    fn redaction_masks_every_occurrence() {
        let secret = Secret::new("tok-123");
        assert_eq!(
            secret.redact("bad token tok-123 (tok-123)"),
            "bad token <redacted> (<redacted>)"
        );
        let outcome = redact_outcome(
            Outcome::Permanent {
                reason: "echo tok-123".into(),
            },
            &[&secret],
        );
        assert_eq!(
            outcome,
            Outcome::Permanent {
                reason: "echo <redacted>".into()
            }
        );
    }
}

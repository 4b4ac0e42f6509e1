//! Email over SMTP: STARTTLS, implicit TLS or plain, AUTH when the Secret has credentials,
//! text or text + HTML (`multipart/alternative`), UTF-8 throughout. lettre builds the message;
//! UMP's own client ([`session`]) carries it over a pool of persistent connections ([`pool`]),
//! pipelining each transaction's commands when the server offers PIPELINING.
//!
//! Settings: `host`, `from` (e.g. `UMP <noreply@example.com>`) — required; `tls` (`starttls`
//! default, `tls` for implicit TLS, `none`); `port` (default 587 / 465 / 25 by `tls`); `replyTo`;
//! `caFile` (PEM of the CA to trust instead of the system roots); `timeout`; `maxConcurrency`
//! (also how many connections are kept open). Secret keys (optional, both or neither):
//! `username`, `password`.
//!
//! Header injection: the recipient is parsed as one mailbox (a CR/LF or a second address is a
//! permanent failure) and CR/LF in the subject become spaces before lettre encodes it, so no
//! input adds a header.
//!
//! Classification: 2xx → sent (id = the Message-ID, `<{message id}@{from domain}>`); 4xx, timeouts,
//! connection and TLS errors → retryable; 530/534/535/538 (authentication) → retryable (the
//! credentials are wrong, not the message); a 5xx refusing the connection itself (greeting, EHLO,
//! STARTTLS) → retryable, as the message was never offered; a 5xx refusing the transaction
//! (sender, recipient, content) → permanent; a UTF-8 address to a server without SMTPUTF8 →
//! permanent.

mod pool;
mod session;

use super::limits::CallLimits;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use pool::Pool;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use session::{Error, Security, Target};
use std::sync::Arc;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

/// SMTP replies that mean the server refused our authentication.
const AUTH_CODES: &[u16] = &[530, 534, 535, 538];

/// The default ceiling of calls in flight: one pooled connection each.
const MAX_CONNECTIONS: usize = 32;

pub struct SmtpProvider {
    name: String,
    pool: Pool,
    limits: CallLimits,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    password: Option<Secret>,
}

impl SmtpProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        ump_core::tls::install_crypto_provider();
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let limits = CallLimits::from_settings(&settings, MAX_CONNECTIONS)?;
        let host = settings.require("host")?;
        let tls_mode = settings.get("tls").unwrap_or("starttls");
        let default_port = match tls_mode {
            "starttls" => 587,
            "tls" => 465,
            "none" => 25,
            other => {
                return Err(settings.invalid(format!(
                    "setting \"tls\": {other:?} is not starttls, tls or none"
                )));
            }
        };
        let port = settings.number("port", default_port)?;
        let mailbox = |key: &str, text: &str| {
            text.parse::<Mailbox>()
                .map_err(|e| settings.invalid(format!("setting {key:?}: {text:?}: {e}")))
        };
        let from = mailbox("from", settings.require("from")?)?;
        let reply_to = settings
            .get("replyTo")
            .map(|text| mailbox("replyTo", text))
            .transpose()?;
        let security = match tls_mode {
            "none" => Security::Plain,
            mode => {
                let config =
                    tls_config(settings.pem_file("caFile")?).map_err(|e| settings.invalid(e))?;
                if mode == "tls" {
                    Security::Implicit(config)
                } else {
                    Security::StartTls(config)
                }
            }
        };

        let username = secrets.optional("username")?;
        let password = secrets.optional("password")?;
        let credentials = match (&username, &password) {
            (Some(user), Some(pass)) => Some((user.expose().to_owned(), pass.expose().to_owned())),
            (None, None) => None,
            _ => {
                return Err(settings.invalid(
                    "the Secret must have both \"username\" and \"password\", or neither".into(),
                ));
            }
        };
        let max_connections = settings.number("maxConcurrency", MAX_CONNECTIONS)?;
        let target = Target {
            host: host.to_owned(),
            port,
            security,
            credentials,
        };
        Ok(Self {
            name: spec.name.clone(),
            pool: Pool::new(target, max_connections),
            limits,
            from,
            reply_to,
            password,
        })
    }

    fn email(&self, message: &Outgoing) -> Result<Message, Outcome> {
        // One mailbox: "a@x, b@y" or a CR/LF would add recipients or headers.
        let to: Mailbox = message.to.parse().map_err(|e| Outcome::Permanent {
            reason: format!("invalid recipient address {:?}: {e}", message.to),
        })?;
        let domain = self.from.email.domain().to_owned();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(single_line(message.subject.as_deref().unwrap_or_default()))
            .message_id(Some(format!("<{}@{domain}>", message.id)))
            .date_now();
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let built = match &message.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                message.text.clone(),
                html.clone(),
            )),
            None => builder.singlepart(SinglePart::plain(message.text.clone())),
        };
        built.map_err(|e| Outcome::Permanent {
            reason: format!("cannot build the email: {e}"),
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let email = match self.email(message) {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        let message_id = email
            .headers()
            .get_raw("Message-ID")
            .map(|id| id.trim().to_owned());
        let envelope = email.envelope();
        let from = envelope.from().map(AsRef::as_ref).unwrap_or_default();
        let to: Vec<&str> = envelope.to().iter().map(AsRef::as_ref).collect();
        match self.pool.send(from, &to, &email.formatted()).await {
            Ok(_) => Outcome::Sent {
                provider_message_id: message_id,
            },
            Err(e) => classify(&e),
        }
    }
}

/// The roots to trust: the CA in `ca_pem`, or the system's.
fn tls_config(ca_pem: Option<Vec<u8>>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("setting \"caFile\": {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("setting \"caFile\": {e}"))?;
            }
            if roots.is_empty() {
                return Err("setting \"caFile\": no certificate in the file".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("TLS: no system root certificates found; set \"caFile\"".into());
            }
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// `text` on one line: CR and LF become spaces, so a subject can never start a new header.
fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn classify(error: &Error) -> Outcome {
    let reason = format!("smtp: {error}");
    match error {
        Error::Refused { reply, .. } if AUTH_CODES.contains(&reply.code) => Outcome::Retryable {
            reason: format!("credentials rejected: {reason}"),
            retry_after: None,
        },
        Error::Refused { stage, reply } if reply.code >= 500 && stage.in_transaction() => {
            Outcome::Permanent { reason }
        }
        Error::Unsupported(_) => Outcome::Permanent { reason },
        _ => Outcome::Retryable {
            reason,
            retry_after: None,
        },
    }
}

#[async_trait::async_trait]
impl super::Remote for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        &self.limits
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.password.iter().collect()
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::session::{Reply, Stage};
    use super::*;

    #[test]
    fn subjects_stay_on_one_line() {
        assert_eq!(single_line("Hi\r\nBcc: x@y"), "Hi  Bcc: x@y");
        assert_eq!(single_line("안녕\n하세요"), "안녕 하세요");
    }

    fn refused(stage: Stage, code: u16) -> Error {
        Error::Refused {
            stage,
            reply: Reply {
                code,
                lines: vec!["text".into()],
            },
        }
    }

    #[test]
    fn what_refused_the_message_is_permanent_what_refused_the_connection_is_not() {
        let permanent = |error: Error| matches!(classify(&error), Outcome::Permanent { .. });
        assert!(permanent(refused(Stage::Rcpt, 550)));
        assert!(permanent(refused(Stage::Mail, 553)));
        assert!(permanent(refused(Stage::Content, 554)));
        assert!(permanent(Error::Unsupported("SMTPUTF8".into())));
        assert!(!permanent(refused(Stage::Rcpt, 450)));
        assert!(!permanent(refused(Stage::Content, 451)));
        assert!(!permanent(refused(Stage::Greeting, 554)));
        assert!(!permanent(refused(Stage::StartTls, 554)));
        assert!(!permanent(refused(Stage::Auth, 535)));
        // "authentication required" in answer to MAIL: the credentials, not the message.
        assert!(!permanent(refused(Stage::Mail, 530)));
        assert!(!permanent(Error::Connection {
            detail: "read: reset".into(),
            content_sent: true,
        }));
    }
}

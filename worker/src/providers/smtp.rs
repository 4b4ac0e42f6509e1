//! Email over SMTP (lettre): STARTTLS, implicit TLS or plain, AUTH when the Secret has
//! credentials, text or text + HTML (`multipart/alternative`), UTF-8 throughout.
//!
//! Settings: `host`, `from` (e.g. `UMP <noreply@example.com>`) — required; `tls` (`starttls`
//! default, `tls` for implicit TLS, `none`); `port` (default 587 / 465 / 25 by `tls`); `replyTo`;
//! `caFile` (PEM of the CA to trust instead of the system roots); `timeout`; `maxConcurrency`
//! (also the size of the connection pool). Secret keys (optional, both or neither): `username`,
//! `password`.
//!
//! Header injection: the recipient is parsed as one mailbox (a CR/LF or a second address is a
//! permanent failure) and CR/LF in the subject become spaces before lettre encodes it, so no
//! input adds a header.
//!
//! Classification: 2xx → sent (id = the Message-ID, `<{message id}@{from domain}>`); 4xx, timeouts,
//! connection and TLS errors → retryable; 530/534/535/538 (authentication) → retryable (the
//! credentials are wrong, not the message); other 5xx (unknown mailbox, rejected content) →
//! permanent.

use super::limits::CallLimits;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

/// SMTP replies that mean the server refused our authentication.
const AUTH_CODES: &[u16] = &[530, 534, 535, 538];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    StartTls,
    Implicit,
    None,
}

/// The default ceiling of calls in flight: one pooled connection each.
const MAX_CONNECTIONS: usize = 32;

pub struct SmtpProvider {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
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
        let mode = match settings.get("tls").unwrap_or("starttls") {
            "starttls" => TlsMode::StartTls,
            "tls" => TlsMode::Implicit,
            "none" => TlsMode::None,
            other => {
                return Err(settings.invalid(format!(
                    "setting \"tls\": {other:?} is not starttls, tls or none"
                )));
            }
        };
        let default_port = match mode {
            TlsMode::StartTls => 587,
            TlsMode::Implicit => 465,
            TlsMode::None => 25,
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

        let tls = if mode == TlsMode::None {
            Tls::None
        } else {
            let mut params = TlsParameters::builder(host.to_owned());
            if let Some(pem) = settings.pem_file("caFile")? {
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| settings.invalid(format!("setting \"caFile\": {e}")))?;
                params = params
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| settings.invalid(format!("TLS: {e}")))?;
            match mode {
                TlsMode::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        };

        let username = secrets.optional("username")?;
        let password = secrets.optional("password")?;
        let max_connections = settings.number("maxConcurrency", MAX_CONNECTIONS as u32)?;
        // `builder_dangerous` only means "no TLS chosen yet": `tls` above always sets it.
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(limits.timeout()))
            .pool_config(PoolConfig::new().max_size(max_connections.max(1)));
        match (&username, &password) {
            (Some(user), Some(pass)) => {
                transport = transport.credentials(Credentials::new(
                    user.expose().to_owned(),
                    pass.expose().to_owned(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err(settings.invalid(
                    "the Secret must have both \"username\" and \"password\", or neither".into(),
                ));
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            transport: transport.build(),
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
        match self.transport.send(email).await {
            Ok(_) => Outcome::Sent {
                provider_message_id: message_id,
            },
            Err(e) => classify(&e),
        }
    }
}

/// `text` on one line: CR and LF become spaces, so a subject can never start a new header.
fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn classify(error: &lettre::transport::smtp::Error) -> Outcome {
    let code = error.status().map(u16::from);
    let reason = format!("smtp: {error}");
    match code {
        Some(code) if AUTH_CODES.contains(&code) => Outcome::Retryable {
            reason: format!("credentials rejected: {reason}"),
            retry_after: None,
        },
        _ if error.is_permanent() => Outcome::Permanent { reason },
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
    use super::*;

    #[test]
    fn subjects_stay_on_one_line() {
        assert_eq!(single_line("Hi\r\nBcc: x@y"), "Hi  Bcc: x@y");
        assert_eq!(single_line("안녕\n하세요"), "안녕 하세요");
    }
}

//! One SMTP connection (RFC 5321): the greeting, EHLO, STARTTLS (RFC 3207) or implicit TLS,
//! AUTH PLAIN or LOGIN (RFC 4954), then mail transactions, as many as the connection lives for.
//!
//! When the server offers PIPELINING (RFC 2920), a transaction's MAIL, RCPT and DATA commands go
//! out in one write and their replies are read together: two round trips a message (the
//! commands, then the content) instead of four. Without it each command waits for its reply.
//!
//! Every reply of a pipelined group is read, whatever the first one said, so the connection
//! stays in step; a refused transaction is ended with RSET and the connection is used again. A
//! connection that failed, or that the server is closing (`421`), is never used again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest reply line read (RFC 5321 allows 512 bytes; servers' texts run longer).
const MAX_LINE: u64 = 4096;
/// The most lines one reply may have (an EHLO reply has one per extension).
const MAX_LINES: usize = 100;

/// How the connection is secured.
#[derive(Clone)]
pub enum Security {
    /// Plain text throughout.
    Plain,
    /// Plain until STARTTLS, which must be offered: the session fails rather than send in the
    /// clear.
    StartTls(Arc<rustls::ClientConfig>),
    /// TLS from the first byte (port 465).
    Implicit(Arc<rustls::ClientConfig>),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// `(username, password)` for AUTH, or none.
    pub credentials: Option<(String, String)>,
}

/// A reply: its code and the text of each line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply's lines on one line.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// Which step a server refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Content,
}

impl Stage {
    /// Whether the step belongs to a mail transaction (what the server thinks of this message),
    /// rather than to setting up the connection (what it thinks of this client).
    pub fn in_transaction(self) -> bool {
        matches!(self, Self::Mail | Self::Rcpt | Self::Data | Self::Content)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "EHLO",
            Self::StartTls => "STARTTLS",
            Self::Auth => "AUTH",
            Self::Mail => "MAIL FROM",
            Self::Rcpt => "RCPT TO",
            Self::Data => "DATA",
            Self::Content => "end of data",
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// The connection failed or was closed (connect, read, write, TLS), or the server sent
    /// something that is not SMTP, or it lacks what this client needs (STARTTLS, an AUTH
    /// mechanism). `content_sent`: the message's content had started to go out, so the server
    /// may have taken it.
    Connection { detail: String, content_sent: bool },
    /// The server refused a step.
    Refused { stage: Stage, reply: Reply },
    /// This message cannot go through this server (UTF-8 addresses without SMTPUTF8, 8-bit
    /// content without 8BITMIME).
    Unsupported(String),
}

impl Error {
    /// The connection was found closed before any of the message's content went out: lost, or
    /// the server answered the envelope with `421` (closing). The message can go on another
    /// connection at once.
    pub fn closed_before_content(&self) -> bool {
        match self {
            Self::Connection { content_sent, .. } => !content_sent,
            Self::Refused { stage, reply } => reply.code == 421 && *stage != Stage::Content,
            Self::Unsupported(_) => false,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection { detail, .. } => f.write_str(detail),
            Self::Refused { stage, reply } => {
                write!(
                    f,
                    "{} refused: {} {}",
                    stage.name(),
                    reply.code,
                    reply.text()
                )
            }
            Self::Unsupported(detail) => f.write_str(detail),
        }
    }
}

fn connection(detail: impl Into<String>) -> Error {
    Error::Connection {
        detail: detail.into(),
        content_sent: false,
    }
}

/// The extensions of the server's EHLO reply that this client uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Extensions {
    /// From an EHLO reply: its first line greets, each further line is a keyword and
    /// parameters.
    pub fn of(ehlo: &Reply) -> Self {
        let mut found = Self::default();
        for line in ehlo.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => found.pipelining = true,
                "STARTTLS" => found.starttls = true,
                "8BITMIME" => found.eight_bit_mime = true,
                "SMTPUTF8" => found.smtp_utf8 = true,
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => found.auth_plain = true,
                            "LOGIN" => found.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        found
    }
}

/// A stream this client can speak over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub struct Session {
    stream: BufReader<Box<dyn Io>>,
    extensions: Extensions,
    /// Set when the connection must not be used again.
    broken: bool,
}

impl Session {
    /// Connects, reads the greeting, says EHLO, secures the connection and authenticates as
    /// `target` says.
    pub async fn open(target: &Target) -> Result<Self, Error> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| connection(format!("connect to {}:{}: {e}", target.host, target.port)))?;
        let _ = tcp.set_nodelay(true);
        // The EHLO argument: this end's address literal, which is always true (RFC 5321 4.1.3).
        let hello = match tcp.local_addr() {
            Ok(SocketAddr::V4(addr)) => format!("[{}]", addr.ip()),
            Ok(SocketAddr::V6(addr)) => format!("[IPv6:{}]", addr.ip()),
            Err(_) => "localhost".to_owned(),
        };
        let stream: Box<dyn Io> = match &target.security {
            Security::Implicit(config) => handshake(config, &target.host, tcp).await?,
            _ => Box::new(tcp),
        };
        let mut session = Self::over(stream);
        session.expect(Stage::Greeting, &[220]).await?;
        session.ehlo(&hello).await?;
        if let Security::StartTls(config) = &target.security {
            session = session.start_tls(config, &target.host, &hello).await?;
        }
        if let Some((user, password)) = &target.credentials {
            session.authenticate(user, password).await?;
        }
        Ok(session)
    }

    fn over(stream: Box<dyn Io>) -> Self {
        Self {
            stream: BufReader::new(stream),
            extensions: Extensions::default(),
            broken: false,
        }
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Whether another transaction may use this connection.
    pub fn reusable(&self) -> bool {
        !self.broken
    }

    async fn ehlo(&mut self, hello: &str) -> Result<(), Error> {
        let reply = self
            .command(Stage::Ehlo, &format!("EHLO {hello}\r\n"), &[250])
            .await?;
        self.extensions = Extensions::of(&reply);
        Ok(())
    }

    async fn start_tls(
        mut self,
        config: &Arc<rustls::ClientConfig>,
        host: &str,
        hello: &str,
    ) -> Result<Self, Error> {
        if !self.extensions.starttls {
            return Err(connection(
                "the server does not offer STARTTLS (tls: starttls requires it)",
            ));
        }
        self.command(Stage::StartTls, "STARTTLS\r\n", &[220])
            .await?;
        // Anything already buffered was sent before the handshake, in the clear, and would be
        // read as if it came through TLS (the STARTTLS command injection of CVE-2011-0411).
        if !self.stream.buffer().is_empty() {
            return Err(connection("the server sent data before the TLS handshake"));
        }
        let secured = handshake(config, host, self.stream.into_inner()).await?;
        let mut session = Self::over(secured);
        // What the server offered in the clear no longer counts (RFC 3207 4.2).
        session.ehlo(hello).await?;
        Ok(session)
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), Error> {
        if self.extensions.auth_plain {
            let token = BASE64.encode(format!("\0{user}\0{password}"));
            self.command(Stage::Auth, &format!("AUTH PLAIN {token}\r\n"), &[235])
                .await?;
        } else if self.extensions.auth_login {
            self.command(Stage::Auth, "AUTH LOGIN\r\n", &[334]).await?;
            self.command(Stage::Auth, &format!("{}\r\n", BASE64.encode(user)), &[334])
                .await?;
            self.command(
                Stage::Auth,
                &format!("{}\r\n", BASE64.encode(password)),
                &[235],
            )
            .await?;
        } else {
            return Err(connection(
                "the server offers neither AUTH PLAIN nor AUTH LOGIN",
            ));
        }
        Ok(())
    }

    /// One mail transaction: `content` (a whole RFC 5322 message, CRLF line ends) from `from`
    /// to `to`. Returns the server's reply to the end of data, its acceptance.
    pub async fn send(&mut self, from: &str, to: &[&str], content: &[u8]) -> Result<Reply, Error> {
        let mut mail = format!("MAIL FROM:<{from}>");
        if !content.is_ascii() {
            if !self.extensions.eight_bit_mime {
                return Err(Error::Unsupported(
                    "the message has 8-bit content and the server does not offer 8BITMIME".into(),
                ));
            }
            mail.push_str(" BODY=8BITMIME");
        }
        if !from.is_ascii() || to.iter().any(|address| !address.is_ascii()) {
            if !self.extensions.smtp_utf8 {
                return Err(Error::Unsupported(
                    "an address is not ASCII and the server does not offer SMTPUTF8".into(),
                ));
            }
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = to.iter().map(|to| format!("RCPT TO:<{to}>\r\n")).collect();

        let envelope = if self.extensions.pipelining {
            self.envelope_pipelined(&mail, &rcpts).await
        } else {
            self.envelope_in_turn(&mail, &rcpts).await
        };
        if let Err(refused @ Error::Refused { .. }) = envelope {
            self.reset().await;
            return Err(refused);
        }
        envelope?;

        let result = async {
            self.write(&dot_stuffed(content)).await?;
            self.expect(Stage::Content, &[250]).await
        }
        .await;
        match result {
            Ok(reply) => Ok(reply),
            Err(Error::Connection { detail, .. }) => Err(Error::Connection {
                detail,
                content_sent: true,
            }),
            // Refused at the end of data: the transaction is over, the connection still good.
            Err(refused) => Err(refused),
        }
    }

    async fn envelope_pipelined(&mut self, mail: &str, rcpts: &[String]) -> Result<(), Error> {
        let mut group = String::with_capacity(mail.len() + rcpts.len() * 64 + 6);
        group.push_str(mail);
        for rcpt in rcpts {
            group.push_str(rcpt);
        }
        group.push_str("DATA\r\n");
        self.write(group.as_bytes()).await?;
        // Read every reply before judging any, so the connection stays in step.
        let mail = self.read_reply().await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            rcpt_replies.push(self.read_reply().await?);
        }
        let data = self.read_reply().await?;
        let refusal = if mail.code != 250 {
            Some((Stage::Mail, mail))
        } else if let Some(rcpt) = rcpt_replies
            .into_iter()
            .find(|reply| !matches!(reply.code, 250 | 251))
        {
            Some((Stage::Rcpt, rcpt))
        } else if data.code != 354 {
            Some((Stage::Data, data.clone()))
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some((stage, reply)) => {
                if data.code == 354 {
                    // The server took DATA although it refused part of the envelope. Only the
                    // end of data leaves the data state, and it would deliver an empty message
                    // to any recipient it accepted: the connection is given up instead, which
                    // aborts the transaction.
                    self.broken = true;
                }
                self.check_closing(&reply);
                Err(Error::Refused { stage, reply })
            }
        }
    }

    async fn envelope_in_turn(&mut self, mail: &str, rcpts: &[String]) -> Result<(), Error> {
        self.command(Stage::Mail, mail, &[250]).await?;
        for rcpt in rcpts {
            self.command(Stage::Rcpt, rcpt, &[250, 251]).await?;
        }
        self.command(Stage::Data, "DATA\r\n", &[354]).await?;
        Ok(())
    }

    /// Ends a refused transaction so the connection can carry the next one; a connection that
    /// does not take RSET is not used again.
    async fn reset(&mut self) {
        if self.broken {
            return;
        }
        let reset = async {
            self.write(b"RSET\r\n").await?;
            self.read_reply().await
        };
        if !matches!(reset.await, Ok(Reply { code: 250, .. })) {
            self.broken = true;
        }
    }

    /// Says QUIT and closes: the polite end of a connection the pool no longer keeps.
    pub async fn quit(mut self) {
        if !self.broken && self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
        let _ = self.stream.get_mut().shutdown().await;
    }

    async fn command(&mut self, stage: Stage, line: &str, ok: &[u16]) -> Result<Reply, Error> {
        self.write(line.as_bytes()).await?;
        self.expect(stage, ok).await
    }

    async fn expect(&mut self, stage: Stage, ok: &[u16]) -> Result<Reply, Error> {
        let reply = self.read_reply().await?;
        if ok.contains(&reply.code) {
            Ok(reply)
        } else {
            self.check_closing(&reply);
            Err(Error::Refused { stage, reply })
        }
    }

    /// `421`: the server is closing the connection.
    fn check_closing(&mut self, reply: &Reply) {
        if reply.code == 421 {
            self.broken = true;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let written = async {
            let stream = self.stream.get_mut();
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        written.await.map_err(|e| {
            self.broken = true;
            connection(format!("write: {e}"))
        })
    }

    async fn read_reply(&mut self) -> Result<Reply, Error> {
        let reply = read_reply(&mut self.stream).await;
        if reply.is_err() {
            self.broken = true;
        }
        reply
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    stream: S,
) -> Result<Box<dyn Io>, Error> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| connection(format!("TLS: server name {host:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, stream)
        .await
        .map_err(|e| connection(format!("TLS: {e}")))?;
    Ok(Box::new(tls))
}

/// Reads one reply: lines `NNN-text` then a last `NNN text` (or `NNN`), all with one code.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(stream: &mut R) -> Result<Reply, Error> {
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        let read = (&mut *stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| connection(format!("read: {e}")))?;
        if read == 0 {
            return Err(connection("the server closed the connection"));
        }
        if !raw.ends_with(b"\n") {
            return Err(connection(if read as u64 >= MAX_LINE {
                "a reply line is too long".to_owned()
            } else {
                "the server closed the connection mid-reply".to_owned()
            }));
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let (this_code, last, text) = parse_line(line)
            .ok_or_else(|| connection(format!("not an SMTP reply: {:?}", truncated(line))))?;
        if *code.get_or_insert(this_code) != this_code {
            return Err(connection("a reply changed its code between lines"));
        }
        if lines.len() == MAX_LINES {
            return Err(connection("a reply has too many lines"));
        }
        lines.push(text.to_owned());
        if last {
            return Ok(Reply {
                code: this_code,
                lines,
            });
        }
    }
}

/// `250-text` → (250, not last, "text"); `250 text` or `250` → (250, last, ...).
fn parse_line(line: &str) -> Option<(u16, bool, &str)> {
    let digits = line.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !(b'2'..=b'5').contains(&digits.as_bytes()[0])
    {
        return None;
    }
    let code = digits.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

fn truncated(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// `content` as DATA sends it: a line that starts with `.` gets another (RFC 5321 4.5.2), and
/// the end of data (`CRLF . CRLF`) follows.
fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 5);
    let mut line_start = true;
    for &byte in content {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    /// The server's end of an in-memory connection.
    struct Peer {
        io: BufReader<DuplexStream>,
    }

    impl Peer {
        async fn line(&mut self) -> String {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(5), self.io.read_line(&mut line))
                .await
                .expect("the client sent nothing for 5 s")
                .expect("read");
            assert!(read > 0, "the client closed the connection");
            line
        }

        async fn say(&mut self, text: &str) {
            self.io
                .get_mut()
                .write_all(text.as_bytes())
                .await
                .expect("write");
        }

        /// Asserts the client sends nothing more until it has read a reply.
        async fn nothing_more(&mut self) {
            let mut line = String::new();
            let waited =
                tokio::time::timeout(Duration::from_millis(100), self.io.read_line(&mut line))
                    .await;
            assert!(
                waited.is_err(),
                "the client did not wait for a reply: {line:?}"
            );
        }

        /// Reads the content up to the end of data.
        async fn content(&mut self) -> String {
            let mut content = String::new();
            loop {
                let line = self.line().await;
                if line == ".\r\n" {
                    return content;
                }
                content.push_str(&line);
            }
        }
    }

    /// A session over an in-memory connection, opened against `ehlo` (the extension lines).
    async fn opened(ehlo: &[&str]) -> (Session, Peer) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut peer = Peer {
            io: BufReader::new(server),
        };
        let mut session = Session::over(Box::new(client));
        let reply: String = std::iter::once("250-test greets you")
            .chain(ehlo.iter().copied())
            .enumerate()
            .map(|(i, line)| {
                let separator = if i == ehlo.len() { ' ' } else { '-' };
                format!("250{separator}{line}\r\n")
            })
            .collect();
        let server = async {
            peer.say("220 test ESMTP\r\n").await;
            assert_eq!(peer.line().await, "EHLO [127.0.0.1]\r\n");
            peer.say(&reply).await;
        };
        let client = async {
            session
                .expect(Stage::Greeting, &[220])
                .await
                .expect("greeting");
            session.ehlo("[127.0.0.1]").await.expect("EHLO");
        };
        tokio::join!(server, client);
        (session, peer)
    }

    #[tokio::test]
    async fn with_pipelining_the_envelope_goes_out_before_any_reply() {
        let (mut session, mut peer) = opened(&["PIPELINING", "8BITMIME"]).await;
        assert!(session.extensions().pipelining);
        let server = async {
            // No reply is written until all three commands have arrived: a client that waited
            // for the MAIL reply would hang here.
            assert_eq!(peer.line().await, "MAIL FROM:<a@example.com>\r\n");
            assert_eq!(peer.line().await, "RCPT TO:<b@example.com>\r\n");
            assert_eq!(peer.line().await, "DATA\r\n");
            peer.say("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
                .await;
            assert_eq!(peer.content().await, "Subject: hi\r\n\r\nhello\r\n");
            peer.say("250 2.0.0 queued as 17\r\n").await;
        };
        let client = session.send(
            "a@example.com",
            &["b@example.com"],
            b"Subject: hi\r\n\r\nhello\r\n",
        );
        let (_, sent) = tokio::join!(server, client);
        assert_eq!(sent.expect("sent").text(), "2.0.0 queued as 17");
        assert!(session.reusable());
    }

    #[tokio::test]
    async fn without_pipelining_each_command_waits_for_its_reply() {
        let (mut session, mut peer) = opened(&["8BITMIME"]).await;
        let server = async {
            for (command, reply) in [
                ("MAIL FROM:<a@example.com>\r\n", "250 Ok\r\n"),
                ("RCPT TO:<b@example.com>\r\n", "250 Ok\r\n"),
                ("DATA\r\n", "354 go ahead\r\n"),
            ] {
                assert_eq!(peer.line().await, command);
                peer.nothing_more().await;
                peer.say(reply).await;
            }
            peer.content().await;
            peer.say("250 Ok\r\n").await;
        };
        let client = session.send("a@example.com", &["b@example.com"], b"hello\r\n");
        let (_, sent) = tokio::join!(server, client);
        sent.expect("sent");
    }

    #[tokio::test]
    async fn a_refused_recipient_is_reported_and_the_connection_carries_the_next_message() {
        let (mut session, mut peer) = opened(&["PIPELINING"]).await;
        let server = async {
            for _ in 0..3 {
                peer.line().await;
            }
            peer.say("250 Ok\r\n550 5.1.1 <nobody@example.com>: unknown user\r\n554 5.5.1 no valid recipients\r\n")
                .await;
            assert_eq!(peer.line().await, "RSET\r\n");
            peer.say("250 Ok\r\n").await;
            for _ in 0..3 {
                peer.line().await;
            }
            peer.say("250 Ok\r\n250 Ok\r\n354 go ahead\r\n").await;
            peer.content().await;
            peer.say("250 Ok\r\n").await;
        };
        let client = async {
            let refused = session
                .send("a@example.com", &["nobody@example.com"], b"x\r\n")
                .await
                .expect_err("refused");
            let Error::Refused { stage, reply } = &refused else {
                panic!("{refused:?}");
            };
            assert_eq!((*stage, reply.code), (Stage::Rcpt, 550));
            assert!(stage.in_transaction());
            assert!(session.reusable());
            session
                .send("a@example.com", &["b@example.com"], b"y\r\n")
                .await
        };
        let (_, second) = tokio::join!(server, client);
        second.expect("the second message");
    }

    #[tokio::test]
    async fn a_server_that_takes_data_despite_a_refused_envelope_gets_no_message() {
        let (mut session, mut peer) = opened(&["PIPELINING"]).await;
        let server = async {
            for _ in 0..4 {
                peer.line().await;
            }
            peer.say("250 Ok\r\n250 Ok\r\n550 unknown user\r\n354 go ahead\r\n")
                .await;
            // Not even an empty message: the first recipient was accepted and would get it.
            peer.nothing_more().await;
        };
        let client = session.send(
            "a@example.com",
            &["b@example.com", "nobody@example.com"],
            b"x\r\n",
        );
        let (_, refused) = tokio::join!(server, client);
        assert!(matches!(
            refused,
            Err(Error::Refused {
                stage: Stage::Rcpt,
                ..
            })
        ));
        assert!(!session.reusable(), "the connection is given up");
    }

    #[tokio::test]
    async fn a_closing_server_or_a_lost_connection_ends_the_session() {
        let (mut session, mut peer) = opened(&["PIPELINING"]).await;
        let server = async {
            for _ in 0..3 {
                peer.line().await;
            }
            peer.say("421 4.3.2 shutting down\r\n").await;
            drop(peer);
        };
        let client = session.send("a@example.com", &["b@example.com"], b"x\r\n");
        let (_, failed) = tokio::join!(server, client);
        // The group's other replies never come: the connection is lost, before any content.
        assert!(
            matches!(
                failed,
                Err(Error::Connection {
                    content_sent: false,
                    ..
                })
            ),
            "{failed:?}"
        );
        assert!(!session.reusable());
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_content_may_have_delivered_it() {
        let (mut session, mut peer) = opened(&[]).await;
        let server = async {
            for reply in ["250 Ok\r\n", "250 Ok\r\n", "354 go\r\n"] {
                peer.line().await;
                peer.say(reply).await;
            }
            peer.content().await;
            drop(peer);
        };
        let client = session.send("a@example.com", &["b@example.com"], b"x\r\n");
        let (_, failed) = tokio::join!(server, client);
        assert!(matches!(
            failed,
            Err(Error::Connection {
                content_sent: true,
                ..
            })
        ));
        assert!(!session.reusable());
    }

    #[tokio::test]
    async fn utf8_needs_the_servers_extensions() {
        let (mut session, mut peer) = opened(&["PIPELINING"]).await;
        let eight_bit = session
            .send("a@example.com", &["b@example.com"], "안녕".as_bytes())
            .await;
        assert!(matches!(eight_bit, Err(Error::Unsupported(_))));
        let utf8_address = session
            .send("a@example.com", &["민수@example.com"], b"x")
            .await;
        assert!(matches!(utf8_address, Err(Error::Unsupported(_))));
        peer.nothing_more().await;

        let (mut session, mut peer) = opened(&["PIPELINING", "8BITMIME", "SMTPUTF8"]).await;
        let server = async {
            assert_eq!(
                peer.line().await,
                "MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8\r\n"
            );
            peer.line().await;
            peer.line().await;
            peer.say("250 Ok\r\n250 Ok\r\n354 go\r\n").await;
            peer.content().await;
            peer.say("250 Ok\r\n").await;
        };
        let client = session.send(
            "a@example.com",
            &["민수@example.com"],
            "안녕\r\n".as_bytes(),
        );
        let (_, sent) = tokio::join!(server, client);
        sent.expect("sent");
    }

    #[test]
    fn lines_starting_with_a_dot_are_doubled_and_the_data_ends() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".\r\nx"), b"..\r\nx\r\n.\r\n");
        assert_eq!(dot_stuffed(b"a.b\r\n"), b"a.b\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
    }

    #[tokio::test]
    async fn replies_are_read_line_by_line_with_one_code() {
        let read = |text: &'static str| async move {
            read_reply(&mut BufReader::new(text.as_bytes())).await
        };
        assert_eq!(
            read("250-mx greets\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                .await
                .expect("reply"),
            Reply {
                code: 250,
                lines: vec!["mx greets".into(), "PIPELINING".into(), "8BITMIME".into()]
            }
        );
        assert_eq!(read("354\r\n").await.expect("bare").code, 354);
        for bad in [
            "250-a\r\n251 b\r\n",
            "hello\r\n",
            "25\r\n",
            "250xok\r\n",
            "650 nope\r\n",
            "250-a\r\n",
            "",
        ] {
            assert!(
                matches!(read(bad).await, Err(Error::Connection { .. })),
                "{bad:?}"
            );
        }
        let long = format!("250 {}\r\n", "x".repeat(5000));
        let long: &'static str = Box::leak(long.into_boxed_str());
        assert!(read(long).await.is_err());
    }

    #[test]
    fn extensions_come_from_the_ehlo_reply_in_any_case() {
        let reply = Reply {
            code: 250,
            lines: [
                "mx.example.com",
                "pipelining",
                "STARTTLS",
                "AUTH LOGIN plain",
                "SIZE 1000",
            ]
            .map(String::from)
            .to_vec(),
        };
        let found = Extensions::of(&reply);
        assert_eq!(
            found,
            Extensions {
                pipelining: true,
                starttls: true,
                eight_bit_mime: false,
                smtp_utf8: false,
                auth_plain: true,
                auth_login: true,
            }
        );
        // The greeting line is not an extension.
        let greeting_only = Reply {
            code: 250,
            lines: vec!["PIPELINING".into()],
        };
        assert!(!Extensions::of(&greeting_only).pipelining);
    }
}

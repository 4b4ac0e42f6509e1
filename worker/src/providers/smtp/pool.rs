//! Persistent SMTP connections to one server, reused message after message.
//!
//! A message takes an idle connection (the most recently used, so a quiet hour lets the rest
//! age out) or opens one, and gives it back when its transaction is over. How many are in use
//! at once is bounded by the provider's call limits; the pool keeps at most `max_idle` of them.
//!
//! A server closes connections it finds idle (Postfix after 300 s, others sooner), and a
//! connection found closed when reused (gone, or a `421` in answer to the envelope) has sent
//! nothing of the message: the pool then opens a fresh one for it, once. A connection lost after the content went out is not retried here;
//! the server may have taken the message, and the delivery pipeline decides.

use super::session::{Error, Reply, Session, Target};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection is kept: below the idle timeouts servers commonly apply.
const IDLE_FOR: Duration = Duration::from_secs(30);

pub struct Pool {
    target: Target,
    idle: Mutex<Vec<(Session, Instant)>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(target: Target, max_idle: usize) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// Sends one message over a pooled connection.
    pub async fn send(&self, from: &str, to: &[&str], content: &[u8]) -> Result<Reply, Error> {
        self.send_at(from, to, content, Instant::now()).await
    }

    async fn send_at(
        &self,
        from: &str,
        to: &[&str],
        content: &[u8],
        now: Instant,
    ) -> Result<Reply, Error> {
        if let Some(mut session) = self.take(now) {
            match session.send(from, to, content).await {
                Err(error) if error.closed_before_content() => {} // a fresh connection below
                result => {
                    self.give_back(session);
                    return result;
                }
            }
        }
        let mut session = Session::open(&self.target).await?;
        tracing::debug!(
            host = %self.target.host,
            pipelining = session.extensions().pipelining,
            "SMTP connection opened"
        );
        let result = session.send(from, to, content).await;
        self.give_back(session);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Session, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection, dropping those idle too long.
    fn take(&self, now: Instant) -> Option<Session> {
        let mut idle = self.lock();
        idle.retain(|(_, since)| now.saturating_duration_since(*since) < IDLE_FOR);
        idle.pop().map(|(session, _)| session)
    }

    fn give_back(&self, session: Session) {
        if !session.reusable() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push((session, Instant::now()));
        } else {
            drop(idle);
            tokio::spawn(session.quit());
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::session::Security;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// How a test server treats each connection.
    #[derive(Clone, Copy)]
    struct Script {
        pipelining: bool,
        /// Messages it takes on a connection.
        messages: usize,
        /// Its answer to the next command, before it closes; none: it closes without a word.
        farewell: Option<&'static str>,
    }

    /// A server on 127.0.0.1 that follows `script` on each connection. Returns its port and the
    /// count of connections accepted.
    async fn server(script: Script) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script));
            }
        });
        (port, connections)
    }

    async fn serve(stream: tokio::net::TcpStream, script: Script) -> std::io::Result<()> {
        let mut io = BufReader::new(stream);
        let mut line = String::new();
        io.get_mut().write_all(b"220 ready\r\n").await?;
        io.read_line(&mut line).await?;
        let ehlo: &[u8] = if script.pipelining {
            b"250-hi\r\n250 PIPELINING\r\n"
        } else {
            b"250 hi\r\n"
        };
        io.get_mut().write_all(ehlo).await?;
        for _ in 0..script.messages {
            // MAIL, RCPT, DATA: answered together when pipelined, each in turn otherwise.
            for reply in ["250 Ok\r\n", "250 Ok\r\n", "354 go\r\n"] {
                line.clear();
                io.read_line(&mut line).await?;
                if !script.pipelining {
                    io.get_mut().write_all(reply.as_bytes()).await?;
                }
            }
            if script.pipelining {
                io.get_mut()
                    .write_all(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
                    .await?;
            }
            loop {
                line.clear();
                io.read_line(&mut line).await?;
                if line == ".\r\n" {
                    break;
                }
            }
            io.get_mut().write_all(b"250 Ok\r\n").await?;
        }
        if let Some(farewell) = script.farewell {
            line.clear();
            io.read_line(&mut line).await?;
            io.get_mut().write_all(farewell.as_bytes()).await?;
        }
        Ok(())
    }

    /// Takes every message on one connection, pipelined.
    const FOREVER: Script = Script {
        pipelining: true,
        messages: usize::MAX,
        farewell: None,
    };

    fn pool(port: u16) -> Pool {
        Pool::new(
            Target {
                host: "127.0.0.1".into(),
                port,
                security: Security::Plain,
                credentials: None,
            },
            4,
        )
    }

    #[tokio::test]
    async fn one_connection_carries_message_after_message() {
        let (port, connections) = server(FOREVER).await;
        let pool = pool(port);
        for _ in 0..20 {
            pool.send("a@example.com", &["b@example.com"], b"x\r\n")
                .await
                .expect("sent");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_without_failing_the_message() {
        let (port, connections) = server(Script {
            messages: 1,
            ..FOREVER
        })
        .await;
        let pool = pool(port);
        for _ in 0..3 {
            pool.send("a@example.com", &["b@example.com"], b"x\r\n")
                .await
                .expect("sent");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_answering_421_to_the_envelope_is_replaced_without_failing_the_message() {
        // Without PIPELINING: the 421 is the answer to MAIL FROM alone.
        let (port, connections) = server(Script {
            pipelining: false,
            messages: 1,
            farewell: Some("421 4.4.2 idle too long, closing\r\n"),
        })
        .await;
        let pool = pool(port);
        for _ in 0..3 {
            pool.send("a@example.com", &["b@example.com"], b"x\r\n")
                .await
                .expect("sent");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_not_used() {
        let (port, connections) = server(FOREVER).await;
        let pool = pool(port);
        pool.send("a@example.com", &["b@example.com"], b"x\r\n")
            .await
            .expect("sent");
        let later = Instant::now() + IDLE_FOR;
        pool.send_at("a@example.com", &["b@example.com"], b"x\r\n", later)
            .await
            .expect("sent");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_server_is_a_connection_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let failed = pool(port)
            .send("a@example.com", &["b@example.com"], b"x\r\n")
            .await;
        assert!(
            matches!(failed, Err(Error::Connection { .. })),
            "{failed:?}"
        );
    }
}

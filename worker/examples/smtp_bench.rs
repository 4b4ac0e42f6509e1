//! The SMTP benchmark behind `scripts/bench-smtp`: how many messages a second one SMTP provider
//! sends through `connections` pooled connections, to
//!
//! - a local fake SMTP server that answers each round trip after `latency_ms` (the replies to
//!   what arrived together go back together, after one wait: a pipelined MAIL, RCPT and DATA
//!   cost one round trip, as on a network), with and without PIPELINING advertised;
//! - a real SMTP server on this machine (`sink`, Postfix's smtp-sink, which offers PIPELINING),
//!   with no added latency: the ceiling of client and server on these cores.
//!
//! Each is driven by UMP's SMTP provider and, for comparison, by lettre's pooled transport (what
//! the provider used before it had its own client, and which does not pipeline).
//!
//!   smtp_bench <messages> <latency_ms> <connections> <sink host:port>
//!
//! Prints one line per case: `case<TAB>messages<TAB>seconds<TAB>rate`. Listens on and connects to
//! 127.0.0.1 only; every case is bounded by its message count and a 10-minute limit.

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::{ChannelType, ProviderSpec, ProviderType};
use ump_worker::providers::ProviderContext;

/// A fake SMTP server: answers after `latency`, counts the messages it accepted.
struct FakeServer {
    latency: Duration,
    pipelining: bool,
    accepted: AtomicU64,
}

impl FakeServer {
    async fn start(latency: Duration, pipelining: bool) -> (Arc<Self>, u16) {
        let server = Arc::new(Self {
            latency,
            pipelining,
            accepted: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let serving = Arc::clone(&server);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = Arc::clone(&serving);
                tokio::spawn(async move {
                    let _ = server.serve(stream).await;
                });
            }
        });
        (server, port)
    }

    async fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"220 fake ESMTP\r\n").await?;
        let mut line = String::new();
        let mut in_data = false;
        loop {
            // What arrived together is answered together, after one round trip.
            let mut replies = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        self.accepted.fetch_add(1, Ordering::Relaxed);
                        replies.push_str("250 2.0.0 Ok: queued\r\n");
                    }
                } else {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    match verb.as_str() {
                        "EHLO" if self.pipelining => {
                            replies.push_str("250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
                        }
                        "EHLO" => replies.push_str("250-fake\r\n250 8BITMIME\r\n"),
                        "DATA" => {
                            in_data = true;
                            replies.push_str("354 End data with <CR><LF>.<CR><LF>\r\n");
                        }
                        "QUIT" => {
                            write.write_all(b"221 2.0.0 Bye\r\n").await?;
                            return Ok(());
                        }
                        _ => replies.push_str("250 2.0.0 Ok\r\n"),
                    }
                }
                if read.buffer().is_empty() {
                    break;
                }
            }
            if !replies.is_empty() {
                tokio::time::sleep(self.latency).await;
                write.write_all(replies.as_bytes()).await?;
            }
        }
    }
}

enum Client {
    Ump(Arc<dyn Provider>),
    Lettre(AsyncSmtpTransport<Tokio1Executor>),
}

impl Client {
    fn ump(port: u16, connections: usize) -> Self {
        let settings: BTreeMap<String, String> = [
            ("host", "127.0.0.1".to_owned()),
            ("port", port.to_string()),
            ("tls", "none".to_owned()),
            ("from", "UMP <noreply@ump.test>".to_owned()),
            ("maxConcurrency", connections.to_string()),
            // The transport is measured, not the adaptive limit's climb to it.
            ("adaptiveConcurrency", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let spec = ProviderSpec {
            name: "mail".into(),
            provider_type: ProviderType::Smtp,
            secret_ref: None,
            settings,
        };
        let ctx = ProviderContext {
            secrets_dir: Path::new("/nonexistent"),
            sandbox_outbox: Path::new("/dev/null"),
        };
        Self::Ump(ump_worker::providers::build(&spec, &ctx).expect("build the SMTP provider"))
    }

    fn lettre(port: u16, connections: usize) -> Self {
        Self::Lettre(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .timeout(Some(Duration::from_secs(30)))
                .pool_config(PoolConfig::new().max_size(connections as u32))
                .build(),
        )
    }

    async fn send(&self, i: usize) -> bool {
        let to = format!("user{i}@ump.test");
        let text = format!("주문하신 상품이 발송되었습니다. 송장번호 {i}");
        match self {
            Self::Ump(provider) => {
                let message = Outgoing {
                    id: ump_core::model::MessageId::new(),
                    tenant: "default".into(),
                    channel: "mail".into(),
                    channel_type: ChannelType::Email,
                    to,
                    subject: Some("UMP".into()),
                    text,
                    html: None,
                    template: None,
                    data: Default::default(),
                    metadata: Default::default(),
                    category: Default::default(),
                    attempt: 1,
                };
                matches!(provider.send(&message).await, Outcome::Sent { .. })
            }
            Self::Lettre(transport) => {
                let message = Message::builder()
                    .from("UMP <noreply@ump.test>".parse().expect("from"))
                    .to(to.parse().expect("to"))
                    .subject("UMP")
                    .body(text)
                    .expect("message");
                transport.send(message).await.is_ok()
            }
        }
    }
}

/// Sends `messages` through `client` from `connections` tasks at once: the seconds it took.
async fn run(client: Client, messages: usize, connections: usize) -> f64 {
    let client = Arc::new(client);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, next) = (Arc::clone(&client), Arc::clone(&next));
        tasks.spawn(async move {
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    break;
                }
                if !client.send(i).await {
                    failed += 1;
                }
            }
            failed
        });
    }
    let failed = tokio::time::timeout(Duration::from_secs(600), async {
        let mut failed = 0;
        while let Some(task) = tasks.join_next().await {
            failed += task.expect("sender task");
        }
        failed
    })
    .await
    .expect("a case took more than 10 minutes");
    assert_eq!(failed, 0, "{failed} messages were not sent");
    started.elapsed().as_secs_f64()
}

fn report(case: &str, messages: usize, seconds: f64) {
    println!(
        "{case}\t{messages}\t{seconds:.3}\t{:.0}",
        messages as f64 / seconds
    );
}

#[tokio::main]
async fn main() {
    ump_core::tls::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let [_, messages, latency_ms, connections, sink] = args.as_slice() else {
        panic!("usage: smtp_bench <messages> <latency_ms> <connections> <sink host:port>");
    };
    let messages: usize = messages.parse().expect("messages");
    let latency = Duration::from_millis(latency_ms.parse().expect("latency_ms"));
    let connections: usize = connections.parse().expect("connections");
    let (sink_host, sink_port) = sink.rsplit_once(':').expect("sink host:port");
    assert_eq!(sink_host, "127.0.0.1", "the sink must be on 127.0.0.1");
    let sink_port: u16 = sink_port.parse().expect("sink port");

    for (pipelining, label) in [(false, "without"), (true, "with")] {
        let (server, port) = FakeServer::start(latency, pipelining).await;
        let mut cases = vec![("ump", Client::ump(port, connections))];
        if !pipelining {
            cases.push(("lettre", Client::lettre(port, connections)));
        }
        for (client_name, client) in cases {
            let before = server.accepted.load(Ordering::Relaxed);
            let seconds = run(client, messages, connections).await;
            let accepted = server.accepted.load(Ordering::Relaxed) - before;
            assert_eq!(accepted, messages as u64, "the fake accepted {accepted}");
            report(
                &format!("{client_name}, fake server {label} PIPELINING"),
                messages,
                seconds,
            );
        }
    }
    // The real server, no added latency: ten times the messages, as each takes far less time.
    for client_name in ["ump", "lettre"] {
        let client = match client_name {
            "ump" => Client::ump(sink_port, connections),
            _ => Client::lettre(sink_port, connections),
        };
        let seconds = run(client, messages * 10, connections).await;
        report(
            &format!("{client_name}, smtp-sink (real, PIPELINING offered)"),
            messages * 10,
            seconds,
        );
    }
}

//! The SMTP provider against the real SMTP servers from `scripts/infra up smtp`: Mailpit, where
//! what arrives, read back through the server's API, is what was sent — Korean included — and no
//! input adds a header; and Postfix's smtp-sink, which offers PIPELINING.

mod fakes;

use fakes::{SecretsDir, message, self_signed_localhost, spec, tls_server_config};
use serde_json::Value;
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};
use ump_core::testing::{SmtpServer, infra, unique_name};

fn mailpit() -> SmtpServer {
    infra().smtp()
}

fn provider(
    mailpit: &SmtpServer,
    secrets: &SecretsDir,
    settings: &[(&str, &str)],
) -> std::sync::Arc<dyn Provider> {
    secrets.secret(
        "smtp",
        &[("username", &mailpit.user), ("password", &mailpit.password)],
    );
    let port = mailpit.port.to_string();
    let mut all = vec![
        ("host", mailpit.host.as_str()),
        ("port", port.as_str()),
        ("from", "유엠피 알림 <noreply@ump.test>"),
        ("caFile", mailpit.tls_cert.as_str()),
    ];
    all.extend_from_slice(settings);
    let with_secret = !settings.iter().any(|(k, v)| *k == "tls" && *v == "none");
    ump_worker::providers::build(
        &spec(
            "mail",
            ProviderType::Smtp,
            with_secret.then_some("smtp"),
            &all,
        ),
        &secrets.ctx(),
    )
    .expect("build smtp")
}

/// The message whose subject holds `token`, as Mailpit parsed it, with its summary (which names
/// the authenticated user) and its raw headers.
async fn read_back(mailpit: &SmtpServer, token: &str) -> (Value, Value, Value) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("SMTP API {url}: {e}"))
                .json::<Value>()
                .await
                .unwrap_or_else(|e| panic!("SMTP API {url}: {e}"))
        }
    };
    for _ in 0..50 {
        let list = get(format!("{}/api/v1/search?query={token}", mailpit.api)).await;
        if let Some(summary) = list["messages"].get(0) {
            let id = summary["ID"].as_str().expect("message ID").to_owned();
            let message = get(format!("{}/api/v1/message/{id}", mailpit.api)).await;
            let headers = get(format!("{}/api/v1/message/{id}/headers", mailpit.api)).await;
            return (summary.clone(), message, headers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("SMTP: the message with {token} never arrived");
}

#[tokio::test]
async fn starttls_authenticated_html_mail_arrives_intact() {
    let mailpit = mailpit();
    let secrets = SecretsDir::new();
    let smtp = provider(&mailpit, &secrets, &[("tls", "starttls")]);
    let token = unique_name("starttls");
    let mut mail = message(
        ChannelType::Email,
        "김민수 <minsu@ump.test>",
        "안녕하세요, 김민수님.",
    );
    mail.subject = Some(format!("가입을 환영합니다 {token}"));
    mail.html = Some("<p>안녕하세요, <b>김민수</b>님.</p>".into());

    let outcome = smtp.send(&mail).await;
    let expected_id = format!("<{}@ump.test>", mail.id);
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some(expected_id.clone())
        }
    );
    let (summary, message, _) = read_back(&mailpit, &token).await;
    assert_eq!(
        summary["Username"].as_str(),
        Some(mailpit.user.as_str()),
        "AUTH was used"
    );
    assert_eq!(
        message["MessageID"].as_str(),
        Some(expected_id.trim_matches(['<', '>']))
    );
    assert_eq!(
        message["Subject"],
        format!("가입을 환영합니다 {token}").as_str()
    );
    assert_eq!(message["From"]["Name"], "유엠피 알림");
    assert_eq!(message["From"]["Address"], "noreply@ump.test");
    assert_eq!(message["To"][0]["Name"], "김민수");
    assert_eq!(message["To"][0]["Address"], "minsu@ump.test");
    assert_eq!(
        message["Text"].as_str().map(str::trim),
        Some("안녕하세요, 김민수님.")
    );
    assert_eq!(
        message["HTML"].as_str().map(str::trim),
        Some("<p>안녕하세요, <b>김민수</b>님.</p>")
    );
}

#[tokio::test]
async fn plain_text_mail_without_tls_or_auth_arrives() {
    let mailpit = mailpit();
    let secrets = SecretsDir::new();
    let smtp = provider(&mailpit, &secrets, &[("tls", "none")]);
    let token = unique_name("plain");
    let mut mail = message(ChannelType::Email, "minsu@ump.test", "본문만 있는 메일");
    mail.subject = Some(format!("텍스트 {token}"));
    assert!(matches!(smtp.send(&mail).await, Outcome::Sent { .. }));
    let (summary, message, headers) = read_back(&mailpit, &token).await;
    assert_eq!(summary["Username"].as_str().unwrap_or_default(), "");
    assert_eq!(
        message["Text"].as_str().map(str::trim),
        Some("본문만 있는 메일")
    );
    assert_eq!(message["HTML"].as_str().unwrap_or_default(), "");
    let content_type = headers["Content-Type"][0].as_str().unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; charset=utf-8"),
        "{content_type}"
    );
}

#[tokio::test]
async fn crlf_in_subject_or_address_never_adds_a_header() {
    let mailpit = mailpit();
    let secrets = SecretsDir::new();
    let smtp = provider(&mailpit, &secrets, &[]);
    let token = unique_name("inject");

    let mut mail = message(ChannelType::Email, "minsu@ump.test", "body");
    mail.subject = Some(format!(
        "Hello {token}\r\nBcc: victim@evil.test\r\nX-Injected: yes\nReply-To: evil@evil.test"
    ));
    assert!(matches!(smtp.send(&mail).await, Outcome::Sent { .. }));
    let (_, arrived, headers) = read_back(&mailpit, &token).await;
    for name in ["Bcc", "X-Injected", "Reply-To"] {
        assert!(
            headers.get(name).is_none(),
            "{name} was injected: {headers}"
        );
    }
    assert_eq!(arrived["Bcc"].as_array().map(Vec::len).unwrap_or(0), 0);
    let subject = arrived["Subject"].as_str().unwrap_or_default();
    assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    assert!(
        subject.starts_with(&format!("Hello {token}")),
        "{subject:?}"
    );

    for to in [
        "minsu@ump.test\r\nBcc: victim@evil.test",
        "minsu@ump.test, victim@evil.test",
        "not an address",
    ] {
        let outcome = smtp.send(&message(ChannelType::Email, to, "x")).await;
        assert!(
            matches!(&outcome, Outcome::Permanent { reason } if reason.starts_with("invalid recipient address")),
            "{to:?}: {outcome:?}"
        );
    }
}

/// Implicit TLS (port 465 style), through a TLS terminator in front of the same server.
#[tokio::test]
async fn implicit_tls_mail_arrives() {
    let mailpit = mailpit();
    let (cert, key) = self_signed_localhost();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls_server_config(&cert, &key, &[])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let upstream = format!("{}:{}", mailpit.host, mailpit.port);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut server)) = (
                    acceptor.accept(tcp).await,
                    tokio::net::TcpStream::connect(&upstream).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });

    let secrets = SecretsDir::new();
    let ca_file = secrets.path().join("terminator-ca.pem");
    std::fs::write(&ca_file, &cert).expect("write CA");
    let ca = ca_file.to_string_lossy().into_owned();
    let port = port.to_string();
    let smtp = provider(
        &mailpit,
        &secrets,
        &[
            ("tls", "tls"),
            ("port", &port),
            ("host", "localhost"),
            ("caFile", &ca),
        ],
    );
    let token = unique_name("implicit");
    let mut mail = message(ChannelType::Email, "minsu@ump.test", "암호화된 연결");
    mail.subject = Some(format!("TLS {token}"));
    let outcome = smtp.send(&mail).await;
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    let (summary, message, _) = read_back(&mailpit, &token).await;
    assert_eq!(summary["Username"].as_str(), Some(mailpit.user.as_str()));
    assert_eq!(
        message["Text"].as_str().map(str::trim),
        Some("암호화된 연결")
    );
}

#[tokio::test]
async fn an_untrusted_server_or_no_server_is_retryable_and_the_password_never_quoted() {
    let mailpit = mailpit();
    let secrets = SecretsDir::new();
    let mail = message(ChannelType::Email, "minsu@ump.test", "x");

    // The system roots never signed Mailpit's private CA: STARTTLS must fail, not fall back.
    let (other_ca, _) = self_signed_localhost();
    let other_ca_file = secrets.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca).expect("write CA");
    let other = other_ca_file.to_string_lossy().into_owned();
    let untrusted = provider(&mailpit, &secrets, &[("caFile", &other)]);
    let outcome = untrusted.send(&mail).await;
    assert!(matches!(outcome, Outcome::Retryable { .. }), "{outcome:?}");

    let closed = ump_core::testing::free_port().to_string();
    let nowhere = provider(&mailpit, &secrets, &[("port", &closed), ("timeout", "2s")]);
    let outcome = nowhere.send(&mail).await;
    let Outcome::Retryable { reason, .. } = &outcome else {
        panic!("expected retryable, got {outcome:?}");
    };
    assert!(!reason.contains(&mailpit.password), "{reason}");
}

/// Against a real server that offers PIPELINING (Postfix's smtp-sink): 300 messages at once
/// through a pool of at most 8 connections, each transaction pipelined. Every message is
/// accepted exactly once and arrives as sent, a line that starts with a dot included.
#[tokio::test]
async fn pipelined_transactions_to_a_real_server_each_arrive_once_and_intact() {
    const MESSAGES: usize = 300;
    let sink = infra().smtp_pipelining();
    let secrets = SecretsDir::new();
    let port = sink.port.to_string();
    let smtp = ump_worker::providers::build(
        &spec(
            "mail",
            ProviderType::Smtp,
            None,
            &[
                ("host", sink.host.as_str()),
                ("port", port.as_str()),
                ("tls", "none"),
                ("from", "UMP <noreply@ump.test>"),
                ("maxConcurrency", "8"),
            ],
        ),
        &secrets.ctx(),
    )
    .expect("build smtp");
    let token = unique_name("pipelined");
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..MESSAGES {
        let smtp = std::sync::Arc::clone(&smtp);
        let mut mail = message(
            ChannelType::Email,
            &format!("user{i}@ump.test"),
            &format!("Hello {i}\n.a line that starts with a dot\nbye"),
        );
        mail.subject = Some(format!("{token} #{i}"));
        sends.spawn(async move { smtp.send(&mail).await });
    }
    while let Some(outcome) = sends.join_next().await {
        let outcome = outcome.expect("send task");
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }

    // What the server wrote, one file per accepted transaction.
    let mut arrived = vec![0usize; MESSAGES];
    for _ in 0..50 {
        arrived.fill(0);
        for text in dumped(&sink.dump) {
            let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) else {
                continue;
            };
            let Some(i) = subject.strip_prefix(&format!("{token} #")) else {
                continue;
            };
            let i: usize = i.trim().parse().expect("message number");
            arrived[i] += 1;
            assert!(
                text.contains(&format!("X-Rcpt-Args: <user{i}@ump.test>")),
                "{text}"
            );
            // smtp-sink writes lines with LF ends, dots unstuffed.
            assert!(
                text.contains(&format!(
                    "\n\nHello {i}\n.a line that starts with a dot\nbye"
                )),
                "{text}"
            );
        }
        if arrived.iter().all(|n| *n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing: Vec<usize> = (0..MESSAGES).filter(|i| arrived[*i] == 0).collect();
    let twice: Vec<usize> = (0..MESSAGES).filter(|i| arrived[*i] > 1).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
}

/// Every file under `dir` in the hour folders written to in the last two hours, as text.
fn dumped(dir: &std::path::Path) -> Vec<String> {
    let mut texts = Vec::new();
    let hours = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("SMTP (smtp-sink) dump {}: {e}", dir.display()));
    let recent = |hour: &std::fs::DirEntry| {
        hour.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().unwrap_or_default() < Duration::from_secs(2 * 3600))
    };
    for hour in hours.flatten().filter(recent) {
        let Ok(files) = std::fs::read_dir(hour.path()) else {
            continue;
        };
        for file in files.flatten() {
            if let Ok(bytes) = std::fs::read(file.path()) {
                texts.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    texts
}

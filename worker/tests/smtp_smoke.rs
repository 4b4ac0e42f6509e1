//! Smoke test: lettre delivers to the real SMTP server from `scripts/infra up` over STARTTLS with
//! authentication, and what arrived (read back through the server's API) is what was sent, Korean
//! text included.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use ump_core::testing::{infra, unique_name};

#[tokio::test]
async fn starttls_authenticated_mail_arrives_intact() {
    let smtp = infra().smtp();
    let pem = std::fs::read(&smtp.tls_cert)
        .unwrap_or_else(|e| panic!("SMTP: TLS certificate {}: {e}", smtp.tls_cert));
    let tls = TlsParameters::builder(smtp.host.clone())
        .add_root_certificate(Certificate::from_pem(&pem).expect("SMTP: certificate PEM"))
        .build_rustls()
        .expect("SMTP: TLS parameters");
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(smtp.user.clone(), smtp.password.clone()))
        .timeout(Some(Duration::from_secs(10)))
        .build();

    let token = unique_name("smoke");
    let subject = format!("가입을 환영합니다 {token}");
    let text = "안녕하세요, 김민수님. UMP에 오신 것을 환영합니다.";
    let html = "<p>안녕하세요, <b>김민수</b>님.</p>";
    let email = Message::builder()
        .from("UMP <noreply@ump.test>".parse::<Mailbox>().expect("from"))
        .to("김민수 <minsu@ump.test>".parse::<Mailbox>().expect("to"))
        .subject(subject.clone())
        .multipart(MultiPart::alternative_plain_html(
            text.to_owned(),
            html.to_owned(),
        ))
        .expect("build email");
    let response = transport
        .send(email)
        .await
        .unwrap_or_else(|e| panic!("SMTP at {}:{}: send: {e}", smtp.host, smtp.port));
    assert!(response.is_positive(), "SMTP refused: {response:?}");

    // Read it back from the server.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut found = None;
    for _ in 0..50 {
        let list: serde_json::Value = http
            .get(format!("{}/api/v1/search", smtp.api))
            .query(&[("query", token.as_str())])
            .send()
            .await
            .unwrap_or_else(|e| panic!("SMTP read-back API {}: {e}", smtp.api))
            .json()
            .await
            .expect("SMTP API: search JSON");
        if let Some(id) = list["messages"][0]["ID"].as_str() {
            found = Some(id.to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = found.expect("SMTP: the message never arrived");
    let message: serde_json::Value = http
        .get(format!("{}/api/v1/message/{id}", smtp.api))
        .send()
        .await
        .expect("SMTP API: message")
        .json()
        .await
        .expect("SMTP API: message JSON");
    assert_eq!(message["Subject"].as_str(), Some(subject.as_str()));
    assert_eq!(message["To"][0]["Address"].as_str(), Some("minsu@ump.test"));
    assert_eq!(message["To"][0]["Name"].as_str(), Some("김민수"));
    assert_eq!(message["Text"].as_str().map(str::trim), Some(text));
    assert!(
        message["HTML"]
            .as_str()
            .is_some_and(|h| h.contains("<b>김민수</b>")),
        "HTML part: {}",
        message["HTML"]
    );
}

//! Twilio Messages API.

use super::fakes::twilio::{ACCOUNT_SID, AUTH_TOKEN, FakeTwilio};
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, closed_port, reason};
use serde_json::json;
use std::time::{Duration, Instant};
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};

fn provider(
    secrets: &SecretsDir,
    endpoint: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> std::sync::Arc<dyn Provider> {
    secrets.secret(
        "twilio",
        &[
            ("accountSid", ACCOUNT_SID),
            ("authToken", &format!("{token}\n")),
        ],
    );
    let mut settings = vec![
        ("endpoint", endpoint),
        ("from", "+15005550006"),
        ("statusCallback", "https://ump.example/receipts/twilio"),
    ];
    settings.extend_from_slice(extra);
    ump_worker::providers::build(
        &spec("twilio", ProviderType::Twilio, Some("twilio"), &settings),
        &secrets.ctx(),
    )
    .expect("build twilio")
}

#[tokio::test]
async fn sends_the_documented_form_and_keeps_the_sid() {
    let fake = FakeTwilio::start().await;
    let secrets = SecretsDir::new();
    let twilio = provider(&secrets, &fake.endpoint(), AUTH_TOKEN, &[]);

    let outcome = twilio
        .send(&message(
            ChannelType::Sms,
            "+821012345678",
            "인증번호는 123456 입니다",
        ))
        .await;

    let Outcome::Sent {
        provider_message_id: Some(sid),
    } = outcome
    else {
        panic!("expected Sent with a sid, got {outcome:?}");
    };
    assert!(sid.starts_with("SM"), "{sid}");
    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["To"], "+821012345678");
    assert_eq!(sent[0]["From"], "+15005550006");
    assert_eq!(sent[0]["Body"], "인증번호는 123456 입니다");
    assert_eq!(
        sent[0]["StatusCallback"],
        "https://ump.example/receipts/twilio"
    );
}

#[tokio::test]
async fn an_invalid_number_is_permanent() {
    let fake = FakeTwilio::start().await;
    let secrets = SecretsDir::new();
    let twilio = provider(&secrets, &fake.endpoint(), AUTH_TOKEN, &[]);
    let outcome = twilio
        .send(&message(ChannelType::Sms, "010-1234", "hi"))
        .await;
    assert_permanent(&outcome, "twilio 21211:");
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retryable() {
    let fake = FakeTwilio::start().await;
    let secrets = SecretsDir::new();
    let twilio = provider(&secrets, &fake.endpoint(), AUTH_TOKEN, &[]);
    fake.script.push(
        Canned::json(
            429,
            json!({"code": 20429, "message": "Too Many Requests", "status": 429}),
        )
        .with_header("retry-after", "7"),
    );
    fake.script.push(Canned::Reply {
        status: 503,
        headers: vec![],
        body: "<html>upstream unavailable</html>".into(),
    });
    let sms = message(ChannelType::Sms, "+821012345678", "hi");

    assert_retryable(&twilio.send(&sms).await, Some(Duration::from_secs(7)));
    let outcome = twilio.send(&sms).await;
    assert_retryable(&outcome, None);
    assert!(reason(&outcome).starts_with("HTTP 503"), "{outcome:?}");
    assert!(matches!(twilio.send(&sms).await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retryable() {
    let fake = FakeTwilio::start().await;
    let secrets = SecretsDir::new();
    let twilio = provider(
        &secrets,
        &fake.endpoint(),
        AUTH_TOKEN,
        &[("timeout", "300ms")],
    );
    fake.script.push(Canned::Stall(Duration::from_secs(3)));
    let sms = message(ChannelType::Sms, "+821012345678", "hi");
    let started = Instant::now();
    let outcome = twilio.send(&sms).await;
    assert_retryable(&outcome, None);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout held"
    );

    let unreachable = format!("http://127.0.0.1:{}", closed_port().await);
    let twilio = provider(&secrets, &unreachable, AUTH_TOKEN, &[]);
    let outcome = twilio.send(&sms).await;
    assert_retryable(&outcome, None);
    assert!(
        reason(&outcome).starts_with("cannot connect"),
        "{outcome:?}"
    );
    assert!(!reason(&outcome).contains(ACCOUNT_SID), "{outcome:?}");
}

#[tokio::test]
async fn max_concurrency_bounds_calls_in_flight() {
    let fake = FakeTwilio::start().await;
    let secrets = SecretsDir::new();
    let twilio = provider(
        &secrets,
        &fake.endpoint(),
        AUTH_TOKEN,
        &[("maxConcurrency", "2")],
    );
    for _ in 0..6 {
        fake.script.push(Canned::Stall(Duration::from_millis(300)));
    }
    let sms = message(ChannelType::Sms, "+821012345678", "hi");
    let started = Instant::now();
    futures::future::join_all((0..6).map(|_| twilio.send(&sms))).await;
    // Six 300 ms calls two at a time take three rounds; all at once would take one.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rejected_credentials_are_retryable_and_never_quoted() {
    let fake = FakeTwilio::start().await;
    fake.echo_credentials();
    let secrets = SecretsDir::new();
    let wrong = "wrong-twilio-token-0123456789";
    let twilio = provider(&secrets, &fake.endpoint(), wrong, &[]);
    let outcome = twilio
        .send(&message(ChannelType::Sms, "+821012345678", "hi"))
        .await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(
        text.starts_with("credentials rejected: twilio 20003"),
        "{text}"
    );
    assert!(!text.contains(wrong), "the token leaked: {text}");
    assert!(text.contains("<redacted>"), "the fake echoed it: {text}");
}

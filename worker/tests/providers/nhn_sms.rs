//! NHN Cloud SMS v3.0.

use super::fakes::nhn_sms::{APP_KEY, FakeNhnSms, SECRET_KEY};
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};

fn provider(
    secrets: &SecretsDir,
    endpoint: &str,
    secret_key: &str,
) -> std::sync::Arc<dyn Provider> {
    secrets.secret("nhn", &[("appKey", APP_KEY), ("secretKey", secret_key)]);
    ump_worker::providers::build(
        &spec(
            "nhn-sms",
            ProviderType::NhnSms,
            Some("nhn"),
            &[("endpoint", endpoint), ("sendNo", "0212345678")],
        ),
        &secrets.ctx(),
    )
    .expect("build nhn-sms")
}

#[tokio::test]
async fn short_korean_text_goes_as_sms() {
    let fake = FakeNhnSms::start().await;
    let secrets = SecretsDir::new();
    let nhn = provider(&secrets, &fake.endpoint(), SECRET_KEY);
    // 45 Hangul = 90 bytes: the most an SMS takes.
    let text = "가".repeat(45);
    let outcome = nhn
        .send(&message(ChannelType::Sms, "+82 10-1234-5678", &text))
        .await;
    let Outcome::Sent {
        provider_message_id: Some(id),
    } = &outcome
    else {
        panic!("expected Sent, got {outcome:?}");
    };
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].kind, "sms");
    assert_eq!(accepted[0].body["body"], text.as_str());
    assert_eq!(accepted[0].body["sendNo"], "0212345678");
    assert_eq!(
        accepted[0].body["recipientList"][0]["recipientNo"],
        "01012345678"
    );
    assert!(id.contains("nhn"), "{id}");
}

#[tokio::test]
async fn longer_text_goes_as_lms_with_a_title() {
    let fake = FakeNhnSms::start().await;
    let secrets = SecretsDir::new();
    let nhn = provider(&secrets, &fake.endpoint(), SECRET_KEY);
    // 46 characters but 91 bytes: one byte too many for an SMS.
    let text = format!("{}a", "가".repeat(45));
    let mut sms = message(ChannelType::Sms, "01012345678", &text);
    sms.subject = Some("주문이 접수되었습니다 — 아주 긴 제목은 40바이트에서 잘립니다".into());
    assert!(matches!(nhn.send(&sms).await, Outcome::Sent { .. }));

    let accepted = fake.accepted();
    assert_eq!(accepted[0].kind, "mms");
    let title = accepted[0].body["title"].as_str().unwrap_or_default();
    assert!(title.starts_with("주문이 접수되었습니다"), "{title}");

    // A text no LMS can carry never reaches NHN.
    let too_long = message(ChannelType::Sms, "01012345678", &"가".repeat(1001));
    assert_permanent(&nhn.send(&too_long).await, "text is 2002 bytes");
    assert_eq!(fake.accepted().len(), 1);
}

#[tokio::test]
async fn international_numbers_use_their_own_field() {
    let fake = FakeNhnSms::start().await;
    let secrets = SecretsDir::new();
    let nhn = provider(&secrets, &fake.endpoint(), SECRET_KEY);
    let outcome = nhn
        .send(&message(ChannelType::Sms, "+1 415 555 0100", "hello"))
        .await;
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    assert_eq!(
        fake.accepted()[0].body["recipientList"][0]["internationalRecipientNo"],
        "14155550100"
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let fake = FakeNhnSms::start().await;
    let secrets = SecretsDir::new();
    let nhn = provider(&secrets, &fake.endpoint(), SECRET_KEY);
    let sms = message(ChannelType::Sms, "01012345678", "hi");
    fake.script.push(Canned::Reply {
        status: 429,
        headers: vec![("retry-after", "3".into())],
        body: String::new(),
    });
    fake.script.push(Canned::Reply {
        status: 500,
        headers: vec![],
        body: "internal".into(),
    });
    fake.script
        .push(super::fakes::nhn_sms::failure(-5000, "Invalid parameter."));
    assert_retryable(&nhn.send(&sms).await, Some(Duration::from_secs(3)));
    assert_retryable(&nhn.send(&sms).await, None);
    assert_permanent(&nhn.send(&sms).await, "nhn -5000: Invalid parameter.");
    assert_permanent(
        &nhn.send(&message(ChannelType::Sms, "not a number", "hi"))
            .await,
        "invalid phone number",
    );
}

#[tokio::test]
async fn a_refused_secret_key_is_retryable_and_never_quoted() {
    let fake = FakeNhnSms::start().await;
    fake.echo_credentials();
    let secrets = SecretsDir::new();
    let wrong = "wrong-nhn-secret-key-987";
    let nhn = provider(&secrets, &fake.endpoint(), wrong);
    let outcome = nhn
        .send(&message(ChannelType::Sms, "01012345678", "hi"))
        .await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(text.starts_with("account rejected: nhn -1004"), "{text}");
    assert!(!text.contains(wrong), "the key leaked: {text}");
}

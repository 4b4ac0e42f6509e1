//! Kakao AlimTalk through NHN Cloud BizMessage v2.3.

use super::fakes::alimtalk::{APP_KEY, FakeAlimtalk, SECRET_KEY, SENDER_KEY};
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use serde_json::json;
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::{ChannelType, ProviderType};
use ump_worker::providers::nhn_alimtalk::wants_sms_fallback;

fn provider(
    secrets: &SecretsDir,
    fake: &FakeAlimtalk,
    sender_key: &str,
    extra: &[(&str, &str)],
) -> std::sync::Arc<dyn Provider> {
    secrets.secret(
        "alimtalk",
        &[
            ("appKey", APP_KEY),
            ("secretKey", SECRET_KEY),
            ("senderKey", sender_key),
        ],
    );
    let endpoint = fake.endpoint();
    let mut settings = vec![("endpoint", endpoint.as_str())];
    settings.extend_from_slice(extra);
    ump_worker::providers::build(
        &spec(
            "alimtalk",
            ProviderType::NhnAlimtalk,
            Some("alimtalk"),
            &settings,
        ),
        &secrets.ctx(),
    )
    .expect("build alimtalk")
}

fn order_shipped(to: &str) -> Outgoing {
    let mut m = message(
        ChannelType::Alimtalk,
        to,
        "김민수님, 주문 1234가 발송되었습니다.",
    );
    m.template = Some("ORDER_SHIPPED".into());
    m.data.insert("name".into(), json!("김민수"));
    m.data.insert("orderNo".into(), json!(1234));
    m
}

#[tokio::test]
async fn sends_the_template_with_its_parameters() {
    let fake = FakeAlimtalk::start().await;
    fake.template("ORDER_SHIPPED", &["name", "orderNo"]);
    let secrets = SecretsDir::new();
    let alimtalk = provider(&secrets, &fake, SENDER_KEY, &[]);
    let mut m = order_shipped("+82 10-1234-5678");
    m.data.insert(
        "buttons".into(),
        json!([{"ordering": 1, "type": "WL", "name": "배송 조회", "linkMo": "https://ump.example/t/1234"}]),
    );

    let outcome = alimtalk.send(&m).await;
    assert!(
        matches!(&outcome, Outcome::Sent { provider_message_id: Some(id) } if id.contains("alimtalk")),
        "{outcome:?}"
    );
    let request = &fake.accepted()[0];
    assert_eq!(request["senderKey"], SENDER_KEY);
    assert_eq!(request["templateCode"], "ORDER_SHIPPED");
    let recipient = &request["recipientList"][0];
    assert_eq!(recipient["recipientNo"], "01012345678");
    assert_eq!(
        recipient["templateParameter"],
        json!({"name": "김민수", "orderNo": "1234"})
    );
    assert_eq!(recipient["buttons"][0]["name"], "배송 조회");
    // UMP's fallback decides about SMS; NHN's own resend is explicitly off.
    assert_eq!(recipient["resendParameter"], json!({"isResend": false}));
}

#[tokio::test]
async fn the_template_setting_is_the_default_and_resend_can_be_on() {
    let fake = FakeAlimtalk::start().await;
    fake.template("WELCOME", &[]);
    let secrets = SecretsDir::new();
    let alimtalk = provider(
        &secrets,
        &fake,
        SENDER_KEY,
        &[
            ("templateCode", "WELCOME"),
            ("resend", "true"),
            ("resendSendNo", "0212345678"),
        ],
    );
    let long_text = "가".repeat(46);
    let outcome = alimtalk
        .send(&message(ChannelType::Alimtalk, "01012345678", &long_text))
        .await;
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    let request = &fake.accepted()[0];
    assert_eq!(request["templateCode"], "WELCOME");
    assert_eq!(
        request["recipientList"][0]["resendParameter"],
        json!({"isResend": true, "resendType": "LMS", "resendContent": long_text, "resendSendNo": "0212345678"})
    );
}

#[tokio::test]
async fn kakao_refusals_carry_a_fallback_prefix() {
    let fake = FakeAlimtalk::start().await;
    fake.template("ORDER_SHIPPED", &["name", "orderNo"]);
    fake.without_kakao("01099998888");
    let secrets = SecretsDir::new();
    let alimtalk = provider(&secrets, &fake, SENDER_KEY, &[]);

    let outcome = alimtalk.send(&order_shipped("01099998888")).await;
    assert_permanent(&outcome, "not_kakao_user: kakao 3018");
    assert!(wants_sms_fallback(reason(&outcome)));

    let mut unknown = order_shipped("01012345678");
    unknown.template = Some("NOT_APPROVED".into());
    let outcome = alimtalk.send(&unknown).await;
    assert_permanent(&outcome, "template_rejected: kakao 3015");
    assert!(wants_sms_fallback(reason(&outcome)));

    let mut missing_parameter = order_shipped("01012345678");
    missing_parameter.data.remove("orderNo");
    assert_permanent(
        &alimtalk.send(&missing_parameter).await,
        "template_rejected: kakao 3016",
    );

    let mut no_template = order_shipped("01012345678");
    no_template.template = None;
    assert_permanent(&alimtalk.send(&no_template).await, "template_rejected:");
}

#[tokio::test]
async fn outages_are_retryable() {
    let fake = FakeAlimtalk::start().await;
    fake.template("ORDER_SHIPPED", &["name", "orderNo"]);
    let secrets = SecretsDir::new();
    let alimtalk = provider(&secrets, &fake, SENDER_KEY, &[]);
    fake.script.push(Canned::Reply {
        status: 503,
        headers: vec![("retry-after", "5".into())],
        body: "maintenance".into(),
    });
    fake.script
        .push(super::fakes::alimtalk::header_failure(9999, "system error"));
    let m = order_shipped("01012345678");
    assert_retryable(
        &alimtalk.send(&m).await,
        Some(std::time::Duration::from_secs(5)),
    );
    assert_retryable(&alimtalk.send(&m).await, None);
    assert!(matches!(alimtalk.send(&m).await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn a_refused_sender_key_is_retryable_and_never_quoted() {
    let fake = FakeAlimtalk::start().await;
    fake.echo_credentials();
    let secrets = SecretsDir::new();
    let wrong = "stale-sender-key-7f7f7f7f";
    let alimtalk = provider(&secrets, &fake, wrong, &[]);
    let outcome = alimtalk.send(&order_shipped("01012345678")).await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(text.starts_with("account rejected: kakao 1003"), "{text}");
    assert!(!text.contains(wrong), "the sender key leaked: {text}");
}

#[tokio::test]
async fn messages_of_one_template_sent_together_share_requests_and_keep_their_own_outcomes() {
    let fake = FakeAlimtalk::start().await;
    fake.template("ORDER_SHIPPED", &["name", "orderNo"]);
    fake.template("WELCOME", &[]);
    fake.without_kakao("01000000007");
    let secrets = SecretsDir::new();
    let alimtalk = provider(
        &secrets,
        &fake,
        SENDER_KEY,
        &[("batchSize", "100"), ("batchLinger", "50ms")],
    );
    let messages: Vec<Outgoing> = (0..250)
        .map(|i| {
            let mut m = order_shipped(&format!("010{i:08}"));
            if i >= 240 {
                m.template = Some("WELCOME".into());
            }
            m
        })
        .collect();
    let outcomes = futures::future::join_all(messages.iter().map(|m| alimtalk.send(m))).await;

    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 7 {
            assert_permanent(outcome, "not_kakao_user: kakao 3018");
        } else {
            assert!(matches!(outcome, Outcome::Sent { .. }), "{i}: {outcome:?}");
        }
    }
    let mut requests: Vec<(String, usize)> = fake
        .accepted()
        .iter()
        .map(|r| {
            (
                r["templateCode"].as_str().unwrap_or_default().to_owned(),
                r["recipientList"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    requests.sort();
    let expected: Vec<(String, usize)> = [
        ("ORDER_SHIPPED", 40),
        ("ORDER_SHIPPED", 100),
        ("ORDER_SHIPPED", 100),
        ("WELCOME", 10),
    ]
    .iter()
    .map(|(t, n)| ((*t).to_owned(), *n))
    .collect();
    assert_eq!(requests, expected);
    // Each recipient with its own parameters.
    let recipients: std::collections::HashSet<String> = fake
        .accepted()
        .iter()
        .flat_map(|r| r["recipientList"].as_array().cloned().unwrap_or_default())
        .map(|r| r["recipientNo"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(recipients.len(), 250);
}

#[tokio::test]
async fn a_refused_shared_request_is_every_messages_retryable_outcome() {
    let fake = FakeAlimtalk::start().await;
    fake.template("ORDER_SHIPPED", &["name", "orderNo"]);
    let secrets = SecretsDir::new();
    let alimtalk = provider(&secrets, &fake, SENDER_KEY, &[("batchLinger", "50ms")]);
    fake.script.push(Canned::Reply {
        status: 503,
        headers: vec![("retry-after", "3".into())],
        body: "maintenance".into(),
    });
    let messages: Vec<Outgoing> = (0..5)
        .map(|i| order_shipped(&format!("010{i:08}")))
        .collect();
    let outcomes = futures::future::join_all(messages.iter().map(|m| alimtalk.send(m))).await;
    for outcome in &outcomes {
        assert_retryable(outcome, Some(std::time::Duration::from_secs(3)));
    }
    assert!(
        fake.accepted().is_empty(),
        "the refused request took nobody"
    );
}

//! The signed generic webhook.

use super::fakes::webhook::{FakeWebhook, SIGNING_SECRET};
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use serde_json::json;
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};

fn provider(secrets: &SecretsDir, url: &str, secret: &str) -> std::sync::Arc<dyn Provider> {
    secrets.secret("hook", &[("signingSecret", secret)]);
    ump_worker::providers::build(
        &spec(
            "hook",
            ProviderType::Webhook,
            Some("hook"),
            &[("url", url), ("timeout", "500ms")],
        ),
        &secrets.ctx(),
    )
    .expect("build webhook")
}

#[tokio::test]
async fn posts_the_message_signed_with_an_idempotency_key() {
    let fake = FakeWebhook::start().await;
    let secrets = SecretsDir::new();
    let hook = provider(&secrets, &fake.url(), SIGNING_SECRET);
    let mut m = message(ChannelType::Webhook, "ops-room", "배포가 끝났습니다");
    m.subject = Some("deploy".into());
    m.data.insert("version".into(), json!("1.2.3"));
    m.metadata.insert("team".into(), json!("platform"));

    let outcome = hook.send(&m).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("hook-1".into())
        }
    );
    assert_eq!(fake.refused(), 0);
    let delivery = &fake.deliveries()[0];
    assert_eq!(
        delivery.body,
        json!({
            "id": m.id.to_string(), "channel": "test", "to": "ops-room", "subject": "deploy",
            "text": "배포가 끝났습니다", "html": null, "data": {"version": "1.2.3"},
            "metadata": {"team": "platform"},
        })
    );
    assert_eq!(
        delivery.headers["idempotency-key"],
        m.id.to_string().as_str()
    );

    // A retry of the same message carries the same key, so the receiver can drop it.
    hook.send(&m).await;
    let deliveries = fake.deliveries();
    assert_eq!(
        deliveries[0].headers["idempotency-key"],
        deliveries[1].headers["idempotency-key"]
    );
}

#[tokio::test]
async fn answers_are_classified() {
    let fake = FakeWebhook::start().await;
    let secrets = SecretsDir::new();
    let hook = provider(&secrets, &fake.url(), SIGNING_SECRET);
    let m = message(ChannelType::Webhook, "x", "y");
    let plain = |status: u16| Canned::Reply {
        status,
        headers: vec![],
        body: format!("status {status}"),
    };
    fake.script.push(plain(400));
    fake.script.push(plain(410));
    fake.script.push(plain(408));
    fake.script
        .push(plain(429).with_header("retry-after", "60"));
    fake.script.push(plain(500));
    fake.script
        .push(plain(302).with_header("location", "http://127.0.0.1:1/elsewhere"));
    fake.script.push(Canned::Stall(Duration::from_secs(3)));

    assert_permanent(&hook.send(&m).await, "HTTP 400");
    assert_permanent(&hook.send(&m).await, "HTTP 410");
    assert_retryable(&hook.send(&m).await, None);
    assert_retryable(&hook.send(&m).await, Some(Duration::from_secs(60)));
    assert_retryable(&hook.send(&m).await, None);
    // Redirects are not followed (they would re-post the signed body elsewhere).
    let outcome = hook.send(&m).await;
    assert_retryable(&outcome, None);
    assert!(reason(&outcome).starts_with("HTTP 302"), "{outcome:?}");
    assert_retryable(&hook.send(&m).await, None);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_never_quoted() {
    let fake = FakeWebhook::start().await;
    let secrets = SecretsDir::new();
    let wrong = "not-the-shared-secret-123";
    let hook = provider(&secrets, &fake.url(), wrong);
    let outcome = hook.send(&message(ChannelType::Webhook, "x", "y")).await;
    // The receiver's 401 is its verdict on this request: permanent, as any 4xx.
    assert_permanent(&outcome, "HTTP 401");
    assert!(!reason(&outcome).contains(wrong));
    assert_eq!(fake.refused(), 1);
}

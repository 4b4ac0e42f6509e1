//! FCM HTTP v1 with service-account OAuth2.

use super::fakes::fcm::{FakeFcm, PROJECT, fcm_error};
use super::fakes::{SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use serde_json::json;
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};

const DEVICE: &str = "fcm-registration-token-AAAA:bbbb";

fn provider(secrets: &SecretsDir, fake: &FakeFcm, key_file: &str) -> std::sync::Arc<dyn Provider> {
    secrets.secret("fcm", &[("service-account.json", key_file)]);
    ump_worker::providers::build(
        &spec(
            "fcm",
            ProviderType::Fcm,
            Some("fcm"),
            &[("endpoint", &fake.endpoint())],
        ),
        &secrets.ctx(),
    )
    .expect("build fcm")
}

#[tokio::test]
async fn many_sends_share_one_access_token() {
    let fake = FakeFcm::start().await;
    let secrets = SecretsDir::new();
    let fcm = provider(&secrets, &fake, &fake.service_account_json());
    let mut push = message(ChannelType::Push, DEVICE, "배송이 시작되었습니다");
    push.subject = Some("주문 123".into());
    push.data.insert("orderId".into(), json!(123));
    push.data.insert("kind".into(), json!("shipping"));

    let outcomes = futures::future::join_all((0..20).map(|_| fcm.send(&push))).await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Outcome::Sent { provider_message_id: Some(name) }
                if name.starts_with(&format!("projects/{PROJECT}/messages/"))),
            "{outcome:?}"
        );
    }
    assert_eq!(fake.token_requests(), 1, "one token for all sends");
    let sent = fake.sent();
    assert_eq!(sent.len(), 20);
    // The message id collapses repeats on every platform (see the provider's docs).
    let collapse = push.id.0.simple().to_string();
    assert_eq!(
        sent[0]["message"],
        json!({
            "token": DEVICE,
            "notification": {"title": "주문 123", "body": "배송이 시작되었습니다"},
            "data": {"orderId": "123", "kind": "shipping"},
            "android": {"collapse_key": collapse, "notification": {"tag": collapse}},
            "apns": {"headers": {"apns-collapse-id": collapse}},
            "webpush": {"headers": {"Topic": collapse}},
        })
    );
}

#[tokio::test]
async fn the_token_is_refreshed_before_it_expires() {
    let fake = FakeFcm::start().await;
    // A 2 s token is replaced after 1 s (half its lifetime, for tokens this short).
    fake.set_token_lifetime(2);
    let secrets = SecretsDir::new();
    let fcm = provider(&secrets, &fake, &fake.service_account_json());
    let push = message(ChannelType::Push, DEVICE, "hi");
    assert!(matches!(fcm.send(&push).await, Outcome::Sent { .. }));
    assert!(matches!(fcm.send(&push).await, Outcome::Sent { .. }));
    assert_eq!(fake.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(fcm.send(&push).await, Outcome::Sent { .. }));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_replaced() {
    let fake = FakeFcm::start().await;
    let secrets = SecretsDir::new();
    let fcm = provider(&secrets, &fake, &fake.service_account_json());
    let push = message(ChannelType::Push, DEVICE, "hi");
    assert!(matches!(fcm.send(&push).await, Outcome::Sent { .. }));
    fake.revoke_tokens();
    let outcome = fcm.send(&push).await;
    assert_retryable(&outcome, None);
    assert!(reason(&outcome).contains("UNAUTHENTICATED"), "{outcome:?}");
    assert!(matches!(fcm.send(&push).await, Outcome::Sent { .. }));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn unregistered_devices_are_permanent_and_throttling_is_retryable() {
    let fake = FakeFcm::start().await;
    let secrets = SecretsDir::new();
    let fcm = provider(&secrets, &fake, &fake.service_account_json());
    fake.unregister("stale-device");
    assert_permanent(
        &fcm.send(&message(ChannelType::Push, "stale-device", "hi"))
            .await,
        "unregistered device token",
    );

    let push = message(ChannelType::Push, DEVICE, "hi");
    fake.script.push(
        fcm_error(
            429,
            "RESOURCE_EXHAUSTED",
            Some("QUOTA_EXCEEDED"),
            "Quota exceeded",
        )
        .with_header("retry-after", "30"),
    );
    fake.script.push(fcm_error(
        503,
        "UNAVAILABLE",
        Some("UNAVAILABLE"),
        "The service is unavailable",
    ));
    fake.script.push(fcm_error(
        400,
        "INVALID_ARGUMENT",
        Some("INVALID_ARGUMENT"),
        "Invalid registration token",
    ));
    assert_retryable(&fcm.send(&push).await, Some(Duration::from_secs(30)));
    assert_retryable(&fcm.send(&push).await, None);
    assert_permanent(&fcm.send(&push).await, "fcm INVALID_ARGUMENT");
}

#[tokio::test]
async fn a_refused_service_account_is_retryable_and_its_key_never_quoted() {
    let fake = FakeFcm::start().await;
    // A key the token endpoint does not know: its signature cannot verify.
    let other_key = OTHER_KEY_PEM;
    let mut account: serde_json::Value =
        serde_json::from_str(&fake.service_account_json()).expect("json");
    account["private_key"] = json!(other_key);
    let secrets = SecretsDir::new();
    let fcm = provider(&secrets, &fake, &account.to_string());
    let outcome = fcm.send(&message(ChannelType::Push, DEVICE, "hi")).await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(text.starts_with("oauth token: HTTP 400"), "{text}");
    for line in other_key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material leaked: {text}");
    }
    assert!(fake.sent().is_empty());
}

/// A second test-only RSA key, which the fake token endpoint does not know.
const OTHER_KEY_PEM: &str = include_str!("../fakes/fcm-other-key.pem");

//! APNs over HTTP/2 + TLS with ES256 provider tokens.

use super::fakes::apns::{FakeApns, KEY_ID, TEAM_ID, TOPIC};
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use axum::http::Version;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};

const DEVICE: &str = "7c1f0a8b3e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

struct Setup {
    fake: FakeApns,
    secrets: SecretsDir,
    ca_file: PathBuf,
}

async fn setup() -> Setup {
    let fake = FakeApns::start().await;
    let secrets = SecretsDir::new();
    let ca_file = secrets.path().join("apns-ca.pem");
    std::fs::write(&ca_file, &fake.ca_pem).expect("write CA");
    Setup {
        fake,
        secrets,
        ca_file,
    }
}

fn provider(
    setup: &Setup,
    key_pem: &str,
    extra: &[(&str, &str)],
    trust_ca: bool,
) -> std::sync::Arc<dyn Provider> {
    setup.secrets.secret("apns", &[("authKey.p8", key_pem)]);
    let endpoint = setup.fake.endpoint();
    let ca = setup.ca_file.to_string_lossy().into_owned();
    let mut settings = vec![
        ("endpoint", endpoint.as_str()),
        ("teamId", TEAM_ID),
        ("keyId", KEY_ID),
        ("topic", TOPIC),
    ];
    if trust_ca {
        settings.push(("caFile", ca.as_str()));
    }
    settings.extend_from_slice(extra);
    ump_worker::providers::build(
        &spec("apns", ProviderType::Apns, Some("apns"), &settings),
        &setup.secrets.ctx(),
    )
    .expect("build apns")
}

#[tokio::test]
async fn pushes_over_http2_with_the_documented_headers() {
    let setup = setup().await;
    let apns = provider(&setup, &setup.fake.auth_key_pem, &[], true);
    let mut push = message(ChannelType::Push, DEVICE, "결제가 완료되었습니다");
    push.subject = Some("UMP".into());
    push.data.insert("orderId".into(), json!(42));

    let outcome = apns.send(&push).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some(push.id.to_string())
        }
    );
    let pushes = setup.fake.pushes();
    assert_eq!(pushes.len(), 1);
    let seen = &pushes[0];
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.device, DEVICE);
    assert_eq!(seen.headers["apns-topic"], TOPIC);
    assert_eq!(seen.headers["apns-push-type"], "alert");
    assert_eq!(seen.headers["apns-priority"], "10");
    assert_eq!(seen.headers["apns-id"], push.id.to_string().as_str());
    assert_eq!(
        seen.headers["apns-collapse-id"],
        push.id.to_string().as_str()
    );
    assert_eq!(
        seen.payload,
        json!({"aps": {"alert": {"title": "UMP", "body": "결제가 완료되었습니다"}}, "orderId": 42})
    );
}

#[tokio::test]
async fn the_provider_token_is_reused_within_its_lifetime() {
    let setup = setup().await;
    let apns = provider(&setup, &setup.fake.auth_key_pem, &[], true);
    let push = message(ChannelType::Push, DEVICE, "hi");
    for _ in 0..5 {
        assert!(matches!(apns.send(&push).await, Outcome::Sent { .. }));
    }
    let jwts = setup.fake.jwts_seen();
    assert_eq!(jwts.len(), 5);
    assert!(jwts.iter().all(|j| j == &jwts[0]), "one token for all");

    // With a 1 s lifetime, the next push a second later carries a new token.
    let short = provider(
        &setup,
        &setup.fake.auth_key_pem,
        &[("tokenLifetime", "1s")],
        true,
    );
    assert!(matches!(short.send(&push).await, Outcome::Sent { .. }));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(short.send(&push).await, Outcome::Sent { .. }));
    let jwts = setup.fake.jwts_seen();
    assert_ne!(jwts[5], jwts[6]);
}

#[tokio::test]
async fn an_expired_provider_token_is_replaced() {
    let setup = setup().await;
    let apns = provider(&setup, &setup.fake.auth_key_pem, &[], true);
    let push = message(ChannelType::Push, DEVICE, "hi");
    assert!(matches!(apns.send(&push).await, Outcome::Sent { .. }));
    setup.fake.expire(&setup.fake.jwts_seen()[0]);
    let outcome = apns.send(&push).await;
    assert_retryable(&outcome, None);
    assert!(
        reason(&outcome).contains("ExpiredProviderToken"),
        "{outcome:?}"
    );
    // ES256 tokens signed within the same second are identical; let `iat` move on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(apns.send(&push).await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn device_and_throttling_answers_are_classified() {
    let setup = setup().await;
    let apns = provider(&setup, &setup.fake.auth_key_pem, &[], true);
    setup.fake.unregister(DEVICE);
    assert_permanent(
        &apns.send(&message(ChannelType::Push, DEVICE, "hi")).await,
        "unregistered device token",
    );
    assert_permanent(
        &apns.send(&message(ChannelType::Push, "abcd", "hi")).await,
        "bad device token (BadDeviceToken)",
    );
    assert_permanent(
        &apns
            .send(&message(ChannelType::Push, "../../admin", "hi"))
            .await,
        "bad device token",
    );

    let push = message(ChannelType::Push, &DEVICE.replace('7', "8"), "hi");
    setup.fake.script.push(
        Canned::json(429, json!({"reason": "TooManyRequests"})).with_header("retry-after", "12"),
    );
    setup
        .fake
        .script
        .push(Canned::json(503, json!({"reason": "ServiceUnavailable"})));
    setup
        .fake
        .script
        .push(Canned::json(413, json!({"reason": "PayloadTooLarge"})));
    assert_retryable(&apns.send(&push).await, Some(Duration::from_secs(12)));
    assert_retryable(&apns.send(&push).await, None);
    assert_permanent(&apns.send(&push).await, "HTTP 413: apns PayloadTooLarge");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let setup = setup().await;
    // Without caFile only the system roots are trusted, and they never signed the fake.
    let apns = provider(&setup, &setup.fake.auth_key_pem, &[], false);
    let outcome = apns.send(&message(ChannelType::Push, DEVICE, "hi")).await;
    assert_retryable(&outcome, None);
    assert!(setup.fake.pushes().is_empty());
}

#[tokio::test]
async fn a_foreign_signing_key_is_retryable_and_never_quoted() {
    let setup = setup().await;
    let foreign = rcgen::KeyPair::generate()
        .expect("P-256 key")
        .serialize_pem();
    let apns = provider(&setup, &foreign, &[], true);
    let outcome = apns.send(&message(ChannelType::Push, DEVICE, "hi")).await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(text.contains("InvalidProviderToken"), "{text}");
    for line in foreign.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material leaked: {text}");
    }
}

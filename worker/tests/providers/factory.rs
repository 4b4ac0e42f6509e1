//! `build` and `build_failover`: provider specs in, working providers (or clear errors) out.

use super::fakes::nhn_sms::{self, FakeNhnSms};
use super::fakes::twilio::{self, FakeTwilio};
use super::fakes::{Canned, SecretsDir, message, spec};
use std::time::Duration;
use ump_core::provider::{Outcome, Provider};
use ump_core::resources::{ChannelType, ProviderType};
use ump_worker::providers::failover::CircuitState;
use ump_worker::providers::{build, build_failover};

#[tokio::test]
async fn every_provider_type_builds_from_its_spec() {
    let secrets = SecretsDir::new();
    secrets.secret(
        "fcm",
        &[(
            "service-account.json",
            &serde_json::json!({
                "client_email": "a@b.iam.gserviceaccount.com",
                "private_key": super::fakes::fcm::PRIVATE_KEY_PEM,
                "project_id": "p",
                "token_uri": "http://127.0.0.1:9/token",
            })
            .to_string(),
        )],
    );
    secrets.secret(
        "apns",
        &[(
            "authKey.p8",
            &rcgen::KeyPair::generate().expect("key").serialize_pem(),
        )],
    );
    secrets.secret(
        "nhn",
        &[("appKey", "k"), ("secretKey", "s"), ("senderKey", "sk")],
    );
    secrets.secret("twilio", &[("accountSid", "AC1"), ("authToken", "t")]);
    secrets.secret("hook", &[("signingSecret", "s")]);
    let local = "http://127.0.0.1:9";
    let specs = [
        spec(
            "mail",
            ProviderType::Smtp,
            None,
            &[("host", "127.0.0.1"), ("from", "UMP <noreply@ump.test>")],
        ),
        spec(
            "twilio",
            ProviderType::Twilio,
            Some("twilio"),
            &[("endpoint", local), ("from", "+15005550006")],
        ),
        spec(
            "nhn-sms",
            ProviderType::NhnSms,
            Some("nhn"),
            &[("endpoint", local), ("sendNo", "0212345678")],
        ),
        spec(
            "fcm",
            ProviderType::Fcm,
            Some("fcm"),
            &[("endpoint", local)],
        ),
        spec(
            "apns",
            ProviderType::Apns,
            Some("apns"),
            &[
                ("endpoint", local),
                ("teamId", "T"),
                ("keyId", "K"),
                ("topic", "a.b"),
            ],
        ),
        spec(
            "alimtalk",
            ProviderType::NhnAlimtalk,
            Some("nhn"),
            &[("endpoint", local)],
        ),
        spec(
            "friendtalk",
            ProviderType::NhnFriendtalk,
            Some("nhn"),
            &[("endpoint", local)],
        ),
        spec(
            "hook",
            ProviderType::Webhook,
            Some("hook"),
            &[("url", "http://127.0.0.1:9/hook")],
        ),
    ];
    for spec in &specs {
        let provider = build(spec, &secrets.ctx()).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        assert_eq!(provider.name(), spec.name);
    }
}

#[tokio::test]
async fn missing_credentials_and_bad_settings_are_named() {
    let secrets = SecretsDir::new();
    secrets.secret("twilio", &[("accountSid", "AC1")]);
    let error = |spec| {
        build(&spec, &secrets.ctx())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    let text = error(spec(
        "t",
        ProviderType::Twilio,
        Some("twilio"),
        &[("from", "+1500")],
    ));
    assert!(text.contains("\"authToken\" is missing"), "{text}");
    let text = error(spec("t", ProviderType::Twilio, None, &[("from", "+1500")]));
    assert!(text.contains("needs a secretRef"), "{text}");
    let text = error(spec(
        "t",
        ProviderType::Twilio,
        Some("twilio"),
        &[("from", "+1500"), ("timeout", "soon")],
    ));
    assert!(text.contains("setting \"timeout\""), "{text}");
    let text = error(spec(
        "m",
        ProviderType::Smtp,
        None,
        &[("host", "h"), ("from", "not an address")],
    ));
    assert!(text.contains("setting \"from\""), "{text}");
    let text = error(spec(
        "m",
        ProviderType::Smtp,
        None,
        &[("host", "h"), ("from", "a@b.test"), ("tls", "maybe")],
    ));
    assert!(text.contains("setting \"tls\""), "{text}");
}

/// Twilio first, NHN second: after two 503s in a row Twilio's circuit opens and NHN takes the
/// traffic; a second later a probe finds Twilio healthy and the traffic goes back.
#[tokio::test]
async fn a_channel_with_two_providers_fails_over_and_back() {
    let twilio_fake = FakeTwilio::start().await;
    let nhn_fake = FakeNhnSms::start().await;
    let secrets = SecretsDir::new();
    secrets.secret(
        "twilio",
        &[
            ("accountSid", twilio::ACCOUNT_SID),
            ("authToken", twilio::AUTH_TOKEN),
        ],
    );
    secrets.secret(
        "nhn",
        &[
            ("appKey", nhn_sms::APP_KEY),
            ("secretKey", nhn_sms::SECRET_KEY),
        ],
    );
    let twilio_endpoint = twilio_fake.endpoint();
    let nhn_endpoint = nhn_fake.endpoint();
    let specs = [
        spec(
            "twilio",
            ProviderType::Twilio,
            Some("twilio"),
            &[
                ("endpoint", &twilio_endpoint),
                ("from", "+15005550006"),
                ("circuitFailureThreshold", "2"),
                ("circuitCoolDown", "3s"),
            ],
        ),
        spec(
            "nhn",
            ProviderType::NhnSms,
            Some("nhn"),
            &[("endpoint", &nhn_endpoint), ("sendNo", "0212345678")],
        ),
    ];
    let channel = build_failover("sms", &specs, &secrets.ctx()).expect("build failover");
    assert_eq!(channel.name(), "sms", "named after the channel");
    let states = |channel: &ump_worker::providers::failover::FailoverProvider| {
        channel
            .circuits()
            .into_iter()
            .map(|(_, state)| state)
            .collect::<Vec<_>>()
    };
    let sms = message(ChannelType::Sms, "+821012345678", "hi");

    for _ in 0..2 {
        twilio_fake.script.push(Canned::Reply {
            status: 503,
            headers: vec![],
            body: String::new(),
        });
        assert!(matches!(
            channel.send(&sms).await,
            Outcome::Retryable { .. }
        ));
    }
    for _ in 0..3 {
        assert!(matches!(channel.send(&sms).await, Outcome::Sent { .. }));
    }
    assert_eq!(
        (twilio_fake.sent().len(), nhn_fake.accepted().len()),
        (0, 3)
    );
    assert_eq!(states(&channel), [CircuitState::Open, CircuitState::Closed]);

    // The cool-down (3 s: room for the sends above on a slow machine) runs from the opening.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for _ in 0..2 {
        assert!(matches!(channel.send(&sms).await, Outcome::Sent { .. }));
    }
    assert_eq!(
        (twilio_fake.sent().len(), nhn_fake.accepted().len()),
        (2, 3)
    );
    assert_eq!(
        states(&channel),
        [CircuitState::Closed, CircuitState::Closed]
    );
}

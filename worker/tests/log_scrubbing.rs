//! No credential in any log line: a stack whose channels use every provider (SMTP on the real
//! Mailpit with AUTH, Twilio, NHN Cloud SMS, FCM, APNs, NHN AlimTalk, webhook; fakes for the
//! SaaS APIs), the worker at `RUST_LOG=debug` and the API's own log captured at debug, driven
//! through success and failure paths (retries, refusals, a provider that echoes rejected
//! credentials, AlimTalk → SMS fallback, forged and genuine delivery receipts). Then every
//! configured secret, in the forms it travels in (raw, Basic-auth and SMTP AUTH base64, PEM key
//! lines, the access and provider tokens minted from the keys), is looked for in both logs and in
//! every message's timeline; and every recipient, which the logs may only name masked.

mod fakes;
mod stack;

use base64::Engine;
use fakes::alimtalk::{self, FakeAlimtalk};
use fakes::apns::{self, FakeApns};
use fakes::fcm::FakeFcm;
use fakes::nhn_sms::{self, FakeNhnSms};
use fakes::twilio::{self, FakeTwilio};
use fakes::webhook::{self, FakeWebhook};
use fakes::{Canned, SecretsDir};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use stack::{Stack, StackOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ump_core::testing::infra;

const WRONG_TWILIO_TOKEN: &str = "wrong-twilio-token-f00d";
const NHN_WEBHOOK_SIGNATURE: &str = "nhn-console-signature-b33f";
const TWILIO_CALLBACK: &str = "https://ump.example.com/v1/receipts/sms/twilio";
const FCM_DEVICE: &str = "fcm-device-token-0001:ok";
const FCM_GONE: &str = "fcm-device-token-0002:gone";
const APNS_DEVICE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const APNS_GONE: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// The API's log (it runs in this process), at debug, as text.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        fakes::lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&fakes::lock(&self.0)).into_owned()
    }
}

const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: quick, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 2, initialBackoff: 200ms, maxBackoff: 400ms}
  dedupe: {key: None}
---
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: kakao, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 2, initialBackoff: 200ms, maxBackoff: 400ms}
  dedupe: {key: None}
  fallback: {channel: sms}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: email, namespace: NAMESPACE}
spec:
  type: email
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: mailpit
      type: smtp
      secretRef: {name: smtp}
      settings: {host: "SMTP_HOST", port: "SMTP_PORT", from: "UMP <noreply@ump.test>", caFile: "SMTP_CA"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: twilio
      type: twilio
      secretRef: {name: twilio}
      settings: {endpoint: "TWILIO_URL", from: "+15005550006", statusCallback: "TWILIO_CALLBACK"}
    - name: nhn
      type: nhn-sms
      secretRef: {name: nhn-sms}
      settings: {endpoint: "NHN_URL", sendNo: "0212345678"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms-nhn, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: nhn
      type: nhn-sms
      secretRef: {name: nhn-sms}
      settings: {endpoint: "NHN_URL", sendNo: "0212345678"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms-misconfigured, namespace: NAMESPACE}
spec:
  type: sms
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: twilio-wrong
      type: twilio
      secretRef: {name: twilio-wrong}
      settings: {endpoint: "TWILIO_URL", from: "+15005550006"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: fcm, namespace: NAMESPACE}
spec:
  type: push
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: fcm
      type: fcm
      secretRef: {name: fcm}
      settings: {endpoint: "FCM_URL"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: apns, namespace: NAMESPACE}
spec:
  type: push
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: apns
      type: apns
      secretRef: {name: apns}
      settings: {endpoint: "APNS_URL", teamId: "APNS_TEAM", keyId: "APNS_KEY_ID", topic: "APNS_TOPIC", caFile: "APNS_CA"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: alimtalk, namespace: NAMESPACE}
spec:
  type: alimtalk
  policyRef: kakao
  topic: {partitions: 1}
  providers:
    - name: kakao
      type: nhn-alimtalk
      secretRef: {name: alimtalk}
      settings: {endpoint: "ALIMTALK_URL"}
  templates:
    - {name: notice, code: NOTICE, text: "{{ name }}님, 새 알림이 있습니다"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: hooks, namespace: NAMESPACE}
spec:
  type: webhook
  policyRef: quick
  topic: {partitions: 1}
  providers:
    - name: crm
      type: webhook
      secretRef: {name: crm}
      settings: {url: "WEBHOOK_URL"}
"#;

/// Every form a secret could leak in, with a name for the failure message.
fn needles(secrets: &[(&str, String)]) -> Vec<(String, String)> {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let mut needles = Vec::new();
    for (name, value) in secrets {
        for line in value.lines().map(str::trim) {
            // PEM bodies: each base64 line of the key (headers and short lines say nothing).
            if line.starts_with("-----") || line.len() < 8 {
                continue;
            }
            needles.push((format!("{name} (line)"), line.to_owned()));
            if !value.contains('\n') {
                needles.push((format!("{name} (base64)"), b64(line)));
            }
        }
    }
    needles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_appears_in_any_log_line() {
    let api_log = CapturedLog::default();
    let writer = api_log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mailpit = infra().smtp();
    let twilio = FakeTwilio::start().await;
    twilio.echo_credentials();
    let nhn = FakeNhnSms::start().await;
    let fcm = FakeFcm::start().await;
    fcm.unregister(FCM_GONE);
    let apns = FakeApns::start().await;
    apns.unregister(APNS_GONE);
    let kakao = FakeAlimtalk::start().await;
    kakao.echo_credentials();
    kakao.template("NOTICE", &["name"]);
    kakao.without_kakao("01099990000");
    let hook = FakeWebhook::start().await;

    let secrets = SecretsDir::new();
    let fcm_key = fcm.service_account_json();
    secrets
        .secret(
            "smtp",
            &[("username", &mailpit.user), ("password", &mailpit.password)],
        )
        .secret("twilio", twilio::SECRET)
        .secret(
            "twilio-wrong",
            &[
                ("accountSid", twilio::ACCOUNT_SID),
                ("authToken", WRONG_TWILIO_TOKEN),
            ],
        )
        .secret(
            "nhn-sms",
            &[
                ("appKey", nhn_sms::APP_KEY),
                ("secretKey", nhn_sms::SECRET_KEY),
                ("webhookSignature", NHN_WEBHOOK_SIGNATURE),
            ],
        )
        .secret("fcm", &[("service-account.json", &fcm_key)])
        .secret("apns", &[("authKey.p8", &apns.auth_key_pem)])
        .secret(
            "alimtalk",
            &[
                ("appKey", alimtalk::APP_KEY),
                ("secretKey", alimtalk::SECRET_KEY),
                ("senderKey", alimtalk::SENDER_KEY),
            ],
        )
        .secret("crm", &[("signingSecret", webhook::SIGNING_SECRET)]);
    let apns_ca = secrets.path().join("apns-ca.pem");
    std::fs::write(&apns_ca, &apns.ca_pem).expect("write APNs CA");
    let channels = CHANNELS
        .replace("SMTP_HOST", &mailpit.host)
        .replace("SMTP_PORT", &mailpit.port.to_string())
        .replace("SMTP_CA", &mailpit.tls_cert)
        .replace("TWILIO_URL", &twilio.endpoint())
        .replace("TWILIO_CALLBACK", TWILIO_CALLBACK)
        .replace("NHN_URL", &nhn.endpoint())
        .replace("FCM_URL", &fcm.endpoint())
        .replace("APNS_URL", &apns.endpoint())
        .replace("APNS_TEAM", apns::TEAM_ID)
        .replace("APNS_KEY_ID", apns::KEY_ID)
        .replace("APNS_TOPIC", apns::TOPIC)
        .replace("APNS_CA", &apns_ca.to_string_lossy())
        .replace("ALIMTALK_URL", &kakao.endpoint())
        .replace("WEBHOOK_URL", &hook.url());
    let mut stack = Stack::start_opts(
        &channels,
        StackOptions {
            secrets_dir: Some(secrets.path().to_owned()),
            worker_log_level: "debug",
            ..StackOptions::default()
        },
    )
    .await;

    // Failure paths the providers must report without quoting what they were given.
    nhn.script.push(Canned::json(
        500,
        json!({"header": {"isSuccessful": false, "resultCode": -9999, "resultMessage": "System error."}}),
    ));
    hook.script
        .push(Canned::json(500, json!({"error": "busy"})));
    let sends = [
        (
            json!({"channel": "email", "to": "kim@example.com", "subject": "로그 점검", "body": "안녕하세요"}),
            "sent",
        ),
        (
            json!({"channel": "sms", "to": "+821012345678", "body": "twilio ok"}),
            "sent",
        ),
        (
            json!({"channel": "sms-nhn", "to": "+821012345679", "body": "nhn after a 500"}),
            "sent",
        ),
        (
            json!({"channel": "sms-misconfigured", "to": "+821012345670", "body": "refused credentials"}),
            "dead_lettered",
        ),
        (
            json!({"channel": "fcm", "to": FCM_DEVICE, "subject": "UMP", "body": "push ok"}),
            "sent",
        ),
        (
            json!({"channel": "fcm", "to": FCM_GONE, "body": "unregistered"}),
            "failed",
        ),
        (
            json!({"channel": "apns", "to": APNS_DEVICE, "subject": "UMP", "body": "push ok"}),
            "sent",
        ),
        (
            json!({"channel": "apns", "to": APNS_GONE, "body": "unregistered"}),
            "failed",
        ),
        (
            json!({"channel": "alimtalk", "to": "+821012345671", "template": "notice", "data": {"name": "김민수"}}),
            "sent",
        ),
        (
            json!({"channel": "alimtalk", "to": "+821099990000", "template": "notice", "data": {"name": "이서연"}}),
            "sent",
        ),
        (
            json!({"channel": "hooks", "to": "customer-42", "body": "webhook after a 500"}),
            "sent",
        ),
    ];
    let mut ids = Vec::new();
    for (body, _) in &sends {
        let (status, answer) = stack.post("/v1/messages", body).await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["id"].as_str().expect("id").to_owned());
    }
    let mut views = Vec::new();
    for (id, (body, expected)) in ids.iter().zip(&sends) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, view) = stack.get(&format!("/v1/messages/{id}")).await;
            if view["status"] == *expected {
                views.push(view);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{body} never became {expected}: {view}\n{}",
                stack.worker_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let fallback = &views[9];
    assert_eq!(
        fallback["provider"], "twilio",
        "the AlimTalk refusal went out by SMS"
    );

    // Delivery receipts, genuine and forged.
    let twilio_sid = views[1]["provider_message_id"].as_str().expect("SID");
    let params: Vec<(String, String)> =
        [("MessageSid", twilio_sid), ("MessageStatus", "delivered")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let good = ump_api::receipts::twilio_signature(twilio::AUTH_TOKEN, TWILIO_CALLBACK, &params);
    for signature in [good.as_str(), "Zm9yZ2VkIHNpZ25hdHVyZQ=="] {
        stack
            .http
            .post(format!("{}/v1/receipts/sms/twilio", stack.api))
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await
            .expect("POST twilio receipt");
    }
    let request_id = views[2]["provider_message_id"].as_str().expect("requestId");
    let result = json!({"hooksId": "h", "productName": "SMS", "appKey": nhn_sms::APP_KEY,
        "event": "MESSAGE_RESULT_UPDATE", "hooks": [{"requestId": request_id, "resultCode": "1000"}]});
    for signature in [NHN_WEBHOOK_SIGNATURE, "a-guess"] {
        stack
            .http
            .post(format!("{}/v1/receipts/sms-nhn/nhn", stack.api))
            .header("X-Toast-Webhook-Signature", signature)
            .json(&result)
            .send()
            .await
            .expect("POST nhn receipt");
    }
    let ack = json!({"id": ids[10], "status": "delivered"}).to_string();
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(webhook::SIGNING_SECRET.as_bytes())
            .expect("HMAC key");
    mac.update(ack.as_bytes());
    let good = format!("sha256={}", hex_string(&mac.finalize().into_bytes()));
    for signature in [good.as_str(), "sha256=00"] {
        stack
            .http
            .post(format!("{}/v1/receipts/hooks/crm", stack.api))
            .header("X-UMP-Signature", signature)
            .header("content-type", "application/json")
            .body(ack.clone())
            .send()
            .await
            .expect("POST webhook ack");
    }
    for (index, expected) in [(1, "delivered"), (2, "delivered"), (10, "delivered")] {
        let (_, view) = stack.get(&format!("/v1/messages/{}", ids[index])).await;
        assert_eq!(view["status"], expected, "{view}");
    }
    // The timelines as the API shows them, failure details included.
    let mut timelines = String::new();
    for id in &ids {
        timelines.push_str(&stack.get(&format!("/v1/messages/{id}")).await.1.to_string());
        timelines.push('\n');
    }
    stack.stop_worker();
    let worker_log = stack.worker_log();
    let api_log = api_log.text();

    // The logs are real debug logs of the paths taken, not empty files.
    assert!(
        worker_log.lines().filter(|l| l.contains("DEBUG")).count() > 50,
        "the worker did not log at debug:\n{worker_log}"
    );
    assert!(api_log.contains("DEBUG"), "the API did not log at debug");
    assert!(
        timelines.contains("credentials rejected"),
        "the misconfigured provider's failure is in its timeline: {timelines}"
    );

    let mut secrets_to_find: Vec<(&str, String)> = vec![
        ("SMTP password", mailpit.password.clone()),
        ("Twilio auth token", twilio::AUTH_TOKEN.to_owned()),
        ("Twilio wrong auth token", WRONG_TWILIO_TOKEN.to_owned()),
        ("Twilio account SID", twilio::ACCOUNT_SID.to_owned()),
        (
            "Twilio Basic credentials",
            format!("{}:{}", twilio::ACCOUNT_SID, twilio::AUTH_TOKEN),
        ),
        (
            "Twilio wrong Basic credentials",
            format!("{}:{WRONG_TWILIO_TOKEN}", twilio::ACCOUNT_SID),
        ),
        (
            "SMTP AUTH PLAIN",
            format!("\0{}\0{}", mailpit.user, mailpit.password),
        ),
        ("NHN SMS app key", nhn_sms::APP_KEY.to_owned()),
        ("NHN SMS secret key", nhn_sms::SECRET_KEY.to_owned()),
        ("NHN webhook signature", NHN_WEBHOOK_SIGNATURE.to_owned()),
        ("AlimTalk app key", alimtalk::APP_KEY.to_owned()),
        ("AlimTalk secret key", alimtalk::SECRET_KEY.to_owned()),
        ("AlimTalk sender key", alimtalk::SENDER_KEY.to_owned()),
        ("webhook signing secret", webhook::SIGNING_SECRET.to_owned()),
        ("FCM private key", fakes::fcm::PRIVATE_KEY_PEM.to_owned()),
        ("APNs signing key", apns.auth_key_pem.clone()),
    ];
    for jwt in apns.jwts_seen() {
        secrets_to_find.push(("APNs provider token", jwt));
    }
    assert!(
        !apns.jwts_seen().is_empty(),
        "APNs saw no provider token: the push path did not run"
    );
    let needles = needles(&secrets_to_find);
    for (what, text) in [
        ("worker log", &worker_log),
        ("API log", &api_log),
        ("timelines", &timelines),
    ] {
        for (name, needle) in &needles {
            if let Some(line) = text.lines().find(|line| line.contains(needle.as_str())) {
                panic!("{name} appears in the {what}: {line}");
            }
        }
        // FCM access tokens are minted by the fake with this prefix.
        if let Some(line) = text.lines().find(|line| line.contains("ya29.fake-")) {
            panic!("an FCM access token appears in the {what}: {line}");
        }
    }
    // No recipient either: both logs name them masked (`+8210****5678`), never whole.
    for (body, _) in &sends {
        let to = body["to"].as_str().expect("to");
        for (what, text) in [("worker log", &worker_log), ("API log", &api_log)] {
            if let Some(line) = text.lines().find(|line| line.contains(to)) {
                panic!("recipient {to} appears in the {what}: {line}");
            }
            let masked = ump_core::pii::Masked(to).to_string();
            assert!(text.contains(&masked), "the {what} names {to} as {masked}");
        }
    }
    stack.finish().await;
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

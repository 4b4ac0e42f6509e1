//! Channel fallback and provider failover end to end, through the API and the worker process on
//! the real Kafka, Redis and MariaDB, with the providers talking to local fakes of NHN Cloud
//! AlimTalk, Twilio and NHN Cloud SMS; and delivery receipts for what they sent, through the
//! API's receipt endpoints.

mod fakes;
mod stack;

use fakes::alimtalk::{self, FakeAlimtalk};
use fakes::nhn_sms::{self, FakeNhnSms};
use fakes::twilio::{self, FakeTwilio};
use fakes::{Canned, SecretsDir};
use serde_json::{Value, json};
use stack::{Stack, StackOptions};
use std::time::Duration;
use ump_core::testing::metric_value;

const CALLBACK: &str = "https://ump.example.com/v1/receipts/sms/twilio";
const NHN_WEBHOOK_SIGNATURE: &str = "nhn-console-webhook-signature";

fn secrets() -> SecretsDir {
    let secrets = SecretsDir::new();
    secrets
        .secret(
            "alimtalk",
            &[
                ("appKey", alimtalk::APP_KEY),
                ("secretKey", alimtalk::SECRET_KEY),
                ("senderKey", alimtalk::SENDER_KEY),
            ],
        )
        .secret("twilio", twilio::SECRET)
        .secret(
            "nhn-sms",
            &[
                ("appKey", nhn_sms::APP_KEY),
                ("secretKey", nhn_sms::SECRET_KEY),
                ("webhookSignature", NHN_WEBHOOK_SIGNATURE),
            ],
        );
    secrets
}

async fn send(stack: &Stack, body: Value) -> String {
    let (status, answer) = stack.post("/v1/messages", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("id").to_owned()
}

async fn message(stack: &Stack, id: &str) -> Value {
    stack.get(&format!("/v1/messages/{id}")).await.1
}

/// Waits until message `id` is `status` (60 s at most), then returns it.
async fn wait_status(stack: &Stack, id: &str, status: &str) -> Value {
    stack.wait_status(id, status).await
}

/// The timeline as (status, detail) pairs.
fn timeline(message: &Value) -> Vec<(String, String)> {
    message["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap_or_default().to_owned(),
                e["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// POSTs a Twilio status callback, signed as Twilio signs it.
async fn twilio_callback(stack: &Stack, sid: &str, status: &str) -> u16 {
    let params: Vec<(String, String)> = [
        ("AccountSid", twilio::ACCOUNT_SID),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("To", "+821099990000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let signature = ump_api::receipts::twilio_signature(twilio::AUTH_TOKEN, CALLBACK, &params);
    stack
        .http
        .post(format!("{}/v1/receipts/sms/twilio", stack.api))
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await
        .expect("POST receipt")
        .status()
        .as_u16()
}

const FALLBACK_CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: kakao, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 3, initialBackoff: 200ms, maxBackoff: 1s}
  fallback: {channel: sms, text: "[UMP] {{ name }}님, 주문 {{ order }}번이 출발했습니다"}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: alimtalk, namespace: NAMESPACE}
spec:
  type: alimtalk
  topic: {partitions: 2}
  policyRef: kakao
  providers:
    - name: kakao
      type: nhn-alimtalk
      secretRef: {name: alimtalk}
      settings: {endpoint: "ALIMTALK_URL"}
  templates:
    - name: shipped
      code: SHIPPED_KO
      text: "{{ name }}님, 주문 {{ order }}번이 출발했습니다."
      locales:
        en: {code: SHIPPED_EN, text: "{{ name }}, order {{ order }} has shipped."}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 2}
  providers:
    - name: twilio
      type: twilio
      secretRef: {name: twilio}
      settings: {endpoint: "TWILIO_URL", from: "+15005550006", statusCallback: "CALLBACK"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_alimtalk_goes_out_as_sms_with_both_attempts_in_one_timeline() {
    let kakao = FakeAlimtalk::start().await;
    kakao.template("SHIPPED_KO", &["name", "order"]);
    kakao.template("SHIPPED_EN", &["name", "order"]);
    kakao.without_kakao("01099990000");
    let twilio = FakeTwilio::start().await;
    let secrets = secrets();
    let channels = FALLBACK_CHANNELS
        .replace("ALIMTALK_URL", &kakao.endpoint())
        .replace("TWILIO_URL", &twilio.endpoint())
        .replace("CALLBACK", CALLBACK);
    let stack = Stack::start_opts(
        &channels,
        StackOptions {
            secrets_dir: Some(secrets.path().to_owned()),
            ..StackOptions::default()
        },
    )
    .await;
    let shipped = |to: &str, locale: Option<&str>| {
        let mut body = json!({"channel": "alimtalk", "to": to, "template": "shipped",
            "data": {"name": "김민수", "order": 42}});
        if let Some(locale) = locale {
            body["locale"] = json!(locale);
        }
        body
    };

    // No KakaoTalk: AlimTalk refuses (3018), the message goes out by SMS with the fallback text.
    let refused = send(&stack, shipped("+821099990000", None)).await;
    // A KakaoTalk user in English: AlimTalk takes the English template; no SMS.
    let english = send(&stack, shipped("+821012345678", Some("en-US"))).await;

    let refused_view = wait_status(&stack, &refused, "sent").await;
    assert_eq!(refused_view["channel"], "alimtalk", "accepted on alimtalk");
    assert_eq!(
        refused_view["provider"], "twilio",
        "sent by the SMS provider"
    );
    assert!(
        refused_view["provider_message_id"]
            .as_str()
            .is_some_and(|sid| sid.starts_with("SM")),
        "{refused_view}"
    );
    let events = timeline(&refused_view);
    let statuses: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["accepted", "scheduled", "sent"], "{events:?}");
    assert!(
        events[1]
            .1
            .starts_with("attempt 1 failed for good (not_kakao_user: kakao 3018")
            && events[1].1.ends_with("falling back to channel sms"),
        "{events:?}"
    );
    assert_eq!(events[2].1, "sent on fallback channel sms (from alimtalk)");

    let english_view = wait_status(&stack, &english, "sent").await;
    assert_eq!(english_view["provider"], "kakao");
    let accepted = kakao.accepted();
    let codes: Vec<&str> = accepted
        .iter()
        .filter_map(|r| r["templateCode"].as_str())
        .collect();
    assert!(codes.contains(&"SHIPPED_EN"), "{codes:?}");

    // The same message again within the dedupe window: a duplicate, not a second SMS.
    let again = send(&stack, shipped("+821099990000", None)).await;
    let again_view = wait_status(&stack, &again, "duplicate").await;
    assert!(
        timeline(&again_view)
            .iter()
            .any(|(_, detail)| detail == &format!("duplicate of {refused}")),
        "{again_view}"
    );

    let sms = twilio.sent();
    assert_eq!(sms.len(), 1, "exactly one SMS: {sms:?}");
    assert_eq!(sms[0]["To"], "+821099990000");
    assert_eq!(sms[0]["Body"], "[UMP] 김민수님, 주문 42번이 출발했습니다");
    assert_eq!(sms[0]["StatusCallback"], CALLBACK);

    // Twilio's delivery receipt for the SMS lands in the AlimTalk message's timeline.
    let sid = refused_view["provider_message_id"].as_str().expect("sid");
    assert_eq!(twilio_callback(&stack, sid, "delivered").await, 200);
    let delivered = message(&stack, &refused).await;
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(
        timeline(&delivered).last().map(|(s, _)| s.as_str()),
        Some("delivered")
    );
    // A forged one for the other message changes nothing.
    let forged = stack
        .http
        .post(format!("{}/v1/receipts/sms/twilio", stack.api))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[("MessageSid", "SM1"), ("MessageStatus", "failed")])
        .send()
        .await
        .expect("POST receipt");
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(message(&stack, &english).await["status"], "sent");
    stack.finish().await;
}

/// The realtime path hands a refused message on like the bulk path: an AlimTalk message sent
/// with `"priority": "realtime"` to a recipient without KakaoTalk goes out once by SMS, its
/// timeline and dedupe as in the bulk case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_alimtalk_refusal_falls_back_to_sms_too() {
    let kakao = FakeAlimtalk::start().await;
    kakao.template("SHIPPED_KO", &["name", "order"]);
    kakao.without_kakao("01099990000");
    let twilio = FakeTwilio::start().await;
    let secrets = secrets();
    let channels = FALLBACK_CHANNELS
        .replace(
            "  policyRef: kakao\n",
            "  policyRef: kakao\n  realtime: {enabled: true}\n",
        )
        .replace("ALIMTALK_URL", &kakao.endpoint())
        .replace("TWILIO_URL", &twilio.endpoint())
        .replace("CALLBACK", CALLBACK);
    assert!(channels.contains("realtime: {enabled: true}"));
    let stack = Stack::start_opts(
        &channels,
        StackOptions {
            secrets_dir: Some(secrets.path().to_owned()),
            ..StackOptions::default()
        },
    )
    .await;
    let shipped = || {
        json!({"channel": "alimtalk", "to": "+821099990000", "template": "shipped",
            "data": {"name": "김민수", "order": 7}, "priority": "realtime"})
    };

    let refused = send(&stack, shipped()).await;
    let view = wait_status(&stack, &refused, "sent").await;
    assert_eq!(view["priority"], "realtime", "{view}");
    assert_eq!(view["channel"], "alimtalk");
    assert_eq!(
        view["provider"], "twilio",
        "sent by the SMS provider: {view}"
    );
    let events = timeline(&view);
    let statuses: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["accepted", "scheduled", "sent"], "{events:?}");
    assert!(
        events[1].1.ends_with("falling back to channel sms"),
        "{events:?}"
    );
    assert_eq!(events[2].1, "sent on fallback channel sms (from alimtalk)");

    let again = send(&stack, shipped()).await;
    wait_status(&stack, &again, "duplicate").await;
    let sms = twilio.sent();
    assert_eq!(sms.len(), 1, "exactly one SMS: {sms:?}");
    assert_eq!(sms[0]["Body"], "[UMP] 김민수님, 주문 7번이 출발했습니다");
    // One AlimTalk call for the recipient (refused for good: never retried), none for the duplicate.
    assert_eq!(kakao.accepted().len(), 1, "{:?}", kakao.accepted());
    stack.finish().await;
}

/// `ump_provider_circuit_open` of the `sms` channel's bulk path, from the worker's `/metrics`:
/// (twilio, nhn).
async fn circuit_open(stack: &Stack) -> (Option<f64>, Option<f64>) {
    let metrics = stack.worker_metrics().await;
    let open = |provider: &str| {
        metric_value(
            &metrics,
            "ump_provider_circuit_open",
            &[("channel", "sms"), ("provider", provider), ("path", "bulk")],
        )
    };
    (open("twilio"), open("nhn"))
}

const FAILOVER_CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: patient, namespace: NAMESPACE}
spec:
  retry: {maxAttempts: 6, initialBackoff: 200ms, maxBackoff: 400ms}
  dedupe: {key: None}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms, namespace: NAMESPACE}
spec:
  type: sms
  topic: {partitions: 1}
  policyRef: patient
  providers:
    - name: twilio
      type: twilio
      secretRef: {name: twilio}
      settings: {endpoint: "TWILIO_URL", from: "+15005550006", circuitFailureThreshold: "2", circuitCoolDown: "10s"}
    - name: nhn
      type: nhn-sms
      secretRef: {name: nhn-sms}
      settings: {endpoint: "NHN_URL", sendNo: "0212345678"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_fails_over_to_the_secondary_and_returns_to_the_primary() {
    let twilio = FakeTwilio::start().await;
    let nhn = FakeNhnSms::start().await;
    let secrets = secrets();
    let channels = FAILOVER_CHANNELS
        .replace("TWILIO_URL", &twilio.endpoint())
        .replace("NHN_URL", &nhn.endpoint());
    let stack = Stack::start_opts(
        &channels,
        StackOptions {
            secrets_dir: Some(secrets.path().to_owned()),
            ..StackOptions::default()
        },
    )
    .await;
    let sms =
        |n: u32| json!({"channel": "sms", "to": "+821012345678", "body": format!("주문 {n}")});

    let first = send(&stack, sms(1)).await;
    assert_eq!(
        wait_status(&stack, &first, "sent").await["provider"],
        "twilio"
    );

    // Twilio goes down for two requests: the threshold. The message's retry then takes the
    // route the open circuit allows.
    let outage = Canned::json(
        503,
        json!({"code": 20503, "message": "Service Unavailable", "status": 503}),
    );
    twilio.script.push(outage.clone());
    twilio.script.push(outage);
    let failed_over = send(&stack, sms(2)).await;
    let view = wait_status(&stack, &failed_over, "sent").await;
    // The circuit opened before this message went to NHN, so its cool-down (10 s: room for the
    // next message on a slow machine) is over by `opened_by` + 10 s.
    let opened_by = tokio::time::Instant::now();
    assert_eq!(view["provider"], "nhn", "{view}");
    let events = timeline(&view);
    let statuses: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        ["accepted", "scheduled", "scheduled", "sent"],
        "{events:?}"
    );
    assert!(events[1].1.contains("twilio 20503"), "{events:?}");
    // While the circuit is open, new messages go straight to the secondary.
    let during = send(&stack, sms(3)).await;
    let during_view = wait_status(&stack, &during, "sent").await;
    assert_eq!(during_view["provider"], "nhn");
    assert_eq!(timeline(&during_view).len(), 2, "no failed attempt first");
    // `/metrics` shows the open circuit.
    let open = circuit_open(&stack).await;
    assert_eq!(open, (Some(1.0), Some(0.0)), "twilio, nhn");

    // After the cool-down the primary gets a probe, succeeds, and takes the traffic back.
    tokio::time::sleep_until(opened_by + Duration::from_millis(10_500)).await;
    let back = send(&stack, sms(4)).await;
    assert_eq!(
        wait_status(&stack, &back, "sent").await["provider"],
        "twilio"
    );
    let after = send(&stack, sms(5)).await;
    assert_eq!(
        wait_status(&stack, &after, "sent").await["provider"],
        "twilio"
    );
    assert_eq!(twilio.sent().len(), 3, "first, back, after");
    assert_eq!(circuit_open(&stack).await, (Some(0.0), Some(0.0)));
    assert_eq!(nhn.accepted().len(), 2, "failed over, during");

    // NHN Cloud's result webhook reaches the message its member sent, by its request id.
    let request_id = during_view["provider_message_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    let result = json!({
        "hooksId": "h-1", "webhookConfigId": "cfg", "productName": "SMS", "appKey": nhn_sms::APP_KEY,
        "event": "MESSAGE_RESULT_UPDATE",
        "hooks": [{"hookId": "h-1-1", "requestId": request_id, "recipientSeq": 1,
                   "recipientNo": "01012345678", "msgStatus": "3", "resultCode": "1000",
                   "resultCodeName": "성공"}]
    });
    let post = |signature: &'static str| {
        stack
            .http
            .post(format!("{}/v1/receipts/sms/nhn", stack.api))
            .header("X-Toast-Webhook-Signature", signature)
            .json(&result)
            .send()
    };
    assert_eq!(post("a-guess").await.expect("POST").status().as_u16(), 403);
    assert_eq!(message(&stack, &during).await["status"], "sent");
    assert_eq!(
        post(NHN_WEBHOOK_SIGNATURE)
            .await
            .expect("POST")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(message(&stack, &during).await["status"], "delivered");
    stack.finish().await;
}

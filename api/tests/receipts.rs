//! Delivery receipts on the real MariaDB (and the API's real Kafka and Redis): signed Twilio
//! status callbacks, NHN Cloud result webhooks and webhook acknowledgements move `sent` messages
//! to `delivered` or `failed`; forged, unsigned and unknown ones are refused and change nothing.

use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use ump_api::cluster::{ChannelSource, ClusterSettings};
use ump_api::receipts::twilio_signature;
use ump_core::history::{BatchRecord, HistoryStore, Transition};
use ump_core::model::{Content, Envelope, MessageId, Priority, Status};
use ump_core::store::MySqlHistory;
use ump_core::testing::{TestDatabase, infra, unique_name};

const AUTH_TOKEN: &str = "twilio-auth-token-for-receipts";
const NHN_SIGNATURE: &str = "nhn-webhook-signature-string";
const SIGNING_SECRET: &str = "webhook-signing-secret";
const CALLBACK: &str = "https://ump.example.com/v1/receipts/sms/twilio";

const CHANNELS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  providers:
    - name: twilio
      type: twilio
      secretRef: {name: twilio}
      settings: {from: "+15005550006", statusCallback: "https://ump.example.com/v1/receipts/sms/twilio"}
    - name: nhn
      type: nhn-sms
      secretRef: {name: nhn}
      settings: {sendNo: "0212345678"}
    - {name: sandbox, type: sandbox}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: kakao}
spec:
  type: alimtalk
  providers:
    - name: alimtalk
      type: nhn-alimtalk
      secretRef: {name: nhn}
      settings: {templateCode: ORDER_SHIPPED}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: hooks}
spec:
  type: webhook
  providers:
    - name: crm
      type: webhook
      secretRef: {name: crm}
      settings: {url: "https://crm.example.com/ump"}
"#;

struct Api {
    url: String,
    http: reqwest::Client,
    history: MySqlHistory,
    db: TestDatabase,
    dir: std::path::PathBuf,
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

async fn start() -> Api {
    let db = TestDatabase::create().await;
    let dir = std::env::temp_dir().join(unique_name("ump-receipts"));
    write(&dir, "config/channels.yaml", CHANNELS);
    write(
        &dir,
        "secrets/twilio/accountSid",
        "AC0123456789abcdef0123456789abcdef",
    );
    write(&dir, "secrets/twilio/authToken", &format!("{AUTH_TOKEN}\n"));
    write(&dir, "secrets/nhn/webhookSignature", NHN_SIGNATURE);
    write(&dir, "secrets/crm/signingSecret", SIGNING_SECRET);
    let settings = ClusterSettings {
        kafka_bootstrap: infra().kafka_bootstrap(),
        redis_url: infra().redis_url(),
        mysql_url: db.url.clone(),
        config_dir: Some(dir.join("config")),
        watch_namespace: None,
        amqp_url: None,
        events_topic: ump_core::audience::DEFAULT_EVENTS_TOPIC.to_owned(),
        accept_timeout: "5s".parse().expect("duration"),
        secrets_dir: dir.join("secrets"),
    };
    let state = ump_api::cluster::state(
        &settings,
        ChannelSource::Folder(dir.join("config")),
        prometheus::Registry::new(),
    )
    .await
    .expect("API state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, ump_api::router(state)).await });
    Api {
        url: format!("http://{addr}"),
        http: reqwest::Client::new(),
        history: MySqlHistory::new(db.pool.clone()),
        db,
        dir,
    }
}

impl Api {
    /// A message that `provider` took as `provider_id` (what the worker records).
    async fn sent(&self, provider: &str, provider_id: Option<&str>) -> MessageId {
        let mut envelope = Envelope {
            id: MessageId::new(),
            tenant: "default".into(),
            channel: "sms".into(),
            to: "+821012345678".into(),
            content: Content {
                body: Some("안녕하세요".into()),
                ..Default::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: vec![],
            metadata: Default::default(),
            idempotency_key: None,
            category: Default::default(),
            accepted_at: chrono::Utc::now() - chrono::Duration::seconds(1),
            attempts: 1,
            fallback: None,
        };
        let sent = Transition::of(&envelope, Status::Sent, envelope.accepted_at)
            .provider(provider, provider_id.map(str::to_owned));
        envelope.attempts = 0;
        let accepted = Transition::of(&envelope, Status::Accepted, envelope.accepted_at);
        self.history
            .record(&BatchRecord {
                transitions: vec![accepted, sent],
                deferred: vec![],
            })
            .await
            .expect("record");
        envelope.id
    }

    async fn status(&self, id: MessageId) -> (Status, Vec<(Status, Option<String>)>) {
        let view = self
            .history
            .get("default", id)
            .await
            .expect("get")
            .expect("message");
        let events = view
            .events
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.status, e.detail))
            .collect();
        (view.status, events)
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A Twilio status callback for `sid`, signed with `token`.
    async fn twilio(&self, sid: &str, status: &str, token: Option<&str>) -> (StatusCode, Value) {
        let params: Vec<(String, String)> = [
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("ApiVersion", "2010-04-01"),
            (
                "ErrorCode",
                if status == "undelivered" { "30003" } else { "" },
            ),
            ("From", "+15005550006"),
            ("MessageSid", sid),
            ("MessageStatus", status),
            ("SmsSid", sid),
            ("SmsStatus", status),
            ("To", "+821012345678"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let signature = token.map(|t| twilio_signature(t, CALLBACK, &params));
        let headers: Vec<(&str, &str)> = signature
            .iter()
            .map(|s| ("X-Twilio-Signature", s.as_str()))
            .collect();
        self.post(
            "/v1/receipts/sms/twilio",
            &headers,
            "application/x-www-form-urlencoded",
            body,
        )
        .await
    }

    async fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.db.drop_database().await;
    }
}

fn ump_signature(secret: &str, body: &str) -> String {
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn twilio_status_callbacks_are_verified_then_applied() {
    let api = start().await;
    let delivered = api.sent("twilio", Some("SMdelivered0001")).await;
    let undelivered = api.sent("twilio", Some("SMundelivered01")).await;
    let untouched = api.sent("twilio", Some("SMuntouched0001")).await;

    // Forged (another token), unsigned, or about an unknown message: refused, nothing changes.
    let (status, problem) = api
        .twilio("SMuntouched0001", "delivered", Some("not-the-token"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, _) = api.twilio("SMuntouched0001", "delivered", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, problem) = api
        .twilio("SMnobodysentthis", "delivered", Some(AUTH_TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(api.status(untouched).await.0, Status::Sent);

    // Statuses on the way (queued, sent) change nothing.
    let (status, report) = api
        .twilio("SMdelivered0001", "sent", Some(AUTH_TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report, json!({"applied": 0, "unchanged": 0}));
    assert_eq!(api.status(delivered).await.0, Status::Sent);

    let (status, report) = api
        .twilio("SMdelivered0001", "delivered", Some(AUTH_TOKEN))
        .await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 1, "unchanged": 0}))
    );
    let (now, events) = api.status(delivered).await;
    assert_eq!(now, Status::Delivered);
    assert_eq!(
        events.last(),
        Some(&(Status::Delivered, Some("twilio: delivered".into())))
    );

    let (status, _) = api
        .twilio("SMundelivered01", "undelivered", Some(AUTH_TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (now, events) = api.status(undelivered).await;
    assert_eq!(now, Status::Failed);
    assert_eq!(
        events.last(),
        Some(&(
            Status::Failed,
            Some("twilio: undelivered (error 30003)".into())
        ))
    );

    // A late "failed" after "delivered" (callbacks may arrive out of order) changes nothing.
    let (status, report) = api
        .twilio("SMdelivered0001", "failed", Some(AUTH_TOKEN))
        .await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 0, "unchanged": 1}))
    );
    assert_eq!(api.status(delivered).await.0, Status::Delivered);
    assert_eq!(api.status(untouched).await.0, Status::Sent);
    api.finish().await;
}

#[tokio::test]
async fn nhn_result_webhooks_carry_the_signature_string() {
    let api = start().await;
    let ok = api.sent("nhn", Some("20260101-nhn-000001")).await;
    let bad = api.sent("nhn", Some("20260101-nhn-000002")).await;
    // Twilio's message with the same kind of id: an NHN receipt never reaches it.
    let twilios = api.sent("twilio", Some("20260101-nhn-000003")).await;
    let callback = |hooks: Value| {
        json!({
            "hooksId": "202601011010101010abcdef", "webhookConfigId": "cfg-1",
            "productName": "SMS", "appKey": "nhnAppKey", "event": "MESSAGE_RESULT_UPDATE",
            "hooks": hooks,
        })
        .to_string()
    };
    let hook = |request_id: &str, code: &str, name: &str| {
        json!({"hookId": format!("h-{request_id}"), "requestId": request_id, "recipientSeq": 1,
               "recipientNo": "01012345678", "msgStatus": "3", "resultCode": code,
               "resultCodeName": name, "resultDate": "2026-01-01 10:10:10.0"})
    };
    let post = |signature: Option<&'static str>, body: String| {
        let api = &api;
        async move {
            let headers: Vec<(&str, &str)> = signature
                .iter()
                .map(|s| ("X-Toast-Webhook-Signature", *s))
                .collect();
            api.post("/v1/receipts/sms/nhn", &headers, "application/json", body)
                .await
        }
    };

    let both = callback(json!([
        hook("20260101-nhn-000001", "1000", "성공"),
        hook("20260101-nhn-000002", "3015", "착신 거부")
    ]));
    assert_eq!(
        post(Some("guessed"), both.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(post(None, both.clone()).await.0, StatusCode::UNAUTHORIZED);
    let twilio_only = callback(json!([hook("20260101-nhn-000003", "1000", "성공")]));
    assert_eq!(
        post(Some(NHN_SIGNATURE), twilio_only).await.0,
        StatusCode::NOT_FOUND
    );
    for id in [ok, bad, twilios] {
        assert_eq!(api.status(id).await.0, Status::Sent);
    }

    let (status, report) = post(Some(NHN_SIGNATURE), both).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 2, "unchanged": 0}))
    );
    assert_eq!(api.status(ok).await.0, Status::Delivered);
    let (now, events) = api.status(bad).await;
    assert_eq!(now, Status::Failed);
    assert_eq!(
        events.last(),
        Some(&(Status::Failed, Some("nhn: 3015 착신 거부".into())))
    );
    assert_eq!(api.status(twilios).await.0, Status::Sent);

    // Other events at the same URL are acknowledged and ignored.
    let unsubscribe = json!({"hooksId": "x", "productName": "SMS", "appKey": "k",
        "event": "UNSUBSCRIBE", "hooks": [{"hookId": "y", "recipientNo": "01012345678"}]})
    .to_string();
    let (status, report) = post(Some(NHN_SIGNATURE), unsubscribe).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 0, "unchanged": 0}))
    );
    api.finish().await;
}

#[tokio::test]
async fn an_alimtalk_result_reaches_its_recipient_in_a_shared_request() {
    let api = start().await;
    // Three recipients of one request, and a message recorded before ids named the recipient.
    let first = api
        .sent("alimtalk", Some("20260101-alimtalk-000009#1"))
        .await;
    let second = api
        .sent("alimtalk", Some("20260101-alimtalk-000009#2"))
        .await;
    let third = api
        .sent("alimtalk", Some("20260101-alimtalk-000009#3"))
        .await;
    let older = api.sent("alimtalk", Some("20260101-alimtalk-000008")).await;
    let hook = |request_id: &str, seq: u32, code: &str| {
        json!({"hookId": format!("h-{request_id}-{seq}"), "requestId": request_id,
               "recipientSeq": seq, "recipientNo": "01012345678", "msgStatus": "3",
               "resultCode": code, "resultCodeName": "결과"})
    };
    let body = json!({
        "hooksId": "h", "webhookConfigId": "cfg-1", "productName": "ALIMTALK",
        "appKey": "nhnAppKey", "event": "MESSAGE_RESULT_UPDATE",
        "hooks": [
            hook("20260101-alimtalk-000009", 2, "1000"),
            hook("20260101-alimtalk-000009", 3, "3018"),
            hook("20260101-alimtalk-000008", 1, "1000"),
        ],
    })
    .to_string();
    let (status, report) = api
        .post(
            "/v1/receipts/kakao/alimtalk",
            &[("X-Toast-Webhook-Signature", NHN_SIGNATURE)],
            "application/json",
            body,
        )
        .await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 3, "unchanged": 0}))
    );
    assert_eq!(
        api.status(first).await.0,
        Status::Sent,
        "no result for it yet"
    );
    assert_eq!(api.status(second).await.0, Status::Delivered);
    assert_eq!(api.status(third).await.0, Status::Failed);
    assert_eq!(api.status(older).await.0, Status::Delivered);
    api.finish().await;
}

#[tokio::test]
async fn webhook_acknowledgements_are_signed_like_what_ump_sends() {
    let api = start().await;
    let acked = api.sent("crm", None).await;
    let twilios = api.sent("twilio", Some("SMnotawebhook001")).await;
    let ack = |id: MessageId, status: &str| {
        json!({"id": id.to_string(), "status": status, "detail": "read by the CRM"}).to_string()
    };
    let post = |body: String, signature: String| {
        let api = &api;
        async move {
            api.post(
                "/v1/receipts/hooks/crm",
                &[("X-UMP-Signature", signature.as_str())],
                "application/json",
                body,
            )
            .await
        }
    };

    // Signed with another secret, or a body changed after signing: refused.
    let body = ack(acked, "delivered");
    assert_eq!(
        post(body.clone(), ump_signature("guess", &body)).await.0,
        StatusCode::FORBIDDEN
    );
    let tampered = ack(acked, "failed");
    assert_eq!(
        post(tampered, ump_signature(SIGNING_SECRET, &body)).await.0,
        StatusCode::FORBIDDEN
    );
    // The webhook's secret cannot touch a message another provider sent.
    let other = ack(twilios, "failed");
    assert_eq!(
        post(other.clone(), ump_signature(SIGNING_SECRET, &other))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // A signed body with a bad status is named.
    let invalid = json!({"id": acked.to_string(), "status": "read"}).to_string();
    let (status, problem) = post(invalid.clone(), ump_signature(SIGNING_SECRET, &invalid)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "status");
    assert_eq!(api.status(acked).await.0, Status::Sent);
    assert_eq!(api.status(twilios).await.0, Status::Sent);

    let (status, report) = post(body.clone(), ump_signature(SIGNING_SECRET, &body)).await;
    assert_eq!(
        (status, report),
        (StatusCode::OK, json!({"applied": 1, "unchanged": 0}))
    );
    let (now, events) = api.status(acked).await;
    assert_eq!(now, Status::Delivered);
    assert_eq!(
        events.last(),
        Some(&(Status::Delivered, Some("webhook: read by the CRM".into())))
    );
    api.finish().await;
}

#[tokio::test]
async fn endpoints_without_receipts_are_not_found() {
    let api = start().await;
    for path in [
        "/v1/receipts/nope/twilio",
        "/v1/receipts/sms/nope",
        // The sandbox sends no receipts.
        "/v1/receipts/sms/sandbox",
    ] {
        let (status, problem) = api.post(path, &[], "application/json", "{}".into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
        assert_eq!(
            problem["type"], "https://ump.dev/problems/no-receipt-endpoint",
            "{path}"
        );
    }
    api.finish().await;
}

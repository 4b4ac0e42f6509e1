//! Customer profiles over HTTP, all-in-one (the MySQL store keeps the same contract:
//! `core/tests/mysql_history.rs`): identify, read, tenant isolation, bad input named by field,
//! and erasure that leaves the person's number nowhere in the history.

mod common;

use common::{AllInOne, KEY};
use serde_json::{Value, json};
use ump_core::testing::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_kept_per_tenant_and_erasure_erases() {
    let ump = AllInOne::start("warn", &[]).await;
    let phone = "+821055556666";
    let (status, profile) = ump
        .put(
            KEY,
            "/v1/users/kim-1",
            &json!({"traits": {"tier": "vip", "name": "김"}, "locale": "ko-KR",
                "contacts": {"phone": phone},
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                              "source": "signup-form"}]}),
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["traits"]["tier"], "vip");
    assert_eq!(profile["consents"][0]["source"], "signup-form");
    assert!(
        profile["consents"][0]["at"].is_string(),
        "when it was given"
    );

    // A second update merges traits and adds to the consent record.
    let (status, profile) = ump
        .put(
            KEY,
            "/v1/users/kim-1",
            &json!({"traits": {"name": null},
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": false,
                              "source": "unsubscribe-link"}]}),
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["traits"], json!({"tier": "vip"}));
    assert_eq!(profile["consents"].as_array().map(Vec::len), Some(2));
    let (status, mut read) = ump.get(KEY, "/v1/users/kim-1").await;
    assert_eq!(status, 200, "{read}");
    // The read adds what the event processor keeps of the person.
    let object = read.as_object_mut().expect("an object");
    for field in [
        "segments",
        "recent_events",
        "next_wake",
        "journeys",
        "past_journeys",
    ] {
        assert!(object.remove(field).is_some(), "{field} missing");
    }
    assert_eq!(read, profile);

    // Another tenant sees nothing of it.
    let (other, _) = ump.create_key(&unique_name("tenant"));
    ump.wait_key_works(&other).await;
    assert_eq!(ump.get(&other, "/v1/users/kim-1").await.0, 404);
    assert_eq!(
        ump.delete(&other, "/v1/users/kim-1").await.1["profile"],
        false
    );

    // Bad input: 422 naming the field.
    for (body, field) in [
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"contacts": {"phone": "010-1234"}}), "contacts.phone"),
        (
            json!({"consents": [{"purpose": "spam", "channel": "sms", "granted": true, "source": "x"}]}),
            "consents[0].purpose",
        ),
        (json!({"tratis": {}}), "tratis"),
        (json!({"traits": []}), "traits"),
    ] {
        let (status, problem) = ump.put(KEY, "/v1/users/kim-1", &body).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let long = "u".repeat(256);
    assert_eq!(
        ump.put(KEY, &format!("/v1/users/{long}"), &json!({}))
            .await
            .0,
        422
    );

    // A message to Kim, then erasure: the number is nowhere in the history any more.
    let id = ump
        .send(
            KEY,
            &json!({"channel": "sms", "to": phone, "body": "주문이 접수되었습니다"}),
        )
        .await;
    ump.wait_status(KEY, &id, "sent").await;
    // The processor has looked at the person (the first start's example segment `vip` holds
    // them): erasure then has automation state to remove too.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while ump.get(KEY, "/v1/users/kim-1").await.1["segments"] != json!(["vip"]) {
        assert!(tokio::time::Instant::now() < deadline, "never processed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, erased) = ump.delete(KEY, "/v1/users/kim-1").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        erased,
        json!({"profile": true, "messages_masked": 1, "automation_state": true, "webhook_events_redacted": 0})
    );
    assert_eq!(ump.get(KEY, "/v1/users/kim-1").await.0, 404);
    let (_, view) = ump.get(KEY, &format!("/v1/messages/{id}")).await;
    assert_eq!(view["to"], "+8210****6666");
    assert!(!view.to_string().contains(phone), "{view}");
    let (_, page) = ump
        .get(KEY, &format!("/v1/messages?to=%2B{}", &phone[1..]))
        .await;
    assert_eq!(
        page["items"],
        json!([]),
        "found by the number after erasure"
    );
}

/// A zone whose local time is now `hour` o'clock (give or take the minutes): `Etc/GMT-9` is UTC+9.
fn zone_at(hour: i64) -> String {
    use chrono::Timelike;
    let utc = i64::from(chrono::Utc::now().hour());
    let offset = (hour - utc + 36).rem_euclid(24) - 12;
    match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

/// A send that must be refused with a 422 naming `field`, its detail saying `says`.
async fn assert_refused(ump: &AllInOne, body: Value, field: &str, says: &str) {
    let (status, problem) = ump.post(KEY, "/v1/messages", &body).await;
    assert_eq!(status, 422, "{body}: {problem}");
    assert_eq!(problem["field"], field, "{body}: {problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{body}: {problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_person_use_their_contact_and_marketing_needs_consent() {
    let ump = AllInOne::start("warn", &[]).await;
    let phone = "+821077778888";
    let (status, profile) = ump
        .put(
            KEY,
            "/v1/users/lee-1",
            &json!({"contacts": {"phone": phone, "email": "lee@example.com"}, "locale": "en",
                "timezone": zone_at(12),
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                              "source": "signup-form"}]}),
        )
        .await;
    assert_eq!(status, 200, "{profile}");

    // Transactional (the default): the channel's contact point, no consent needed.
    let id = ump
        .send(
            KEY,
            &json!({"channel": "email", "user": "lee-1", "subject": "영수증", "body": "결제 완료"}),
        )
        .await;
    let view = ump.wait_status(KEY, &id, "sent").await;
    assert_eq!(view["to"], "lee@example.com");
    // Marketing by SMS at noon their time, with consent: sent.
    let id = ump
        .send(
            KEY,
            &json!({"channel": "sms", "user": "lee-1", "category": "marketing", "body": "(광고) 세일"}),
        )
        .await;
    assert_eq!(ump.wait_status(KEY, &id, "sent").await["to"], phone);

    let refused = |body: Value, field: &'static str, says: &'static str| {
        assert_refused(&ump, body, field, says)
    };
    refused(
        json!({"channel": "email", "user": "lee-1", "category": "marketing", "subject": "s", "body": "x"}),
        "user",
        "no marketing consent for email",
    )
    .await;
    refused(
        json!({"channel": "sms", "to": phone, "category": "marketing", "body": "x"}),
        "user",
        "consent is per person",
    )
    .await;
    refused(
        json!({"channel": "alimtalk", "user": "lee-1", "category": "marketing", "template": "shipped", "data": {"name": "x"}}),
        "category",
        "AlimTalk carries informational messages only",
    )
    .await;
    refused(
        json!({"channel": "sms", "user": "nobody", "body": "x"}),
        "user",
        "no such person",
    )
    .await;
    refused(
        json!({"channel": "sms", "user": "lee-1", "to": phone, "body": "x"}),
        "user",
        "either to or user",
    )
    .await;
    refused(
        json!({"channel": "sms", "user": "lee-1", "category": "promo", "body": "x"}),
        "category",
        "transactional or marketing",
    )
    .await;

    // A retry of an accepted send replays its answer, even after the consent was withdrawn.
    let keyed = |body: Value| {
        let ump = &ump;
        async move {
            let response = ump
                .http
                .post(format!("{}/v1/messages", ump.url))
                .bearer_auth(KEY)
                .header("Idempotency-Key", "promo-lee-1")
                .json(&body)
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let promo =
        json!({"channel": "sms", "user": "lee-1", "category": "marketing", "body": "(광고) 쿠폰"});
    let (status, first) = keyed(promo.clone()).await;
    assert_eq!(status, 202, "{first}");
    let withdraw = json!({"consents": [{"purpose": "marketing", "channel": "sms", "granted": false,
                                        "source": "unsubscribe-link"}]});
    assert_eq!(ump.put(KEY, "/v1/users/lee-1", &withdraw).await.0, 200);
    let (status, again) = keyed(promo.clone()).await;
    assert_eq!((status, &again), (202, &first), "a retry replays");
    refused(promo, "user", "consent for sms was withdrawn").await;

    // 23:00 their time: advertising needs the separate night-time consent.
    let (status, _) = ump
        .put(
            KEY,
            "/v1/users/lee-1",
            &json!({"timezone": zone_at(23),
                "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                              "source": "re-subscribe"}]}),
        )
        .await;
    assert_eq!(status, 200);
    refused(
        json!({"channel": "sms", "user": "lee-1", "category": "marketing", "body": "x"}),
        "user",
        "no night-time marketing consent for sms",
    )
    .await;
    // In a batch, the refused one fails alone.
    let (status, answer) = ump
        .post(
            KEY,
            "/v1/messages/batch",
            &json!({"messages": [
                {"channel": "sms", "user": "lee-1", "body": "배송 시작"},
                {"channel": "sms", "user": "lee-1", "category": "marketing", "body": "(광고) x"}]}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"][1]["error"]["field"], "messages[1].user",
        "{answer}"
    );
}

/// Korean advertising rules end to end: advertising over Kakao is FriendTalk (Kakao consent,
/// Kakao's ad flag), SMS advertising is marked "(광고)" + sender first and the channel's opt-out
/// number last, and an SMS channel without an opt-out number takes no advertising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertising_goes_by_friendtalk_or_marked_sms() {
    let channels = tempfile::tempdir().expect("temp dir");
    let examples = std::fs::read_to_string(common::examples().join("channels.yaml"))
        .expect("the example channels");
    std::fs::write(channels.path().join("channels.yaml"), examples).expect("write channels");
    std::fs::write(
        channels.path().join("plain-sms.yaml"),
        "apiVersion: ump.dev/v1alpha1\nkind: MessageChannel\nmetadata: {name: plain-sms}\n\
         spec:\n  type: sms\n  providers: [{name: sandbox, type: sandbox}]\n",
    )
    .expect("write plain-sms");
    let ump = AllInOne::start_with_channels(channels.path(), "warn", &[]).await;
    let phone = "+821044445555";
    let (status, profile) = ump
        .put(
            KEY,
            "/v1/users/park-1",
            &json!({"contacts": {"phone": phone}, "timezone": zone_at(12),
                "consents": [
                    {"purpose": "marketing", "channel": "kakao", "granted": true, "source": "kakao-channel-form"},
                    {"purpose": "marketing", "channel": "sms", "granted": true, "source": "signup-form"}]}),
        )
        .await;
    assert_eq!(status, 200, "{profile}");

    // FriendTalk: the person's phone, the Kakao consent, the text as written (Kakao marks it).
    // Kakao's night ban (20:50–08:00 KST) is the wall clock's: by night the message waits for
    // 08:00 KST instead of going (the window's edges are tested with a fixed `now` in the
    // worker's policy tests).
    let ban = ump_core::policy::friendtalk_ad_ban();
    let before = chrono::Utc::now();
    let ad = ump
        .send(
            KEY,
            &json!({"channel": "friendtalk", "user": "park-1", "category": "marketing",
                    "template": "sale", "data": {"name": "박", "percent": 30}}),
        )
        .await;
    let view = ump.wait_status_in(KEY, &ad, &["sent", "scheduled"]).await;
    let after = chrono::Utc::now();
    assert_eq!(view["to"], phone, "{view}");
    let (ban_before, ban_after) = (ban.ends_after(before), ban.ends_after(after));
    let by_day = match view["status"].as_str() {
        Some("sent") => {
            assert!(
                ban_before.is_none() || ban_after.is_none(),
                "sent by night: {view}"
            );
            true
        }
        _ => {
            let waits = ban_before
                .or(ban_after)
                .unwrap_or_else(|| panic!("held by day: {view}"));
            let detail = view["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("Kakao's rule"), "{view}");
            assert!(
                detail.ends_with(&waits.to_rfc3339()),
                "waits for 08:00 KST: {view}"
            );
            false
        }
    };
    // SMS: marked with the channel's sender name and opt-out number.
    let sms = ump
        .send(
            KEY,
            &json!({"channel": "sms", "user": "park-1", "category": "marketing", "body": "주말 특가"}),
        )
        .await;
    ump.wait_status(KEY, &sms, "sent").await;
    // Information is never marked.
    let info = ump
        .send(
            KEY,
            &json!({"channel": "sms", "user": "park-1", "body": "배송이 시작되었습니다"}),
        )
        .await;
    ump.wait_status(KEY, &info, "sent").await;
    let outbox = ump.outbox();
    let line = |id: &str| {
        outbox
            .iter()
            .find(|l| l["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in the outbox: {outbox:?}"))
    };
    if by_day {
        assert_eq!(line(&ad)["text"], "박님, 주말 특가: 전 품목 30% 할인");
        assert_eq!(line(&ad)["category"], "marketing");
    }
    assert_eq!(
        line(&sms)["text"],
        "(광고) UMP\n주말 특가\n무료수신거부 080-123-4567"
    );
    assert_eq!(line(&info)["text"], "배송이 시작되었습니다");
    assert!(line(&info).get("category").is_none());
    let (status, page) = ump.get(KEY, "/v1/outbox?limit=10").await;
    assert_eq!(status, 200, "{page}");
    let shown = |id: &str| {
        page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["id"] == id))
            .map(|i| i["category"].clone())
    };
    if by_day {
        assert_eq!(shown(&ad), Some(json!("marketing")), "{page}");
    }
    assert_eq!(shown(&info), Some(Value::Null), "{page}");

    let refused = |body: Value, field: &'static str, says: &'static str| {
        assert_refused(&ump, body, field, says)
    };
    refused(
        json!({"channel": "plain-sms", "user": "park-1", "category": "marketing", "body": "x"}),
        "channel",
        "spec.advertising.optOut",
    )
    .await;
    refused(
        json!({"channel": "alimtalk", "user": "park-1", "category": "marketing",
               "template": "shipped", "data": {"name": "x"}}),
        "category",
        "send advertising by FriendTalk or SMS",
    )
    .await;
    // Without the Kakao consent, no FriendTalk advertising.
    let withdraw = json!({"consents": [{"purpose": "marketing", "channel": "kakao",
                                        "granted": false, "source": "channel-blocked"}]});
    assert_eq!(ump.put(KEY, "/v1/users/park-1", &withdraw).await.0, 200);
    refused(
        json!({"channel": "friendtalk", "user": "park-1", "category": "marketing",
               "template": "sale", "data": {"name": "박", "percent": 30}}),
        "user",
        "consent for kakao was withdrawn",
    )
    .await;
}

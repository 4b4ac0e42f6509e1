//! Kakao FriendTalk through NHN Cloud BizMessage v2.3.

use super::fakes::alimtalk::{APP_KEY, SECRET_KEY, SENDER_KEY};
use super::fakes::friendtalk::FakeFriendtalk;
use super::fakes::{Canned, SecretsDir, message, spec};
use super::{assert_permanent, assert_retryable, reason};
use serde_json::json;
use ump_core::model::Category;
use ump_core::provider::{Outcome, Outgoing, Provider};
use ump_core::resources::{ChannelType, ProviderType};
use ump_worker::providers::nhn_alimtalk::wants_sms_fallback;

fn provider(
    secrets: &SecretsDir,
    fake: &FakeFriendtalk,
    secret_key: &str,
) -> std::sync::Arc<dyn Provider> {
    secrets.secret(
        "friendtalk",
        &[
            ("appKey", APP_KEY),
            ("secretKey", secret_key),
            ("senderKey", SENDER_KEY),
        ],
    );
    let endpoint = fake.endpoint();
    ump_worker::providers::build(
        &spec(
            "friendtalk",
            ProviderType::NhnFriendtalk,
            Some("friendtalk"),
            &[("endpoint", endpoint.as_str())],
        ),
        &secrets.ctx(),
    )
    .expect("build friendtalk")
}

fn sale(to: &str) -> Outgoing {
    let mut m = message(ChannelType::Friendtalk, to, "주말 특가: 전 품목 30% 할인");
    m.category = Category::Marketing;
    m
}

#[tokio::test]
async fn advertising_goes_out_with_the_ad_flag_and_the_account_keys() {
    let fake = FakeFriendtalk::start().await;
    let secrets = SecretsDir::new();
    let friendtalk = provider(&secrets, &fake, SECRET_KEY);
    let mut m = sale("+82 10-1234-5678");
    m.data.insert(
        "buttons".into(),
        json!([{"ordering": 1, "type": "WL", "name": "할인 보기", "linkMo": "https://ump.example/sale"}]),
    );
    m.data.insert(
        "imageUrl".into(),
        json!("https://mud-kage.kakao.com/dn/sale.jpg"),
    );

    let outcome = friendtalk.send(&m).await;
    assert!(
        matches!(&outcome, Outcome::Sent { provider_message_id: Some(id) } if id.contains("friendtalk")),
        "{outcome:?}"
    );
    assert_eq!(fake.secret_keys(), vec![SECRET_KEY.to_owned()]);
    let request = &fake.accepted()[0];
    assert_eq!(request["senderKey"], SENDER_KEY);
    let recipient = &request["recipientList"][0];
    assert_eq!(recipient["recipientNo"], "01012345678");
    // Kakao marks an ad itself: the text goes out as written, with the flag set.
    assert_eq!(recipient["content"], "주말 특가: 전 품목 30% 할인");
    assert_eq!(recipient["isAd"], true);
    assert_eq!(recipient["buttons"][0]["name"], "할인 보기");
    assert_eq!(
        recipient["imageUrl"],
        "https://mud-kage.kakao.com/dn/sale.jpg"
    );
    // UMP's fallback decides about SMS; NHN's own resend is explicitly off.
    assert_eq!(recipient["resendParameter"], json!({"isResend": false}));
}

#[tokio::test]
async fn information_goes_out_without_the_ad_flag() {
    let fake = FakeFriendtalk::start().await;
    let secrets = SecretsDir::new();
    let friendtalk = provider(&secrets, &fake, SECRET_KEY);
    let m = message(
        ChannelType::Friendtalk,
        "01012345678",
        "주문하신 상품이 출발했습니다",
    );
    assert!(matches!(friendtalk.send(&m).await, Outcome::Sent { .. }));
    assert_eq!(fake.accepted()[0]["recipientList"][0]["isAd"], false);
}

#[tokio::test]
async fn refusals_are_permanent_and_non_friends_fall_back() {
    let fake = FakeFriendtalk::start().await;
    fake.friends(&["01012345678"]);
    let secrets = SecretsDir::new();
    let friendtalk = provider(&secrets, &fake, SECRET_KEY);

    let outcome = friendtalk.send(&sale("01099998888")).await;
    assert_permanent(&outcome, "not_kakao_user: kakao 3018");
    assert!(wants_sms_fallback(reason(&outcome)));

    // Checked before any call: a foreign number, an over-long text.
    assert_permanent(
        &friendtalk.send(&sale("+1 415 555 0100")).await,
        "FriendTalk takes Korean numbers only",
    );
    let mut long = sale("01012345678");
    long.text = "가".repeat(1001);
    assert_permanent(&friendtalk.send(&long).await, "text is 1001 characters");
    assert_eq!(fake.accepted().len(), 1);

    fake.script.push(super::fakes::alimtalk::header_failure(
        -5000,
        "invalid parameter",
    ));
    let outcome = friendtalk.send(&sale("01012345678")).await;
    assert_permanent(&outcome, "kakao -5000");
    assert!(!wants_sms_fallback(reason(&outcome)));
}

#[tokio::test]
async fn outages_and_account_problems_are_retryable() {
    let fake = FakeFriendtalk::start().await;
    let secrets = SecretsDir::new();
    let friendtalk = provider(&secrets, &fake, SECRET_KEY);
    fake.script.push(Canned::Reply {
        status: 503,
        headers: vec![("retry-after", "7".into())],
        body: "maintenance".into(),
    });
    fake.script
        .push(super::fakes::alimtalk::header_failure(9999, "system error"));
    let m = sale("01012345678");
    assert_retryable(
        &friendtalk.send(&m).await,
        Some(std::time::Duration::from_secs(7)),
    );
    assert_retryable(&friendtalk.send(&m).await, None);
    assert!(matches!(friendtalk.send(&m).await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn a_wrong_secret_key_is_retryable_and_never_quoted() {
    let fake = FakeFriendtalk::start().await;
    let secrets = SecretsDir::new();
    let wrong = "stale-secret-key-7f7f7f7f";
    let friendtalk = provider(&secrets, &fake, wrong);
    let outcome = friendtalk.send(&sale("01012345678")).await;
    assert_retryable(&outcome, None);
    let text = reason(&outcome);
    assert!(text.starts_with("account rejected: kakao -1004"), "{text}");
    assert!(!text.contains(wrong), "the secret key leaked: {text}");
    // The header carried the key as configured: the fake saw it, and refused it.
    assert_eq!(fake.secret_keys(), vec![wrong.to_owned()]);
}

//! Kakao FriendTalk through NHN Cloud BizMessage v2.3: `POST {endpoint}/friendtalk/v2.3/appkeys/{appKey}/messages`
//! with the `X-Secret-Key` header and `{senderKey, recipientList: [{recipientNo, content,
//! buttons?, imageUrl?, imageLink?, resendParameter, isAd}]}`.
//!
//! FriendTalk is Kakao's free-form message to the friends of a Kakao channel, and the way to
//! advertise over Kakao (AlimTalk carries information only). `isAd` is the message's category
//! (`marketing`: true), always sent, since NHN's default is an ad: Kakao then marks the message
//! itself ("(광고)" by the channel's name, the channel-block opt-out below), so UMP writes no
//! marking into the text (see `ump_core::advertising`). Kakao delivers no FriendTalk
//! advertising between 20:50 and 08:00; UMP's consent rules ask a night-time consent from 21:00.
//!
//! `content` is the message's text (at most 1000 characters, 400 with an image). From the send's
//! `data`: a `buttons` array goes out as the recipient's `buttons`, `imageUrl` (an image
//! registered with NHN) and `imageLink` (where tapping it leads) as they are.
//!
//! NHN can resend a failed FriendTalk as SMS itself; UMP's fallback (DeliveryPolicy `fallback`,
//! whose SMS channel marks advertising as the law asks) does that instead, so `isResend` is
//! always false.
//!
//! Settings: `endpoint` (default `https://api-alimtalk.cloud.toast.com`); `timeout`;
//! `maxConcurrency`. Secret keys: `appKey`, `secretKey`, `senderKey` (the Kakao channel's sender
//! key).
//!
//! Classification: Kakao's result codes as `super::nhn` maps them for AlimTalk too; a recipient
//! who is not a friend of the channel (3018) is permanent with the `not_kakao_user` prefix, so
//! [`super::nhn_alimtalk::wants_sms_fallback`] hands the message to an SMS fallback.

use super::limits::CallLimits;
use super::nhn::BizMessage;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext};
use serde_json::{Value, json};
use ump_core::model::Category;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

/// Longest `content`, in characters.
pub const MAX_CONTENT_CHARS: usize = 1000;
/// Longest `content` of a message with an image, in characters.
pub const MAX_CONTENT_CHARS_WITH_IMAGE: usize = 400;

pub struct NhnFriendtalkProvider {
    name: String,
    account: BizMessage,
}

impl NhnFriendtalkProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        Ok(Self {
            name: spec.name.clone(),
            account: BizMessage::build(&settings, &secrets, "friendtalk/v2.3")?,
        })
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let recipient_no = match super::nhn::kakao_recipient(&message.to, "FriendTalk") {
            Ok(no) => no,
            Err(outcome) => return outcome,
        };
        let recipient = match recipient(message, recipient_no) {
            Ok(recipient) => recipient,
            Err(reason) => return Outcome::Permanent { reason },
        };
        let request = json!({
            "senderKey": self.account.sender_key(),
            "recipientList": [recipient],
        });
        self.account.post(&request).await
    }
}

/// The message's entry of `recipientList`, or why it cannot go out as FriendTalk.
fn recipient(message: &Outgoing, recipient_no: String) -> Result<Value, String> {
    let text_of = |key: &str| {
        message
            .data
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let image_url = text_of("imageUrl");
    let max = match image_url {
        Some(_) => MAX_CONTENT_CHARS_WITH_IMAGE,
        None => MAX_CONTENT_CHARS,
    };
    let chars = message.text.chars().count();
    if chars > max {
        return Err(format!(
            "text is {chars} characters; a FriendTalk takes at most {max}{}",
            if image_url.is_some() {
                " with an image"
            } else {
                ""
            }
        ));
    }
    let mut recipient = json!({
        "recipientNo": recipient_no,
        "content": message.text,
        "resendParameter": {"isResend": false},
        "isAd": message.category == Category::Marketing,
    });
    if let Some(Value::Array(buttons)) = message.data.get("buttons") {
        recipient["buttons"] = Value::Array(buttons.clone());
    }
    if let Some(url) = image_url {
        recipient["imageUrl"] = json!(url);
        if let Some(link) = text_of("imageLink") {
            recipient["imageLink"] = json!(link);
        }
    }
    Ok(recipient)
}

#[async_trait::async_trait]
impl super::Remote for NhnFriendtalkProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> &CallLimits {
        self.account.limits()
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.account.secrets()
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use ump_core::model::MessageId;
    use ump_core::resources::ChannelType;

    fn outgoing(text: &str, category: Category, data: Value) -> Outgoing {
        Outgoing {
            id: MessageId::new(),
            tenant: "t".into(),
            channel: "friendtalk".into(),
            channel_type: ChannelType::Friendtalk,
            to: "+821012345678".into(),
            subject: None,
            text: text.into(),
            html: None,
            template: None,
            data: data.as_object().cloned().unwrap_or_else(Map::new),
            metadata: Map::new(),
            category,
            attempt: 1,
        }
    }

    #[test]
    fn the_ad_flag_is_the_category() {
        let ad = recipient(
            &outgoing("주말 특가", Category::Marketing, json!({})),
            "01012345678".into(),
        );
        assert_eq!(ad.as_ref().map(|r| r["isAd"].clone()), Ok(json!(true)));
        let info = recipient(
            &outgoing("배송 안내", Category::Transactional, json!({})),
            "01012345678".into(),
        );
        assert_eq!(info.as_ref().map(|r| r["isAd"].clone()), Ok(json!(false)));
    }

    #[test]
    fn buttons_and_images_come_from_data_and_bound_the_text() {
        let data = json!({
            "buttons": [{"ordering": 1, "type": "WL", "name": "보기", "linkMo": "https://ump.example"}],
            "imageUrl": "https://mud-kage.kakao.com/x.jpg",
            "imageLink": "https://ump.example/sale",
            "name": "김민수",
        });
        let r = recipient(
            &outgoing("세일", Category::Marketing, data.clone()),
            "010".into(),
        )
        .unwrap_or_default();
        assert_eq!(r["buttons"][0]["name"], "보기");
        assert_eq!(r["imageUrl"], data["imageUrl"]);
        assert_eq!(r["imageLink"], data["imageLink"]);
        assert!(r.get("name").is_none());
        let long = "가".repeat(401);
        assert!(recipient(&outgoing(&long, Category::Marketing, data), "010".into()).is_err());
        assert!(
            recipient(
                &outgoing(&long, Category::Marketing, json!({})),
                "010".into()
            )
            .is_ok()
        );
        let too_long = "가".repeat(1001);
        assert!(
            recipient(
                &outgoing(&too_long, Category::Marketing, json!({})),
                "010".into()
            )
            .is_err()
        );
    }
}

//! Kakao AlimTalk through NHN Cloud BizMessage v2.3: `POST {endpoint}/alimtalk/v2.3/appkeys/{appKey}/messages`
//! with the `X-Secret-Key` header and `{senderKey, templateCode, recipientList: [{recipientNo,
//! templateParameter, buttons?, resendParameter}]}`.
//!
//! The template code is the send's `template` (the stored template it was rendered from), else the
//! `templateCode` setting. `templateParameter` is the send's `data` (values as text); a `buttons`
//! array in `data` goes out as the recipient's `buttons`.
//!
//! NHN can itself resend a failed AlimTalk as SMS/LMS (`resendParameter`). UMP's own fallback
//! (DeliveryPolicy `fallback`) is usually the better place for that, so it is off unless the
//! `resend` setting is true; `isResend` is always sent, so the NHN console's default never
//! decides silently. The resend text is the message's `text`, SMS or LMS by its length.
//!
//! Settings: `templateCode` (default template); `resend` (default false); `resendSendNo` (the
//! registered SMS sender number, required with `resend`); `endpoint` (default
//! `https://api-alimtalk.cloud.toast.com`); `timeout`; `maxConcurrency`. Secret keys: `appKey`,
//! `secretKey`, `senderKey` (the Kakao channel's sender key).
//!
//! Classification: Kakao's result codes, mapped as for FriendTalk (see `super::nhn`); the two
//! permanent failures an SMS would fix (not a KakaoTalk user, a rejected template) carry a reason
//! prefix [`wants_sms_fallback`] matches.

use super::limits::CallLimits;
use super::nhn::BizMessage;
use super::nhn_sms::resend_type;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext, text_of};
use serde_json::{Map, Value, json};
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

pub use super::nhn::{
    FALLBACK_PREFIXES, NOT_KAKAO_USER, TEMPLATE_REJECTED, result_outcome, wants_sms_fallback,
};

struct Resend {
    send_no: String,
}

pub struct NhnAlimtalkProvider {
    name: String,
    account: BizMessage,
    default_template: Option<String>,
    resend: Option<Resend>,
}

impl NhnAlimtalkProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let account = BizMessage::build(&settings, &secrets, "alimtalk/v2.3")?;
        let resend = if settings.flag("resend", false)? {
            Some(Resend {
                send_no: settings.require("resendSendNo")?.to_owned(),
            })
        } else {
            None
        };
        Ok(Self {
            name: spec.name.clone(),
            account,
            default_template: settings.get("templateCode").map(str::to_owned),
            resend,
        })
    }

    fn recipient(&self, message: &Outgoing, recipient_no: String) -> Value {
        let mut parameters = Map::new();
        let mut buttons = None;
        for (key, value) in &message.data {
            match value {
                Value::Array(list) if key == "buttons" => buttons = Some(list.clone()),
                _ => {
                    parameters.insert(key.clone(), Value::String(text_of(value)));
                }
            }
        }
        let resend = match &self.resend {
            None => json!({ "isResend": false }),
            Some(resend) => {
                let kind = resend_type(&message.text);
                let mut parameter = json!({
                    "isResend": true,
                    "resendType": kind,
                    "resendContent": message.text,
                    "resendSendNo": resend.send_no,
                });
                if let (Some(subject), "LMS") = (&message.subject, kind) {
                    parameter["resendTitle"] = json!(subject);
                }
                parameter
            }
        };
        let mut recipient = json!({
            "recipientNo": recipient_no,
            "templateParameter": parameters,
            "resendParameter": resend,
        });
        if let Some(buttons) = buttons {
            recipient["buttons"] = Value::Array(buttons);
        }
        recipient
    }

    async fn deliver(&self, message: &Outgoing) -> Outcome {
        let Some(template) = message
            .template
            .as_deref()
            .or(self.default_template.as_deref())
        else {
            return Outcome::Permanent {
                reason: format!(
                    "{TEMPLATE_REJECTED}: no template code (the send names no template and the \
                     provider has no templateCode setting)"
                ),
            };
        };
        let recipient_no = match super::nhn::kakao_recipient(&message.to, "AlimTalk") {
            Ok(no) => no,
            Err(outcome) => return outcome,
        };
        let request = json!({
            "senderKey": self.account.sender_key(),
            "templateCode": template,
            "recipientList": [self.recipient(message, recipient_no)],
        });
        self.account.post(&request).await
    }
}

#[async_trait::async_trait]
impl super::Remote for NhnAlimtalkProvider {
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

//! Kakao AlimTalk through NHN Cloud BizMessage v2.3: `POST {endpoint}/alimtalk/v2.3/appkeys/{appKey}/messages`
//! with the `X-Secret-Key` header and `{senderKey, templateCode, recipientList: [{recipientNo,
//! templateParameter, buttons?, resendParameter, recipientGroupingKey}]}` (the grouping key is the
//! UMP message id).
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
//! Messages of one template sent together share a request (see `super::batch`): up to
//! `batchSize` recipients (default and most 1,000, NHN's limit; 1 sends each alone), the first
//! waiting at most `batchLinger` (default 2ms) for others. Each recipient's result is its
//! message's outcome; a refusal of the whole request is every message's.
//!
//! Settings: `templateCode` (default template); `resend` (default false); `resendSendNo` (the
//! registered SMS sender number, required with `resend`); `endpoint` (default
//! `https://api-alimtalk.cloud.toast.com`); `caFile`; `timeout`; `maxConcurrency` (requests in
//! flight); `adaptiveConcurrency`; `batchSize`; `batchLinger`. Secret keys: `appKey`, `secretKey`,
//! `senderKey` (the Kakao channel's sender key).
//!
//! Classification: Kakao's result codes, mapped as for FriendTalk (see `super::nhn`); the two
//! permanent failures an SMS would fix (not a KakaoTalk user, a rejected template) carry a reason
//! prefix [`wants_sms_fallback`] matches.

use super::batch::{BatchLimits, Batcher, SendMany};
use super::limits::CallLimits;
use super::nhn::BizMessage;
use super::nhn_sms::resend_type;
use super::secret::{Secret, SecretFiles};
use super::settings::Settings;
use super::{BuildError, ProviderContext, text_of};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use ump_core::provider::{Outcome, Outgoing};
use ump_core::resources::ProviderSpec;

pub use super::nhn::{
    FALLBACK_PREFIXES, NOT_KAKAO_USER, TEMPLATE_REJECTED, result_outcome, wants_sms_fallback,
};

/// NHN takes at most this many recipients per request.
const MAX_BATCH: usize = 1000;
const DEFAULT_LINGER: Duration = Duration::from_millis(2);

struct Resend {
    send_no: String,
}

pub struct NhnAlimtalkProvider {
    name: String,
    account: Arc<BizMessage>,
    default_template: Option<String>,
    resend: Option<Resend>,
    /// Requests shared by the messages of one template; none with `batchSize: 1`.
    batches: Option<Batcher<String, Value, Requests>>,
}

/// Requests of the account, each for the recipients of one template.
struct Requests(Arc<BizMessage>);

impl SendMany<String, Value> for Requests {
    async fn send_many(&self, template: String, recipients: Vec<Value>) -> Vec<Outcome> {
        let count = recipients.len();
        let request = json!({
            "senderKey": self.0.sender_key(),
            "templateCode": template,
            "recipientList": recipients,
        });
        let account = &self.0;
        account
            .limits()
            .run_many(count, account.post_many(&request, count))
            .await
    }
}

impl NhnAlimtalkProvider {
    pub fn build(spec: &ProviderSpec, ctx: &ProviderContext<'_>) -> Result<Self, BuildError> {
        let settings = Settings::of(spec);
        let secrets = SecretFiles::of(spec, ctx);
        let account = Arc::new(BizMessage::build(&settings, &secrets, "alimtalk/v2.3")?);
        let batch = BatchLimits {
            max: settings.number("batchSize", MAX_BATCH)?,
            linger: settings.duration("batchLinger", DEFAULT_LINGER)?,
        };
        if batch.max == 0 || batch.max > MAX_BATCH {
            return Err(settings.invalid(format!(
                "setting \"batchSize\" must be from 1 to {MAX_BATCH}"
            )));
        }
        let batches =
            (batch.max > 1).then(|| Batcher::new(batch, Arc::new(Requests(Arc::clone(&account)))));
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
            batches,
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
            // The UMP message id, so that NHN's console and delivery reports name it.
            "recipientGroupingKey": message.id.to_string(),
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
        let recipient = self.recipient(message, recipient_no);
        if let Some(batches) = &self.batches {
            return batches.submit(template.to_owned(), recipient).await;
        }
        let request = json!({
            "senderKey": self.account.sender_key(),
            "templateCode": template,
            "recipientList": [recipient],
        });
        self.account.limits().run(self.account.post(&request)).await
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

    /// Each request (alone or shared) runs within the limits as it is sent.
    fn bounds_its_calls(&self) -> bool {
        true
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.account.secrets()
    }

    async fn call(&self, message: &Outgoing) -> Outcome {
        self.deliver(message).await
    }
}

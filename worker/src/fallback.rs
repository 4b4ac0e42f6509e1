//! Channel fallback (a DeliveryPolicy's `fallback`, e.g. AlimTalk → SMS): a message its channel's
//! provider refused for good (an AlimTalk recipient without KakaoTalk, a rejected template) goes
//! out once more on the fallback channel, as the same message with the policy's fallback text.
//!
//! How it travels: the pipeline parks a copy of the envelope for the fallback channel's topic,
//! due at once, in the same history transaction that records the refusal (a `scheduled` event
//! with the provider's reason), and the scheduler publishes it like any parked message. So the
//! hand-over is exactly as durable as a retry: nothing is published before the refusal is
//! recorded, and a batch consumed again parks the same row again (keyed by the message id), never
//! a second message. The copy keeps the message's id, so both attempts land in one timeline.
//!
//! Dedupe still holds: on its own channel the message keeps its dedupe key (a later identical
//! send is a duplicate: this one was delivered, over the fallback); on the fallback channel its
//! key is its id, so a copy published twice is sent once, and two different messages sharing
//! one fallback text are never mistaken for duplicates. A message is never handed on twice: a
//! refusal on the fallback channel is final.

use ump_core::config::{ChannelRegistry, FALLBACK_TEXT, ResolvedChannel};
use ump_core::model::{Content, Envelope, FallbackOrigin};
use ump_core::provider::Outgoing;

/// Where a channel's refused messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackRoute {
    /// The fallback channel's name.
    pub channel: String,
    /// Its topic, where the copy is published.
    pub queue: String,
}

impl FallbackRoute {
    /// The route of `channel`'s policy, if it has one. The fallback channel's topic comes from
    /// `registry` when it knows the channel (a config folder with every channel), else from the
    /// default topic naming in the channel's namespace (a worker that was handed only its own
    /// channel); the second case is logged, since a custom `topic.name` cannot be seen from here.
    pub fn of(channel: &ResolvedChannel, registry: &ChannelRegistry) -> Option<Self> {
        let target = &channel.policy.fallback.as_ref()?.channel;
        if *target == channel.name() {
            tracing::warn!(channel = %target, "the policy's fallback channel is the channel itself; fallback is off");
            return None;
        }
        let queue = match registry.get(target) {
            Some(resolved) => resolved.resource.topic_name(),
            None => {
                let namespace =
                    (channel.resource.metadata.namespace.as_deref()).unwrap_or("default");
                let queue = format!("ump.{namespace}.{target}");
                tracing::warn!(channel = %channel.name(), fallback = %target, topic = %queue,
                    "fallback channel is not in the configuration; assuming its default topic");
                queue
            }
        };
        Some(Self {
            channel: target.clone(),
            queue,
        })
    }
}

/// The copy of `envelope` (its attempt on `channel` just refused for good, `outgoing` being what
/// was sent) that goes out on `route`: the policy's fallback text rendered with the send's data,
/// else the text the refused attempt carried. `Err` says why it cannot be built.
pub fn fallback_envelope(
    envelope: &Envelope,
    outgoing: &Outgoing,
    channel: &ResolvedChannel,
    route: &FallbackRoute,
) -> Result<Envelope, String> {
    let text = match &channel.fallback_text {
        Some(template) => {
            template
                .render(FALLBACK_TEXT, None, &envelope.content.data)
                .map_err(|e| format!("the fallback text: {e}"))?
                .text
        }
        None => outgoing.text.clone(),
    };
    if text.trim().is_empty() {
        return Err("the fallback text is empty".into());
    }
    let mut next = envelope.clone();
    next.channel = route.channel.clone();
    next.content = Content {
        subject: outgoing.subject.clone(),
        body: Some(text),
        template: None,
        data: envelope.content.data.clone(),
        locale: envelope.content.locale.clone(),
    };
    next.fallback = Some(FallbackOrigin {
        channel: envelope.channel.clone(),
        attempts: envelope.attempts,
    });
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use ump_core::model::{MessageId, Priority};
    use ump_core::resources::{ChannelType, DeliveryPolicy, MessageChannel};

    fn registry(fallback: serde_json::Value) -> ChannelRegistry {
        let channel = |name: &str, kind: &str, policy: Option<&str>| {
            let mut value = json!({
                "apiVersion": "ump.dev/v1alpha1", "kind": "MessageChannel",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"type": kind, "providers": [{"name": "sandbox", "type": "sandbox"}],
                         "topic": {"name": format!("custom.{name}")}}
            });
            if let Some(policy) = policy {
                value["spec"]["policyRef"] = json!(policy);
            }
            serde_json::from_value::<MessageChannel>(value).expect("channel")
        };
        let policy: DeliveryPolicy = serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "DeliveryPolicy",
            "metadata": {"name": "kakao", "namespace": "shop"},
            "spec": {"fallback": fallback}
        }))
        .expect("policy");
        ChannelRegistry::resolve(
            vec![
                channel("alimtalk", "alimtalk", Some("kakao")),
                channel("sms", "sms", None),
            ],
            vec![policy],
        )
        .expect("registry")
    }

    fn envelope() -> Envelope {
        Envelope {
            id: MessageId::new(),
            tenant: "t".into(),
            channel: "alimtalk".into(),
            to: "+821012345678".into(),
            content: Content {
                template: Some("shipped".into()),
                data: json!({"name": "김민수", "order": 42})
                    .as_object()
                    .cloned()
                    .expect("object"),
                locale: Some("ko".into()),
                ..Default::default()
            },
            priority: Priority::Bulk,
            send_at: None,
            tags: vec!["order".into()],
            metadata: Default::default(),
            idempotency_key: Some("order-42".into()),
            category: Default::default(),
            accepted_at: Utc::now(),
            attempts: 2,
            fallback: None,
        }
    }

    fn outgoing(envelope: &Envelope) -> Outgoing {
        Outgoing {
            id: envelope.id,
            tenant: envelope.tenant.clone(),
            channel: envelope.channel.clone(),
            channel_type: ChannelType::Alimtalk,
            to: envelope.to.clone(),
            subject: None,
            text: "김민수님, 주문 42번이 출발했습니다".into(),
            html: None,
            template: Some("SHIPPED".into()),
            data: envelope.content.data.clone(),
            metadata: Default::default(),
            category: Default::default(),
            attempt: 2,
        }
    }

    #[test]
    fn the_copy_carries_the_rendered_fallback_text_and_where_it_came_from() {
        let registry =
            registry(json!({"channel": "sms", "text": "[UMP] {{ name }}님 주문 {{ order }} 출발"}));
        let alimtalk = registry.get("alimtalk").expect("alimtalk");
        let route = FallbackRoute::of(alimtalk, &registry).expect("route");
        assert_eq!(
            route,
            FallbackRoute {
                channel: "sms".into(),
                queue: "custom.sms".into()
            }
        );
        let original = envelope();
        let copy =
            fallback_envelope(&original, &outgoing(&original), alimtalk, &route).expect("copy");
        assert_eq!(copy.id, original.id, "the same message");
        assert_eq!(copy.channel, "sms");
        assert_eq!(
            copy.content.body.as_deref(),
            Some("[UMP] 김민수님 주문 42 출발")
        );
        assert_eq!(copy.content.template, None);
        assert_eq!(
            copy.fallback,
            Some(FallbackOrigin {
                channel: "alimtalk".into(),
                attempts: 2
            })
        );
        assert_eq!(copy.attempts, 2, "attempts go on counting");
        assert_eq!(copy.idempotency_key, original.idempotency_key);
    }

    #[test]
    fn without_a_fallback_text_the_refused_text_goes() {
        let registry = registry(json!({"channel": "sms"}));
        let alimtalk = registry.get("alimtalk").expect("alimtalk");
        let route = FallbackRoute::of(alimtalk, &registry).expect("route");
        let original = envelope();
        let copy =
            fallback_envelope(&original, &outgoing(&original), alimtalk, &route).expect("copy");
        assert_eq!(
            copy.content.body.as_deref(),
            Some("김민수님, 주문 42번이 출발했습니다")
        );
    }

    #[test]
    fn an_unknown_fallback_channel_gets_the_default_topic_and_no_self_loop() {
        let registry = registry(json!({"channel": "kakao-sms"}));
        let alimtalk = registry.get("alimtalk").expect("alimtalk");
        assert_eq!(
            FallbackRoute::of(alimtalk, &registry).map(|r| r.queue),
            Some("ump.shop.kakao-sms".into())
        );
        let looped = self::registry(json!({"channel": "alimtalk"}));
        assert_eq!(
            FallbackRoute::of(looped.get("alimtalk").expect("alimtalk"), &looped),
            None
        );
        let sms = looped.get("sms").expect("sms");
        assert_eq!(FallbackRoute::of(sms, &looped), None, "no policy, no route");
    }
}

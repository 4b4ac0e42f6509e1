//! The channel registry: `MessageChannel` and `DeliveryPolicy` documents (from a folder of YAML in
//! the all-in-one mode and for a worker's mounted ConfigMap; from the cluster in cluster mode)
//! resolved into what the api and the worker use: each channel with its effective policy and its
//! compiled templates.

use crate::resources::{
    ChannelType, DeliveryPolicy, DeliveryPolicySpec, MessageChannel, TemplateSpec,
};
use crate::template::{TemplateError, TemplateSet};
use kube::ResourceExt;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {index}: {detail}")]
    Parse {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("channel {channel}: {source}")]
    Template {
        channel: String,
        #[source]
        source: TemplateError,
    },
    #[error("channel {channel} is invalid: {problems}")]
    Invalid { channel: String, problems: String },
    #[error("channel {channel}: DeliveryPolicy {policy} is invalid: {problems}")]
    InvalidPolicy {
        channel: String,
        policy: String,
        problems: String,
    },
    #[error("channel {0} is defined twice")]
    DuplicateChannel(String),
}

impl ConfigError {
    /// The channel the error leaves out, when it is about one.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Self::Template { channel, .. }
            | Self::Invalid { channel, .. }
            | Self::InvalidPolicy { channel, .. }
            | Self::DuplicateChannel(channel) => Some(channel),
            Self::Read { .. } | Self::Parse { .. } => None,
        }
    }
}

/// A channel ready for use.
#[derive(Debug)]
pub struct ResolvedChannel {
    pub resource: MessageChannel,
    /// The referenced policy's spec, or the defaults when it has none.
    pub policy: DeliveryPolicySpec,
    /// Set when the channel names a policy that does not exist (the defaults apply meanwhile).
    pub missing_policy: Option<String>,
    pub templates: TemplateSet,
    /// The policy's `fallback.text`, compiled (it is rendered with the send's `data`); `None`
    /// when the policy has no fallback or no text for it.
    pub fallback_text: Option<TemplateSet>,
}

/// Name of the one template in [`ResolvedChannel::fallback_text`].
pub const FALLBACK_TEXT: &str = "fallback";

impl ResolvedChannel {
    pub fn name(&self) -> String {
        self.resource.name_any()
    }
    pub fn channel_type(&self) -> ChannelType {
        self.resource.spec.channel_type
    }
    /// Says so in the log when the channel's DeliveryPolicy was not found and it runs on the
    /// defaults: once, where a process starts delivering the channel's messages.
    pub fn warn_if_policy_missing(&self) {
        if let Some(policy) = &self.missing_policy {
            tracing::warn!(channel = %self.name(), %policy, "DeliveryPolicy not found; using defaults");
        }
    }
}

/// Every channel UMP knows, by name.
#[derive(Debug, Default)]
pub struct ChannelRegistry {
    channels: BTreeMap<String, Arc<ResolvedChannel>>,
}

impl ChannelRegistry {
    /// Resolves every channel; the first invalid one fails the whole registry (a config folder is
    /// fixed by its author before anything starts).
    pub fn resolve(
        channels: Vec<MessageChannel>,
        policies: Vec<DeliveryPolicy>,
    ) -> Result<Self, ConfigError> {
        let (registry, mut errors) = Self::resolve_valid(channels, policies);
        match errors.is_empty() {
            true => Ok(registry),
            false => Err(errors.remove(0)),
        }
    }

    /// Resolves the valid channels and reports the others: one broken object in a cluster must
    /// not take the other channels away. A channel is left out when its spec has problems
    /// (`validate::channel_problems`), its templates do not compile, or the policy it names has
    /// problems (`validate::policy_problems`); a policy that does not exist leaves the defaults
    /// in force (`missing_policy`).
    pub fn resolve_valid(
        channels: Vec<MessageChannel>,
        policies: Vec<DeliveryPolicy>,
    ) -> (Self, Vec<ConfigError>) {
        let policies: BTreeMap<(String, String), DeliveryPolicySpec> = policies
            .into_iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p.spec))
            .collect();
        let mut resolved = BTreeMap::new();
        let mut errors = Vec::new();
        for channel in channels {
            let name = channel.name_any();
            let problems = crate::validate::channel_problems(&channel);
            if !problems.is_empty() {
                errors.push(ConfigError::Invalid {
                    channel: name,
                    problems: problems.join("; "),
                });
                continue;
            }
            let templates = match TemplateSet::compile(
                &channel.spec.templates,
                channel.spec.fallback_locale.as_deref(),
            ) {
                Ok(templates) => templates,
                Err(source) => {
                    errors.push(ConfigError::Template {
                        channel: name,
                        source,
                    });
                    continue;
                }
            };
            let (policy, missing_policy) = match &channel.spec.policy_ref {
                None => (DeliveryPolicySpec::default(), None),
                Some(policy_name) => {
                    let key = (channel.namespace().unwrap_or_default(), policy_name.clone());
                    match policies.get(&key) {
                        Some(spec) => {
                            let problems = crate::validate::policy_problems(spec);
                            if !problems.is_empty() {
                                errors.push(ConfigError::InvalidPolicy {
                                    channel: name,
                                    policy: policy_name.clone(),
                                    problems: problems.join("; "),
                                });
                                continue;
                            }
                            (spec.clone(), None)
                        }
                        None => (DeliveryPolicySpec::default(), Some(policy_name.clone())),
                    }
                }
            };
            let fallback_text = match policy.fallback.as_ref().and_then(|f| f.text.as_ref()) {
                None => None,
                Some(text) => {
                    let spec = TemplateSpec {
                        name: FALLBACK_TEXT.to_owned(),
                        text: text.clone(),
                        ..TemplateSpec::default()
                    };
                    match TemplateSet::compile(&[spec], None) {
                        Ok(compiled) => Some(compiled),
                        Err(source) => {
                            errors.push(ConfigError::Template {
                                channel: name,
                                source,
                            });
                            continue;
                        }
                    }
                }
            };
            let entry = Arc::new(ResolvedChannel {
                resource: channel,
                policy,
                missing_policy,
                templates,
                fallback_text,
            });
            if resolved.insert(name.clone(), entry).is_some() {
                errors.push(ConfigError::DuplicateChannel(name));
            }
        }
        (Self { channels: resolved }, errors)
    }

    /// `self`, with the channels of `previous` that `errors` left out kept as they were: a
    /// channel whose spec or policy turned invalid keeps its last valid configuration, as its
    /// workers do (the operator does not hand them an invalid one), until it is fixed. A channel
    /// that was never valid stays out. Returns the names kept.
    pub fn keep_last_valid(
        &mut self,
        previous: &ChannelRegistry,
        errors: &[ConfigError],
    ) -> Vec<String> {
        let mut kept = Vec::new();
        for name in errors.iter().filter_map(ConfigError::channel) {
            if self.channels.contains_key(name) {
                continue;
            }
            if let Some(last) = previous.channels.get(name) {
                self.channels.insert(name.to_owned(), Arc::clone(last));
                kept.push(name.to_owned());
            }
        }
        kept
    }

    /// Reads every `*.yaml` / `*.yml` file of `dir` (multi-document files allowed); documents of
    /// other kinds are ignored, so a folder of mixed manifests works.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let read_err = |path: &Path, source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| read_err(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        let (mut channels, mut policies) = (Vec::new(), Vec::new());
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            parse_documents(&path, &text, &mut channels, &mut policies)?;
        }
        Self::resolve(channels, policies)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ResolvedChannel>> {
        self.channels.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    pub fn channels(&self) -> impl Iterator<Item = &Arc<ResolvedChannel>> {
        self.channels.values()
    }
}

fn parse_documents(
    path: &Path,
    text: &str,
    channels: &mut Vec<MessageChannel>,
    policies: &mut Vec<DeliveryPolicy>,
) -> Result<(), ConfigError> {
    #[derive(Deserialize)]
    struct Head {
        kind: Option<String>,
    }
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let parse_err = |detail: String| ConfigError::Parse {
            path: path.to_owned(),
            index,
            detail,
        };
        let value =
            serde_yaml_ng::Value::deserialize(document).map_err(|e| parse_err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let head: Head =
            serde_yaml_ng::from_value(value.clone()).map_err(|e| parse_err(e.to_string()))?;
        match head.kind.as_deref() {
            Some("MessageChannel") => channels
                .push(serde_yaml_ng::from_value(value).map_err(|e| parse_err(e.to_string()))?),
            Some("DeliveryPolicy") => policies
                .push(serde_yaml_ng::from_value(value).map_err(|e| parse_err(e.to_string()))?),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = r#"
apiVersion: ump.dev/v1alpha1
kind: DeliveryPolicy
metadata: {name: standard}
spec:
  rateLimit: {perSecond: 100}
  dedupe: {window: 5m}
  quietHours: {start: "21:00", end: "08:00", timezone: Asia/Seoul}
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: sms}
spec:
  type: sms
  policyRef: standard
  providers: [{name: sandbox, type: sandbox}]
  templates:
    - name: otp
      text: "인증번호는 {{ code }} 입니다"
---
apiVersion: ump.dev/v1alpha1
kind: MessageChannel
metadata: {name: email}
spec:
  type: email
  policyRef: missing
  providers: [{name: sandbox, type: sandbox}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;

    #[test]
    fn resolves_policies_and_templates() {
        let (mut channels, mut policies) = (Vec::new(), Vec::new());
        parse_documents(Path::new("t.yaml"), DOCS, &mut channels, &mut policies).expect("parse");
        let registry = ChannelRegistry::resolve(channels, policies).expect("resolve");
        assert_eq!(registry.names().collect::<Vec<_>>(), ["email", "sms"]);
        let sms = registry.get("sms").expect("sms");
        assert_eq!(sms.channel_type(), ChannelType::Sms);
        assert_eq!(sms.policy.dedupe.window.as_std().as_secs(), 300);
        assert_eq!(
            sms.policy.rate_limit.as_ref().map(|r| r.per_second),
            Some(100)
        );
        assert!(sms.templates.contains("otp"));
        let email = registry.get("email").expect("email");
        assert_eq!(email.missing_policy.as_deref(), Some("missing"));
        assert_eq!(email.policy, DeliveryPolicySpec::default());
    }

    #[test]
    fn locales_and_the_fallback_text_compile_from_yaml() {
        let yaml = r#"
kind: DeliveryPolicy
metadata: {name: kakao}
spec:
  fallback: {channel: sms, text: "{{ name }}님, 알림톡 대신 문자로 보냅니다"}
---
kind: MessageChannel
metadata: {name: alimtalk}
spec:
  type: alimtalk
  policyRef: kakao
  fallbackLocale: en
  providers: [{name: sandbox, type: sandbox}]
  templates:
    - name: shipped
      code: SHIPPED_KO
      text: "{{ name }}님, 주문이 출발했습니다"
      locales:
        en: {code: SHIPPED_EN, text: "{{ name }}, your order has shipped"}
---
kind: MessageChannel
metadata: {name: broken}
spec:
  type: sms
  fallbackLocale: "not a locale"
  providers: [{name: sandbox, type: sandbox}]
"#;
        let (mut channels, mut policies) = (Vec::new(), Vec::new());
        parse_documents(Path::new("t.yaml"), yaml, &mut channels, &mut policies).expect("parse");
        let (registry, errors) = ChannelRegistry::resolve_valid(channels, policies);
        assert!(
            matches!(&errors[..], [ConfigError::Template { channel, .. }] if channel == "broken"),
            "{errors:?}"
        );
        let alimtalk = registry.get("alimtalk").expect("alimtalk");
        let data = serde_json::json!({"name": "Kim"});
        let data = data.as_object().expect("object");
        // No locale: the channel's fallback locale (en) wins over the default parts.
        let rendered = alimtalk
            .templates
            .render("shipped", None, data)
            .expect("render");
        assert_eq!(rendered.code, "SHIPPED_EN");
        let rendered = alimtalk
            .templates
            .render("shipped", Some("ko-KR"), data)
            .expect("render");
        assert_eq!(
            rendered.code, "SHIPPED_EN",
            "no ko variant: the fallback locale"
        );
        let fallback = alimtalk.fallback_text.as_ref().expect("fallback text");
        assert_eq!(
            fallback
                .render(FALLBACK_TEXT, None, data)
                .expect("render")
                .text,
            "Kim님, 알림톡 대신 문자로 보냅니다"
        );
    }

    /// The all-in-one mode and a worker's folder get the operator's checks: a channel with
    /// problems, or naming a policy with problems, is refused with them; the others resolve.
    #[test]
    fn channels_and_policies_with_problems_are_left_out_naming_them() {
        let yaml = r#"
kind: DeliveryPolicy
metadata: {name: backwards}
spec:
  retry: {initialBackoff: 10m, maxBackoff: 1m}
  rateLimit: {perSecond: 5, burst: 0}
---
kind: MessageChannel
metadata: {name: uses-backwards}
spec: {type: sms, policyRef: backwards, providers: [{name: a, type: sandbox}]}
---
kind: MessageChannel
metadata: {name: twice}
spec: {type: sms, providers: [{name: a, type: sandbox}, {name: a, type: sandbox}]}
---
kind: MessageChannel
metadata: {name: none}
spec: {type: sms, providers: []}
---
kind: MessageChannel
metadata: {name: good}
spec: {type: sms, providers: [{name: a, type: sandbox}]}
"#;
        let (mut channels, mut policies) = (Vec::new(), Vec::new());
        parse_documents(Path::new("t.yaml"), yaml, &mut channels, &mut policies).expect("parse");
        let (registry, errors) = ChannelRegistry::resolve_valid(channels.clone(), policies.clone());
        assert_eq!(registry.names().collect::<Vec<_>>(), ["good"]);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "channel uses-backwards: DeliveryPolicy backwards is invalid: retry.initialBackoff \
                 (10m) is longer than retry.maxBackoff (1m); rateLimit.burst must be at least 1",
                "channel twice is invalid: provider name \"a\" is used twice; names identify \
                 providers in metrics and history",
                "channel none is invalid: the channel has no providers",
            ]
        );
        let refused = ChannelRegistry::resolve(channels, policies).expect_err("refused");
        assert_eq!(refused.to_string(), errors[0]);
        assert_eq!(refused.channel(), Some("uses-backwards"));
    }

    #[test]
    fn a_channel_that_turns_invalid_keeps_its_last_valid_configuration() {
        let parse = |yaml: &str| {
            let (mut channels, mut policies) = (Vec::new(), Vec::new());
            parse_documents(Path::new("t.yaml"), yaml, &mut channels, &mut policies)
                .expect("parse");
            ChannelRegistry::resolve_valid(channels, policies)
        };
        let channel = "kind: MessageChannel\nmetadata: {name: sms}\n\
                       spec: {type: sms, policyRef: p, providers: [{name: a, type: sandbox}]}\n";
        let policy = |backoff: &str| {
            format!(
                "kind: DeliveryPolicy\nmetadata: {{name: p}}\n\
                 spec: {{retry: {{initialBackoff: {backoff}, maxBackoff: 1m}}}}\n---\n{channel}"
            )
        };
        let (good, errors) = parse(&policy("1s"));
        assert!(errors.is_empty(), "{errors:?}");
        let (mut fresh, errors) = parse(&policy("2m"));
        assert_eq!(fresh.names().count(), 0);
        assert_eq!(fresh.keep_last_valid(&good, &errors), ["sms"]);
        let kept = fresh.get("sms").expect("kept");
        assert_eq!(kept.policy.retry.initial_backoff.as_std().as_secs(), 1);
        // Never valid: nothing to keep.
        let (mut fresh, errors) = parse(&policy("2m"));
        let empty = ChannelRegistry::resolve_valid(Vec::new(), Vec::new()).0;
        assert!(fresh.keep_last_valid(&empty, &errors).is_empty());
        assert_eq!(fresh.names().count(), 0);
    }

    #[test]
    fn the_example_channels_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/channels");
        let registry = ChannelRegistry::load_dir(&dir).expect("examples/channels loads");
        assert_eq!(
            registry.names().collect::<Vec<_>>(),
            ["alimtalk", "email", "friendtalk", "push", "sms"]
        );
        assert!(registry.channels().all(|c| c.missing_policy.is_none()));
    }

    #[test]
    fn parse_errors_name_file_and_document() {
        let (mut channels, mut policies) = (Vec::new(), Vec::new());
        let err = parse_documents(
            Path::new("bad.yaml"),
            "kind: MessageChannel\nmetadata: {name: x}\nspec: {type: fax, providers: []}\n",
            &mut channels,
            &mut policies,
        )
        .expect_err("fax is not a channel type");
        assert!(
            err.to_string().starts_with("bad.yaml: document 0:"),
            "{err}"
        );
    }
}

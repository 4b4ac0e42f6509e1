//! Parsing and validating a send request. Every rule names the field at fault; nothing that fails
//! here is ever enqueued. Pure functions: the handlers add authentication and I/O around them.

use crate::problem::FieldError;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use ump_core::config::{ChannelRegistry, ResolvedChannel};
use ump_core::model::{Content, Priority};
use ump_core::resources::ChannelType;
use ump_core::template::TemplateError;
use utoipa::ToSchema;

/// `POST /v1/messages` body. Give either `body` (with `subject` for email) or `template` + `data`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
// The contract: the OpenAPI document's schema, and the fields `validate` accepts (`FIELDS`).
// Values are read field by field in `validate`, so that every fault is named, not the first.
#[allow(dead_code)]
pub struct SendMessageRequest {
    /// A `MessageChannel` name.
    #[schema(example = "sms", min_length = 1)]
    pub channel: String,
    /// E.164 phone number (sms, alimtalk, friendtalk), email address (email), device token (push), or a
    /// recipient id (webhook). Give this or `user`.
    #[schema(example = "+821012345678", min_length = 1)]
    pub to: Option<String>,
    /// A person with a profile (`PUT /v1/users/{user_id}`), instead of `to`: the message goes to
    /// their contact point for the channel, in their locale unless `locale` is given.
    #[schema(example = "kim-1", min_length = 1, max_length = 255)]
    pub user: Option<String>,
    /// `transactional` (default) or `marketing`: advertising, sent only to a `user` who consented
    /// to it on the channel's kind (and, between 21:00 and 08:00 their time, to night-time
    /// advertising); never over AlimTalk, which carries informational messages only (advertising
    /// over Kakao is FriendTalk). On SMS the text is marked: "(광고)" and the channel's sender
    /// name first, "무료수신거부" and its opt-out number last (the channel must have
    /// `advertising.optOut`); FriendTalk goes out with Kakao's ad flag, which marks it.
    #[schema(value_type = Option<Category>)]
    pub category: Option<String>,
    /// One line: no line breaks or other control characters.
    #[schema(
        max_length = 998,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
    )]
    pub subject: Option<String>,
    #[schema(max_length = 65536)]
    pub body: Option<String>,
    /// A stored template of the channel.
    pub template: Option<String>,
    /// With `user`: the person's recommended catalog items, put in `data` as
    /// `recommendations` for the template (`{{ recommendations[0].name }}`); `data` values
    /// written `$recommendations.<i>.<field>` become that item's field. A person without the
    /// items the message needs is refused (422, `recommendations`).
    #[schema(value_type = Option<crate::recommendations::WantedSchema>)]
    pub recommendations: Option<Value>,
    /// The template's variables. Their values are inserted as text, never run as template code.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
    /// The template's locale variant to use (BCP 47, e.g. `en-US`); without a matching variant,
    /// the channel's `fallbackLocale`, else the template's default parts.
    #[schema(
        example = "ko",
        max_length = 35,
        pattern = "^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"
    )]
    pub locale: Option<String>,
    /// `bulk` (Kafka, default) or `realtime` (ActiveMQ).
    #[schema(value_type = Option<Priority>, example = "bulk")]
    pub priority: Option<String>,
    /// RFC 3339 time to send at (at most a year ahead).
    #[schema(format = DateTime, example = "2026-12-01T09:00:00+09:00")]
    pub send_at: Option<String>,
    #[schema(value_type = Option<Vec<Tag>>, max_items = 20)]
    pub tags: Option<Vec<String>>,
    /// At most 4096 bytes as JSON.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A tag: 1 to 64 characters, no control characters.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
#[allow(dead_code)] // documents the contract (OpenAPI)
pub struct Tag(String);

pub use ump_core::model::Category;

/// The fields of a send request: the properties of its documented schema, so the request the
/// API accepts and the one its OpenAPI document describes cannot differ.
static FIELDS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let schema = serde_json::to_value(<SendMessageRequest as utoipa::PartialSchema>::schema())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
});
const MAX_BODY_CHARS: usize = 65_536;
const MAX_SUBJECT_CHARS: usize = 998;
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 64;
const MAX_METADATA_BYTES: usize = 4096;
const MAX_DATA_BYTES: usize = 65_536;
/// Deepest nesting of `data` and `metadata` (objects and arrays, the field itself included). The
/// queued envelope nests them further, and every JSON reader on the way stops at 128 levels.
const MAX_DEPTH: usize = 32;

/// A request that passed validation: everything an envelope needs but its id, tenant and time.
#[derive(Debug)]
pub struct ValidSend {
    pub channel: Arc<ResolvedChannel>,
    pub to: String,
    pub content: Content,
    pub priority: Priority,
    pub category: Category,
    pub send_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

/// Validates one send request; `prefix` is prepended to field names (`messages[3].`).
pub fn validate(
    value: &Value,
    registry: &ChannelRegistry,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<ValidSend, Vec<FieldError>> {
    let mut errors = Vec::new();
    let field = |name: &str| format!("{prefix}{name}");
    let Some(object) = value.as_object() else {
        let name = prefix.trim_end_matches('.');
        return Err(vec![FieldError::new(
            if name.is_empty() { "$" } else { name },
            "must be a JSON object",
        )]);
    };
    for key in object.keys() {
        if !FIELDS.iter().any(|known| known == key) {
            errors.push(FieldError::new(field(key), "unknown field"));
        }
    }

    let string = |name: &str, required: bool, errors: &mut Vec<FieldError>| -> Option<String> {
        match object.get(name) {
            None | Some(Value::Null) if required => {
                errors.push(FieldError::new(field(name), "is required"));
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(field(name), "must be a string"));
                None
            }
        }
    };
    let channel_name = string("channel", true, &mut errors);
    // An ask for recommendations is taken out with `user` (`messages::resolve_person`).
    if object.get("recommendations").is_some_and(|v| !v.is_null()) {
        errors.push(FieldError::new(
            field("recommendations"),
            "recommendations are a person's: give user instead of to",
        ));
    }
    // A `user` is replaced by their contact point before validation (`messages::resolve_person`).
    let to = string("to", true, &mut errors);
    let category = match string("category", false, &mut errors).as_deref() {
        None | Some("transactional") => Category::Transactional,
        Some("marketing") => Category::Marketing,
        Some(_) => {
            errors.push(FieldError::new(
                field("category"),
                "transactional or marketing",
            ));
            Category::Transactional
        }
    };
    let subject = string("subject", false, &mut errors);
    let body = string("body", false, &mut errors);
    let template = string("template", false, &mut errors);
    let priority = string("priority", false, &mut errors);
    let send_at = string("send_at", false, &mut errors);
    let locale = string("locale", false, &mut errors);
    if let Some(tag) = &locale
        && !ump_core::template::is_locale_tag(tag)
    {
        errors.push(FieldError::new(
            field("locale"),
            "must be a locale tag such as ko or en-US",
        ));
    }

    let object_field = |name: &str, errors: &mut Vec<FieldError>| -> Map<String, Value> {
        match object.get(name) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => {
                errors.push(FieldError::new(field(name), "must be a JSON object"));
                Map::new()
            }
        }
    };
    let data = object_field("data", &mut errors);
    check_data_references(&data, &field, &mut errors);
    let metadata = object_field("metadata", &mut errors);
    check_sizes(&data, &metadata, &field, &mut errors);
    let tags = tags_of(object.get("tags"), &field, &mut errors);
    let channel = channel_name
        .as_deref()
        .and_then(|name| channel_of(name, registry, &field, &mut errors));
    let priority = priority_of(priority.as_deref(), channel.as_deref(), &field, &mut errors);
    let send_at = send_at.and_then(|text| send_at_of(&text, now, &field, &mut errors));
    check_text(subject.as_deref(), body.as_deref(), &field, &mut errors);

    if let Some(channel) = &channel {
        if let Some(to) = &to
            && let Err(detail) = check_recipient(channel.channel_type(), to)
        {
            errors.push(FieldError::new(field("to"), detail));
        }
        check_content(
            channel,
            &subject,
            &body,
            &template,
            locale.as_deref(),
            &data,
            &field,
            &mut errors,
        );
    }

    match (channel, to) {
        (Some(channel), Some(to)) if errors.is_empty() => Ok(ValidSend {
            channel,
            to,
            content: Content {
                subject,
                body,
                template,
                data,
                locale,
            },
            priority,
            category,
            send_at,
            tags,
            metadata,
        }),
        _ => Err(errors),
    }
}

/// No recommended item's field (`$recommendations.<i>.<field>`) left in `data`.
fn check_data_references(
    data: &Map<String, Value>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    // A send that asks for recommendations has its references filled before this
    // (`messages::resolve_person`); one left is in a send that did not ask.
    for (name, value) in data {
        if value
            .as_str()
            .and_then(ump_automation::recommend::data_reference)
            .is_some()
        {
            errors.push(FieldError::new(
                field(&format!("data.{name}")),
                "a recommended item's field: ask for recommendations (with user) to use it",
            ));
        }
    }
}

/// The nesting and size of `data` and `metadata`.
fn check_sizes(
    data: &Map<String, Value>,
    metadata: &Map<String, Value>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    for (name, map, max_bytes) in [
        ("data", data, MAX_DATA_BYTES),
        ("metadata", metadata, MAX_METADATA_BYTES),
    ] {
        if 1 + map.values().map(depth).max().unwrap_or(0) > MAX_DEPTH {
            errors.push(FieldError::new(
                field(name),
                format!("must nest at most {MAX_DEPTH} levels deep"),
            ));
        } else if serde_json::to_vec(map).map_or(0, |v| v.len()) > max_bytes {
            errors.push(FieldError::new(
                field(name),
                format!("must be at most {max_bytes} bytes"),
            ));
        }
    }
}

/// `tags`: at most `MAX_TAGS` strings of 1 to `MAX_TAG_CHARS` printable characters.
fn tags_of(
    value: Option<&Value>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_TAGS {
                errors.push(FieldError::new(
                    field("tags"),
                    format!("at most {MAX_TAGS} tags"),
                ));
            }
            items
                .iter()
                .enumerate()
                .filter_map(|(i, tag)| match tag.as_str() {
                    Some(t)
                        if !t.is_empty()
                            && t.chars().count() <= MAX_TAG_CHARS
                            && !has_control(t) =>
                    {
                        Some(t.to_owned())
                    }
                    _ => {
                        errors.push(FieldError::new(
                            field(&format!("tags[{i}]")),
                            format!(
                                "must be a string of 1 to {MAX_TAG_CHARS} printable characters"
                            ),
                        ));
                        None
                    }
                })
                .collect()
        }
        Some(_) => {
            errors.push(FieldError::new(
                field("tags"),
                "must be an array of strings",
            ));
            Vec::new()
        }
    }
}

/// The channel named `name`, or a problem listing the known ones.
fn channel_of(
    name: &str,
    registry: &ChannelRegistry,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<Arc<ResolvedChannel>> {
    let found = registry.get(name).cloned();
    if found.is_none() {
        let known: Vec<&str> = registry.names().collect();
        errors.push(FieldError::new(
            field("channel"),
            format!("unknown channel {name:?} (known: {})", known.join(", ")),
        ));
    }
    found
}

/// `priority`: `bulk` (default) or `realtime`, which the channel must enable.
fn priority_of(
    text: Option<&str>,
    channel: Option<&ResolvedChannel>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Priority {
    match text {
        None | Some("bulk") => Priority::Bulk,
        Some("realtime") => {
            if let Some(channel) = channel
                && !channel.resource.spec.realtime.enabled
            {
                errors.push(FieldError::new(
                    field("priority"),
                    format!(
                        "realtime delivery is not enabled on channel {:?}",
                        channel.name()
                    ),
                ));
            }
            Priority::Realtime
        }
        Some(other) => {
            errors.push(FieldError::new(
                field("priority"),
                format!("must be \"bulk\" or \"realtime\", not {other:?}"),
            ));
            Priority::Bulk
        }
    }
}

/// `send_at`: an RFC 3339 time with an offset, at most a year after `now`.
fn send_at_of(
    text: &str,
    now: DateTime<Utc>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(text) {
        Ok(at) if at.with_timezone(&Utc) > now + chrono::Duration::days(366) => {
            errors.push(FieldError::new(
                field("send_at"),
                "must be at most a year ahead",
            ));
            None
        }
        Ok(at) => Some(at.with_timezone(&Utc)),
        Err(_) => {
            errors.push(FieldError::new(
                field("send_at"),
                "must be an RFC 3339 time with an offset, e.g. 2026-12-01T09:00:00+09:00",
            ));
            None
        }
    }
}

/// `subject` (one line, at most `MAX_SUBJECT_CHARS`) and `body` (at most `MAX_BODY_CHARS`).
fn check_text(
    subject: Option<&str>,
    body: Option<&str>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    if let Some(subject) = subject {
        // A subject becomes a mail header: one line, and no control character a header could
        // be cut or smuggled with.
        if has_line_break(subject) || has_control(subject) {
            errors.push(FieldError::new(
                field("subject"),
                "must be one line without control characters",
            ));
        } else if subject.chars().count() > MAX_SUBJECT_CHARS {
            errors.push(FieldError::new(
                field("subject"),
                format!("at most {MAX_SUBJECT_CHARS} characters"),
            ));
        }
    }
    if let Some(body) = body
        && body.chars().count() > MAX_BODY_CHARS
    {
        errors.push(FieldError::new(
            field("body"),
            format!("at most {MAX_BODY_CHARS} characters"),
        ));
    }
}

#[allow(clippy::too_many_arguments)] // the parts of one request, checked together
fn check_content(
    channel: &ResolvedChannel,
    subject: &Option<String>,
    body: &Option<String>,
    template: &Option<String>,
    locale: Option<&str>,
    data: &Map<String, Value>,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    // The policy's fallback text is rendered with the same data if the channel's provider
    // refuses the message: a variable it lacks must fail now, not on the fallback channel.
    if let Some(fallback) = &channel.fallback_text
        && let Err(TemplateError::MissingVariable(var)) =
            fallback.check(ump_core::config::FALLBACK_TEXT, None, data)
    {
        errors.push(FieldError::new(
            field(&format!("data.{var}")),
            "is used by the policy's fallback text but missing",
        ));
    }
    match (body, template) {
        (Some(_), Some(_)) => errors.push(FieldError::new(
            field("template"),
            "give either body or template, not both",
        )),
        (None, None) => errors.push(FieldError::new(
            field("body"),
            "is required (or give a template)",
        )),
        (Some(body), None) => {
            if body.trim().is_empty() {
                errors.push(FieldError::new(field("body"), "must not be empty"));
            }
            if channel.channel_type() == ChannelType::Email
                && subject.as_deref().is_none_or(|s| s.trim().is_empty())
            {
                errors.push(FieldError::new(field("subject"), "is required for email"));
            }
        }
        (None, Some(name)) => match channel.templates.check(name, locale, data) {
            Ok(()) => {}
            Err(TemplateError::MissingVariable(var)) => errors.push(FieldError::new(
                field(&format!("data.{var}")),
                match locale {
                    Some(tag) => format!("is used by the template (locale {tag}) but missing"),
                    None => "is used by the template but missing".to_owned(),
                },
            )),
            Err(_) => errors.push(FieldError::new(
                field("template"),
                format!("unknown template {name:?} on channel {:?}", channel.name()),
            )),
        },
    }
}

/// Levels of arrays and objects in `value` (0 for a scalar). The parser bounds the recursion.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn has_line_break(text: &str) -> bool {
    text.contains(['\r', '\n', '\u{2028}', '\u{2029}', '\u{85}'])
}

/// Checks `to` for the channel's kind of recipient.
pub fn check_recipient(channel_type: ChannelType, to: &str) -> Result<(), String> {
    match channel_type {
        ChannelType::Sms | ChannelType::Alimtalk | ChannelType::Friendtalk => is_e164(to)
            .then_some(())
            .ok_or_else(|| "must be an E.164 phone number, e.g. +821012345678".to_owned()),
        ChannelType::Email => is_email(to)
            .then_some(())
            .ok_or_else(|| "must be an email address, e.g. kim@example.com".to_owned()),
        ChannelType::Push => is_device_token(to)
            .then_some(())
            .ok_or_else(|| "must be a device token (8 to 4096 of A-Z a-z 0-9 : _ - .)".to_owned()),
        ChannelType::Webhook => (!to.is_empty() && to.chars().count() <= 256 && !has_control(to))
            .then_some(())
            .ok_or_else(|| "must be 1 to 256 printable characters".to_owned()),
    }
}

/// `+` and 7 to 15 digits, the first not 0 (ITU-T E.164).
pub fn is_e164(to: &str) -> bool {
    let Some(digits) = to.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A deliverable address (`local@domain`): RFC 5321 lengths, dot-atom local part, a domain of
/// at least two labels. Never whitespace or control characters: an address ends up in a header.
pub fn is_email(to: &str) -> bool {
    if to.len() > 254 || to.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = to.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

fn is_device_token(to: &str) -> bool {
    (8..=4096).contains(&to.len())
        && to
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ump_core::resources::{
        DeliveryPolicy, MessageChannel, MessageChannelSpec, RealtimeSpec, TemplateSpec,
        TemplateVariant,
    };

    #[test]
    fn the_documented_request_is_the_one_checked() {
        let schema = serde_json::to_value(<SendMessageRequest as utoipa::PartialSchema>::schema())
            .expect("schema");
        let mut fields: Vec<&str> = FIELDS.iter().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "body",
                "category",
                "channel",
                "data",
                "locale",
                "metadata",
                "priority",
                "recommendations",
                "send_at",
                "subject",
                "tags",
                "template",
                "to",
                "user"
            ]
        );
        let properties = &schema["properties"];
        assert_eq!(properties["subject"]["maxLength"], json!(MAX_SUBJECT_CHARS));
        assert_eq!(properties["body"]["maxLength"], json!(MAX_BODY_CHARS));
        assert_eq!(properties["tags"]["maxItems"], json!(MAX_TAGS));
        let tag = serde_json::to_value(<Tag as utoipa::PartialSchema>::schema()).expect("schema");
        assert_eq!(tag["maxLength"], json!(MAX_TAG_CHARS));
        // An unknown field is named, a documented one is not.
        let errors = validate(
            &json!({"channel": "sms", "to": "+821012345678", "body": "x", "colour": "red"}),
            &registry(),
            "",
            Utc::now(),
        )
        .expect_err("unknown field");
        let named: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(named, ["colour"]);
    }

    fn registry() -> ChannelRegistry {
        let channel = |name: &str, channel_type, realtime| {
            let mut spec: MessageChannelSpec = serde_json::from_value(json!({
                "type": channel_type, "providers": [{"name": "sandbox", "type": "sandbox"}]
            }))
            .expect("spec");
            spec.realtime = RealtimeSpec {
                enabled: realtime,
                queue: None,
            };
            let mut otp = TemplateSpec {
                name: "otp".into(),
                text: "code {{ code }}".into(),
                ..Default::default()
            };
            otp.locales.insert(
                "en".into(),
                TemplateVariant {
                    text: "{{ name }}, your code is {{ code }}".into(),
                    ..Default::default()
                },
            );
            spec.templates = vec![otp];
            MessageChannel::new(name, spec)
        };
        let mut alimtalk = channel("alimtalk", "alimtalk", false);
        alimtalk.spec.policy_ref = Some("with-fallback".into());
        let policy: DeliveryPolicy = serde_json::from_value(json!({
            "apiVersion": "ump.dev/v1alpha1", "kind": "DeliveryPolicy",
            "metadata": {"name": "with-fallback"},
            "spec": {"fallback": {"channel": "sms", "text": "{{ name }}님, 문자로 보냅니다"}}
        }))
        .expect("policy");
        ChannelRegistry::resolve(
            vec![
                channel("sms", "sms", true),
                channel("email", "email", false),
                channel("push", "push", false),
                alimtalk,
            ],
            vec![policy],
        )
        .expect("registry")
    }

    fn check(value: Value) -> Result<ValidSend, Vec<FieldError>> {
        validate(&value, &registry(), "", Utc::now())
    }

    fn fields(value: Value) -> Vec<String> {
        check(value)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_sms_passes() {
        let valid = check(
            json!({"channel": "sms", "to": "+821012345678", "body": "안녕하세요", "tags": ["otp"]}),
        )
        .expect("valid");
        assert_eq!(valid.to, "+821012345678");
        assert_eq!(valid.priority, Priority::Bulk);
        assert_eq!(valid.tags, ["otp"]);
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let table = [
            (json!({"to": "+821012345678", "body": "x"}), "channel"),
            (
                json!({"channel": "fax", "to": "+821012345678", "body": "x"}),
                "channel",
            ),
            (json!({"channel": "sms", "body": "x"}), "to"),
            (
                json!({"channel": "sms", "to": "010-1234-5678", "body": "x"}),
                "to",
            ),
            (
                json!({"channel": "sms", "to": "+0123456789", "body": "x"}),
                "to",
            ),
            (
                json!({"channel": "email", "to": "kim@", "subject": "s", "body": "x"}),
                "to",
            ),
            (
                json!({"channel": "email", "to": "kim@example.com\r\nBcc: x@y.z", "subject": "s", "body": "x"}),
                "to",
            ),
            (
                json!({"channel": "email", "to": "kim@example.com", "subject": "a\r\nBcc: x@y.z", "body": "x"}),
                "subject",
            ),
            (
                json!({"channel": "email", "to": "kim@example.com", "body": "x"}),
                "subject",
            ),
            (json!({"channel": "push", "to": "short", "body": "x"}), "to"),
            (json!({"channel": "sms", "to": "+821012345678"}), "body"),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "   "}),
                "body",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "template": "otp"}),
                "data.code",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "template": "nope"}),
                "template",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "template": "otp", "data": {"code": 1}}),
                "template",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "send_at": "tomorrow"}),
                "send_at",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "send_at": "2026-12-01T09:00:00"}),
                "send_at",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "send_at": "2099-01-01T00:00:00Z"}),
                "send_at",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "priority": "urgent"}),
                "priority",
            ),
            (
                json!({"channel": "email", "to": "kim@example.com", "subject": "s", "body": "x", "priority": "realtime"}),
                "priority",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "tags": "otp"}),
                "tags",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "tags": [""]}),
                "tags[0]",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "metadata": []}),
                "metadata",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "colour": "red"}),
                "colour",
            ),
            (
                json!({"channel": 7, "to": "+821012345678", "body": "x"}),
                "channel",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "template": "otp", "data": {"code": 1}, "locale": "english"}),
                "locale",
            ),
            (
                json!({"channel": "email", "to": "kim@example.com", "subject": "a\u{0}b", "body": "x"}),
                "subject",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "data": {"a": nested(40)}}),
                "data",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "metadata": {"a": nested(40)}}),
                "metadata",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "body": "x", "data": {"a": "x".repeat(70_000)}}),
                "data",
            ),
            (
                json!({"channel": "sms", "to": "+821012345678", "template": "otp", "data": {"code": 1}, "locale": "en-GB"}),
                "data.name",
            ),
            (
                json!({"channel": "alimtalk", "to": "+821012345678", "template": "otp", "data": {"code": 1}}),
                "data.name",
            ),
        ];
        for (input, field) in table {
            let got = fields(input.clone());
            assert!(
                got.contains(&field.to_owned()),
                "{input} → {got:?}, expected {field}"
            );
        }
    }

    /// `levels` arrays, one inside the other.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn data_may_nest_up_to_the_limit() {
        // `data` itself is the first level.
        let valid = check(
            json!({"channel": "sms", "to": "+821012345678", "template": "otp",
            "data": {"code": nested(MAX_DEPTH - 1)}}),
        )
        .expect("valid at the limit");
        assert_eq!(
            1 + valid.content.data.values().map(depth).max().unwrap_or(0),
            MAX_DEPTH
        );
        assert_eq!(
            fields(
                json!({"channel": "sms", "to": "+821012345678", "template": "otp",
                "data": {"code": nested(MAX_DEPTH)}})
            ),
            ["data"]
        );
    }

    #[test]
    fn the_locale_is_checked_against_its_own_variant() {
        // The default variant needs only `code`; a locale without a variant falls back to it.
        for locale in ["ko", "fr-CA"] {
            let valid = check(
                json!({"channel": "sms", "to": "+821012345678", "template": "otp",
                "data": {"code": 1}, "locale": locale}),
            )
            .expect("valid");
            assert_eq!(valid.content.locale.as_deref(), Some(locale));
        }
        check(
            json!({"channel": "sms", "to": "+821012345678", "template": "otp",
            "data": {"code": 1, "name": "Kim"}, "locale": "en"}),
        )
        .expect("valid with the English variant's variables");
    }

    #[test]
    fn not_an_object_is_named_by_its_path() {
        assert_eq!(fields(json!([1])), ["$"]);
        let errors =
            validate(&json!("x"), &registry(), "messages[2].", Utc::now()).expect_err("invalid");
        assert_eq!(errors[0].field, "messages[2]");
    }

    #[test]
    fn recipients_by_kind() {
        assert!(is_e164("+821012345678"));
        assert!(!is_e164("+82 10 1234 5678"));
        assert!(!is_e164("821012345678"));
        assert!(is_email("kim.minsu+tag@example.co.kr"));
        assert!(is_email("민수@예시.한국"));
        assert!(!is_email("kim@localhost"));
        assert!(!is_email("a..b@example.com"));
        assert!(!is_email("kim @example.com"));
    }
}

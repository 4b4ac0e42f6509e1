//! The advertising markings of a message's final text (Korean law, Act on Promotion of
//! Information and Communications Network Utilization, art. 50): which channels need them, and
//! the marked text. Pure functions; the worker applies them once, where it renders a message for
//! its provider, so a retry (rendered again from the envelope) is never marked twice.

use crate::model::Category;
use crate::resources::{AdvertisingSpec, ChannelType};

/// What starts an advertising text.
pub const AD_PREFIX: &str = "(광고)";
/// What stands before the opt-out number on the last line.
pub const OPT_OUT_LABEL: &str = "무료수신거부";

/// How a channel type carries the advertising markings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marking {
    /// In the text: "(광고)" and the sender first, the opt-out line last (SMS).
    InText,
    /// By the provider: Kakao marks a FriendTalk sent with its ad flag itself, and its opt-out is
    /// blocking the channel; marking the text too would show "(광고)" twice.
    ByProvider,
    /// Not marked by UMP (email, push, webhook: their own rules are the sender's to follow).
    None,
}

/// How advertising on `channel_type` is marked.
pub fn marking(channel_type: ChannelType) -> Marking {
    match channel_type {
        ChannelType::Sms => Marking::InText,
        ChannelType::Friendtalk => Marking::ByProvider,
        ChannelType::Email | ChannelType::Push | ChannelType::Alimtalk | ChannelType::Webhook => {
            Marking::None
        }
    }
}

/// Why a channel cannot take advertising as configured, for the API's refusal (field
/// `channel`) and the worker's safety net; `None` when it can.
pub fn unfit_for_advertising(
    channel: &str,
    channel_type: ChannelType,
    spec: Option<&AdvertisingSpec>,
) -> Option<String> {
    match channel_type {
        ChannelType::Alimtalk => Some(
            "AlimTalk carries informational messages only: send advertising by FriendTalk or SMS"
                .to_owned(),
        ),
        _ if marking(channel_type) == Marking::InText && opt_out(spec).is_none() => Some(format!(
            "channel {channel:?} has no opt-out number for advertising: set \
             spec.advertising.optOut (a free number such as 080-123-4567, written as \
             \"{OPT_OUT_LABEL} <number>\" under every advertising message) on the MessageChannel"
        )),
        _ => None,
    }
}

fn opt_out(spec: Option<&AdvertisingSpec>) -> Option<&str> {
    spec.and_then(|s| s.opt_out.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// `text` as it goes out on `channel_type` for a message of `category`: advertising on a channel
/// that marks in the text starts with "(광고)" and the sender's name (when configured) and ends
/// with the opt-out line; anything else is returned as it is. A text that already carries a
/// marking (written by the template, or a fallback copy of a marked message) keeps it and is not
/// marked again, so `mark(mark(t)) == mark(t)`.
pub fn mark(
    text: String,
    category: Category,
    channel_type: ChannelType,
    spec: Option<&AdvertisingSpec>,
) -> String {
    if category != Category::Marketing || marking(channel_type) != Marking::InText {
        return text;
    }
    let mut marked = String::with_capacity(text.len() + 64);
    let body = text.trim_start();
    if !body.starts_with(AD_PREFIX) {
        marked.push_str(AD_PREFIX);
        match spec
            .and_then(|s| s.sender_name.as_deref())
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            Some(name) => {
                marked.push(' ');
                marked.push_str(name);
                marked.push('\n');
            }
            None => marked.push(' '),
        }
    }
    marked.push_str(body);
    if let Some(number) = opt_out(spec) {
        let line = format!("{OPT_OUT_LABEL} {number}");
        if !marked.contains(&line) {
            let kept = marked.trim_end().len();
            marked.truncate(kept);
            marked.push('\n');
            marked.push_str(&line);
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: Option<&str>, opt_out: Option<&str>) -> AdvertisingSpec {
        AdvertisingSpec {
            sender_name: name.map(str::to_owned),
            opt_out: opt_out.map(str::to_owned),
        }
    }

    #[test]
    fn sms_advertising_is_marked_first_and_last() {
        let shop = spec(Some("UMP샵"), Some("080-123-4567"));
        assert_eq!(
            mark(
                "주말 특가 30% 할인".into(),
                Category::Marketing,
                ChannelType::Sms,
                Some(&shop)
            ),
            "(광고) UMP샵\n주말 특가 30% 할인\n무료수신거부 080-123-4567"
        );
        let anonymous = spec(None, Some("0801234567"));
        assert_eq!(
            mark(
                "세일\n".into(),
                Category::Marketing,
                ChannelType::Sms,
                Some(&anonymous)
            ),
            "(광고) 세일\n무료수신거부 0801234567"
        );
    }

    #[test]
    fn only_advertising_on_text_marked_channels_is_touched() {
        let shop = spec(Some("UMP샵"), Some("080-123-4567"));
        for (category, channel_type) in [
            (Category::Transactional, ChannelType::Sms),
            (Category::Marketing, ChannelType::Friendtalk),
            (Category::Marketing, ChannelType::Email),
            (Category::Marketing, ChannelType::Push),
        ] {
            assert_eq!(
                mark("본문".into(), category, channel_type, Some(&shop)),
                "본문",
                "{category:?} on {channel_type:?}"
            );
        }
    }

    #[test]
    fn marking_twice_is_marking_once() {
        let shop = spec(Some("UMP샵"), Some("080-123-4567"));
        let once = mark(
            "쿠폰 도착".into(),
            Category::Marketing,
            ChannelType::Sms,
            Some(&shop),
        );
        let twice = mark(
            once.clone(),
            Category::Marketing,
            ChannelType::Sms,
            Some(&shop),
        );
        assert_eq!(once, twice);
        // A template that writes the prefix itself gets only the opt-out line.
        assert_eq!(
            mark(
                "(광고) 쿠폰 도착".into(),
                Category::Marketing,
                ChannelType::Sms,
                Some(&shop)
            ),
            "(광고) 쿠폰 도착\n무료수신거부 080-123-4567"
        );
    }

    #[test]
    fn channels_unfit_for_advertising_say_what_to_configure() {
        let why = unfit_for_advertising("sms", ChannelType::Sms, None).unwrap_or_default();
        assert!(why.contains("spec.advertising.optOut"), "{why}");
        let blank = spec(Some("UMP샵"), Some("  "));
        assert!(unfit_for_advertising("sms", ChannelType::Sms, Some(&blank)).is_some());
        let ok = spec(None, Some("080-123-4567"));
        assert_eq!(
            unfit_for_advertising("sms", ChannelType::Sms, Some(&ok)),
            None
        );
        assert_eq!(
            unfit_for_advertising("kakao-ad", ChannelType::Friendtalk, None),
            None
        );
        let alimtalk =
            unfit_for_advertising("alimtalk", ChannelType::Alimtalk, None).unwrap_or_default();
        assert!(alimtalk.contains("FriendTalk or SMS"), "{alimtalk}");
    }
}

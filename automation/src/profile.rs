//! A customer's profile: traits, contact points, locale and time zone, and consents, each with
//! when and how it was given. `marketing_permission` decides whether an advertising message may
//! go to the person on a channel at a moment, the way Korean law asks (Act on Promotion of
//! Information and Communications Network Utilization, art. 50): prior consent per channel, and a
//! separate consent for advertising between 21:00 and 08:00 in the person's local time.

use chrono::{DateTime, NaiveTime, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The time zone of a person who has none on their profile.
pub const DEFAULT_TIMEZONE: chrono_tz::Tz = chrono_tz::Asia::Seoul;

/// Channels as a person reaches them (a contact point and a consent each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Sms,
    Email,
    Push,
    /// Kakao (AlimTalk for information, FriendTalk for advertising): a Kakao-reachable phone.
    Kakao,
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
            ChannelKind::Push => "push",
            ChannelKind::Kakao => "kakao",
        }
    }
}

/// What a consent is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Advertising (영리목적 광고성 정보).
    Marketing,
    /// Advertising between 21:00 and 08:00 local time, which needs its own consent.
    MarketingNight,
}

/// One consent decision: given or withdrawn, when, and how (`source`: the form, import or API
/// call that recorded it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub purpose: Purpose,
    pub channel: ChannelKind,
    pub granted: bool,
    pub at: DateTime<Utc>,
    pub source: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_tokens: Vec<String>,
    /// A phone that can receive Kakao messages, when it differs from `phone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kakao_phone: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: String,
    #[serde(default)]
    pub traits: Map<String, Value>,
    #[serde(default)]
    pub contacts: Contacts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// An IANA zone name (`Asia/Seoul`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Every decision recorded, oldest first; the newest per purpose and channel holds.
    #[serde(default)]
    pub consents: Vec<Consent>,
    /// Created by an event before anyone identified the person.
    #[serde(default)]
    pub anonymous: bool,
}

/// Why an advertising message may not go to a person now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no {purpose} consent for {channel}", purpose = purpose_name(*.purpose), channel = .channel.as_str())]
    NoConsent {
        purpose: Purpose,
        channel: ChannelKind,
    },
    #[error("the {purpose} consent for {channel} was withdrawn at {at}", purpose = purpose_name(*.purpose), channel = .channel.as_str())]
    Withdrawn {
        purpose: Purpose,
        channel: ChannelKind,
        at: DateTime<Utc>,
    },
    #[error("no {channel} contact point on the profile", channel = .0.as_str())]
    NoContact(ChannelKind),
}

fn purpose_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Marketing => "marketing",
        Purpose::MarketingNight => "night-time marketing",
    }
}

/// 21:00 to 08:00: advertising then needs the night-time consent too.
pub fn is_night(local: NaiveTime) -> bool {
    local.hour() >= 21 || local.hour() < 8
}

impl Profile {
    /// The person's time zone (`DEFAULT_TIMEZONE` when none or an unknown one is set).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|tz| tz.parse().ok())
            .unwrap_or(DEFAULT_TIMEZONE)
    }

    /// The newest decision for `purpose` on `channel`, if any.
    pub fn consent(&self, purpose: Purpose, channel: ChannelKind) -> Option<&Consent> {
        self.consents
            .iter()
            .filter(|c| c.purpose == purpose && c.channel == channel)
            .max_by_key(|c| c.at)
    }

    /// Records a decision; an older one arriving late (an import) never overrides a newer one.
    pub fn record_consent(&mut self, consent: Consent) {
        self.consents.push(consent);
        self.consents.sort_by_key(|c| c.at);
    }

    /// Where a message of `channel` reaches the person.
    pub fn contact(&self, channel: ChannelKind) -> Option<&str> {
        let c = &self.contacts;
        match channel {
            ChannelKind::Sms => c.phone.as_deref(),
            ChannelKind::Email => c.email.as_deref(),
            ChannelKind::Push => c.push_tokens.last().map(String::as_str),
            ChannelKind::Kakao => c.kakao_phone.as_deref().or(c.phone.as_deref()),
        }
    }

    /// Whether an advertising message may go to the person on `channel` at `now`.
    pub fn marketing_permission(
        &self,
        channel: ChannelKind,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let granted = |purpose| match self.consent(purpose, channel) {
            Some(c) if c.granted => Ok(()),
            Some(c) => Err(Refusal::Withdrawn {
                purpose,
                channel,
                at: c.at,
            }),
            None => Err(Refusal::NoConsent { purpose, channel }),
        };
        granted(Purpose::Marketing)?;
        if is_night(now.with_timezone(&self.tz()).time()) {
            granted(Purpose::MarketingNight)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        // Seoul is UTC+9, without daylight saving.
        chrono_tz::Asia::Seoul
            .with_ymd_and_hms(2026, 12, 4, h, m, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn consent(
        purpose: Purpose,
        channel: ChannelKind,
        granted: bool,
        at: DateTime<Utc>,
    ) -> Consent {
        Consent {
            purpose,
            channel,
            granted,
            at,
            source: "signup-form".into(),
        }
    }

    #[test]
    fn advertising_needs_the_channels_consent() {
        let mut kim = Profile {
            user_id: "kim".into(),
            ..Default::default()
        };
        let noon = at(12, 0);
        assert_eq!(
            kim.marketing_permission(ChannelKind::Sms, noon),
            Err(Refusal::NoConsent {
                purpose: Purpose::Marketing,
                channel: ChannelKind::Sms
            })
        );
        kim.record_consent(consent(
            Purpose::Marketing,
            ChannelKind::Sms,
            true,
            at(9, 0),
        ));
        assert_eq!(kim.marketing_permission(ChannelKind::Sms, noon), Ok(()));
        // Per channel: SMS consent says nothing about email.
        assert!(kim.marketing_permission(ChannelKind::Email, noon).is_err());
        // Withdrawn later: refused, saying when.
        kim.record_consent(consent(
            Purpose::Marketing,
            ChannelKind::Sms,
            false,
            at(10, 0),
        ));
        assert_eq!(
            kim.marketing_permission(ChannelKind::Sms, noon),
            Err(Refusal::Withdrawn {
                purpose: Purpose::Marketing,
                channel: ChannelKind::Sms,
                at: at(10, 0)
            })
        );
        // An older decision arriving late does not override the newer one.
        kim.record_consent(consent(
            Purpose::Marketing,
            ChannelKind::Sms,
            true,
            at(8, 0),
        ));
        assert!(kim.marketing_permission(ChannelKind::Sms, noon).is_err());
    }

    #[test]
    fn night_time_advertising_needs_its_own_consent_in_local_time() {
        let mut lee = Profile {
            user_id: "lee".into(),
            ..Default::default()
        };
        lee.record_consent(consent(
            Purpose::Marketing,
            ChannelKind::Push,
            true,
            at(1, 0),
        ));
        assert_eq!(
            lee.marketing_permission(ChannelKind::Push, at(20, 59)),
            Ok(())
        );
        for night in [at(21, 0), at(23, 30), at(0, 0), at(7, 59)] {
            assert_eq!(
                lee.marketing_permission(ChannelKind::Push, night),
                Err(Refusal::NoConsent {
                    purpose: Purpose::MarketingNight,
                    channel: ChannelKind::Push
                }),
                "{night}"
            );
        }
        assert_eq!(
            lee.marketing_permission(ChannelKind::Push, at(8, 0)),
            Ok(())
        );
        lee.record_consent(consent(
            Purpose::MarketingNight,
            ChannelKind::Push,
            true,
            at(2, 0),
        ));
        assert_eq!(
            lee.marketing_permission(ChannelKind::Push, at(23, 0)),
            Ok(())
        );
        // 14:00 UTC is 23:00 in Seoul but 15:00 in Berlin: the person's zone decides.
        let berlin = Profile {
            timezone: Some("Europe/Berlin".into()),
            consents: vec![consent(
                Purpose::Marketing,
                ChannelKind::Push,
                true,
                at(1, 0),
            )],
            ..Default::default()
        };
        assert_eq!(
            berlin.marketing_permission(ChannelKind::Push, at(23, 0)),
            Ok(())
        );
    }

    #[test]
    fn contact_points_per_channel() {
        let park = Profile {
            contacts: Contacts {
                phone: Some("+821012345678".into()),
                email: None,
                push_tokens: vec!["old".into(), "new".into()],
                kakao_phone: None,
            },
            ..Default::default()
        };
        assert_eq!(park.contact(ChannelKind::Sms), Some("+821012345678"));
        assert_eq!(park.contact(ChannelKind::Kakao), Some("+821012345678"));
        assert_eq!(park.contact(ChannelKind::Push), Some("new"));
        assert_eq!(park.contact(ChannelKind::Email), None);
    }

    #[test]
    fn refusals_say_what_is_missing() {
        let refusal = Refusal::NoConsent {
            purpose: Purpose::MarketingNight,
            channel: ChannelKind::Kakao,
        };
        assert_eq!(
            refusal.to_string(),
            "no night-time marketing consent for kakao"
        );
    }
}

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

/// What `PUT /v1/users/{id}` may change. Traits merge (a `null` deletes one), contact points
/// given replace the old ones, consents are added to the record.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default)]
    pub traits: Option<Map<String, Value>>,
    #[serde(default)]
    pub contacts: Option<Contacts>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub consents: Option<Vec<ConsentInput>>,
}

/// A consent decision as a client reports it; `at` defaults to when UMP records it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub purpose: Purpose,
    pub channel: ChannelKind,
    pub granted: bool,
    pub source: String,
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// The most traits one profile holds, and the longest text of any one value.
pub const MAX_TRAITS: usize = 200;
pub const MAX_TEXT: usize = 1024;

impl Profile {
    /// Applies `update` at `now`; nothing changes unless all of it is valid.
    pub fn apply(
        &mut self,
        update: ProfileUpdate,
        now: DateTime<Utc>,
    ) -> Result<(), Vec<crate::FieldError>> {
        use crate::FieldError;
        let mut errors = Vec::new();
        let text = |field: &str, value: &str, errors: &mut Vec<FieldError>| {
            if value.trim().is_empty() || value.len() > MAX_TEXT {
                errors.push(FieldError::new(
                    field,
                    format!("1 to {MAX_TEXT} characters"),
                ));
            }
        };
        if let Some(tz) = &update.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            errors.push(FieldError::new(
                "timezone",
                format!("{tz:?} is not an IANA time zone such as Asia/Seoul"),
            ));
        }
        if let Some(locale) = &update.locale {
            let ok = !locale.is_empty()
                && locale.len() <= 35
                && locale
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                errors.push(FieldError::new("locale", "a language tag such as ko-KR"));
            }
        }
        if let Some(contacts) = &update.contacts {
            if let Some(phone) = &contacts.phone {
                phone_number("contacts.phone", phone, &mut errors);
            }
            if let Some(phone) = &contacts.kakao_phone {
                phone_number("contacts.kakao_phone", phone, &mut errors);
            }
            if let Some(email) = &contacts.email {
                let ok = email.len() <= 254
                    && email
                        .split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                    && !email.chars().any(char::is_whitespace);
                if !ok {
                    errors.push(FieldError::new("contacts.email", "an email address"));
                }
            }
            for (i, token) in contacts.push_tokens.iter().enumerate() {
                text(&format!("contacts.push_tokens[{i}]"), token, &mut errors);
            }
            if contacts.push_tokens.len() > 20 {
                errors.push(FieldError::new("contacts.push_tokens", "at most 20 tokens"));
            }
        }
        let mut traits = self.traits.clone();
        if let Some(changes) = update.traits {
            for (name, value) in changes {
                if name.is_empty() || name.len() > 128 {
                    errors.push(FieldError::new(
                        format!("traits.{name}"),
                        "a trait name is 1 to 128 characters",
                    ));
                } else if value.is_null() {
                    traits.remove(&name);
                } else {
                    if value.to_string().len() > MAX_TEXT * 8 {
                        errors.push(FieldError::new(
                            format!("traits.{name}"),
                            format!("at most {} bytes of JSON", MAX_TEXT * 8),
                        ));
                    }
                    traits.insert(name, value);
                }
            }
            if traits.len() > MAX_TRAITS {
                errors.push(FieldError::new(
                    "traits",
                    format!("at most {MAX_TRAITS} traits"),
                ));
            }
        }
        let given = update.consents.unwrap_or_default();
        let mut consents = Vec::with_capacity(given.len());
        for (i, c) in given.into_iter().enumerate() {
            text(&format!("consents[{i}].source"), &c.source, &mut errors);
            let at = c.at.unwrap_or(now);
            if at > now + chrono::Duration::minutes(5) {
                errors.push(FieldError::new(
                    format!("consents[{i}].at"),
                    "in the future: a consent is recorded when it was given",
                ));
            }
            consents.push(Consent {
                purpose: c.purpose,
                channel: c.channel,
                granted: c.granted,
                at,
                source: c.source,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.traits = traits;
        if let Some(contacts) = update.contacts {
            self.contacts = contacts;
        }
        if update.locale.is_some() {
            self.locale = update.locale;
        }
        if update.timezone.is_some() {
            self.timezone = update.timezone;
        }
        for consent in consents {
            self.record_consent(consent);
        }
        self.anonymous = false;
        Ok(())
    }
}

fn phone_number(field: &str, phone: &str, errors: &mut Vec<crate::FieldError>) {
    let ok = phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        errors.push(crate::FieldError::new(
            field,
            "an E.164 phone number such as +821012345678",
        ));
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 3, 0, 0).unwrap()
    }

    fn update(value: Value) -> ProfileUpdate {
        serde_json::from_value(value).expect("update")
    }

    #[test]
    fn traits_merge_contacts_replace_consents_accumulate() {
        let mut p = Profile {
            user_id: "kim".into(),
            anonymous: true,
            ..Default::default()
        };
        p.apply(
            update(
                json!({"traits": {"tier": "vip", "name": "Kim"}, "timezone": "Asia/Seoul",
                          "contacts": {"phone": "+821012345678"},
                          "consents": [{"purpose": "marketing", "channel": "sms", "granted": true,
                                        "source": "signup-form"}]}),
            ),
            now(),
        )
        .expect("valid");
        assert!(!p.anonymous, "identified");
        p.apply(
            update(json!({"traits": {"name": null, "points": 10},
                          "consents": [{"purpose": "marketing", "channel": "sms", "granted": false,
                                        "source": "unsubscribe-link"}]})),
            now() + chrono::Duration::hours(1),
        )
        .expect("valid");
        assert_eq!(
            p.traits,
            json!({"tier": "vip", "points": 10})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(p.contact(ChannelKind::Sms), Some("+821012345678"));
        assert_eq!(p.consents.len(), 2, "the record keeps both decisions");
        assert!(
            !p.consent(Purpose::Marketing, ChannelKind::Sms)
                .unwrap()
                .granted
        );
    }

    #[test]
    fn a_bad_update_changes_nothing_and_names_each_field() {
        let mut p = Profile::default();
        let errors = p
            .apply(
                update(json!({"traits": {"tier": "vip"}, "timezone": "Mars/Olympus",
                              "contacts": {"phone": "010-1234", "email": "nobody"},
                              "consents": [{"purpose": "marketing", "channel": "email", "granted": true,
                                            "source": " ", "at": "2030-01-01T00:00:00Z"}]})),
                now(),
            )
            .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "timezone",
                "contacts.phone",
                "contacts.email",
                "consents[0].source",
                "consents[0].at"
            ]
        );
        assert_eq!(p, Profile::default());
        for unknown in [
            json!({"trait": {}}),
            json!({"consents": [{"purpose": "spam", "channel": "sms", "granted": true, "source": "x"}]}),
        ] {
            assert!(serde_json::from_value::<ProfileUpdate>(unknown).is_err());
        }
    }
}

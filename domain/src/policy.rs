//! The pure parts of a `DeliveryPolicy`: quiet hours, message TTL, retry backoff.

use crate::resources::{QuietHours, RetryPolicy};
use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::time::Duration as StdDuration;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("quiet hours: {0}")]
pub struct QuietHoursError(String);

/// Quiet hours parsed once per configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct QuietWindow {
    start: NaiveTime,
    end: NaiveTime,
    zone: Tz,
}

impl QuietWindow {
    /// Whether `text` is a time of day as quiet hours write it (`HH:MM`, 24-hour).
    pub fn is_time(text: &str) -> bool {
        Self::time(text).is_ok()
    }

    fn time(text: &str) -> Result<NaiveTime, QuietHoursError> {
        NaiveTime::parse_from_str(text, "%H:%M")
            .map_err(|_| QuietHoursError(format!("{text:?} is not HH:MM")))
    }

    pub fn parse(spec: &QuietHours) -> Result<Self, QuietHoursError> {
        let time = Self::time;
        let zone: Tz = spec
            .timezone
            .parse()
            .map_err(|_| QuietHoursError(format!("unknown time zone {:?}", spec.timezone)))?;
        Ok(Self {
            start: time(&spec.start)?,
            end: time(&spec.end)?,
            zone,
        })
    }

    /// When `now` falls in the quiet window, the moment it ends; else `None`.
    pub fn ends_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.start == self.end {
            return None;
        }
        let local = now.with_timezone(&self.zone);
        let t = local.time();
        let inside = if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end // overnight, e.g. 21:00–08:00
        };
        if !inside {
            return None;
        }
        let mut day = local.date_naive();
        if t >= self.end {
            day = day.succ_opt()?;
        }
        // `earliest` copes with a DST gap or fold at the end time.
        let end = self
            .zone
            .from_local_datetime(&day.and_time(self.end))
            .earliest()
            .unwrap_or_else(|| local + Duration::hours(1));
        Some(end.with_timezone(&Utc))
    }
}

/// Kakao's own rule for FriendTalk: advertising is not sent between 20:50 and 08:00 Korean
/// time (Kakao refuses it), whatever consent the person gave for the night. A FriendTalk
/// advertising message that falls in it waits for 08:00.
pub fn friendtalk_ad_ban() -> QuietWindow {
    QuietWindow {
        start: NaiveTime::from_hms_opt(20, 50, 0).expect("a time"),
        end: NaiveTime::from_hms_opt(8, 0, 0).expect("a time"),
        zone: chrono_tz::Asia::Seoul,
    }
}

/// Backoff before attempt `attempt + 1` after `attempt` failed tries: exponential from the
/// policy's initial backoff, capped, with jitter (between half and all of it), never shorter than
/// what the provider asked for.
pub fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<StdDuration>,
    jitter: f64,
) -> StdDuration {
    let initial = policy.initial_backoff.as_std().as_secs_f64();
    let cap = policy.max_backoff.as_std().as_secs_f64();
    let exponential = (initial * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(cap);
    let jittered = exponential * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let chosen = StdDuration::from_secs_f64(jittered);
    match retry_after {
        Some(asked) if asked > chosen => {
            asked.min(StdDuration::from_secs_f64(cap.max(asked.as_secs_f64())))
        }
        _ => chosen,
    }
}

/// A jitter fraction in [0, 1) without a random-number dependency.
pub fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Duration as SpecDuration;

    fn window(start: &str, end: &str) -> QuietWindow {
        QuietWindow::parse(&QuietHours {
            start: start.into(),
            end: end.into(),
            timezone: "Asia/Seoul".into(),
        })
        .expect("window")
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn overnight_window_in_seoul() {
        let w = window("21:00", "08:00");
        // 22:30 KST → quiet until 08:00 KST next day (= 23:00 UTC same day).
        assert_eq!(
            w.ends_after(utc("2026-11-24T13:30:00Z")),
            Some(utc("2026-11-24T23:00:00Z"))
        );
        // 07:00 KST → quiet until 08:00 KST that day.
        assert_eq!(
            w.ends_after(utc("2026-11-24T22:00:00Z")),
            Some(utc("2026-11-24T23:00:00Z"))
        );
        // 12:00 KST → not quiet.
        assert_eq!(w.ends_after(utc("2026-11-24T03:00:00Z")), None);
        // 08:00 sharp → over.
        assert_eq!(w.ends_after(utc("2026-11-24T23:00:00Z")), None);
    }

    #[test]
    fn friendtalk_advertising_waits_out_kakaos_night_ban() {
        let ban = friendtalk_ad_ban();
        // 20:49 KST: still allowed; 20:50: waits for 08:00 the next day; 07:59: for 08:00.
        assert_eq!(ban.ends_after(utc("2026-11-24T11:49:00Z")), None);
        assert_eq!(
            ban.ends_after(utc("2026-11-24T11:50:00Z")),
            Some(utc("2026-11-24T23:00:00Z"))
        );
        assert_eq!(
            ban.ends_after(utc("2026-11-24T22:59:00Z")),
            Some(utc("2026-11-24T23:00:00Z"))
        );
        assert_eq!(ban.ends_after(utc("2026-11-24T23:00:00Z")), None);
    }

    #[test]
    fn daytime_window() {
        let w = window("12:00", "13:00");
        assert_eq!(
            w.ends_after(utc("2026-11-24T03:30:00Z")),
            Some(utc("2026-11-24T04:00:00Z"))
        );
        assert_eq!(w.ends_after(utc("2026-11-24T04:30:00Z")), None);
    }

    #[test]
    fn bad_windows_are_rejected() {
        let bad = |start: &str, tz: &str| {
            QuietWindow::parse(&QuietHours {
                start: start.into(),
                end: "08:00".into(),
                timezone: tz.into(),
            })
        };
        assert!(bad("9pm", "Asia/Seoul").is_err());
        assert!(bad("21:00", "Mars/Olympus").is_err());
    }

    #[test]
    fn backoff_grows_caps_and_respects_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: SpecDuration::from_secs(1),
            max_backoff: SpecDuration::from_secs(10),
        };
        assert_eq!(backoff(&policy, 1, None, 1.0), StdDuration::from_secs(1));
        assert_eq!(backoff(&policy, 3, None, 1.0), StdDuration::from_secs(4));
        assert_eq!(backoff(&policy, 10, None, 1.0), StdDuration::from_secs(10));
        assert_eq!(backoff(&policy, 3, None, 0.0), StdDuration::from_secs(2));
        assert_eq!(
            backoff(&policy, 1, Some(StdDuration::from_secs(7)), 1.0),
            StdDuration::from_secs(7)
        );
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}

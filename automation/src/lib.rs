//! Marketing automation's decisions as pure functions of their inputs and an explicit `now`: who a
//! person is and what they agreed to (`profile`), what they did (`state`), which segments they
//! are in (`segment`), where their journeys take them (`journey`) and which products to show them
//! (`recommend`). The event processor around them does the I/O.

pub mod event;
pub mod journey;
pub mod person;
pub mod profile;
pub mod recommend;
pub mod segment;
pub mod state;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A span of time written as people write it (`30m`, `7d`, `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Window(std::time::Duration);

impl Window {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// As a `chrono` span, saturating at about 292 million years.
    pub fn span(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl std::str::FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("invalid duration {s:?} (use e.g. 30m, 7d, 1h30m): {e}"))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = humantime::format_duration(self.0)
            .to_string()
            .replace(' ', "");
        f.write_str(if text.is_empty() { "0s" } else { &text })
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A problem with a definition, at `field` (a path such as `condition.all[1].performed.within`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_and_print_as_people_write_them() {
        let week: Window = "7d".parse().unwrap();
        assert_eq!(week, Window::from_secs(7 * 86_400));
        assert_eq!(week.to_string(), "7days");
        assert_eq!("1h30m".parse::<Window>().unwrap(), Window::from_secs(5400));
        assert!("soon".parse::<Window>().unwrap_err().contains("soon"));
        assert_eq!(Window::default().to_string(), "0s");
    }
}

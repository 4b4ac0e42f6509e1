//! Typed access to a provider's non-secret `settings` (strings in the channel YAML), with the
//! errors naming the provider and the setting at fault.

use super::BuildError;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;
use ump_core::resources::ProviderSpec;

pub struct Settings<'a> {
    provider: &'a str,
    values: &'a BTreeMap<String, String>,
}

impl<'a> Settings<'a> {
    pub fn of(spec: &'a ProviderSpec) -> Self {
        Self {
            provider: &spec.name,
            values: &spec.settings,
        }
    }

    /// The value of `key`, trimmed; an empty value counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.values
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, key: &str) -> Result<&'a str, BuildError> {
        self.get(key)
            .ok_or_else(|| self.invalid(format!("setting {key:?} is required")))
    }

    /// A duration written like `10s`, `1m30s`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, BuildError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse::<ump_core::resources::Duration>()
                .map(|d| d.as_std())
                .map_err(|e| self.invalid(format!("setting {key:?}: {e}"))),
        }
    }

    pub fn number<T: FromStr>(&self, key: &str, default: T) -> Result<T, BuildError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| self.invalid(format!("setting {key:?}: {text:?} is not a number"))),
        }
    }

    pub fn flag(&self, key: &str, default: bool) -> Result<bool, BuildError> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(self.invalid(format!("setting {key:?}: {text:?} is not true or false"))),
            },
        }
    }

    /// A base URL (`http(s)://host[:port][/path]`) without a trailing slash, so paths can be
    /// appended with `format!("{base}/...")`. `default` is the provider's public endpoint.
    pub fn endpoint(&self, key: &str, default: &str) -> Result<String, BuildError> {
        let text = self.get(key).unwrap_or(default);
        self.check_url(key, text)?;
        Ok(text.trim_end_matches('/').to_owned())
    }

    /// A required http(s) URL, exactly as written.
    pub fn url(&self, key: &str) -> Result<String, BuildError> {
        let text = self.require(key)?;
        self.check_url(key, text)?;
        Ok(text.to_owned())
    }

    fn check_url(&self, key: &str, text: &str) -> Result<(), BuildError> {
        let url = reqwest::Url::parse(text)
            .map_err(|e| self.invalid(format!("setting {key:?}: {text:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.invalid(format!("setting {key:?}: {text:?} is not an http(s) URL")));
        }
        Ok(())
    }

    /// PEM text of the file a setting points at (e.g. a CA to trust).
    pub fn pem_file(&self, key: &str) -> Result<Option<Vec<u8>>, BuildError> {
        let Some(path) = self.get(key) else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|e| self.invalid(format!("setting {key:?}: {path}: {e}")))
    }

    pub fn invalid(&self, detail: String) -> BuildError {
        BuildError::Invalid {
            name: self.provider.to_owned(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ump_core::resources::ProviderType;

    fn spec(pairs: &[(&str, &str)]) -> ProviderSpec {
        ProviderSpec {
            name: "p".into(),
            provider_type: ProviderType::Webhook,
            secret_ref: None,
            settings: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn typed_values_with_defaults() {
        let spec = spec(&[
            ("timeout", "1m30s"),
            ("max", " 8 "),
            ("on", "yes"),
            ("empty", ""),
        ]);
        let s = Settings::of(&spec);
        assert_eq!(
            s.duration("timeout", Duration::ZERO).ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(s.number("max", 1usize).ok(), Some(8));
        assert_eq!(s.flag("on", false).ok(), Some(true));
        assert_eq!(s.get("empty"), None);
        assert_eq!(s.number("absent", 3u32).ok(), Some(3));
        assert!(s.require("absent").is_err());
    }

    #[test]
    fn bad_values_are_errors_naming_the_setting() {
        let spec = spec(&[("timeout", "soon"), ("max", "many"), ("url", "ftp://x")]);
        let s = Settings::of(&spec);
        for err in [
            s.duration("timeout", Duration::ZERO).err(),
            s.number("max", 1usize).err(),
            s.endpoint("url", "https://example.com").err(),
        ] {
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.starts_with("provider p: setting"), "{text}");
        }
    }

    #[test]
    fn endpoints_lose_their_trailing_slash() {
        let spec = spec(&[("endpoint", "http://127.0.0.1:9/base/")]);
        let s = Settings::of(&spec);
        assert_eq!(
            s.endpoint("endpoint", "https://example.com")
                .ok()
                .as_deref(),
            Some("http://127.0.0.1:9/base")
        );
        assert_eq!(
            s.endpoint("other", "https://example.com/").ok().as_deref(),
            Some("https://example.com")
        );
    }
}

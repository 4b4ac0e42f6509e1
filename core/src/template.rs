//! Stored templates: compiled once per configuration, checked at the API (missing variables are a
//! 422 naming the variable), rendered by the worker. HTML parts escape their variables.
//!
//! A template has default parts and, optionally, variants by locale. A send's `locale` picks the
//! variant (`ko-KR` falls back to `ko`), else the channel's `fallbackLocale` does, else the
//! default parts are used: a send never fails for want of a translation.

use crate::resources::{TemplateSpec, TemplateVariant};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Rendered content of a message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    /// The provider's id of the variant rendered (AlimTalk: its template code).
    pub code: String,
    /// The locale of the variant rendered; `None` for the default parts.
    pub locale: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("unknown template {0:?}")]
    Unknown(String),
    #[error("template variable {0:?} is missing from data")]
    MissingVariable(String),
    #[error("template {name:?} is invalid: {detail}")]
    Invalid { name: String, detail: String },
    #[error("rendering template {name:?} failed: {detail}")]
    Render { name: String, detail: String },
}

const PARTS: [(&str, &str); 3] = [("subject", "txt"), ("text", "txt"), ("html", "html")];

/// Longest locale tag accepted (BCP 47 tags in use are far shorter).
pub const MAX_LOCALE_LEN: usize = 35;

/// Whether `tag` looks like a BCP 47 language tag: a 2–3 letter language and subtags of 1–8
/// letters or digits (`ko`, `en-US`, `zh-Hant-TW`).
pub fn is_locale_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let language_ok = subtags
        .next()
        .is_some_and(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    tag.len() <= MAX_LOCALE_LEN
        && language_ok
        && subtags
            .all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// One compiled variant of a template.
#[derive(Debug)]
struct Variant {
    /// Prefix of its parts' names in the environment.
    key: String,
    locale: Option<String>,
    code: String,
    /// Variables its parts use, for checking a send before it is accepted.
    variables: BTreeSet<String>,
}

#[derive(Debug)]
struct Template {
    default: Variant,
    /// By lower-cased locale tag.
    locales: BTreeMap<String, Variant>,
}

impl Template {
    /// The variant for `tag` by RFC 4647 lookup: the whole tag, then with its last subtag cut off
    /// (`zh-Hant-TW` → `zh-Hant` → `zh`).
    fn lookup(&self, tag: &str) -> Option<&Variant> {
        let mut tag = tag.to_ascii_lowercase();
        loop {
            if let Some(variant) = self.locales.get(&tag) {
                return Some(variant);
            }
            let cut = tag.rfind('-')?;
            tag.truncate(cut);
        }
    }
}

/// The templates of one channel, compiled.
pub struct TemplateSet {
    env: Environment<'static>,
    templates: HashMap<String, Template>,
    fallback_locale: Option<String>,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("templates", &self.templates.keys())
            .field("fallback_locale", &self.fallback_locale)
            .finish()
    }
}

impl TemplateSet {
    /// Compiles `specs`; `fallback_locale` is the channel's (used when a send's locale has no
    /// variant).
    pub fn compile(
        specs: &[TemplateSpec],
        fallback_locale: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // A missing variable is an error, never an empty string in a customer's message.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        if let Some(tag) = fallback_locale
            && !is_locale_tag(tag)
        {
            return Err(TemplateError::Invalid {
                name: "fallbackLocale".into(),
                detail: format!("{tag:?} is not a locale tag such as ko or en-US"),
            });
        }
        let mut templates = HashMap::new();
        for spec in specs {
            let code = spec.code.clone().unwrap_or_else(|| spec.name.clone());
            let default_parts = TemplateVariant {
                code: Some(code.clone()),
                subject: spec.subject.clone(),
                text: spec.text.clone(),
                html: spec.html.clone(),
            };
            let default = add_variant(&mut env, &spec.name, None, &default_parts, &code)?;
            let mut locales = BTreeMap::new();
            for (tag, parts) in &spec.locales {
                if !is_locale_tag(tag) {
                    return Err(TemplateError::Invalid {
                        name: spec.name.clone(),
                        detail: format!("locale {tag:?} is not a locale tag such as ko or en-US"),
                    });
                }
                let variant = add_variant(&mut env, &spec.name, Some(tag), parts, &code)?;
                if locales.insert(tag.to_ascii_lowercase(), variant).is_some() {
                    return Err(TemplateError::Invalid {
                        name: spec.name.clone(),
                        detail: format!("locale {tag:?} is given twice"),
                    });
                }
            }
            templates.insert(spec.name.clone(), Template { default, locales });
        }
        Ok(Self {
            env,
            templates,
            fallback_locale: fallback_locale.map(str::to_owned),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// The variant a send of template `name` in `locale` gets.
    fn variant(&self, name: &str, locale: Option<&str>) -> Result<&Variant, TemplateError> {
        let template = self
            .templates
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        Ok([locale, self.fallback_locale.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|tag| template.lookup(tag))
            .unwrap_or(&template.default))
    }

    /// Checks that `data` gives every variable the variant of template `name` for `locale` uses.
    pub fn check(
        &self,
        name: &str,
        locale: Option<&str>,
        data: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        let variant = self.variant(name, locale)?;
        match variant
            .variables
            .iter()
            .find(|var| !data.contains_key(var.as_str()))
        {
            Some(missing) => Err(TemplateError::MissingVariable(missing.clone())),
            None => Ok(()),
        }
    }

    pub fn render(
        &self,
        name: &str,
        locale: Option<&str>,
        data: &Map<String, Value>,
    ) -> Result<Rendered, TemplateError> {
        self.check(name, locale, data)?;
        let variant = self.variant(name, locale)?;
        let render = |part: &str, ext: &str| -> Result<Option<String>, TemplateError> {
            match self.env.get_template(&part_key(&variant.key, part, ext)) {
                Ok(template) => template
                    .render(minijinja::value::Serde(data))
                    .map(Some)
                    .map_err(|e| TemplateError::Render {
                        name: name.to_owned(),
                        detail: e.to_string(),
                    }),
                Err(_) => Ok(None),
            }
        };
        Ok(Rendered {
            subject: render("subject", "txt")?,
            text: render("text", "txt")?.unwrap_or_default(),
            html: render("html", "html")?,
            code: variant.code.clone(),
            locale: variant.locale.clone(),
        })
    }
}

fn part_key(variant_key: &str, part: &str, ext: &str) -> String {
    format!("{variant_key}/{part}.{ext}")
}

/// Compiles one variant's parts into `env`.
fn add_variant(
    env: &mut Environment<'static>,
    name: &str,
    locale: Option<&str>,
    parts: &TemplateVariant,
    template_code: &str,
) -> Result<Variant, TemplateError> {
    let invalid = |e: minijinja::Error| TemplateError::Invalid {
        name: name.to_owned(),
        detail: match locale {
            Some(tag) => format!("locale {tag}: {e}"),
            None => e.to_string(),
        },
    };
    // `#` cannot start a locale tag, so no two variants (or templates) share a key.
    let key = format!("{name}#{}", locale.unwrap_or_default());
    let mut variables = BTreeSet::new();
    for (part, ext) in PARTS {
        let source = match part {
            "subject" => parts.subject.as_deref(),
            "text" => Some(parts.text.as_str()),
            _ => parts.html.as_deref(),
        };
        let Some(source) = source else { continue };
        let part_name = part_key(&key, part, ext);
        env.add_template_owned(part_name.clone(), source.to_owned())
            .map_err(invalid)?;
        let template = env.get_template(&part_name).map_err(invalid)?;
        variables.extend(template.undeclared_variables(false));
    }
    Ok(Variant {
        key,
        locale: locale.map(str::to_owned),
        code: parts
            .code
            .clone()
            .unwrap_or_else(|| template_code.to_owned()),
        variables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn welcome() -> TemplateSpec {
        TemplateSpec {
            name: "welcome".into(),
            subject: Some("{{ name }}님, 환영합니다".into()),
            text: "안녕하세요 {{ name }}님. 코드: {{ code }}".into(),
            html: Some("<p>{{ name }}</p>".into()),
            ..Default::default()
        }
    }

    fn set() -> TemplateSet {
        TemplateSet::compile(&[welcome()], None).expect("compile")
    }

    /// `welcome` with English and Japanese variants; the English one needs `plan` too.
    fn localized(fallback: Option<&str>) -> TemplateSet {
        let mut spec = welcome();
        spec.code = Some("WELCOME_KO".into());
        spec.locales.insert(
            "en".into(),
            TemplateVariant {
                code: Some("WELCOME_EN".into()),
                subject: Some("Welcome, {{ name }}".into()),
                text: "Hello {{ name }}, your {{ plan }} plan. Code: {{ code }}".into(),
                html: None,
            },
        );
        spec.locales.insert(
            "ja".into(),
            TemplateVariant {
                text: "{{ name }}さん、ようこそ。コード: {{ code }}".into(),
                ..Default::default()
            },
        );
        TemplateSet::compile(&[spec], fallback).expect("compile")
    }

    fn data(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn renders_every_part_with_korean_text() {
        let rendered = set()
            .render(
                "welcome",
                None,
                &data(json!({"name": "김민수", "code": 1234})),
            )
            .expect("render");
        assert_eq!(rendered.subject.as_deref(), Some("김민수님, 환영합니다"));
        assert_eq!(rendered.text, "안녕하세요 김민수님. 코드: 1234");
        assert_eq!(rendered.html.as_deref(), Some("<p>김민수</p>"));
        assert_eq!(rendered.code, "welcome");
        assert_eq!(rendered.locale, None);
    }

    #[test]
    fn missing_variable_is_named() {
        assert_eq!(
            set().check("welcome", None, &data(json!({"name": "x"}))),
            Err(TemplateError::MissingVariable("code".into()))
        );
        assert_eq!(
            set().check("nope", None, &Map::new()),
            Err(TemplateError::Unknown("nope".into()))
        );
    }

    #[test]
    fn the_locale_picks_its_variant_and_its_code() {
        let set = localized(None);
        let values = data(json!({"name": "Kim", "code": 7, "plan": "Pro"}));
        let en = set.render("welcome", Some("en"), &values).expect("en");
        assert_eq!(en.subject.as_deref(), Some("Welcome, Kim"));
        assert_eq!(en.text, "Hello Kim, your Pro plan. Code: 7");
        assert_eq!(
            (en.code.as_str(), en.locale.as_deref()),
            ("WELCOME_EN", Some("en"))
        );
        // A variant is a whole translation: no Korean HTML under an English subject.
        assert_eq!(en.html, None);
        // Region and case: en-GB finds en, JA finds ja.
        let gb = set
            .render("welcome", Some("en-GB"), &values)
            .expect("en-GB");
        assert_eq!(gb.locale.as_deref(), Some("en"));
        let ja = set.render("welcome", Some("JA"), &values).expect("ja");
        assert_eq!(ja.text, "Kimさん、ようこそ。コード: 7");
        // A variant without a code uses the template's.
        assert_eq!(ja.code, "WELCOME_KO");
    }

    #[test]
    fn a_locale_without_a_variant_falls_back_to_the_channel_locale_then_the_default() {
        let values = data(json!({"name": "Kim", "code": 7, "plan": "Pro"}));
        let default = localized(None)
            .render("welcome", Some("fr"), &values)
            .expect("fr");
        assert_eq!(default.text, "안녕하세요 Kim님. 코드: 7");
        assert_eq!(default.locale, None);
        let fallback = localized(Some("ja"));
        for locale in [Some("fr"), None] {
            let rendered = fallback.render("welcome", locale, &values).expect("render");
            assert_eq!(rendered.locale.as_deref(), Some("ja"), "{locale:?}");
        }
        // The send's own locale still wins over the fallback.
        let en = fallback
            .render("welcome", Some("en-US"), &values)
            .expect("en");
        assert_eq!(en.locale.as_deref(), Some("en"));
    }

    #[test]
    fn variables_are_checked_per_locale() {
        let set = localized(None);
        let values = data(json!({"name": "Kim", "code": 7}));
        assert_eq!(set.check("welcome", Some("ko"), &values), Ok(()));
        assert_eq!(set.check("welcome", Some("ja"), &values), Ok(()));
        assert_eq!(
            set.check("welcome", Some("en"), &values),
            Err(TemplateError::MissingVariable("plan".into()))
        );
    }

    #[test]
    fn bad_locale_tags_are_refused() {
        for tag in ["english", "e", "en_US", "en-", "ko-toolongsubtag", ""] {
            assert!(!is_locale_tag(tag), "{tag}");
        }
        for tag in ["ko", "en-US", "zh-Hant-TW", "es-419"] {
            assert!(is_locale_tag(tag), "{tag}");
        }
        let mut spec = welcome();
        spec.locales
            .insert("en_US".into(), TemplateVariant::default());
        assert!(matches!(
            TemplateSet::compile(&[spec], None),
            Err(TemplateError::Invalid { .. })
        ));
        assert!(matches!(
            TemplateSet::compile(&[welcome()], Some("korean!")),
            Err(TemplateError::Invalid { .. })
        ));
    }

    #[test]
    fn html_part_escapes_and_data_is_never_evaluated() {
        let rendered = set()
            .render(
                "welcome",
                None,
                &data(json!({"name": "<script>{{ 7*7 }}</script>", "code": "{% raw %}"})),
            )
            .expect("render");
        assert_eq!(
            rendered.html.as_deref(),
            Some("<p>&lt;script&gt;{{ 7*7 }}&lt;&#x2f;script&gt;</p>")
        );
        assert!(rendered.text.contains("{% raw %}"));
    }
}

//! Stored templates: compiled once per configuration, checked at the API (missing variables are a
//! 422 naming the variable), rendered by the worker. HTML parts escape their variables.

use crate::resources::TemplateSpec;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};

/// Rendered content of a message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
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

/// The templates of one channel, compiled.
pub struct TemplateSet {
    env: Environment<'static>,
    /// Variables each template uses, for checking a send before it is accepted.
    variables: HashMap<String, BTreeSet<String>>,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("templates", &self.variables.keys())
            .finish()
    }
}

impl TemplateSet {
    pub fn compile(specs: &[TemplateSpec]) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // A missing variable is an error, never an empty string in a customer's message.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut variables = HashMap::new();
        for spec in specs {
            let mut used = BTreeSet::new();
            for (part, ext) in PARTS {
                let Some(source) = part_of(spec, part) else {
                    continue;
                };
                let key = format!("{}/{part}.{ext}", spec.name);
                env.add_template_owned(key.clone(), source.to_owned())
                    .map_err(|e| TemplateError::Invalid {
                        name: spec.name.clone(),
                        detail: e.to_string(),
                    })?;
                let template = env.get_template(&key).map_err(|e| TemplateError::Invalid {
                    name: spec.name.clone(),
                    detail: e.to_string(),
                })?;
                used.extend(template.undeclared_variables(false));
            }
            variables.insert(spec.name.clone(), used);
        }
        Ok(Self { env, variables })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.variables.contains_key(name)
    }

    /// Checks that `data` gives every variable template `name` uses.
    pub fn check(&self, name: &str, data: &Map<String, Value>) -> Result<(), TemplateError> {
        let used = self
            .variables
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        match used.iter().find(|var| !data.contains_key(var.as_str())) {
            Some(missing) => Err(TemplateError::MissingVariable(missing.clone())),
            None => Ok(()),
        }
    }

    pub fn render(&self, name: &str, data: &Map<String, Value>) -> Result<Rendered, TemplateError> {
        self.check(name, data)?;
        let render = |part: &str, ext: &str| -> Result<Option<String>, TemplateError> {
            let key = format!("{name}/{part}.{ext}");
            match self.env.get_template(&key) {
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
        })
    }
}

fn part_of<'a>(spec: &'a TemplateSpec, part: &str) -> Option<&'a str> {
    match part {
        "subject" => spec.subject.as_deref(),
        "text" => Some(spec.text.as_str()),
        _ => spec.html.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> TemplateSet {
        TemplateSet::compile(&[TemplateSpec {
            name: "welcome".into(),
            subject: Some("{{ name }}님, 환영합니다".into()),
            text: "안녕하세요 {{ name }}님. 코드: {{ code }}".into(),
            html: Some("<p>{{ name }}</p>".into()),
        }])
        .expect("compile")
    }

    fn data(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn renders_every_part_with_korean_text() {
        let rendered = set()
            .render("welcome", &data(json!({"name": "김민수", "code": 1234})))
            .expect("render");
        assert_eq!(rendered.subject.as_deref(), Some("김민수님, 환영합니다"));
        assert_eq!(rendered.text, "안녕하세요 김민수님. 코드: 1234");
        assert_eq!(rendered.html.as_deref(), Some("<p>김민수</p>"));
    }

    #[test]
    fn missing_variable_is_named() {
        assert_eq!(
            set().check("welcome", &data(json!({"name": "x"}))),
            Err(TemplateError::MissingVariable("code".into()))
        );
        assert_eq!(
            set().check("nope", &Map::new()),
            Err(TemplateError::Unknown("nope".into()))
        );
    }

    #[test]
    fn html_part_escapes_and_data_is_never_evaluated() {
        let rendered = set()
            .render(
                "welcome",
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

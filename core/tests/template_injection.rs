//! Template injection: a send's `data` is inserted as text, never run as template code, and a
//! template (written by an operator, rendered by the worker) can read nothing but its `data`: no
//! file, no environment variable.

use serde_json::{Map, Value, json};
use ump_core::resources::TemplateSpec;
use ump_core::template::{TemplateError, TemplateSet};

fn data(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn template(name: &str, text: &str) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        text: text.into(),
        ..Default::default()
    }
}

const PAYLOADS: &[&str] = &[
    "{{ 7 * 7 }}",
    "{% for i in range(3) %}x{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{{ self }}{{ range(999999999) }}",
    "{# comment #}{%- raw %}{{ name }}{% endraw -%}",
    "}}{{ name }}{{",
];

#[test]
fn template_syntax_in_data_is_rendered_as_the_text_it_is() {
    let set = TemplateSet::compile(
        &[TemplateSpec {
            name: "welcome".into(),
            subject: Some("{{ name }}님, 환영합니다".into()),
            text: "안녕하세요 {{ name }}님 ({{ profile.city }})".into(),
            html: Some("<p>{{ name }}</p>".into()),
            ..Default::default()
        }],
        None,
    )
    .expect("compile");
    for payload in PAYLOADS {
        let rendered = set
            .render(
                "welcome",
                None,
                &data(json!({"name": payload, "profile": {"city": payload}})),
            )
            .expect("render");
        assert_eq!(
            rendered.subject.as_deref(),
            Some(format!("{payload}님, 환영합니다").as_str())
        );
        assert_eq!(rendered.text, format!("안녕하세요 {payload}님 ({payload})"));
        assert!(!rendered.text.contains("49") && !rendered.text.contains("xxx"));
    }
}

#[test]
fn html_parts_escape_data_and_text_parts_keep_it() {
    let set = TemplateSet::compile(
        &[TemplateSpec {
            name: "note".into(),
            text: "{{ note }}".into(),
            html: Some("<p>{{ note }}</p>".into()),
            ..Default::default()
        }],
        None,
    )
    .expect("compile");
    let note = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    let rendered = set
        .render("note", None, &data(json!({"note": note})))
        .expect("render");
    assert_eq!(rendered.text, note);
    let html = rendered.html.expect("html");
    assert!(
        !html.contains("<script>") && !html.contains("<img"),
        "{html}"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
}

#[test]
fn a_template_cannot_read_files() {
    for source in [
        "{% include '/etc/passwd' %}",
        "{% include '../../../../etc/passwd' %}",
        "{% import '/etc/hostname' as host %}{{ host }}",
        "{% extends '/etc/passwd' %}",
    ] {
        match TemplateSet::compile(&[template("t", source)], None) {
            // Refused when compiled (a channel with it does not load), or at render: either way
            // without the file's content.
            Err(TemplateError::Invalid { detail, .. }) => {
                assert!(!detail.contains("root:"), "{source}: {detail}")
            }
            Err(other) => panic!("{source}: {other}"),
            Ok(set) => {
                let error = set
                    .render("t", None, &Map::new())
                    .expect_err("a file is not a template");
                let text = error.to_string();
                assert!(!text.contains("root:"), "{source}: {text}");
                assert!(
                    matches!(error, TemplateError::Render { .. }),
                    "{source}: {error}"
                );
            }
        }
    }
}

#[test]
fn a_template_cannot_read_the_environment() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let set = TemplateSet::compile(
        &[
            template("env", "{{ HOME }}{{ PATH }}"),
            template("env_object", "{{ env.HOME }}"),
        ],
        None,
    )
    .expect("compile");
    // The names are variables like any other: a send must give them, else it is refused.
    assert!(matches!(
        set.check("env", None, &Map::new()),
        Err(TemplateError::MissingVariable(_))
    ));
    assert!(matches!(
        set.check("env_object", None, &Map::new()),
        Err(TemplateError::MissingVariable(var)) if var == "env"
    ));
    for name in ["env", "env_object"] {
        match set.render(name, None, &Map::new()) {
            Ok(rendered) => panic!("{name} rendered without data: {rendered:?}"),
            Err(error) => assert!(!error.to_string().contains(&home), "{error}"),
        }
    }
    // Given as data, they are the data.
    let rendered = set
        .render("env", None, &data(json!({"HOME": "h", "PATH": "p"})))
        .expect("render");
    assert_eq!(rendered.text, "hp");
}

//! Shared by the Helm chart tests: the real helm from `scripts/infra up`, rendering the chart
//! into objects, and the metric names a PromQL expression uses.
#![allow(dead_code)]

use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use ump_testkit::infra;

/// The values every install needs (the chart has no defaults for where Kafka, Redis and MySQL
/// are); with these, the rest of values.yaml is what a `helm install` gets.
pub const REQUIRED: [&str; 3] = [
    "kafka.bootstrap=kafka:9092",
    "redis.url=redis://redis:6379",
    "mysql.url=mysql://ump:secret@mysql:3306/ump",
];

pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ump")
}

pub fn chart() -> String {
    chart_dir().to_str().expect("UTF-8 path").to_owned()
}

/// A values file of the chart's `ci/` folder.
pub fn values_file(name: &str) -> String {
    chart_dir()
        .join("ci")
        .join(name)
        .to_str()
        .expect("UTF-8 path")
        .to_owned()
}

/// `helm <args>`: its stdout, or its stderr as the error.
pub fn try_helm(args: &[&str]) -> Result<String, String> {
    let helm = infra().helm();
    let output = Command::new(&helm)
        .args(args)
        .env("KUBECONFIG", infra().kubeconfig())
        .output()
        .unwrap_or_else(|e| panic!("Helm: cannot run {}: {e}", helm.display()));
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("helm prints UTF-8"))
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

pub fn helm(args: &[&str]) -> String {
    try_helm(args).unwrap_or_else(|e| panic!("Helm: `helm {}` failed:\n{e}", args.join(" ")))
}

/// The objects `helm template` renders with `values` files and `--set` pairs.
pub fn render(namespace: &str, values: &[String], sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "ump", chart.as_str(), "--namespace", namespace];
    for file in values {
        args.extend(["--values", file.as_str()]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    parse(&helm(&args))
}

/// YAML documents into objects (empty documents dropped).
pub fn parse(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| {
            <Value as serde::Deserialize>::deserialize(document).expect("helm emits valid YAML")
        })
        .filter(|value| !value.is_null())
        .collect()
}

pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| {
            let all: Vec<String> = objects
                .iter()
                .map(|o| format!("{}/{}", kind(o), name(o)))
                .collect();
            panic!("no {kind_} {name_} in the rendered chart: {all:?}")
        })
}

/// The PromQL expressions of the chart's alerts and Grafana dashboard (panels and variables).
pub fn monitoring_expressions(objects: &[Value]) -> Vec<String> {
    let mut expressions = Vec::new();
    for rule in objects.iter().filter(|o| kind(o) == "PrometheusRule") {
        for group in rule["spec"]["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                expressions.push(rule["expr"].as_str().expect("expr").to_owned());
            }
        }
    }
    let dashboard = dashboard(objects);
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().expect("target expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(<series selector>, <label>): only the selector names a metric.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|inner| inner.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            expressions.push(selector.to_owned());
        }
    }
    expressions
}

/// The Grafana dashboard JSON of the chart's dashboard ConfigMap.
pub fn dashboard(objects: &[Value]) -> serde_json::Value {
    let config_map = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && o["data"]["ump.json"].is_string())
        .expect("the dashboard ConfigMap is rendered");
    serde_json::from_str(config_map["data"]["ump.json"].as_str().expect("ump.json"))
        .expect("the dashboard is JSON")
}

const KEYWORDS: [&str; 12] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "start", "end", "atan2",
];
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are neither functions,
/// keywords, label names (inside `{}` or grouping clauses), durations nor Grafana variables.
pub fn metric_names(expression: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expression.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        (i, chars.get(i).copied())
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_non_space(i);
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    i = skip_to(after + 1, ')');
                }
            } else if next == Some('(')
                || KEYWORDS.contains(&word.as_str())
                || followed_by_grouping(&chars[after..])
            {
                // A function, an aggregation (`sum by (le) (...)`) or an operator keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn followed_by_grouping(rest: &[char]) -> bool {
    let word: String = rest
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .collect();
    word == "by" || word == "without"
}

/// Every sample name a `/metrics` exposition offers: each family's own name plus, for
/// histograms and summaries, their `_bucket`, `_sum` and `_count` series.
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn metric_names_skip_functions_labels_durations_and_variables() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, channel) (rate(ump_x_bucket{namespace=~"$namespace", a="}"}[$__rate_interval])))
           / on (channel) group_left (provider) ump_y > 0.05 and deriv(ump_z[15m]) > 1e+06
           unless sum(ump_w offset 5m) without (pod)"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["ump_w", "ump_x_bucket", "ump_y", "ump_z"]);
    assert_eq!(
        metric_names("max(ump_operator_leader) < 1")
            .into_iter()
            .collect::<Vec<_>>(),
        ["ump_operator_leader"]
    );
}

#[test]
fn exported_names_expand_histograms() {
    let names = exported_names(
        "# HELP a_seconds x\n# TYPE a_seconds histogram\na_seconds_bucket{le=\"1\"} 0\n\
         # TYPE b_total counter\nb_total{x=\"y\"} 3\nc 1\n",
    );
    for name in [
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "b_total",
        "c",
    ] {
        assert!(names.contains(name), "{name}: {names:?}");
    }
}

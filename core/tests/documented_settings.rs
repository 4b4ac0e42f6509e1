//! The configuration tables cannot drift from the code: every `UMP_*` variable a program reads
//! (a string literal in a crate's `src`, test helpers aside) is in README.md's "Configuration"
//! table or the operator's settings table, each table row has its three cells, and no variable
//! has two rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `UMP_` names in `text` (a trailing `_` kept: `UMP_KAFKA_CONFIG_` is a prefix), each right
/// after `before` (`"\""`: string literals only).
fn names(text: &str, before: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    let start = format!("{before}UMP_");
    while let Some(at) = rest.find(&start) {
        let tail = &rest[at + before.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The rows of the table that follows `heading` in `file`: each row's cells.
fn table(file: &str, heading: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(root().join(file)).expect(file);
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{file}: no {heading:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and rule
        .map(|l| {
            assert!(l.ends_with('|'), "{file}: a row without its last cell: {l}");
            // Cells split at the pipes outside backticks (`a|b` in a cell is text).
            let mut cells = Vec::new();
            let (mut cell, mut quoted) = (String::new(), false);
            for c in l[1..l.len() - 1].chars() {
                match c {
                    '`' => {
                        quoted = !quoted;
                        cell.push(c);
                    }
                    '|' if !quoted => cells.push(std::mem::take(&mut cell)),
                    _ => cell.push(c),
                }
            }
            cells.push(cell);
            cells
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_setting_the_programs_read_is_documented_once() {
    let mut documented: BTreeMap<String, usize> = BTreeMap::new();
    for (file, heading, columns) in [
        ("README.md", "## Configuration", 3),
        ("operator/README.md", "## Settings (environment)", 3),
    ] {
        let rows = table(file, heading);
        assert!(
            rows.len() > 10,
            "{file}: the table is cut short ({} rows)",
            rows.len()
        );
        for row in rows {
            assert_eq!(row.len(), columns, "{file}: {row:?}");
            for name in names(&row[0], "") {
                *documented.entry(name).or_default() += 1;
            }
        }
    }
    // Settings both programs read, in both tables by design (the operator hands them on).
    let shared = [
        "UMP_KAFKA_BOOTSTRAP",
        "UMP_KAFKA_CONFIG_",
        "UMP_REDIS_URL",
        "UMP_WATCH_NAMESPACE",
        "UMP_EVENTS_TOPIC",
        "UMP_EVENTS_GROUP",
    ];
    let twice: Vec<&String> = documented
        .iter()
        .filter(|(name, n)| **n > 1 && !shared.contains(&name.as_str()))
        .map(|(name, _)| name)
        .collect();
    assert!(twice.is_empty(), "documented twice: {twice:?}");

    let mut files = Vec::new();
    // Every crate of the workspace (its `members` list).
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|line| line.strip_prefix("members = "))
        .expect("the workspace's members");
    let crates: Vec<&str> = members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|name| name.trim().trim_matches('"'))
        .collect();
    assert!(crates.contains(&"operator"), "{crates:?}");
    // `testkit` is test support: the settings it reads are the test infrastructure's, as those of
    // the `testing` modules below are.
    for krate in crates.into_iter().filter(|krate| *krate != "testkit") {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    let mut read = BTreeSet::new();
    for file in files {
        // Test helpers read the test infrastructure's settings, which are not the programs'.
        if file
            .components()
            .any(|c| c.as_os_str() == "testing" || c.as_os_str() == "testing.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source");
        for name in names(&text, "\"") {
            read.insert(name);
        }
    }
    assert!(
        read.contains("UMP_MYSQL_URL"),
        "no settings found: {read:?}"
    );
    let missing: Vec<&String> = read
        .iter()
        .filter(|name| {
            !documented.contains_key(*name)
                && !documented
                    .keys()
                    .any(|d| d.ends_with('_') && name.starts_with(d.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "read by the programs but in neither settings table: {missing:?}"
    );
}

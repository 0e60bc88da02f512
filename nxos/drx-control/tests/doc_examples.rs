//! Every TOML example the project shows (fenced ```toml blocks in README.md
//! and docs/, docs/examples/*.toml, and the files the image ships) goes
//! through the loader bpi-os itself uses for that kind of file.

use std::path::{Path, PathBuf};

use bpi_drx_control::{model::Topology, policy};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (where, text) of every example.
fn examples() -> Vec<(String, String)> {
    let root = root();
    let mut out = Vec::new();
    let mut markdown = vec![root.join("README.md")];
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            markdown.push(p);
        }
    }
    for entry in std::fs::read_dir(root.join("docs/examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut stack = vec![root.join("rootfs-overlay")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
    }
    for md in markdown {
        let text = std::fs::read_to_string(&md).unwrap();
        let mut block: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim() == "```toml" => block = Some((n + 2, String::new())),
                Some((first, body)) if line.trim() == "```" => {
                    out.push((format!("{}:{first}", md.display()), std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    for f in files {
        out.push((f.display().to_string(), std::fs::read_to_string(&f).unwrap()));
    }
    out
}

#[test]
fn every_toml_example_loads() {
    let all = examples();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (origin, text) in &all {
        let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{origin}: not TOML: {e}"));
        let kind = if table.contains_key("intent") {
            policy::parse(text, origin).map(|_| ())
        } else if ["node", "link", "control"].iter().any(|k| table.contains_key(*k)) {
            Topology::parse(text, origin).map(|_| ())
        } else if ["interfaces", "mode", "threshold"].iter().any(|k| table.contains_key(*k)) {
            bpi_drx_data::config::parse(text, origin).map(|_| ())
        } else {
            panic!("{origin}: no bpi-os loader reads this kind of file")
        };
        kind.unwrap_or_else(|e| panic!("{e:#}"));
        let name = if table.contains_key("intent") { "policy" } else if table.contains_key("interfaces") || table.contains_key("mode") { "drx-data" } else { "topology" };
        *kinds.entry(name).or_default() += 1;
    }
    // The docs' snippets and the shipped files: at least one of each kind.
    assert!(all.len() >= 5, "found only {} examples", all.len());
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

/// A hostile file nests 20,000 arrays: every loader refuses it with an error
/// (the toml crate limits depth; the table splitter does not recurse), never
/// by overflowing the stack, so a bad file cannot crash-loop the daemon.
#[test]
fn deeply_nested_files_are_refused_not_crashed_on() {
    let deep = format!("x = {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    let node = format!("[[node]]\nid = \"a\"\nscore = 0.5\nprefixes = {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    for text in [&deep, &node] {
        let err = Topology::parse(text, "deep.toml").unwrap_err().to_string();
        assert!(err.starts_with("deep.toml:"), "{err}");
        let err = policy::parse(text, "deep.toml").unwrap_err().to_string();
        assert!(err.starts_with("deep.toml:"), "{err}");
        let err = bpi_drx_data::config::parse(text, "deep.toml").unwrap_err().to_string();
        assert!(err.starts_with("deep.toml:"), "{err}");
    }
}

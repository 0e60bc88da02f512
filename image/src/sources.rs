//! Which Debian mirror the image is built from: the one in the host's apt
//! sources unless `--mirror` says otherwise.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub suite: String,
    pub mirror: String,
    pub security: Option<String>,
}

pub const SUITE: &str = "bookworm";

impl Sources {
    /// From the host's apt configuration, with an optional mirror override.
    pub fn from_host(mirror_override: Option<&str>) -> Result<Sources> {
        let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
            let mut files: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            for f in files {
                text.push('\n');
                text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        let found = parse(&text);
        let mirror = match mirror_override {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => match found.iter().find(|(_, s)| s == SUITE) {
                Some((u, _)) => u.clone(),
                None => bail!(
                    "no apt source for Debian {SUITE} on this host; pass --mirror URL (a Debian mirror)"
                ),
            },
        };
        let security = found
            .iter()
            .find(|(_, s)| s == &format!("{SUITE}-security"))
            .map(|(u, _)| u.clone());
        Ok(Sources { suite: SUITE.into(), mirror, security })
    }

    /// The source lines mmdebstrap gets.
    pub fn mmdebstrap_lines(&self) -> Vec<String> {
        let mut v = vec![
            format!("deb {} {} main", self.mirror, self.suite),
            format!("deb {} {}-updates main", self.mirror, self.suite),
        ];
        if let Some(s) = &self.security {
            v.push(format!("deb {s} {}-security main", self.suite));
        }
        v
    }
}

/// (uri, suite) pairs from one-line and deb822 apt sources.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // one-line format
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"deb") {
            let rest: Vec<&&str> = f[1..].iter().filter(|w| !w.starts_with('[')).collect();
            if rest.len() >= 2 && !f[1..].iter().any(|w| w.contains(']') && !w.starts_with('[')) {
                out.push((rest[0].trim_end_matches('/').to_string(), rest[1].to_string()));
            }
        }
    }
    // deb822 stanzas
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        if field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) {
            if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
                for u in uris.split_whitespace() {
                    for s in suites.split_whitespace() {
                        out.push((u.trim_end_matches('/').to_string(), s.to_string()));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats() {
        let text = "deb [arch=amd64] http://a/debian/ bookworm main\n# deb http://x y\n\nTypes: deb\nURIs: http://s/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let got = parse(text);
        assert!(got.contains(&("http://a/debian".into(), "bookworm".into())), "{got:?}");
        assert!(got.contains(&("http://s/debian-security".into(), "bookworm-security".into())), "{got:?}");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn lines_include_updates_and_security() {
        let s = Sources { suite: "bookworm".into(), mirror: "http://m".into(), security: Some("http://s".into()) };
        assert_eq!(
            s.mmdebstrap_lines(),
            vec!["deb http://m bookworm main", "deb http://m bookworm-updates main", "deb http://s bookworm-security main"]
        );
    }
}

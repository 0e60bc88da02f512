//! The data plane's settings in /bpi/config/system/drx-data.toml, read by
//! bpi-drx-data.service:
//!
//! ```toml
//! interfaces = ["ens3"]
//! mode = "generic"          # or "native"
//! threshold = 0.5           # drop destinations scoring below this
//! unknown_verdict = "pass"  # destinations no prefix covers
//! default_verdict = "pass"  # frames the program cannot parse
//! cache = true
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{
    attach::Mode,
    layout::{score_from_f64, Settings, Verdict},
};

pub const DEFAULT_PATH: &str = "/bpi/config/system/drx-data.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    interfaces: Vec<String>,
    mode: Option<String>,
    threshold: Option<f64>,
    unknown_verdict: Option<String>,
    default_verdict: Option<String>,
    cache: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub mode: Mode,
    pub settings: Settings,
}

pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let raw: Raw = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let defaults = Settings::default();
    let field = |what: &str, e: anyhow::Error| anyhow::anyhow!("{origin}: {what}: {e}");
    let settings = Settings {
        threshold: match raw.threshold {
            Some(t) => score_from_f64(t).map_err(|e| field("threshold", e))?,
            None => defaults.threshold,
        },
        unknown_verdict: match raw.unknown_verdict {
            Some(v) => v.parse::<Verdict>().map_err(|e| field("unknown_verdict", e))?,
            None => defaults.unknown_verdict,
        },
        default_verdict: match raw.default_verdict {
            Some(v) => v.parse::<Verdict>().map_err(|e| field("default_verdict", e))?,
            None => defaults.default_verdict,
        },
        cache: raw.cache.unwrap_or(defaults.cache),
        applied: 0,
    };
    let mode = match raw.mode {
        Some(m) => m.parse().map_err(|e| field("mode", e))?,
        None => Mode::Native,
    };
    for name in &raw.interfaces {
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) {
            bail!("{origin}: interfaces: '{name}' is not a valid interface name");
        }
    }
    Ok(Config { interfaces: raw.interfaces, mode, settings })
}

pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_fills_defaults() {
        let c = parse("interfaces = [\"ens3\", \"ens4\"]\nmode = \"generic\"\nthreshold = 0.7\nunknown_verdict = \"drop\"\n", "t.toml").unwrap();
        assert_eq!(c.interfaces, ["ens3", "ens4"]);
        assert_eq!(c.mode, Mode::Generic);
        assert_eq!(c.settings.threshold, 700_000);
        assert_eq!(c.settings.unknown_verdict, Verdict::Drop);
        assert_eq!(c.settings.default_verdict, Verdict::Pass);
        let empty = parse("", "t.toml").unwrap();
        assert!(empty.interfaces.is_empty());
        assert_eq!(empty.mode, Mode::Native);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (text, want) in [
            ("threshold = 1.5", "threshold"),
            ("mode = \"fast\"", "mode"),
            ("unknown_verdict = \"maybe\"", "unknown_verdict"),
            ("interfaces = [\"a b\"]", "interfaces"),
            ("colour = 1", "colour"),
        ] {
            let err = parse(text, "/bpi/config/system/drx-data.toml").unwrap_err().to_string();
            assert!(err.contains("/bpi/config/system/drx-data.toml") && err.contains(want), "{text}: {err}");
        }
    }
}

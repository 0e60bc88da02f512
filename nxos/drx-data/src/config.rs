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

use anyhow::{Context, Result};
use bpi_support::config::{Source, Spanned};
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
    interfaces: Vec<Spanned<String>>,
    mode: Option<Spanned<String>>,
    threshold: Option<Spanned<f64>>,
    unknown_verdict: Option<Spanned<String>>,
    default_verdict: Option<Spanned<String>>,
    cache: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub mode: Mode,
    pub settings: Settings,
}

pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let src = Source::new(text, origin);
    let raw: Raw = src.parse()?;
    let defaults = Settings::default();
    let verdict = |key: &str, v: &Option<Spanned<String>>, default: Verdict| -> Result<Verdict> {
        match v {
            Some(v) => v.get_ref().parse::<Verdict>().map_err(|e| src.error(v, format!("{key}: {e}"))),
            None => Ok(default),
        }
    };
    let settings = Settings {
        threshold: match &raw.threshold {
            Some(t) => score_from_f64(*t.get_ref()).map_err(|e| src.error(t, format!("threshold: {e}")))?,
            None => defaults.threshold,
        },
        unknown_verdict: verdict("unknown_verdict", &raw.unknown_verdict, defaults.unknown_verdict)?,
        default_verdict: verdict("default_verdict", &raw.default_verdict, defaults.default_verdict)?,
        cache: raw.cache.unwrap_or(defaults.cache),
        applied: 0,
    };
    let mode = match &raw.mode {
        Some(m) => m.get_ref().parse().map_err(|e| src.error(m, format!("mode: {e}")))?,
        None => Mode::Native,
    };
    for name in &raw.interfaces {
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
            return Err(src.error(name, format!("interfaces: '{n}' is not a valid interface name")));
        }
    }
    Ok(Config { interfaces: raw.interfaces.into_iter().map(Spanned::into_inner).collect(), mode, settings })
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

//! Intent policies (seed 002): named constraint sets, in TOML files under
//! /bpi/config/policies/intent-policies, compiled into path constraints.
//!
//! ```toml
//! [[intent]]
//! name = "high_security_banking"
//! description = "banking_api, pci_dss"
//! trust_floor = 0.95
//! jurisdiction_allow = ["US", "EU", "CA"]
//! attestation = "software"        # none | software | tpm
//! ```
//!
//! Keys: name, description, trust_floor, latency_budget_ms,
//! min_bandwidth_mbps, jurisdiction_allow, jurisdiction_exclude,
//! domestic_only, attestation, carbon_max, backups.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use bpi_support::config::{Source, Spanned};
use serde::{Deserialize, Serialize};

use crate::{
    model::{check_range, Attestation, MAX_BACKUPS},
    path::Constraints,
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Intent {
    pub name: String,
    pub description: String,
    pub constraints: Constraints,
    /// Backup paths wanted (None: the control plane's default).
    pub backups: Option<usize>,
    /// Where it was defined, for messages.
    pub origin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    intent: Vec<RawIntent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    trust_floor: Option<Spanned<f64>>,
    latency_budget_ms: Option<Spanned<f64>>,
    min_bandwidth_mbps: Option<Spanned<f64>>,
    jurisdiction_allow: Option<Spanned<Vec<String>>>,
    jurisdiction_exclude: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    domestic_only: bool,
    attestation: Option<Attestation>,
    carbon_max: Option<Spanned<f64>>,
    backups: Option<Spanned<i64>>,
}

pub fn parse(text: &str, origin: &str) -> Result<Vec<Intent>> {
    let src = Source::new(text, origin);
    let raw: RawFile = src.parse()?;
    let mut out: Vec<Intent> = Vec::new();
    for r in raw.intent {
        let name = r.name.get_ref().clone();
        let valid_name = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !valid_name {
            return Err(src.error(&r.name, format!("intent.name: '{name}' is not a name (1-64 of A-Z a-z 0-9 _ -)")));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(src.error(&r.name, format!("intent.name: '{name}' is defined twice")));
        }
        let number = |key: &str, v: &Option<Spanned<f64>>, hi: f64| -> Result<Option<f64>> {
            let Some(v) = v else { return Ok(None) };
            check_range(*v.get_ref(), 0.0, hi).map_err(|e| src.error(v, format!("intent '{name}': {key}: {e}")))?;
            Ok(Some(*v.get_ref()))
        };
        let trust_floor = number("trust_floor", &r.trust_floor, 1.0)?;
        let latency_budget_ms = number("latency_budget_ms", &r.latency_budget_ms, 1e9)?;
        let min_bandwidth_mbps = number("min_bandwidth_mbps", &r.min_bandwidth_mbps, 1e12)?;
        let carbon_max = number("carbon_max", &r.carbon_max, 1e12)?;
        let jurisdiction_exclude = r.jurisdiction_exclude.as_ref().map(|e| e.get_ref().clone()).unwrap_or_default();
        if let Some(allow) = &r.jurisdiction_allow {
            if allow.get_ref().is_empty() {
                return Err(src.error(allow, format!("intent '{name}': jurisdiction_allow: an empty list allows nothing")));
            }
            if let (Some(both), Some(exclude)) = (allow.get_ref().iter().find(|j| jurisdiction_exclude.contains(j)), &r.jurisdiction_exclude) {
                return Err(src.error(exclude, format!("intent '{name}': jurisdiction_exclude: '{both}' is also allowed")));
            }
        }
        let backups = match &r.backups {
            Some(b) if (0..=MAX_BACKUPS as i64).contains(b.get_ref()) => Some(*b.get_ref() as usize),
            Some(b) => return Err(src.error(b, format!("intent '{name}': backups: {} is outside 0..{MAX_BACKUPS}", b.get_ref()))),
            None => None,
        };
        out.push(Intent {
            origin: src.at(r.name.span()),
            name,
            description: r.description,
            constraints: Constraints {
                trust_floor,
                latency_budget_ms,
                min_bandwidth_mbps,
                jurisdiction_allow: r.jurisdiction_allow.map(|a| a.into_inner()),
                jurisdiction_exclude,
                domestic_only: r.domestic_only,
                attestation: r.attestation,
                carbon_max,
            },
            backups,
        });
    }
    Ok(out)
}

pub fn load_file(path: &Path) -> Result<Vec<Intent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Every *.toml under `path` (or `path` itself), by name; a name defined in
/// two files is an error naming both.
pub fn load(path: &Path) -> Result<BTreeMap<String, Intent>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_owned()]
    };
    let mut all: BTreeMap<String, Intent> = BTreeMap::new();
    for f in files {
        for intent in load_file(&f)? {
            if let Some(first) = all.get(&intent.name) {
                bail!("{}: intent '{}' is already defined at {}", intent.origin, intent.name, first.origin);
            }
            all.insert(intent.name.clone(), intent);
        }
    }
    Ok(all)
}

/// Seed 002's three intents, as shipped in the image.
pub const SHIPPED: &str = include_str!("../../../rootfs-overlay/bpi/config/policies/intent-policies/seed-intents.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_intents_parse_into_seed_002s_constraints() {
        let intents = parse(SHIPPED, "seed-intents.toml").unwrap();
        let names: Vec<&str> = intents.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["ultra_low_latency", "high_security_banking", "government_compliance"]);
        let ull = &intents[0].constraints;
        assert_eq!((ull.trust_floor, ull.carbon_max, ull.latency_budget_ms), (Some(0.9), Some(20.0), Some(2.0)));
        assert_eq!(ull.attestation, Some(Attestation::Software));
        let bank = &intents[1].constraints;
        assert_eq!(bank.jurisdiction_allow.as_deref(), Some(&["US".to_string(), "EU".into(), "CA".into()][..]));
        assert_eq!(bank.trust_floor, Some(0.95));
        let gov = &intents[2].constraints;
        assert!(gov.domestic_only);
        assert_eq!(gov.attestation, Some(Attestation::Tpm));
        assert_eq!(gov.trust_floor, Some(0.98));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let base = "[[intent]]\nname = \"a\"\ntrust_floor = 0.5\n\n[[intent]]\nname = \"b\"\nlatency_budget_ms = 5\n";
        let cases = [
            (base.replace("trust_floor = 0.5", "trust_floor = 1.5"), "p.toml:3:", "trust_floor"),
            (base.replace("latency_budget_ms = 5", "latency_budget_ms = nan"), "p.toml:7:", "not a finite"),
            (base.replace("latency_budget_ms = 5", "latency_budget = 5"), "p.toml:7:", "latency_budget"),
            (base.replace("name = \"b\"", "name = \"a\""), "p.toml:6:", "defined twice"),
            (base.replace("latency_budget_ms = 5", "attestation = \"maybe\""), "p.toml:7:", "maybe"),
            (base.replace("latency_budget_ms = 5", "jurisdiction_allow = []"), "p.toml:7:", "allows nothing"),
            (base.replace("latency_budget_ms = 5", "backups = 99"), "p.toml:7:", "backups"),
        ];
        for (text, line, key) in cases {
            let err = parse(&text, "p.toml").unwrap_err().to_string();
            assert!(err.contains(line) && err.contains(key), "{line} {key}: {err}");
        }
    }
}

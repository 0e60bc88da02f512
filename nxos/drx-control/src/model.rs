//! The Meta-RIB as written in /bpi/config/system/topology.toml: nodes (with
//! prefixes, jurisdiction, attestation and trust inputs), links (latency,
//! bandwidth, loss, carbon) and the control plane's settings. Every check
//! failure names the file, the line and the key.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use bpi_drx_data::prefix::Prefix;
use serde::{Deserialize, Serialize};

use crate::trust::TrustInputs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attestation {
    None,
    Software,
    Tpm,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    /// The node's id in the data plane's maps.
    pub dp_id: u32,
    pub prefixes: Vec<Prefix>,
    pub jurisdiction: String,
    pub attestation: Attestation,
    pub inputs: TrustInputs,
    /// A score set by an operator (`trust update`), used instead of the inputs.
    pub score_override: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub a: String,
    pub b: String,
    pub latency_ms: f64,
    pub bandwidth_mbps: f64,
    /// Packet loss, 0..1.
    pub loss: f64,
    /// Carbon cost of carrying traffic over it (any unit, summed along a path).
    pub carbon: f64,
    pub up: bool,
}

/// The most backup paths any query, intent or topology may ask for: Yen's
/// algorithm runs one search per backup, so an unbounded count is an
/// unprivileged caller's way to wedge the daemon.
pub const MAX_BACKUPS: usize = 16;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControlSettings {
    /// The node this machine is: the source of its routing table.
    pub local: Option<String>,
    /// Nodes scoring below it are never used.
    pub blacklist_threshold: f64,
    /// A hop this slow (or slower) gets no latency credit.
    pub latency_ref_ms: f64,
    /// A hop this wide (or wider) gets full bandwidth credit.
    pub bandwidth_ref_mbps: f64,
    /// Backup paths returned with the best one.
    pub backups: usize,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings { local: None, blacklist_threshold: 0.3, latency_ref_ms: 100.0, bandwidth_ref_mbps: 100_000.0, backups: 2 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Topology {
    pub settings: ControlSettings,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
}

struct RawFile<'a> {
    control: Option<(RawControl, Section<'a>)>,
    node: Vec<(RawNode, Section<'a>)>,
    link: Vec<(RawLink, Section<'a>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    local: Option<String>,
    blacklist_threshold: Option<f64>,
    latency_ref_ms: Option<f64>,
    bandwidth_ref_mbps: Option<f64>,
    backups: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    dp_id: Option<i64>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default = "unknown_jurisdiction")]
    jurisdiction: String,
    #[serde(default = "no_attestation")]
    attestation: Attestation,
    uptime: f64,
    performance: f64,
    reputation: f64,
    known_vulnerabilities: f64,
    patch_level: f64,
    security_incidents: f64,
    compliance: f64,
    score: Option<f64>,
}

fn unknown_jurisdiction() -> String {
    "unknown".into()
}

fn no_attestation() -> Attestation {
    Attestation::None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: String,
    b: String,
    latency_ms: f64,
    bandwidth_mbps: f64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    carbon: f64,
    #[serde(default = "yes")]
    up: bool,
}

fn yes() -> bool {
    true
}

/// One table of a TOML file: its header (None before the first), the line
/// its body starts on (1-based) and the body's text (a slice of the file).
pub struct Section<'a> {
    pub header: Option<&'a str>,
    pub first_line: usize,
    pub body: &'a str,
}

impl Section<'_> {
    /// The line (1-based) of the first body line `pred` accepts.
    fn find(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.body.lines().position(|l| pred(l.trim())).map(|n| self.first_line + n)
    }

    /// The line of `key` in this table; the header's line when it is absent.
    pub fn line_of(&self, key: &str) -> usize {
        self.find(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key)).unwrap_or(self.header_line())
    }

    /// The header's own line (line 1 for the text before any header).
    pub fn header_line(&self) -> usize {
        self.first_line.saturating_sub(1).max(1)
    }
}

/// Splits a TOML file at its table headers (a header alone on its line), so
/// each table is parsed alone: the parser then never holds the whole file as
/// a document (a 10k-node Meta-RIB stays a few MB), and errors get exact lines.
pub fn sections(text: &str) -> Vec<Section<'_>> {
    let mut out = Vec::new();
    let (mut header, mut first_line, mut start) = (None, 1, 0);
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            out.push(Section { header, first_line, body: &text[start..offset] });
            (header, first_line, start) = (Some(t), n + 2, offset + line.len());
        }
        offset += line.len();
    }
    out.push(Section { header, first_line, body: &text[start..] });
    out
}

/// Parses one table's body as `T`; errors as `FILE:LINE: ...`.
pub fn parse_section<T: serde::de::DeserializeOwned>(s: &Section<'_>, origin: &str) -> Result<T> {
    basic_toml::from_str(s.body).map_err(|e| toml_error(s, origin, &e.to_string()))
}

/// A TOML error from one section, as `FILE:LINE: ...`: unknown keys and
/// values are found on their own line, other errors keep the parser's line,
/// moved by the section's offset.
fn toml_error(s: &Section<'_>, origin: &str, err: &str) -> anyhow::Error {
    let quoted = |marker: &str| err.split(marker).nth(1).and_then(|rest| rest.split('`').next()).map(str::to_string);
    let line = if let Some(key) = quoted("unknown field `") {
        s.line_of(&key)
    } else if let Some(value) = quoted("unknown variant `") {
        let want = format!("\"{value}\"");
        s.find(|l| l.split_once('=').is_some_and(|(_, v)| v.split('#').next().unwrap_or("").trim() == want)).unwrap_or(s.header_line())
    } else {
        let n = err.split(" at line ").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok());
        s.first_line + n.unwrap_or(1).saturating_sub(1)
    };
    let detail = err.split(" for key ").next().unwrap_or(err).split(" at line ").next().unwrap_or(err).trim_end();
    anyhow::anyhow!("{origin}:{line}: {detail}")
}

/// Reads the Meta-RIB section by section; each table keeps its section, for
/// the lines of later errors.
fn read_sections<'a>(text: &'a str, origin: &str) -> Result<RawFile<'a>> {
    let mut raw = RawFile { control: None, node: Vec::new(), link: Vec::new() };
    for s in sections(text) {
        match s.header {
            None => {
                let _: Empty = parse_section(&s, origin)?;
            }
            Some("[control]") if raw.control.is_none() => raw.control = Some((parse_section(&s, origin)?, s)),
            Some("[[node]]") => raw.node.push((parse_section(&s, origin)?, s)),
            Some("[[link]]") => raw.link.push((parse_section(&s, origin)?, s)),
            Some(h) => bail!("{origin}:{}: table {h} is not one of [control] (once), [[node]], [[link]]", s.header_line()),
        }
    }
    Ok(raw)
}

/// Nothing may stand before the first table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Checks a number is finite and within `lo..=hi`.
pub fn check_range(value: f64, lo: f64, hi: f64) -> std::result::Result<(), String> {
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    if value < lo || value > hi {
        return Err(format!("{value} is outside {lo}..{hi}"));
    }
    Ok(())
}

pub fn check_node_id(id: &str) -> std::result::Result<(), String> {
    let ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("'{id}' is not a node id (1-64 of A-Z a-z 0-9 . _ -)"))
    }
}

/// FNV-1a of the node id: a data-plane id that does not move when the file is reordered.
pub fn default_dp_id(id: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

pub const INPUT_RANGES: [(&str, f64, f64); 7] = [
    ("uptime", 0.0, 1.0),
    ("performance", 0.0, 1.0),
    ("reputation", 0.0, 1.0),
    ("known_vulnerabilities", 0.0, 1e9),
    ("patch_level", 0.0, 100.0),
    ("security_incidents", 0.0, 1e9),
    ("compliance", 0.0, 100.0),
];

pub fn input_values(i: &TrustInputs) -> [f64; 7] {
    [i.uptime, i.performance, i.reputation, i.known_vulnerabilities, i.patch_level, i.security_incidents, i.compliance]
}

impl Topology {
    pub fn parse(text: &str, origin: &str) -> Result<Topology> {
        let raw = read_sections(text, origin)?;
        let at = |s: &Section<'_>, key: &str| format!("{origin}:{}", s.line_of(key));
        let mut settings = ControlSettings::default();
        if let Some((c, sec)) = &raw.control {
            let field = |key: &str, v: f64, lo: f64, hi: f64| -> Result<f64> {
                check_range(v, lo, hi).map_err(|e| anyhow::anyhow!("{}: control.{key}: {e}", at(sec, key)))?;
                Ok(v)
            };
            settings.local = c.local.clone();
            if let Some(v) = c.blacklist_threshold {
                settings.blacklist_threshold = field("blacklist_threshold", v, 0.0, 1.0)?;
            }
            if let Some(v) = c.latency_ref_ms {
                settings.latency_ref_ms = field("latency_ref_ms", v, 1e-6, 1e9)?;
            }
            if let Some(v) = c.bandwidth_ref_mbps {
                settings.bandwidth_ref_mbps = field("bandwidth_ref_mbps", v, 1e-6, 1e12)?;
            }
            if let Some(v) = c.backups {
                if !(0..=MAX_BACKUPS as i64).contains(&v) {
                    bail!("{}: control.backups: {v} is outside 0..{MAX_BACKUPS}", at(sec, "backups"));
                }
                settings.backups = v as usize;
            }
        }
        let mut nodes = Vec::new();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut dp_ids: BTreeMap<u32, String> = BTreeMap::new();
        for (i, (n, sec)) in raw.node.into_iter().enumerate() {
            let here = |key: &str| at(&sec, key);
            check_node_id(&n.id).map_err(|e| anyhow::anyhow!("{}: node.id: {e}", here("id")))?;
            if ids.insert(n.id.clone(), i).is_some() {
                bail!("{}: node.id: '{}' is defined twice", here("id"), n.id);
            }
            let inputs = TrustInputs {
                uptime: n.uptime,
                performance: n.performance,
                reputation: n.reputation,
                known_vulnerabilities: n.known_vulnerabilities,
                patch_level: n.patch_level,
                security_incidents: n.security_incidents,
                compliance: n.compliance,
            };
            for ((key, lo, hi), v) in INPUT_RANGES.iter().zip(input_values(&inputs)) {
                check_range(v, *lo, *hi).map_err(|e| anyhow::anyhow!("{}: node '{}': {key}: {e}", here(key), n.id))?;
            }
            if let Some(s) = n.score {
                check_range(s, 0.0, 1.0).map_err(|e| anyhow::anyhow!("{}: node '{}': score: {e}", here("score"), n.id))?;
            }
            let dp_id = match n.dp_id {
                Some(d) if (1..=i64::from(u32::MAX)).contains(&d) => d as u32,
                Some(d) => bail!("{}: node '{}': dp_id: {d} is outside 1..{}", here("dp_id"), n.id, u32::MAX),
                None => default_dp_id(&n.id),
            };
            if let Some(other) = dp_ids.insert(dp_id, n.id.clone()) {
                bail!("{}: node '{}': dp_id {dp_id} is also node '{other}'s; set dp_id by hand", here("dp_id"), n.id);
            }
            let prefixes = n
                .prefixes
                .iter()
                .map(|p| p.parse::<Prefix>())
                .collect::<Result<Vec<_>>>()
                .map_err(|e| anyhow::anyhow!("{}: node '{}': prefixes: {e}", here("prefixes"), n.id))?;
            if n.jurisdiction.is_empty() {
                bail!("{}: node '{}': jurisdiction: empty", here("jurisdiction"), n.id);
            }
            nodes.push(Node { id: n.id, dp_id, prefixes, jurisdiction: n.jurisdiction, attestation: n.attestation, inputs, score_override: n.score });
        }
        let mut links = Vec::new();
        for (l, sec) in raw.link {
            let here = |key: &str| at(&sec, key);
            for (key, end) in [("a", &l.a), ("b", &l.b)] {
                if !ids.contains_key(end) {
                    bail!("{}: link.{key}: no node '{end}'", here(key));
                }
            }
            if l.a == l.b {
                bail!("{}: link: '{}' links to itself", here("b"), l.a);
            }
            for (key, v, lo, hi) in [
                ("latency_ms", l.latency_ms, 0.0, 1e9),
                ("bandwidth_mbps", l.bandwidth_mbps, 0.0, 1e12),
                ("loss", l.loss, 0.0, 1.0),
                ("carbon", l.carbon, 0.0, 1e12),
            ] {
                check_range(v, lo, hi).map_err(|e| anyhow::anyhow!("{}: link {}-{}: {key}: {e}", here(key), l.a, l.b))?;
            }
            links.push(Link { a: l.a, b: l.b, latency_ms: l.latency_ms, bandwidth_mbps: l.bandwidth_mbps, loss: l.loss, carbon: l.carbon, up: l.up });
        }
        if let (Some(local), Some((_, sec))) = (&settings.local, &raw.control) {
            if !ids.contains_key(local) {
                bail!("{}: control.local: no node '{local}'", at(sec, "local"));
            }
        }
        Ok(Topology { settings, nodes, links })
    }

    pub fn load(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Topology::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[control]
local = "a"
blacklist_threshold = 0.3

[[node]]
id = "a"
prefixes = ["10.1.0.0/16"]
jurisdiction = "US"
attestation = "tpm"
uptime = 0.99
performance = 0.9
reputation = 0.8
known_vulnerabilities = 3
patch_level = 95
security_incidents = 1
compliance = 90

[[node]]
id = "b"
uptime = 1.0
performance = 1.0
reputation = 1.0
known_vulnerabilities = 0
patch_level = 100
security_incidents = 0
compliance = 100
score = 0.5

[[link]]
a = "a"
b = "b"
latency_ms = 2.5
bandwidth_mbps = 10000
loss = 0.001
carbon = 3
"#;

    #[test]
    fn parses_a_good_file() {
        let t = Topology::parse(GOOD, "t.toml").unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].attestation, Attestation::Tpm);
        assert_eq!(t.nodes[1].jurisdiction, "unknown");
        assert_eq!(t.nodes[1].score_override, Some(0.5));
        assert_eq!(t.nodes[0].dp_id, default_dp_id("a"));
        assert_eq!(t.links[0].carbon, 3.0);
        assert_eq!(t.settings.local.as_deref(), Some("a"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (GOOD.replace("uptime = 0.99", "uptime = 1.5"), ":11:", "uptime"),
            (GOOD.replace("uptime = 0.99", "uptime = nan"), ":11:", "not a finite number"),
            (GOOD.replace("latency_ms = 2.5", "latency_ms = -1"), ":33:", "latency_ms"),
            (GOOD.replace("b = \"b\"\nlatency", "b = \"zz\"\nlatency"), ":32:", "no node 'zz'"),
            (GOOD.replace("id = \"b\"", "id = \"a\""), ":20:", "defined twice"),
            (GOOD.replace("prefixes = [\"10.1.0.0/16\"]", "prefixes = [\"10.1.0.1/16\"]"), ":8:", "host bits"),
            (GOOD.replace("local = \"a\"", "local = \"q\""), ":3:", "control.local"),
            (GOOD.replace("compliance = 90", "compliance = 90\ncolour = 1"), ":18:", "colour"),
            (GOOD.replace("attestation = \"tpm\"", "attestation = \"tmp\""), ":10:", "unknown variant `tmp`"),
            (GOOD.replace("score = 0.5", "score = 2"), ":28:", "score"),
        ];
        for (text, line, key) in cases {
            let err = Topology::parse(&text, "/bpi/config/system/topology.toml").unwrap_err().to_string();
            assert!(err.contains("/bpi/config/system/topology.toml") && err.contains(line) && err.contains(key), "{line} {key}: {err}");
        }
    }
}

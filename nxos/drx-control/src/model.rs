//! The Meta-RIB as written in /bpi/config/system/topology.toml: nodes (with
//! prefixes, jurisdiction, attestation and trust inputs), links (latency,
//! bandwidth, loss, carbon) and the control plane's settings. Every check
//! failure names the file, the line and the key.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use bpi_drx_data::prefix::Prefix;
use bpi_support::config::{Source, Spanned};
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
    /// The seven trust inputs; a node given only a `score` has none.
    pub inputs: Option<TrustInputs>,
    /// A score set by an operator (`score` in the file, `trust update`), used instead of the inputs.
    pub score_override: Option<f64>,
    /// Its QLock public identity (base64 of Ed25519 then ML-DSA-65 keys), checked for length here.
    pub identity: Option<String>,
    /// Where its QLock service listens (host:port).
    pub qlock: Option<String>,
}

/// The bytes of a QLock public identity: Ed25519's 32 and ML-DSA-65's 1952.
pub const QLOCK_IDENTITY_LEN: usize = 32 + 1952;

/// On D-Bus too, in `topology()`'s reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, zbus::zvariant::Type)]
#[zvariant(crate = "zbus::zvariant")]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    control: Option<RawControl>,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    local: Option<Spanned<String>>,
    blacklist_threshold: Option<Spanned<f64>>,
    latency_ref_ms: Option<Spanned<f64>>,
    bandwidth_ref_mbps: Option<Spanned<f64>>,
    backups: Option<Spanned<i64>>,
}

/// Each value the loader checks keeps its span, for the line of its error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    dp_id: Option<Spanned<i64>>,
    prefixes: Option<Spanned<Vec<String>>>,
    jurisdiction: Option<Spanned<String>>,
    #[serde(default = "no_attestation")]
    attestation: Attestation,
    uptime: Option<Spanned<f64>>,
    performance: Option<Spanned<f64>>,
    reputation: Option<Spanned<f64>>,
    known_vulnerabilities: Option<Spanned<f64>>,
    patch_level: Option<Spanned<f64>>,
    security_incidents: Option<Spanned<f64>>,
    compliance: Option<Spanned<f64>>,
    score: Option<Spanned<f64>>,
    identity: Option<Spanned<String>>,
    qlock: Option<Spanned<String>>,
}

fn no_attestation() -> Attestation {
    Attestation::None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: Spanned<String>,
    b: Spanned<String>,
    latency_ms: Spanned<f64>,
    bandwidth_mbps: Spanned<f64>,
    loss: Option<Spanned<f64>>,
    carbon: Option<Spanned<f64>>,
    #[serde(default = "yes")]
    up: bool,
}

fn yes() -> bool {
    true
}

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

/// A QLock identity as the file gives it: base64 of the right length.
fn check_identity(text: &str) -> std::result::Result<String, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| format!("not base64 ({e}); paste what `bpi-os nxos identity export` prints"))?;
    if bytes.len() != QLOCK_IDENTITY_LEN {
        return Err(format!("{} bytes, not the {QLOCK_IDENTITY_LEN} of a QLock identity (Ed25519 then ML-DSA-65)", bytes.len()));
    }
    Ok(text.trim().to_string())
}

/// host:port, with a port from 1 to 65535 ([v6]:port for IPv6 addresses).
fn check_endpoint(text: &str) -> std::result::Result<String, String> {
    let bad = || format!("'{text}' is not host:port (an IPv6 address as [addr]:port)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::Ipv4Addr>().is_ok()
            || host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
            || host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b)));
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(text.to_string())
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

/// A number from the file, checked to lie within `lo..=hi`; errors name the line and key.
fn ranged(src: &Source<'_>, what: &str, v: &Spanned<f64>, lo: f64, hi: f64) -> Result<f64> {
    check_range(*v.get_ref(), lo, hi).map_err(|e| src.error(v, format!("{what}: {e}")))?;
    Ok(*v.get_ref())
}

fn settings_of(src: &Source<'_>, c: &RawControl) -> Result<ControlSettings> {
    let mut settings = ControlSettings { local: c.local.as_ref().map(|l| l.get_ref().clone()), ..ControlSettings::default() };
    if let Some(v) = &c.blacklist_threshold {
        settings.blacklist_threshold = ranged(src, "control.blacklist_threshold", v, 0.0, 1.0)?;
    }
    if let Some(v) = &c.latency_ref_ms {
        settings.latency_ref_ms = ranged(src, "control.latency_ref_ms", v, 1e-6, 1e9)?;
    }
    if let Some(v) = &c.bandwidth_ref_mbps {
        settings.bandwidth_ref_mbps = ranged(src, "control.bandwidth_ref_mbps", v, 1e-6, 1e12)?;
    }
    if let Some(b) = &c.backups {
        let v = *b.get_ref();
        if !(0..=MAX_BACKUPS as i64).contains(&v) {
            return Err(src.error(b, format!("control.backups: {v} is outside 0..{MAX_BACKUPS}")));
        }
        settings.backups = v as usize;
    }
    Ok(settings)
}

/// The seven inputs, all of them, unless an operator's score stands instead.
fn inputs_of(src: &Source<'_>, n: &RawNode, id: &str) -> Result<Option<TrustInputs>> {
    let given = [&n.uptime, &n.performance, &n.reputation, &n.known_vulnerabilities, &n.patch_level, &n.security_incidents, &n.compliance];
    let mut values = [0.0; 7];
    for (((key, lo, hi), v), out) in INPUT_RANGES.iter().zip(given).zip(&mut values) {
        match v {
            Some(v) => *out = ranged(src, &format!("node '{id}': {key}"), v, *lo, *hi)?,
            None if n.score.is_some() => {}
            None => return Err(src.error(&n.id, format!("node '{id}': {key}: missing (give all seven trust inputs, or a score)"))),
        }
    }
    if given.iter().all(|v| v.is_none()) {
        return Ok(None);
    }
    if let Some(missing) = INPUT_RANGES.iter().zip(given).find(|(_, v)| v.is_none()) {
        return Err(src.error(&n.id, format!("node '{id}': {}: missing (the trust inputs come all seven or not at all)", missing.0 .0)));
    }
    let [uptime, performance, reputation, known_vulnerabilities, patch_level, security_incidents, compliance] = values;
    Ok(Some(TrustInputs { uptime, performance, reputation, known_vulnerabilities, patch_level, security_incidents, compliance }))
}

impl Topology {
    /// Parses a Meta-RIB a top-level table at a time (a 10k-node file whole
    /// would cost the parser ~150 MB at its peak); each table keeps its piece
    /// of the file, for the lines of later errors.
    pub fn parse(text: &str, origin: &str) -> Result<Topology> {
        let whole = Source::new(text, origin);
        let mut control: Option<(Source<'_>, RawControl)> = None;
        let (mut raw_nodes, mut raw_links) = (Vec::new(), Vec::new());
        for piece in whole.tables() {
            let part: RawFile = piece.parse()?;
            if let Some(c) = part.control {
                if control.is_some() {
                    bail!("{}: [control] is given twice", piece.at(0..0));
                }
                control = Some((piece, c));
            }
            raw_nodes.extend(part.node.into_iter().map(|n| (piece, n)));
            raw_links.extend(part.link.into_iter().map(|l| (piece, l)));
        }
        let settings = match &control {
            Some((src, c)) => settings_of(src, c)?,
            None => ControlSettings::default(),
        };
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut dp_ids: BTreeMap<u32, String> = BTreeMap::new();
        for (i, (src, n)) in raw_nodes.into_iter().enumerate() {
            let id = n.id.get_ref().clone();
            check_node_id(&id).map_err(|e| src.error(&n.id, format!("node.id: {e}")))?;
            if ids.insert(id.clone(), i).is_some() {
                return Err(src.error(&n.id, format!("node.id: '{id}' is defined twice")));
            }
            let inputs = inputs_of(&src, &n, &id)?;
            let score = n.score.as_ref().map(|s| ranged(&src, &format!("node '{id}': score"), s, 0.0, 1.0)).transpose()?;
            let dp_id = match &n.dp_id {
                Some(d) if (1..=i64::from(u32::MAX)).contains(d.get_ref()) => *d.get_ref() as u32,
                Some(d) => return Err(src.error(d, format!("node '{id}': dp_id: {} is outside 1..{}", d.get_ref(), u32::MAX))),
                None => default_dp_id(&id),
            };
            if let Some(other) = dp_ids.insert(dp_id, id.clone()) {
                let at = n.dp_id.as_ref().map_or_else(|| src.at(n.id.span()), |d| src.at(d.span()));
                bail!("{at}: node '{id}': dp_id {dp_id} is also node '{other}'s; set dp_id by hand");
            }
            let prefixes = match &n.prefixes {
                Some(list) => list
                    .get_ref()
                    .iter()
                    .map(|p| p.parse::<Prefix>())
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| src.error(list, format!("node '{id}': prefixes: {e}")))?,
                None => Vec::new(),
            };
            let jurisdiction = match &n.jurisdiction {
                Some(j) if j.get_ref().is_empty() => return Err(src.error(j, format!("node '{id}': jurisdiction: empty"))),
                Some(j) => j.get_ref().clone(),
                None => "unknown".into(),
            };
            let identity = match &n.identity {
                Some(i) => Some(check_identity(i.get_ref()).map_err(|e| src.error(i, format!("node '{id}': identity: {e}")))?),
                None => None,
            };
            let qlock = match &n.qlock {
                Some(q) => Some(check_endpoint(q.get_ref()).map_err(|e| src.error(q, format!("node '{id}': qlock: {e}")))?),
                None => None,
            };
            nodes.push(Node { id, dp_id, prefixes, jurisdiction, attestation: n.attestation, inputs, score_override: score, identity, qlock });
        }
        let mut links = Vec::with_capacity(raw_links.len());
        for (src, l) in raw_links {
            for (key, end) in [("a", &l.a), ("b", &l.b)] {
                if !ids.contains_key(end.get_ref()) {
                    return Err(src.error(end, format!("link.{key}: no node '{}'", end.get_ref())));
                }
            }
            let (a, b) = (l.a.get_ref().clone(), l.b.get_ref().clone());
            if a == b {
                return Err(src.error(&l.b, format!("link: '{a}' links to itself")));
            }
            let what = |key: &str| format!("link {a}-{b}: {key}");
            let zero = |v: &Option<Spanned<f64>>| v.clone().unwrap_or_else(|| Spanned::new(0..0, 0.0));
            links.push(Link {
                latency_ms: ranged(&src, &what("latency_ms"), &l.latency_ms, 0.0, 1e9)?,
                bandwidth_mbps: ranged(&src, &what("bandwidth_mbps"), &l.bandwidth_mbps, 0.0, 1e12)?,
                loss: ranged(&src, &what("loss"), &zero(&l.loss), 0.0, 1.0)?,
                carbon: ranged(&src, &what("carbon"), &zero(&l.carbon), 0.0, 1e12)?,
                up: l.up,
                a,
                b,
            });
        }
        if let Some((src, Some(local))) = control.as_ref().map(|(src, c)| (src, c.local.as_ref())) {
            if !ids.contains_key(local.get_ref()) {
                return Err(src.error(local, format!("control.local: no node '{}'", local.get_ref())));
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
    fn a_score_stands_instead_of_the_inputs_but_half_the_inputs_do_not() {
        let only_score = "[[node]]\nid = \"s\"\nscore = 0.4\n";
        let t = Topology::parse(only_score, "s.toml").unwrap();
        assert_eq!((t.nodes[0].inputs.is_none(), t.nodes[0].score_override), (true, Some(0.4)));
        let err = Topology::parse("[[node]]\nid = \"h\"\nuptime = 1.0\n", "h.toml").unwrap_err().to_string();
        assert!(err.starts_with("h.toml:2:") && err.contains("performance: missing"), "{err}");
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

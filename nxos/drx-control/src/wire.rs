//! What org.bpi.os.Control1 takes and returns, as D-Bus types: structs, and
//! `a{sv}` where fields are optional. The CLI deserializes replies straight
//! into these, and prints them (humans) or serializes them (`--json`).

use anyhow::{bail, Context, Result};
use bpi_drx_data::{
    layout::{Settings, Verdict},
    plan::Op,
};
use serde::{Deserialize, Serialize};
use zbus::zvariant::{
    as_value::{self, optional},
    Type,
};

use crate::{
    model::Link,
    path::{Answer, PathInfo},
};

/// What one change did (or, on a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct Change {
    pub dry_run: bool,
    /// What changed, a line each ("node edge-a: trust 0.4 (was 0.93)").
    pub summary: Vec<String>,
    /// Time spent recomputing routes, in microseconds.
    pub recompute_us: u64,
    pub data_plane: DataPlaneOutcome,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct DataPlaneOutcome {
    /// Whether the data plane's maps are pinned here (nothing below applies if not).
    pub pinned: bool,
    /// The maps' version after the batch (before it, on a dry run).
    pub version: u64,
    /// Map entries written (or that would be).
    pub writes: u32,
    /// The ledger's line about the record; empty when nothing was written.
    pub recorded: String,
}

/// New values for a link; what is absent keeps its value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant", signature = "dict")]
pub struct LinkChange {
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub latency_ms: Option<f64>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub bandwidth_mbps: Option<f64>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub carbon: Option<f64>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub up: Option<bool>,
}

/// One data-plane operation (an `a{sv}`): `op` is set_score, remove_node,
/// map_prefix, unmap_prefix or settings, with the fields it needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant", signature = "dict")]
pub struct DataPlaneOp {
    #[serde(with = "as_value")]
    pub op: String,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub node: Option<u32>,
    /// Fixed point, 1.0 = 1_000_000 (the maps' own unit).
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub score: Option<u32>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub prefix: Option<String>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub threshold: Option<u32>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub unknown_verdict: Option<String>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub default_verdict: Option<String>,
    #[serde(with = "optional", skip_serializing_if = "Option::is_none", default)]
    pub cache: Option<bool>,
}

impl From<&Op> for DataPlaneOp {
    fn from(op: &Op) -> Self {
        let none = DataPlaneOp::default();
        match op {
            Op::SetScore { node, score } => DataPlaneOp { op: "set_score".into(), node: Some(*node), score: Some(*score), ..none },
            Op::RemoveNode { node } => DataPlaneOp { op: "remove_node".into(), node: Some(*node), ..none },
            Op::MapPrefix { prefix, node } => DataPlaneOp { op: "map_prefix".into(), node: Some(*node), prefix: Some(prefix.to_string()), ..none },
            Op::UnmapPrefix { prefix } => DataPlaneOp { op: "unmap_prefix".into(), prefix: Some(prefix.to_string()), ..none },
            Op::Settings(s) => DataPlaneOp {
                op: "settings".into(),
                threshold: Some(s.threshold),
                unknown_verdict: Some(s.unknown_verdict.name().into()),
                default_verdict: Some(s.default_verdict.name().into()),
                cache: Some(s.cache),
                ..none
            },
        }
    }
}

impl TryFrom<&DataPlaneOp> for Op {
    type Error = anyhow::Error;

    fn try_from(w: &DataPlaneOp) -> Result<Op> {
        let field = |name: &str, v: Option<u32>| v.with_context(|| format!("{}: needs '{name}'", w.op));
        let prefix = || -> Result<_> { w.prefix.as_deref().with_context(|| format!("{}: needs 'prefix'", w.op))?.parse() };
        let verdict = |name: &str, v: &Option<String>| -> Result<Verdict> { v.as_deref().with_context(|| format!("settings: needs '{name}'"))?.parse() };
        Ok(match w.op.as_str() {
            "set_score" => Op::SetScore { node: field("node", w.node)?, score: field("score", w.score)? },
            "remove_node" => Op::RemoveNode { node: field("node", w.node)? },
            "map_prefix" => Op::MapPrefix { prefix: prefix()?, node: field("node", w.node)? },
            "unmap_prefix" => Op::UnmapPrefix { prefix: prefix()? },
            "settings" => Op::Settings(Settings {
                threshold: field("threshold", w.threshold)?,
                unknown_verdict: verdict("unknown_verdict", &w.unknown_verdict)?,
                default_verdict: verdict("default_verdict", &w.default_verdict)?,
                cache: w.cache.context("settings: needs 'cache'")?,
                applied: 0,
            }),
            other => bail!("unknown data-plane operation '{other}' (set_score, remove_node, map_prefix, unmap_prefix, settings)"),
        })
    }
}

/// A route query's answer: no paths means none meets the constraints, and
/// `constraint` and `reason` say why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct RouteReply {
    /// The best path first, then the backups.
    pub paths: Vec<PathInfo>,
    pub constraint: String,
    pub reason: String,
}

impl From<Answer> for RouteReply {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Found { best, backups } => RouteReply { paths: std::iter::once(best).chain(backups).collect(), constraint: String::new(), reason: String::new() },
            Answer::NoPath { constraint, reason } => RouteReply { paths: Vec::new(), constraint, reason },
        }
    }
}

impl From<RouteReply> for Answer {
    fn from(r: RouteReply) -> Self {
        let mut paths = r.paths.into_iter();
        match paths.next() {
            Some(best) => Answer::Found { best, backups: paths.collect() },
            None => Answer::NoPath { constraint: r.constraint, reason: r.reason },
        }
    }
}

/// A hand-given path checked against an intent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct PathCheck {
    pub path: PathInfo,
    pub meets_constraints: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct NodeView {
    pub id: String,
    pub dp_id: u32,
    pub jurisdiction: String,
    pub attestation: String,
    pub prefixes: Vec<String>,
    pub trust: f64,
    pub blacklisted: bool,
    /// Its trust is an operator's score, not computed from its inputs.
    #[serde(rename = "override")]
    pub score_override: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct RouteView {
    pub destination: String,
    pub next_hop: String,
    pub cost: u64,
}

/// Nodes and links; the local node is "" when none is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct TopologyView {
    pub local: String,
    pub nodes: Vec<NodeView>,
    pub links: Vec<Link>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Metrics;

    /// docs/control-plane.md names each reply's D-Bus signature: they must be these.
    #[test]
    fn the_documented_signatures_are_the_real_ones() {
        let doc = include_str!("../../../docs/control-plane.md");
        let named = [
            ("Change", Change::SIGNATURE.to_string()),
            ("RouteReply", RouteReply::SIGNATURE.to_string()),
            ("PathCheck", PathCheck::SIGNATURE.to_string()),
            ("TopologyView", TopologyView::SIGNATURE.to_string()),
            ("Metrics", Metrics::SIGNATURE.to_string()),
        ];
        for (name, sig) in named {
            assert!(doc.contains(&format!("`{name} {sig}`")), "docs/control-plane.md does not give {name} as {sig}");
        }
        assert!(doc.contains(&format!("`a{}`", RouteView::SIGNATURE)), "routing_table: a{}", RouteView::SIGNATURE);
        assert_eq!((LinkChange::SIGNATURE.to_string(), DataPlaneOp::SIGNATURE.to_string()), ("a{sv}".into(), "a{sv}".into()));
    }

    #[test]
    fn ops_cross_the_bus_and_come_back_the_same() {
        let settings = Settings { threshold: 400_000, unknown_verdict: Verdict::Drop, default_verdict: Verdict::Pass, cache: false, applied: 0 };
        let ops = [
            Op::SetScore { node: 7, score: 500_000 },
            Op::RemoveNode { node: 8 },
            Op::MapPrefix { prefix: "10.9.0.0/16".parse().unwrap(), node: 7 },
            Op::UnmapPrefix { prefix: "2001:db8::/32".parse().unwrap() },
            Op::Settings(settings),
        ];
        for op in ops {
            assert_eq!(Op::try_from(&DataPlaneOp::from(&op)).unwrap(), op);
        }
        let missing = DataPlaneOp { op: "map_prefix".into(), node: Some(1), ..Default::default() };
        assert!(Op::try_from(&missing).unwrap_err().to_string().contains("needs 'prefix'"));
        let unknown = DataPlaneOp { op: "explode".into(), ..Default::default() };
        assert!(Op::try_from(&unknown).unwrap_err().to_string().contains("unknown data-plane operation"));
    }
}

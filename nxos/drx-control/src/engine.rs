//! The control plane's live state: the Meta-RIB, its graph, the intents,
//! the routing table from the local node, and what it last wrote into the
//! data plane's maps. Every change is checked first (nothing changes on bad
//! input), then applied, then everything derived is recomputed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use bpi_drx_data::{
    layout::{score_from_f64, score_to_f64, Settings},
    plan::Op,
    prefix::Prefix,
    tables::{Batch, Tables},
};
use bpi_support::record::{NotRecorded, Recorder};
use serde::{Deserialize, Serialize};

use crate::{
    graph::{node_trust, Graph},
    model::{check_range, Link, Topology},
    path::{self, Answer, Constraints, Scratch},
    policy::Intent,
    wire::{Change, DataPlaneOutcome, LinkChange, NodeView, PathCheck, RouteView, TopologyView},
};

/// One routing-table entry, by node index (names are rendered on query).
#[derive(Clone, Copy, Debug)]
pub struct RouteRow {
    pub destination: u32,
    pub next_hop: u32,
    pub cost: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, zbus::zvariant::Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct Metrics {
    pub nodes: u64,
    pub links: u64,
    pub blacklisted: u64,
    pub changes: u64,
    pub recomputes: u64,
    pub last_recompute_us: u64,
    /// Whether the data plane's maps are pinned here; their version if so.
    pub data_plane_pinned: bool,
    pub data_plane_version: u64,
    pub data_plane_writes: u64,
}

/// What the data plane should hold, in its own terms.
#[derive(Clone, Debug, Default, PartialEq)]
struct DataPlaneState {
    settings: Settings,
    scores: BTreeMap<u32, u32>,
    routes: BTreeMap<Prefix, u32>,
}

/// What an operator set in the data plane by hand (`nxos trust map|unmap|
/// remove|settings`, or a score for a number the Meta-RIB does not know),
/// kept over what the Meta-RIB derives: None removes.
#[derive(Clone, Debug, Default)]
struct ByHand {
    scores: BTreeMap<u32, Option<u32>>,
    routes: BTreeMap<Prefix, Option<u32>>,
    settings: Option<Settings>,
}

#[derive(Clone)]
pub struct Engine {
    pub topology: Topology,
    pub graph: Graph,
    pub intents: BTreeMap<String, Intent>,
    pub routing: Vec<RouteRow>,
    pub metrics: Metrics,
    pin_dir: Option<PathBuf>,
    by_hand: ByHand,
    /// What the maps held at a version, as this engine last wrote or read them.
    written: Option<(u64, DataPlaneState)>,
    scratch: Scratch,
    recorder: Arc<dyn Recorder>,
}

/// Whether a change is made or only planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Apply,
    DryRun,
}

impl Engine {
    pub fn new(mut topology: Topology, intents: BTreeMap<String, Intent>, pin_dir: Option<PathBuf>) -> Engine {
        let graph = Graph::build(&topology);
        // The graph holds every link (both directions) and every node id:
        // keep one copy of each.
        topology.links = Vec::new();
        for n in &mut topology.nodes {
            n.id = String::new();
        }
        let mut e = Engine {
            topology,
            graph,
            intents,
            routing: Vec::new(),
            metrics: Metrics::default(),
            pin_dir,
            by_hand: ByHand::default(),
            written: None,
            scratch: Scratch::default(),
            recorder: Arc::new(NotRecorded),
        };
        e.recompute_routing();
        e
    }

    /// Where the changes this engine writes into the data plane are recorded
    /// (the daemon is given the ledger's recorder).
    pub fn record_with(&mut self, recorder: Arc<dyn Recorder>) {
        self.recorder = recorder;
    }

    fn node(&self, id: &str) -> Result<usize> {
        self.find(id).with_context(|| format!("unknown node '{id}'"))
    }

    /// A node by id, or by its data-plane number.
    fn find(&self, id: &str) -> Option<usize> {
        if let Some(i) = self.graph.find(id) {
            return Some(i as usize);
        }
        let dp = id.parse::<u32>().ok()?;
        self.topology.nodes.iter().position(|n| n.dp_id == dp)
    }

    /// Recomputes the routing table from the local node.
    pub fn recompute_routing(&mut self) -> u64 {
        let started = Instant::now();
        self.routing.clear();
        if let Some(src) = self.topology.settings.local.as_ref().and_then(|l| self.graph.find(l)) {
            let tree = path::tree(&self.graph, src, &mut self.scratch);
            for (v, hop) in tree.iter().enumerate() {
                if let Some((next, cost)) = hop {
                    self.routing.push(RouteRow { destination: v as u32, next_hop: *next, cost: *cost });
                }
            }
        }
        let us = started.elapsed().as_micros() as u64;
        self.metrics.recomputes += 1;
        self.metrics.last_recompute_us = us;
        self.metrics.nodes = self.graph.len() as u64;
        self.metrics.links = (self.graph.target.len() / 2) as u64;
        self.metrics.blacklisted = self.graph.trust.iter().filter(|t| **t < self.topology.settings.blacklist_threshold).count() as u64;
        us
    }

    /// Runs `change` here, or on a copy that is then thrown away (a dry run:
    /// the answer says what would happen, nothing changes).
    fn run(&mut self, run: Run, change: impl FnOnce(&mut Engine, Run) -> Result<Change>) -> Result<Change> {
        match run {
            Run::Apply => change(self, run),
            Run::DryRun => change(&mut self.clone(), run),
        }
    }

    /// Sets nodes' trust scores (an operator's override of their inputs), as
    /// one batch: every pair is checked before any is set. A number the
    /// Meta-RIB does not know is a data-plane node set by hand.
    pub fn trust_update(&mut self, updates: &[(String, f64)], run: Run) -> Result<Change> {
        let mut targets = Vec::with_capacity(updates.len());
        for (id, score) in updates {
            check_range(*score, 0.0, 1.0).map_err(|e| anyhow::anyhow!("node {id}: score: {e}"))?;
            let target = match (self.find(id), id.parse::<u32>()) {
                (Some(i), _) => Ok(i),
                (None, Ok(dp)) => Err(dp),
                (None, Err(_)) => bail!("unknown node '{id}'"),
            };
            targets.push((target, *score, id));
        }
        self.run(run, |e, run| {
            let mut summary = Vec::new();
            for (target, score, id) in targets {
                match target {
                    Ok(i) => {
                        let was = e.graph.trust[i];
                        e.topology.nodes[i].score_override = Some(score);
                        e.graph.set_trust(i as u32, node_trust(&e.topology.nodes[i]));
                        summary.push(format!("node {}: trust {score} (was {was:.6})", e.graph.ids[i]));
                    }
                    Err(dp) => {
                        e.by_hand.scores.insert(dp, Some(score_from_f64(score)?));
                        summary.push(format!("data-plane node {id}: score {score} (not in the Meta-RIB)"));
                    }
                }
            }
            e.changed(summary, run)
        })
    }

    /// Changes a link's measurements, or takes it up or down; what `change`
    /// leaves out keeps its value.
    pub fn link_update(&mut self, a: &str, b: &str, change: &LinkChange, run: Run) -> Result<Change> {
        let (ia, ib) = (self.node(a)? as u32, self.node(b)? as u32);
        let g = &self.graph;
        let e = g.edges(ia).find(|e| g.target[*e] == ib).with_context(|| format!("no link between '{a}' and '{b}'"))?;
        let latency_ms = change.latency_ms.unwrap_or(g.latency_of(e));
        let bandwidth_mbps = change.bandwidth_mbps.unwrap_or(g.bandwidth_of(e));
        let loss = change.loss.unwrap_or(g.loss_of(e));
        let carbon = change.carbon.unwrap_or(g.carbon_of(e));
        let up = change.up.unwrap_or(g.up_of(e));
        for (key, v, hi) in [("latency_ms", latency_ms, 1e9), ("bandwidth_mbps", bandwidth_mbps, 1e12), ("loss", loss, 1.0), ("carbon", carbon, 1e12)] {
            check_range(v, 0.0, hi).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        }
        let li = g.link[e];
        self.run(run, |e, run| {
            e.graph.set_link(li, latency_ms, bandwidth_mbps, loss, carbon, up);
            let state = if up { "up" } else { "down" };
            e.changed(vec![format!("link {a}-{b}: latency {latency_ms} ms, bandwidth {bandwidth_mbps} Mbit/s, loss {loss}, carbon {carbon}, {state}")], run)
        })
    }

    /// Data-plane operations by hand, as one batch. A score for a node the
    /// Meta-RIB knows is its trust override (routes are recomputed); the
    /// threshold is also the control plane's blacklist threshold.
    pub fn data_plane_update(&mut self, ops: &[Op], run: Run) -> Result<Change> {
        if ops.is_empty() {
            bail!("nothing to change: the batch is empty");
        }
        self.run(run, |e, run| {
            let mut summary = Vec::new();
            for op in ops {
                match op {
                    Op::SetScore { node, score } => {
                        let f = score_to_f64(*score);
                        check_range(f, 0.0, 1.0).map_err(|err| anyhow::anyhow!("node {node}: score: {err}"))?;
                        match e.topology.nodes.iter().position(|n| n.dp_id == *node) {
                            Some(i) => {
                                e.topology.nodes[i].score_override = Some(f);
                                e.graph.set_trust(i as u32, f);
                            }
                            None => {
                                e.by_hand.scores.insert(*node, Some(*score));
                            }
                        }
                        summary.push(format!("node {node}: score {f}"));
                    }
                    Op::RemoveNode { node } => {
                        e.by_hand.scores.insert(*node, None);
                        summary.push(format!("node {node}: removed from the data plane"));
                    }
                    Op::MapPrefix { prefix, node } => {
                        e.by_hand.routes.insert(*prefix, Some(*node));
                        summary.push(format!("{prefix} -> node {node}"));
                    }
                    Op::UnmapPrefix { prefix } => {
                        e.by_hand.routes.insert(*prefix, None);
                        summary.push(format!("{prefix}: unmapped"));
                    }
                    Op::Settings(s) => {
                        let threshold = score_to_f64(s.threshold);
                        if threshold != e.topology.settings.blacklist_threshold {
                            e.topology.settings.blacklist_threshold = threshold;
                            e.graph.settings.blacklist_threshold = threshold;
                        }
                        e.by_hand.settings = Some(*s);
                        summary.push(format!("settings: threshold {threshold}, unknown {:?}, unparseable {:?}, cache {}", s.unknown_verdict, s.default_verdict, s.cache));
                    }
                }
            }
            e.changed(summary, run)
        })
    }

    fn changed(&mut self, summary: Vec<String>, run: Run) -> Result<Change> {
        self.metrics.changes += 1;
        let recompute_us = self.recompute_routing();
        let data_plane = self.sync(run)?;
        Ok(Change { dry_run: run == Run::DryRun, summary, recompute_us, data_plane })
    }

    /// What the maps should hold, given what they hold (`current`, for the
    /// settings the Meta-RIB does not decide).
    fn desired(&self, current: &Settings) -> Result<DataPlaneState> {
        let base = self.by_hand.settings.unwrap_or(*current);
        let settings = Settings { threshold: score_from_f64(self.topology.settings.blacklist_threshold)?, applied: current.applied, ..base };
        let mut s = DataPlaneState { settings, ..Default::default() };
        for (n, trust) in self.topology.nodes.iter().zip(&self.graph.trust) {
            s.scores.insert(n.dp_id, score_from_f64(*trust)?);
            for p in &n.prefixes {
                s.routes.insert(*p, n.dp_id);
            }
        }
        for (node, score) in &self.by_hand.scores {
            match score {
                Some(v) => s.scores.insert(*node, *v),
                None => s.scores.remove(node),
            };
        }
        for (prefix, node) in &self.by_hand.routes {
            match node {
                Some(n) => s.routes.insert(*prefix, *n),
                None => s.routes.remove(prefix),
            };
        }
        Ok(s)
    }

    /// Brings the data plane's maps to what this engine wants, when they are
    /// pinned, as one batch of the differences through the maps' one writer.
    pub fn sync_data_plane(&mut self) -> Result<DataPlaneOutcome> {
        self.sync(Run::Apply)
    }

    fn sync(&mut self, run: Run) -> Result<DataPlaneOutcome> {
        let Some(dir) = self.pin_dir.clone() else { return Ok(DataPlaneOutcome::default()) };
        let Ok(mut tables) = Tables::open(&dir) else { return Ok(DataPlaneOutcome::default()) };
        let recorder = self.recorder.clone();
        let batch = Batch { source: "drx-control", recorder: recorder.as_ref(), dry_run: run == Run::DryRun };
        let mut wanted = None;
        let written = tables.write_batch(&batch, |t| {
            // What the maps hold: as last written, unless someone else wrote since.
            let version = t.version()?;
            let read;
            let have = match &self.written {
                Some((v, state)) if *v == version => state,
                _ => {
                    let snap = t.snapshot()?;
                    read = DataPlaneState { settings: snap.settings, scores: snap.nodes, routes: snap.routes.iter().map(|(p, r)| (*p, r.node)).collect() };
                    &read
                }
            };
            let want = self.desired(&have.settings)?;
            let ops = diff(have, &want);
            wanted = Some(want);
            Ok(ops)
        })?;
        if run == Run::Apply {
            if let Some(want) = wanted {
                self.written = Some((written.version, want));
            }
            self.metrics.data_plane_writes += written.plan.writes.len() as u64;
        }
        self.metrics.data_plane_pinned = true;
        self.metrics.data_plane_version = written.version;
        Ok(DataPlaneOutcome { pinned: true, version: written.version, writes: written.plan.writes.len() as u32, recorded: written.recorded.unwrap_or_default() })
    }

    pub fn constraints(&self, intent: Option<&str>) -> Result<(Constraints, usize)> {
        match intent {
            None => Ok((Constraints::default(), self.topology.settings.backups)),
            Some(name) => {
                let i = self.intents.get(name).with_context(|| {
                    format!("unknown intent '{name}'; known: {}", self.intents.keys().cloned().collect::<Vec<_>>().join(", "))
                })?;
                Ok((i.constraints.clone(), i.backups.unwrap_or(self.topology.settings.backups)))
            }
        }
    }

    /// A path given by hand: its figures, and whether it meets the intent.
    pub fn check(&self, nodes: &[String], intent: Option<&str>) -> Result<PathCheck> {
        let (c, _) = self.constraints(intent)?;
        let p = path::check_path(&self.graph, nodes)?;
        Ok(PathCheck { meets_constraints: path::satisfies(&self.graph, &c, &p), path: p })
    }

    pub fn route(&self, from: &str, to: &str, intent: Option<&str>, backups: Option<usize>) -> Result<Answer> {
        let (c, k) = self.constraints(intent)?;
        path::route(&self.graph, from, to, &c, backups.unwrap_or(k))
    }

    /// Nodes (with their trust) and links.
    pub fn topology_view(&self) -> TopologyView {
        let threshold = self.topology.settings.blacklist_threshold;
        let nodes = (self.topology.nodes.iter().zip(&self.graph.trust).zip(&self.graph.ids))
            .map(|((n, t), id)| NodeView {
                id: id.clone(),
                dp_id: n.dp_id,
                jurisdiction: n.jurisdiction.clone(),
                attestation: format!("{:?}", n.attestation).to_lowercase(),
                prefixes: n.prefixes.iter().map(|p| p.to_string()).collect(),
                trust: *t,
                blacklisted: *t < threshold,
                score_override: n.score_override.is_some(),
            })
            .collect();
        let g = &self.graph;
        let links = (0..g.target.len())
            .filter(|e| (*e as u32) < g.reverse[*e])
            .map(|e| {
                let from = g.target[g.reverse[e] as usize] as usize;
                Link {
                    a: g.ids[from].clone(),
                    b: g.ids[g.target[e] as usize].clone(),
                    latency_ms: g.latency_of(e),
                    bandwidth_mbps: g.bandwidth_of(e),
                    loss: g.loss_of(e),
                    carbon: g.carbon_of(e),
                    up: g.up_of(e),
                }
            })
            .collect();
        TopologyView { local: self.topology.settings.local.clone().unwrap_or_default(), nodes, links }
    }

    /// The routing table from the local node.
    pub fn routing_table(&self) -> Vec<RouteView> {
        let ids = &self.graph.ids;
        self.routing.iter().map(|r| RouteView { destination: ids[r.destination as usize].clone(), next_hop: ids[r.next_hop as usize].clone(), cost: r.cost }).collect()
    }
}

/// The ops that take the maps from `have` to `want`.
fn diff(have: &DataPlaneState, want: &DataPlaneState) -> Vec<Op> {
    let mut ops = Vec::new();
    if (Settings { applied: 0, ..want.settings }) != (Settings { applied: 0, ..have.settings }) {
        ops.push(Op::Settings(want.settings));
    }
    let stale_nodes: BTreeSet<u32> = have.scores.keys().filter(|k| !want.scores.contains_key(k)).copied().collect();
    ops.extend(stale_nodes.iter().map(|n| Op::RemoveNode { node: *n }));
    ops.extend(have.routes.keys().filter(|p| !want.routes.contains_key(p)).map(|p| Op::UnmapPrefix { prefix: *p }));
    ops.extend(want.scores.iter().filter(|(n, s)| have.scores.get(n) != Some(s)).map(|(n, s)| Op::SetScore { node: *n, score: *s }));
    ops.extend(want.routes.iter().filter(|(p, n)| have.routes.get(p) != Some(n)).map(|(p, n)| Op::MapPrefix { prefix: *p, node: *n }));
    ops
}

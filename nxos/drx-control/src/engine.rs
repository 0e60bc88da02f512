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
    layout::{score_from_f64, Settings},
    plan::{plan, Op, Route},
    prefix::Prefix,
    tables::Tables,
};
use bpi_support::record::{NotRecorded, Recorder};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    graph::{node_trust, Graph},
    model::{check_range, Topology},
    path::{self, Answer, Constraints, Scratch},
    policy::Intent,
};

/// One routing-table entry, by node index (names are rendered on query).
#[derive(Clone, Copy, Debug)]
pub struct RouteRow {
    pub destination: u32,
    pub next_hop: u32,
    pub cost: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub nodes: usize,
    pub links: usize,
    pub blacklisted: usize,
    pub changes: u64,
    pub recomputes: u64,
    pub last_recompute_us: u64,
    pub data_plane_version: Option<u64>,
    pub data_plane_writes: u64,
}

/// What the data plane should hold, in its own terms.
#[derive(Clone, Debug, Default, PartialEq)]
struct DataPlaneState {
    threshold: u32,
    scores: BTreeMap<u32, u32>,
    routes: BTreeMap<Prefix, u32>,
}

pub struct Engine {
    pub topology: Topology,
    pub graph: Graph,
    pub intents: BTreeMap<String, Intent>,
    pub routing: Vec<RouteRow>,
    pub metrics: Metrics,
    pin_dir: Option<PathBuf>,
    written: Option<DataPlaneState>,
    scratch: Scratch,
    recorder: Arc<dyn Recorder>,
}

/// What one change did, for the caller and the ledger.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub what: Value,
    pub recompute_us: u64,
    pub data_plane: Option<String>,
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
        if let Some(i) = self.graph.find(id) {
            return Ok(i as usize);
        }
        // A data-plane id works too.
        if let Ok(dp) = id.parse::<u32>() {
            if let Some(i) = self.topology.nodes.iter().position(|n| n.dp_id == dp) {
                return Ok(i);
            }
        }
        bail!("unknown node '{id}'")
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
        self.metrics.nodes = self.graph.len();
        self.metrics.links = self.graph.target.len() / 2;
        self.metrics.blacklisted = self.graph.trust.iter().filter(|t| **t < self.topology.settings.blacklist_threshold).count();
        us
    }

    /// Sets a node's trust score (an operator's override of its inputs).
    pub fn trust_update(&mut self, id: &str, score: f64) -> Result<Change> {
        check_range(score, 0.0, 1.0).map_err(|e| anyhow::anyhow!("score: {e}"))?;
        let i = self.node(id)?;
        self.topology.nodes[i].score_override = Some(score);
        self.graph.set_trust(i as u32, node_trust(&self.topology.nodes[i]));
        self.changed(json!({ "node": self.graph.ids[i], "score": score }))
    }

    /// Changes a link's measurements, or takes it up or down.
    #[allow(clippy::too_many_arguments)]
    pub fn link_update(&mut self, a: &str, b: &str, latency_ms: f64, bandwidth_mbps: f64, loss: f64, carbon: f64, up: bool) -> Result<Change> {
        for (key, v, hi) in [("latency_ms", latency_ms, 1e9), ("bandwidth_mbps", bandwidth_mbps, 1e12), ("loss", loss, 1.0), ("carbon", carbon, 1e12)] {
            check_range(v, 0.0, hi).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        }
        let (ia, ib) = (self.node(a)? as u32, self.node(b)? as u32);
        let g = &self.graph;
        let li = g.edges(ia).find(|e| g.target[*e] == ib).map(|e| g.link[e]).with_context(|| format!("no link between '{a}' and '{b}'"))?;
        self.graph.set_link(li, latency_ms, bandwidth_mbps, loss, carbon, up);
        self.changed(json!({ "link": [a, b], "latency_ms": latency_ms, "bandwidth_mbps": bandwidth_mbps, "loss": loss, "carbon": carbon, "up": up }))
    }

    fn changed(&mut self, what: Value) -> Result<Change> {
        self.metrics.changes += 1;
        let recompute_us = self.recompute_routing();
        let data_plane = self.sync_data_plane()?;
        Ok(Change { what, recompute_us, data_plane })
    }

    fn desired(&self) -> Result<DataPlaneState> {
        let mut s = DataPlaneState { threshold: score_from_f64(self.topology.settings.blacklist_threshold)?, ..Default::default() };
        for (n, trust) in self.topology.nodes.iter().zip(&self.graph.trust) {
            s.scores.insert(n.dp_id, score_from_f64(*trust)?);
            for p in &n.prefixes {
                s.routes.insert(*p, n.dp_id);
            }
        }
        Ok(s)
    }

    /// Writes scores, prefixes and the blacklist threshold into the data
    /// plane's maps when they are pinned, as one atomic batch of the
    /// differences. None when there are no maps.
    pub fn sync_data_plane(&mut self) -> Result<Option<String>> {
        let Some(dir) = &self.pin_dir else { return Ok(None) };
        let Ok(mut tables) = Tables::open(dir) else { return Ok(None) };
        let want = self.desired()?;
        let mut have = match &self.written {
            Some(w) => w.clone(),
            None => {
                let snap = tables.snapshot()?;
                DataPlaneState { threshold: snap.settings.threshold, scores: snap.nodes, routes: snap.routes.iter().map(|(p, r)| (*p, r.node)).collect() }
            }
        };
        // The threshold is also set by bpi-drx-data.service from its own file
        // when it (re)starts: always compare against what the maps hold.
        have.threshold = tables.settings()?.threshold;
        let mut ops = Vec::new();
        if want.threshold != have.threshold {
            ops.push(Op::Settings(Settings { threshold: want.threshold, ..tables.settings()? }));
        }
        let stale_nodes: BTreeSet<u32> = have.scores.keys().filter(|k| !want.scores.contains_key(k)).copied().collect();
        ops.extend(stale_nodes.iter().map(|n| Op::RemoveNode { node: *n }));
        ops.extend(have.routes.keys().filter(|p| !want.routes.contains_key(p)).map(|p| Op::UnmapPrefix { prefix: *p }));
        ops.extend(want.scores.iter().filter(|(n, s)| have.scores.get(n) != Some(s)).map(|(n, s)| Op::SetScore { node: *n, score: *s }));
        ops.extend(want.routes.iter().filter(|(p, n)| have.routes.get(p) != Some(n)).map(|(p, n)| Op::MapPrefix { prefix: *p, node: *n }));
        if ops.is_empty() {
            self.written = Some(want);
            return Ok(Some("data plane already up to date".into()));
        }
        let routes: BTreeMap<Prefix, Route> = if bpi_drx_data::plan::Plan::touches_routes(&ops) { tables.routes()? } else { BTreeMap::new() };
        let p = plan(&ops, &routes)?;
        let applied = tables.apply(&p)?;
        self.metrics.data_plane_version = Some(applied.version);
        self.metrics.data_plane_writes += p.writes.len() as u64;
        self.written = Some(want);
        let outcome = self.recorder.record("trust", "update", &json!({ "version": applied.version, "source": "drx-control", "changes": p.writes }));
        Ok(Some(format!("data plane version {}: {} change(s); {outcome}", applied.version, p.writes.len())))
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
    pub fn check(&self, nodes: &[String], intent: Option<&str>) -> Result<Value> {
        let (c, _) = self.constraints(intent)?;
        let p = path::check_path(&self.graph, nodes)?;
        Ok(json!({ "path": p, "meets_constraints": path::satisfies(&self.graph, &c, &p) }))
    }

    pub fn route(&self, from: &str, to: &str, intent: Option<&str>, backups: Option<usize>) -> Result<Answer> {
        let (c, k) = self.constraints(intent)?;
        path::route(&self.graph, from, to, &c, backups.unwrap_or(k))
    }

    pub fn topology_json(&self, trust_scores: bool, routing_table: bool) -> Value {
        let nodes: Vec<Value> = self
            .topology
            .nodes
            .iter()
            .zip(&self.graph.trust)
            .zip(&self.graph.ids)
            .map(|((n, t), id)| {
                let mut v = json!({ "id": id, "dp_id": n.dp_id, "jurisdiction": n.jurisdiction, "attestation": n.attestation, "prefixes": n.prefixes });
                if trust_scores {
                    v["trust"] = json!(t);
                    v["blacklisted"] = json!(*t < self.topology.settings.blacklist_threshold);
                    v["override"] = json!(n.score_override.is_some());
                }
                v
            })
            .collect();
        let g = &self.graph;
        let links: Vec<Value> = (0..g.target.len())
            .filter(|e| (*e as u32) < g.reverse[*e])
            .map(|e| {
                let from = g.target[g.reverse[e] as usize] as usize;
                json!({ "a": g.ids[from], "b": g.ids[g.target[e] as usize], "latency_ms": g.latency_of(e), "bandwidth_mbps": g.bandwidth_of(e), "loss": g.loss_of(e), "carbon": g.carbon_of(e), "up": g.up_of(e) })
            })
            .collect();
        let mut v = json!({ "local": self.topology.settings.local, "nodes": nodes, "links": links });
        if routing_table {
            let ids = &self.graph.ids;
            let rows: Vec<Value> = self
                .routing
                .iter()
                .map(|r| json!({ "destination": ids[r.destination as usize], "next_hop": ids[r.next_hop as usize], "cost": r.cost }))
                .collect();
            v["routing_table"] = json!(rows);
        }
        v
    }
}

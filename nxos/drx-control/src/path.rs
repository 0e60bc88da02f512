//! Constrained path computation: the best path from a source to a
//! destination under a constraint set, k backup paths, and, when there is
//! none, the constraint that eliminated the candidates.
//!
//! Best = least total hop cost (graph.rs). Every hop costs at least 1, so
//! among paths of equal quality the shorter one wins; exact ties go to the
//! path the search meets first, which is deterministic for a given file.
//! Per-element constraints (blacklist, trust floor, attestation,
//! jurisdictions, minimum bandwidth, links down) remove nodes and hops before
//! the search. Sum constraints (latency budget, carbon max) are exact: if the
//! least-cost path breaks a budget, a label-setting search with lower bounds
//! from reverse searches (an A* over (cost, latency, carbon) labels with
//! dominance pruning) finds the least-cost path within the budgets, or proves
//! there is none. Backups are the next-best loopless paths (Yen's algorithm)
//! under the same constraints.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeSet, BinaryHeap},
};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::{graph::Graph, model::Attestation};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Constraints {
    pub trust_floor: Option<f64>,
    pub latency_budget_ms: Option<f64>,
    pub min_bandwidth_mbps: Option<f64>,
    /// Only nodes in these jurisdictions (None: any).
    pub jurisdiction_allow: Option<Vec<String>>,
    pub jurisdiction_exclude: Vec<String>,
    /// Every node in the source's jurisdiction.
    pub domestic_only: bool,
    /// The least attestation every node must have.
    pub attestation: Option<Attestation>,
    pub carbon_max: Option<f64>,
}

/// On D-Bus a struct of the fields below but `edges` (adjacency entries mean
/// nothing outside this daemon).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, zbus::zvariant::Type)]
#[zvariant(crate = "zbus::zvariant", signature = "(asttdddddd)")]
pub struct PathInfo {
    pub nodes: Vec<String>,
    /// Sum of hop costs (the quantity minimised).
    pub cost: u64,
    pub hops: usize,
    pub latency_ms: f64,
    pub carbon: f64,
    pub min_bandwidth_mbps: f64,
    /// Product of (1 - loss) over the hops.
    pub reliability: f64,
    pub min_trust: f64,
    /// Seed 003's route score of the whole path: 0.4 min trust + 0.3
    /// normalised latency + 0.2 reliability + 0.1 normalised bandwidth.
    pub route_score: f64,
    #[serde(skip)]
    pub edges: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Found { best: PathInfo, backups: Vec<PathInfo> },
    NoPath { constraint: String, reason: String },
}

/// What the search may use: per-node and per-hop checks, done inline as
/// the search meets them (no per-query pass over the whole graph).
struct Filter {
    min_trust: f64,
    attestation: Attestation,
    /// By jurisdiction id.
    jurisdiction_ok: Vec<bool>,
    min_bandwidth: f64,
    latency_budget: f64,
    carbon_max: f64,
}

impl Filter {
    #[inline]
    fn node_ok(&self, g: &Graph, v: u32) -> bool {
        let v = v as usize;
        g.trust[v] >= self.min_trust && g.attestation[v] >= self.attestation && self.jurisdiction_ok[g.jurisdiction[v] as usize]
    }

    /// The hop itself (link up, wide enough) and the node it leads to.
    #[inline]
    fn edge_ok(&self, g: &Graph, e: usize) -> bool {
        g.up_of(e) && g.bandwidth_of(e) + EPS >= self.min_bandwidth && self.node_ok(g, g.target[e])
    }
}

const EPS: f64 = 1e-9;

/// The per-element constraints, in the order a "no path" answer checks them.
const STEPS: [&str; 7] = ["blacklist", "trust_floor", "attestation", "jurisdiction", "min_bandwidth", "latency_budget", "carbon_max"];

fn node_allowed(g: &Graph, c: &Constraints, src: u32, v: usize, upto: usize) -> Option<&'static str> {
    let trust = g.trust[v];
    if trust < g.settings.blacklist_threshold {
        return Some("blacklist");
    }
    if upto >= 2 && c.trust_floor.is_some_and(|f| trust < f) {
        return Some("trust_floor");
    }
    if upto >= 3 && c.attestation.is_some_and(|a| g.attestation[v] < a) {
        return Some("attestation");
    }
    if upto >= 4 {
        let j = &g.jurisdictions[g.jurisdiction[v] as usize];
        let allowed = c.jurisdiction_allow.as_ref().is_none_or(|l| l.contains(j));
        let excluded = c.jurisdiction_exclude.contains(j);
        let foreign = c.domestic_only && g.jurisdiction[v] != g.jurisdiction[src as usize];
        if !allowed || excluded || foreign {
            return Some("jurisdiction");
        }
    }
    None
}

/// The filter with the first `upto` steps of STEPS applied (7: all).
fn filter(g: &Graph, c: &Constraints, src: u32, upto: usize) -> Filter {
    let mut min_trust = g.settings.blacklist_threshold;
    if upto >= 2 {
        min_trust = min_trust.max(c.trust_floor.unwrap_or(0.0));
    }
    let jurisdiction_ok = (0..g.jurisdictions.len())
        .map(|j| {
            if upto < 4 {
                return true;
            }
            let name = &g.jurisdictions[j];
            c.jurisdiction_allow.as_ref().is_none_or(|l| l.contains(name))
                && !c.jurisdiction_exclude.contains(name)
                && (!c.domestic_only || j as u32 == g.jurisdiction[src as usize])
        })
        .collect();
    Filter {
        min_trust,
        attestation: if upto >= 3 { c.attestation.unwrap_or(Attestation::None) } else { Attestation::None },
        jurisdiction_ok,
        min_bandwidth: if upto >= 5 { c.min_bandwidth_mbps.unwrap_or(0.0) } else { 0.0 },
        latency_budget: if upto >= 6 { c.latency_budget_ms.unwrap_or(f64::INFINITY) } else { f64::INFINITY },
        carbon_max: if upto >= 7 { c.carbon_max.unwrap_or(f64::INFINITY) } else { f64::INFINITY },
    }
}

/// Scratch space reused across searches on graphs of one size.
#[derive(Clone, Default)]
pub struct Scratch {
    dist: Vec<(u64, u32)>,
    pred: Vec<u32>,
    done: Vec<bool>,
    /// Bidirectional search: per side distance and the hop that reached the
    /// node, reset through `touched` so a query costs what it explores.
    side: [Vec<(u64, u32)>; 2],
    touched: Vec<u32>,
}

/// Least-cost path by bidirectional Dijkstra (forward from `src` over hops
/// u->v, backward from `dst` over the same hops reversed); stops once the two
/// frontiers' smallest keys sum past the best meeting found.
fn bidirectional(g: &Graph, f: &Filter, banned: &Banned, src: u32, dst: u32, s: &mut Scratch) -> Option<Vec<u32>> {
    let n = g.len();
    for side in &mut s.side {
        if side.len() != n {
            side.clear();
            side.resize(n, (u64::MAX, NONE));
        }
    }
    for v in s.touched.drain(..) {
        s.side[0][v as usize] = (u64::MAX, NONE);
        s.side[1][v as usize] = (u64::MAX, NONE);
    }
    let mut heaps = [BinaryHeap::new(), BinaryHeap::new()];
    s.side[0][src as usize] = (0, NONE);
    s.side[1][dst as usize] = (0, NONE);
    s.touched.extend([src, dst]);
    heaps[0].push(Reverse((0u64, src)));
    heaps[1].push(Reverse((0u64, dst)));
    let mut best = u64::MAX;
    let mut meet = NONE;
    loop {
        let top = |h: &BinaryHeap<Reverse<(u64, u32)>>| h.peek().map_or(u64::MAX, |r| r.0 .0);
        let (t0, t1) = (top(&heaps[0]), top(&heaps[1]));
        if t0 == u64::MAX || t1 == u64::MAX || t0.saturating_add(t1) >= best {
            break;
        }
        let dir = usize::from(heaps[1].len() < heaps[0].len());
        let Reverse((d, v)) = heaps[dir].pop().expect("checked non-empty");
        if d > s.side[dir][v as usize].0 {
            continue;
        }
        for e in g.edges(v) {
            let w = g.target[e];
            // Forward walks hop e = v->w; backward walks hop reverse[e] = w->v.
            let hop = if dir == 0 { e } else { g.reverse[e] as usize };
            let allowed = if dir == 0 { f.edge_ok(g, hop) } else { f.node_ok(g, w) && g.up_of(hop) && g.bandwidth_of(hop) + EPS >= f.min_bandwidth };
            if !allowed || banned.edge(hop) || banned.node(w) {
                continue;
            }
            let nd = d + g.cost[hop];
            if nd < s.side[dir][w as usize].0 {
                if s.side[0][w as usize].0 == u64::MAX && s.side[1][w as usize].0 == u64::MAX {
                    s.touched.push(w);
                }
                s.side[dir][w as usize] = (nd, hop as u32);
                heaps[dir].push(Reverse((nd, w)));
                let other = s.side[1 - dir][w as usize].0;
                if other != u64::MAX && nd + other < best {
                    best = nd + other;
                    meet = w;
                }
            }
        }
    }
    if meet == NONE {
        return None;
    }
    let mut edges = Vec::new();
    let mut v = meet;
    while v != src {
        let e = s.side[0][v as usize].1;
        edges.push(e);
        v = g.target[g.reverse[e as usize] as usize];
    }
    edges.reverse();
    let mut v = meet;
    while v != dst {
        let e = s.side[1][v as usize].1;
        edges.push(e);
        v = g.target[e as usize];
    }
    Some(edges)
}

const NONE: u32 = u32::MAX;

/// Which way a search walks the hops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// From the source along hops u->v.
    Forward,
    /// From the destination against them (lower bounds to it).
    Backward,
}

/// Where a search starts, where it may stop, and which way it walks.
#[derive(Clone, Copy)]
struct Search {
    from: u32,
    until: Option<u32>,
    walk: Walk,
}

impl Search {
    fn forward(from: u32, until: Option<u32>) -> Search {
        Search { from, until, walk: Walk::Forward }
    }
}

/// Dijkstra by (cost, hops) from `search.from`; stops at `search.until` when
/// given. Weights are chosen by `weight` (cost, or latency/carbon scaled, for bounds).
fn dijkstra(g: &Graph, f: &Filter, banned: &Banned, search: Search, s: &mut Scratch, weight: &dyn Fn(usize) -> u64) {
    let Search { from: src, until: dst, walk } = search;
    let n = g.len();
    s.dist.clear();
    s.dist.resize(n, (u64::MAX, u32::MAX));
    s.pred.clear();
    s.pred.resize(n, NONE);
    s.done.clear();
    s.done.resize(n, false);
    let mut heap = BinaryHeap::new();
    s.dist[src as usize] = (0, 0);
    heap.push(Reverse((0u64, 0u32, src)));
    while let Some(Reverse((d, h, v))) = heap.pop() {
        if s.done[v as usize] {
            continue;
        }
        s.done[v as usize] = true;
        if Some(v) == dst {
            return;
        }
        for e in g.edges(v) {
            // Reverse searches walk hops into v: the entry u->v is reverse[e].
            let (w, hop) = if walk == Walk::Backward { (g.target[e], g.reverse[e] as usize) } else { (g.target[e], e) };
            if !f.edge_ok(g, hop) || !f.node_ok(g, w) || banned.edge(hop) || banned.node(w) {
                continue;
            }
            let cand = (d + weight(hop), h + 1);
            if cand < s.dist[w as usize] {
                s.dist[w as usize] = cand;
                s.pred[w as usize] = hop as u32;
                heap.push(Reverse((cand.0, cand.1, w)));
            }
        }
    }
}

/// Nodes and hops a Yen spur search may not use.
#[derive(Default)]
struct Banned {
    nodes: Vec<bool>,
    edges: BTreeSet<u32>,
}

impl Banned {
    fn node(&self, v: u32) -> bool {
        self.nodes.get(v as usize).copied().unwrap_or(false)
    }
    fn edge(&self, e: usize) -> bool {
        !self.edges.is_empty() && self.edges.contains(&(e as u32))
    }
}

fn sums(g: &Graph, edges: &[u32]) -> (u64, f64, f64) {
    edges.iter().fold((0, 0.0, 0.0), |(c, l, k), e| (c + g.cost[*e as usize], l + g.latency_of(*e as usize), k + g.carbon_of(*e as usize)))
}

const LABEL_LIMIT: usize = 4_000_000;

#[derive(Clone, Copy)]
struct Label {
    node: u32,
    cost: u64,
    latency: f64,
    carbon: f64,
    hops: u32,
    pred: u32,
    edge: u32,
}

/// Least-cost path from `src` to `dst` within the filter's budgets (less the
/// `spent` latency and carbon of a Yen root path).
fn best_edges(g: &Graph, f: &Filter, banned: &Banned, src: u32, dst: u32, spent: (f64, f64), s: &mut Scratch) -> Result<Option<Vec<u32>>> {
    let latency_left = f.latency_budget - spent.0;
    let carbon_left = f.carbon_max - spent.1;
    if latency_left < -EPS || carbon_left < -EPS {
        return Ok(None);
    }
    let Some(fast) = bidirectional(g, f, banned, src, dst, s) else { return Ok(None) };
    let (_, lat, carbon) = sums(g, &fast);
    if lat <= latency_left + EPS && carbon <= carbon_left + EPS {
        return Ok(Some(fast));
    }
    // Lower bounds to dst, by reverse searches over the same filter.
    let bound = |s: &mut Scratch, w: &dyn Fn(usize) -> u64| -> Vec<u64> {
        dijkstra(g, f, banned, Search { from: dst, until: None, walk: Walk::Backward }, s, w);
        s.dist.iter().map(|d| d.0).collect()
    };
    let lb_cost = bound(s, &|e| g.cost[e]);
    // Latency and carbon bounds in fixed point, rounded down so they never overestimate.
    let lb_lat: Vec<f64> = bound(s, &|e| (g.latency_of(e) * 1e6).floor() as u64).iter().map(|d| if *d == u64::MAX { f64::INFINITY } else { *d as f64 / 1e6 }).collect();
    let lb_carbon: Vec<f64> = bound(s, &|e| (g.carbon_of(e) * 1e6).floor() as u64).iter().map(|d| if *d == u64::MAX { f64::INFINITY } else { *d as f64 / 1e6 }).collect();
    let mut labels: Vec<Label> = vec![Label { node: src, cost: 0, latency: 0.0, carbon: 0.0, hops: 0, pred: NONE, edge: NONE }];
    let mut at: Vec<Vec<u32>> = vec![Vec::new(); g.len()];
    at[src as usize].push(0);
    let mut heap = BinaryHeap::new();
    heap.push(Reverse((lb_cost[src as usize], 0u32, 0u32)));
    while let Some(Reverse((_, _, li))) = heap.pop() {
        let l = labels[li as usize];
        if !at[l.node as usize].contains(&li) {
            continue; // dominated after it was queued
        }
        if l.node == dst {
            let mut edges = Vec::new();
            let mut i = li;
            while labels[i as usize].pred != NONE {
                edges.push(labels[i as usize].edge);
                i = labels[i as usize].pred;
            }
            edges.reverse();
            return Ok(Some(edges));
        }
        for e in g.edges(l.node) {
            let w = g.target[e];
            if !f.edge_ok(g, e) || banned.edge(e) || banned.node(w) || lb_cost[w as usize] == u64::MAX {
                continue;
            }
            let next = Label { node: w, cost: l.cost + g.cost[e], latency: l.latency + g.latency_of(e), carbon: l.carbon + g.carbon_of(e), hops: l.hops + 1, pred: li, edge: e as u32 };
            if next.latency + lb_lat[w as usize] > latency_left + EPS || next.carbon + lb_carbon[w as usize] > carbon_left + EPS {
                continue;
            }
            let here = &mut at[w as usize];
            let dominated = here.iter().any(|o| {
                let o = &labels[*o as usize];
                o.cost <= next.cost && o.latency <= next.latency + EPS && o.carbon <= next.carbon + EPS
            });
            if dominated {
                continue;
            }
            here.retain(|o| {
                let o = &labels[*o as usize];
                !(next.cost <= o.cost && next.latency <= o.latency + EPS && next.carbon <= o.carbon + EPS)
            });
            if labels.len() >= LABEL_LIMIT {
                bail!("the constrained search passed {LABEL_LIMIT} labels; loosen the budgets or split the query");
            }
            let idx = labels.len() as u32;
            labels.push(next);
            here.push(idx);
            heap.push(Reverse((next.cost + lb_cost[w as usize], next.hops, idx)));
        }
    }
    Ok(None)
}

/// The figures of the path that leaves `src` by `edges` (adjacency entries).
pub fn info(g: &Graph, src: u32, edges: Vec<u32>) -> PathInfo {
    let mut nodes = vec![g.ids[src as usize].clone()];
    let mut min_trust = g.trust[src as usize];
    let (mut latency, mut carbon, mut reliability, mut bw, mut cost) = (0.0, 0.0, 1.0, f64::INFINITY, 0u64);
    for e in &edges {
        let e = *e as usize;
        let v = g.target[e] as usize;
        nodes.push(g.ids[v].clone());
        min_trust = min_trust.min(g.trust[v]);
        latency += g.latency_of(e);
        carbon += g.carbon_of(e);
        reliability *= 1.0 - g.loss_of(e);
        bw = f64::min(bw, g.bandwidth_of(e));
        cost += g.cost[e];
    }
    let latency_norm = 1.0 - (latency / g.settings.latency_ref_ms).min(1.0);
    let bw_norm = if bw.is_finite() { (bw / g.settings.bandwidth_ref_mbps).min(1.0) } else { 1.0 };
    PathInfo {
        hops: edges.len(),
        nodes,
        cost,
        latency_ms: latency,
        carbon,
        min_bandwidth_mbps: if bw.is_finite() { bw } else { 0.0 },
        reliability,
        min_trust,
        route_score: 0.4 * min_trust + 0.3 * latency_norm + 0.2 * reliability + 0.1 * bw_norm,
        edges,
    }
}

fn order(a: &PathInfo, b: &PathInfo) -> Ordering {
    (a.cost, a.hops, &a.nodes).cmp(&(b.cost, b.hops, &b.nodes))
}

/// Resolves a node id (or its position) for a query.
pub fn lookup(g: &Graph, id: &str) -> Result<u32> {
    match g.find(id) {
        Some(i) => Ok(i),
        None => bail!("unknown node '{id}'"),
    }
}

/// The best path and up to `k` backups from `from` to `to` under `c`.
pub fn route(g: &Graph, from: &str, to: &str, c: &Constraints, k: usize) -> Result<Answer> {
    if k > crate::model::MAX_BACKUPS {
        bail!("backups: {k} is outside 0..{}", crate::model::MAX_BACKUPS);
    }
    let src = lookup(g, from)?;
    let dst = lookup(g, to)?;
    for (what, v) in [("trust_floor", c.trust_floor), ("latency_budget_ms", c.latency_budget_ms), ("min_bandwidth_mbps", c.min_bandwidth_mbps), ("carbon_max", c.carbon_max)] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 || (what == "trust_floor" && v > 1.0) {
                bail!("constraint {what} = {v} is out of range");
            }
        }
    }
    let mut s = Scratch::default();
    let full = filter(g, c, src, STEPS.len());
    if src == dst {
        if let Some(why) = node_allowed(g, c, src, src as usize, STEPS.len()) {
            return Ok(explain_endpoint(g, c, "source", src, why));
        }
        return Ok(Answer::Found { best: info(g, src, Vec::new()), backups: Vec::new() });
    }
    let endpoints_ok = full.node_ok(g, src) && full.node_ok(g, dst);
    let found = if endpoints_ok { best_edges(g, &full, &Banned::default(), src, dst, (0.0, 0.0), &mut s)? } else { None };
    let Some(best) = found else {
        return explain(g, c, src, dst, &mut s);
    };
    let mut found = vec![info(g, src, best)];
    let mut candidates: Vec<PathInfo> = Vec::new();
    while found.len() <= k {
        let prev = found.last().expect("found holds the best path").clone();
        let prev_nodes: Vec<u32> = std::iter::once(src).chain(prev.edges.iter().map(|e| g.target[*e as usize])).collect();
        for i in 0..prev.edges.len() {
            let spur = prev_nodes[i];
            let root = &prev.edges[..i];
            let mut banned = Banned { nodes: vec![false; g.len()], edges: BTreeSet::new() };
            for p in &found {
                if p.edges.len() > i && p.edges[..i] == *root {
                    banned.edges.insert(p.edges[i]);
                }
            }
            for v in &prev_nodes[..i] {
                banned.nodes[*v as usize] = true;
            }
            let (_, lat, carbon) = sums(g, root);
            if let Some(tail) = best_edges(g, &full, &banned, spur, dst, (lat, carbon), &mut s)? {
                let edges: Vec<u32> = root.iter().chain(tail.iter()).copied().collect();
                let cand = info(g, src, edges);
                if !found.iter().chain(candidates.iter()).any(|p| p.edges == cand.edges) {
                    candidates.push(cand);
                }
            }
        }
        if candidates.is_empty() {
            break;
        }
        candidates.sort_by(order);
        found.push(candidates.remove(0));
    }
    let best = found.remove(0);
    Ok(Answer::Found { best, backups: found })
}

fn describe(g: &Graph, c: &Constraints, step: &str, v: u32) -> String {
    let id = &g.ids[v as usize];
    match step {
        "blacklist" => format!("'{id}' has trust {:.3}, below the blacklist threshold {}", g.trust[v as usize], g.settings.blacklist_threshold),
        "trust_floor" => format!("'{id}' has trust {:.3}, below the trust floor {}", g.trust[v as usize], c.trust_floor.unwrap_or(0.0)),
        "attestation" => format!("'{id}' has attestation {:?}, {:?} is required", g.attestation[v as usize], c.attestation.unwrap_or(Attestation::None)),
        _ => format!("'{id}' is in jurisdiction {}", g.jurisdictions[g.jurisdiction[v as usize] as usize]),
    }
}

fn explain_endpoint(g: &Graph, c: &Constraints, which: &str, v: u32, step: &str) -> Answer {
    Answer::NoPath { constraint: step.to_string(), reason: format!("the {which} is excluded: {}", describe(g, c, step, v)) }
}

/// Adds the constraints one at a time (in STEPS order) and names the first
/// that leaves no path.
fn explain(g: &Graph, c: &Constraints, src: u32, dst: u32, s: &mut Scratch) -> Result<Answer> {
    let none = Banned::default();
    let open = Filter {
        min_trust: f64::NEG_INFINITY,
        attestation: Attestation::None,
        jurisdiction_ok: vec![true; g.jurisdictions.len()],
        min_bandwidth: f64::NEG_INFINITY,
        latency_budget: f64::INFINITY,
        carbon_max: f64::INFINITY,
    };
    dijkstra(g, &open, &none, Search::forward(src, Some(dst)), s, &|e| g.cost[e]);
    if s.dist[dst as usize].0 == u64::MAX {
        return Ok(Answer::NoPath { constraint: "topology".into(), reason: format!("'{}' and '{}' are not connected by links that are up", g.ids[src as usize], g.ids[dst as usize]) });
    }
    for (i, step) in STEPS.iter().enumerate() {
        let upto = i + 1;
        for (which, v) in [("source", src), ("destination", dst)] {
            if let Some(why) = node_allowed(g, c, src, v as usize, upto) {
                return Ok(explain_endpoint(g, c, which, v, why));
            }
        }
        let f = filter(g, c, src, upto);
        match *step {
            "latency_budget" | "carbon_max" => {
                let budget_name = if *step == "latency_budget" { "latency budget" } else { "carbon max" };
                let limit = if *step == "latency_budget" { f.latency_budget } else { f.carbon_max };
                if best_edges(g, &f, &none, src, dst, (0.0, 0.0), s)?.is_none() {
                    // The least latency (or carbon) possible under the earlier constraints.
                    let earlier = filter(g, c, src, upto - 1);
                    let scaled: &dyn Fn(usize) -> u64 = if *step == "latency_budget" { &|e| (g.latency_of(e) * 1e6).round() as u64 } else { &|e| (g.carbon_of(e) * 1e6).round() as u64 };
                    dijkstra(g, &Filter { latency_budget: f64::INFINITY, carbon_max: f64::INFINITY, ..earlier }, &none, Search::forward(src, Some(dst)), s, scaled);
                    let least = s.dist[dst as usize].0 as f64 / 1e6;
                    let reason = if least > limit + EPS {
                        format!("{budget_name} {limit}: the least possible under the other constraints is {least:.3}")
                    } else {
                        format!("{budget_name} {limit} together with the latency budget: each alone can be met, not both on one path")
                    };
                    return Ok(Answer::NoPath { constraint: step.to_string(), reason });
                }
            }
            _ => {
                dijkstra(g, &f, &none, Search::forward(src, Some(dst)), s, &|e| g.cost[e]);
                if s.dist[dst as usize].0 == u64::MAX {
                    let what = match *step {
                        "blacklist" => format!("every path crosses a node below the blacklist threshold {}", g.settings.blacklist_threshold),
                        "trust_floor" => format!("every path crosses a node below the trust floor {}", c.trust_floor.unwrap_or(0.0)),
                        "attestation" => format!("every path crosses a node without {:?} attestation", c.attestation.unwrap_or(Attestation::None)),
                        "jurisdiction" => "every path crosses a node in a jurisdiction the constraints exclude".to_string(),
                        _ => format!("every path crosses a link narrower than {} Mbps", c.min_bandwidth_mbps.unwrap_or(0.0)),
                    };
                    return Ok(Answer::NoPath { constraint: step.to_string(), reason: what });
                }
            }
        }
    }
    // Unreachable in theory: the full search found nothing, so some step must fail.
    Ok(Answer::NoPath { constraint: "unknown".into(), reason: "no path meets the constraints".into() })
}

/// Shortest-path tree from `src` by cost under the blacklist alone: the
/// routing table (destination -> next hop, cost).
pub fn tree(g: &Graph, src: u32, s: &mut Scratch) -> Vec<Option<(u32, u64)>> {
    let f = filter(g, &Constraints::default(), src, 1);
    dijkstra(g, &f, &Banned::default(), Search::forward(src, None), s, &|e| g.cost[e]);
    (0..g.len())
        .map(|v| {
            if v as u32 == src || s.dist[v].0 == u64::MAX {
                return None;
            }
            // Walk back to the hop that leaves src.
            let mut w = v as u32;
            loop {
                let e = s.pred[w as usize];
                let from = g.target[g.reverse[e as usize] as usize];
                if from == src {
                    return Some((w, s.dist[v].0));
                }
                w = from;
            }
        })
        .collect()
}

/// Checks a path given by hand (a list of node ids): it must exist hop by hop and not revisit a node.
pub fn check_path(g: &Graph, ids: &[String]) -> Result<PathInfo> {
    if ids.len() < 2 {
        bail!("a path needs at least two nodes");
    }
    let mut seen = BTreeSet::new();
    let mut nodes = Vec::new();
    for id in ids {
        let v = lookup(g, id)?;
        if !seen.insert(v) {
            bail!("the path visits '{id}' twice (a cycle)");
        }
        nodes.push(v);
    }
    let mut edges = Vec::new();
    for w in nodes.windows(2) {
        let e = g.edges(w[0]).filter(|e| g.target[*e] == w[1] && g.up_of(*e)).min_by_key(|e| g.cost[*e]);
        match e {
            Some(e) => edges.push(e as u32),
            None => bail!("no link up from '{}' to '{}'", g.ids[w[0] as usize], g.ids[w[1] as usize]),
        }
    }
    Ok(info(g, nodes[0], edges))
}

/// Whether `p` meets every constraint (used by tests and by `route --check`).
pub fn satisfies(g: &Graph, c: &Constraints, p: &PathInfo) -> bool {
    let Some(src) = p.nodes.first().and_then(|id| g.find(id)) else { return false };
    let f = filter(g, c, src, STEPS.len());
    let nodes_ok = p.nodes.iter().all(|id| g.find(id).is_some_and(|v| f.node_ok(g, v)));
    let edges_ok = p.edges.iter().all(|e| f.edge_ok(g, *e as usize));
    nodes_ok && edges_ok && p.latency_ms <= f.latency_budget + EPS && p.carbon <= f.carbon_max + EPS
}

//! The Meta-RIB as arrays for path search: nodes by index, both directions of
//! every link in one adjacency array (CSR), and each hop's cost.
//!
//! Hop cost (docs/control-plane.md): seed 003's route score applied to one
//! hop u->v,
//!   s = 0.4 trust(v) + 0.3 (1 - min(latency/latency_ref, 1)) + 0.2 (1 - loss)
//!       + 0.1 min(bandwidth/bandwidth_ref, 1)
//! and cost = round((1 - s) * 1e6) + 1, an integer, so sums are exact and ties
//! are real ties; the +1 makes every hop cost something (fewer hops win ties
//! of quality, and best paths never loop).

use std::collections::BTreeMap;

use crate::{
    model::{Attestation, ControlSettings, Topology},
    trust::trust_score,
};

pub const COST_SCALE: f64 = 1e6;

#[derive(Clone, Debug)]
pub struct Graph {
    pub settings: ControlSettings,
    pub ids: Vec<String>,
    pub index: BTreeMap<String, u32>,
    pub trust: Vec<f64>,
    pub attestation: Vec<Attestation>,
    pub jurisdiction: Vec<u32>,
    pub jurisdictions: Vec<String>,
    /// Adjacency of node v: entries offsets[v]..offsets[v+1].
    pub offsets: Vec<u32>,
    pub target: Vec<u32>,
    /// The entry for the same link in the other direction.
    pub reverse: Vec<u32>,
    pub link: Vec<u32>,
    pub latency: Vec<f64>,
    pub bandwidth: Vec<f64>,
    pub loss: Vec<f64>,
    pub carbon: Vec<f64>,
    pub up: Vec<bool>,
    pub cost: Vec<u64>,
}

pub fn hop_score(settings: &ControlSettings, trust_to: f64, latency: f64, loss: f64, bandwidth: f64) -> f64 {
    let latency_norm = 1.0 - (latency / settings.latency_ref_ms).min(1.0);
    let bandwidth_norm = (bandwidth / settings.bandwidth_ref_mbps).min(1.0);
    0.4 * trust_to + 0.3 * latency_norm + 0.2 * (1.0 - loss) + 0.1 * bandwidth_norm
}

pub fn hop_cost(score: f64) -> u64 {
    ((1.0 - score).max(0.0) * COST_SCALE).round() as u64 + 1
}

/// A node's trust: the operator's override, else the computed score.
pub fn node_trust(n: &crate::model::Node) -> f64 {
    n.score_override.unwrap_or_else(|| trust_score(&n.inputs))
}

impl Graph {
    pub fn build(t: &Topology) -> Graph {
        let n = t.nodes.len();
        let index: BTreeMap<String, u32> = t.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i as u32)).collect();
        let mut jurisdictions: Vec<String> = t.nodes.iter().map(|n| n.jurisdiction.clone()).collect();
        jurisdictions.sort();
        jurisdictions.dedup();
        let jurisdiction = t.nodes.iter().map(|n| jurisdictions.binary_search(&n.jurisdiction).unwrap_or(0) as u32).collect();
        let mut degree = vec![0u32; n + 1];
        let ends: Vec<(u32, u32)> = t.links.iter().map(|l| (index[&l.a], index[&l.b])).collect();
        for (a, b) in &ends {
            degree[*a as usize] += 1;
            degree[*b as usize] += 1;
        }
        let mut offsets = vec![0u32; n + 1];
        for v in 0..n {
            offsets[v + 1] = offsets[v] + degree[v];
        }
        let m = offsets[n] as usize;
        let mut g = Graph {
            settings: t.settings.clone(),
            ids: t.nodes.iter().map(|n| n.id.clone()).collect(),
            index,
            trust: t.nodes.iter().map(node_trust).collect(),
            attestation: t.nodes.iter().map(|n| n.attestation).collect(),
            jurisdiction,
            jurisdictions,
            offsets: offsets.clone(),
            target: vec![0; m],
            reverse: vec![0; m],
            link: vec![0; m],
            latency: vec![0.0; m],
            bandwidth: vec![0.0; m],
            loss: vec![0.0; m],
            carbon: vec![0.0; m],
            up: vec![true; m],
            cost: vec![0; m],
        };
        let mut fill = offsets;
        for (li, ((a, b), l)) in ends.iter().zip(&t.links).enumerate() {
            let ea = fill[*a as usize] as usize;
            fill[*a as usize] += 1;
            let eb = fill[*b as usize] as usize;
            fill[*b as usize] += 1;
            for (e, to, rev) in [(ea, *b, eb), (eb, *a, ea)] {
                g.target[e] = to;
                g.reverse[e] = rev as u32;
                g.link[e] = li as u32;
                g.latency[e] = l.latency_ms;
                g.bandwidth[e] = l.bandwidth_mbps;
                g.loss[e] = l.loss;
                g.carbon[e] = l.carbon;
                g.up[e] = l.up;
            }
        }
        for e in 0..m {
            g.cost[e] = g.entry_cost(e);
        }
        g
    }

    fn entry_cost(&self, e: usize) -> u64 {
        hop_cost(hop_score(&self.settings, self.trust[self.target[e] as usize], self.latency[e], self.loss[e], self.bandwidth[e]))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn edges(&self, v: u32) -> std::ops::Range<usize> {
        self.offsets[v as usize] as usize..self.offsets[v as usize + 1] as usize
    }

    /// A node's trust changed: only the hops into it change cost.
    pub fn set_trust(&mut self, v: u32, trust: f64) {
        self.trust[v as usize] = trust;
        for e in self.edges(v) {
            let into = self.reverse[e] as usize;
            self.cost[into] = self.entry_cost(into);
        }
    }

    /// A link's measurements changed (both directions).
    pub fn set_link(&mut self, link: u32, latency: f64, bandwidth: f64, loss: f64, carbon: f64, up: bool) {
        for e in 0..self.target.len() {
            if self.link[e] == link {
                self.latency[e] = latency;
                self.bandwidth[e] = bandwidth;
                self.loss[e] = loss;
                self.carbon[e] = carbon;
                self.up[e] = up;
                self.cost[e] = self.entry_cost(e);
            }
        }
    }
}

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
    /// Node indices sorted by id, for lookups by name.
    by_id: Vec<u32>,
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
    /// Per adjacency entry: it depends on the trust of the node it leads to.
    pub cost: Vec<u64>,
    /// Per link (both directions share them), by link index.
    pub latency: Vec<f64>,
    pub bandwidth: Vec<f64>,
    pub loss: Vec<f64>,
    pub carbon: Vec<f64>,
    pub up: Vec<bool>,
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
    n.score_override.unwrap_or_else(|| n.inputs.as_ref().map_or(0.0, trust_score))
}

impl Graph {
    pub fn build(t: &Topology) -> Graph {
        let n = t.nodes.len();
        let index: BTreeMap<&str, u32> = t.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i as u32)).collect();
        let by_id: Vec<u32> = index.values().copied().collect();
        let mut jurisdictions: Vec<String> = t.nodes.iter().map(|n| n.jurisdiction.clone()).collect();
        jurisdictions.sort();
        jurisdictions.dedup();
        let jurisdiction = t.nodes.iter().map(|n| jurisdictions.binary_search(&n.jurisdiction).unwrap_or(0) as u32).collect();
        let mut degree = vec![0u32; n + 1];
        let ends: Vec<(u32, u32)> = t.links.iter().map(|l| (index[l.a.as_str()], index[l.b.as_str()])).collect();
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
            by_id,
            trust: t.nodes.iter().map(node_trust).collect(),
            attestation: t.nodes.iter().map(|n| n.attestation).collect(),
            jurisdiction,
            jurisdictions,
            offsets: offsets.clone(),
            target: vec![0; m],
            reverse: vec![0; m],
            link: vec![0; m],
            cost: vec![0; m],
            latency: t.links.iter().map(|l| l.latency_ms).collect(),
            bandwidth: t.links.iter().map(|l| l.bandwidth_mbps).collect(),
            loss: t.links.iter().map(|l| l.loss).collect(),
            carbon: t.links.iter().map(|l| l.carbon).collect(),
            up: t.links.iter().map(|l| l.up).collect(),
        };
        let mut fill = offsets;
        for (li, (a, b)) in ends.iter().enumerate() {
            let ea = fill[*a as usize] as usize;
            fill[*a as usize] += 1;
            let eb = fill[*b as usize] as usize;
            fill[*b as usize] += 1;
            for (e, to, rev) in [(ea, *b, eb), (eb, *a, ea)] {
                g.target[e] = to;
                g.reverse[e] = rev as u32;
                g.link[e] = li as u32;
            }
        }
        for e in 0..m {
            g.cost[e] = g.entry_cost(e);
        }
        g
    }

    fn entry_cost(&self, e: usize) -> u64 {
        hop_cost(hop_score(&self.settings, self.trust[self.target[e] as usize], self.latency_of(e), self.loss_of(e), self.bandwidth_of(e)))
    }

    /// The node index of `id`.
    pub fn find(&self, id: &str) -> Option<u32> {
        self.by_id.binary_search_by(|i| self.ids[*i as usize].as_str().cmp(id)).ok().map(|p| self.by_id[p])
    }

    #[inline]
    pub fn latency_of(&self, e: usize) -> f64 {
        self.latency[self.link[e] as usize]
    }
    #[inline]
    pub fn bandwidth_of(&self, e: usize) -> f64 {
        self.bandwidth[self.link[e] as usize]
    }
    #[inline]
    pub fn loss_of(&self, e: usize) -> f64 {
        self.loss[self.link[e] as usize]
    }
    #[inline]
    pub fn carbon_of(&self, e: usize) -> f64 {
        self.carbon[self.link[e] as usize]
    }
    #[inline]
    pub fn up_of(&self, e: usize) -> bool {
        self.up[self.link[e] as usize]
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
        let l = link as usize;
        (self.latency[l], self.bandwidth[l], self.loss[l], self.carbon[l], self.up[l]) = (latency, bandwidth, loss, carbon, up);
        for e in 0..self.target.len() {
            if self.link[e] == link {
                self.cost[e] = self.entry_cost(e);
            }
        }
    }
}

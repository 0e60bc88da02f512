//! Path computation against brute force on small random graphs (proptest),
//! and hand-made cases for the answers an operator reads.

use bpi_drx_control::{
    graph::{hop_cost, hop_score, Graph},
    model::{Attestation, ControlSettings, Link, Node, Topology},
    path::{check_path, info, route, satisfies, Answer, Constraints, PathInfo},
    trust::TrustInputs,
};
use proptest::prelude::*;

const JURISDICTIONS: [&str; 3] = ["US", "EU", "CN"];

fn inputs() -> TrustInputs {
    TrustInputs { uptime: 1.0, performance: 1.0, reputation: 1.0, known_vulnerabilities: 0.0, patch_level: 100.0, security_incidents: 0.0, compliance: 100.0 }
}

fn node(id: &str, trust: f64, jurisdiction: &str, attestation: Attestation) -> Node {
    Node { id: id.into(), dp_id: 0, prefixes: vec![], jurisdiction: jurisdiction.into(), attestation, inputs: Some(inputs()), score_override: Some(trust), identity: None, qlock: None }
}

fn link(a: &str, b: &str, latency_ms: f64, bandwidth_mbps: f64, loss: f64, carbon: f64) -> Link {
    Link { a: a.into(), b: b.into(), latency_ms, bandwidth_mbps, loss, carbon, up: true }
}

/// Every simple path from `from` to `to` over links that are up (parallel
/// links give distinct paths, as they do to the search).
fn all_paths(g: &Graph, from: &str, to: &str) -> Vec<PathInfo> {
    fn walk(g: &Graph, at: u32, to: u32, seen: &mut Vec<u32>, edges: &mut Vec<u32>, out: &mut Vec<Vec<u32>>) {
        if at == to {
            out.push(edges.clone());
            return;
        }
        for e in g.edges(at) {
            let w = g.target[e];
            if g.up_of(e) && !seen.contains(&w) {
                seen.push(w);
                edges.push(e as u32);
                walk(g, w, to, seen, edges, out);
                edges.pop();
                seen.pop();
            }
        }
    }
    let (s, t) = (g.find(from).unwrap(), g.find(to).unwrap());
    let mut out = Vec::new();
    walk(g, s, t, &mut vec![s], &mut Vec::new(), &mut out);
    out.into_iter().map(|edges| info(g, s, edges)).collect()
}

prop_compose! {
    fn topology()(n in 2usize..8)(
        trusts in prop::collection::vec(0.0f64..1.0, n),
        juris in prop::collection::vec(0usize..3, n),
        atts in prop::collection::vec(0usize..3, n),
        links in prop::collection::vec((0..n, 0..n, 0.1f64..20.0, 10.0f64..10_000.0, 0.0f64..0.1, 0.0f64..10.0, prop::bool::weighted(0.9)), 0..(n * 3)),
    ) -> Topology {
        let ids: Vec<String> = (0..trusts.len()).map(|i| format!("n{i}")).collect();
        let nodes = (0..ids.len()).map(|i| node(&ids[i], trusts[i], JURISDICTIONS[juris[i]], [Attestation::None, Attestation::Software, Attestation::Tpm][atts[i]])).collect();
        let links = links.into_iter().filter(|l| l.0 != l.1).map(|(a, b, lat, bw, loss, c, up)| Link { up, ..link(&ids[a], &ids[b], lat, bw, loss, c) }).collect();
        Topology { settings: ControlSettings { blacklist_threshold: 0.2, latency_ref_ms: 20.0, bandwidth_ref_mbps: 10_000.0, ..Default::default() }, nodes, links }
    }
}

prop_compose! {
    fn constraints()(
        floor in prop::option::of(0.0f64..0.9),
        budget in prop::option::of(1.0f64..40.0),
        bw in prop::option::of(10.0f64..8000.0),
        allow in prop::option::of(prop::collection::vec(0usize..3, 1..3)),
        exclude in prop::collection::vec(0usize..3, 0..2),
        domestic in prop::bool::weighted(0.2),
        att in prop::option::of(0usize..3),
        carbon in prop::option::of(0.0f64..25.0),
    ) -> Constraints {
        let name = |i: &usize| JURISDICTIONS[*i].to_string();
        let allow: Option<Vec<String>> = allow.map(|a| a.iter().map(name).collect());
        let exclude = exclude.iter().map(name).filter(|j| allow.as_ref().is_none_or(|a| !a.contains(j))).collect();
        Constraints {
            trust_floor: floor,
            latency_budget_ms: budget,
            min_bandwidth_mbps: bw,
            jurisdiction_allow: allow,
            jurisdiction_exclude: exclude,
            domestic_only: domestic,
            attestation: att.map(|a| [Attestation::None, Attestation::Software, Attestation::Tpm][a]),
            carbon_max: carbon,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn paths_meet_constraints_are_optimal_and_none_means_none(t in topology(), c in constraints(), k in 0usize..4, s in 0usize..8, d in 0usize..8) {
        let g = Graph::build(&t);
        let n = t.nodes.len();
        let (from, to) = (format!("n{}", s % n), format!("n{}", (s % n + 1 + d % (n - 1)) % n));
        let answer = route(&g, &from, &to, &c, k).unwrap();
        let mut feasible: Vec<PathInfo> = all_paths(&g, &from, &to).into_iter().filter(|p| satisfies(&g, &c, p)).collect();
        feasible.sort_by_key(|p| p.cost);
        // Deterministic: the same question gives the same answer.
        prop_assert_eq!(&answer, &route(&g, &from, &to, &c, k).unwrap());
        match answer {
            Answer::Found { best, backups } => {
                prop_assert!(satisfies(&g, &c, &best), "best path breaks a constraint: {:?}", best);
                prop_assert!(!feasible.is_empty());
                prop_assert_eq!(best.cost, feasible[0].cost, "not optimal: {:?} vs {:?}", best, feasible[0]);
                prop_assert_eq!(backups.len(), k.min(feasible.len() - 1));
                let mut seen = vec![best.edges.clone()];
                for (i, b) in backups.iter().enumerate() {
                    prop_assert!(satisfies(&g, &c, b), "backup breaks a constraint: {:?}", b);
                    prop_assert_eq!(b.cost, feasible[i + 1].cost, "backup {} is not the next best", i);
                    let mut uniq = b.nodes.clone();
                    uniq.sort();
                    uniq.dedup();
                    prop_assert_eq!(uniq.len(), b.nodes.len(), "backup loops: {:?}", b.nodes);
                    prop_assert!(!seen.contains(&b.edges), "backup repeats a path");
                    seen.push(b.edges.clone());
                }
            }
            Answer::NoPath { constraint, reason } => {
                prop_assert!(feasible.is_empty(), "said no path ({}: {}) but {:?} meets every constraint", constraint, reason, feasible[0]);
            }
        }
    }
}

fn diamond() -> Topology {
    // a-b-d is fast but crosses a less trusted, unattested, foreign node; a-c-d
    // is slow and clean; a-x-d is fastest but x is below the blacklist threshold.
    Topology {
        settings: ControlSettings { local: Some("a".into()), ..Default::default() },
        nodes: vec![
            node("a", 0.95, "US", Attestation::Tpm),
            node("b", 0.85, "CN", Attestation::None),
            node("c", 0.96, "US", Attestation::Tpm),
            node("d", 0.99, "US", Attestation::Tpm),
            node("x", 0.1, "US", Attestation::Tpm),
        ],
        links: vec![
            link("a", "b", 1.0, 10_000.0, 0.0, 1.0),
            link("b", "d", 1.0, 10_000.0, 0.0, 1.0),
            link("a", "c", 20.0, 1_000.0, 0.0, 5.0),
            link("c", "d", 20.0, 1_000.0, 0.0, 5.0),
            link("a", "x", 0.1, 100_000.0, 0.0, 0.0),
            link("x", "d", 0.1, 100_000.0, 0.0, 0.0),
        ],
    }
}

#[test]
fn hop_cost_follows_seed_003s_weights() {
    let s = ControlSettings { latency_ref_ms: 100.0, bandwidth_ref_mbps: 10_000.0, ..Default::default() };
    // 0.4*0.9 + 0.3*(1-10/100) + 0.2*(1-0.01) + 0.1*(5000/10000) = 0.36 + 0.27 + 0.198 + 0.05 = 0.878
    let score = hop_score(&s, 0.9, 10.0, 0.01, 5_000.0);
    assert!((score - 0.878).abs() < 1e-12, "{score}");
    assert_eq!(hop_cost(score), 122_001);
    assert_eq!(hop_cost(1.0), 1);
    assert_eq!(hop_cost(hop_score(&s, 1.0, 500.0, 0.0, 1e9)), 300_001);
}

#[test]
fn the_blacklist_and_constraints_steer_the_path() {
    let g = Graph::build(&diamond());
    let best = |c: &Constraints| match route(&g, "a", "d", c, 1).unwrap() {
        Answer::Found { best, .. } => best.nodes.join("-"),
        Answer::NoPath { constraint, reason } => format!("none: {constraint}: {reason}"),
    };
    // x is blacklisted (0.1 < 0.3) though it is the fastest way.
    assert_eq!(best(&Constraints::default()), "a-b-d");
    assert_eq!(best(&Constraints { trust_floor: Some(0.9), ..Default::default() }), "a-c-d");
    assert_eq!(best(&Constraints { attestation: Some(Attestation::Software), ..Default::default() }), "a-c-d");
    assert_eq!(best(&Constraints { domestic_only: true, ..Default::default() }), "a-c-d");
    assert_eq!(best(&Constraints { jurisdiction_exclude: vec!["CN".into()], ..Default::default() }), "a-c-d");
    assert_eq!(best(&Constraints { min_bandwidth_mbps: Some(5_000.0), ..Default::default() }), "a-b-d");
    let none = best(&Constraints { trust_floor: Some(0.9), latency_budget_ms: Some(4.0), ..Default::default() });
    assert!(none.starts_with("none: latency_budget: latency budget 4: the least possible under the other constraints is 40.000"), "{none}");
    let none = best(&Constraints { trust_floor: Some(0.9), min_bandwidth_mbps: Some(5_000.0), ..Default::default() });
    assert!(none.starts_with("none: min_bandwidth"), "{none}");
    let none = best(&Constraints { trust_floor: Some(0.97), ..Default::default() });
    assert!(none.contains("source is excluded") && none.contains("'a' has trust 0.950"), "{none}");
    let none = best(&Constraints { trust_floor: Some(0.9), carbon_max: Some(9.0), ..Default::default() });
    assert!(none.starts_with("none: carbon_max"), "{none}");
}

#[test]
fn bad_queries_are_refused() {
    let g = Graph::build(&diamond());
    assert!(route(&g, "a", "zz", &Constraints::default(), 0).unwrap_err().to_string().contains("unknown node 'zz'"));
    let nan = Constraints { latency_budget_ms: Some(f64::NAN), ..Default::default() };
    assert!(route(&g, "a", "d", &nan, 0).unwrap_err().to_string().contains("out of range"));
    let over = Constraints { trust_floor: Some(1.5), ..Default::default() };
    assert!(route(&g, "a", "d", &over, 0).is_err());
    let ids = |s: &str| s.split('-').map(String::from).collect::<Vec<_>>();
    assert!(check_path(&g, &ids("a-b-a-d")).unwrap_err().to_string().contains("twice (a cycle)"));
    assert!(check_path(&g, &ids("a-d")).unwrap_err().to_string().contains("no link up"));
    assert_eq!(check_path(&g, &ids("a-c-d")).unwrap().hops, 2);
}

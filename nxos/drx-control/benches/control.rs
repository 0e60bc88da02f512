//! `cargo xtask bench` (control-plane part). Figures next to references
//! measured in the same run:
//!
//! - trust scores computed per second (seed 003's formula over 1M nodes);
//! - constrained best path on random graphs of 1k, 10k and 100k nodes
//!   (average degree 6), as a ratio against petgraph's Dijkstra (to the same
//!   target, unconstrained) on the same graphs and pairs; with per-node and
//!   per-link constraints, with a latency budget as well, and with 2 backups;
//! - recompute time (routing table from the local node) after one trust
//!   change at 10k nodes.
//!
//! Writes target/bench/control.json and target/bench/topology-10k.toml (xtask
//! runs the daemon on it to measure its memory).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use bpi_drx_control::{
    engine::{Engine, Run},
    graph::Graph,
    model::{Attestation, ControlSettings, Link, Node, Topology},
    path::{route, Answer, Constraints},
    trust::{trust_scores, TrustInputs},
};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::json;

/// A small, seeded generator: the same graphs every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn inputs(r: &mut Rng) -> TrustInputs {
    TrustInputs {
        uptime: r.range(0.9, 1.0),
        performance: r.range(0.5, 1.0),
        reputation: r.range(0.3, 1.0),
        known_vulnerabilities: r.range(0.0, 30.0).floor(),
        patch_level: r.range(60.0, 100.0),
        security_incidents: r.range(0.0, 10.0).floor(),
        compliance: r.range(50.0, 100.0),
    }
}

fn random_topology(n: usize, seed: u64) -> Topology {
    let mut r = Rng(seed);
    let juris = ["US", "EU", "CA", "CN"];
    let atts = [Attestation::None, Attestation::Software, Attestation::Tpm];
    let nodes = (0..n)
        .map(|i| Node {
            id: format!("n{i}"),
            dp_id: i as u32 + 1,
            prefixes: vec![],
            jurisdiction: juris[r.below(4)].into(),
            attestation: atts[r.below(3)],
            inputs: Some(inputs(&mut r)),
            score_override: None,
            identity: None,
            qlock: None,
        })
        .collect();
    let mut links = Vec::new();
    for i in 0..n {
        for _ in 0..3 {
            let j = r.below(n);
            if j != i {
                links.push(Link {
                    a: format!("n{i}"),
                    b: format!("n{j}"),
                    latency_ms: r.range(0.5, 20.0),
                    bandwidth_mbps: r.range(100.0, 100_000.0),
                    loss: r.range(0.0, 0.01),
                    carbon: r.range(0.0, 10.0),
                    up: true,
                });
            }
        }
    }
    Topology { settings: ControlSettings { local: Some("n0".into()), ..Default::default() }, nodes, links }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn to_toml(t: &Topology) -> String {
    let mut s = String::from("[control]\nlocal = \"n0\"\n\n");
    for n in &t.nodes {
        let i = n.inputs.as_ref().expect("generated nodes have inputs");
        let _ = writeln!(
            s,
            "[[node]]\nid = \"{}\"\ndp_id = {}\njurisdiction = \"{}\"\nattestation = \"{}\"\nuptime = {}\nperformance = {}\nreputation = {}\nknown_vulnerabilities = {}\npatch_level = {}\nsecurity_incidents = {}\ncompliance = {}\n",
            n.id,
            n.dp_id,
            n.jurisdiction,
            format!("{:?}", n.attestation).to_lowercase(),
            i.uptime,
            i.performance,
            i.reputation,
            i.known_vulnerabilities,
            i.patch_level,
            i.security_incidents,
            i.compliance
        );
    }
    for l in &t.links {
        let _ = writeln!(s, "[[link]]\na = \"{}\"\nb = \"{}\"\nlatency_ms = {}\nbandwidth_mbps = {}\nloss = {}\ncarbon = {}\n", l.a, l.b, l.latency_ms, l.bandwidth_mbps, l.loss, l.carbon);
    }
    s
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The real daemon on a private bus with the 10k-node Meta-RIB: its resident
/// memory once ready and after answering routes, next to the dbus-daemon's.
fn daemon_memory(bin: &Path, topology: &Path) -> serde_json::Value {
    use std::{io::BufRead, os::unix::net::UnixDatagram, process::{Command, Stdio}};
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth><policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/></policy></busconfig>",
            dir.path().join("bus.sock").display()
        ),
    )
    .unwrap();
    let mut bus = Command::new("dbus-daemon").arg(format!("--config-file={}", conf.display())).args(["--nofork", "--print-address"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut address = String::new();
    std::io::BufReader::new(bus.stdout.take().unwrap()).read_line(&mut address).unwrap();
    let address = address.trim().to_string();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let mut daemon = Command::new(bin)
        .args(["nxos", "--pin-dir", "/nonexistent", "control", "serve", "--policies", "/nonexistent", "--bus", &address, "--topology"])
        .arg(topology)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    notify.recv(&mut buf).expect("the daemon never said READY=1");
    let ready = started.elapsed();
    let rss_ready = status_kib(daemon.id(), "VmRSS:");
    for i in 0..20 {
        let out = Command::new(bin).args(["nxos", "route", "--from", "n0", "--to", &format!("n{}", 1 + i * 97), "--json", "--bus", &address]).output().unwrap();
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("no path"));
    }
    let (rss, hwm) = (status_kib(daemon.id(), "VmRSS:"), status_kib(daemon.id(), "VmHWM:"));
    let bus_rss = status_kib(bus.id(), "VmRSS:");
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    let _ = bus.kill();
    let _ = bus.wait();
    println!(
        "daemon (10k nodes): ready in {:.0} ms; RSS {:.1} MB ready, {:.1} MB after 20 routes, peak {:.1} MB (dbus-daemon alongside: {:.1} MB)",
        ready.as_secs_f64() * 1e3,
        rss_ready as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        bus_rss as f64 / 1024.0
    );
    json!({ "ready_ms": ready.as_secs_f64() * 1e3, "rss_ready_kib": rss_ready, "rss_kib": rss, "hwm_kib": hwm, "dbus_daemon_rss_kib": bus_rss })
}

fn main() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let mut report = serde_json::Map::new();

    // Trust scores per second.
    let mut r = Rng(7);
    let all: Vec<TrustInputs> = (0..1_000_000).map(|_| inputs(&mut r)).collect();
    let mut scores = Vec::with_capacity(all.len());
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        trust_scores(std::hint::black_box(&all), &mut scores);
        std::hint::black_box(&scores);
        best = best.min(t.elapsed());
    }
    let per_s = all.len() as f64 / best.as_secs_f64();
    println!("trust scores: {:.1} M/s (1M nodes in {:.2} ms, best of 5)", per_s / 1e6, best.as_secs_f64() * 1e3);
    report.insert("trust_scores_per_s".into(), json!(per_s));

    // An intent most pairs can meet: a trust floor, a bandwidth floor and one
    // excluded jurisdiction (a quarter of the nodes); then budgets around the
    // typical path's latency and carbon, so some least-cost paths break them.
    let per_element = Constraints {
        trust_floor: Some(0.55),
        min_bandwidth_mbps: Some(1_000.0),
        jurisdiction_exclude: vec!["CN".into()],
        ..Default::default()
    };
    let with_budget = Constraints { latency_budget_ms: Some(80.0), carbon_max: Some(60.0), ..per_element.clone() };
    let mut sizes = BTreeMap::new();
    for n in [1_000usize, 10_000, 100_000] {
        let topo = random_topology(n, 42 + n as u64);
        if n == 10_000 {
            std::fs::write(out.join("topology-10k.toml"), to_toml(&topo)).unwrap();
        }
        let g = Graph::build(&topo);
        let mut pg: DiGraph<(), u64> = DiGraph::with_capacity(n, g.target.len());
        let idx: Vec<NodeIndex> = (0..n).map(|_| pg.add_node(())).collect();
        for v in 0..n as u32 {
            for e in g.edges(v) {
                pg.add_edge(idx[v as usize], idx[g.target[e] as usize], g.cost[e]);
            }
        }
        let mut r = Rng(99 + n as u64);
        // Endpoints the intent allows (outside CN): the search, not the
        // refusal of an excluded endpoint, is what is timed.
        let allowed: Vec<usize> = (0..n).filter(|v| topo.nodes[*v].jurisdiction != "CN").collect();
        let pairs: Vec<(usize, usize)> =
            (0..60).map(|_| (allowed[r.below(allowed.len())], allowed[r.below(allowed.len())])).filter(|(a, b)| a != b).collect();
        let mut petgraph_times = Vec::new();
        for (a, b) in &pairs {
            let t = Instant::now();
            let d = petgraph::algo::dijkstra(&pg, idx[*a], Some(idx[*b]), |e| *e.weight());
            petgraph_times.push(t.elapsed());
            std::hint::black_box(d);
        }
        let mut row = serde_json::Map::new();
        let pg_med = median(petgraph_times.clone());
        row.insert("petgraph_dijkstra_median_us".into(), json!(us(pg_med)));
        println!("{n} nodes, {} links: petgraph dijkstra (to target) median {:.0} us", topo.links.len(), us(pg_med));
        for (name, c, k) in [("per-element constraints", &per_element, 0usize), ("plus latency and carbon budgets", &with_budget, 0), ("per-element, 2 backups", &per_element, 2)] {
            let mut times = Vec::new();
            let mut found = 0;
            for (a, b) in &pairs {
                let t = Instant::now();
                let ans = route(&g, &format!("n{a}"), &format!("n{b}"), c, k).unwrap();
                times.push(t.elapsed());
                found += usize::from(matches!(ans, Answer::Found { .. }));
            }
            let (med, tail) = (median(times.clone()), p99(times));
            println!(
                "  {name:<34} median {:>9.0} us  p99 {:>9.0} us  = {:.2}x petgraph  ({found}/{} found)",
                us(med),
                us(tail),
                med.as_secs_f64() / pg_med.as_secs_f64(),
                pairs.len()
            );
            row.insert(name.into(), json!({ "median_us": us(med), "p99_us": us(tail), "ratio_vs_petgraph": med.as_secs_f64() / pg_med.as_secs_f64(), "found": found, "queries": pairs.len() }));
        }
        if n == 10_000 {
            let mut engine = Engine::new(topo.clone(), BTreeMap::new(), None);
            let mut recompute = Vec::new();
            let mut total = Vec::new();
            for i in 0..50 {
                let node = format!("n{}", r.below(n));
                let t = Instant::now();
                let change = engine.trust_update(&[(node, 0.3 + (i % 7) as f64 * 0.1)], Run::Apply).unwrap();
                total.push(t.elapsed());
                recompute.push(Duration::from_micros(change.recompute_us));
            }
            println!("  recompute after one trust change: routing table {:.0} us median, whole update {:.0} us median", us(median(recompute.clone())), us(median(total.clone())));
            row.insert("recompute_after_trust_change_us".into(), json!({ "routing_table_median": us(median(recompute)), "whole_update_median": us(median(total)) }));
        }
        sizes.insert(n.to_string(), serde_json::Value::Object(row));
    }
    report.insert("paths".into(), json!(sizes));
    match std::env::var_os("BPI_OS_BIN") {
        Some(bin) => report.insert("daemon_memory".into(), daemon_memory(Path::new(&bin), &out.join("topology-10k.toml"))),
        None => {
            println!("daemon memory: skipped (run through `cargo xtask bench`, which builds bpi-os and sets BPI_OS_BIN)");
            None
        }
    };
    std::fs::write(out.join("control.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}

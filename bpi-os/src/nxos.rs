//! `bpi-os nxos ...`: the DRX runtime. Thin dispatch onto bpi-drx-data.

use crate::output::{ChangeArgs, Json};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use bpi_drx_data::{
    attach::{self, Mode},
    config,
    layout::{parse_score, score_to_f64, Reason, Settings, Verdict},
    plan::Op,
    prefix::Prefix,
    tables::{Batch, Tables},
    DEFAULT_PIN_DIR,
};
use clap::{builder::TypedValueParser, Args, Subcommand};
use bpi_drx_control::wire::DataPlaneOp;
use serde_json::json;

use crate::{control, ledger::record};

#[derive(Args)]
pub struct NxosArgs {
    /// Where the data plane's maps and links are pinned (a bpf file system).
    #[arg(long, global = true, env = "BPI_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: NxosCommand,
}

#[derive(Subcommand)]
enum NxosCommand {
    /// The XDP data plane: load, unload, status.
    Ebpf {
        #[command(subcommand)]
        command: EbpfCommand,
    },
    /// Trust scores: through the control plane when it runs, else straight into the data plane's maps.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Start the runtime's services: the named parts, or all of them (bpi-drx-data, bpi-drx-control, bpi-qlock).
    Start {
        #[command(flatten)]
        parts: control::Parts,
        /// Print what would run and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Nodes, links, trust scores and the routing table.
    Topology {
        /// With each node's trust score and whether it is blacklisted.
        #[arg(long)]
        trust_scores: bool,
        /// With the routing table from the local node.
        #[arg(long)]
        routing_table: bool,
        #[command(flatten)]
        source: control::Source,
        #[command(flatten)]
        json: Json,
    },
    /// The seed's metrics: packets/s and time per packet (XDP), nodes, routes and changes (control plane), sessions (QLock); --real-time, --prometheus.
    Metrics(crate::metrics::MetricsArgs),
    /// The best path and backups between two nodes, under an intent's
    /// constraints; or, with --path, check a path given by hand.
    Route {
        /// The source node.
        #[arg(long, required_unless_present = "path", conflicts_with = "path")]
        from: Option<String>,
        /// The destination node.
        #[arg(long, required_unless_present = "path", conflicts_with = "path")]
        to: Option<String>,
        /// Node ids, comma-separated: check this path instead of searching.
        #[arg(long, value_delimiter = ',')]
        path: Option<Vec<String>>,
        /// The intent whose constraints apply (see `nxos policy check`).
        #[arg(long)]
        intent: Option<String>,
        /// Backup paths (default: the intent's, else the topology's).
        #[arg(long)]
        backups: Option<usize>,
        #[command(flatten)]
        source: control::Source,
        #[command(flatten)]
        json: Json,
    },
    /// Change a link's measurements, or take it down or up (through the daemon).
    Link {
        #[command(subcommand)]
        command: control::LinkCommand,
    },
    /// Intent policy files.
    Policy {
        #[command(subcommand)]
        command: control::PolicyCommand,
    },
    /// The control plane daemon.
    Control {
        #[command(subcommand)]
        command: control::ControlCommand,
    },
    /// vPod ports: allocate, release, list, ranges, health.
    Ports(crate::vpod::PortsArgs),
    /// This node's QLock identity (Ed25519 + ML-DSA-65): show, export for the other nodes' Meta-RIB.
    Identity {
        #[command(subcommand)]
        command: crate::qlock::IdentityCommand,
    },
    /// QLock sessions with other nodes: list (--active, --detailed), open, rekey, close.
    Sessions(crate::qlock::SessionsArgs),
    /// Check a path proof (proof-of-forward) against the route and the Meta-RIB; anchor the verdict in the ledger (exit 3: invalid).
    Verify(crate::pof::VerifyArgs),
    /// The QLock daemon.
    Qlock {
        #[command(subcommand)]
        command: crate::qlock::QlockCommand,
    },
}

#[derive(Subcommand)]
enum EbpfCommand {
    /// Attach a program to an interface (or to every interface in --config).
    Load {
        /// The XDP program to attach (only xdp_trust_routing ships).
        #[arg(long, default_value = "xdp_trust_routing")]
        program: String,
        /// The network interface to attach to.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        interface: Option<String>,
        /// Where the program runs: in the driver (native) or in the kernel's receive path (generic; any interface).
        #[arg(long, default_value = "native", value_parser = clap::builder::PossibleValuesParser::new(["native", "generic"]).try_map(|s| s.parse::<Mode>()))]
        mode: Mode,
        /// Interfaces, mode and settings from this file (bpi-drx-data.service uses /bpi/config/system/drx-data.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print what would be attached and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Detach our program from an interface, or from all of them.
    Unload {
        /// The interface to detach from.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        interface: Option<String>,
        /// Detach from every interface bpi-os attached to.
        #[arg(long)]
        all: bool,
        /// Print what would be detached and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Attached programs, their modes, the settings and the counters.
    Status {
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Set node scores (0..1); repeat --node-id/--score for one atomic batch.
    /// With bpi-drx-control.service running it takes node names and recomputes
    /// routes; without it, data-plane node numbers straight into the maps.
    Update {
        /// A node: its name (through the control daemon) or its data-plane number.
        #[arg(long = "node-id", required = true)]
        node_ids: Vec<String>,
        /// Its trust score, 0..1 (the same count as --node-id, in order).
        #[arg(long = "score", required = true, allow_negative_numbers = true)]
        scores: Vec<String>,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Map prefixes to nodes; repeat --prefix/--node-id for one atomic batch.
    Map {
        /// An IPv4 or IPv6 prefix (address/length).
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
        /// The data-plane number of the node the prefix belongs to (the same count as --prefix).
        #[arg(long = "node-id", required = true)]
        node_ids: Vec<u32>,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Remove prefixes.
    Unmap {
        /// A prefix to remove (repeat for more).
        #[arg(long = "prefix", required = true)]
        prefixes: Vec<String>,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Remove nodes' scores (their prefixes then count as unknown).
    Remove {
        /// The data-plane number of a node to remove (repeat for more).
        #[arg(long = "node-id", required = true)]
        node_ids: Vec<u32>,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Change the threshold and verdicts.
    Settings {
        /// Destinations scoring below this (0..1) are dropped.
        #[arg(long)]
        threshold: Option<String>,
        /// Verdict for destinations no prefix covers: pass or drop.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["pass", "drop"]).try_map(|s| s.parse::<Verdict>()))]
        unknown_verdict: Option<Verdict>,
        /// Verdict for frames the program cannot parse: pass or drop.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["pass", "drop"]).try_map(|s| s.parse::<Verdict>()))]
        default_verdict: Option<Verdict>,
        /// The exact-match cache in front of the tries: on or off.
        #[arg(long)]
        cache: Option<OnOff>,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Nodes, prefixes and per-prefix counters.
    Show {
        #[command(flatten)]
        json: Json,
    },
}


#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

pub fn run(args: NxosArgs) -> Result<()> {
    let dir = args.pin_dir.as_path();
    match args.command {
        NxosCommand::Ebpf { command } => match command {
            EbpfCommand::Load { program, interface, mode, config, dry_run, json } => load(dir, &program, interface, mode, config, dry_run, json),
            EbpfCommand::Unload { interface, all, dry_run, json } => unload(dir, interface, all, dry_run, json),
            EbpfCommand::Status { json } => status(dir, json),
        },
        NxosCommand::Trust { command } => trust(dir, command),
        NxosCommand::Start { parts, dry_run, json } => control::start(parts, dry_run, json),
        NxosCommand::Topology { trust_scores, routing_table, source, json } => control::topology(&source, control::TopologyDetail { trust_scores, routing_table }, json),
        NxosCommand::Metrics(args) => crate::metrics::run(dir, args),
        NxosCommand::Route { from, to, path, intent, backups, source, json } => match path {
            Some(p) => control::check_path(&source, &p, intent.as_deref(), json),
            None => control::route(&source, from.as_deref().unwrap_or(""), to.as_deref().unwrap_or(""), intent.as_deref(), backups, json),
        },
        NxosCommand::Policy { command } => control::policy(command),
        NxosCommand::Link { command } => control::link(command),
        NxosCommand::Control { command } => control::control(dir, command),
        NxosCommand::Ports(args) => crate::vpod::run(args),
        NxosCommand::Identity { command } => crate::qlock::identity(command),
        NxosCommand::Sessions(args) => crate::qlock::sessions(args),
        NxosCommand::Qlock { command } => crate::qlock::serve(command),
        NxosCommand::Verify(args) => crate::pof::verify(args),
    }
}

fn load(dir: &Path, program: &str, interface: Option<String>, mode: Mode, config: Option<PathBuf>, dry_run: bool, json: Json) -> Result<()> {
    let (interfaces, mode, settings) = match &config {
        Some(path) => {
            let c = config::load(path)?;
            if c.interfaces.is_empty() {
                eprintln!("bpi-os: note: {} names no interfaces; nothing to attach", path.display());
            }
            (c.interfaces, c.mode, c.settings)
        }
        None => (interface.into_iter().collect(), mode, Settings::default()),
    };
    // Every interface is checked before any is touched.
    let plans = interfaces.iter().map(|i| attach::plan_attach(dir, program, i, mode)).collect::<Result<Vec<_>>>()?;
    if dry_run {
        for p in &plans {
            println!("would {p}; maps under {}", dir.display());
        }
        return Ok(());
    }
    // Loaded (and the tables pinned) even with no interface to attach, so the
    // control plane and `nxos trust` can fill them while the service runs.
    let mut ebpf = attach::load(dir, program, settings)?;
    let mut done = Vec::new();
    for p in &plans {
        attach::apply_attach(dir, p, &mut ebpf)?;
        record("ebpf", "load", &json!({ "interface": p.interface, "program": p.program, "mode": p.mode, "replaced": p.replace }));
        if !json.on() {
            println!("{}", if p.replace { format!("swapped {} on {}", p.program, p.interface) } else { format!("attached {} to {} ({:?} mode)", p.program, p.interface, p.mode) });
        }
        done.push(p.clone());
    }
    if config.is_some() {
        // The file's settings win over whatever the maps held before.
        write(dir, vec![Op::Settings(settings)], &ChangeArgs { dry_run: false, json, bus: None })?;
    }
    if json.on() {
        json.print(&done)?;
    }
    Ok(())
}

fn unload(dir: &Path, interface: Option<String>, all: bool, dry_run: bool, json: Json) -> Result<()> {
    let targets = if all { attach::attached_interfaces(dir)? } else { interface.into_iter().collect() };
    if !all {
        for t in &targets {
            if !attach::attached_interfaces(dir)?.contains(t) {
                bail!("bpi-os has no program attached to '{t}' (see `bpi-os nxos ebpf status`)");
            }
        }
    }
    for t in &targets {
        if dry_run {
            if !json.on() {
                println!("would detach from {t}");
            }
            continue;
        }
        attach::detach(dir, t)?;
        record("ebpf", "unload", &json!({ "interface": t, "program": "xdp_trust_routing" }));
        if !json.on() {
            println!("detached from {t}");
        }
    }
    if json.on() {
        json.print(&json!({ "detached": if dry_run { Vec::new() } else { targets.clone() }, "would_detach": if dry_run { targets.clone() } else { Vec::new() } }))?;
    } else if targets.is_empty() {
        println!("nothing attached");
    }
    Ok(())
}

fn counters_json(tables: &Tables) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (r, c) in tables.reason_counters()? {
        out.insert(r.name().into(), json!({ "packets": c.packets, "bytes": c.bytes }));
    }
    Ok(out.into())
}

fn settings_json(s: &Settings) -> serde_json::Value {
    json!({
        "threshold": score_to_f64(s.threshold),
        "unknown_verdict": s.unknown_verdict,
        "default_verdict": s.default_verdict,
        "cache": s.cache,
    })
}

fn status(dir: &Path, json: Json) -> Result<()> {
    let links = attach::links(dir)?;
    let tables = Tables::open(dir).ok();
    if json.on() {
        let mut v = json!({ "pin_dir": dir, "loaded": tables.is_some(), "links": links });
        if let Some(t) = &tables {
            v["version"] = json!(t.version()?);
            v["settings"] = settings_json(&t.settings()?);
            v["counters"] = counters_json(t)?;
        }
        json.print(&v)?;
        return Ok(());
    }
    let Some(t) = tables else {
        println!("data plane: not loaded (no maps under {})", dir.display());
        return Ok(());
    };
    let s = t.settings()?;
    println!(
        "data plane: maps under {}, version {}, threshold {:.6}, unknown {}, unparseable {}, cache {}",
        dir.display(),
        t.version()?,
        score_to_f64(s.threshold),
        s.unknown_verdict.name(),
        s.default_verdict.name(),
        if s.cache { "on" } else { "off" }
    );
    if links.is_empty() {
        println!("attached: nothing");
    }
    for l in &links {
        match (&l.if_index, &l.hook) {
            (Some(i), Some(h)) => println!("attached: {} (ifindex {i}) {} mode, program '{}' id {}", l.interface, h.mode, h.program_name, h.program_id),
            (Some(i), None) => println!("attached: {} (ifindex {i}) link pinned but the hook is empty", l.interface),
            (None, _) => println!("attached: {} is gone; `bpi-os nxos ebpf unload --interface {}` clears the pin", l.interface, l.interface),
        }
    }
    for (r, c) in t.reason_counters()? {
        let verdict = match r {
            Reason::Trusted | Reason::NotIp => "pass",
            Reason::LowTrust => "drop",
            Reason::Unknown => s.unknown_verdict.name(),
            Reason::Malformed | Reason::Unparsed => s.default_verdict.name(),
            Reason::CacheHit | Reason::CacheMiss => "-",
        };
        println!("  {:<11} {:>4} {:>12} packets {:>14} bytes", r.name(), verdict, c.packets, c.bytes);
    }
    Ok(())
}

fn pairs<A, B>(a: Vec<A>, b: Vec<B>, what: &str) -> Result<Vec<(A, B)>> {
    if a.len() != b.len() {
        bail!("{what}: give them in pairs ({} and {})", a.len(), b.len());
    }
    Ok(a.into_iter().zip(b).collect())
}

fn parse_prefixes(texts: &[String]) -> Result<Vec<Prefix>> {
    texts.iter().map(|t| t.parse()).collect()
}

/// A trust change as asked: scores by node name or number, or data-plane
/// operations.
enum Request {
    Scores(Vec<(String, u32)>),
    Ops(Vec<Op>),
}

fn trust(dir: &Path, command: TrustCommand) -> Result<()> {
    // Input is checked in full before anything is asked of the daemon or the maps.
    let (request, out) = match command {
        TrustCommand::Update { node_ids, scores, out } => {
            let updates = pairs(node_ids, scores, "--node-id and --score")?
                .into_iter()
                .map(|(node, s)| Ok((node.clone(), parse_score(&s).with_context(|| format!("node {node}"))?)))
                .collect::<Result<Vec<_>>>()?;
            (Request::Scores(updates), out)
        }
        TrustCommand::Map { prefixes, node_ids, out } => {
            let prefixes = parse_prefixes(&prefixes)?;
            let ops = pairs(prefixes, node_ids, "--prefix and --node-id")?.into_iter().map(|(prefix, node)| Op::MapPrefix { prefix, node }).collect();
            (Request::Ops(ops), out)
        }
        TrustCommand::Unmap { prefixes, out } => (Request::Ops(parse_prefixes(&prefixes)?.into_iter().map(|prefix| Op::UnmapPrefix { prefix }).collect()), out),
        TrustCommand::Remove { node_ids, out } => (Request::Ops(node_ids.into_iter().map(|node| Op::RemoveNode { node }).collect()), out),
        TrustCommand::Settings { threshold, unknown_verdict, default_verdict, cache, out } => {
            let threshold = threshold.map(|t| parse_score(&t).context("--threshold")).transpose()?;
            let mut s = Tables::open(dir)?.settings()?;
            if let Some(t) = threshold {
                s.threshold = t;
            }
            s.unknown_verdict = unknown_verdict.unwrap_or(s.unknown_verdict);
            s.default_verdict = default_verdict.unwrap_or(s.default_verdict);
            if let Some(c) = cache {
                s.cache = matches!(c, OnOff::On);
            }
            (Request::Ops(vec![Op::Settings(s)]), out)
        }
        TrustCommand::Show { json } => return show(dir, json),
    };
    // While the control daemon runs it is the maps' only writer: the change
    // goes to it, as one call and one batch.
    if let Some((_conn, proxy)) = bpi_drx_control::service::connect(out.bus.as_deref()) {
        let change = match &request {
            Request::Scores(updates) => {
                let pairs: Vec<(&str, f64)> = updates.iter().map(|(n, s)| (n.as_str(), score_to_f64(*s))).collect();
                proxy.trust_update(&pairs, out.dry_run)
            }
            Request::Ops(ops) => proxy.data_plane_update(&ops.iter().map(DataPlaneOp::from).collect::<Vec<_>>(), out.dry_run),
        }
        .map_err(control::remote_err)?;
        return control::print_change(&change, out.json);
    }
    let ops = match request {
        Request::Ops(ops) => ops,
        Request::Scores(updates) => updates
            .into_iter()
            .map(|(node, score)| {
                let node: u32 = node.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "node id '{node}' is not a number: bpi-drx-control.service is not running, so the update goes straight to the data plane, which knows nodes by number (dp_id)"
                    )
                })?;
                Ok(Op::SetScore { node, score })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    write(dir, ops, &out)
}

/// Straight into the maps, through their one writer (no control daemon runs).
fn write(dir: &Path, ops: Vec<Op>, out: &ChangeArgs) -> Result<()> {
    let mut tables = Tables::open(dir)?;
    let recorder = bpi_ledger::service::LedgerRecorder::new(None);
    let written = tables.write_batch(&Batch { source: "bpi-os", recorder: &recorder, dry_run: out.dry_run }, |_| Ok(ops))?;
    let json = out.json;
    match &written.applied {
        None if json.on() => json.print(&written.plan)?,
        None => {
            for w in &written.plan.writes {
                println!("would write: {}", serde_json::to_string(w)?);
            }
        }
        Some(applied) if json.on() => json.print(applied)?,
        Some(applied) => {
            println!("applied {} change(s) as version {}{}", applied.writes, applied.version, if applied.resynced { " (first re-synced the idle tables)" } else { "" })
        }
    }
    if let Some(line) = &written.recorded {
        eprintln!("bpi-os: {line}");
    }
    Ok(())
}

fn show(dir: &Path, json: Json) -> Result<()> {
    let tables = Tables::open(dir)?;
    let snap = tables.snapshot()?;
    let mut prefixes = Vec::new();
    for (p, r) in &snap.routes {
        let c = tables.prefix_counter(r.slot)?;
        prefixes.push(json!({ "prefix": p, "node_id": r.node, "score": snap.nodes.get(&r.node).map(|s| score_to_f64(*s)), "packets": c.packets, "bytes": c.bytes }));
    }
    if json.on() {
        let nodes: BTreeMap<String, f64> = snap.nodes.iter().map(|(n, s)| (n.to_string(), score_to_f64(*s))).collect();
        json.print(&json!({ "version": snap.version, "settings": settings_json(&snap.settings), "nodes": nodes, "prefixes": prefixes }))?;
        return Ok(());
    }
    println!("version {}, threshold {:.6}", snap.version, score_to_f64(snap.settings.threshold));
    for (n, s) in &snap.nodes {
        println!("node {n}: score {:.6}{}", score_to_f64(*s), if *s < snap.settings.threshold { " (dropped)" } else { "" });
    }
    for p in &prefixes {
        println!("{} -> node {} ({} packets)", p["prefix"].as_str().unwrap_or(""), p["node_id"], p["packets"]);
    }
    Ok(())
}

//! `bpi-os nxos start|topology|metrics|route|policy|control`: the control
//! plane. Queries go to the running daemon over D-Bus, or, with --topology,
//! are answered here from a file (planning offline).

use crate::output::Json;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_drx_control::{
    engine::Engine,
    model::Topology,
    path::{Answer, PathInfo},
    policy,
    service::{self, Control1ProxyBlocking, ServeOptions},
    DEFAULT_POLICIES, DEFAULT_TOPOLOGY,
};
use bpi_support::exit::Failure;
use bpi_support::Cmd;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct Source {
    /// Answer from this Meta-RIB file instead of asking the running daemon.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Intent policies (a file or a directory of *.toml) for --topology.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICIES)]
    policies: PathBuf,
    /// The daemon's bus (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    bus: Option<String>,
}

#[derive(Subcommand)]
pub enum LinkCommand {
    /// Set what is given; the rest keeps its current value.
    Update {
        /// One end of the link (a node id).
        #[arg(long)]
        a: String,
        /// The other end.
        #[arg(long)]
        b: String,
        /// New latency, in milliseconds.
        #[arg(long)]
        latency_ms: Option<f64>,
        /// New bandwidth, in Mbit/s.
        #[arg(long)]
        bandwidth_mbps: Option<f64>,
        /// New loss ratio, 0..1.
        #[arg(long)]
        loss: Option<f64>,
        /// New carbon cost per unit of traffic.
        #[arg(long)]
        carbon: Option<f64>,
        /// Take the link down (paths avoid it).
        #[arg(long, conflicts_with = "up")]
        down: bool,
        /// Bring the link back up.
        #[arg(long)]
        up: bool,
        /// The control daemon's bus (default: the system bus).
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
        /// Print the link as it would be and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check an intent policy file; errors name the file, line and key (exit 3).
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum ControlCommand {
    /// Run the control plane daemon (bpi-drx-control.service).
    Serve {
        /// The Meta-RIB: nodes, links and settings (TOML).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_TOPOLOGY)]
        topology: PathBuf,
        /// Intent policies: a file or a directory of *.toml.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        /// Members of this group may change trust and links, as root may.
        #[arg(long)]
        admin_group: Option<String>,
        /// A D-Bus address instead of the system bus (tests).
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
    },
}

fn intents(path: &Path) -> Result<std::collections::BTreeMap<String, policy::Intent>> {
    if path.exists() {
        policy::load(path)
    } else {
        Ok(Default::default())
    }
}

fn offline(source: &Source) -> Result<Option<Engine>> {
    let Some(file) = &source.topology else { return Ok(None) };
    Ok(Some(Engine::new(Topology::load(file)?, intents(&source.policies)?, None)))
}

fn daemon(source: &Source) -> Result<(zbus::blocking::Connection, Control1ProxyBlocking<'static>)> {
    service::connect(source.bus.as_deref()).context(
        "bpi-drx-control.service is not on the bus: start it (`bpi-os nxos start`) or pass --topology FILE to plan offline",
    )
}

fn remote_err(e: zbus::Error) -> anyhow::Error {
    match e {
        zbus::Error::MethodError(name, msg, _) => anyhow::anyhow!("{} ({})", msg.unwrap_or_default(), name.as_str()),
        e => anyhow::Error::new(e).context("calling bpi-drx-control"),
    }
}

pub fn start(dry_run: bool, json: Json) -> Result<()> {
    const UNITS: [&str; 2] = ["bpi-drx-data.service", "bpi-drx-control.service"];
    let cmd = Cmd::new("systemctl").arg("start").args(UNITS);
    let cmdline = cmd.cmdline();
    let done = serde_json::json!({ "units": UNITS, "command": cmdline, "dry_run": dry_run });
    if !dry_run {
        cmd.run()?;
    }
    match (json.on(), dry_run) {
        (true, _) => json.print(&done)?,
        (false, true) => println!("would run: {cmdline}"),
        (false, false) => println!("started {}", UNITS.join(" and ")),
    }
    Ok(())
}

pub fn topology(source: &Source, trust_scores: bool, routing_table: bool, json: Json) -> Result<()> {
    let v: Value = match offline(source)? {
        Some(e) => e.topology_json(trust_scores, routing_table),
        None => serde_json::from_str(&daemon(source)?.1.topology(trust_scores, routing_table).map_err(remote_err)?)?,
    };
    if json.on() {
        json.print(&v)?;
        return Ok(());
    }
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    println!("{} nodes, {} links, local node {}", nodes.len(), v["links"].as_array().map_or(0, |l| l.len()), v["local"].as_str().unwrap_or("(none)"));
    for n in &nodes {
        let trust = if trust_scores {
            format!("  trust {:.4}{}", n["trust"].as_f64().unwrap_or(0.0), if n["blacklisted"] == true { " BLACKLISTED" } else { "" })
        } else {
            String::new()
        };
        println!("  {:<20} {:<8} {:<9}{trust}", n["id"].as_str().unwrap_or(""), n["jurisdiction"].as_str().unwrap_or(""), n["attestation"].as_str().unwrap_or(""));
    }
    if routing_table {
        println!("routing table:");
        for r in v["routing_table"].as_array().cloned().unwrap_or_default() {
            println!("  {:<20} via {:<20} cost {}", r["destination"].as_str().unwrap_or(""), r["next_hop"].as_str().unwrap_or(""), r["cost"]);
        }
    }
    Ok(())
}

pub fn metrics(source: &Source, json: Json) -> Result<()> {
    let v: Value = match offline(source)? {
        Some(e) => serde_json::to_value(&e.metrics)?,
        None => serde_json::from_str(&daemon(source)?.1.metrics().map_err(remote_err)?)?,
    };
    if json.on() {
        json.print(&v)?;
    } else if let Some(m) = v.as_object() {
        for (k, v) in m {
            println!("{k:<22} {v}");
        }
    }
    Ok(())
}

fn one_line(p: &PathInfo) -> String {
    format!(
        "{}  (cost {}, {} hops, {:.3} ms, carbon {:.3}, min trust {:.3}, route score {:.4})",
        p.nodes.join(" -> "),
        p.cost,
        p.hops,
        p.latency_ms,
        p.carbon,
        p.min_trust,
        p.route_score
    )
}

pub fn route(source: &Source, from: &str, to: &str, intent: Option<&str>, backups: Option<usize>, json: Json) -> Result<()> {
    let answer: Answer = match offline(source)? {
        Some(e) => e.route(from, to, intent, backups)?,
        None => {
            let k = backups.map_or(-1, |b| b as i32);
            let text = daemon(source)?.1.route(from, to, intent.unwrap_or(""), k).map_err(remote_err)?;
            answer_from_json(&text)?
        }
    };
    if json.on() {
        json.print(&answer)?;
    }
    match answer {
        Answer::Found { best, backups } => {
            if !json.on() {
                println!("best:     {}", one_line(&best));
                for (i, b) in backups.iter().enumerate() {
                    println!("backup {}: {}", i + 1, one_line(b));
                }
            }
            Ok(())
        }
        // The same exit code with and without --json.
        Answer::NoPath { constraint, reason } => Err(Failure::CheckFailed(format!("no path from {from} to {to}: {constraint}: {reason}")).into()),
    }
}

/// The daemon's JSON answer, back into an Answer.
fn answer_from_json(text: &str) -> Result<Answer> {
    let v: Value = serde_json::from_str(text)?;
    let path = |p: &Value| -> PathInfo {
        PathInfo {
            nodes: p["nodes"].as_array().map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect()).unwrap_or_default(),
            cost: p["cost"].as_u64().unwrap_or(0),
            hops: p["hops"].as_u64().unwrap_or(0) as usize,
            latency_ms: p["latency_ms"].as_f64().unwrap_or(0.0),
            carbon: p["carbon"].as_f64().unwrap_or(0.0),
            min_bandwidth_mbps: p["min_bandwidth_mbps"].as_f64().unwrap_or(0.0),
            reliability: p["reliability"].as_f64().unwrap_or(0.0),
            min_trust: p["min_trust"].as_f64().unwrap_or(0.0),
            route_score: p["route_score"].as_f64().unwrap_or(0.0),
            edges: Vec::new(),
        }
    };
    match v["answer"].as_str() {
        Some("found") => Ok(Answer::Found { best: path(&v["best"]), backups: v["backups"].as_array().map(|b| b.iter().map(path).collect()).unwrap_or_default() }),
        Some("no_path") => Ok(Answer::NoPath {
            constraint: v["constraint"].as_str().unwrap_or("").into(),
            reason: v["reason"].as_str().unwrap_or("").into(),
        }),
        _ => bail!("the daemon gave an answer this CLI does not know: {text}"),
    }
}

pub fn trust_via_daemon(proxy: &Control1ProxyBlocking<'_>, updates: &[(f64, String)], dry_run: bool, json: Json) -> Result<()> {
    for (score, node) in updates {
        if dry_run {
            println!("would set node {node} to trust {score} through bpi-drx-control");
            continue;
        }
        let out = proxy.trust_update(node, *score).map_err(remote_err)?;
        if json.on() {
            json.print(&serde_json::from_str::<Value>(&out)?)?;
        } else {
            let v: Value = serde_json::from_str(&out)?;
            println!("node {node}: trust {score}; routes recomputed in {} us; {}", v["recompute_us"], v["data_plane"].as_str().unwrap_or("no data plane maps"));
        }
    }
    Ok(())
}

pub fn check_path(source: &Source, nodes: &[String], intent: Option<&str>, json: Json) -> Result<()> {
    let v: Value = match offline(source)? {
        Some(e) => e.check(nodes, intent)?,
        None => {
            let ids: Vec<&str> = nodes.iter().map(String::as_str).collect();
            serde_json::from_str(&daemon(source)?.1.check_path(&ids, intent.unwrap_or("")).map_err(remote_err)?)?
        }
    };
    if json.on() {
        json.print(&v)?;
        return Ok(());
    }
    let p = &v["path"];
    println!(
        "{}: {} hops, {:.3} ms, carbon {:.3}, min trust {:.3}, cost {}; {}",
        nodes.join(" -> "),
        p["hops"],
        p["latency_ms"].as_f64().unwrap_or(0.0),
        p["carbon"].as_f64().unwrap_or(0.0),
        p["min_trust"].as_f64().unwrap_or(0.0),
        p["cost"],
        if v["meets_constraints"] == true { "meets the constraints" } else { "does NOT meet the constraints" }
    );
    Ok(())
}

pub fn link(command: LinkCommand) -> Result<()> {
    let LinkCommand::Update { a, b, latency_ms, bandwidth_mbps, loss, carbon, down, up, bus, dry_run, json } = command;
    let source = Source { topology: None, policies: PathBuf::new(), bus };
    let (_conn, proxy) = daemon(&source)?;
    let topo: Value = serde_json::from_str(&proxy.topology(false, false).map_err(remote_err)?)?;
    let current = topo["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| (l["a"] == a.as_str() && l["b"] == b.as_str()) || (l["a"] == b.as_str() && l["b"] == a.as_str())))
        .with_context(|| format!("no link between '{a}' and '{b}'"))?
        .clone();
    let f = |k: &str| current[k].as_f64().unwrap_or(0.0);
    let new = (
        latency_ms.unwrap_or(f("latency_ms")),
        bandwidth_mbps.unwrap_or(f("bandwidth_mbps")),
        loss.unwrap_or(f("loss")),
        carbon.unwrap_or(f("carbon")),
        if down { false } else { up || current["up"] != false },
    );
    if dry_run {
        if json.on() {
            let link = serde_json::json!({ "a": a, "b": b, "latency_ms": new.0, "bandwidth_mbps": new.1, "loss": new.2, "carbon": new.3, "up": new.4 });
            return json.print(&serde_json::json!({ "dry_run": true, "link": link }));
        }
        println!("would set {a}-{b}: latency {} ms, bandwidth {} Mbps, loss {}, carbon {}, {}", new.0, new.1, new.2, new.3, if new.4 { "up" } else { "down" });
        return Ok(());
    }
    let out = proxy.link_update(&a, &b, new.0, new.1, new.2, new.3, new.4).map_err(remote_err)?;
    let v: Value = serde_json::from_str(&out)?;
    if json.on() {
        return json.print(&v);
    }
    println!("link {a}-{b} updated; routes recomputed in {} us; {}", v["recompute_us"], v["data_plane"].as_str().unwrap_or("no data plane maps"));
    Ok(())
}

pub fn policy(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check { file, json } => {
            // A file that cannot be read is an error; one that reads but is wrong fails the check.
            std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
            let intents = policy::load_file(&file).map_err(|e| Failure::CheckFailed(format!("{e:#}")))?;
            let names: Vec<&str> = intents.iter().map(|i| i.name.as_str()).collect();
            if json.on() {
                json.print(&serde_json::json!({ "file": file, "intents": names }))?;
            } else {
                println!("{}: {} intent(s): {}", file.display(), intents.len(), names.join(", "));
            }
            Ok(())
        }
    }
}

pub fn control(pin_dir: &Path, command: ControlCommand) -> Result<()> {
    match command {
        ControlCommand::Serve { topology, policies, admin_group, bus } => {
            let engine = Engine::new(Topology::load(&topology)?, intents(&policies)?, Some(pin_dir.to_owned()));
            // The ledger is on the same bus as the daemon (a private one in tests).
            let recorder = std::sync::Arc::new(bpi_ledger::service::LedgerRecorder::new(bus.clone()));
            service::serve(ServeOptions { engine, admin_group, bus, recorder })
        }
    }
}

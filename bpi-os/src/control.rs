//! `bpi-os nxos start|topology|metrics|route|policy|control`: the control
//! plane. Queries go to the running daemon over D-Bus, or, with --topology,
//! are answered here from a file (planning offline).

use crate::output::{ChangeArgs, Json};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_drx_control::{
    engine::Engine,
    model::Topology,
    path::{Answer, PathInfo},
    policy,
    service::{self, Control1ProxyBlocking, ServeOptions},
    wire::{Change, LinkChange},
    DEFAULT_POLICIES, DEFAULT_TOPOLOGY,
};
use bpi_support::exit::Failure;
use bpi_support::Cmd;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct Source {
    /// Answer from this Meta-RIB file instead of asking the running daemon.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Intent policies (a file or a directory of *.toml) for --topology.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICIES)]
    policies: PathBuf,
    /// The daemon's bus (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus: Option<String>,
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
        #[command(flatten)]
        out: ChangeArgs,
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

pub fn offline(source: &Source) -> Result<Option<Engine>> {
    let Some(file) = &source.topology else { return Ok(None) };
    Ok(Some(Engine::new(Topology::load(file)?, intents(&source.policies)?, None)))
}

pub fn daemon(source: &Source) -> Result<(zbus::blocking::Connection, Control1ProxyBlocking<'static>)> {
    service::connect(source.bus.as_deref()).context(
        "bpi-drx-control.service is not on the bus: start it (`bpi-os nxos start`) or pass --topology FILE to plan offline",
    )
}

pub fn remote_err(e: zbus::Error) -> anyhow::Error {
    remote_error(e, "bpi-drx-control")
}

/// A D-Bus error from one of bpi-os's services: the service's own message, or what failed calling it.
pub fn remote_error(e: zbus::Error, service: &str) -> anyhow::Error {
    match e {
        zbus::Error::MethodError(name, msg, _) => anyhow::anyhow!("{} ({})", msg.unwrap_or_default(), name.as_str()),
        e => anyhow::Error::new(e).context(format!("calling {service}")),
    }
}

/// The parts of the runtime `nxos start` names (the seed's flags); none named is all of them.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Parts {
    /// The trust-weighted routing: the XDP data plane and the control plane.
    #[arg(long)]
    pub trust_routing: bool,
    /// QLock sessions steered by trust (bpi-qlock.service).
    #[arg(long)]
    pub qlock_steering: bool,
    /// Proof-of-forward: not available yet (issue 22), refused.
    #[arg(long)]
    pub proof_forward: bool,
}

/// The units that make up the parts asked for, in start order.
pub fn units_of(parts: Parts) -> Result<Vec<&'static str>> {
    if parts.proof_forward {
        anyhow::bail!("--proof-forward: proof-of-forward has no service yet (issue 22); start the other parts without it");
    }
    let all = !parts.trust_routing && !parts.qlock_steering;
    let mut units = Vec::new();
    if all || parts.trust_routing {
        units.extend(["bpi-drx-data.service", "bpi-drx-control.service"]);
    }
    if all || parts.qlock_steering {
        units.push("bpi-qlock.service");
    }
    Ok(units)
}

pub fn start(parts: Parts, dry_run: bool, json: Json) -> Result<()> {
    let units = units_of(parts)?;
    let cmd = Cmd::new("systemctl").arg("start").args(&units);
    let cmdline = cmd.cmdline();
    let done = serde_json::json!({ "units": units, "command": cmdline, "dry_run": dry_run });
    if !dry_run {
        cmd.run()?;
    }
    match (json.on(), dry_run) {
        (true, _) => json.print(&done)?,
        (false, true) => println!("would run: {cmdline}"),
        (false, false) => println!("started {}", units.join(", ")),
    }
    Ok(())
}

/// What `nxos topology` shows besides nodes and links.
#[derive(Clone, Copy)]
pub struct TopologyDetail {
    pub trust_scores: bool,
    pub routing_table: bool,
}

pub fn topology(source: &Source, detail: TopologyDetail, json: Json) -> Result<()> {
    let (view, routes) = match offline(source)? {
        Some(e) => (e.topology_view(), detail.routing_table.then(|| e.routing_table())),
        None => {
            let (_conn, proxy) = daemon(source)?;
            let routes = if detail.routing_table { Some(proxy.routing_table().map_err(remote_err)?) } else { None };
            (proxy.topology().map_err(remote_err)?, routes)
        }
    };
    if json.on() {
        let mut v = serde_json::to_value(&view)?;
        if let Some(r) = &routes {
            v["routing_table"] = serde_json::to_value(r)?;
        }
        return json.print(&v);
    }
    let local = if view.local.is_empty() { "(none)" } else { view.local.as_str() };
    println!("{} nodes, {} links, local node {local}", view.nodes.len(), view.links.len());
    for n in &view.nodes {
        let trust = if detail.trust_scores { format!("  trust {:.4}{}", n.trust, if n.blacklisted { " BLACKLISTED" } else { "" }) } else { String::new() };
        println!("  {:<20} {:<8} {:<9}{trust}", n.id, n.jurisdiction, n.attestation);
    }
    if let Some(routes) = routes {
        println!("routing table:");
        for r in routes {
            println!("  {:<20} via {:<20} cost {}", r.destination, r.next_hop, r.cost);
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
            daemon(source)?.1.route(from, to, intent.unwrap_or(""), k).map_err(remote_err)?.into()
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

/// A change the daemon made (or would make): its lines, or the reply as JSON.
pub fn print_change(change: &Change, json: Json) -> Result<()> {
    if json.on() {
        return json.print(change);
    }
    let verb = if change.dry_run { "would set" } else { "set" };
    for line in &change.summary {
        println!("{verb} {line}");
    }
    let dp = &change.data_plane;
    let data_plane = match (dp.pinned, change.dry_run) {
        (false, _) => "no data plane maps here".to_string(),
        (true, true) => format!("{} map write(s) onto version {}", dp.writes, dp.version),
        (true, false) if dp.writes == 0 => format!("data plane version {} already up to date", dp.version),
        (true, false) => format!("{} map write(s) as data plane version {}; {}", dp.writes, dp.version, dp.recorded),
    };
    println!("routes recomputed in {} us; {data_plane}", change.recompute_us);
    Ok(())
}

pub fn check_path(source: &Source, nodes: &[String], intent: Option<&str>, json: Json) -> Result<()> {
    let checked = match offline(source)? {
        Some(e) => e.check(nodes, intent)?,
        None => {
            let ids: Vec<&str> = nodes.iter().map(String::as_str).collect();
            daemon(source)?.1.check_path(&ids, intent.unwrap_or("")).map_err(remote_err)?
        }
    };
    if json.on() {
        return json.print(&checked);
    }
    let p = &checked.path;
    println!(
        "{}: {} hops, {:.3} ms, carbon {:.3}, min trust {:.3}, cost {}; {}",
        nodes.join(" -> "),
        p.hops,
        p.latency_ms,
        p.carbon,
        p.min_trust,
        p.cost,
        if checked.meets_constraints { "meets the constraints" } else { "does NOT meet the constraints" }
    );
    Ok(())
}

pub fn link(command: LinkCommand) -> Result<()> {
    let LinkCommand::Update { a, b, latency_ms, bandwidth_mbps, loss, carbon, down, up, out } = command;
    let ChangeArgs { dry_run, json, bus } = out;
    let source = Source { topology: None, policies: PathBuf::new(), bus };
    let (_conn, proxy) = daemon(&source)?;
    let state = match (up, down) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let change = LinkChange { latency_ms, bandwidth_mbps, loss, carbon, up: state };
    let done = proxy.link_update(&(a.as_str(), b.as_str()), &change, dry_run).map_err(remote_err)?;
    print_change(&done, json)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_flags_start_exactly_their_parts() {
        let p = |trust_routing, qlock_steering| Parts { trust_routing, qlock_steering, proof_forward: false };
        assert_eq!(units_of(p(false, false)).unwrap(), ["bpi-drx-data.service", "bpi-drx-control.service", "bpi-qlock.service"]);
        assert_eq!(units_of(p(true, false)).unwrap(), ["bpi-drx-data.service", "bpi-drx-control.service"]);
        assert_eq!(units_of(p(false, true)).unwrap(), ["bpi-qlock.service"]);
        assert_eq!(units_of(p(true, true)).unwrap(), units_of(p(false, false)).unwrap());
        let pof = Parts { proof_forward: true, ..p(true, true) };
        assert!(units_of(pof).unwrap_err().to_string().contains("issue 22"));
    }
}

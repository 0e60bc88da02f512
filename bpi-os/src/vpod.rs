//! `bpi-os nxos ports ...`: vPod ports (docs/vpod.md), over bpi-vpod.

use std::path::PathBuf;

use anyhow::Result;
use bpi_vpod::alloc::{Allocation, Allocator, Select, DEFAULT_DIR};
use bpi_vpod::{health, ranges, sockets};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::ledger::record;
use crate::output::Json;

#[derive(Args)]
pub struct PortsArgs {
    /// Where the allocations are kept (a directory on the data partition).
    #[arg(long, global = true, env = "BPI_VPOD_DIR", default_value = DEFAULT_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: PortsCommand,
}

#[derive(Subcommand)]
enum PortsCommand {
    /// Allocate a port in a range for a service (the one it holds there already, if any).
    Allocate {
        /// The range: core, vm-cluster, storage, security, network, monitoring, development, dynamic, special.
        #[arg(long)]
        range: String,
        /// Who holds the port (1 to 64 letters, digits, '.', '_', '-').
        #[arg(long)]
        service: String,
        /// Seconds until the allocation expires (none: until released).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
        /// Say which port it would get and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Release a port, or every port of a service.
    Release {
        /// The port to release.
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        port: Option<u16>,
        /// Release every port this service holds.
        #[arg(long)]
        service: Option<String>,
        /// Say what would be released and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// The allocations in force, and whether something listens on each port.
    List {
        #[command(flatten)]
        json: Json,
    },
    /// The ranges and how many of their ports are allocated.
    Ranges {
        #[command(flatten)]
        json: Json,
    },
    /// The seed's health score of the service on a port (HTTP, TCP, resources, security).
    Health {
        /// The port to check.
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        port: Option<u16>,
        /// Check every port this service holds.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        json: Json,
    },
}

fn now() -> u64 {
    crate::update::now()
}

fn record_change(action: &str, a: &Allocation) {
    record("vpod", action, &json!({"port": a.port, "range": a.range, "service": a.service, "expires_at": a.expires_at}));
}

fn record_expired(expired: &[Allocation]) {
    for a in expired {
        record_change("vpod-expired", a);
    }
}

pub fn run(args: PortsArgs) -> Result<()> {
    let alloc = Allocator::new(&args.state_dir);
    match args.command {
        PortsCommand::Allocate { range, service, ttl, dry_run, json } => {
            let listening = sockets::listeners();
            let got = alloc.allocate(&range, &service, ttl, now(), &|p| listening.contains_key(&p), dry_run)?;
            record_expired(&got.expired);
            if got.new && !dry_run {
                record_change("vpod-allocated", &got.allocation);
            }
            let a = &got.allocation;
            if json.on() {
                return json.print(&json!({"allocation": a, "new": got.new, "dry_run": dry_run}));
            }
            match (dry_run, got.new) {
                (true, true) => println!("would allocate port {} in range {} to {}; nothing was changed (--dry-run)", a.port, a.range, a.service),
                (_, false) => println!("{} holds port {} in range {} already", a.service, a.port, a.range),
                (false, true) => println!("allocated port {} in range {} to {}{}", a.port, a.range, a.service, a.expires_at.map(|e| format!(" until {e} (unix time)")).unwrap_or_default()),
            }
            Ok(())
        }
        PortsCommand::Release { port, service, dry_run, json } => {
            let sel = match (&port, &service) {
                (Some(p), _) => Select::Port(*p),
                (None, Some(s)) => Select::Service(s),
                (None, None) => unreachable!("clap requires one"),
            };
            let (released, expired) = alloc.release(sel, now(), dry_run)?;
            record_expired(&expired);
            if !dry_run {
                released.iter().for_each(|a| record_change("vpod-released", a));
            }
            if json.on() {
                return json.print(&json!({"released": if dry_run { Vec::new() } else { released.clone() }, "would_release": if dry_run { released } else { Vec::new() }}));
            }
            for a in &released {
                println!("{} port {} ({} in range {})", if dry_run { "would release" } else { "released" }, a.port, a.service, a.range);
            }
            if dry_run {
                println!("nothing was changed (--dry-run)");
            }
            Ok(())
        }
        PortsCommand::List { json } => {
            let (list, expired) = alloc.list(now())?;
            record_expired(&expired);
            let listening = sockets::listeners();
            let rows: Vec<_> = list.iter().map(|a| json!({"allocation": a, "listening": listening.contains_key(&a.port)})).collect();
            if json.on() {
                return json.print(&rows);
            }
            if list.is_empty() {
                println!("no vPod ports allocated");
            }
            for a in &list {
                let until = a.expires_at.map(|e| format!(", until {e}")).unwrap_or_default();
                println!("{:>5}  {:<12} {}{until}{}", a.port, a.range, a.service, if listening.contains_key(&a.port) { " (listening)" } else { "" });
            }
            Ok(())
        }
        PortsCommand::Ranges { json } => {
            let (list, _) = alloc.list(now())?;
            let rows: Vec<_> = ranges::RANGES
                .iter()
                .map(|r| json!({"name": r.name, "what": r.what, "ports": r.describe(), "size": r.size(), "allocated": list.iter().filter(|a| a.range == r.name).count()}))
                .collect();
            if json.on() {
                return json.print(&rows);
            }
            for (r, row) in ranges::RANGES.iter().zip(&rows) {
                println!("{:<12} {:<22} {:>4} ports, {} allocated  ({})", r.name, r.describe(), r.size(), row["allocated"], r.what);
            }
            Ok(())
        }
        PortsCommand::Health { port, service, json } => {
            let ports: Vec<u16> = match (port, &service) {
                (Some(p), _) => vec![p],
                (None, Some(s)) => {
                    let held: Vec<u16> = alloc.list(now())?.0.iter().filter(|a| &a.service == s).map(|a| a.port).collect();
                    anyhow::ensure!(!held.is_empty(), "service {s:?} holds no port");
                    held
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let listening = sockets::listeners();
            let checks: Vec<health::Health> = ports.iter().map(|p| health::check(*p, listening.get(p).and_then(|l| l.iter().find(|l| l.tcp)))).collect();
            if json.on() {
                return json.print(&checks);
            }
            for h in &checks {
                println!("port {}: {:?} (score {:.2}: http {:.1}, tcp {:.1}, resources {:.2}, security {:.1})", h.port, h.state, h.score, h.http, h.tcp, h.resources, h.security);
            }
            Ok(())
        }
    }
}

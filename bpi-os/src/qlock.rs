//! `bpi-os nxos identity|sessions|qlock`: QLock (docs/qlock.md), over
//! bpi-qlock. Queries and changes go to bpi-qlock.service over D-Bus.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_drx_control::{model::Topology, DEFAULT_TOPOLOGY};
use bpi_qlock::{
    identity::{Identity, IDENTITY_FILE},
    node::{Directory, Node, Options, TrustView},
    service::{self, QLock1ProxyBlocking, ServeOptions, TrustFeed},
    session::{SessionView, DEFAULT_DIR, DEFAULT_LIFETIME_S, DEFAULT_REKEY_S},
};
use clap::{Args, Subcommand};

use crate::output::{ChangeArgs, Json};

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// This node's QLock identity: node id, public keys, where the private keys are.
    Show {
        #[command(flatten)]
        json: Json,
        /// bpi-qlock's D-Bus address (default: the system bus).
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
    },
    /// The [[node]] lines that name this node in the other nodes' Meta-RIB.
    Export {
        /// This node's id in their Meta-RIB.
        #[arg(long)]
        name: String,
        /// Where they reach this node's QLock service (host:port).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: String,
        /// bpi-qlock's D-Bus address (default: the system bus).
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    /// Only live sessions.
    #[arg(long)]
    active: bool,
    /// Every field: node ids, epochs, key fingerprints, times.
    #[arg(long)]
    detailed: bool,
    #[command(flatten)]
    json: Json,
    /// bpi-qlock's D-Bus address (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    bus: Option<String>,
    #[command(subcommand)]
    command: Option<SessionsCommand>,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Open a session with a peer; refused when its trust is below the level.
    Open {
        /// The peer's node id in the Meta-RIB.
        #[arg(long)]
        peer: String,
        /// low (0.3), medium (0.5), high (0.7), critical (0.9), or a number from 0 to 1.
        #[arg(long)]
        trust_level: String,
        /// Seconds the session lasts (default 3600, the seed's session timeout; at most a week).
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LIFETIME_S, value_parser = clap::value_parser!(u32).range(1..=i64::from(bpi_qlock::handshake::MAX_LIFETIME_S)))]
        lifetime: u32,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// Move a session to its next key (both sides).
    Rekey {
        /// The session's id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        out: ChangeArgs,
    },
    /// End a session (both sides).
    Close {
        /// The session's id.
        #[arg(long)]
        id: String,
        /// Why, for both ledgers.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        out: ChangeArgs,
    },
}

#[derive(Subcommand)]
pub enum QlockCommand {
    /// Run the QLock daemon (bpi-qlock.service).
    Serve {
        /// The Meta-RIB: peers' identities and endpoints, and the trust used when the control plane is not running.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_TOPOLOGY)]
        topology: PathBuf,
        /// This node's id in the Meta-RIB (default: its [control] local).
        #[arg(long)]
        name: Option<String>,
        /// Where peers reach this node.
        #[arg(long, value_name = "ADDR:PORT", default_value = service::DEFAULT_LISTEN)]
        listen: String,
        /// The data partition: the identity goes to its encrypted store when mounted, else to its pq-crypto directory.
        #[arg(long, value_name = "DIR", default_value = "/bpi/data")]
        data_dir: PathBuf,
        /// Live sessions, one 0600 file each.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        sessions_dir: PathBuf,
        /// Seconds between the rekeys of the sessions this node opened (the seed's 900).
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_REKEY_S)]
        rekey_interval: u64,
        /// Members of this group may open, rekey and close sessions, as root may.
        #[arg(long)]
        admin_group: Option<String>,
        /// A D-Bus address instead of the system bus (tests): the daemon, the control plane and the ledger.
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
    },
}

fn remote_err(e: zbus::Error) -> anyhow::Error {
    crate::control::remote_error(e, "bpi-qlock")
}

fn daemon(bus: Option<&str>) -> Result<(zbus::blocking::Connection, QLock1ProxyBlocking<'static>)> {
    service::connect(bus).context("bpi-qlock.service is not on the bus: start it (`bpi-os nxos start --qlock-steering`)")
}

pub fn identity(command: IdentityCommand) -> Result<()> {
    match command {
        IdentityCommand::Show { json, bus } => {
            let (_c, p) = daemon(bus.as_deref())?;
            let id = p.identity().map_err(remote_err)?;
            if json.on() {
                return json.print(&id);
            }
            println!("node:       {} ({})", id.name, id.node_id);
            println!("keys:       Ed25519 + ML-DSA-65, private halves in {}", id.key_file);
            if !id.encrypted_store {
                println!("            NOT in the encrypted store (none is mounted): on the plain data partition");
            }
            println!("listening:  {}", id.listen);
            println!("trust from: {}", id.trust_source);
            println!("peers:      {}", if id.peers.is_empty() { "none with an identity in the Meta-RIB".into() } else { id.peers.join(", ") });
            println!("identity:   {}", id.public);
            Ok(())
        }
        IdentityCommand::Export { name, endpoint, bus } => {
            bpi_drx_control::model::check_node_id(&name).map_err(anyhow::Error::msg)?;
            let (_c, p) = daemon(bus.as_deref())?;
            let id = p.identity().map_err(remote_err)?;
            print!("{}", export_lines(&name, &endpoint, &id.public, &id.node_id));
            Ok(())
        }
    }
}

/// The TOML the other nodes add to their Meta-RIB (their loader checks it too).
fn export_lines(name: &str, endpoint: &str, public: &str, node_id: &str) -> String {
    format!("# QLock node id {node_id}\n[[node]]\nid = \"{name}\"\nidentity = \"{public}\"\nqlock = \"{endpoint}\"\n")
}

pub fn sessions(args: SessionsArgs) -> Result<()> {
    match args.command {
        None => list(args.active, args.detailed, args.json, args.bus.as_deref()),
        Some(SessionsCommand::Open { peer, trust_level, lifetime, out }) => {
            let (_c, p) = daemon(out.bus.as_deref())?;
            let s = p.open(&peer, &trust_level, lifetime, out.dry_run).map_err(remote_err)?;
            changed(&s, &out, if out.dry_run { "would open" } else { "opened" })
        }
        Some(SessionsCommand::Rekey { id, out }) => {
            let (_c, p) = daemon(out.bus.as_deref())?;
            let s = if out.dry_run { find(&p, &id)? } else { p.rekey(&id).map_err(remote_err)? };
            changed(&s, &out, if out.dry_run { "would rekey" } else { "rekeyed" })
        }
        Some(SessionsCommand::Close { id, reason, out }) => {
            let (_c, p) = daemon(out.bus.as_deref())?;
            let s = if out.dry_run { find(&p, &id)? } else { p.close(&id, &reason).map_err(remote_err)? };
            changed(&s, &out, if out.dry_run { "would close" } else { "closed" })
        }
    }
}

/// A live session, for dry runs.
fn find(p: &QLock1ProxyBlocking<'_>, id: &str) -> Result<SessionView> {
    p.sessions().map_err(remote_err)?.into_iter().find(|s| s.id == id && s.state == "active").with_context(|| format!("no live session {id}"))
}

fn changed(s: &SessionView, out: &ChangeArgs, verb: &str) -> Result<()> {
    if out.json.on() {
        return out.json.print(&serde_json::json!({ "dry_run": out.dry_run, "session": s }));
    }
    let id = if s.id.is_empty() { String::new() } else { format!(" {}", s.id) };
    println!("{verb} session{id} with {} at {} (epoch {}, key {})", s.peer, s.level, s.epoch, if s.fingerprint.is_empty() { "-" } else { &s.fingerprint });
    Ok(())
}

fn list(active: bool, detailed: bool, json: Json, bus: Option<&str>) -> Result<()> {
    let (_c, p) = daemon(bus)?;
    let all: Vec<SessionView> = p.sessions().map_err(remote_err)?.into_iter().filter(|s| !active || s.state == "active").collect();
    if json.on() {
        return json.print(&all);
    }
    if all.is_empty() {
        println!("no {}sessions", if active { "live " } else { "" });
    }
    for s in &all {
        println!("{} {:<8} {:<16} {:<9} {}", s.id, s.state, s.peer, s.role, s.level);
        if detailed {
            println!("    peer node id {}; epoch {}; key fingerprint {}", s.peer_node_id, s.epoch, s.fingerprint);
            println!("    created {}; expires {}{}", s.created, s.expires, if s.reason.is_empty() { String::new() } else { format!("; ended: {}", s.reason) });
        }
    }
    Ok(())
}

/// Whether the encrypted store itself is mounted at `<data>/encrypted`: its
/// own device, not any mount there (a unit's ReadWritePaths= makes the
/// plain directory a mount point in its namespace).
fn store_mounted(data: &Path) -> bool {
    let target = data.join("encrypted");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::status::find_mount(&mountinfo, &target.to_string_lossy())
        .is_some_and(|m| m.source == format!("/dev/mapper/{}", bpi_installer::store::MAPPER))
}

/// The node's identity: found in the store, else on the plain data partition; made where it belongs when there is none.
fn load_or_make_identity(data: &Path) -> Result<(Identity, PathBuf, bool, bool)> {
    let mounted = store_mounted(data);
    let store = service::identity_dir(true, data).join(IDENTITY_FILE);
    let plain = service::identity_dir(false, data).join(IDENTITY_FILE);
    for (path, in_store) in [(&store, true), (&plain, false)] {
        if (in_store && !mounted) || !path.exists() {
            continue;
        }
        return Ok((Identity::load(path)?, path.clone(), in_store, false));
    }
    let id = Identity::generate()?;
    let path = id.save(&service::identity_dir(mounted, data))?;
    Ok((id, path, mounted, true))
}

pub fn serve(command: QlockCommand) -> Result<()> {
    let QlockCommand::Serve { topology, name, listen, data_dir, sessions_dir, rekey_interval, admin_group, bus } = command;
    let t = Topology::load(&topology)?;
    // A Meta-RIB that names no local node still gets a running service: the host name stands.
    let name = match name.or_else(|| t.settings.local.clone()) {
        Some(n) => n,
        None => nix::unistd::gethostname().context("reading the host name")?.to_string_lossy().into_owned(),
    };
    bpi_drx_control::model::check_node_id(&name).map_err(|e| anyhow::anyhow!("this node's name: {e}; pass --name"))?;
    let (me, key_file, encrypted_store, created) = load_or_make_identity(&data_dir)?;
    let directory = Directory::from_topology(&t, me.public())?;
    let recorder = std::sync::Arc::new(bpi_ledger::service::LedgerRecorder::new(bus.clone()));
    let opts = Options { name, sessions_dir, rekey_s: rekey_interval, key_file, encrypted_store };
    let node = Node::new(me, opts, directory, TrustView::default(), recorder)?;
    service::serve(ServeOptions { node, feed: TrustFeed::new(bus.clone(), t), listen, admin_group, bus, identity_created: created })
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_lines_load_as_a_meta_rib_node() {
        let id = bpi_qlock::identity::Identity::from_seeds([7; 64]);
        let text = super::export_lines("edge-q", "10.0.2.2:7778", &id.public().to_base64(), &id.public().node_id());
        let t = bpi_drx_control::model::Topology::parse(&format!("{text}score = 0.9\n"), "export").unwrap();
        assert_eq!(t.nodes[0].identity.as_deref(), Some(id.public().to_base64().as_str()));
        assert_eq!(t.nodes[0].qlock.as_deref(), Some("10.0.2.2:7778"));
    }
}

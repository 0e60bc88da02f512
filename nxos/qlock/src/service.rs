//! bpi-qlock.service (`bpi-os nxos qlock serve`): the node's QLock sessions
//! on the system bus (org.bpi.os.QLock1) and on TCP. Queries are open;
//! opening, rekeying and closing are for root and the admin group, checked
//! here as well as by the bus policy. Its own service, not methods of the
//! control plane's: that one runs without a network, and this one listens.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bpi_drx_control::{engine::Engine, model::Topology, service::Control1ProxyBlocking};
use bpi_support::dbus::{block_stop_signals, serve_until_signal, Admins};
use serde::{Deserialize, Serialize};
use zbus::{fdo, interface, message::Header, zvariant::Type, Connection};

use crate::node::{Node, TrustView};
use crate::session::{parse_level, SessionView, DEFAULT_LIFETIME_S};

pub const BUS_NAME: &str = "org.bpi.os.QLock1";
pub const OBJECT_PATH: &str = "/org/bpi/os/QLock1";
/// Denied to everyone else by units/dbus/org.bpi.os.QLock1.conf (checked against this list by a test).
pub const ADMIN_METHODS: &[&str] = &["open", "rekey", "close"];
/// The seed's core range holds QLock: 7778.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7778";
/// Handshakes served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How often expiry, trust and rekeying are looked at.
pub const TICK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct IdentityView {
    pub name: String,
    pub node_id: String,
    /// base64 of the Ed25519 and ML-DSA-65 public keys, as the Meta-RIB's `identity`.
    pub public: String,
    pub key_file: String,
    /// Whether the private keys are in the encrypted store (else on the plain data partition).
    pub encrypted_store: bool,
    pub listen: String,
    /// "control plane" or "Meta-RIB file": where the trust comes from.
    pub trust_source: String,
    pub peers: Vec<String>,
}

struct QLockService {
    node: Arc<Node>,
    admins: Admins,
    listen: String,
}

fn invalid(e: anyhow::Error) -> fdo::Error {
    fdo::Error::InvalidArgs(format!("{e:#}"))
}

impl QLockService {
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&Node) -> Result<T> + Send + 'static) -> fdo::Result<T> {
        let node = self.node.clone();
        blocking::unblock(move || f(&node)).await.map_err(|e| {
            // The network's failures are not the caller's bad arguments.
            if e.chain().any(|c| c.is::<std::io::Error>() || c.is::<crate::handshake::Refusal>()) {
                fdo::Error::Failed(format!("{e:#}"))
            } else {
                invalid(e)
            }
        })
    }
}

#[interface(name = "org.bpi.os.QLock1")]
impl QLockService {
    #[zbus(name = "ping")]
    fn ping(&self) -> String {
        "pong".into()
    }

    #[zbus(name = "identity")]
    fn identity(&self) -> IdentityView {
        let n = &self.node;
        IdentityView {
            name: n.opts.name.clone(),
            node_id: n.me.public().node_id(),
            public: n.me.public().to_base64(),
            key_file: n.opts.key_file.display().to_string(),
            encrypted_store: n.opts.encrypted_store,
            listen: self.listen.clone(),
            trust_source: n.trust.lock().map(|t| t.source.clone()).unwrap_or_default(),
            peers: n.directory.lock().map(|d| d.by_name.keys().cloned().collect()).unwrap_or_default(),
        }
    }

    /// Live sessions, then the last ended ones.
    #[zbus(name = "sessions")]
    fn sessions(&self) -> Vec<SessionView> {
        self.node.sessions()
    }

    /// Opens a session with `peer` at trust `level` (a name or a number);
    /// `lifetime_s` 0 for the default. A dry run checks peer and trust only.
    #[zbus(name = "open")]
    async fn open(
        &self,
        peer: String,
        level: String,
        lifetime_s: u32,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<SessionView> {
        self.admins.require(&header, conn, "opening sessions").await?;
        let lvl = parse_level(&level).map_err(invalid)?;
        let lifetime = if lifetime_s == 0 { DEFAULT_LIFETIME_S } else { lifetime_s };
        if lifetime > crate::handshake::MAX_LIFETIME_S {
            return Err(fdo::Error::InvalidArgs(format!("lifetime {lifetime} s: at most {} s (a week)", crate::handshake::MAX_LIFETIME_S)));
        }
        self.run(move |n| {
            if dry_run {
                let p = n.plan_open(&peer, lvl)?;
                return Ok(SessionView {
                    peer: p.name,
                    peer_node_id: p.identity.node_id(),
                    role: "opener".into(),
                    level: crate::session::level_name(lvl),
                    state: "planned".into(),
                    expires: u64::from(lifetime),
                    ..Default::default()
                });
            }
            n.open(&peer, lvl, lifetime)
        })
        .await
    }

    #[zbus(name = "rekey")]
    async fn rekey(&self, id: String, #[zbus(header)] header: Header<'_>, #[zbus(connection)] conn: &Connection) -> fdo::Result<SessionView> {
        self.admins.require(&header, conn, "rekeying sessions").await?;
        self.run(move |n| n.rekey(&id)).await
    }

    #[zbus(name = "close")]
    async fn close(&self, id: String, reason: String, #[zbus(header)] header: Header<'_>, #[zbus(connection)] conn: &Connection) -> fdo::Result<SessionView> {
        let who = self.admins.require(&header, conn, "closing sessions").await?;
        let reason = if reason.is_empty() { format!("closed by {}", who.user) } else { reason };
        self.run(move |n| n.close(&id, &reason)).await
    }
}

#[zbus::proxy(interface = "org.bpi.os.QLock1", default_service = "org.bpi.os.QLock1", default_path = "/org/bpi/os/QLock1")]
pub trait QLock1 {
    #[zbus(name = "ping")]
    fn ping(&self) -> zbus::Result<String>;
    #[zbus(name = "identity")]
    fn identity(&self) -> zbus::Result<IdentityView>;
    #[zbus(name = "sessions")]
    fn sessions(&self) -> zbus::Result<Vec<SessionView>>;
    #[zbus(name = "open")]
    fn open(&self, peer: &str, level: &str, lifetime_s: u32, dry_run: bool) -> zbus::Result<SessionView>;
    #[zbus(name = "rekey")]
    fn rekey(&self, id: &str) -> zbus::Result<SessionView>;
    #[zbus(name = "close")]
    fn close(&self, id: &str, reason: &str) -> zbus::Result<SessionView>;
}

/// A proxy to the running daemon; None when it is not on the bus.
pub fn connect(bus: Option<&str>) -> Option<(zbus::blocking::Connection, QLock1ProxyBlocking<'static>)> {
    let conn = bpi_support::dbus::connect(bus).ok()?;
    let proxy = QLock1ProxyBlocking::new(&conn).ok()?;
    proxy.ping().ok()?;
    Some((conn, proxy))
}

/// Where trust comes from: the control plane over the bus (one connection,
/// kept, made again after a failure; read again only when its change count
/// moved), else the Meta-RIB file's own scores.
pub struct TrustFeed {
    bus: Option<String>,
    file: Topology,
    control: Option<(zbus::blocking::Connection, Control1ProxyBlocking<'static>)>,
    seen_changes: Option<u64>,
    on_file: bool,
}

impl TrustFeed {
    pub fn new(bus: Option<String>, file: Topology) -> TrustFeed {
        TrustFeed { bus, file, control: None, seen_changes: None, on_file: false }
    }

    fn file_view(&self) -> TrustView {
        let view = Engine::new(self.file.clone(), BTreeMap::new(), None).topology_view();
        TrustView { source: "Meta-RIB file".into(), scores: view.nodes.into_iter().map(|n| (n.id, n.trust)).collect() }
    }

    /// The current view, or None when nothing changed since the last call.
    pub fn poll(&mut self) -> Option<TrustView> {
        if self.control.is_none() {
            self.control = bpi_drx_control::service::connect(self.bus.as_deref());
            self.seen_changes = None;
        }
        if let Some((_, p)) = &self.control {
            let read = (|| -> zbus::Result<Option<(u64, TrustView)>> {
                let changes = p.changes()?;
                if self.seen_changes == Some(changes) {
                    return Ok(None);
                }
                let scores = p.topology()?.nodes.into_iter().map(|n| (n.id, n.trust)).collect();
                Ok(Some((changes, TrustView { source: "control plane".into(), scores })))
            })();
            match read {
                Ok(None) => return None,
                Ok(Some((changes, view))) => {
                    self.seen_changes = Some(changes);
                    self.on_file = false;
                    return Some(view);
                }
                Err(_) => self.control = None,
            }
        }
        if self.on_file {
            return None;
        }
        self.on_file = true;
        Some(self.file_view())
    }
}

pub struct ServeOptions {
    pub node: Node,
    pub feed: TrustFeed,
    pub listen: String,
    pub admin_group: Option<String>,
    pub bus: Option<String>,
    pub identity_created: bool,
}

/// Serves until SIGTERM or SIGINT: TCP for peers, the bus for the CLI, a tick for expiry, trust and rekeying.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let signals = block_stop_signals()?;
    let admins = Admins::from_group(opts.admin_group.as_deref())?;
    let listener = TcpListener::bind(&opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or(opts.listen.clone());
    let node = Arc::new(opts.node);
    let note = |s: &str| bpi_support::progress::note(&format!("qlock: {s}"));
    if opts.identity_created {
        note(&format!("made the node's identity: {}", node.record_identity_created()));
    }
    let store = if node.opts.encrypted_store { "in the encrypted store" } else { "NOT in an encrypted store (none is mounted): on the plain data partition" };
    note(&format!("node {} ({}), keys {store} at {}", node.opts.name, node.me.public().node_id(), node.opts.key_file.display()));
    spawn_listener(node.clone(), listener);
    {
        let (node, mut feed) = (node.clone(), opts.feed);
        if let Some(v) = feed.poll() {
            *node.trust.lock().unwrap_or_else(|p| p.into_inner()) = v;
        }
        std::thread::spawn(move || loop {
            std::thread::sleep(TICK);
            if let Some(v) = feed.poll() {
                *node.trust.lock().unwrap_or_else(|p| p.into_inner()) = v;
            }
            node.tick();
        });
    }
    let status = format!("node {} listening on {listen}", node.opts.name);
    note(&status);
    let service = QLockService { node, admins, listen };
    let sig = serve_until_signal(signals, opts.bus.as_deref(), BUS_NAME, OBJECT_PATH, service, &status)?;
    note(&format!("{sig:?}: stopping"));
    Ok(())
}

/// Serves peers on `listener`, a thread per connection (at most
/// MAX_CONNECTIONS at once; more are closed unanswered).
pub fn spawn_listener(node: Arc<Node>, listener: TcpListener) {
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if busy.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                continue;
            }
            busy.fetch_add(1, Ordering::SeqCst);
            let (node, busy) = (node.clone(), busy.clone());
            std::thread::spawn(move || {
                node.serve_connection(conn);
                busy.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// Where the identity's private file goes: the encrypted store when it is mounted, else the plain data partition.
pub fn identity_dir(store_mounted: bool, data: &std::path::Path) -> PathBuf {
    if store_mounted {
        data.join("encrypted/pq-crypto")
    } else {
        data.join("pq-crypto")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/qlock.md names each reply's D-Bus signature: they must be these.
    #[test]
    fn the_documented_signatures_are_the_real_ones() {
        let doc = include_str!("../../../docs/qlock.md");
        for (name, sig) in [("IdentityView", IdentityView::SIGNATURE.to_string()), ("SessionView", SessionView::SIGNATURE.to_string())] {
            assert!(doc.contains(&format!("`{name} {sig}`")), "docs/qlock.md does not give {name} as {sig}");
        }
    }
}

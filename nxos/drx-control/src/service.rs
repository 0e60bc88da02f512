//! The control plane on the system bus (`bpi-os nxos control serve`,
//! org.bpi.os.Control1). Queries are open; changes are for root or the
//! admin group, checked here as well as by the bus policy.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use bpi_support::dbus::{block_stop_signals, serve_until_signal, Admins};
use zbus::{fdo, interface, message::Header, Connection};

use crate::engine::Engine;

pub const BUS_NAME: &str = "org.bpi.os.Control1";
pub const OBJECT_PATH: &str = "/org/bpi/os/Control1";
/// The methods that change state: root and the admin group only, denied to
/// everyone else by the bus policy (units/dbus/org.bpi.os.Control1.conf,
/// checked against this list by a test) and refused again by the service.
pub const ADMIN_METHODS: &[&str] = &["trust_update", "link_update"];

pub struct ControlService {
    engine: Arc<Mutex<Engine>>,
    admins: Admins,
}

fn invalid(e: anyhow::Error) -> fdo::Error {
    fdo::Error::InvalidArgs(format!("{e:#}"))
}

fn locked(engine: &Mutex<Engine>) -> fdo::Result<std::sync::MutexGuard<'_, Engine>> {
    engine.lock().map_err(|_| fdo::Error::Failed("the engine's lock is poisoned".into()))
}

impl ControlService {
    fn engine(&self) -> fdo::Result<std::sync::MutexGuard<'_, Engine>> {
        locked(&self.engine)
    }

    /// Runs a change on a thread of its own: it writes the data plane's maps
    /// and records in the ledger over D-Bus, which must not block the
    /// executor that serves this connection.
    async fn change(&self, f: impl FnOnce(&mut Engine) -> anyhow::Result<crate::engine::Change> + Send + 'static) -> fdo::Result<String> {
        let engine = self.engine.clone();
        let change = blocking::unblock(move || locked(&engine).and_then(|mut e| f(&mut e).map_err(invalid))).await?;
        serde_json::to_string(&change).map_err(|e| fdo::Error::Failed(e.to_string()))
    }
}

#[interface(name = "org.bpi.os.Control1")]
impl ControlService {
    #[zbus(name = "ping")]
    fn ping(&self) -> String {
        "pong".into()
    }

    /// Nodes and links as JSON, with trust scores and the routing table if asked.
    #[zbus(name = "topology")]
    fn topology(&self, trust_scores: bool, routing_table: bool) -> fdo::Result<String> {
        Ok(self.engine()?.topology_json(trust_scores, routing_table).to_string())
    }

    /// Best path and backups (JSON); intent "" for none, backups < 0 for the default.
    #[zbus(name = "route")]
    fn route(&self, from: String, to: String, intent: String, backups: i32) -> fdo::Result<String> {
        let intent = (!intent.is_empty()).then_some(intent.as_str());
        let k = usize::try_from(backups).ok();
        let answer = self.engine()?.route(&from, &to, intent, k).map_err(invalid)?;
        serde_json::to_string(&answer).map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// A hand-given path (node ids) checked: figures and whether it meets the intent.
    #[zbus(name = "check_path")]
    fn check_path(&self, nodes: Vec<String>, intent: String) -> fdo::Result<String> {
        let intent = (!intent.is_empty()).then_some(intent.as_str());
        Ok(self.engine()?.check(&nodes, intent).map_err(invalid)?.to_string())
    }

    #[zbus(name = "metrics")]
    fn metrics(&self) -> fdo::Result<String> {
        serde_json::to_string(&self.engine()?.metrics).map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    #[zbus(name = "trust_update")]
    async fn trust_update(&self, node: String, score: f64, #[zbus(header)] header: Header<'_>, #[zbus(connection)] conn: &Connection) -> fdo::Result<String> {
        self.admins.require(&header, conn, "changing trust").await?;
        self.change(move |e| e.trust_update(&node, score)).await
    }

    #[allow(clippy::too_many_arguments)]
    #[zbus(name = "link_update")]
    async fn link_update(
        &self,
        a: String,
        b: String,
        latency_ms: f64,
        bandwidth_mbps: f64,
        loss: f64,
        carbon: f64,
        up: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        self.admins.require(&header, conn, "changing links").await?;
        self.change(move |e| e.link_update(&a, &b, latency_ms, bandwidth_mbps, loss, carbon, up)).await
    }
}

#[zbus::proxy(interface = "org.bpi.os.Control1", default_service = "org.bpi.os.Control1", default_path = "/org/bpi/os/Control1")]
pub trait Control1 {
    #[zbus(name = "ping")]
    fn ping(&self) -> zbus::Result<String>;
    #[zbus(name = "topology")]
    fn topology(&self, trust_scores: bool, routing_table: bool) -> zbus::Result<String>;
    #[zbus(name = "route")]
    fn route(&self, from: &str, to: &str, intent: &str, backups: i32) -> zbus::Result<String>;
    #[zbus(name = "metrics")]
    fn metrics(&self) -> zbus::Result<String>;
    #[zbus(name = "check_path")]
    fn check_path(&self, nodes: &[&str], intent: &str) -> zbus::Result<String>;
    #[zbus(name = "trust_update")]
    fn trust_update(&self, node: &str, score: f64) -> zbus::Result<String>;
    #[allow(clippy::too_many_arguments)]
    #[zbus(name = "link_update")]
    fn link_update(&self, a: &str, b: &str, latency_ms: f64, bandwidth_mbps: f64, loss: f64, carbon: f64, up: bool) -> zbus::Result<String>;
}

pub struct ServeOptions {
    pub engine: Engine,
    pub admin_group: Option<String>,
    pub bus: Option<String>,
    /// Where the daemon's changes to the data plane are recorded.
    pub recorder: std::sync::Arc<dyn bpi_support::record::Recorder>,
}

/// Serves until SIGTERM or SIGINT; writes the data plane's maps first.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let signals = block_stop_signals()?;
    let admins = Admins::from_group(opts.admin_group.as_deref())?;
    let mut engine = opts.engine;
    engine.record_with(opts.recorder);
    // Loading a large Meta-RIB leaves the parser's freed memory resident.
    bpi_support::host::release_free_heap();
    let note = |s: &str| bpi_support::progress::note(&format!("drx-control: {s}"));
    match engine.sync_data_plane()? {
        Some(outcome) => note(&outcome),
        None => note("the data plane's maps are not pinned; scores go there once bpi-drx-data.service runs and the next change comes"),
    }
    let status = format!("{} nodes, {} links, {} intents", engine.graph.len(), engine.graph.target.len() / 2, engine.intents.len());
    note(&status);
    let service = ControlService { engine: Arc::new(Mutex::new(engine)), admins };
    let sig = serve_until_signal(signals, opts.bus.as_deref(), BUS_NAME, OBJECT_PATH, service, &status)?;
    note(&format!("{sig:?}: stopping"));
    Ok(())
}

/// A proxy to the running daemon; None when it is not on the bus.
pub fn connect(bus: Option<&str>) -> Option<(zbus::blocking::Connection, Control1ProxyBlocking<'static>)> {
    let conn = match bus {
        Some(a) => zbus::blocking::connection::Builder::address(a).ok()?.build().ok()?,
        None => zbus::blocking::Connection::system().ok()?,
    };
    let proxy = Control1ProxyBlocking::new(&conn).ok()?;
    proxy.ping().ok()?;
    Some((conn, proxy))
}

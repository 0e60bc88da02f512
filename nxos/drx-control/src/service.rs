//! The control plane on the system bus (`bpi-os nxos control serve`,
//! org.bpi.os.Control1). Queries are open; changes are for root or the
//! admin group, checked here as well as by the bus policy.

use std::sync::{Arc, RwLock};

use anyhow::Result;
use bpi_support::dbus::{block_stop_signals, serve_until_signal, Admins};
use bpi_drx_data::plan::Op;
use zbus::{fdo, interface, message::Header, object_server::SignalEmitter, Connection};

use crate::{
    engine::{Engine, Metrics, Run},
    wire::{Change, DataPlaneOp, LinkChange, PathCheck, RouteReply, RouteView, TopologyView},
};

pub const BUS_NAME: &str = "org.bpi.os.Control1";
pub const OBJECT_PATH: &str = "/org/bpi/os/Control1";
/// The methods that change state: root and the admin group only, denied to
/// everyone else by the bus policy (units/dbus/org.bpi.os.Control1.conf,
/// checked against this list by a test) and refused again by the service.
pub const ADMIN_METHODS: &[&str] = &["trust_update", "link_update", "data_plane_update"];

/// Queries share the engine (read lock), changes have it alone (write lock;
/// std's lock lets a waiting writer in before new readers, so a flood of open
/// queries cannot starve an admin's change). Both run on blocking threads:
/// the executor that serves the connection only dispatches.
pub struct ControlService {
    engine: Arc<RwLock<Engine>>,
    admins: Admins,
}

fn invalid(e: anyhow::Error) -> fdo::Error {
    fdo::Error::InvalidArgs(format!("{e:#}"))
}

fn poisoned<T>(_: T) -> fdo::Error {
    fdo::Error::Failed("the engine's lock is poisoned".into())
}

fn run_of(dry_run: bool) -> Run {
    if dry_run {
        Run::DryRun
    } else {
        Run::Apply
    }
}

impl ControlService {
    /// Runs a query on a thread of its own, sharing the engine with other queries.
    async fn query<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> fdo::Result<T> + Send + 'static) -> fdo::Result<T> {
        let engine = self.engine.clone();
        blocking::unblock(move || f(&*engine.read().map_err(poisoned)?)).await
    }

    /// Runs a change on a thread of its own (it writes the data plane's maps
    /// and records in the ledger over D-Bus, which must not block the executor
    /// that serves this connection), then tells watchers what changed.
    async fn change(&self, emitter: &SignalEmitter<'_>, f: impl FnOnce(&mut Engine) -> anyhow::Result<Change> + Send + 'static) -> fdo::Result<Change> {
        let engine = self.engine.clone();
        let change = blocking::unblock(move || f(&mut *engine.write().map_err(poisoned)?).map_err(invalid)).await?;
        if !change.dry_run {
            // A watcher that missed these reads the properties again: not worth failing the change.
            let _ = self.changes_changed(emitter).await;
            let _ = self.data_plane_version_changed(emitter).await;
        }
        Ok(change)
    }
}

#[interface(name = "org.bpi.os.Control1")]
impl ControlService {
    #[zbus(name = "ping")]
    fn ping(&self) -> String {
        "pong".into()
    }

    /// Nodes, with their trust, and links.
    #[zbus(name = "topology")]
    async fn topology(&self) -> fdo::Result<TopologyView> {
        self.query(|e| Ok(e.topology_view())).await
    }

    /// The routing table from the local node.
    #[zbus(name = "routing_table")]
    async fn routing_table(&self) -> fdo::Result<Vec<RouteView>> {
        self.query(|e| Ok(e.routing_table())).await
    }

    /// Best path and backups; intent "" for none, backups < 0 for the default.
    #[zbus(name = "route")]
    async fn route(&self, from: String, to: String, intent: String, backups: i32) -> fdo::Result<RouteReply> {
        let k = usize::try_from(backups).ok();
        self.query(move |e| {
            let intent = (!intent.is_empty()).then_some(intent.as_str());
            Ok(e.route(&from, &to, intent, k).map_err(invalid)?.into())
        })
        .await
    }

    /// A hand-given path (node ids) checked: figures and whether it meets the intent.
    #[zbus(name = "check_path")]
    async fn check_path(&self, nodes: Vec<String>, intent: String) -> fdo::Result<PathCheck> {
        self.query(move |e| {
            let intent = (!intent.is_empty()).then_some(intent.as_str());
            e.check(&nodes, intent).map_err(invalid)
        })
        .await
    }

    #[zbus(name = "metrics")]
    async fn metrics(&self) -> fdo::Result<Metrics> {
        self.query(|e| Ok(e.metrics.clone())).await
    }

    /// Changes made since the daemon started; a watcher waits for its PropertiesChanged.
    #[zbus(property, name = "Changes")]
    async fn changes(&self) -> fdo::Result<u64> {
        self.query(|e| Ok(e.metrics.changes)).await
    }

    /// The data plane's version as last written or read (0 with no maps).
    #[zbus(property, name = "DataPlaneVersion")]
    async fn data_plane_version(&self) -> fdo::Result<u64> {
        self.query(|e| Ok(e.metrics.data_plane_version)).await
    }

    /// Sets nodes' trust (names, or data-plane numbers) as one batch.
    #[zbus(name = "trust_update")]
    async fn trust_update(
        &self,
        updates: Vec<(String, f64)>,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<Change> {
        self.admins.require(&header, conn, "changing trust").await?;
        self.change(&emitter, move |e| e.trust_update(&updates, run_of(dry_run))).await
    }

    /// Changes the link between two nodes; keys of `change` (a{sv}):
    /// latency_ms, bandwidth_mbps, loss, carbon, up.
    #[zbus(name = "link_update")]
    async fn link_update(
        &self,
        ends: (String, String),
        change: LinkChange,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<Change> {
        self.admins.require(&header, conn, "changing links").await?;
        self.change(&emitter, move |e| e.link_update(&ends.0, &ends.1, &change, run_of(dry_run))).await
    }

    /// Data-plane operations by hand (map, unmap, remove, scores, settings), as one batch.
    #[zbus(name = "data_plane_update")]
    async fn data_plane_update(
        &self,
        ops: Vec<DataPlaneOp>,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<Change> {
        self.admins.require(&header, conn, "changing the data plane").await?;
        let ops = ops.iter().map(Op::try_from).collect::<anyhow::Result<Vec<_>>>().map_err(invalid)?;
        self.change(&emitter, move |e| e.data_plane_update(&ops, run_of(dry_run))).await
    }
}

#[zbus::proxy(interface = "org.bpi.os.Control1", default_service = "org.bpi.os.Control1", default_path = "/org/bpi/os/Control1")]
pub trait Control1 {
    #[zbus(name = "ping")]
    fn ping(&self) -> zbus::Result<String>;
    #[zbus(name = "topology")]
    fn topology(&self) -> zbus::Result<TopologyView>;
    #[zbus(name = "routing_table")]
    fn routing_table(&self) -> zbus::Result<Vec<RouteView>>;
    #[zbus(name = "route")]
    fn route(&self, from: &str, to: &str, intent: &str, backups: i32) -> zbus::Result<RouteReply>;
    #[zbus(name = "metrics")]
    fn metrics(&self) -> zbus::Result<Metrics>;
    #[zbus(name = "check_path")]
    fn check_path(&self, nodes: &[&str], intent: &str) -> zbus::Result<PathCheck>;
    #[zbus(name = "trust_update")]
    fn trust_update(&self, updates: &[(&str, f64)], dry_run: bool) -> zbus::Result<Change>;
    #[zbus(name = "link_update")]
    fn link_update(&self, ends: &(&str, &str), change: &LinkChange, dry_run: bool) -> zbus::Result<Change>;
    #[zbus(name = "data_plane_update")]
    fn data_plane_update(&self, ops: &[DataPlaneOp], dry_run: bool) -> zbus::Result<Change>;
    #[zbus(property, name = "Changes")]
    fn changes(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "DataPlaneVersion")]
    fn data_plane_version(&self) -> zbus::Result<u64>;
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
    let outcome = engine.sync_data_plane()?;
    match (outcome.pinned, outcome.writes) {
        (false, _) => note("the data plane's maps are not pinned; scores go there once bpi-drx-data.service runs and the next change comes"),
        (true, 0) => note(&format!("data plane version {}: already up to date", outcome.version)),
        (true, n) => note(&format!("data plane version {}: {n} change(s); {}", outcome.version, outcome.recorded)),
    }
    let status = format!("{} nodes, {} links, {} intents", engine.graph.len(), engine.graph.target.len() / 2, engine.intents.len());
    note(&status);
    let service = ControlService { engine: Arc::new(RwLock::new(engine)), admins };
    let sig = serve_until_signal(signals, opts.bus.as_deref(), BUS_NAME, OBJECT_PATH, service, &status)?;
    note(&format!("{sig:?}: stopping"));
    Ok(())
}

/// A proxy to the running daemon; None when it is not on the bus.
pub fn connect(bus: Option<&str>) -> Option<(zbus::blocking::Connection, Control1ProxyBlocking<'static>)> {
    let conn = bpi_support::dbus::connect(bus).ok()?;
    let proxy = Control1ProxyBlocking::new(&conn).ok()?;
    proxy.ping().ok()?;
    Some((conn, proxy))
}

//! The ledger on the system bus (`bpi-os ledger serve`): the seed's verbs
//! (section 4.2) plus append, proofs and checkpoints. Queries are open to
//! everyone the bus policy lets through; append and checkpoint are for root or
//! the admin group, checked here as well as by the policy file
//! (units/dbus/org.bpi.os.Ledger1.conf), so a loose policy is not enough.

use std::sync::Arc;

use zbus::message::Header;
use zbus::{fdo, interface, object_server::SignalEmitter, Connection};

use bpi_support::dbus::Admins;
use bpi_support::record::Recorder;

use crate::block::Draft;
use crate::commit::Ledger;
use crate::error::LedgerError;
use crate::plugins::Plugins;
use crate::store::{self, StoreOptions};
use crate::wire::{BlockView, ConsistencyView, InclusionView, ReportView, StatsView};
use crate::{proof, verify};

pub const BUS_NAME: &str = "org.bpi.os.Ledger1";
pub const OBJECT_PATH: &str = "/org/bpi/os/Ledger1";
/// The methods that change state: root and the admin group only, denied to
/// everyone else by the bus policy (units/dbus/org.bpi.os.Ledger1.conf,
/// checked against this list by a test) and refused again by the service.
pub const ADMIN_METHODS: &[&str] = &["append", "checkpoint"];
/// The most blocks one query answer carries; page with height ranges.
pub const MAX_BLOCKS_PER_ANSWER: usize = 10_000;
/// The most bytes of blocks one answer carries: well under the system bus's
/// 32 MiB message limit, past which dbus-daemon drops the sender (here, the
/// ledger) from the bus. An answer that stops short ends at a whole block;
/// the caller asks again from the next height.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

pub struct LedgerService {
    ledger: Arc<Ledger>,
    plugins: Arc<Plugins>,
    admins: Admins,
    /// One verification at a time: each reads the whole log into memory, and
    /// eight at once took the daemon past a gigabyte.
    verifying: Arc<std::sync::Mutex<()>>,
}

fn failed(e: LedgerError) -> fdo::Error {
    let msg = e.full();
    match e {
        LedgerError::BadData(_) | LedgerError::UnknownCategory { .. } | LedgerError::NotFound(_) => {
            fdo::Error::InvalidArgs(msg)
        }
        _ => fdo::Error::Failed(msg),
    }
}

fn blocks(ledger: &Ledger, heights: impl IntoIterator<Item = u64>) -> fdo::Result<Vec<BlockView>> {
    let store = ledger.store();
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for h in heights.into_iter().take(MAX_BLOCKS_PER_ANSWER) {
        let b = BlockView::from(&store.log().block(h).map_err(failed)?);
        bytes += b.wire_size();
        if bytes > MAX_ANSWER_BYTES && !out.is_empty() {
            break;
        }
        out.push(b);
    }
    Ok(out)
}

#[interface(name = "org.bpi.os.Ledger1")]
impl LedgerService {
    #[zbus(name = "ping")]
    fn ping(&self) -> String {
        "pong".into()
    }

    #[zbus(name = "get_blocks_by_category")]
    async fn get_blocks_by_category(&self, category: String) -> fdo::Result<Vec<BlockView>> {
        let ledger = self.ledger.clone();
        blocking::unblock(move || {
            let heights = ledger.store().log().heights_in_category(&category);
            blocks(&ledger, heights)
        })
        .await
    }

    /// Blocks `from..=to` (heights start at 1).
    #[zbus(name = "get_blocks_by_height")]
    async fn get_blocks_by_height(&self, from: u64, to: u64) -> fdo::Result<Vec<BlockView>> {
        let ledger = self.ledger.clone();
        blocking::unblock(move || {
            let len = ledger.store().log().len();
            blocks(&ledger, from.max(1)..=to.min(len))
        })
        .await
    }

    /// The full verification report, as `bpi-os ledger verify --json`.
    #[zbus(name = "verify_blockchain_integrity")]
    async fn verify_blockchain_integrity(&self) -> fdo::Result<ReportView> {
        let (dir, witness) = {
            let store = self.ledger.store();
            (store.dir().to_path_buf(), store.witness())
        };
        let gate = self.verifying.clone();
        let report = blocking::unblock(move || {
            let _one = gate.lock().unwrap_or_else(|p| p.into_inner());
            verify::verify(&dir, None, Some(&witness))
        })
        .await
        .map_err(failed)?;
        Ok(report.into())
    }

    #[zbus(name = "get_stats")]
    fn get_stats(&self) -> StatsView {
        self.ledger.store().log().stats().into()
    }

    /// The newest block's height (0: none yet); a watcher waits for its
    /// PropertiesChanged instead of polling.
    #[zbus(property, name = "Height")]
    fn height(&self) -> u64 {
        self.ledger.store().log().len()
    }

    /// Records one operation; returns its height and hash once it is durable.
    #[zbus(name = "append")]
    async fn append(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        category: String,
        action: String,
        data: String,
    ) -> fdo::Result<(u64, String)> {
        let caller = self.admins.require(&header, conn, "appending to the ledger").await?;
        let records = self.plugins.prepare(&category, &data).map_err(failed)?;
        let ledger = self.ledger.clone();
        let appended = blocking::unblock(move || {
            let mut last = None;
            for (producer, data) in records {
                let mut d = Draft::new(&producer, &category, &action, &caller.user, data);
                d.pid = caller.pid;
                last = Some(ledger.append(d).map_err(failed)?);
            }
            let r = last.expect("a plugin returns at least one record");
            Ok::<_, fdo::Error>((r.height, hex::encode(r.hash)))
        })
        .await?;
        // The block is durable; a watcher that misses the signal reads Height again.
        let _ = self.height_changed(&emitter).await;
        Ok(appended)
    }

    /// RFC 9162 inclusion proof of block `height` in the tree of `tree_size`
    /// blocks (0: the current size).
    #[zbus(name = "inclusion_proof")]
    fn inclusion_proof(&self, height: u64, tree_size: u64) -> fdo::Result<InclusionView> {
        let store = self.ledger.store();
        Ok(proof::inclusion(store.log(), height, (tree_size > 0).then_some(tree_size)).map_err(failed)?.into())
    }

    /// RFC 9162 consistency proof from `old_size` to `new_size` (0: current).
    #[zbus(name = "consistency_proof")]
    fn consistency_proof(&self, old_size: u64, new_size: u64) -> fdo::Result<ConsistencyView> {
        let store = self.ledger.store();
        Ok(proof::consistency(store.log(), old_size, (new_size > 0).then_some(new_size)).map_err(failed)?.into())
    }

    /// Signs a checkpoint of the current size now; returns the signed note.
    #[zbus(name = "checkpoint")]
    async fn checkpoint(&self, #[zbus(header)] header: Header<'_>, #[zbus(connection)] conn: &Connection) -> fdo::Result<String> {
        self.admins.require(&header, conn, "signing a checkpoint").await?;
        let ledger = self.ledger.clone();
        blocking::unblock(move || ledger.store().checkpoint()).await.map_err(failed)
    }

    /// The verifier key auditors check checkpoints with.
    #[zbus(name = "verifier_key")]
    fn verifier_key(&self) -> String {
        self.ledger.store().verifier().to_vkey()
    }
}

/// Client side, for `bpi-os ledger append` when the service owns the store.
#[zbus::proxy(interface = "org.bpi.os.Ledger1", default_service = "org.bpi.os.Ledger1", default_path = "/org/bpi/os/Ledger1")]
pub trait Ledger1 {
    #[zbus(name = "ping")]
    fn ping(&self) -> zbus::Result<String>;
    #[zbus(name = "append")]
    fn append(&self, category: &str, action: &str, data: &str) -> zbus::Result<(u64, String)>;
    #[zbus(name = "get_stats")]
    fn get_stats(&self) -> zbus::Result<StatsView>;
    #[zbus(name = "get_blocks_by_category")]
    fn get_blocks_by_category(&self, category: &str) -> zbus::Result<Vec<BlockView>>;
    #[zbus(name = "get_blocks_by_height")]
    fn get_blocks_by_height(&self, from: u64, to: u64) -> zbus::Result<Vec<BlockView>>;
    #[zbus(name = "verify_blockchain_integrity")]
    fn verify_blockchain_integrity(&self) -> zbus::Result<ReportView>;
    #[zbus(name = "inclusion_proof")]
    fn inclusion_proof(&self, height: u64, tree_size: u64) -> zbus::Result<InclusionView>;
    #[zbus(name = "consistency_proof")]
    fn consistency_proof(&self, old_size: u64, new_size: u64) -> zbus::Result<ConsistencyView>;
    #[zbus(name = "checkpoint")]
    fn checkpoint(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Height")]
    fn height(&self) -> zbus::Result<u64>;
}

pub use bpi_support::dbus::connect;

pub struct ServeOptions {
    pub store: StoreOptions,
    pub admin_group: Option<String>,
    /// A bus address instead of the system bus (tests use a private bus).
    pub bus: Option<String>,
}

/// Runs the service until SIGTERM or SIGINT: opens the store, takes the bus
/// name, tells systemd it is ready, and on the way out writes a checkpoint.
pub fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let signals = bpi_support::dbus::block_stop_signals()?;
    let admins = Admins::from_group(opts.admin_group.as_deref())?;
    let dir = opts.store.dir.clone();
    let (ledger, report) = Ledger::open(opts.store)?;
    let note = |s: &str| bpi_support::progress::note(&format!("ledger: {s}"));
    if let Some(cut) = &report.cut {
        note(cut);
    }
    if let Some(why) = &report.append_only {
        note(why);
    }
    note(&format!("{} holds {} blocks", dir.display(), report.blocks));
    let ledger = Arc::new(ledger);
    let service = LedgerService { ledger: ledger.clone(), plugins: Arc::new(Plugins::default()), admins, verifying: Arc::default() };
    note(&format!("serving {BUS_NAME} at {OBJECT_PATH}"));
    let status = format!("serving {} blocks from {}", report.blocks, dir.display());
    let sig = bpi_support::dbus::serve_until_signal(signals, opts.bus.as_deref(), BUS_NAME, OBJECT_PATH, service, &status)?;
    note(&format!("{sig:?}: stopping"));
    ledger.close()?;
    let size = ledger.store().checkpointed();
    note(&format!("closed with a checkpoint at size {size}"));
    Ok(())
}

/// Opens a store for a one-off append (no service running): the CLI's path.
pub fn append_direct(
    opts: StoreOptions,
    category: &str,
    action: &str,
    data: &str,
) -> crate::Result<(store::Receipt, store::OpenReport)> {
    let records = Plugins::default().prepare(category, data)?;
    let (ledger, report) = Ledger::open(opts)?;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::getuid().to_string(), |u| u.name);
    let mut last = None;
    for (producer, data) in records {
        last = Some(ledger.append(Draft::new(&producer, category, action, &user, data))?);
    }
    ledger.close()?;
    Ok((last.expect("a plugin returns at least one record"), report))
}

/// What an append through the service came to.
pub enum Appended {
    /// The block's height and hash.
    Block(u64, String),
    /// No ledger service on that bus.
    NoService,
}

/// Appends through the ledger service on `conn`.
fn append_over(conn: &zbus::blocking::Connection, category: &str, action: &str, data: &str) -> anyhow::Result<Appended> {
    use anyhow::Context;
    let proxy = Ledger1ProxyBlocking::new(conn).context("making a ledger proxy")?;
    match proxy.append(category, action, data) {
        Ok((height, hash)) => Ok(Appended::Block(height, hash)),
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" => Ok(Appended::NoService),
        Err(zbus::Error::MethodError(name, msg, _)) => {
            anyhow::bail!("the ledger service refused: {} ({})", msg.unwrap_or_default(), name.as_str())
        }
        Err(e) => Err(e).context("appending through the ledger service"),
    }
}

/// Appends through the ledger service on the system bus (or `bus`); `None`
/// when there is no system bus or no service on it (a host, a test), so the
/// caller can say so. On a bus named by address, both are errors.
pub fn append_via_service(bus: Option<&str>, category: &str, action: &str, data: &str) -> anyhow::Result<Option<(u64, String)>> {
    use anyhow::Context;
    let conn = match connect(bus) {
        Ok(c) => c,
        Err(_) if bus.is_none() => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("connecting to the bus at {}", bus.unwrap_or("system"))),
    };
    match append_over(&conn, category, action, data)? {
        Appended::Block(height, hash) => Ok(Some((height, hash))),
        Appended::NoService if bus.is_none() => Ok(None),
        Appended::NoService => anyhow::bail!("no ledger service ({BUS_NAME}) on the bus at {}", bus.unwrap_or("system")),
    }
}

/// The ledger as a [`Recorder`] for the other services and the CLI: appends
/// through bpi-ledger.service over one bus connection, made on first use and
/// kept, so a daemon does not open a connection per change.
pub struct LedgerRecorder {
    bus: Option<String>,
    conn: std::sync::Mutex<Option<zbus::blocking::Connection>>,
}

impl LedgerRecorder {
    /// Records on the system bus, or on the bus at `bus`.
    pub fn new(bus: Option<String>) -> LedgerRecorder {
        LedgerRecorder { bus, conn: std::sync::Mutex::new(None) }
    }
}

const NOT_ON_BUS: &str = "note: not recorded in the ledger: bpi-ledger.service is not on the bus";

impl Recorder for LedgerRecorder {
    fn record(&self, category: &str, action: &str, data: &serde_json::Value) -> String {
        let mut conn = match self.conn.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if conn.is_none() {
            match connect(self.bus.as_deref()) {
                Ok(c) => *conn = Some(c),
                Err(_) if self.bus.is_none() => return NOT_ON_BUS.into(),
                Err(e) => return format!("warning: not recorded in the ledger: connecting to {}: {e}", self.bus.as_deref().unwrap_or("the system bus")),
            }
        }
        let outcome = append_over(conn.as_ref().expect("connected above"), category, action, &data.to_string());
        match outcome {
            Ok(Appended::Block(height, _)) => format!("recorded in the ledger as block {height}"),
            Ok(Appended::NoService) => NOT_ON_BUS.into(),
            Err(e) => {
                // The next change makes a new connection.
                *conn = None;
                format!("warning: not recorded in the ledger: {e:#}")
            }
        }
    }
}

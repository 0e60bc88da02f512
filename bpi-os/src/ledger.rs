//! `bpi-os ledger ...`: thin dispatch onto bpi-ledger. Queries read the store
//! files directly (so they work on a copied ledger); append goes through the
//! running service unless --store names a store to open directly.

use crate::output::{ChangeArgs, Json};
use std::io::Write;
use std::path::{Path, PathBuf};

use bpi_support::exit::Failure;
use anyhow::{bail, Context, Result};
use bpi_ledger::service::{self, ServeOptions};
use bpi_ledger::store::{self, StoreOptions, DEFAULT_DIR, DEFAULT_KEY};
use bpi_ledger::time::{fmt_utc, parse_utc};
use bpi_ledger::{plugins::Plugins, proof, verify, Block};
use clap::{Args, Subcommand};

#[derive(Args, Clone)]
pub struct StoreArg {
    /// The store directory (a copy works too).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

impl StoreArg {
    fn dir(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }

    /// Options for opening the store as its writer. The signing key defaults to
    /// the encrypted store for the system ledger and to DIR/checkpoint.key for
    /// any other directory (tests, copies).
    fn writer(&self, key: Option<PathBuf>, append_only: bool) -> StoreOptions {
        let mut o = StoreOptions::new(self.dir());
        o.key = key.unwrap_or_else(|| match &self.store {
            None => PathBuf::from(DEFAULT_KEY),
            Some(d) => d.join("checkpoint.key"),
        });
        o.append_only = append_only;
        o
    }
}

/// `ledger append`: one operation, recorded through the service when it runs.
#[derive(Args)]
pub struct AppendArgs {
    #[command(flatten)]
    store: StoreArg,
    /// What kind of operation: auth, bridge, connection, ebpf, filesystem, health, interface, mount, network, pof, policy, port, qlock, settings, storage, trust, update, user, vpod.
    #[arg(long)]
    category: String,
    /// What was done (created, deleted, update, ...).
    #[arg(long)]
    action: String,
    /// The operation's data, a JSON object.
    #[arg(long)]
    data: String,
    /// The checkpoint signing key when opening the store directly.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    out: ChangeArgs,
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Blocks, filtered by category, height or time; or --stats.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Only blocks of this category (see `ledger append --help` for the known ones).
        #[arg(long)]
        category: Option<String>,
        /// First height (inclusive).
        #[arg(long)]
        from: Option<u64>,
        /// Last height (inclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Blocks stamped at or after this time (seconds or YYYY-MM-DD[THH:MM:SSZ]).
        #[arg(long, value_parser = parse_utc)]
        since: Option<u64>,
        /// Blocks stamped at or before this time.
        #[arg(long, value_parser = parse_utc)]
        until: Option<u64>,
        /// Show only the newest N matching blocks.
        #[arg(long)]
        last: Option<usize>,
        /// Counts, bytes, first and last, per category.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Checks every block and the newest signed checkpoint; exits 3 if anything is wrong (1: no store).
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// The verifier key to trust (default: the store's checkpoint.vkey).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
    /// Records one operation.
    Append(AppendArgs),
    /// An RFC 9162 inclusion proof (--height) or consistency proof (--consistency OLD).
    Proof {
        #[command(flatten)]
        store: StoreArg,
        /// The height of the block to prove included.
        #[arg(long, conflicts_with = "consistency", required_unless_present = "consistency")]
        height: Option<u64>,
        /// The older tree size of a consistency proof.
        #[arg(long, value_name = "OLD_SIZE")]
        consistency: Option<u64>,
        /// The tree size to prove against (default: the current size).
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        json: Json,
    },
    /// Every block as JSON Lines, oldest first.
    Export {
        #[command(flatten)]
        store: StoreArg,
        /// First height (inclusive).
        #[arg(long)]
        from: Option<u64>,
        /// Last height (inclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
    /// The D-Bus service (bpi-ledger.service).
    Serve {
        #[command(flatten)]
        store: StoreArg,
        /// The checkpoint signing key (default: the store's, in the encrypted store when there is one).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A group whose members may append, besides root.
        #[arg(long)]
        admin_group: Option<String>,
        /// A D-Bus address instead of the system bus.
        #[arg(long, value_name = "ADDRESS")]
        bus: Option<String>,
        /// Do not set the append-only attribute on the log.
        #[arg(long)]
        no_append_only: bool,
    },
}

pub fn run(cmd: LedgerCommand) -> Result<()> {
    match cmd {
        LedgerCommand::Show { store, category, from, to, since, until, last, stats, json } => {
            show(&store.dir(), Filter { category, from, to, since, until, last }, stats, json)
        }
        LedgerCommand::Verify { store, public_key, json } => {
            // The witness beside the signing key (the encrypted store's, for the system ledger).
            let witness = store::witness_path(&store.writer(None, false).key);
            let report = verify::verify(&store.dir(), public_key.as_deref(), Some(&witness))?;
            if json.on() {
                json.print(&report)?;
            } else {
                print!("{}", report.render());
            }
            if !report.ok {
                return Err(Failure::CheckFailed(format!("the ledger at {} failed verification", store.dir().display())).into());
            }
            Ok(())
        }
        LedgerCommand::Append(args) => append(args),
        LedgerCommand::Proof { store, height, consistency, size, json } => {
            let (log, _) = store::open_read(&store.dir())?;
            let (value, ok) = match (height, consistency) {
                (Some(h), _) => {
                    let p = proof::inclusion(&log, h, size)?;
                    (serde_json::to_value(&p)?, p.verify())
                }
                (None, Some(old)) => {
                    let p = proof::consistency(&log, old, size)?;
                    (serde_json::to_value(&p)?, p.verify())
                }
                (None, None) => bail!("give --height H or --consistency OLD_SIZE"),
            };
            if !ok {
                bail!("the proof computed from {} does not verify: the store changed while it was read, or is damaged", store.dir().display());
            }
            if json.on() {
                json.print(&value)?;
            } else {
                for (k, v) in value.as_object().expect("a proof is an object") {
                    println!("{k}: {v}");
                }
                println!("verified: yes");
            }
            Ok(())
        }
        LedgerCommand::Export { store, from, to, output, json } => export(&store.dir(), from, to, output.as_deref(), json),
        LedgerCommand::Serve { store, key, admin_group, bus, no_append_only } => service::serve(ServeOptions {
            store: store.writer(key, !no_append_only),
            admin_group,
            bus,
        }),
    }
}

struct Filter {
    category: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    since: Option<u64>,
    until: Option<u64>,
    last: Option<usize>,
}

fn show(dir: &Path, f: Filter, stats: bool, json: Json) -> Result<()> {
    let (log, problem) = store::open_read(dir)?;
    if let Some(p) = &problem {
        eprintln!(
            "bpi-os: warning: the ledger is damaged at height {}: {}; showing the {} blocks before it (run `bpi-os ledger verify`)",
            p.height,
            p.what,
            log.len()
        );
    }
    if stats {
        let s = log.stats();
        if json.on() {
            json.print(&s)?;
        } else {
            println!("blocks: {} ({} bytes)", s.count, s.bytes);
            if let (Some(a), Some(b)) = (s.first_timestamp, s.last_timestamp) {
                println!("first: {}  last: {}", fmt_utc(a), fmt_utc(b));
            }
            println!("merkle root: {}", s.root);
            for (c, n) in &s.per_category {
                println!("  {c}: {n}");
            }
        }
        return Ok(());
    }
    let mut heights: Vec<u64> = match &f.category {
        Some(c) => log.heights_in_category(c),
        None => (1..=log.len()).collect(),
    };
    let (lo, hi) = (f.from.unwrap_or(1), f.to.unwrap_or(u64::MAX));
    let (t0, t1) = (f.since.unwrap_or(0), f.until.unwrap_or(u64::MAX));
    heights.retain(|&h| (lo..=hi).contains(&h) && (t0..=t1).contains(&log.index.timestamps[(h - 1) as usize]));
    if let Some(n) = f.last {
        heights.drain(..heights.len().saturating_sub(n));
    }
    let mut out = std::io::stdout().lock();
    if json.on() {
        let blocks: Vec<serde_json::Value> =
            heights.iter().map(|&h| log.block(h).map(|b| b.to_json())).collect::<Result<_, _>>()?;
        writeln!(out, "{}", json.render(&blocks)?)?;
    } else {
        for h in heights {
            writeln!(out, "{}", one_line(&log.block(h)?))?;
        }
    }
    Ok(())
}

/// One block for people; stored strings go through `printable`, so a
/// recorded escape sequence cannot drive the terminal.
fn one_line(b: &Block) -> String {
    let d = &b.draft;
    let p = bpi_support::progress::printable;
    format!(
        "#{:<6} {}  {}/{}  {}@{} pid {}  {}  {}",
        b.height,
        fmt_utc(d.timestamp),
        d.category,
        d.action,
        p(&d.user),
        p(&d.hostname),
        d.pid,
        &hex::encode(b.hash)[..16],
        p(&d.data)
    )
}

fn append(args: AppendArgs) -> Result<()> {
    let AppendArgs { store, category, action, data, key, out } = args;
    let ChangeArgs { dry_run, json, bus } = out;
    let (category, action, data, bus) = (category.as_str(), action.as_str(), data.as_str(), bus.as_deref());
    // Checked here first so bad input fails the same way on every path.
    let records = Plugins::default().prepare(category, data)?;
    let probe = bpi_ledger::Draft::new("-", category, action, "-", String::new());
    probe.check()?;
    if dry_run {
        for (producer, data) in &records {
            println!("would record: {category}/{action} by {producer}: {data}");
        }
        return Ok(());
    }
    let (height, hash, via) = if store.store.is_none() {
        match via_service(bus, category, action, data)? {
            Some((h, hash)) => (h, hash, "bpi-ledger.service"),
            None => {
                let (r, _) = service::append_direct(store.writer(key, false), category, action, data)?;
                (r.height, hex::encode(r.hash), "the store directly")
            }
        }
    } else {
        let (r, report) = service::append_direct(store.writer(key, false), category, action, data)?;
        if let Some(cut) = report.cut {
            eprintln!("bpi-os: note: {cut}");
        }
        (r.height, hex::encode(r.hash), "the store directly")
    };
    if json.on() {
        json.print(&serde_json::json!({ "height": height, "hash": hash }))?;
    } else {
        println!("recorded block {height} ({hash}) through {via}");
    }
    Ok(())
}

/// Records a state change made by another command; without a ledger service
/// on the bus (a host, a test) it says so on stderr: the change itself stands.
pub fn record(category: &str, action: &str, data: &serde_json::Value) {
    use bpi_support::record::Recorder;
    eprintln!("bpi-os: {}", service::LedgerRecorder::new(None).record(category, action, data));
}

fn via_service(bus: Option<&str>, category: &str, action: &str, data: &str) -> Result<Option<(u64, String)>> {
    service::append_via_service(bus, category, action, data)
}

/// JSON Lines, one block a line; with --json one JSON array instead.
fn export(dir: &Path, from: Option<u64>, to: Option<u64>, output: Option<&Path>, json: Json) -> Result<()> {
    let (log, problem) = store::open_read(dir)?;
    if let Some(p) = problem {
        bail!("the ledger is damaged at height {}: {}; export refuses to copy a damaged record (run `bpi-os ledger verify`)", p.height, p.what);
    }
    let mut sink: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            {
                use std::os::unix::fs::OpenOptionsExt;
                // A copy of the record is as private as the record: 0600 when made.
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(p).with_context(|| format!("creating {}", p.display()))?
            },
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (lo, hi) = (from.unwrap_or(1).max(1), to.unwrap_or(log.len()).min(log.len()));
    if json.on() {
        sink.write_all(b"[")?;
    }
    for h in lo..=hi {
        let block = log.block(h)?.to_json();
        if json.on() {
            write!(sink, "{}\n{}", if h == lo { "" } else { "," }, json.render(&block)?)?;
        } else {
            writeln!(sink, "{}", serde_json::to_string(&block)?)?;
        }
    }
    if json.on() {
        sink.write_all(b"\n]\n")?;
    }
    sink.flush()?;
    Ok(())
}

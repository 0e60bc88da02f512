//! `bpi-os update`: A/B updates from a signed bundle (docs/updates.md).

use std::path::Path;

use anyhow::{bail, Context, Result};
use bpi_formats::update::KEY_DIRS;
use bpi_support::exit::Failure;
use bpi_support::record::Recorder;
use bpi_support::{progress, Cmd, Steps};
use bpi_update::apply::{self, BootDisk, CheckOptions, Offer};
use bpi_update::fetch::Source;
use bpi_update::{bios, esp, health, keys, slots};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::output::Json;

/// The update source when none is given: one line, a URL or a directory.
pub use bpi_formats::update::SOURCE_FILE;

#[derive(Args, Clone, Debug)]
pub struct FromArgs {
    /// Where the bundle is: an http(s):// URL or a directory holding bpi-os.update and its files (default: the line in /etc/bpi-os/update-source).
    #[arg(long, value_name = "URL|DIR")]
    from: Option<String>,
    /// Accept a version older than the running one.
    #[arg(long)]
    allow_downgrade: bool,
}

#[derive(Subcommand)]
pub enum UpdateCommand {
    /// Fetch the signed metadata and say whether it offers a version this node would install, and into which slot; changes nothing.
    Check {
        #[command(flatten)]
        from: FromArgs,
        #[command(flatten)]
        json: Json,
    },
    /// Download and verify the update, write it to the inactive slot and install its UKI with tries left; the next boot runs it.
    Apply {
        #[command(flatten)]
        from: FromArgs,
        /// Show the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reboot into the new version once it is installed.
        #[arg(long)]
        reboot: bool,
        /// When the version offered is the running one, say so and exit 0 (bpi-update.service runs with this).
        #[arg(long)]
        if_newer: bool,
        /// Boots the new version gets to pass its health check before systemd-boot falls back to the running one.
        #[arg(long, default_value_t = bpi_formats::slots::TRIES, value_parser = clap::value_parser!(u32).range(1..=bpi_formats::slots::MAX_TRIES as i64))]
        tries: u32,
        #[command(flatten)]
        json: Json,
    },
    /// The slots, the versions on the ESP with their tries, and versions that failed their health check and why.
    Status {
        #[command(flatten)]
        json: Json,
    },
    /// Make the other slot's version the default boot entry (it runs after the next reboot).
    Rollback {
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reboot into it now.
        #[arg(long)]
        reboot: bool,
        #[command(flatten)]
        json: Json,
    },
}

/// Writing slots and the ESP needs root; say so before downloading anything.
fn needs_root(what: &str) -> Result<()> {
    if !bpi_support::host::is_root() {
        bail!("bpi-os update {what} writes the disk's inactive slot and the ESP: run it as root (or with --dry-run)");
    }
    Ok(())
}

pub fn run(cmd: UpdateCommand) -> Result<()> {
    match &cmd {
        UpdateCommand::Apply { dry_run: false, .. } => needs_root("apply")?,
        UpdateCommand::Rollback { dry_run: false, .. } => needs_root("rollback")?,
        _ => {}
    }
    match cmd {
        UpdateCommand::Check { from, json } => check(&from, json),
        UpdateCommand::Apply { from, dry_run, reboot, if_newer, tries, json } => apply_cmd(&from, dry_run, reboot, if_newer, tries, json),
        UpdateCommand::Status { json } => {
            let s = status()?;
            if json.on() {
                return json.print(&s);
            }
            print_status(&s);
            Ok(())
        }
        UpdateCommand::Rollback { dry_run, reboot, json } => rollback(dry_run, reboot, json),
    }
}

fn source(from: &FromArgs) -> Result<Source> {
    let text = match &from.from {
        Some(f) => f.clone(),
        None => configured_source().with_context(|| format!("no update source: give --from URL|DIR, or write one to {SOURCE_FILE}"))?,
    };
    Source::parse(&text)
}

/// The line in /etc/bpi-os/update-source, if there is one.
fn configured_source() -> Option<String> {
    std::fs::read_to_string(SOURCE_FILE).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The offer, checked; a refusal (signature, expiry, version, size) is a
/// "no" (exit 3), anything else an error.
fn offer(from: &FromArgs, disk: &BootDisk, running: &str, tries: u32) -> Result<Offer> {
    let src = source(from)?;
    let dirs: Vec<&Path> = KEY_DIRS.iter().map(Path::new).collect();
    let trusted = keys::load(&dirs)?;
    let opts = CheckOptions { source: &src, keys: &trusted, now: now(), allow_downgrade: from.allow_downgrade, tries };
    // Fetching is an error of its own; what the metadata says is a refusal.
    let note = src.metadata()?;
    apply::check(&opts, &note, disk, running).map_err(|e| Failure::CheckFailed(format!("{e:#}; nothing was changed")).into())
}

fn check(from: &FromArgs, json: Json) -> Result<()> {
    let disk = BootDisk::find()?;
    let running = apply::running_version()?;
    match offer(from, &disk, &running, bpi_formats::slots::TRIES) {
        Ok(o) => {
            if json.on() {
                return json.print(&json!({"update": true, "offer": o}));
            }
            println!("{} offers bpi-os {} (running {}); it would go to slot {}", o.source, o.metadata.version, o.running_version, o.target_slot);
            Ok(())
        }
        Err(e) if is_same(&e) => {
            if json.on() {
                return json.print(&json!({"update": false, "running": running}));
            }
            println!("up to date: {running} is the version offered");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The refusal that means "nothing newer": the offer is the running version.
fn is_same(e: &anyhow::Error) -> bool {
    e.to_string().contains(" is the running version")
}

fn apply_cmd(from: &FromArgs, dry_run: bool, reboot: bool, if_newer: bool, tries: u32, json: Json) -> Result<()> {
    let mut disk = BootDisk::find()?;
    let running = apply::running_version()?;
    let o = match offer(from, &disk, &running, tries) {
        Err(e) if if_newer && is_same(&e) => {
            if json.on() {
                return json.print(&json!({"update": false, "running": running}));
            }
            println!("up to date: {running} is the version offered");
            return Ok(());
        }
        r => r?,
    };
    let plan = apply::describe(&o);
    if dry_run {
        if json.on() {
            return json.print(&json!({"dry_run": true, "offer": o, "steps": plan}));
        }
        println!("would install bpi-os {} into slot {} (running {}):", o.metadata.version, o.target_slot, running);
        for (i, s) in plan.iter().enumerate() {
            println!("  {}. {s}", i + 1);
        }
        println!("nothing was changed (--dry-run)");
        return Ok(());
    }
    let esp_dir = esp::find()?;
    let steps = Steps::new("update");
    let recorder = bpi_ledger::service::LedgerRecorder::new(None);
    let src = source(from)?;
    let applied = apply::apply(&o, &src, &mut disk, &esp_dir, &steps, &recorder)?;
    steps.finish();
    let result = json!({
        "version": o.metadata.version,
        "slot": applied.slot.to_string(),
        "uki": applied.uki,
        "bytes_written": applied.bytes_written,
        "write_seconds": applied.write_seconds,
        "verify_seconds": applied.verify_seconds,
        "reboot": reboot,
    });
    if json.on() {
        json.print(&result)?;
    } else {
        println!(
            "installed bpi-os {} in slot {} ({} bytes written in {:.1} s, read back and checked in {:.1} s); the next boot runs it, {} tries before falling back to {}",
            o.metadata.version,
            applied.slot,
            applied.bytes_written,
            applied.write_seconds,
            applied.verify_seconds,
            o.tries,
            running
        );
    }
    if reboot {
        progress::note("rebooting into the new version");
        Cmd::new("systemctl").arg("reboot").run()?;
    }
    Ok(())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct UpdateStatus {
    pub running_version: String,
    pub running_slot: Option<char>,
    pub slots: Vec<slots::SlotState>,
    pub entries: Vec<esp::Entry>,
    pub default_entry: Option<String>,
    /// GRUB's A/B state (the BIOS path), where the ESP has one.
    pub bios: Option<bpi_formats::grub::State>,
    /// Versions that failed their health check, with why.
    pub failed: Vec<Failed>,
    pub health: Option<health::Report>,
    /// The line in /etc/bpi-os/update-source, if any.
    pub source: Option<String>,
    /// bpi-update.timer is enabled: updates are installed unattended.
    pub automatic: bool,
}

/// Where `systemctl enable bpi-update.timer` makes its link.
const TIMER_WANTS_DIR: &str = "/etc/systemd/system/timers.target.wants";

#[derive(Debug, Serialize, PartialEq)]
pub struct Failed {
    pub version: String,
    pub failed_boots: u32,
    /// Its UKI used up its tries: systemd-boot no longer boots it.
    pub out_of_tries: bool,
    pub reasons: String,
}

pub fn status() -> Result<UpdateStatus> {
    let running = apply::running_version()?;
    let disk = BootDisk::find();
    let slots = match &disk {
        Ok(d) => d.slots().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let esp_dir = esp::find().ok();
    let entries = esp_dir.as_deref().map(esp::entries).transpose()?.unwrap_or_default();
    let reports = health::all(Path::new(health::HEALTH_DIR));
    let mut failed: Vec<Failed> = reports
        .iter()
        .filter(|r| !r.healthy && r.version != running)
        .map(|r| Failed {
            version: r.version.clone(),
            failed_boots: r.failed_boots,
            out_of_tries: entries.iter().any(|e| e.version == r.version && e.failed()),
            reasons: r.reasons(),
        })
        .collect();
    let unreported: Vec<&esp::Entry> = entries.iter().filter(|e| e.failed() && !failed.iter().any(|f| f.version == e.version)).collect();
    for e in unreported {
        failed.push(Failed { version: e.version.clone(), failed_boots: e.tries_done.unwrap_or(0), out_of_tries: true, reasons: "no health report: it did not get as far as its health check (hang or panic)".into() });
    }
    Ok(UpdateStatus {
        running_slot: slots.iter().find(|s| s.running).map(|s| s.slot),
        slots,
        default_entry: esp_dir.as_deref().and_then(esp::default_entry),
        bios: esp_dir.as_deref().filter(|d| bios::present(d)).map(bios::state).transpose()?,
        health: reports.into_iter().find(|r| r.version == running),
        entries,
        failed,
        running_version: running,
        source: configured_source(),
        automatic: Path::new(TIMER_WANTS_DIR).join(bpi_formats::update::TIMER).symlink_metadata().is_ok(),
    })
}

pub fn print_status(s: &UpdateStatus) {
    println!("running:    bpi-os {} in slot {}", s.running_version, s.running_slot.map(String::from).unwrap_or_else(|| "?".into()));
    for sl in &s.slots {
        println!("slot {}:     {}{}", sl.slot, sl.version.as_deref().unwrap_or("empty"), if sl.running { " (running)" } else { "" });
    }
    for e in &s.entries {
        let tries = match (e.tries_left, e.tries_done) {
            (None, _) => "good".to_string(),
            (Some(0), _) => "out of tries".to_string(),
            (Some(l), d) => format!("{l} tries left, {} done", d.unwrap_or(0)),
        };
        println!("boot entry: {} ({tries})", e.file);
    }
    if let Some(d) = &s.default_entry {
        println!("default:    {d} (set by rollback)");
    }
    if let Some(b) = &s.bios {
        let trial = match &b.trial {
            Some(t) => format!("; trial {t} with {} boot(s) left", b.tries_left),
            None => String::new(),
        };
        println!("grub:       saved entry {}{trial}", b.saved.as_deref().unwrap_or("none (the newest version)"));
    }
    match &s.health {
        Some(h) if h.healthy => println!("health:     this version passed its health check"),
        Some(h) => println!("health:     this version FAILED its health check: {}", h.reasons()),
        None => println!("health:     not checked on this version yet"),
    }
    for f in &s.failed {
        println!("failed:     {} ({} failed boot(s){}): {}", f.version, f.failed_boots, if f.out_of_tries { ", out of tries" } else { "" }, f.reasons);
    }
    println!(
        "source:     {}; {}",
        s.source.as_deref().unwrap_or("none (give --from, or provision bpi_update)"),
        if s.automatic { "unattended (bpi-update.timer enabled)" } else { "updates only when asked" }
    );
}

fn rollback(dry_run: bool, reboot: bool, json: Json) -> Result<()> {
    let disk = BootDisk::find()?;
    let running = apply::running_version()?;
    let st = disk.slots()?;
    let other = st.iter().find(|s| !s.running).context("no other slot")?;
    let Some(version) = other.version.clone() else {
        bail!("slot {} is empty: there is no version to roll back to", other.slot);
    };
    let esp_dir = esp::find()?;
    let entry = esp::entries(&esp_dir)?.into_iter().find(|e| e.version == version).with_context(|| format!("slot {} holds {version}, but the ESP has no UKI for it", other.slot))?;
    if entry.failed() {
        return Err(Failure::CheckFailed(format!("{version} used up its boot tries (it failed its health check); not rolling back to it")).into());
    }
    let pattern = if entry.tries_left.is_some() { format!("bpi-os_{version}+*") } else { bpi_formats::slots::uki_name(&version, None) };
    let change = json!({"from": running, "to": version, "slot": other.slot.to_string(), "default_entry": pattern, "dry_run": dry_run});
    if !dry_run {
        esp::set_default(&esp_dir, Some(&pattern))?;
        if bios::present(&esp_dir) {
            bios::bless(&esp_dir, &version)?;
        }
        let r = bpi_ledger::service::LedgerRecorder::new(None);
        progress::log(&format!("ledger: {}", r.record("update", "update-rollback", &json!({"version": version, "step": "rollback", "from": running, "slot": other.slot.to_string()}))));
    }
    if json.on() {
        json.print(&change)?;
    } else if dry_run {
        println!("would make {version} (slot {}) the default boot entry ({pattern}); nothing was changed (--dry-run)", other.slot);
    } else {
        println!("{version} (slot {}) is now the default boot entry; it runs after the next reboot", other.slot);
    }
    if reboot && !dry_run {
        Cmd::new("systemctl").arg("reboot").run()?;
    }
    Ok(())
}

//! `bpi-os provision`: what first boot applied, an offline check of a
//! user-data file or credential set, and applying (what
//! bpi-provision.service runs at boot).

use std::path::PathBuf;

use anyhow::Result;
use bpi_provision::run::{self, Options, Outcome, Report};
use bpi_provision::{check, plan, source::Documents};
use bpi_support::exit::Failure;
use clap::Subcommand;
use serde_json::json;

use crate::output::Json;

#[derive(Subcommand)]
pub enum ProvisionCommand {
    /// What provisioning did on this boot, and which instance is applied.
    Show {
        #[command(flatten)]
        json: Json,
    },
    /// Check a user-data file, or a directory of NoCloud files or bpi.provision.* credentials, offline; print what would change.
    Check {
        /// The user-data file or directory.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[command(flatten)]
        json: Json,
    },
    /// Find the provisioning (credentials, cidata drive, installer partition) and apply it once per instance-id; first boot runs this.
    Apply {
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply even when this instance-id was applied before.
        #[arg(long)]
        again: bool,
        /// Use this user-data file or directory instead of looking for a source.
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
}

pub fn run(cmd: ProvisionCommand) -> Result<()> {
    match cmd {
        ProvisionCommand::Show { json } => show(json),
        ProvisionCommand::Check { path, json } => check_path(&path, json),
        ProvisionCommand::Apply { dry_run, again, from, json } => apply(dry_run, again, from, json),
    }
}

fn show(json: Json) -> Result<()> {
    let report = run::load_report(std::path::Path::new(run::REPORT_FILE));
    let state = run::load_state(std::path::Path::new(run::STATE_FILE));
    if json.on() {
        return json.print(&json!({"this_boot": report, "applied": state}));
    }
    match &report {
        Some(r) => print_report(r),
        None => println!("this boot: provisioning has not run ({} is missing)", run::REPORT_FILE),
    }
    match state {
        Some(s) => println!("applied:   instance {} from {} ({} change(s))", s.instance_id, s.source, s.actions.len()),
        None => println!("applied:   nothing yet"),
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("this boot: {}", r.message);
    for e in &r.errors {
        println!("  error: {e}");
    }
    for n in &r.notes {
        println!("  note:  {n}");
    }
    for s in &r.shadowed {
        println!("  not used: {s} (a source before it won)");
    }
    for a in &r.actions {
        println!("  - {a}");
    }
}

fn check_path(path: &std::path::Path, json: Json) -> Result<()> {
    let docs = Documents::from_path(path)?;
    let c = check::check(&docs);
    let actions: Vec<String> = if c.ok() { plan::plan(&c).iter().map(plan::Action::describe).collect() } else { Vec::new() };
    if json.on() {
        json.print(&json!({"ok": c.ok(), "instance_id": c.instance_id, "settings": c.settings, "errors": c.errors, "notes": c.notes, "would_change": actions}))?;
    } else {
        for n in &c.notes {
            println!("note:  {n}");
        }
        for e in &c.errors {
            println!("error: {e}");
        }
        if c.ok() {
            println!("{}: valid; instance {}; applying it would:", path.display(), c.instance_id);
            for a in &actions {
                println!("  - {a}");
            }
        }
    }
    if !c.ok() {
        return Err(Failure::CheckFailed(format!("{}: {} error(s); nothing of it would be applied", path.display(), c.errors.len())).into());
    }
    Ok(())
}

fn apply(dry_run: bool, again: bool, from: Option<PathBuf>, json: Json) -> Result<()> {
    let opts = Options { dry_run, again, from, ..Options::default() };
    let recorder: Box<dyn bpi_support::record::Recorder> = if dry_run {
        Box::new(bpi_support::record::NotRecorded)
    } else {
        Box::new(bpi_ledger::service::LedgerRecorder::new(None))
    };
    // Printed as it happens: under bpi-provision.service this goes to the console too.
    let mut say = |line: &str| {
        if !json.on() {
            println!("bpi-os provision: {line}");
        }
    };
    let report = run::run(&opts, recorder.as_ref(), &mut say)?;
    if json.on() {
        json.print(&report)?;
    } else {
        for e in &report.errors {
            println!("bpi-os provision: error: {e}");
        }
        if report.outcome == Outcome::DryRun {
            for a in &report.actions {
                println!("bpi-os provision: would {a}");
            }
        }
        println!("bpi-os provision: {}", report.message);
        if !report.host_keys_made.is_empty() {
            println!("bpi-os provision: made SSH host keys: {}", report.host_keys_made.join(", "));
        }
        for k in &report.host_keys {
            println!("bpi-os provision: SSH host key {} {}", k.kind, k.fingerprint);
        }
    }
    match report.outcome {
        Outcome::Refused => Err(Failure::CheckFailed(report.message).into()),
        Outcome::Failed => anyhow::bail!("{}", report.message),
        _ => Ok(()),
    }
}

//! `bpi-os install`: thin dispatch onto bpi-installer. With --disk it writes
//! the image to a disk; with --root it lays out /bpi and the units in a tree.

use crate::output::Json;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_installer::install::{self, DiskRequest, Prepared, StoreRequest};
use bpi_installer::target::{self, Allow};
use bpi_installer::disk;
use bpi_support::Steps;
use clap::Args;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("where").required(true).args(["disk", "root"]))]
pub struct InstallArgs {
    /// The disk to install onto (a /dev/disk/by-id path is best). Everything on it is lost.
    #[arg(long, value_name = "DEV")]
    disk: Option<PathBuf>,
    /// Lay out /bpi and the units in this directory instead of writing a disk.
    #[arg(long, value_name = "DIR", conflicts_with = "disk")]
    root: Option<PathBuf>,
    /// bpi-os.raw, or the directory holding it with SHA256SUMS and manifest.json.
    #[arg(long, value_name = "PATH", required_unless_present = "root")]
    image: Option<PathBuf>,
    /// Print every step and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Overwrite a disk that has a partition table.
    #[arg(long)]
    force: bool,
    /// Allow a regular file as the disk (tests).
    #[arg(long)]
    allow_file: bool,
    /// Where progress is recorded so a re-run finishes an interrupted install.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bpi-os/install")]
    state_dir: PathBuf,
    #[command(flatten)]
    json: Json,
    /// How the encrypted store is keyed.
    #[command(flatten)]
    keys: crate::store::KeyFlags,
    /// Provisioning for the installed node's first boot: a #cloud-config user-data file, or a directory of NoCloud files or bpi.provision.* credentials (checked now; docs/provisioning.md).
    #[arg(long, value_name = "PATH")]
    provision: Option<PathBuf>,
    /// Make no encrypted store now (`bpi-os store init` on the installed system makes it later).
    #[arg(long, conflicts_with_all = ["recovery_key_file", "passphrase"])]
    no_store: bool,
}

pub fn run(a: InstallArgs) -> Result<()> {
    match (&a.disk, &a.root) {
        (Some(dev), None) => install_disk(dev, &a),
        (None, Some(root)) => install_root(root, a.dry_run),
        _ => bail!("give --disk DEV or --root DIR"),
    }
}

fn install_disk(dev: &Path, a: &InstallArgs) -> Result<()> {
    let steps = Steps::new("install");
    let image = a.image.as_deref().context("--image PATH is needed with --disk")?;
    let store = (!a.no_store).then(|| StoreRequest {
        tpm2: a.keys.tpm2,
        pcrs: a.keys.tpm2_pcrs.clone(),
        recovery_key_file: a.keys.recovery_key_file.clone(),
        passphrase: a.keys.passphrase,
    });
    let provision = a.provision.as_deref().map(provision_payload).transpose()?;
    let req = DiskRequest { disk: dev, image, allow: Allow { force: a.force, file: a.allow_file }, state_dir: &a.state_dir, store, provision };
    let checked = install::check(&req)?;
    // Asked before anything is checksummed or written.
    let pass = if a.keys.passphrase && !a.dry_run { Some(crate::store::read_passphrase(true)?) } else { None };
    let prepared = install::prepare(&req, checked, &steps)?;
    let Prepared { target: t, plan, state_file, image: opened } = &prepared;
    if a.dry_run {
        if a.json.on() {
            a.json.print(&plan)?;
        } else {
            print!("{}", plan.render());
            println!("(dry run: nothing was written)");
        }
        return Ok(());
    }
    eprint!("{}", plan.render());
    confirm(t, a.yes)?;
    install::reidentify(&prepared, req.allow)?;
    let done = disk::apply(plan, opened, state_file, &steps, pass.as_deref())?;
    steps.finish();
    println!(
        "installed {} onto {} (body written at {:.1} MB/s); it boots from this disk now",
        plan.image.display(),
        t.describe(),
        done.rate / 1e6
    );
    if let Some(key) = done.recovery_key {
        println!("\nThe encrypted store's recovery key, shown once; keep it somewhere safe:\n\n    {key}\n");
    }
    Ok(())
}

fn confirm(t: &target::Target, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(bpi_support::exit::Failure::NeedsPerson("not on a terminal and --yes not given: nothing was written".into()).into());
    }
    let name = t.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    eprint!("Everything on {} will be lost. Type its name ({name}) to go on: ", t.describe());
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != name {
        bail!("not confirmed: nothing was written");
    }
    Ok(())
}

fn install_root(root: &Path, dry_run: bool) -> Result<()> {
    let p = install::root_plan(root)?;
    print!("{}", p.render());
    if dry_run {
        println!("(dry run: nothing was changed)");
        return Ok(());
    }
    install::apply_root(&p)?;
    println!("laid out {} ({} directories, {} unit files changed)", root.display(), p.dirs.len(), p.files.len());
    Ok(())
}

/// Checks `--provision` before anything is written, and encodes it for the
/// provisioning partition. A set first boot would refuse is refused now.
fn provision_payload(path: &Path) -> Result<Vec<u8>> {
    let docs = bpi_provision::source::Documents::from_path(path)?;
    let c = bpi_provision::check::check(&docs);
    for n in &c.notes {
        eprintln!("bpi-os: note: {n}");
    }
    if !c.ok() {
        let errors: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
        return Err(bpi_support::exit::Failure::CheckFailed(format!(
            "--provision {}: nothing was written; first boot would refuse it:\n  {}",
            path.display(),
            errors.join("\n  ")
        ))
        .into());
    }
    bpi_provision::source::encode_partition(&docs)
}

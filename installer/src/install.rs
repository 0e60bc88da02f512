//! `bpi-os install` as a library: check what the operator asked for, prepare
//! the plan (verify the image, refuse what must not be touched, plan, find an
//! interrupted run to resume), then [`crate::disk::apply`] it. The CLI only
//! asks the person (confirmation, passphrase) and prints. `--root` lays out
//! /bpi and the units in a tree ([`root_plan`], [`apply_root`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_formats::layout::{self, Home};
use bpi_formats::units;
use bpi_support::Steps;

use crate::disk::{self, Plan, StoreChoice};
use crate::source;
use crate::store::{self, Tpm, Tpm2};
use crate::target::{self, Allow, Target};

/// The encrypted store the operator asks for (None: `--no-store`).
#[derive(Debug, Clone)]
pub struct StoreRequest {
    pub tpm2: Tpm2,
    pub pcrs: String,
    pub recovery_key_file: Option<PathBuf>,
    pub passphrase: bool,
}

/// An install onto a disk, as asked for.
pub struct DiskRequest<'a> {
    pub disk: &'a Path,
    pub image: &'a Path,
    pub allow: Allow,
    pub state_dir: &'a Path,
    pub store: Option<StoreRequest>,
    /// The provisioning partition's payload (`--provision FILE`, checked and encoded by the caller).
    pub provision: Option<Vec<u8>>,
}

/// The disk as inspected, and the store choice checked against this machine.
pub struct Checked {
    pub target: Target,
    pub store: Option<StoreChoice>,
}

/// Inspects the disk and checks the store choice: fast errors first, before
/// a gigabyte of checksumming or a question to the person.
pub fn check(req: &DiskRequest) -> Result<Checked> {
    let target = target::inspect(req.disk, req.allow)?;
    let store = req.store.as_ref().map(|s| store_choice(s, store::tpm2(std::time::Duration::ZERO))).transpose()?;
    Ok(Checked { target, store })
}

/// The store choice, or why it is incomplete on a machine with or without a TPM2.
pub fn store_choice(s: &StoreRequest, tpm: Tpm) -> Result<StoreChoice> {
    let present = tpm == Tpm::Present;
    let tpm2 = match s.tpm2 {
        Tpm2::Auto => present,
        Tpm2::Yes if !present => bail!("--tpm2 yes, but this machine has no TPM2 ({})", store::TPM_DEVICE),
        Tpm2::Yes => true,
        Tpm2::No => false,
    };
    if !tpm2 && s.recovery_key_file.is_none() && !s.passphrase {
        bail!(
            "{}: a person must unlock the encrypted store; choose --recovery-key-file PATH to keep its recovery key, --passphrase to set one, or --no-store to install without a store",
            if present { "--tpm2 no" } else { "this machine has no TPM2" }
        );
    }
    if let Some(f) = &s.recovery_key_file {
        // Checked now, so a key that cannot be kept stops the install before any write.
        if f.exists() {
            bail!("--recovery-key-file {} exists; name a new file", f.display());
        }
        let dir = f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .with_context(|| format!("--recovery-key-file: {} is not writable", dir.display()))?;
    }
    Ok(StoreChoice { tpm2, pcrs: s.pcrs.clone(), recovery_key_file: s.recovery_key_file.clone(), passphrase: s.passphrase })
}

/// A plan ready to apply, where its progress is recorded, and the image as
/// opened and hashed (the install reads it from this descriptor).
pub struct Prepared {
    pub target: Target,
    pub plan: Plan,
    pub state_file: PathBuf,
    pub image: std::sync::Arc<std::fs::File>,
}

/// Verifies the image and plans the install; refuses (writing nothing) what
/// must not be overwritten.
pub fn prepare(req: &DiskRequest, checked: Checked, steps: &Steps) -> Result<Prepared> {
    let Checked { target: t, store } = checked;
    let src = steps.step("verify image", || source::verify(req.image, steps))?;
    let refuse = |why: Vec<String>| -> Result<()> {
        if why.is_empty() {
            return Ok(());
        }
        bail!("will not install onto {}:\n  - {}\nnothing was written", t.describe(), why.join("\n  - "))
    };
    // Everything but an existing partition table first: the plan needs a disk that fits.
    refuse(target::refusals(&t, src.size, Allow { force: true, ..req.allow }))?;
    let plan = disk::plan(&src, &t, store, req.provision.clone())?;
    let state_file = disk::state_path(req.state_dir, &t.path);
    // A table this very install wrote (and recorded) is no reason to stop.
    let resuming = disk::load_state(&state_file, &plan).is_some();
    refuse(target::refusals(&t, src.size, Allow { force: req.allow.force || resuming, ..req.allow }))?;
    Ok(Prepared { target: t, plan, state_file, image: src.file.clone() })
}

/// Inspects the disk again after the person confirmed: the disk they agreed
/// to must still be the one planned for (a device swapped or resized while
/// the prompt waited is refused).
pub fn reidentify(p: &Prepared, allow: Allow) -> Result<()> {
    let now = target::inspect(&p.target.given, allow)?;
    let same = now.path == p.target.path && now.size == p.target.size && now.ids == p.target.ids && now.model == p.target.model;
    if !same {
        bail!("{} changed while the install waited for confirmation (now {}): nothing was written", p.target.describe(), now.describe());
    }
    Ok(())
}

/// What `--root DIR` will do: directories, unit files, units to enable.
pub struct RootPlan {
    pub root: PathBuf,
    pub dirs: Vec<layout::Step>,
    pub files: Vec<units::Install>,
    pub enable: Vec<String>,
}

impl RootPlan {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for d in &self.dirs {
            s.push_str(&format!("{d}\n"));
        }
        for f in &self.files {
            s.push_str(&format!("{f}\n"));
        }
        s.push_str(&format!("enable {}\n", self.enable.join(" ")));
        s
    }
}

/// The plan for laying out /bpi and the units under `root` (created if missing).
pub fn root_plan(root: &Path) -> Result<RootPlan> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    Ok(RootPlan {
        root: root.to_owned(),
        dirs: layout::plan(root, &[Home::Image, Home::Data, Home::Runtime])?,
        files: units::plan(root),
        enable: units::enabled(),
    })
}

pub fn apply_root(p: &RootPlan) -> Result<()> {
    layout::apply(&p.dirs)?;
    units::apply(&p.files)?;
    bpi_support::Cmd::new("systemctl").arg(format!("--root={}", p.root.display())).arg("enable").args(&p.enable).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tpm2: Tpm2, key: Option<&str>, passphrase: bool) -> StoreRequest {
        StoreRequest { tpm2, pcrs: "7".into(), recovery_key_file: key.map(PathBuf::from), passphrase }
    }

    #[test]
    fn the_store_choice_follows_the_tpm_and_needs_a_way_in_without_one() {
        assert!(store_choice(&req(Tpm2::Auto, None, false), Tpm::Present).unwrap().tpm2);
        let none = store_choice(&req(Tpm2::Auto, None, false), Tpm::Absent).unwrap_err().to_string();
        assert!(none.contains("this machine has no TPM2") && none.contains("--no-store"), "{none}");
        let off = store_choice(&req(Tpm2::No, None, false), Tpm::Present).unwrap_err().to_string();
        assert!(off.starts_with("--tpm2 no"), "{off}");
        assert!(store_choice(&req(Tpm2::Yes, None, true), Tpm::Absent).unwrap_err().to_string().contains("--tpm2 yes"));
        assert!(!store_choice(&req(Tpm2::No, None, true), Tpm::Present).unwrap().tpm2);
        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("k");
        std::fs::write(&taken, b"").unwrap();
        let e = store_choice(&req(Tpm2::No, Some(taken.to_str().unwrap()), false), Tpm::Absent).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        let free = dir.path().join("new");
        assert_eq!(store_choice(&req(Tpm2::No, Some(free.to_str().unwrap()), false), Tpm::Absent).unwrap().recovery_key_file, Some(free));
    }
}

//! The BIOS boot path on the ESP, kept in step with the UKIs (docs/boot.md):
//! each version with a UKI under EFI/Linux has its kernel and initrd, taken
//! out of that UKI, under `bios/<version>/` and an entry in grub.cfg; an
//! update starts a trial in grubenv, a healthy boot blesses it there, and a
//! rollback makes the other version GRUB's saved entry. Both firmwares'
//! state moves together, whichever one the node booted through.

use std::path::Path;

use anyhow::{Context, Result};
use bpi_formats::grub::{self, State};
use bpi_formats::slots::parse_uki_name;

/// An ESP written before the BIOS path existed has no grub.cfg, and one
/// written before GRUB counted trials has no grubenv: its core image has no
/// `load_env`, and a grub.cfg that needs it would boot a new version with
/// no fallback. Either way there is nothing to keep in step (docs/boot.md).
pub fn present(esp: &Path) -> bool {
    esp.join(grub::GRUB_CFG).is_file() && esp.join(grub::GRUBENV).is_file()
}

/// grubenv as it is (empty when there is none yet) and where it is.
fn read_env(esp: &Path) -> Result<(std::path::PathBuf, grub::Env)> {
    let path = esp.join(grub::GRUBENV);
    let env = match std::fs::read(&path) {
        Ok(b) => grub::parse_env(&b).with_context(|| format!("reading {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => grub::Env::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok((path, env))
}

pub fn state(esp: &Path) -> Result<State> {
    Ok(State::of(&read_env(esp)?.1))
}

/// Changes the A/B state with `change`, keeping grubenv's other variables;
/// the file is replaced whole (GRUB finds it by name on every boot), and
/// only when the state changed (the bless runs on every healthy boot).
fn update_state(esp: &Path, change: impl FnOnce(&mut State)) -> Result<State> {
    let (path, mut env) = read_env(esp)?;
    let before = State::of(&env);
    let mut st = before.clone();
    change(&mut st);
    if st != before {
        st.apply_to(&mut env);
        bpi_support::fsmode::write_atomic(&path, &grub::render_env(&env)?, 0o644).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(st)
}

/// Writes `version`'s kernel and initrd from its UKI, whole or not at all.
pub fn install(esp: &Path, uki: &Path, version: &str) -> Result<()> {
    let parts = bpi_formats::uki::parts(&std::fs::read(uki)?).with_context(|| format!("reading {}", uki.display()))?;
    let dir = esp.join(grub::BIOS_DIR).join(version);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {} (is the ESP full?)", dir.display()))?;
    for (path, bytes) in [(grub::kernel_path(version), &parts.kernel), (grub::initrd_path(version), &parts.initrd)] {
        let p = esp.join(path);
        bpi_support::fsmode::write_atomic(&p, bytes, 0o644).with_context(|| format!("writing {} (is the ESP full?)", p.display()))?;
    }
    regenerate(esp)
}

/// Removes `version`'s files and entry, and any trial of it.
pub fn remove_version(esp: &Path, version: &str) -> Result<()> {
    let dir = esp.join(grub::BIOS_DIR).join(version);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    update_state(esp, |s| s.forget(version))?;
    regenerate(esp)
}

/// An update installed: GRUB boots `version` next, at most `tries` times.
pub fn start_trial(esp: &Path, version: &str, tries: u32) -> Result<()> {
    update_state(esp, |s| s.start_trial(version, tries)).map(|_| ())
}

/// A healthy boot of `version`, or a rollback to it: GRUB's saved entry.
/// Returns whether anything changed.
pub fn bless(esp: &Path, version: &str) -> Result<bool> {
    let mut changed = false;
    update_state(esp, |s| changed = s.bless(version))?;
    Ok(changed)
}

/// grub.cfg from what the ESP holds: an entry for each version with both a
/// UKI (whose command line it takes) and BIOS files, newest first.
pub fn regenerate(esp: &Path) -> Result<()> {
    let mut entries = Vec::new();
    let dir = esp.join("EFI/Linux");
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let Some((version, _, _)) = e.file_name().to_str().and_then(parse_uki_name) else { continue };
        if !esp.join(grub::kernel_path(&version)).is_file() || !esp.join(grub::initrd_path(&version)).is_file() {
            continue;
        }
        let parts = bpi_formats::uki::parts(&std::fs::read(e.path())?).with_context(|| format!("reading {}", e.path().display()))?;
        entries.push(grub::Entry { version, cmdline: parts.cmdline });
    }
    entries.sort_by(|a, b| compare_versions(&b.version, &a.version));
    let path = esp.join(grub::GRUB_CFG);
    bpi_support::fsmode::write_atomic(&path, grub::config(&entries)?.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use bpi_formats::update::parse_version;
    match (parse_version(a), parse_version(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpi_formats::uki::testing::pe_with;

    fn uki(esp: &Path, name: &str, cmdline: &str, kernel: &[u8]) -> std::path::PathBuf {
        let p = esp.join("EFI/Linux").join(name);
        std::fs::write(&p, pe_with(&[(".cmdline", format!("{cmdline}\0").as_bytes()), (".linux", kernel), (".initrd", b"initrd")])).unwrap();
        p
    }

    #[test]
    fn install_trial_bless_and_remove_keep_grub_in_step_with_the_ukis() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path();
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        std::fs::create_dir_all(esp.join("grub")).unwrap();
        assert!(!present(esp));
        let old = uki(esp, "bpi-os_0.1.0.efi", "roothash=aa ro", b"kernel 0");
        install(esp, &old, "0.1.0").unwrap();
        // grub.cfg without grubenv: an ESP from before GRUB counted trials.
        assert!(!present(esp));
        bless(esp, "0.1.0").unwrap();
        assert!(present(esp));
        // An update: its UKI with tries, its BIOS files, a trial.
        let new = uki(esp, "bpi-os_0.10.0+3.efi", "roothash=bb ro", b"kernel 10");
        install(esp, &new, "0.10.0").unwrap();
        start_trial(esp, "0.10.0", 3).unwrap();
        assert_eq!(std::fs::read(esp.join("bios/0.10.0/vmlinuz")).unwrap(), b"kernel 10");
        assert_eq!(std::fs::read(esp.join("bios/0.10.0/initrd.img")).unwrap(), b"initrd");
        let cfg = std::fs::read_to_string(esp.join(grub::GRUB_CFG)).unwrap();
        // Newest first by version, not by name (0.10.0 > 0.1.0).
        let (a, b) = (cfg.find("--id bpi-os_0.10.0").unwrap(), cfg.find("--id bpi-os_0.1.0").unwrap());
        assert!(a < b, "{cfg}");
        assert!(cfg.contains("linux /bios/0.10.0/vmlinuz roothash=bb ro\n"), "{cfg}");
        assert_eq!(state(esp).unwrap(), State { saved: Some("0.1.0".into()), trial: Some("0.10.0".into()), tries_left: 3 });
        assert!(bless(esp, "0.10.0").unwrap());
        assert!(!bless(esp, "0.10.0").unwrap());
        assert_eq!(state(esp).unwrap(), State { saved: Some("0.10.0".into()), trial: None, tries_left: 0 });
        // Retiring 0.1.0: its files and entry go.
        std::fs::remove_file(&old).unwrap();
        remove_version(esp, "0.1.0").unwrap();
        assert!(!esp.join("bios/0.1.0").exists());
        assert!(!std::fs::read_to_string(esp.join(grub::GRUB_CFG)).unwrap().contains("0.1.0\""));
        // grubenv is GRUB's 1024-byte block.
        assert_eq!(std::fs::read(esp.join(grub::GRUBENV)).unwrap().len(), grub::ENV_SIZE);
    }
}

//! The UKIs on the ESP, one per installed version, named for systemd-boot's
//! boot counting: `bpi-os_<version>+<tries left>[-<tries done>].efi` until a
//! boot of it is found healthy, `bpi-os_<version>.efi` after. systemd-boot
//! boots the newest version with tries left, so a version that used up its
//! tries falls back to the previous one without anyone touching the node.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_formats::slots::{parse_uki_name, uki_name};
use serde::Serialize;

/// Where the ESP is mounted (systemd's gpt-auto generator automounts the
/// root disk's ESP at /boot on a bpi-os node, under UEFI and, in systemd
/// 252, under BIOS too, without the check that the loader came from it;
/// /efi and /boot/efi are where others put it).
pub fn find() -> Result<PathBuf> {
    for d in ["/efi", "/boot/efi", "/boot"] {
        let p = Path::new(d);
        if p.join("EFI/Linux").is_dir() {
            return Ok(p.to_path_buf());
        }
    }
    anyhow::bail!("no ESP with EFI/Linux under /efi, /boot/efi or /boot: is this node booted through systemd-boot?")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub file: String,
    pub version: String,
    /// None: blessed (a boot of it was found healthy) or never counted.
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

impl Entry {
    /// A version that used up its tries: systemd-boot no longer picks it.
    pub fn failed(&self) -> bool {
        self.tries_left == Some(0)
    }
}

pub fn entries(esp: &Path) -> Result<Vec<Entry>> {
    let dir = esp.join("EFI/Linux");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().to_string();
        if let Some((version, tries_left, tries_done)) = parse_uki_name(&name) {
            out.push(Entry { file: name, version, tries_left, tries_done });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Removes every UKI of `version`.
pub fn remove_version(esp: &Path, version: &str) -> Result<()> {
    for e in entries(esp)?.into_iter().filter(|e| e.version == version) {
        let p = esp.join("EFI/Linux").join(&e.file);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    sync_dir(&esp.join("EFI/Linux"))
}

/// Installs `uki` as `version`'s entry with `tries` left (whole or not at all:
/// copied under a temporary name, synced, renamed).
pub fn install(esp: &Path, uki: &Path, version: &str, tries: u32) -> Result<String> {
    let dir = esp.join("EFI/Linux");
    let name = uki_name(version, Some(tries));
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(uki, &tmp).with_context(|| format!("copying {} to {} (is the ESP full?)", uki.display(), tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(&name))?;
    sync_dir(&dir)?;
    Ok(name)
}

/// Marks `version`'s entry out of tries, as systemd-boot leaves a version
/// whose every try failed: its trial ended under BIOS, where GRUB (which
/// counts in grubenv) cannot rename it. Returns the new name.
pub fn mark_failed(esp: &Path, version: &str) -> Result<Option<String>> {
    let dir = esp.join("EFI/Linux");
    let Some(e) = entries(esp)?.into_iter().find(|e| e.version == version && e.tries_left.is_some_and(|t| t > 0)) else {
        return Ok(None);
    };
    let done = e.tries_left.unwrap_or(0) + e.tries_done.unwrap_or(0);
    let name = format!("bpi-os_{version}+0-{done}.efi");
    std::fs::rename(dir.join(&e.file), dir.join(&name)).with_context(|| format!("renaming {} to {name}", e.file))?;
    sync_dir(&dir)?;
    Ok(Some(name))
}

/// Marks the running version's entry good: the rename systemd-bless-boot
/// does, done by bpi-health once its checks pass. Returns the new name.
pub fn bless(esp: &Path, version: &str) -> Result<Option<String>> {
    let dir = esp.join("EFI/Linux");
    let Some(e) = entries(esp)?.into_iter().find(|e| e.version == version && e.tries_left.is_some()) else {
        return Ok(None);
    };
    let name = uki_name(version, None);
    std::fs::rename(dir.join(&e.file), dir.join(&name)).with_context(|| format!("renaming {} to {name}", e.file))?;
    sync_dir(&dir)?;
    Ok(Some(name))
}

const LOADER_CONF: &str = "loader/loader.conf";

/// The `default` entry pattern in loader.conf, if one is set.
pub fn default_entry(esp: &Path) -> Option<String> {
    let text = std::fs::read_to_string(esp.join(LOADER_CONF)).ok()?;
    text.lines().find_map(|l| l.strip_prefix("default ").map(|v| v.trim().to_string()))
}

/// Sets (Some) or clears (None: the newest version with tries left boots)
/// the `default` line of loader.conf, keeping its other lines.
pub fn set_default(esp: &Path, entry: Option<&str>) -> Result<()> {
    let path = esp.join(LOADER_CONF);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = loader_conf_with_default(&text, entry);
    if new != text {
        bpi_support::fsmode::write_atomic(&path, new.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn loader_conf_with_default(text: &str, entry: Option<&str>) -> String {
    let mut lines: Vec<String> = text.lines().filter(|l| !l.starts_with("default ") && !l.trim().is_empty()).map(str::to_string).collect();
    if let Some(e) = entry {
        lines.push(format!("default {e}"));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn sync_dir(dir: &Path) -> Result<()> {
    bpi_support::fsmode::sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_count_bless_and_default() {
        let esp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(esp.path().join("EFI/Linux")).unwrap();
        std::fs::create_dir_all(esp.path().join("loader")).unwrap();
        std::fs::write(esp.path().join("loader/loader.conf"), "timeout 0\neditor no\n").unwrap();
        std::fs::write(esp.path().join("EFI/Linux/bpi-os_0.1.0.efi"), b"old").unwrap();
        let uki = esp.path().join("new.efi");
        std::fs::write(&uki, b"new").unwrap();
        assert_eq!(install(esp.path(), &uki, "0.2.0", 3).unwrap(), "bpi-os_0.2.0+3.efi");
        let e = entries(esp.path()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].version.as_str(), e[1].tries_left), ("0.2.0", Some(3)));
        // systemd-boot counts a try by renaming; a healthy boot blesses it.
        std::fs::rename(esp.path().join("EFI/Linux/bpi-os_0.2.0+3.efi"), esp.path().join("EFI/Linux/bpi-os_0.2.0+2-1.efi")).unwrap();
        assert_eq!(bless(esp.path(), "0.2.0").unwrap().as_deref(), Some("bpi-os_0.2.0.efi"));
        assert_eq!(bless(esp.path(), "0.2.0").unwrap(), None);
        assert_eq!(std::fs::read(esp.path().join("EFI/Linux/bpi-os_0.2.0.efi")).unwrap(), b"new");
        // A trial that ended under BIOS: out of tries, as systemd-boot leaves it.
        install(esp.path(), &uki, "0.3.0", 2).unwrap();
        assert_eq!(mark_failed(esp.path(), "0.3.0").unwrap().as_deref(), Some("bpi-os_0.3.0+0-2.efi"));
        assert!(entries(esp.path()).unwrap().iter().any(|e| e.version == "0.3.0" && e.failed()));
        assert_eq!(mark_failed(esp.path(), "0.3.0").unwrap(), None);
        assert_eq!(mark_failed(esp.path(), "0.2.0").unwrap(), None);
        remove_version(esp.path(), "0.3.0").unwrap();
        set_default(esp.path(), Some("bpi-os_0.1.0.efi")).unwrap();
        assert_eq!(default_entry(esp.path()).as_deref(), Some("bpi-os_0.1.0.efi"));
        set_default(esp.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap(), "timeout 0\neditor no\n");
        remove_version(esp.path(), "0.1.0").unwrap();
        assert_eq!(entries(esp.path()).unwrap().len(), 1);
    }
}

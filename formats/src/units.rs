//! The files of units/ (systemd units, the preset, tmpfiles and sysusers
//! snippets, D-Bus policies), embedded so that the one `bpi-os` binary can
//! install them anywhere, and where each goes in a root. The image build and
//! `bpi-os install --root` both install them through [`plan`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// (path under units/, contents). A test checks this is all of units/.
pub const FILES: &[(&str, &str)] = &[
    ("90-bpi-os.preset", include_str!("../../units/90-bpi-os.preset")),
    ("bpi-config.mount", include_str!("../../units/bpi-config.mount")),
    ("bpi-drx-control.service", include_str!("../../units/bpi-drx-control.service")),
    ("bpi-drx-data.service", include_str!("../../units/bpi-drx-data.service")),
    ("bpi-health.service", include_str!("../../units/bpi-health.service")),
    ("bpi-ledger.service", include_str!("../../units/bpi-ledger.service")),
    ("bpi-provision.service", include_str!("../../units/bpi-provision.service")),
    ("bpi-qlock.service", include_str!("../../units/bpi-qlock.service")),
    ("bpi-runtime.mount", include_str!("../../units/bpi-runtime.mount")),
    ("bpi-store-init.service", include_str!("../../units/bpi-store-init.service")),
    ("bpi-store.service", include_str!("../../units/bpi-store.service")),
    ("bpi-sysusers.conf", include_str!("../../units/bpi-sysusers.conf")),
    ("bpi-update.service", include_str!("../../units/bpi-update.service")),
    ("bpi-update.timer", include_str!("../../units/bpi-update.timer")),
    ("dbus/org.bpi.os.Control1.conf", include_str!("../../units/dbus/org.bpi.os.Control1.conf")),
    ("dbus/org.bpi.os.Ledger1.conf", include_str!("../../units/dbus/org.bpi.os.Ledger1.conf")),
    ("dbus/org.bpi.os.QLock1.conf", include_str!("../../units/dbus/org.bpi.os.QLock1.conf")),
    ("tmp.mount", include_str!("../../units/tmp.mount")),
];

/// Where a file of units/ is installed, relative to the root.
pub fn destination(name: &str) -> PathBuf {
    let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or(name);
    let dir = if name.starts_with("dbus/") {
        "usr/share/dbus-1/system.d"
    } else if base.ends_with(".preset") {
        "usr/lib/systemd/system-preset"
    } else if base.ends_with(".conf") && base.contains("tmpfiles") {
        "usr/lib/tmpfiles.d"
    } else if base.ends_with(".conf") && base.contains("sysusers") {
        "usr/lib/sysusers.d"
    } else {
        "usr/lib/systemd/system"
    };
    Path::new(dir).join(base)
}

/// Units a preset file names after `verb` (`enable NAME`, `disable NAME`),
/// wildcards excluded.
pub fn preset_units(text: &str, verb: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(verb).and_then(|r| r.strip_prefix(' ')))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.contains('*'))
        .collect()
}

fn presets(verb: &str) -> Vec<String> {
    FILES.iter().filter(|(n, _)| n.ends_with(".preset")).flat_map(|(_, t)| preset_units(t, verb)).collect()
}

/// Every unit the presets enable.
pub fn enabled() -> Vec<String> {
    presets("enable")
}

/// Units of Debian's packages the presets turn off (packages enable them
/// when they are unpacked).
pub fn disabled() -> Vec<String> {
    presets("disable")
}

/// One file to put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub dest: PathBuf,
    pub contents: &'static str,
}

impl std::fmt::Display for Install {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "install {} (0644)", self.dest.display())
    }
}

/// The files under `root` that are missing or differ. Reads, changes nothing.
pub fn plan(root: &Path) -> Vec<Install> {
    FILES
        .iter()
        .map(|(name, contents)| Install { dest: root.join(destination(name)), contents })
        .filter(|i| std::fs::read_to_string(&i.dest).ok().as_deref() != Some(i.contents))
        .collect()
}

/// Writes the planned files (each atomically: a temporary, then a rename).
pub fn apply(steps: &[Install]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for s in steps {
        let parent = s.dest.parent().context("a unit destination has a parent")?;
        bpi_support::fsmode::create_dirs(parent, 0o755)?;
        let tmp = s.dest.with_extension("bpi-tmp");
        std::fs::write(&tmp, s.contents).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &s.dest).with_context(|| format!("installing {}", s.dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The health check judges every unit the preset enables: it must start
    /// after each of them, or it judges one still starting.
    #[test]
    fn the_health_check_is_ordered_after_every_unit_it_judges() {
        let health = FILES.iter().find(|(n, _)| *n == "bpi-health.service").unwrap().1;
        let after: Vec<&str> = health.lines().filter_map(|l| l.strip_prefix("After=")).flat_map(str::split_whitespace).collect();
        for unit in enabled().iter().filter(|u| u.ends_with(".service") && *u != "bpi-health.service") {
            assert!(after.contains(&unit.as_str()), "bpi-health.service is not ordered after {unit}: After={after:?}");
        }
    }

    fn listed(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                listed(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_file_of_units_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
        let mut on_disk = Vec::new();
        listed(&dir, "", &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, on_disk, "units/ and installer::units::FILES differ: add the new file to FILES");
    }

    #[test]
    fn destinations_and_presets() {
        assert_eq!(destination("bpi-ledger.service"), Path::new("usr/lib/systemd/system/bpi-ledger.service"));
        assert_eq!(destination("dbus/org.bpi.os.Ledger1.conf"), Path::new("usr/share/dbus-1/system.d/org.bpi.os.Ledger1.conf"));
        assert_eq!(destination("bpi-sysusers.conf"), Path::new("usr/lib/sysusers.d/bpi-sysusers.conf"));
        assert_eq!(destination("90-bpi-os.preset"), Path::new("usr/lib/systemd/system-preset/90-bpi-os.preset"));
        let text = "enable a.service\n# x\ndisable b.service\nenable c*.mount\nenabled d\n";
        assert_eq!(preset_units(text, "enable"), vec!["a.service"]);
        assert_eq!(preset_units(text, "disable"), vec!["b.service"]);
        assert!(enabled().contains(&"bpi-ledger.service".to_string()));
        assert!(disabled().contains(&"e2scrub_reap.service".to_string()));
        assert!(!enabled().iter().any(|u| disabled().contains(u)), "a unit both enabled and disabled");
    }

    #[test]
    fn plan_then_apply_then_nothing_left() {
        let root = tempfile::tempdir().unwrap();
        let steps = plan(root.path());
        assert_eq!(steps.len(), FILES.len());
        apply(&steps).unwrap();
        assert!(plan(root.path()).is_empty());
        std::fs::write(root.path().join("usr/lib/systemd/system/tmp.mount"), "changed").unwrap();
        assert_eq!(plan(root.path()).len(), 1);
    }
}

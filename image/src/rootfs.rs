//! The base root file system: Debian by mmdebstrap, pinned to the lock, with
//! the initrd built inside it by dracut; cached as a tarball keyed by
//! everything that goes into it, so a Rust-only change reuses it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_support::{digest, Cmd};

use crate::packages::{self, Deb, Lock};
use crate::sources::Sources;

/// mmdebstrap's own hooks for a merged-/usr tree (Debian's mmdebstrap package).
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// Inputs of the base root file system.
pub struct BaseInputs<'a> {
    /// image/ in the source tree (package list, lock, hooks, dracut module).
    pub image_dir: &'a Path,
    pub sources: &'a Sources,
}

impl BaseInputs<'_> {
    fn hooks(&self) -> PathBuf {
        self.image_dir.join("mmdebstrap")
    }
    fn dracut(&self) -> PathBuf {
        self.image_dir.join("dracut")
    }
    /// dpkg's path-exclude list: what is never unpacked into the root.
    fn dpkg_exclude(&self) -> PathBuf {
        self.image_dir.join("dpkg-exclude.cfg")
    }

    pub fn package_names(&self) -> Result<Vec<String>> {
        let path = self.image_dir.join("packages.txt");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        packages::parse_list(&text)
    }

    pub fn lock(&self) -> Result<Lock> {
        let path = self.image_dir.join("packages.lock");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (create it with `cargo xtask lock`)", path.display()))?;
        Lock::parse(&text)
    }

    /// A key over every input of the base: the cache entry is valid exactly
    /// while this is unchanged.
    pub fn cache_key(&self) -> Result<String> {
        let mut files = vec![self.image_dir.join("packages.txt"), self.image_dir.join("packages.lock"), self.dpkg_exclude()];
        for dir in [self.hooks(), self.dracut(), self.dracut().join("90bpi-data")] {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            entries.retain(|p| p.is_file());
            entries.sort();
            files.extend(entries);
        }
        let mut all = format!("bpi-base-v1\n{}\n", self.sources.mmdebstrap_lines().join("\n"));
        for f in files {
            let rel = f.strip_prefix(self.image_dir).unwrap_or(&f).display().to_string();
            all.push_str(&format!("{rel} {}\n", digest::sha256_file(&f)?));
        }
        Ok(digest::sha256_bytes(all.as_bytes()))
    }
}

/// Where base tarballs are cached: $BPI_CACHE_DIR, else the user's cache dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BPI_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("bpi-os")
}

/// Returns the cached base tarball for these inputs, building it if needed.
/// `scratch` holds the hook's records; the tarball lands in `cache_dir`.
pub fn base_tarball(inputs: &BaseInputs, cache_dir: &Path, scratch: &Path) -> Result<(PathBuf, Vec<Deb>)> {
    let lock = inputs.lock()?;
    let key = inputs.cache_key()?;
    let dir = cache_dir.join("base");
    let tar = dir.join(format!("{key}.tar"));
    let debs_file = dir.join(format!("{key}.debs"));
    if tar.is_file() && debs_file.is_file() {
        bpi_support::progress::log(&format!("reusing cached base {}", tar.display()));
        let debs = serde_json::from_str(&std::fs::read_to_string(&debs_file)?)
            .with_context(|| format!("reading {}; delete it to rebuild", debs_file.display()))?;
        return Ok((tar, debs));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cache dir {}", dir.display()))?;
    std::fs::create_dir_all(scratch)?;
    let prefs = scratch.join("bpi-lock.pref");
    std::fs::write(&prefs, lock.apt_preferences())?;
    let partial = dir.join(format!("{key}.tar.partial"));
    let names = inputs.package_names()?;
    mmdebstrap(inputs, &names, lock.epoch, Some(&prefs), true, scratch, &partial)?;
    let debs = read_records(scratch)?;
    if let Err(e) = lock.check(&debs, &inputs.sources.mirror) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::write(&debs_file, serde_json::to_string(&debs)?)?;
    std::fs::rename(&partial, &tar)?;
    Ok((tar, debs))
}

/// Resolves the package list against the mirror as it is now and returns the
/// lock for it (`cargo xtask lock`).
pub fn make_lock(inputs: &BaseInputs, epoch: u64, scratch: &Path) -> Result<Lock> {
    std::fs::create_dir_all(scratch)?;
    let names = inputs.package_names()?;
    let out = scratch.join("lock-probe.tar");
    mmdebstrap(inputs, &names, epoch, None, false, scratch, &out)?;
    let _ = std::fs::remove_file(&out);
    Ok(Lock { epoch, suite: inputs.sources.suite.clone(), debs: read_records(scratch)? })
}

fn read_records(scratch: &Path) -> Result<Vec<Deb>> {
    let installed = std::fs::read_to_string(scratch.join("installed.txt")).context("the mmdebstrap hook wrote no installed.txt")?;
    let debs = std::fs::read_to_string(scratch.join("debs.txt")).context("the mmdebstrap hook wrote no debs.txt")?;
    packages::join_records(&installed, &debs)
}

fn mmdebstrap(
    inputs: &BaseInputs,
    names: &[String],
    epoch: u64,
    prefs: Option<&Path>,
    with_initrd: bool,
    scratch: &Path,
    out: &Path,
) -> Result<()> {
    let hooks = inputs.hooks();
    let q = |p: &Path| format!("'{}'", p.display());
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--mode=root")
        .arg("--variant=essential")
        .arg("--format=tar")
        .arg(format!("--include={}", names.join(",")))
        // Keep every .deb until the collect hook has hashed it.
        .arg("--skip=download/empty,essential/unlink")
        // A file: mmdebstrap appends it to dpkg's configuration in the chroot.
        .arg(format!("--dpkgopt={}", inputs.dpkg_exclude().display()))
        // The tree is made merged-/usr from the start and gets usr-is-merged,
        // so init-system-helpers' "usrmerge | usr-is-merged" does not pull in
        // usrmerge, the converter, and the 47 MB of perl it needs.
        .arg(format!("--hook-dir={MERGED_USR_HOOKS}"))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // The kernel's postinst would build an initrd with defaults; ours is built by the hook.
        .env("INITRD", "No")
        .echo();
    if let Some(prefs) = prefs {
        cmd = cmd.arg(format!(
            "--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && cp {} \"$1/etc/apt/preferences.d/bpi-lock.pref\"",
            q(prefs)
        ));
    }
    cmd = cmd.arg(format!("--customize-hook=sh {} \"$1\" {}", q(&hooks.join("collect.sh")), q(scratch)));
    if with_initrd {
        cmd = cmd.arg(format!("--customize-hook=sh {} \"$1\" {}", q(&hooks.join("initrd.sh")), q(&inputs.dracut())));
    }
    cmd.arg(&inputs.sources.suite)
        .arg(out)
        .args(inputs.sources.mmdebstrap_lines())
        .run()
        .context("mmdebstrap could not build the root file system")?;
    Ok(())
}

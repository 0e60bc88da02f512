//! Composes the image's root tree: the cached base plus the bpi-os binary,
//! units, rootfs-overlay/, the /bpi layout, os-release, and /var moved aside to
//! seed the data partition on first boot.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_formats::layout::{self, Home};
use bpi_formats::units;
use bpi_support::fsmode::create_dirs;
use bpi_support::Cmd;

/// What goes on top of the base.
pub struct StageInputs<'a> {
    pub base_tar: &'a Path,
    pub binary: &'a Path,
    pub overlay_dir: &'a Path,
    /// The source tree's README.md, LICENSE and docs/, shipped in /usr/share/doc/bpi-os.
    pub source_dir: &'a Path,
    pub version: &'a str,
    pub epoch: u64,
    /// The signed-note verifier key of the update bundles this image trusts.
    pub update_key: &'a str,
    /// Test images only: bpi-drx-data fails to start, so the boot health
    /// check fails (the update test's N+2, which must be rolled back).
    pub break_health: bool,
}

/// Kernel and initrd taken out of /boot for the UKI.
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
}

/// A deterministic, incompressible file whose place in the root file system the
/// build records, so tests can flip a byte of file data and watch verity refuse it.
pub const CANARY_PATH: &str = "usr/share/bpi-os/verity-canary";
pub const CANARY_LEN: usize = 64 * 1024;

pub fn canary_bytes() -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(CANARY_LEN);
    let mut block = sha2::Sha256::digest(b"bpi-os verity canary").to_vec();
    while out.len() < CANARY_LEN {
        out.extend_from_slice(&block);
        block = sha2::Sha256::digest(&block).to_vec();
    }
    out.truncate(CANARY_LEN);
    out
}

pub fn os_release(version: &str) -> String {
    format!(
        "PRETTY_NAME=\"bpi-os {version}\"\nNAME=\"bpi-os\"\nID=bpi-os\nID_LIKE=debian\nVERSION=\"{version}\"\nVERSION_ID={version}\nIMAGE_ID=bpi-os\nIMAGE_VERSION={version}\nHOME_URL=\"https://github.com/bpi-os/bpi-os\"\n"
    )
}

/// Builds the tree in `root` (which must not exist) and returns the boot files,
/// moved to `boot_out`.
pub fn compose(inp: &StageInputs, root: &Path, boot_out: &Path) -> Result<BootFiles> {
    if root.exists() {
        bail!("{} exists; the build removes it first", root.display());
    }
    create_dirs(root, 0o755)?;
    Cmd::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(inp.base_tar)
        .arg("-C")
        .arg(root)
        .run()?;

    let boot = take_boot_files(root, boot_out)?;

    // Nothing of the build host or the package manager's caches stays.
    for rel in ["var/cache/apt", "var/lib/apt/lists", "var/log", "var/cache/ldconfig/aux-cache"] {
        remove_contents(&root.join(rel))?;
    }
    std::fs::write(root.join("etc/machine-id"), b"")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    std::fs::write(root.join("etc/hostname"), b"bpi-os\n")?;
    // openssh-server's postinst made host keys in the build: random bytes in
    // the image, and one key shared by every machine. First boot makes them.
    for e in sorted_entries(&root.join("etc/ssh"))? {
        if e.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ssh_host_")) {
            std::fs::remove_file(&e).with_context(|| format!("removing {}", e.display()))?;
        }
    }
    homes_on_var(root)?;

    install_file(inp.binary, &root.join("usr/bin/bpi-os"), 0o755)?;
    ship_docs(inp.binary, inp.source_dir, root)?;
    write(&root.join("usr/lib/os-release"), os_release(inp.version).as_bytes(), 0o644)?;
    let _ = std::fs::remove_file(root.join("etc/os-release"));
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release"))?;
    write(&root.join(CANARY_PATH), &canary_bytes(), 0o644)?;
    let keys = root.join(bpi_formats::update::KEY_DIRS[0].trim_start_matches('/'));
    create_dirs(&keys, 0o755)?;
    write(&keys.join("build.pub"), format!("{}\n", inp.update_key).as_bytes(), 0o644)?;

    copy_tree(inp.overlay_dir, root)?;
    if inp.break_health {
        write(
            &root.join("usr/lib/systemd/system/bpi-drx-data.service.d/90-test-broken.conf"),
            b"# Built with `cargo xtask build-image --test-break-health`: a test image whose\n# health check must fail.\n[Service]\nExecStartPre=/bin/false\n",
            0o644,
        )?;
    }
    // The same embedded files and destinations `bpi-os install --root` uses.
    units::apply(&units::plan(root))?;
    write(
        &root.join("usr/lib/tmpfiles.d/bpi-layout.conf"),
        layout::tmpfiles_conf(&[Home::Data, Home::Runtime]).as_bytes(),
        0o644,
    )?;
    layout::apply(&layout::plan(root, &[Home::Image])?)?;

    // /var lives on the data partition; the image keeps a copy to seed it.
    let factory = root.join("usr/share/factory");
    create_dirs(&factory, 0o755)?;
    std::fs::rename(root.join("var"), factory.join("var"))?;
    std::fs::create_dir(root.join("var"))?;
    std::fs::set_permissions(root.join("var"), std::fs::Permissions::from_mode(0o755))?;

    // Groups named by units and D-Bus policies exist from the first boot on,
    // with the same ids in every build.
    Cmd::new("systemd-sysusers").arg(format!("--root={}", root.display())).run()?;
    for (verb, names) in [("enable", units::enabled()), ("disable", units::disabled())] {
        if !names.is_empty() {
            Cmd::new("systemctl").arg(format!("--root={}", root.display())).arg(verb).args(&names).run()?;
        }
    }
    clamp_mtimes(root, inp.epoch)?;
    Ok(boot)
}

/// /home and /root become links into /var, which lives on the data
/// partition: the root file system is read-only, and provisioned users,
/// their keys and root's files must persist. Root's skeleton files move along.
fn homes_on_var(root: &Path) -> Result<()> {
    for (dir, target, mode) in [("home", "var/home", 0o755), ("root", "var/roothome", 0o700)] {
        let from = root.join(dir);
        let to = root.join(target);
        create_dirs(&to, mode)?;
        if from.is_dir() && !from.is_symlink() {
            for e in sorted_entries(&from)? {
                std::fs::rename(&e, to.join(e.file_name().expect("entry has a name")))?;
            }
            std::fs::remove_dir(&from).with_context(|| format!("removing {}", from.display()))?;
        }
        std::os::unix::fs::symlink(target, &from)?;
    }
    Ok(())
}

/// The documentation a node carries: README, LICENSE and docs/ under
/// /usr/share/doc/bpi-os, and the man pages and shell completions the binary
/// generates from its own command definition.
fn ship_docs(binary: &Path, source: &Path, root: &Path) -> Result<()> {
    let doc = root.join("usr/share/doc/bpi-os");
    create_dirs(&doc, 0o755)?;
    for f in ["README.md", "LICENSE"] {
        install_file(&source.join(f), &doc.join(f), 0o644)?;
    }
    create_dirs(&doc.join("docs"), 0o755)?;
    copy_tree(&source.join("docs"), &doc.join("docs"))?;
    Cmd::new(binary).arg("generate-docs").arg("--out").arg(root.join("usr/share")).run()?;
    Ok(())
}

fn take_boot_files(root: &Path, out: &Path) -> Result<BootFiles> {
    std::fs::create_dir_all(out)?;
    let boot = root.join("boot");
    let mut kernel = None;
    for e in sorted_entries(&boot)? {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            kernel = Some(v.to_string());
        }
    }
    let kver = kernel.with_context(|| format!("no kernel (vmlinuz-*) in {}", boot.display()))?;
    let files = BootFiles {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
        kernel_version: kver.clone(),
    };
    std::fs::rename(boot.join(format!("vmlinuz-{kver}")), &files.kernel)?;
    std::fs::rename(boot.join(format!("initrd.img-{kver}")), &files.initrd)
        .with_context(|| format!("the base has no initrd.img-{kver}; was it built by the dracut hook?"))?;
    remove_contents(&boot)?;
    Ok(files)
}

pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

fn remove_contents(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for p in sorted_entries(dir)? {
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(p) = dest.parent() {
        create_dirs(p, 0o755)?;
    }
    let _ = std::fs::remove_file(dest);
    std::fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write(dest, &bytes, mode)
}

/// Copies a tree file by file. Modes are git's, not the checkout's (which
/// follow the umask of whoever cloned): 0755 for directories and executable
/// files, 0644 for the rest.
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    for e in sorted_entries(src)? {
        let name = e.file_name().expect("entry has a name");
        let target = dest.join(name);
        if name == "README.md" && src.ends_with("rootfs-overlay") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&e)?;
        if meta.is_dir() {
            create_dirs(&target, 0o755)?;
            copy_tree(&e, &target)?;
        } else if meta.file_type().is_symlink() {
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(std::fs::read_link(&e)?, &target)?;
        } else {
            let mode = if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            install_file(&e, &target, mode)?;
        }
    }
    Ok(())
}

/// Sets every mtime to the build's epoch so file times do not depend on when
/// or where the build ran.
pub fn clamp_mtimes(root: &Path, epoch: u64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(epoch as i64, 0);
    fn walk(p: &Path, t: filetime::FileTime) -> Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), t)?;
            }
        }
        filetime::set_symlink_file_times(p, t, t).with_context(|| format!("setting times of {}", p.display()))
    }
    walk(root, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_is_stable_and_incompressible_looking() {
        let c = canary_bytes();
        assert_eq!(c.len(), CANARY_LEN);
        assert_eq!(c, canary_bytes());
        let distinct: std::collections::HashSet<_> = c.chunks(32).collect();
        assert_eq!(distinct.len(), CANARY_LEN / 32);
    }

    #[test]
    fn os_release_names_version() {
        assert!(os_release("1.2.3").contains("IMAGE_VERSION=1.2.3\n"));
    }

    #[test]
    fn copy_tree_sets_gits_modes_and_keeps_links() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("etc/x")).unwrap();
        write(&src.path().join("etc/x/run.sh"), b"#!/bin/sh\n", 0o700).unwrap();
        write(&src.path().join("etc/x/conf"), b"x\n", 0o600).unwrap();
        std::fs::set_permissions(src.path().join("etc/x"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("run.sh", src.path().join("etc/x/link")).unwrap();
        copy_tree(src.path(), dst.path()).unwrap();
        // A checkout made under umask 077 gives the image the same modes.
        let mode = |p: &str| std::fs::metadata(dst.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/x/run.sh"), 0o755);
        assert_eq!(mode("etc/x/conf"), 0o644);
        assert_eq!(mode("etc/x"), 0o755);
        assert_eq!(std::fs::read_link(dst.path().join("etc/x/link")).unwrap(), Path::new("run.sh"));
        clamp_mtimes(dst.path(), 1000).unwrap();
        let m = std::fs::symlink_metadata(dst.path().join("etc/x/link")).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&m).unix_seconds(), 1000);
    }
}

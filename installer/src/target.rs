//! The disk an install writes to: what it is (stable id, model, size) and
//! everything that makes writing it wrong (the running root is on it, it or a
//! partition is mounted, used as swap, or held by device-mapper or md, it
//! already has partitions). Facts are gathered from /sys and /proc; the
//! decision ([`refusals`]) is pure.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Block,
    /// A regular file (`--allow-file`, for tests).
    File,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// As the operator named it (may be a /dev/disk/by-id link).
    pub given: PathBuf,
    /// The device node or file it resolves to.
    pub path: PathBuf,
    pub kind: Kind,
    pub size: u64,
    /// /dev/disk/by-id names of the disk, most specific first.
    pub ids: Vec<String>,
    pub model: Option<String>,
    /// Why the disk is in use, one reason each; empty when it is free.
    pub in_use: Vec<String>,
    /// The partition table found on it ("GPT" or "MBR"), if any.
    pub table: Option<String>,
}

impl Target {
    /// How the plan names the disk: stable id, model and size, then the node.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(id) = self.ids.first() {
            s.push_str(&format!("/dev/disk/by-id/{id} "));
        }
        if let Some(m) = &self.model {
            s.push_str(&format!("({m}) "));
        }
        s.push_str(&format!("{}, {} ({} bytes)", self.path.display(), human(self.size), self.size));
        if self.kind == Kind::File {
            s.push_str(", a regular file");
        }
        s
    }
}

pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The options that relax checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    pub force: bool,
    pub file: bool,
}

/// Every reason not to write `image_size` bytes to `t`; empty means go.
pub fn refusals(t: &Target, image_size: u64, allow: Allow) -> Vec<String> {
    let mut out = Vec::new();
    if t.size < image_size {
        out.push(format!(
            "{} is {} but the image needs {} ({} bytes)",
            t.path.display(),
            human(t.size),
            human(image_size),
            image_size
        ));
    }
    out.extend(t.in_use.iter().cloned());
    if let Some(table) = &t.table {
        if !allow.force {
            out.push(format!(
                "{} has a {table} partition table; everything on it would be lost (pass --force to overwrite it)",
                t.path.display()
            ));
        }
    }
    out
}

/// Looks at `given` without changing anything.
pub fn inspect(given: &Path, allow: Allow) -> Result<Target> {
    let path = std::fs::canonicalize(given).with_context(|| format!("{} does not exist", given.display()))?;
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    let ft = meta.file_type();
    let (kind, size, in_use, ids, model) = if ft.is_block_device() {
        let sys = sys_dir(meta.rdev())?;
        if sys.join("partition").exists() {
            bail!("{} is a partition; name the whole disk", path.display());
        }
        let sectors: u64 = read_trim(&sys.join("size")).and_then(|s| s.parse().ok()).unwrap_or(0);
        (Kind::Block, sectors * 512, block_in_use(&path, &sys)?, by_id(&path), model(&sys))
    } else if ft.is_file() {
        if !allow.file {
            bail!("{} is a regular file, not a block device (pass --allow-file to write into a file, for tests)", path.display());
        }
        (Kind::File, meta.len(), Vec::new(), Vec::new(), None)
    } else {
        bail!("{} is not a block device", path.display());
    };
    // A disk in use is refused whatever it holds; one we may not even read
    // (a container's device rules) is still named for why it is in use.
    let table = match read_table(&path) {
        Ok(t) => t,
        Err(_) if !in_use.is_empty() => None,
        Err(e) => return Err(e),
    };
    Ok(Target { given: given.to_path_buf(), path, kind, size, ids, model, in_use, table })
}

/// The partition table in the first two sectors, if any.
pub fn read_table(path: &Path) -> Result<Option<String>> {
    let mut head = [0u8; 1024];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
    Ok(table_kind(&head[..n]).map(str::to_string))
}

pub fn table_kind(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 520 && &head[512..520] == b"EFI PART" {
        return Some("GPT");
    }
    let mbr = head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa;
    let has_entry = mbr && (0..4).any(|i| head[446 + 16 * i + 4] != 0);
    has_entry.then_some("MBR")
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn dev_numbers(rdev: u64) -> (u64, u64) {
    // glibc's major()/minor() encoding.
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    (major, minor)
}

fn sys_dir(rdev: u64) -> Result<PathBuf> {
    let (ma, mi) = dev_numbers(rdev);
    let link = PathBuf::from(format!("/sys/dev/block/{ma}:{mi}"));
    std::fs::canonicalize(&link).with_context(|| format!("{} is missing: is /sys mounted?", link.display()))
}

fn name_of(sys: &Path) -> String {
    sys.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The disk and its partitions: (name, "major:minor", sysfs dir).
fn members(sys: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let mut push = |dir: &Path| {
        if let Some(dev) = read_trim(&dir.join("dev")) {
            out.push((name_of(dir), dev, dir.to_path_buf()));
        }
    };
    push(sys);
    if let Ok(rd) = std::fs::read_dir(sys) {
        let mut parts: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("partition").exists()).collect();
        parts.sort();
        for p in parts {
            push(&p);
        }
    }
    out
}

/// The whole disks under a block device "major:minor", through dm/md slaves.
fn whole_disks(dev: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(sys) = std::fs::canonicalize(format!("/sys/dev/block/{dev}")) else { return out };
    let slaves: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves")).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    if !slaves.is_empty() && depth < 8 {
        for s in slaves {
            if let Some(d) = std::fs::canonicalize(&s).ok().and_then(|p| read_trim(&p.join("dev"))) {
                out.extend(whole_disks(&d, depth + 1));
            }
        }
    } else if sys.join("partition").exists() {
        if let Some(parent) = sys.parent() {
            out.insert(name_of(parent));
        }
    } else {
        out.insert(name_of(&sys));
    }
    out
}

/// mountinfo lines as (major:minor, mount point).
fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.to_string(), f.get(4)?.replace("\\040", " ")))
        })
        .collect()
}

fn block_in_use(path: &Path, sys: &Path) -> Result<Vec<String>> {
    let mut why = Vec::new();
    let disk = name_of(sys);
    let members = members(sys);

    if let Some((root_dev, _)) = mounts().into_iter().rfind(|(_, mp)| mp == "/") {
        if whole_disks(&root_dev, 0).contains(&disk) {
            why.push(format!("{} holds the running root file system", path.display()));
        }
    }
    for (dev, mp) in mounts() {
        if let Some((name, _, _)) = members.iter().find(|(_, d, _)| *d == dev) {
            why.push(format!("{name} is mounted at {mp}"));
        }
    }
    for (name, _, dir) in &members {
        let holders: Vec<String> =
            std::fs::read_dir(dir.join("holders")).map(|r| r.flatten().map(|e| name_of(&e.path())).collect()).unwrap_or_default();
        for h in holders {
            let what = if h.starts_with("dm-") {
                read_trim(&PathBuf::from(format!("/sys/block/{h}/dm/name")))
                    .map_or("device-mapper".to_string(), |n| format!("device-mapper {n}: LVM, crypt or verity"))
            } else if h.starts_with("md") {
                "an md RAID array".to_string()
            } else {
                "another device".to_string()
            };
            why.push(format!("{name} is in use by {h} ({what})"));
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        let Some(file) = line.split_whitespace().next() else { continue };
        let Ok(meta) = std::fs::metadata(file) else { continue };
        if meta.file_type().is_block_device() {
            let (ma, mi) = dev_numbers(meta.rdev());
            let dev = format!("{ma}:{mi}");
            if let Some((name, _, _)) = members.iter().find(|(_, d, _)| *d == dev) {
                why.push(format!("{name} is in use as swap"));
            }
        }
    }
    Ok(why)
}

fn by_id(dev: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir("/dev/disk/by-id")
        .map(|r| {
            r.flatten()
                .filter(|e| std::fs::canonicalize(e.path()).ok().as_deref() == Some(dev))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    // wwn- and nvme-eui names are the most stable; then the longest (model+serial).
    ids.sort_by_key(|i| (!(i.starts_with("wwn-") || i.starts_with("nvme-eui")), std::cmp::Reverse(i.len())));
    ids
}

fn model(sys: &Path) -> Option<String> {
    let vendor = read_trim(&sys.join("device/vendor")).filter(|s| !s.is_empty());
    let model = read_trim(&sys.join("device/model")).filter(|s| !s.is_empty());
    match (vendor, model) {
        (Some(v), Some(m)) => Some(format!("{v} {m}")),
        (v, m) => m.or(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(size: u64) -> Target {
        Target {
            given: "/dev/disk/by-id/ata-X".into(),
            path: "/dev/sdx".into(),
            kind: Kind::Block,
            size,
            ids: vec!["ata-X".into()],
            model: Some("ACME 1".into()),
            in_use: Vec::new(),
            table: None,
        }
    }

    #[test]
    fn each_reason_is_named() {
        assert!(refusals(&target(2 << 30), 1 << 30, Allow::default()).is_empty());
        let small = refusals(&target(1 << 20), 1 << 30, Allow::default());
        assert!(small[0].contains("needs 1.0 GiB"), "{small:?}");
        let mut t = target(2 << 30);
        t.table = Some("GPT".into());
        assert!(refusals(&t, 1, Allow::default())[0].contains("--force"));
        assert!(refusals(&t, 1, Allow { force: true, file: false }).is_empty());
        t.in_use.push("sdx1 is mounted at /mnt".into());
        assert_eq!(refusals(&t, 1, Allow { force: true, file: false }), vec!["sdx1 is mounted at /mnt".to_string()]);
        assert!(target(1 << 30).describe().starts_with("/dev/disk/by-id/ata-X (ACME 1) /dev/sdx, 1.0 GiB"));
    }

    #[test]
    fn tables_are_recognised() {
        let mut head = vec![0u8; 1024];
        assert_eq!(table_kind(&head), None);
        head[510] = 0x55;
        head[511] = 0xaa;
        assert_eq!(table_kind(&head), None, "a boot signature without entries is no table");
        head[446 + 4] = 0x83;
        assert_eq!(table_kind(&head), Some("MBR"));
        head[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(table_kind(&head), Some("GPT"));
    }

    #[test]
    fn the_running_root_disk_is_found() {
        // Whatever this machine boots from, inspecting that disk must refuse it.
        let Some((root_dev, _)) = mounts().into_iter().rfind(|(_, mp)| mp == "/") else {
            return bpi_support::skip::skip("no mount of / in /proc/self/mountinfo");
        };
        let Some(disk) = whole_disks(&root_dev, 0).into_iter().next() else {
            return bpi_support::skip::skip(&format!("/ is on {root_dev}, not on a disk"));
        };
        let node = PathBuf::from(format!("/dev/{disk}"));
        if !node.exists() {
            return bpi_support::skip::skip(&format!("the root disk {disk} has no node in /dev here"));
        }
        let t = inspect(&node, Allow::default()).unwrap();
        assert!(t.in_use.iter().any(|w| w.contains("running root")), "{:?}", t.in_use);
    }
}

//! What each Debian package puts in the root file system, in bytes, from
//! dpkg's own file lists: the manifest records it, and the build's size
//! budget names the biggest contributors when the root outgrows it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};

/// The root's size budget: the compressed erofs root file system may not be
/// larger. It only ever goes down (docs/image.md, "Size budget"); the goal
/// is 150 MB with every package the open issues need.
pub const ROOT_BUDGET_BYTES: u64 = 180_000_000;

/// dpkg's database inside a staged root (/var moves to the factory copy).
pub const DPKG_INFO: &str = "usr/share/factory/var/lib/dpkg/info";

/// Bytes of regular files in `root` that each package's `info/*.list`
/// names, biggest first (then by name). A file two packages list counts
/// once, for the first in name order; files dpkg was told not to unpack
/// (path-exclude) are not there and count nothing.
pub fn package_sizes(root: &Path) -> Result<Vec<(String, u64)>> {
    let info = root.join(DPKG_INFO);
    let mut lists = crate::stage::sorted_entries(&info)?;
    lists.retain(|p| p.extension().is_some_and(|x| x == "list"));
    let mut seen = HashSet::new();
    let mut sizes = BTreeMap::new();
    for list in lists {
        let stem = list.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let name = stem.split(':').next().unwrap_or(stem).to_string();
        let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        let mut bytes = 0;
        for line in text.lines() {
            let rel = merged_usr(line.trim_start_matches('/'));
            if rel.is_empty() || !seen.insert(rel.clone()) {
                continue;
            }
            if let Ok(m) = std::fs::symlink_metadata(root.join(&rel)) {
                if m.is_file() {
                    bytes += m.len();
                }
            }
        }
        *sizes.entry(name).or_insert(0) += bytes;
    }
    let mut out: Vec<(String, u64)> = sizes.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Debian 12's root is merged-/usr (/lib is a link to usr/lib), while
/// packages list their files under the old paths: look them up where they are.
fn merged_usr(rel: &str) -> String {
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if rel == top || rel.starts_with(&format!("{top}/")) {
            return format!("usr/{rel}");
        }
    }
    rel.to_string()
}

/// Fails when the root file system is over the budget, naming the
/// packages that put the most in it.
pub fn check_budget(root_fs_bytes: u64, budget: u64, sizes: &[(String, u64)]) -> Result<()> {
    if root_fs_bytes <= budget {
        return Ok(());
    }
    let top: Vec<String> = sizes.iter().take(10).map(|(n, b)| format!("{n} {:.1} MB", *b as f64 / 1e6)).collect();
    anyhow::bail!(
        "the root file system is {:.1} MB, over its budget of {:.1} MB (image/src/sizes.rs); uncompressed, the biggest packages in it are: {}",
        root_fs_bytes as f64 / 1e6,
        budget as f64 / 1e6,
        top.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_come_from_dpkg_lists_under_merged_usr_once_per_file() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let info = root.join(DPKG_INFO);
        std::fs::create_dir_all(&info).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/modules")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc/a")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::write(root.join("usr/lib/modules/x.ko"), vec![0u8; 3000]).unwrap();
        std::fs::write(root.join("usr/share/doc/a/copyright"), vec![0u8; 10]).unwrap();
        std::fs::write(root.join("usr/lib/shared"), vec![0u8; 7]).unwrap();
        // "a" lists a module under /lib, a directory, an excluded (absent) file and a shared one.
        std::fs::write(info.join("a:amd64.list"), "/.\n/lib\n/lib/modules\n/lib/modules/x.ko\n/usr/share/doc/a/copyright\n/usr/share/man/man1/a.1.gz\n/usr/lib/shared\n").unwrap();
        std::fs::write(info.join("b.list"), "/usr/lib/shared\n").unwrap();
        std::fs::write(info.join("b.md5sums"), "not a list\n").unwrap();
        let s = package_sizes(root).unwrap();
        assert_eq!(s, vec![("a".to_string(), 3017), ("b".to_string(), 0)]);

        assert!(check_budget(3017, 3017, &s).is_ok());
        let e = check_budget(5_000_000, 4_000_000, &s).unwrap_err().to_string();
        assert!(e.contains("5.0 MB, over its budget of 4.0 MB") && e.contains("a 0.0 MB, b 0.0 MB"), "{e}");
    }
}

//! Explains why two builds differ: the first differing partition (or the
//! partition tables) and, for the root, the first differing file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::manifest::Manifest;

/// What [`first_differing_partition`] calls the root partition.
pub const ROOT: &str = "root";

/// The first partition whose bytes differ, or None when they all match.
/// The root is named first when it differs: its hash is on the UKI's command
/// line and names the verity partitions, so the others differ because of it.
pub fn first_differing_partition(a: &Manifest, b: &Manifest) -> Option<String> {
    let root = |m: &Manifest| m.root_partition().map(|p| p.sha256.clone());
    if root(a) != root(b) {
        return Some(ROOT.into());
    }
    for (pa, pb) in a.partitions.iter().zip(&b.partitions) {
        if pa.name != pb.name || pa.offset != pb.offset || pa.size != pb.size || pa.sha256 != pb.sha256 {
            return Some(pa.name.clone());
        }
    }
    if a.partitions.len() != b.partitions.len() {
        return Some("partition count".into());
    }
    if a.disk.sha256 != b.disk.sha256 {
        return Some("GPT headers".into());
    }
    None
}

/// The first path (in sorted walk order) whose type, mode, owner, link target
/// or contents differ between two trees.
pub fn first_differing_file(a: &Path, b: &Path) -> Result<Option<PathBuf>> {
    walk(a, b, Path::new(""))
}

fn walk(a_root: &Path, b_root: &Path, rel: &Path) -> Result<Option<PathBuf>> {
    let (a, b) = (a_root.join(rel), b_root.join(rel));
    let (ma, mb) = match (std::fs::symlink_metadata(&a), std::fs::symlink_metadata(&b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        _ => return Ok(Some(rel.to_path_buf())),
    };
    if ma.mode() != mb.mode() || ma.uid() != mb.uid() || ma.gid() != mb.gid() {
        return Ok(Some(rel.to_path_buf()));
    }
    if ma.file_type().is_symlink() {
        return Ok((std::fs::read_link(&a)? != std::fs::read_link(&b)?).then(|| rel.to_path_buf()));
    }
    if ma.is_file() {
        let same = ma.len() == mb.len() && std::fs::read(&a)? == std::fs::read(&b)?;
        return Ok((!same).then(|| rel.to_path_buf()));
    }
    if ma.is_dir() {
        let names = |d: &Path| -> Result<Vec<std::ffi::OsString>> {
            let mut v: Vec<_> = std::fs::read_dir(d)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
            v.sort();
            Ok(v)
        };
        let (na, nb) = (names(&a)?, names(&b)?);
        let mut all: Vec<_> = na.iter().chain(nb.iter()).cloned().collect();
        all.sort();
        all.dedup();
        for n in all {
            if let Some(p) = walk(a_root, b_root, &rel.join(n))? {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_root_is_named_before_the_esp_that_carries_its_hash() {
        let part = |name: &str, sha: &str| crate::manifest::PartitionInfo {
            name: name.into(),
            type_guid: String::new(),
            guid: String::new(),
            offset: 0,
            size: 1,
            sha256: sha.into(),
        };
        let manifest = |esp: &str, root: &str| Manifest {
            partitions: vec![part("bpi-esp", esp), part("bpi-root_0", root)],
            ..serde_json::from_str(MINIMAL).unwrap()
        };
        assert_eq!(first_differing_partition(&manifest("e", "r"), &manifest("e", "r")), None);
        assert_eq!(first_differing_partition(&manifest("e", "r"), &manifest("E", "R")).as_deref(), Some(ROOT));
        assert_eq!(first_differing_partition(&manifest("e", "r"), &manifest("E", "r")).as_deref(), Some("bpi-esp"));
    }

    const MINIMAL: &str = r#"{"name":"bpi-os","version":"0","architecture":"x86_64","source_date_epoch":0,"kernel":"k",
        "root_hash":"h","cmdline":"c","disk":{"guid":"g","size":0,"sha256":"d"},"partitions":[],
        "verity_canary":{"path":"/p","root_offset":0},"packages":[]}"#;

    #[test]
    fn names_the_first_changed_file() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [&a, &b] {
            std::fs::create_dir_all(d.path().join("etc")).unwrap();
            std::fs::write(d.path().join("etc/a"), b"same").unwrap();
        }
        assert_eq!(first_differing_file(a.path(), b.path()).unwrap(), None);
        std::fs::write(b.path().join("etc/b"), b"new").unwrap();
        assert_eq!(first_differing_file(a.path(), b.path()).unwrap(), Some(PathBuf::from("etc/b")));
        std::fs::write(b.path().join("etc/a"), b"diff").unwrap();
        assert_eq!(first_differing_file(a.path(), b.path()).unwrap(), Some(PathBuf::from("etc/a")));
    }
}

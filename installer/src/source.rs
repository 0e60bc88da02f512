//! The image an install writes: `bpi-os.raw` with its `SHA256SUMS` and
//! `manifest.json` beside it (the outputs of `cargo xtask build-image`).
//! Nothing is written anywhere before all three agree and the image is for
//! this machine's architecture.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use bpi_formats::gpt;
use bpi_formats::manifest::Manifest;
use bpi_support::Steps;
use sha2::{Digest, Sha256};

pub const RAW: &str = "bpi-os.raw";
pub const SUMS: &str = "SHA256SUMS";
pub const MANIFEST: &str = "manifest.json";

/// An image whose checksum, manifest and partition table were checked.
#[derive(Debug, Clone)]
pub struct Source {
    pub raw: PathBuf,
    pub manifest: Manifest,
    pub size: u64,
    pub sha256: String,
    /// The first [`gpt::HEAD_BYTES`] of the image (MBR, GPT header, entries).
    pub head: Vec<u8>,
    /// The image, open: what was hashed is what the install reads and writes
    /// (a file moved over `raw` after the check is not seen).
    pub file: Arc<File>,
}

/// The most SHA256SUMS may be: a few lines.
const SUMS_MAX: u64 = 64 << 10;

/// The directory and raw file named by `path` (either may be given).
pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let meta = std::fs::metadata(path).with_context(|| format!("the image {} cannot be read", path.display()))?;
    let (dir, raw) = if meta.is_dir() {
        (path.to_path_buf(), path.join(RAW))
    } else {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
    };
    ensure!(raw.is_file(), "{} is not there: --image names bpi-os.raw or the directory holding it", raw.display());
    Ok((dir, raw))
}

/// The sha256 that SHA256SUMS gives for `name`.
pub fn listed_sum(sums: &str, name: &str) -> Option<String> {
    sums.lines().find_map(|l| {
        let (hash, file) = l.split_once("  ").or_else(|| l.split_once(" *"))?;
        (file.trim() == name && hash.len() == 64).then(|| hash.to_ascii_lowercase())
    })
}

/// The architecture name the manifest uses for this machine.
pub fn machine_arch() -> &'static str {
    std::env::consts::ARCH
}

/// Checks an image before anything is written: the raw file's sha256 against
/// SHA256SUMS and the manifest, its size, its architecture and its GPT.
pub fn verify(path: &Path, steps: &Steps) -> Result<Source> {
    use bpi_support::fsmode::{open_regular, read_small};
    let (dir, raw) = locate(path)?;
    let sums_path = dir.join(SUMS);
    let sums = read_small(&sums_path, SUMS_MAX)
        .with_context(|| format!("{} is missing or unreadable; an image is only written with its checksums", sums_path.display()))?;
    let sums = String::from_utf8(sums).with_context(|| format!("{} is not text", sums_path.display()))?;
    let name = raw.file_name().and_then(|n| n.to_str()).unwrap_or(RAW);
    let listed = listed_sum(&sums, name).with_context(|| format!("{} lists no checksum for {name}", sums_path.display()))?;
    // The manifest is bound to the checksums: it must be listed, and the bytes
    // hashed are the bytes parsed.
    let manifest_path = dir.join(MANIFEST);
    let want = listed_sum(&sums, MANIFEST)
        .with_context(|| format!("{} lists no checksum for {MANIFEST}; the image, its manifest and its checksums are checked together", sums_path.display()))?;
    let manifest_bytes = read_small(&manifest_path, Manifest::MAX_BYTES).with_context(|| format!("reading {}", manifest_path.display()))?;
    ensure!(
        bpi_support::digest::sha256_bytes(&manifest_bytes) == want,
        "{} does not match {}: it was altered or is from another build",
        manifest_path.display(),
        sums_path.display()
    );
    let manifest = Manifest::parse(&manifest_bytes, &manifest_path.display().to_string())?;
    ensure!(
        manifest.architecture == machine_arch(),
        "the image is for {}, this machine is {}",
        manifest.architecture,
        machine_arch()
    );
    let file = open_regular(&raw).with_context(|| format!("opening {}", raw.display()))?;
    let size = file.metadata().with_context(|| format!("reading {}", raw.display()))?.len();
    ensure!(
        size == manifest.disk.size,
        "{} is {size} bytes but the manifest says {}: the image is truncated or not this manifest's",
        raw.display(),
        manifest.disk.size
    );
    let sha256 = hash_with_progress(&file, &raw, size, steps)?;
    if sha256 != listed {
        bail!("{} has sha256 {sha256}, but {} says {listed}: the image is damaged or altered", raw.display(), sums_path.display());
    }
    ensure!(
        sha256 == manifest.disk.sha256,
        "{} matches SHA256SUMS but not the manifest ({}); they are from different builds",
        raw.display(),
        manifest.disk.sha256
    );
    let mut head = vec![0u8; gpt::HEAD_BYTES as usize];
    file.read_exact_at(&mut head, 0).with_context(|| format!("reading the partition table of {}", raw.display()))?;
    let (_, parts) = gpt::parse_primary(&head).with_context(|| format!("{} has no valid GPT", raw.display()))?;
    for p in &manifest.partitions {
        ensure!(
            parts.iter().any(|q| q.name == p.name && q.offset() == p.offset && q.guid == p.guid),
            "partition {} of the manifest is not in the image's GPT",
            p.name
        );
    }
    Ok(Source { raw, manifest, size, sha256, head, file: Arc::new(file) })
}

fn hash_with_progress(file: &File, path: &Path, size: u64, steps: &Steps) -> Result<String> {
    let mut progress = steps.bytes(&format!("checking {}", path.display()), size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        progress.add(n as u64);
    }
    progress.finish();
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_read_in_both_coreutils_forms() {
        let a = "a".repeat(64);
        let sums = format!("{a}  bpi-os.raw\n{}  manifest.json\n", "b".repeat(64));
        assert_eq!(listed_sum(&sums, "bpi-os.raw"), Some(a.clone()));
        assert_eq!(listed_sum(&format!("{a} *bpi-os.raw\n"), "bpi-os.raw"), Some(a));
        assert_eq!(listed_sum(&sums, "other.raw"), None);
        assert_eq!(listed_sum("short  bpi-os.raw", "bpi-os.raw"), None);
    }
}

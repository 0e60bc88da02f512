//! The read-only root: erofs from the staged tree, then a dm-verity hash tree
//! over it, both built from files with fixed UUIDs and salt.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bpi_support::Cmd;

pub const BLOCK: u64 = 4096;

/// Builds the erofs image. Timestamps come from the epoch, the UUID is fixed.
pub fn make_erofs(tree: &Path, out: &Path, epoch: u64, uuid: &str) -> Result<()> {
    let _ = std::fs::remove_file(out);
    Cmd::new("mkfs.erofs")
        .arg("-zlz4hc")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg("--quiet")
        .arg(out)
        .arg(tree)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()
        .context("mkfs.erofs could not build the root file system image")?;
    // Pad to whole verity blocks.
    let len = std::fs::metadata(out)?.len();
    let f = std::fs::OpenOptions::new().write(true).open(out)?;
    f.set_len(len.div_ceil(BLOCK) * BLOCK)?;
    Ok(())
}

/// Formats the verity hash tree for `data` into `hash` and returns the root hash.
pub fn format(data: &Path, hash: &Path, salt: &str, uuid: &str) -> Result<String> {
    let _ = std::fs::remove_file(hash);
    let out = Cmd::new("veritysetup")
        .arg("format")
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={uuid}"))
        .arg(format!("--data-block-size={BLOCK}"))
        .arg(format!("--hash-block-size={BLOCK}"))
        .arg(data)
        .arg(hash)
        .output()
        .context("veritysetup could not format the hash tree")?;
    parse_root_hash(&out)
}

pub fn parse_root_hash(out: &str) -> Result<String> {
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("Root hash:") {
            let h = h.trim();
            if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(h.to_lowercase());
            }
        }
    }
    bail!("veritysetup printed no root hash:\n{out}")
}

/// Checks the data against the hash tree and root hash (no device needed).
pub fn verify(data: &Path, hash: &Path, root_hash: &str) -> Result<()> {
    Cmd::new("veritysetup")
        .arg("verify")
        .arg(data)
        .arg(hash)
        .arg(root_hash)
        .run()
        .context("the root file system does not match its verity hash tree")?;
    Ok(())
}

/// Offset of `needle` in a file, searched in 1 MiB windows.
pub fn find_in_file(path: &Path, needle: &[u8]) -> Result<Option<u64>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; (1 << 20) + needle.len()];
    let mut carried = 0usize;
    let mut base = 0u64;
    loop {
        let n = f.read(&mut buf[carried..])?;
        if n == 0 {
            return Ok(None);
        }
        let have = carried + n;
        if let Some(i) = buf[..have].windows(needle.len()).position(|w| w == needle) {
            return Ok(Some(base + i as u64));
        }
        let keep = (needle.len() - 1).min(have);
        buf.copy_within(have - keep..have, 0);
        base += (have - keep) as u64;
        carried = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hash_is_parsed() {
        let out = "VERITY header information for x\nSalt:            00\nRoot hash:      \tAB2c0000000000000000000000000000000000000000000000000000000000ff\n";
        assert_eq!(parse_root_hash(out).unwrap(), "ab2c0000000000000000000000000000000000000000000000000000000000ff");
        assert!(parse_root_hash("nothing").is_err());
    }

    #[test]
    fn finds_needles_across_windows() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; (1 << 20) + 10];
        data[(1 << 20) - 2..(1 << 20) + 2].copy_from_slice(b"WXYZ");
        std::fs::write(tmp.path(), &data).unwrap();
        assert_eq!(find_in_file(tmp.path(), b"WXYZ").unwrap(), Some((1 << 20) - 2));
        assert_eq!(find_in_file(tmp.path(), b"nope").unwrap(), None);
    }

    #[test]
    fn verity_round_trip_and_tamper() {
        if !bpi_support::skip::needs_program("veritysetup", "cryptsetup-bin") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let hash = dir.path().join("hash");
        std::fs::write(&data, vec![7u8; 64 * 4096]).unwrap();
        let salt = "00".repeat(32);
        let uuid = "11111111-2222-4333-8444-555555555555";
        let h1 = format(&data, &hash, &salt, uuid).unwrap();
        let h2 = format(&data, &dir.path().join("hash2"), &salt, uuid).unwrap();
        assert_eq!(h1, h2, "same data and salt give the same root hash");
        assert_eq!(std::fs::read(&hash).unwrap(), std::fs::read(dir.path().join("hash2")).unwrap());
        verify(&data, &hash, &h1).unwrap();
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[5 * 4096 + 3] ^= 1;
        std::fs::write(&data, &bytes).unwrap();
        assert!(verify(&data, &hash, &h1).is_err());
    }
}

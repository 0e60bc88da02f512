//! SHA-256 of files and byte ranges, streamed so large images never sit in memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a whole file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    sha256_range(path, 0, len)
}

/// Hex SHA-256 of `len` bytes of a file starting at `offset`.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f
            .read(&mut buf[..want])
            .with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(n > 0, "{} ended {left} bytes early", path.display());
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_range() {
        let dir = std::env::temp_dir().join(format!("bpi-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"xxabcxx").unwrap();
        assert_eq!(
            sha256_range(&p, 2, 3).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_bytes(b"abc"), sha256_range(&p, 2, 3).unwrap());
        assert!(sha256_range(&p, 5, 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! objcopy stamps the PE header of the unified kernel image with the time it
//! ran (and ignores SOURCE_DATE_EPOCH), so two builds differ in two fields.
//! This sets the stamp to the build's epoch and recomputes the PE checksum.

use anyhow::{ensure, Context, Result};

/// Offset of the COFF header's TimeDateStamp from the "PE\0\0" signature.
const TIMESTAMP: usize = 8;
/// Offset of the optional header's CheckSum from the signature (4 + 20 + 64).
const CHECKSUM: usize = 88;

fn pe_offset(image: &[u8]) -> Result<usize> {
    ensure!(image.len() > 0x40 && &image[..2] == b"MZ", "not a PE image (no MZ header)");
    let pe = u32::from_le_bytes(image[0x3c..0x40].try_into()?) as usize;
    ensure!(
        image.len() >= pe + CHECKSUM + 4 && &image[pe..pe + 4] == b"PE\0\0",
        "not a PE image (no PE signature at {pe:#x})"
    );
    Ok(pe)
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file with
/// the checksum field taken as zero, plus the file's length.
pub fn checksum(image: &[u8]) -> Result<u32> {
    let field = pe_offset(image)? + CHECKSUM;
    let mut sum: u64 = 0;
    for (i, pair) in image.chunks(2).enumerate() {
        let at = i * 2;
        if at >= field && at < field + 4 {
            continue;
        }
        let word = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u64;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    Ok((sum as u32).wrapping_add(image.len() as u32))
}

/// Sets the PE timestamp to `epoch` and fixes the checksum. Refuses to touch a
/// file whose existing checksum this code does not reproduce.
pub fn set_timestamp(path: &std::path::Path, epoch: u64) -> Result<()> {
    let mut image = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pe = pe_offset(&image)?;
    let stored = u32::from_le_bytes(image[pe + CHECKSUM..pe + CHECKSUM + 4].try_into()?);
    if stored != 0 {
        let ours = checksum(&image)?;
        ensure!(ours == stored, "{}: PE checksum {stored:#x} is not what bpi-os computes ({ours:#x})", path.display());
    }
    let stamp = u32::try_from(epoch).context("epoch does not fit a PE timestamp")?;
    image[pe + TIMESTAMP..pe + TIMESTAMP + 4].copy_from_slice(&stamp.to_le_bytes());
    if stored != 0 {
        let sum = checksum(&image)?;
        image[pe + CHECKSUM..pe + CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    }
    std::fs::write(path, image).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal MZ/PE header with room for the optional header's checksum.
    fn tiny_pe() -> Vec<u8> {
        let mut img = vec![0u8; 0x200];
        img[..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        img[0x80..0x84].copy_from_slice(b"PE\0\0");
        img[0x150] = 0xab;
        img
    }

    #[test]
    fn stamp_and_checksum_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.efi");
        let mut img = tiny_pe();
        let sum = checksum(&img).unwrap();
        img[0x80 + CHECKSUM..0x80 + CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        set_timestamp(&p, 1_795_305_600).unwrap();
        let out = std::fs::read(&p).unwrap();
        assert_eq!(u32::from_le_bytes(out[0x88..0x8c].try_into().unwrap()), 1_795_305_600);
        let stored = u32::from_le_bytes(out[0x80 + CHECKSUM..0x80 + CHECKSUM + 4].try_into().unwrap());
        assert_eq!(stored, checksum(&out).unwrap());
        assert_ne!(stored, sum, "the checksum follows the new timestamp");
    }

    #[test]
    fn a_wrong_stored_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.efi");
        let mut img = tiny_pe();
        img[0x80 + CHECKSUM] = 1;
        std::fs::write(&p, &img).unwrap();
        assert!(set_timestamp(&p, 1).unwrap_err().to_string().contains("PE checksum"));
        assert_eq!(std::fs::read(&p).unwrap(), img, "nothing written");
    }

    #[test]
    fn not_pe_is_an_error() {
        assert!(checksum(b"hello world, this is not a PE file at all, not even close......").is_err());
    }

    /// objcopy's own checksum on systemd's stub agrees with ours (host tier).
    #[test]
    fn agrees_with_objcopy() {
        let stub = std::path::Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        if !stub.exists() {
            return bpi_support::skip::skip("systemd-boot-efi's stub is not installed (`cargo xtask test` installs it)");
        }
        if !bpi_support::skip::needs_program("objcopy", "binutils") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("u.efi");
        bpi_support::Cmd::new("objcopy")
            .arg("--add-section=.osrel=/etc/os-release")
            .arg("--change-section-vma=.osrel=0x20000")
            .arg(stub)
            .arg(&out)
            .run()
            .unwrap();
        let img = std::fs::read(&out).unwrap();
        let pe = pe_offset(&img).unwrap();
        let stored = u32::from_le_bytes(img[pe + CHECKSUM..pe + CHECKSUM + 4].try_into().unwrap());
        assert_ne!(stored, 0, "objcopy wrote no checksum");
        assert_eq!(checksum(&img).unwrap(), stored);
    }
}

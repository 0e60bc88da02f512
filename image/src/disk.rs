//! Assembles the disk image by offsets: partition contents copied into place
//! (zero blocks skipped, so the file stays sparse), then the GPT written last.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::gpt::{self, Partition};

/// One partition's contents and table entry.
pub struct Part<'a> {
    pub entry: Partition,
    pub contents: &'a Path,
}

/// `boot_code`: the protective MBR's first 440 bytes (GRUB's boot sector).
pub fn assemble(out: &Path, disk_guid: &str, parts: &[Part], disk_size: u64, boot_code: Option<&[u8; gpt::MBR_CODE_BYTES]>) -> Result<()> {
    let entries: Vec<Partition> = parts.iter().map(|p| p.entry.clone()).collect();
    let mut tables = gpt::tables(disk_guid, &entries, disk_size)?;
    if let Some(code) = boot_code {
        tables.primary[..gpt::MBR_CODE_BYTES].copy_from_slice(code);
    }
    let _ = std::fs::remove_file(out);
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(disk_size)?;
    for p in parts {
        let len = std::fs::metadata(p.contents)?.len();
        anyhow::ensure!(
            len <= p.entry.size(),
            "{} ({len} bytes) does not fit partition {} ({} bytes)",
            p.contents.display(),
            p.entry.name,
            p.entry.size()
        );
        copy_sparse(p.contents, &f, p.entry.offset())?;
    }
    f.write_all_at(&tables.backup, tables.backup_offset)?;
    f.write_all_at(&tables.primary, 0)?;
    f.sync_all()?;
    Ok(())
}

fn copy_sparse(src: &Path, dest: &File, offset: u64) -> Result<()> {
    let mut r = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        for (i, chunk) in buf[..filled].chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                dest.write_all_at(chunk, at + (i * 4096) as u64)?;
            }
        }
        at += filled as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{derived_guid, types, SECTOR};

    #[test]
    fn contents_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"hello").unwrap();
        let entry = Partition {
            type_guid: types::LINUX_GENERIC.into(),
            guid: derived_guid(b"a"),
            name: "a".into(),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
        };
        let out = dir.path().join("disk");
        assemble(&out, &derived_guid(b"d"), &[Part { entry, contents: &a }], 4 << 20, Some(&[7u8; 440])).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[(2048 * SECTOR) as usize..(2048 * SECTOR) as usize + 5], b"hello");
        assert_eq!(&bytes[512..520], b"EFI PART");
        assert!(bytes[..440].iter().all(|&b| b == 7) && bytes[510..512] == [0x55, 0xaa], "the boot code is not in the protective MBR");
        assert_eq!(bytes.len(), 4 << 20);
        let too_big = dir.path().join("big");
        std::fs::write(&too_big, vec![1u8; 2 << 20]).unwrap();
        let entry = Partition { type_guid: types::LINUX_GENERIC.into(), guid: derived_guid(b"b"), name: "b".into(), first_lba: 2048, last_lba: 2050, attributes: 0 };
        let err = assemble(&out, &derived_guid(b"d"), &[Part { entry, contents: &too_big }], 4 << 20, None).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}

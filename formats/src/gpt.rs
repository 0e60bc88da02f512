//! A GUID partition table, computed as bytes (pure) so the image is assembled by
//! offsets in a plain file: no loop devices, no partition scanning on the host.

use anyhow::{ensure, Result};

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by the partition entry array (128 * 128 bytes).
pub const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1 << 20;

/// Partition type GUIDs from the Discoverable Partitions Specification.
pub mod types {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const ROOT_X86_64_VERITY: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
    pub const LINUX_GENERIC: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    /// "Hah!IdontNeedEFI": GRUB's core image for BIOS boot.
    pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
}

/// The protective MBR's boot code: what a BIOS runs (GRUB's boot sector on
/// a bpi-os disk); the disk signature and partition table follow it.
pub const MBR_CODE_BYTES: usize = 440;

/// GPT attribute bit 60: read-only (DPS: mount the partition read-only).
pub const ATTR_READ_ONLY: u64 = 1 << 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: String,
    pub guid: String,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// The bytes of a partitioned disk that are not partition contents.
pub struct Tables {
    /// Protective MBR, primary header and entries: write at offset 0.
    pub primary: Vec<u8>,
    /// Backup entries and header: write at `backup_offset`.
    pub backup: Vec<u8>,
    pub backup_offset: u64,
}

/// Lays out partitions of the given sizes back to back from 1 MiB, each
/// rounded up to 1 MiB, and returns their extents.
pub fn layout(sizes: &[u64]) -> Vec<(u64, u64)> {
    let mut at = ALIGN;
    sizes
        .iter()
        .map(|&s| {
            let len = s.div_ceil(ALIGN) * ALIGN;
            let ext = (at, len);
            at += len;
            ext
        })
        .collect()
}

/// Computes the partition tables for a disk of `disk_size` bytes.
pub fn tables(disk_guid: &str, parts: &[Partition], disk_size: u64) -> Result<Tables> {
    ensure!(disk_size.is_multiple_of(SECTOR), "disk size {disk_size} is not a multiple of {SECTOR}");
    ensure!(parts.len() as u64 <= ENTRIES, "too many partitions");
    let last_lba = disk_size / SECTOR - 1;
    let first_usable = 2 + ENTRY_SECTORS;
    let last_usable = last_lba - 1 - ENTRY_SECTORS;
    for p in parts {
        ensure!(
            p.first_lba >= first_usable && p.last_lba <= last_usable && p.first_lba <= p.last_lba,
            "partition {} ({}..{}) does not fit the disk's usable sectors {first_usable}..{last_usable}",
            p.name,
            p.first_lba,
            p.last_lba
        );
    }
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.guid)?);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(name.len() <= 36, "partition name {} is longer than 36 UTF-16 units", p.name);
        for (j, c) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let disk = guid_bytes(disk_guid)?;
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut primary = protective_mbr(last_lba);
    primary.extend(header(1, last_lba, 2));
    primary.extend(&entries);
    let mut backup = entries.clone();
    backup.extend(header(last_lba, 1, last_lba - ENTRY_SECTORS));
    Ok(Tables {
        primary,
        backup,
        backup_offset: (last_lba - ENTRY_SECTORS) * SECTOR,
    })
}

fn protective_mbr(last_lba: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let p = &mut m[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xee;
    p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// How many bytes at the start of a disk hold the protective MBR, the primary
/// header and the entries.
pub const HEAD_BYTES: u64 = (2 + ENTRY_SECTORS) * SECTOR;

/// Reads a disk's primary GPT (the first [`HEAD_BYTES`]), checking the
/// signature and both checksums: (disk GUID, partitions in entry order).
pub fn parse_primary(head: &[u8]) -> Result<(String, Vec<Partition>)> {
    ensure!(head.len() as u64 >= HEAD_BYTES, "need the first {HEAD_BYTES} bytes of the disk");
    let h = &head[SECTOR as usize..2 * SECTOR as usize];
    ensure!(&h[0..8] == b"EFI PART", "no GPT header at LBA 1");
    let mut check = h[..92].to_vec();
    check[16..20].fill(0);
    let want = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    ensure!(crc32fast::hash(&check) == want, "the GPT header checksum does not match");
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    ensure!(le64(&h[72..80]) == 2, "GPT entries do not start at LBA 2");
    ensure!(
        u64::from(le32(&h[80..84])) == ENTRIES && u64::from(le32(&h[84..88])) == ENTRY_SIZE,
        "GPT entry table is not {ENTRIES} entries of {ENTRY_SIZE} bytes"
    );
    let entries = &head[2 * SECTOR as usize..HEAD_BYTES as usize];
    ensure!(crc32fast::hash(entries) == le32(&h[88..92]), "the GPT entries checksum does not match");
    let disk_guid = guid_from_disk(&h[56..72]);
    let mut parts = Vec::new();
    for e in entries.chunks(ENTRY_SIZE as usize) {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> =
            e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        parts.push(Partition {
            type_guid: guid_from_disk(&e[0..16]),
            guid: guid_from_disk(&e[16..32]),
            name: String::from_utf16_lossy(&name),
            first_lba: le64(&e[32..40]),
            last_lba: le64(&e[40..48]),
            attributes: le64(&e[48..56]),
        });
    }
    Ok((disk_guid, parts))
}

/// The tables of the image whose head is `head`, re-rendered for a disk of
/// `disk_size` bytes: same GUIDs and partitions, the backup at the new end.
pub fn relocate(head: &[u8], disk_size: u64) -> Result<Tables> {
    relocate_with(head, disk_size, &[])
}

/// As [`relocate`], with `extra` partitions added after the image's own.
pub fn relocate_with(head: &[u8], disk_size: u64, extra: &[Partition]) -> Result<Tables> {
    let (guid, mut parts) = parse_primary(head)?;
    parts.extend(extra.iter().cloned());
    let mut t = tables(&guid, &parts, disk_size)?;
    // The boot code goes with the disk (BIOS boot reads it).
    t.primary[..MBR_CODE_BYTES].copy_from_slice(&head[..MBR_CODE_BYTES]);
    Ok(t)
}

/// The first 1 MiB-aligned byte after every partition in `head`'s table.
pub fn end_of_partitions(head: &[u8]) -> Result<u64> {
    let (_, parts) = parse_primary(head)?;
    let end = parts.iter().map(|p| (p.last_lba + 1) * SECTOR).max().unwrap_or(ALIGN);
    Ok(end.div_ceil(ALIGN) * ALIGN)
}

fn guid_from_disk(b: &[u8]) -> String {
    let mut b: [u8; 16] = b[..16].try_into().expect("16 bytes");
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    guid_string(&b)
}

/// A GUID string in GPT's on-disk byte order (first three fields little-endian).
pub fn guid_bytes(s: &str) -> Result<[u8; 16]> {
    let hexs: String = s.chars().filter(|c| *c != '-').collect();
    ensure!(hexs.len() == 32 && s.len() == 36, "{s:?} is not a GUID");
    let raw = hex::decode(&hexs).map_err(|_| anyhow::anyhow!("{s:?} is not a GUID"))?;
    let mut b = [0u8; 16];
    b.copy_from_slice(&raw);
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

/// Formats 16 bytes as a GUID string, in the order they are given (as
/// systemd does when it derives partition UUIDs from a verity root hash).
pub fn guid_string(b: &[u8]) -> String {
    let h = hex::encode(&b[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A GUID derived from a seed, with the version-4/variant bits set, so it is
/// stable for a build and well-formed.
pub fn derived_guid(seed: &[u8]) -> String {
    use sha2::Digest;
    let mut b: [u8; 16] = sha2::Sha256::digest(seed)[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    guid_string(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<Partition>, u64) {
        let ext = layout(&[3 << 20, 5000]);
        let parts = vec![
            Partition {
                type_guid: types::ESP.into(),
                guid: derived_guid(b"esp"),
                name: "bpi-esp".into(),
                first_lba: ext[0].0 / SECTOR,
                last_lba: (ext[0].0 + ext[0].1) / SECTOR - 1,
                attributes: 0,
            },
            Partition {
                type_guid: types::ROOT_X86_64.into(),
                guid: "01020304-0506-0708-090a-0b0c0d0e0f10".into(),
                name: "bpi-root".into(),
                first_lba: ext[1].0 / SECTOR,
                last_lba: (ext[1].0 + ext[1].1) / SECTOR - 1,
                attributes: ATTR_READ_ONLY,
            },
        ];
        (parts, 8 << 20)
    }

    #[test]
    fn tables_parse_back_and_relocate_to_a_larger_disk() {
        let (parts, size) = sample();
        let guid = derived_guid(b"disk");
        let t = tables(&guid, &parts, size).unwrap();
        let (g, back) = parse_primary(&t.primary).unwrap();
        assert_eq!((g.as_str(), &back), (guid.as_str(), &parts));
        let big = tables(&guid, &parts, 64 << 20).unwrap();
        let moved = relocate(&t.primary, 64 << 20).unwrap();
        assert_eq!((&moved.primary, &moved.backup, moved.backup_offset), (&big.primary, &big.backup, big.backup_offset));
        let mut bad = t.primary.clone();
        bad[2 * SECTOR as usize + 40] ^= 1;
        assert!(parse_primary(&bad).unwrap_err().to_string().contains("entries checksum"));
        assert!(parse_primary(&vec![0u8; HEAD_BYTES as usize]).is_err());
        // GRUB's boot code in the protective MBR goes with the disk; the
        // partition record after it is the new disk's.
        let mut with_code = t.primary.clone();
        with_code[..MBR_CODE_BYTES].fill(0xb8);
        let moved = relocate(&with_code, 64 << 20).unwrap();
        assert!(moved.primary[..MBR_CODE_BYTES].iter().all(|&b| b == 0xb8));
        assert_eq!(moved.primary[MBR_CODE_BYTES..], big.primary[MBR_CODE_BYTES..]);
    }

    #[test]
    fn layout_aligns_to_mib() {
        assert_eq!(layout(&[1, ALIGN, ALIGN + 1]), vec![(ALIGN, ALIGN), (2 * ALIGN, ALIGN), (3 * ALIGN, 2 * ALIGN)]);
    }

    #[test]
    fn guid_byte_order_is_mixed_endian() {
        let b = guid_bytes("01020304-0506-0708-090a-0b0c0d0e0f10").unwrap();
        assert_eq!(b, [4, 3, 2, 1, 6, 5, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert!(guid_bytes("nope").is_err());
        assert_eq!(guid_string(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]), "01020304-0506-0708-090a-0b0c0d0e0f10");
    }

    #[test]
    fn derived_guids_are_stable_and_v4() {
        let g = derived_guid(b"x");
        assert_eq!(g, derived_guid(b"x"));
        assert_ne!(g, derived_guid(b"y"));
        assert_eq!(&g[14..15], "4");
    }

    #[test]
    fn headers_carry_valid_crcs_and_mirror() {
        let (parts, size) = sample();
        let t = tables(&derived_guid(b"disk"), &parts, size).unwrap();
        assert_eq!(t.primary.len() as u64, (2 + ENTRY_SECTORS) * SECTOR);
        let h = &t.primary[512..1024];
        assert_eq!(&h[0..8], b"EFI PART");
        let mut check = h[..92].to_vec();
        check[16..20].fill(0);
        assert_eq!(crc32fast::hash(&check).to_le_bytes(), h[16..20]);
        assert_eq!(crc32fast::hash(&t.primary[1024..]).to_le_bytes(), h[88..92]);
        // The backup holds the same entries and a header that points back.
        assert_eq!(&t.backup[..16384], &t.primary[1024..]);
        let bh = &t.backup[16384..];
        assert_eq!(u64::from_le_bytes(bh[24..32].try_into().unwrap()), size / 512 - 1);
        assert_eq!(u64::from_le_bytes(bh[32..40].try_into().unwrap()), 1);
        assert_eq!(t.backup_offset + t.backup.len() as u64, size);
        assert_eq!(&t.primary[510..512], &[0x55, 0xaa]);
    }

    #[test]
    fn sfdisk_reads_what_we_write() {
        if !bpi_support::skip::needs_program("sfdisk", "fdisk") {
            return;
        }
        let (parts, size) = sample();
        let t = tables(&derived_guid(b"disk"), &parts, size).unwrap();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = tmp.as_file();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&t.primary, 0).unwrap();
        f.write_all_at(&t.backup, t.backup_offset).unwrap();
        let out = bpi_support::Cmd::new("sfdisk").arg("--json").arg(tmp.path()).output().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ps = v["partitiontable"]["partitions"].as_array().unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1]["uuid"].as_str().unwrap().to_lowercase(), "01020304-0506-0708-090a-0b0c0d0e0f10");
        assert_eq!(ps[1]["name"], "bpi-root");
        assert_eq!(ps[0]["start"], 2048);
        let verify = bpi_support::Cmd::new("sfdisk").arg("--verify").arg(tmp.path()).output().unwrap();
        assert!(verify.contains("No errors detected"), "{verify}");
    }
}

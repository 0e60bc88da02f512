//! An update, carried out: check the offer (signature, expiry, version, the
//! slot it fits), download, verify, then retire the inactive slot, write it
//! with direct I/O, read it back, activate it and install its UKI with tries
//! left. Nothing touches the running slot, and every step is recorded.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use bpi_formats::gpt::{self, Partition, HEAD_BYTES};
use bpi_formats::slots::Slot;
use bpi_formats::update::{Metadata, Role};
use bpi_installer::disk::io::{self, AlignedBuf};
use bpi_ledger::checkpoint::NoteVerifier;
use bpi_support::record::Recorder;
use bpi_support::{progress, Steps};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fetch::Source;
use crate::slots::{self, SlotState};
use crate::{bios, esp, keys};

/// Downloads go here (the data partition), one directory per version.
pub const DOWNLOAD_DIR: &str = "/var/lib/bpi-os/update/download";

/// The root hash the running UKI's command line carries.
pub fn root_hash_of_cmdline(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("roothash=")).filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).map(str::to_string)
}

/// The running image's version (os-release IMAGE_VERSION).
pub fn running_version() -> Result<String> {
    let text = std::fs::read_to_string("/usr/lib/os-release").context("reading /usr/lib/os-release")?;
    text.lines().find_map(|l| l.strip_prefix("IMAGE_VERSION=")).map(|v| v.trim_matches('"').to_string()).context("/usr/lib/os-release names no IMAGE_VERSION")
}

/// The disk the running slot is on, and its table.
pub struct BootDisk {
    pub path: PathBuf,
    pub size: u64,
    pub disk_guid: String,
    pub parts: Vec<Partition>,
    pub root_hash: String,
}

impl BootDisk {
    pub fn find() -> Result<BootDisk> {
        let cmdline = std::fs::read_to_string("/proc/cmdline")?;
        let root_hash = root_hash_of_cmdline(&cmdline).context("the kernel command line has no roothash=: this is not a booted bpi-os image")?;
        let (uuid, _) = bpi_formats::slots::uuids_of_root_hash(&root_hash)?;
        let part = std::fs::canonicalize(format!("/dev/disk/by-partuuid/{uuid}")).with_context(|| format!("no partition with UUID {uuid} (the running root)"))?;
        let name = part.file_name().and_then(|n| n.to_str()).context("partition device name")?.to_string();
        let parent = std::fs::canonicalize(format!("/sys/class/block/{name}/.."))?;
        let disk = parent.file_name().and_then(|n| n.to_str()).context("disk name")?;
        let path = PathBuf::from("/dev").join(disk);
        Self::open(&path, root_hash)
    }

    pub fn open(path: &Path, root_hash: String) -> Result<BootDisk> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0))?;
        let mut head = vec![0u8; HEAD_BYTES as usize];
        f.read_exact_at(&mut head, 0)?;
        let (disk_guid, parts) = gpt::parse_primary(&head).with_context(|| format!("reading the partition table of {}", path.display()))?;
        // Only a table this code would write is rewritten: rendering what
        // was read must give back the very bytes on the disk.
        let t = gpt::tables(&disk_guid, &parts, size - size % gpt::SECTOR)?;
        let mut backup = vec![0u8; t.backup.len()];
        f.read_exact_at(&mut backup, t.backup_offset)?;
        ensure!(t.primary[gpt::SECTOR as usize..] == head[gpt::SECTOR as usize..] && t.backup == backup, "the partition table of {} is not one bpi-os wrote (it does not render back to the same bytes); refusing to change it", path.display());
        Ok(BootDisk { path: path.to_path_buf(), size, disk_guid, parts, root_hash })
    }

    pub fn slots(&self) -> Result<Vec<SlotState>> {
        slots::states(&self.parts, &self.root_hash)
    }

    /// The device of the partition at table entry `entry` (0-based).
    pub fn partition_device(&self, entry: usize) -> Result<PathBuf> {
        let disk = self.path.file_name().and_then(|n| n.to_str()).context("disk name")?;
        for e in std::fs::read_dir(format!("/sys/class/block/{disk}"))? {
            let e = e?;
            let Ok(n) = std::fs::read_to_string(e.path().join("partition")) else { continue };
            if n.trim().parse::<usize>().ok() == Some(entry + 1) {
                return Ok(PathBuf::from("/dev").join(e.file_name()));
            }
        }
        bail!("{} has no partition {}", self.path.display(), entry + 1)
    }

    /// Writes `parts` as the table: backup first, then primary, each synced.
    fn write_table(&mut self, parts: &[Partition]) -> Result<()> {
        let t = gpt::tables(&self.disk_guid, parts, self.size - self.size % gpt::SECTOR)?;
        let f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        f.write_all_at(&t.backup, t.backup_offset)?;
        f.sync_all()?;
        // LBA 0 (the protective MBR) stays as it is.
        f.write_all_at(&t.primary[gpt::SECTOR as usize..], gpt::SECTOR)?;
        f.sync_all()?;
        self.parts = parts.to_vec();
        Ok(())
    }
}

/// A checked offer: what would be installed where.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    pub source: String,
    pub metadata: Metadata,
    pub running_version: String,
    pub target_slot: char,
    /// The version the target slot holds now, which the update replaces.
    pub replaces: Option<String>,
    pub download_bytes: u64,
    /// Boots the new version gets to pass its health check before
    /// systemd-boot falls back to the running one.
    pub tries: u32,
}

pub struct CheckOptions<'a> {
    /// Where the note came from (for messages).
    pub source: &'a Source,
    pub keys: &'a [NoteVerifier],
    pub now: u64,
    pub allow_downgrade: bool,
    pub tries: u32,
}

/// Checks the fetched metadata note against this node; nothing is written.
pub fn check(o: &CheckOptions, note: &[u8], disk: &BootDisk, running_version: &str) -> Result<Offer> {
    let m = keys::open(note, o.keys)?;
    m.check_offer(o.now, running_version, o.allow_downgrade).map_err(|e| anyhow::anyhow!("{e}"))?;
    let states = disk.slots()?;
    let target = slots::target(&states);
    let t = states.iter().find(|s| s.slot == target.name).expect("target is a slot");
    for (role, room) in [(Role::Root, t.root_bytes), (Role::Verity, t.verity_bytes)] {
        let f = m.file(role);
        ensure!(f.size <= room, "{} is {} bytes; slot {}'s partition holds {room}", f.name, f.size, target.name);
    }
    Ok(Offer {
        source: o.source.describe(),
        download_bytes: m.files.iter().map(|f| f.size).sum(),
        running_version: running_version.to_string(),
        target_slot: target.name,
        replaces: t.version.clone(),
        tries: o.tries,
        metadata: m,
    })
}

/// The steps of an apply, in order, as the plan shows them.
pub fn describe(o: &Offer) -> Vec<String> {
    let m = &o.metadata;
    let slot = o.target_slot;
    vec![
        format!("download {} files ({} bytes) from {} into {DOWNLOAD_DIR}/{}, resuming any partial ones; check each file's size and sha256 against the signed metadata", m.files.len(), o.download_bytes, o.source, m.version),
        format!("check that the UKI's command line names root hash {}", m.root_hash),
        match &o.replaces {
            Some(v) => format!("retire slot {slot} (version {v}): label it _empty and remove {v}'s UKI and BIOS files from the ESP"),
            None => format!("retire slot {slot} (empty already): label it _empty"),
        },
        format!("write {} and {} to slot {slot} with direct I/O, then read both back and check their sha256", m.file(Role::Root).name, m.file(Role::Verity).name),
        format!("activate slot {slot}: partition UUIDs from root hash {}, labels for {}", m.root_hash, m.version),
        format!(
            "install {} on the ESP as {} ({} tries: a healthy boot blesses it; when every try fails its health check, systemd-boot falls back to {})",
            m.file(Role::Uki).name,
            bpi_formats::slots::uki_name(&m.version, Some(o.tries)),
            o.tries,
            o.running_version
        ),
        format!(
            "BIOS path: write the kernel and initrd of {}'s UKI under bios/{}/ on the ESP, add its grub.cfg entry and start a GRUB trial of {} boots (grubenv), {} staying GRUB's saved entry until a healthy boot",
            m.version, m.version, o.tries, o.running_version
        ),
        "clear any default entry in loader.conf, so systemd-boot boots the newest version".into(),
    ]
}

pub struct Applied {
    pub slot: char,
    pub uki: String,
    /// Seconds spent writing the slot (direct I/O, synced), and reading it
    /// back and hashing it (the download excluded).
    pub write_seconds: f64,
    pub verify_seconds: f64,
    pub bytes_written: u64,
}

/// Downloads, verifies and installs `o` into its target slot.
pub fn apply(o: &Offer, source: &Source, disk: &mut BootDisk, esp_dir: &Path, steps: &Steps, recorder: &dyn Recorder) -> Result<Applied> {
    let m = &o.metadata;
    let slot: Slot = bpi_formats::slots::SLOTS.iter().copied().find(|s| s.name == o.target_slot).context("slot")?;
    let dl = Path::new(DOWNLOAD_DIR).join(&m.version);
    bpi_support::fsmode::create_dirs(&dl, 0o700).with_context(|| format!("creating {}", dl.display()))?;
    ensure_space(&dl, m)?;
    let mut files = std::collections::BTreeMap::new();
    for f in &m.files {
        files.insert(f.role as u8, source.download(f, &dl, steps)?);
    }
    let file = |r: Role| files[&(r as u8)].clone();
    steps.step("check the UKI names the root hash", || check_uki(&file(Role::Uki), &m.root_hash))?;

    let record = |step: &str, extra: serde_json::Value| {
        let mut d = serde_json::json!({"version": m.version, "step": step, "slot": slot.name.to_string(), "from": o.running_version});
        if let (Some(d), Some(x)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(x.clone());
        }
        progress::log(&format!("ledger: {}", recorder.record("update", &format!("update-{step}"), &d)));
    };
    steps.step(&format!("retire slot {}", slot.name), || -> Result<()> {
        let retired = slots::retired(&disk.parts, &disk.disk_guid, slot);
        disk.write_table(&retired)?;
        if let Some(v) = &o.replaces {
            esp::remove_version(esp_dir, v)?;
            if bios::present(esp_dir) {
                bios::remove_version(esp_dir, v)?;
            }
        }
        Ok(())
    })?;
    record("retired", serde_json::json!({"replaced": o.replaces}));

    let mut written = 0;
    let (mut write_seconds, mut verify_seconds) = (0.0, 0.0);
    for (role, entry) in [(Role::Root, slot.root_entry), (Role::Verity, slot.verity_entry)] {
        let dev = disk.partition_device(entry)?;
        let f = m.file(role);
        let t = std::time::Instant::now();
        steps.step(&format!("write {} to {}", f.name, dev.display()), || write_partition(&file(role), &dev, f.size, steps))?;
        write_seconds += t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        steps.step(&format!("read {} back", dev.display()), || {
            let got = read_back(&dev, f.size)?;
            ensure!(got == f.sha256, "{} reads back with sha256 {got}, not {}: the disk did not keep what was written", dev.display(), f.sha256);
            Ok(())
        })?;
        verify_seconds += t.elapsed().as_secs_f64();
        written += f.size;
    }
    record("written", serde_json::json!({"root_hash": m.root_hash, "bytes": written, "write_seconds": write_seconds, "verify_seconds": verify_seconds}));

    steps.step(&format!("activate slot {}", slot.name), || -> Result<()> {
        let parts = slots::activated(&disk.parts, slot, &m.version, &m.root_hash)?;
        disk.write_table(&parts)
    })?;
    let uki = steps.step("install the UKI with tries left, and the BIOS path beside it", || -> Result<String> {
        esp::remove_version(esp_dir, &m.version)?;
        // The BIOS files first: GRUB gets an entry for them only once the
        // UKI whose command line it takes is in place.
        let bios = bios::present(esp_dir);
        if bios {
            bios::install(esp_dir, &file(Role::Uki), &m.version)?;
        }
        let name = esp::install(esp_dir, &file(Role::Uki), &m.version, o.tries)?;
        if bios {
            bios::regenerate(esp_dir)?;
            bios::start_trial(esp_dir, &m.version, o.tries)?;
        }
        esp::set_default(esp_dir, None)?;
        Ok(name)
    })?;
    record("installed", serde_json::json!({"uki": uki, "root_hash": m.root_hash}));
    let _ = std::fs::remove_dir_all(&dl);
    Ok(Applied { slot: slot.name, uki, write_seconds, verify_seconds, bytes_written: written })
}

fn ensure_space(dl: &Path, m: &Metadata) -> Result<()> {
    let have: u64 = m.files.iter().map(|f| {
        let done = std::fs::metadata(dl.join(&f.name)).map(|x| x.len()).unwrap_or(0);
        done.max(std::fs::metadata(dl.join(format!("{}.part", f.name))).map(|x| x.len()).unwrap_or(0))
    }).sum();
    let need = m.files.iter().map(|f| f.size).sum::<u64>().saturating_sub(have);
    let st = rustix::fs::statvfs(dl)?;
    let free = st.f_bavail * st.f_frsize;
    ensure!(free >= need + (16 << 20), "not enough space for the download: {need} bytes needed in {}, {free} free; nothing was changed", dl.display());
    Ok(())
}

/// The UKI's .cmdline must pin the root hash the slot gets, or it would not boot it.
fn check_uki(uki: &Path, root_hash: &str) -> Result<()> {
    let bytes = std::fs::read(uki)?;
    let want = format!("roothash={root_hash} ");
    ensure!(bytes.windows(want.len()).any(|w| w == want.as_bytes()), "{} does not carry roothash={root_hash} on its command line: the bundle's UKI and root do not belong together", uki.display());
    Ok(())
}

const CHUNK: usize = 4 << 20;

fn write_partition(src: &Path, dev: &Path, size: u64, steps: &Steps) -> Result<()> {
    let input = File::open(src)?;
    let out = std::fs::OpenOptions::new().read(true).write(true).open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let direct = io::open_direct_path(dev);
    let mut buf = AlignedBuf::new(CHUNK);
    let mut bar = steps.bytes(&format!("write {}", dev.display()), size);
    let mut at = 0u64;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        let b = buf.get(n);
        input.read_exact_at(b, at)?;
        io::write_at(direct.as_ref(), &out, b, at).with_context(|| format!("writing {} at {at}", dev.display()))?;
        at += n as u64;
        bar.add(n as u64);
    }
    bar.finish();
    out.sync_all()?;
    Ok(())
}

fn read_back(dev: &Path, size: u64) -> Result<String> {
    let f = File::open(dev)?;
    io::drop_cache(&f);
    let direct = io::open_direct_path(dev);
    let mut buf = AlignedBuf::new(CHUNK);
    let mut h = Sha256::new();
    let mut at = 0u64;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        let b = buf.get(n);
        io::read_at(direct.as_ref(), &f, b, at)?;
        h.update(&*b);
        at += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hash_from_cmdline() {
        let h = "ab".repeat(32);
        assert_eq!(root_hash_of_cmdline(&format!("roothash={h} root=/dev/mapper/root ro")), Some(h));
        assert_eq!(root_hash_of_cmdline("root=/dev/sda1"), None);
        assert_eq!(root_hash_of_cmdline("roothash=xyz"), None);
    }

    #[test]
    fn partition_writes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dev = dir.path().join("dev");
        let data: Vec<u8> = (0..(9 << 20) + 123).map(|i: u32| (i % 253) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        std::fs::write(&dev, vec![0xffu8; 12 << 20]).unwrap();
        write_partition(&src, &dev, data.len() as u64, &Steps::new("test")).unwrap();
        assert_eq!(read_back(&dev, data.len() as u64).unwrap(), bpi_support::digest::sha256_bytes(&data));
        let uki = dir.path().join("uki");
        std::fs::write(&uki, format!("xx roothash={} root=", "cd".repeat(32))).unwrap();
        check_uki(&uki, &"cd".repeat(32)).unwrap();
        assert!(check_uki(&uki, &"ce".repeat(32)).is_err());
    }
}

//! The install's plan: pure, computed from the checked image and disk.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use bpi_formats::gpt::{self, ALIGN, ENTRY_SECTORS, SECTOR};
use serde::{Deserialize, Serialize};

use crate::source::Source;
use crate::store;
use crate::target::{self, Kind, Target};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    WipeTables { backup_offset: u64 },
    WriteBody { from: u64, to: u64 },
    VerifyBody { from: u64, to: u64 },
    WriteBackupTable { offset: u64, bytes: u64 },
    WritePrimaryTable { bytes: u64 },
    VerifyTables,
    RereadPartitions,
    /// (The passphrase itself is never in a plan or the state file.)
    InitStore { offset: u64, bytes: u64, tpm2: bool, pcrs: String, recovery_key_file: Option<PathBuf>, passphrase: bool },
    /// The provisioning partition: `bpi-os install --provision FILE`'s
    /// documents, or zeros (an earlier install's must not be applied).
    WriteProvision { offset: u64, bytes: u64, payload_sha256: Option<String> },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::WipeTables { .. } => "wipe-tables",
            Step::WriteBody { .. } => "write-body",
            Step::VerifyBody { .. } => "verify-body",
            Step::WriteBackupTable { .. } => "write-backup-table",
            Step::WritePrimaryTable { .. } => "write-primary-table",
            Step::VerifyTables => "verify-tables",
            Step::RereadPartitions => "reread-partitions",
            Step::InitStore { .. } => "init-store",
            Step::WriteProvision { .. } => "write-provision",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::WipeTables { backup_offset } => write!(
                f,
                "zero the old partition tables (bytes 0..{} and {backup_offset}..end) so no old system boots half-overwritten",
                gpt::HEAD_BYTES
            ),
            Step::WriteBody { from, to } => {
                write!(f, "write image bytes {from}..{to} ({}) at the same offsets, syncing every 256 MiB", target::human(to - from))
            }
            Step::VerifyBody { from, to } => write!(f, "read bytes {from}..{to} back from the disk and check the image's sha256 over what the disk holds"),
            Step::WriteBackupTable { offset, bytes } => {
                write!(f, "write the backup GPT ({bytes} bytes) at the disk's end, offset {offset}")
            }
            Step::WritePrimaryTable { bytes } => {
                write!(f, "write the first MiB last ({bytes} bytes: protective MBR and primary GPT, sized for the whole disk)")
            }
            Step::VerifyTables => write!(f, "read both GPTs back and check them against the image's partitions"),
            Step::RereadPartitions => write!(f, "ask the kernel to re-read the partition table"),
            Step::WriteProvision { offset, bytes, payload_sha256 } => match payload_sha256 {
                Some(h) => write!(f, "write the provisioning given with --provision (sha256 {h}) to bpi-provision (offset {offset}, {}); first boot applies it", target::human(*bytes)),
                None => write!(f, "zero bpi-provision (offset {offset}, {}): no provisioning given", target::human(*bytes)),
            },
            Step::InitStore { offset, bytes, tpm2, pcrs, recovery_key_file, passphrase } => {
                write!(f, "encrypted store on bpi-store (offset {offset}, {}): LUKS2 keyed by a new recovery key", target::human(*bytes))?;
                if *passphrase {
                    write!(f, ", plus the passphrase given")?;
                }
                if *tpm2 {
                    write!(f, ", plus a key sealed to this machine's TPM2 against PCR {pcrs}")?;
                }
                match recovery_key_file {
                    Some(p) => write!(f, "; the recovery key is written to {}", p.display()),
                    None => write!(f, "; the recovery key is shown once at the end"),
                }
            }
        }
    }
}

/// What an install will do, computed from the checked image and disk.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub image: PathBuf,
    pub image_sha256: String,
    pub image_size: u64,
    pub target: Target,
    pub steps: Vec<Step>,
    /// What first boot does with the rest of the disk.
    pub first_boot: String,
    /// The provisioning partition's contents (not shown: it may hold password hashes).
    #[serde(skip)]
    pub provision: Vec<u8>,
}

/// The operator's choice for the encrypted store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChoice {
    pub tpm2: bool,
    pub pcrs: String,
    pub recovery_key_file: Option<PathBuf>,
    pub passphrase: bool,
}

/// The smallest data partition first boot may make.
const MIN_DATA: u64 = 256 << 20;

/// The store partition the installer adds after the image's partitions (the
/// one first boot's repart would make), for a disk of `size` bytes.
pub fn store_partition(head: &[u8], size: u64) -> Result<gpt::Partition> {
    let start = gpt::end_of_partitions(head)?;
    let (disk_guid, _) = gpt::parse_primary(head)?;
    Ok(gpt::Partition {
        type_guid: store::PART_TYPE.into(),
        guid: gpt::derived_guid(format!("bpi-store {disk_guid} {size}").as_bytes()),
        name: store::PART_LABEL.into(),
        first_lba: start / SECTOR,
        last_lba: (start + store::SIZE) / SECTOR - 1,
        attributes: 0,
    })
}

/// The provisioning partition's type (bpi-os's own) and size.
pub const PROVISION_TYPE: &str = "5b1f4a9e-6c2d-4e8f-9a3b-0d7c1e2f3a4b";
pub const PROVISION_SIZE: u64 = 4 << 20;

/// The provisioning partition, right after the store partition: first boot
/// reads `bpi-os install --provision`'s documents from it.
pub fn provision_partition(head: &[u8], size: u64) -> Result<gpt::Partition> {
    let store = store_partition(head, size)?;
    let start = store.offset() + store.size();
    let (disk_guid, _) = gpt::parse_primary(head)?;
    Ok(gpt::Partition {
        type_guid: PROVISION_TYPE.into(),
        guid: gpt::derived_guid(format!("bpi-provision {disk_guid} {size}").as_bytes()),
        name: bpi_formats::layout::PROVISION_PARTITION.into(),
        first_lba: start / SECTOR,
        last_lba: (start + PROVISION_SIZE) / SECTOR - 1,
        attributes: 0,
    })
}

/// The tables the disk gets: the image's, sized for the disk, plus the store
/// and provisioning partitions.
pub fn disk_tables(head: &[u8], size: u64) -> Result<gpt::Tables> {
    let size = size - size % SECTOR;
    gpt::relocate_with(head, size, &[store_partition(head, size)?, provision_partition(head, size)?])
}

/// The plan for writing `src` to `t` (already checked by [`target::refusals`]);
/// `provision` is the provisioning partition's payload, if any.
pub fn plan(src: &Source, t: &Target, store_choice: Option<StoreChoice>, provision: Option<Vec<u8>>) -> Result<Plan> {
    let image_backup = src.size - (1 + ENTRY_SECTORS) * SECTOR;
    ensure!(src.size > ALIGN + (1 + ENTRY_SECTORS) * SECTOR, "the image is too small to hold a GPT and a partition");
    let store_part = store_partition(&src.head, t.size)?;
    let prov_part = provision_partition(&src.head, t.size)?;
    let needed = prov_part.offset() + prov_part.size() + MIN_DATA + ALIGN;
    ensure!(
        t.size >= needed,
        "{} is {}; the image, the encrypted store, the provisioning partition and the smallest data partition need {} ({needed} bytes)",
        t.path.display(),
        target::human(t.size),
        target::human(needed)
    );
    let tables = disk_tables(&src.head, t.size)?;
    let mut steps = vec![
        Step::WipeTables { backup_offset: (t.size / SECTOR - 1 - ENTRY_SECTORS) * SECTOR },
        Step::WriteBody { from: ALIGN, to: image_backup },
        Step::VerifyBody { from: ALIGN, to: image_backup },
        Step::WriteProvision {
            offset: prov_part.offset(),
            bytes: prov_part.size(),
            payload_sha256: provision.as_ref().map(|p| bpi_support::digest::sha256_bytes(p)),
        },
        Step::WriteBackupTable { offset: tables.backup_offset, bytes: tables.backup.len() as u64 },
        Step::WritePrimaryTable { bytes: ALIGN },
        Step::VerifyTables,
    ];
    if t.kind == Kind::Block {
        steps.push(Step::RereadPartitions);
    }
    if let Some(c) = store_choice {
        steps.push(Step::InitStore {
            offset: store_part.offset(),
            bytes: store_part.size(),
            tpm2: c.tpm2,
            pcrs: c.pcrs,
            recovery_key_file: c.recovery_key_file,
            passphrase: c.passphrase,
        });
    }
    ensure!(provision.as_ref().is_none_or(|p| p.len() as u64 <= PROVISION_SIZE), "the provisioning is larger than its partition ({} MiB)", PROVISION_SIZE >> 20);
    let rest = tables.backup_offset.saturating_sub(prov_part.offset() + prov_part.size());
    Ok(Plan {
        image: src.raw.clone(),
        image_sha256: src.sha256.clone(),
        image_size: src.size,
        target: t.clone(),
        steps,
        first_boot: format!(
            "first boot: systemd-repart creates bpi-data (ext4) in the remaining {} and grows it to the disk's end",
            target::human(rest)
        ),
        provision: provision.unwrap_or_default(),
    })
}

impl Plan {
    pub fn render(&self) -> String {
        let mut s = format!(
            "install {} (sha256 {}, {})\n   onto {}\n",
            self.image.display(),
            self.image_sha256,
            target::human(self.image_size),
            self.target.describe()
        );
        for (i, step) in self.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {step}\n", i + 1));
        }
        s.push_str(&format!("  then {}\n", self.first_boot));
        s
    }
}

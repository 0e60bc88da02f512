//! manifest.json: what an image is made of, for installers, auditors and tests.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source_date_epoch: u64,
    pub kernel: String,
    pub root_hash: String,
    pub cmdline: String,
    pub disk: DiskInfo,
    pub partitions: Vec<PartitionInfo>,
    pub verity_canary: Canary,
    pub packages: Vec<Package>,
    /// The erofs root file system's size in bytes (image/src/sizes.rs budgets it).
    #[serde(default)]
    pub root_fs_bytes: u64,
    /// SHA-256 of the Secure Boot db certificate (DER) that signed systemd-boot
    /// and the UKI; none for an unsigned build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskInfo {
    pub guid: String,
    /// Apparent size of bpi-os.raw in bytes.
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionInfo {
    pub name: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// Where the verity canary's bytes sit, for tamper tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Canary {
    pub path: String,
    /// Byte offset of the file's data inside the root partition.
    pub root_offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    /// Bytes of its files in the root file system, uncompressed.
    #[serde(default)]
    pub root_bytes: u64,
}

impl Manifest {
    pub fn partition(&self, name: &str) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The root partition of the image's version (slot A in the image).
    pub fn root_partition(&self) -> Option<&PartitionInfo> {
        self.partition(&crate::slots::root_label(&self.version))
    }

    /// The most a manifest may be: it lists partitions and packages.
    pub const MAX_BYTES: u64 = 8 << 20;

    pub fn load(path: &std::path::Path) -> anyhow::Result<Manifest> {
        use anyhow::Context;
        let bytes = bpi_support::fsmode::read_small(path, Self::MAX_BYTES).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// A manifest from bytes already read (and checked against SHA256SUMS).
    pub fn parse(bytes: &[u8], origin: &str) -> anyhow::Result<Manifest> {
        use anyhow::Context;
        serde_json::from_slice(bytes).with_context(|| format!("parsing {origin}"))
    }
}

//! Where provisioning comes from, read as the four NoCloud documents: a
//! `cidata` drive (Proxmox's cloud-init drive), systemd credentials
//! (SMBIOS type 11 or the kernel command line, imported by PID 1), or the
//! provisioning partition `bpi-os install --provision` writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The NoCloud file names, which are also the credential names' suffixes.
pub const NAMES: [&str; 4] = ["user-data", "meta-data", "network-config", "vendor-data"];
/// Credentials are named `bpi.provision.user-data` and so on.
pub const CREDENTIAL_PREFIX: &str = "bpi.provision.";
/// Where PID 1 keeps the credentials it imported (systemd 252).
pub const SYSTEM_CREDENTIALS: &str = "/run/credentials/@system";
/// Proxmox caps the four files at 3 MiB together.
pub const MAX_TOTAL: u64 = 3 << 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Documents {
    /// Where they came from, for people and the ledger.
    pub source: String,
    /// How findings name each file (`cidata:user-data`, `credential:bpi.provision.user-data`).
    pub prefix: String,
    /// One user-data file given by path: findings name the path itself.
    #[serde(skip)]
    pub single: bool,
    pub user_data: Option<String>,
    pub meta_data: Option<String>,
    pub network_config: Option<String>,
    pub vendor_data: Option<String>,
}

impl Documents {
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "user-data" => self.user_data.as_deref(),
            "meta-data" => self.meta_data.as_deref(),
            "network-config" => self.network_config.as_deref(),
            "vendor-data" => self.vendor_data.as_deref(),
            _ => None,
        }
    }

    fn slot(&mut self, name: &str) -> &mut Option<String> {
        match name {
            "user-data" => &mut self.user_data,
            "meta-data" => &mut self.meta_data,
            "network-config" => &mut self.network_config,
            _ => &mut self.vendor_data,
        }
    }

    pub fn is_empty(&self) -> bool {
        NAMES.iter().all(|n| self.get(n).is_none())
    }

    /// How findings name a file of this set: the prefix and its name, or,
    /// for one user-data file given by path, that path.
    pub fn file_name(&self, name: &str) -> String {
        if self.single {
            self.prefix.clone()
        } else {
            format!("{}{name}", self.prefix)
        }
    }

    /// Reads the NoCloud files present in `dir`, each named `<prefix><file>`
    /// (`credential_prefix` "" for a drive, `bpi.provision.` for credentials).
    pub fn from_dir(dir: &Path, file_prefix: &str, source: &str, finding_prefix: &str) -> Result<Documents> {
        let mut d = Documents { source: source.into(), prefix: finding_prefix.into(), ..Documents::default() };
        let mut total = 0u64;
        for name in NAMES {
            let p = dir.join(format!("{file_prefix}{name}"));
            if !p.exists() {
                continue;
            }
            let bytes = bpi_support::fsmode::read_small(&p, MAX_TOTAL).with_context(|| format!("reading {}", p.display()))?;
            total += bytes.len() as u64;
            if total > MAX_TOTAL {
                bail!("{source}: the provisioning files are larger than {} MiB together", MAX_TOTAL >> 20);
            }
            let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}{name}: not UTF-8 text", finding_prefix))?;
            *d.slot(name) = Some(text);
        }
        Ok(d)
    }

    /// A path given on the command line (check, apply --from, install
    /// --provision): one user-data file, or a directory of NoCloud files or
    /// of bpi.provision.* credentials.
    pub fn from_path(path: &Path) -> Result<Documents> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            // A directory of credentials (bpi.provision.*) or of NoCloud files.
            let creds = NAMES.iter().any(|n| path.join(format!("{CREDENTIAL_PREFIX}{n}")).exists());
            let prefix = if creds { CREDENTIAL_PREFIX } else { "" };
            return Documents::from_dir(path, prefix, &format!("directory {}", path.display()), &format!("{}/{prefix}", path.display()));
        }
        let bytes = bpi_support::fsmode::read_small(path, MAX_TOTAL).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
        Ok(Documents {
            source: format!("file {}", path.display()),
            prefix: path.display().to_string(),
            single: true,
            user_data: Some(text),
            ..Documents::default()
        })
    }

    /// Hash of the documents other than meta-data: the instance-id when
    /// meta-data gives none, as Proxmox derives its own.
    pub fn content_id(&self) -> String {
        let mut h = sha2::Sha256::new();
        for name in ["user-data", "network-config", "vendor-data"] {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(self.get(name).unwrap_or("").as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// The provisioning partition's payload: a magic line, then the documents as JSON.
pub const PARTITION_MAGIC: &[u8] = b"bpi-os provisioning v1\n";

pub fn encode_partition(docs: &Documents) -> Result<Vec<u8>> {
    let mut out = PARTITION_MAGIC.to_vec();
    let mut d = docs.clone();
    d.source = String::new();
    d.prefix = String::new();
    out.extend(serde_json::to_vec(&d)?);
    out.push(0);
    Ok(out)
}

/// Reads a payload written by [`encode_partition`]; `Ok(None)` for a
/// partition that holds none (zeros).
pub fn decode_partition(bytes: &[u8], source: &str) -> Result<Option<Documents>> {
    if bytes.iter().take(PARTITION_MAGIC.len()).all(|b| *b == 0) {
        return Ok(None);
    }
    let rest = bytes.strip_prefix(PARTITION_MAGIC).with_context(|| format!("{source}: not a bpi-os provisioning partition"))?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let mut d: Documents = serde_json::from_slice(&rest[..end]).with_context(|| format!("{source}: damaged provisioning data"))?;
    d.source = source.into();
    d.prefix = "install:".into();
    Ok(Some(d))
}

/// The sources found on this machine, in the order they win: credentials
/// (the hypervisor's or boot loader's word), then a cidata drive, then
/// what the installer left.
pub struct Found {
    pub docs: Option<Documents>,
    /// Sources present but not used (reported, never merged).
    pub shadowed: Vec<String>,
}

/// A cidata drive: its device, found by label (ISO 9660 `cidata`, vfat `CIDATA`).
pub fn cidata_device() -> Option<PathBuf> {
    let by_label = || {
        ["cidata", "CIDATA"].iter().map(|l| Path::new("/dev/disk/by-label").join(l)).find(|p| p.exists()).and_then(|p| std::fs::canonicalize(p).ok())
    };
    if let Some(dev) = by_label() {
        return Some(dev);
    }
    // udev may not have named it yet: blkid probes every block device itself.
    // (The initrd carries the CD-ROM and disk drivers, so the drive is there
    // by now; waiting for udev to settle would cost seconds on every boot.)
    for label in ["cidata", "CIDATA"] {
        if let Ok(out) = bpi_support::Cmd::new("blkid").args(["-c", "/dev/null", "-o", "device", "-t"]).arg(format!("LABEL={label}")).output() {
            if let Some(dev) = out.lines().next().filter(|l| !l.is_empty()) {
                return Some(PathBuf::from(dev));
            }
        }
    }
    None
}

/// Mounts `dev` read-only at `at`, reads the NoCloud files, unmounts.
pub fn read_cidata(dev: &Path, at: &Path) -> Result<Documents> {
    bpi_support::fsmode::create_dirs(at, 0o700)?;
    bpi_support::Cmd::new("mount").args(["-o", "ro,nodev,nosuid,noexec"]).arg(dev).arg(at).run()?;
    let docs = Documents::from_dir(at, "", &format!("cidata drive {}", dev.display()), "cidata:");
    let umount = bpi_support::Cmd::new("umount").arg(at).run();
    let docs = docs?;
    umount?;
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_payload_round_trips_and_zeros_are_none() {
        let d = Documents { user_data: Some("#cloud-config\nhostname: a\n".into()), ..Documents::default() };
        let mut bytes = encode_partition(&d).unwrap();
        bytes.resize(4096, 0);
        let back = decode_partition(&bytes, "p").unwrap().unwrap();
        assert_eq!(back.user_data, d.user_data);
        assert_eq!(back.content_id(), d.content_id());
        assert!(decode_partition(&[0; 512], "p").unwrap().is_none());
        assert!(decode_partition(b"garbage", "p").is_err());
    }

    #[test]
    fn from_dir_reads_present_files_with_a_prefix() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("bpi.provision.user-data"), "#cloud-config\n").unwrap();
        std::fs::write(t.path().join("bpi.provision.meta-data"), "instance-id: x\n").unwrap();
        let d = Documents::from_dir(t.path(), CREDENTIAL_PREFIX, "credentials", "credential:").unwrap();
        assert_eq!(d.meta_data.as_deref(), Some("instance-id: x\n"));
        assert!(d.network_config.is_none());
        assert_eq!(d.file_name("user-data"), "credential:user-data");
    }
}

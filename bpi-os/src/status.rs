//! `bpi-os status`: what this system is running from, read from the kernel's
//! own records (/proc/cmdline, mountinfo, dm-verity status).

use crate::output::Json;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    /// The image's version (os-release IMAGE_VERSION); the binary's when not booted from an image.
    pub version: String,
    pub binary_version: String,
    pub root_hash: Option<String>,
    /// UEFI or BIOS, and Secure Boot.
    pub boot: crate::firmware::Boot,
    pub root: Option<Mount>,
    pub verity: Verity,
    pub data: DataPartition,
    pub store: bpi_installer::store::Status,
    pub provisioning: Provisioning,
    pub ssh: Ssh,
    /// Slots, boot entries and failed versions; None off a slotted boot disk.
    pub update: Option<crate::update::UpdateStatus>,
}

/// What first-boot provisioning did on this boot, and what is applied.
#[derive(Debug, Serialize, PartialEq)]
pub struct Provisioning {
    /// applied, already-applied, refused, failed, no-source; None before it ran.
    pub outcome: Option<String>,
    pub message: Option<String>,
    pub source: Option<String>,
    /// The instance-id applied (on this boot or an earlier one).
    pub instance_id: Option<String>,
    /// file:line: message, for each reason a refused set was refused.
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Ssh {
    pub service_active: bool,
    pub host_keys: Vec<bpi_provision::hostkeys::HostKey>,
}

fn provisioning() -> Provisioning {
    use bpi_provision::run;
    let report = run::load_report(std::path::Path::new(run::REPORT_FILE));
    let state = run::load_state(std::path::Path::new(run::STATE_FILE));
    let outcome = report.as_ref().map(|r| serde_json::to_value(&r.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
    Provisioning {
        outcome,
        message: report.as_ref().map(|r| r.message.clone()),
        source: state.as_ref().map(|s| s.source.clone()).or_else(|| report.as_ref().and_then(|r| r.source.clone())),
        instance_id: state.map(|s| s.instance_id),
        errors: report.as_ref().map(|r| r.errors.iter().map(|e| e.to_string()).collect()).unwrap_or_default(),
        notes: report.as_ref().map(|r| r.notes.iter().map(|e| e.to_string()).collect()).unwrap_or_default(),
    }
}

fn ssh() -> Ssh {
    let active = bpi_support::Cmd::new("systemctl").args(["is-active", "--quiet", "ssh.service"]).run().is_ok();
    Ssh {
        service_active: active,
        host_keys: bpi_provision::hostkeys::fingerprints(std::path::Path::new(bpi_provision::run::SSH_DIR)).unwrap_or_default(),
    }
}

#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct Mount {
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Verity {
    /// `veritysetup status root` says the device is active.
    pub active: bool,
    /// Its `status:` line (verified, corrupted, ...), when active.
    pub state: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DataPartition {
    pub mounted: bool,
    pub mount: Option<Mount>,
    pub size_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

pub fn run(json: Json) -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let verity_out = bpi_support::Cmd::new("veritysetup").args(["status", "root"]).output().ok();
    let data_mount = find_mount(&mountinfo, "/bpi/data");
    let (size, free) = match data_mount {
        Some(_) => match nix::sys::statvfs::statvfs("/bpi/data") {
            Ok(s) => (
                Some(s.blocks() * s.fragment_size()),
                Some(s.blocks_available() * s.fragment_size()),
            ),
            Err(_) => (None, None),
        },
        None => (None, None),
    };
    let status = Status {
        version: bpi_update::apply::running_version().unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string()),
        binary_version: env!("CARGO_PKG_VERSION").to_string(),
        root_hash: bpi_update::apply::root_hash_of_cmdline(&cmdline),
        boot: crate::firmware::boot(),
        root: find_mount(&mountinfo, "/"),
        verity: parse_verity(verity_out.as_deref()),
        data: DataPartition { mounted: data_mount.is_some(), mount: data_mount, size_bytes: size, free_bytes: free },
        store: bpi_installer::store::status(std::path::Path::new(bpi_installer::store::DEFAULT_DEVICE)),
        provisioning: provisioning(),
        ssh: ssh(),
        update: crate::update::status().ok().filter(|u| !u.slots.is_empty()),
    };
    if json.on() {
        json.print(&status)?;
    } else {
        println!("version:    {}", status.version);
        println!("root hash:  {}", status.root_hash.as_deref().unwrap_or("(none: not booted from a verity image)"));
        println!("boot:       {}", status.boot);
        match &status.root {
            Some(m) => println!("root:       {} on {} ({})", m.fstype, m.source, if m.read_only { "read-only" } else { "read-write" }),
            None => println!("root:       unknown"),
        }
        println!(
            "verity:     {}",
            match (&status.verity.active, &status.verity.state) {
                (true, Some(s)) => s.clone(),
                (true, None) => "active".into(),
                _ => "not active".into(),
            }
        );
        match &status.data.mount {
            Some(m) => println!(
                "data:       {} on {}, {} of {} bytes free",
                m.fstype,
                m.source,
                status.data.free_bytes.unwrap_or(0),
                status.data.size_bytes.unwrap_or(0)
            ),
            None => println!("data:       not mounted"),
        }
        println!("store:      {}", status.store.note);
        let p = &status.provisioning;
        println!("provision:  {}", p.message.as_deref().unwrap_or("has not run on this boot"));
        for e in &p.errors {
            println!("            error: {e}");
        }
        println!("ssh:        {}", if status.ssh.service_active { "sshd running" } else { "sshd not running" });
        for k in &status.ssh.host_keys {
            println!("            host key {} {}", k.kind, k.fingerprint);
        }
        if let Some(u) = &status.update {
            println!("slot:       {} (other slot: {})", u.running_slot.map(String::from).unwrap_or_default(), u.slots.iter().find(|s| !s.running).and_then(|s| s.version.clone()).unwrap_or_else(|| "empty".into()));
            for f in &u.failed {
                println!("update:     {} FAILED ({} boot(s){}): {}", f.version, f.failed_boots, if f.out_of_tries { ", fell back" } else { "" }, f.reasons);
            }
        }
    }
    Ok(())
}

/// The last mount at `target` in /proc/self/mountinfo (the one in effect).
pub fn find_mount(mountinfo: &str, target: &str) -> Option<Mount> {
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.get(4)? != &target {
                return None;
            }
            let opts = pre.get(5)?;
            Some(Mount {
                source: post.get(1)?.to_string(),
                fstype: post.first()?.to_string(),
                read_only: opts.split(',').any(|o| o == "ro"),
            })
        })
}

pub fn parse_verity(out: Option<&str>) -> Verity {
    let Some(out) = out else {
        return Verity { active: false, state: None };
    };
    let active = out.lines().next().is_some_and(|l| l.contains("is active"));
    let state = out.lines().find_map(|l| l.trim().strip_prefix("status:")).map(|s| s.trim().to_string());
    Verity { active, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro,user_xattr
30 22 252:4 / /bpi/data rw,nosuid,nodev shared:9 - ext4 /dev/vda4 rw
31 22 0:40 / /etc rw shared:10 - overlay overlay rw,lowerdir=/etc
";

    #[test]
    fn reads_mounts() {
        let root = find_mount(MOUNTINFO, "/").unwrap();
        assert_eq!(root, Mount { source: "/dev/mapper/root".into(), fstype: "erofs".into(), read_only: true });
        let data = find_mount(MOUNTINFO, "/bpi/data").unwrap();
        assert!(!data.read_only);
        assert_eq!(data.source, "/dev/vda4");
        assert!(find_mount(MOUNTINFO, "/nope").is_none());
    }

    #[test]
    fn reads_root_hash_and_verity() {
        let v = parse_verity(Some("/dev/mapper/root is active and is in use.\n  type:        VERITY\n  status:      verified\n"));
        assert_eq!(v, Verity { active: true, state: Some("verified".into()) });
        assert!(!parse_verity(Some("/dev/mapper/root is inactive.\n")).active);
    }
}

//! The /bpi namespace (seed 002) mapped onto an immutable system, as in
//! DESIGN.md: every directory with its mode and where it lives.
//!
//! Directories that live in the read-only image are created at image build
//! time; those on the data partition or on the runtime tmpfs are created at
//! boot by systemd-tmpfiles from a file rendered here ([`tmpfiles_conf`]), so
//! there is one definition of the tree for the image, the installer and boot.

/// The partition `bpi-os install --provision` writes and first boot reads.
pub const PROVISION_PARTITION: &str = "bpi-provision";

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// Where a directory of the namespace lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Home {
    /// In the read-only root image (includes the mount points of the others).
    Image,
    /// On the data partition, created at boot.
    Data,
    /// On the /bpi/runtime tmpfs, created at every boot.
    Runtime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dir {
    pub path: &'static str,
    pub mode: u32,
    pub home: Home,
}

const fn d(path: &'static str, mode: u32, home: Home) -> Dir {
    Dir { path, mode, home }
}

use Home::{Data, Image, Runtime};

/// The whole tree, parents before children. Owner is root:root throughout.
pub const TREE: &[Dir] = &[
    d("/bpi", 0o755, Image),
    d("/bpi/core", 0o755, Image),
    d("/bpi/core/vm-cluster", 0o755, Image),
    d("/bpi/core/vm-cluster/action-vm", 0o755, Image),
    d("/bpi/core/vm-cluster/audit-vm", 0o755, Image),
    d("/bpi/core/vm-cluster/orchestration-vm", 0o755, Image),
    d("/bpi/core/vm-cluster/shadow-registry", 0o755, Image),
    d("/bpi/core/vm-cluster/court-node", 0o755, Image),
    d("/bpi/core/services", 0o755, Image),
    d("/bpi/core/services/vm-server", 0o755, Image),
    d("/bpi/core/services/ledger-state", 0o755, Image),
    d("/bpi/core/services/node-coordinator", 0o755, Image),
    d("/bpi/core/services/cue-orchestration", 0o755, Image),
    d("/bpi/core/security", 0o755, Image),
    d("/bpi/core/security/forensic-firewall", 0o755, Image),
    d("/bpi/core/security/zero-trust", 0o755, Image),
    d("/bpi/core/security/ueba-engine", 0o755, Image),
    d("/bpi/core/security/soar-engine", 0o755, Image),
    d("/bpi/nxos", 0o755, Image),
    d("/bpi/nxos/drx-control", 0o755, Image),
    d("/bpi/nxos/drx-control/meta-rib", 0o755, Image),
    d("/bpi/nxos/drx-control/trust-scoring", 0o755, Image),
    d("/bpi/nxos/drx-control/policy-engine", 0o755, Image),
    d("/bpi/nxos/drx-control/path-computation", 0o755, Image),
    d("/bpi/nxos/drx-data", 0o755, Image),
    d("/bpi/nxos/drx-data/ebpf-forwarder", 0o755, Image),
    d("/bpi/nxos/drx-data/qlock-steering", 0o755, Image),
    d("/bpi/nxos/drx-data/segment-routing", 0o755, Image),
    d("/bpi/nxos/drx-data/proof-of-forward", 0o755, Image),
    d("/bpi/nxos/vpod-network", 0o755, Image),
    d("/bpi/nxos/vpod-network/port-allocation", 0o755, Image),
    d("/bpi/nxos/vpod-network/network-topology", 0o755, Image),
    d("/bpi/nxos/vpod-network/service-mesh", 0o755, Image),
    d("/bpi/nxos/vpod-network/load-balancing", 0o755, Image),
    // Image defaults; an overlay whose upper layer is on the data partition
    // makes them writable by root.
    d("/bpi/config", 0o755, Image),
    d("/bpi/config/system", 0o755, Image),
    d("/bpi/config/services", 0o755, Image),
    d("/bpi/config/policies", 0o755, Image),
    d("/bpi/config/policies/intent-policies", 0o755, Image),
    d("/bpi/config/policies/security-policies", 0o755, Image),
    d("/bpi/config/policies/trust-policies", 0o755, Image),
    d("/bpi/config/policies/compliance", 0o755, Image),
    // Mount point of the data partition.
    d("/bpi/data", 0o755, Image),
    d("/bpi/data/immutable", 0o750, Data),
    d("/bpi/data/immutable/audit-trails", 0o750, Data),
    d("/bpi/data/immutable/blockchain-state", 0o750, Data),
    d("/bpi/data/immutable/contract-storage", 0o750, Data),
    d("/bpi/data/immutable/proof-chains", 0o750, Data),
    d("/bpi/data/overlay", 0o755, Data),
    d("/bpi/data/overlay/user-data", 0o755, Data),
    d("/bpi/data/overlay/app-configs", 0o755, Data),
    d("/bpi/data/overlay/temp-storage", 0o755, Data),
    d("/bpi/data/overlay/cache-layer", 0o755, Data),
    d("/bpi/data/overlay/etc", 0o755, Data),
    d("/bpi/data/overlay/etc/upper", 0o755, Data),
    d("/bpi/data/overlay/etc/work", 0o700, Data),
    d("/bpi/data/overlay/config", 0o755, Data),
    d("/bpi/data/overlay/config/upper", 0o755, Data),
    d("/bpi/data/overlay/config/work", 0o700, Data),
    d("/bpi/data/encrypted", 0o700, Data),
    d("/bpi/data/encrypted/wallet-keys", 0o700, Data),
    d("/bpi/data/encrypted/tpm-sealed", 0o700, Data),
    d("/bpi/data/encrypted/qlock-sessions", 0o700, Data),
    d("/bpi/data/encrypted/pq-crypto", 0o700, Data),
    // QLock's identity where there is no encrypted store (said in its status).
    d("/bpi/data/pq-crypto", 0o700, Data),
    // Mount point of the runtime tmpfs.
    d("/bpi/runtime", 0o755, Image),
    d("/bpi/runtime/processes", 0o755, Runtime),
    d("/bpi/runtime/processes/vm-processes", 0o755, Runtime),
    d("/bpi/runtime/processes/service-states", 0o755, Runtime),
    d("/bpi/runtime/processes/health-monitors", 0o755, Runtime),
    d("/bpi/runtime/network", 0o755, Runtime),
    // Live QLock sessions and their keys: tmpfs, never on a disk.
    d("/bpi/runtime/qlock-sessions", 0o700, Runtime),
    d("/bpi/runtime/network/active-sessions", 0o755, Runtime),
    d("/bpi/runtime/network/routing-tables", 0o755, Runtime),
    d("/bpi/runtime/network/trust-scores", 0o755, Runtime),
    d("/bpi/runtime/network/traffic-flows", 0o755, Runtime),
    d("/bpi/runtime/logs", 0o755, Runtime),
    d("/bpi/runtime/logs/audit-logs", 0o750, Runtime),
    d("/bpi/runtime/logs/security-events", 0o750, Runtime),
    d("/bpi/runtime/logs/network-events", 0o755, Runtime),
    d("/bpi/runtime/logs/system-metrics", 0o755, Runtime),
];

/// One change to make under a root directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    CreateDir { path: PathBuf, mode: u32 },
    SetMode { path: PathBuf, from: u32, to: u32 },
}

impl Step {
    pub fn path(&self) -> &Path {
        match self {
            Step::CreateDir { path, .. } | Step::SetMode { path, .. } => path,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::CreateDir { path, mode } => write!(f, "create {} mode {mode:04o}", path.display()),
            Step::SetMode { path, from, to } => {
                write!(f, "chmod {} {from:04o} -> {to:04o}", path.display())
            }
        }
    }
}

/// The directories of the chosen homes, in creation order.
pub fn dirs(homes: &[Home]) -> impl Iterator<Item = &'static Dir> + '_ {
    TREE.iter().filter(move |d| homes.contains(&d.home))
}

/// What must change under `root` so the chosen homes of the tree exist with
/// their modes. Reads the tree, changes nothing.
pub fn plan(root: &Path, homes: &[Home]) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for dir in dirs(homes) {
        let path = under(root, dir.path);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                let have = meta.permissions().mode() & 0o7777;
                if have != dir.mode {
                    steps.push(Step::SetMode { path, from: have, to: dir.mode });
                }
            }
            Ok(_) => anyhow::bail!(
                "{} exists but is not a directory; move it away and run again",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                steps.push(Step::CreateDir { path, mode: dir.mode })
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        }
    }
    Ok(steps)
}

/// Carries out a plan. Each step is idempotent, so a re-run after a failure
/// completes the job.
pub fn apply(steps: &[Step]) -> Result<()> {
    for step in steps {
        let (path, mode) = match step {
            Step::CreateDir { path, mode } => {
                match std::fs::create_dir(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
                }
                (path, *mode)
            }
            Step::SetMode { path, to, .. } => (path, *to),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:04o} on {}", path.display()))?;
    }
    Ok(())
}

/// A systemd tmpfiles.d file that creates the chosen homes at boot.
pub fn tmpfiles_conf(homes: &[Home]) -> String {
    let mut out = String::from(
        "# Generated from bpi-installer's layout (installer/src/layout.rs); do not edit.\n",
    );
    for dir in dirs(homes) {
        // `d` creates and fixes the mode; no age, so nothing is ever cleaned.
        writeln!(out, "d {} {:04o} root root -", dir.path, dir.mode).expect("string write");
    }
    out
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_children_and_paths_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for dir in TREE {
            assert!(seen.insert(dir.path), "duplicate {}", dir.path);
            if dir.path != "/bpi" {
                let parent = Path::new(dir.path).parent().unwrap().to_str().unwrap();
                assert!(seen.contains(parent), "{} listed before its parent", dir.path);
            }
        }
    }

    #[test]
    fn design_modes() {
        let mode = |p: &str| TREE.iter().find(|d| d.path == p).unwrap().mode;
        assert_eq!(mode("/bpi/data/encrypted"), 0o700);
        assert_eq!(mode("/bpi/data/immutable"), 0o750);
        assert_eq!(mode("/bpi/core"), 0o755);
        // Nothing below the encrypted store is readable by others.
        for d in TREE.iter().filter(|d| d.path.starts_with("/bpi/data/encrypted")) {
            assert_eq!(d.mode & 0o077, 0, "{}", d.path);
        }
    }

    #[test]
    fn plan_then_apply_then_nothing_left() {
        let tmp = tempfile::tempdir().unwrap();
        let homes = [Image, Data, Runtime];
        let steps = plan(tmp.path(), &homes).unwrap();
        assert_eq!(steps.len(), TREE.len());
        assert!(steps.iter().all(|s| matches!(s, Step::CreateDir { .. })));
        apply(&steps).unwrap();
        assert_eq!(plan(tmp.path(), &homes).unwrap(), vec![]);
        let meta = std::fs::metadata(tmp.path().join("bpi/data/encrypted")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn wrong_mode_is_planned_as_chmod() {
        let tmp = tempfile::tempdir().unwrap();
        apply(&plan(tmp.path(), &[Image]).unwrap()).unwrap();
        let core = tmp.path().join("bpi/core");
        std::fs::set_permissions(&core, std::fs::Permissions::from_mode(0o777)).unwrap();
        let steps = plan(tmp.path(), &[Image]).unwrap();
        assert_eq!(steps, vec![Step::SetMode { path: core, from: 0o777, to: 0o755 }]);
    }

    #[test]
    fn a_file_in_the_way_is_an_error_not_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("bpi"), b"x").unwrap();
        let err = plan(tmp.path(), &[Image]).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn tmpfiles_covers_only_boot_time_homes() {
        let conf = tmpfiles_conf(&[Data, Runtime]);
        assert!(conf.contains("d /bpi/data/encrypted 0700 root root -\n"));
        assert!(conf.contains("d /bpi/runtime/network 0755 root root -\n"));
        assert!(!conf.contains("/bpi/core"));
    }
}

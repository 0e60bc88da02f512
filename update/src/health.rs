//! What a bpi-os node must have to call a boot healthy (docs/updates.md):
//! the verity root, the data partition, a ledger that verifies, and every
//! unit the preset enables not failed (the long-running ones active). A
//! healthy boot blesses its UKI; a failed one is written down on the data
//! partition (shared by both slots) so the version booted next can say why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One result file per version.
pub const HEALTH_DIR: &str = "/var/lib/bpi-os/update/health";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    pub healthy: bool,
    pub checks: Vec<Check>,
    /// Unix seconds.
    pub at: u64,
    /// Boots of this version found unhealthy so far.
    pub failed_boots: u32,
}

impl Report {
    pub fn new(version: &str, checks: Vec<Check>, at: u64, earlier: Option<&Report>) -> Report {
        let healthy = checks.iter().all(|c| c.ok);
        let failed_boots = earlier.map_or(0, |e| e.failed_boots) + u32::from(!healthy);
        Report { version: version.to_string(), healthy, checks, at, failed_boots }
    }

    /// The failed checks, as one line.
    pub fn reasons(&self) -> String {
        self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect::<Vec<_>>().join("; ")
    }
}

pub fn report_path(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("{version}.json"))
}

pub fn load(dir: &Path, version: &str) -> Option<Report> {
    let bytes = bpi_support::fsmode::read_small(&report_path(dir, version), 1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn save(dir: &Path, r: &Report) -> anyhow::Result<()> {
    bpi_support::fsmode::create_dirs(dir, 0o755)?;
    bpi_support::fsmode::write_atomic(&report_path(dir, &r.version), (serde_json::to_string_pretty(r)? + "\n").as_bytes(), 0o644)?;
    Ok(())
}

/// Every report on record (one per version that was checked).
pub fn all(dir: &Path) -> Vec<Report> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<Report> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .filter_map(|v| load(dir, &v))
        .collect();
    out.sort_by(|a, b| a.version.cmp(&b.version));
    out
}

/// The state of one unit as `systemctl show -p ActiveState,Type` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub unit: String,
    pub active_state: String,
    pub service_type: String,
    /// Whether its conditions let it run on this boot (a unmet condition is no failure).
    pub condition_met: bool,
}

/// `systemctl show --property=Id,ActiveState,Type,ConditionResult UNIT...`:
/// one block per unit, blank lines between them.
pub fn parse_show(out: &str) -> Vec<UnitState> {
    out.split("\n\n")
        .filter_map(|block| {
            let get = |k: &str| block.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
            Some(UnitState {
                unit: get("Id")?,
                active_state: get("ActiveState").unwrap_or_default(),
                service_type: get("Type").unwrap_or_default(),
                condition_met: get("ConditionResult").as_deref() != Some("no"),
            })
        })
        .collect()
}

/// A unit is healthy when it has not failed, and a daemon (not a oneshot)
/// whose conditions were met is active.
pub fn unit_check(u: &UnitState) -> Check {
    let daemon = u.unit.ends_with(".service") && u.service_type != "oneshot";
    let ok = u.active_state != "failed" && (!daemon || !u.condition_met || u.active_state == "active");
    Check { name: u.unit.clone(), ok, detail: if ok { u.active_state.clone() } else { format!("{} (want active)", u.active_state) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, state: &str, kind: &str, met: bool) -> UnitState {
        UnitState { unit: name.into(), active_state: state.into(), service_type: kind.into(), condition_met: met }
    }

    #[test]
    fn systemctl_show_blocks_parse_per_unit() {
        let out = "Type=oneshot\nActiveState=inactive\nConditionResult=no\nId=bpi-store.service\n\nType=\nActiveState=active\nConditionResult=yes\nId=tmp.mount\n";
        let s = parse_show(out);
        assert_eq!(s, vec![unit("bpi-store.service", "inactive", "oneshot", false), unit("tmp.mount", "active", "", true)]);
        assert!(unit_check(&s[0]).ok);
        assert!(parse_show("").is_empty());
    }

    #[test]
    fn units_and_reports() {
        assert!(unit_check(&unit("bpi-drx-data.service", "active", "notify", true)).ok);
        assert!(!unit_check(&unit("bpi-drx-data.service", "failed", "notify", true)).ok);
        assert!(!unit_check(&unit("bpi-drx-data.service", "activating", "notify", true)).ok);
        assert!(unit_check(&unit("bpi-store.service", "inactive", "oneshot", false)).ok);
        assert!(unit_check(&unit("bpi-store-init.service", "active", "oneshot", true)).ok);
        assert!(unit_check(&unit("tmp.mount", "active", "", true)).ok);
        let dir = tempfile::tempdir().unwrap();
        let bad = Report::new("0.3.0", vec![unit_check(&unit("bpi-drx-data.service", "failed", "notify", true))], 5, None);
        assert!(!bad.healthy);
        assert_eq!(bad.reasons(), "bpi-drx-data.service: failed (want active)");
        save(dir.path(), &bad).unwrap();
        let again = Report::new("0.3.0", bad.checks.clone(), 6, load(dir.path(), "0.3.0").as_ref());
        assert_eq!(again.failed_boots, 2);
        assert_eq!(all(dir.path()), vec![bad]);
    }
}

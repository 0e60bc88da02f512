//! The boot disk's slots as its partition table says, and the table changes
//! an update makes (pure): retire the target slot first (label `_empty`,
//! UUIDs that no root hash names), write it, then activate it (the halves of
//! the new root hash as UUIDs, versioned labels). A run killed in between
//! leaves a slot no UKI boots, and the running slot as it was.

use anyhow::{ensure, Result};
use bpi_formats::gpt::{self, types, Partition};
use bpi_formats::slots::{self, Slot, EMPTY_LABEL, SLOTS};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    pub slot: char,
    /// The version its labels name; None when `_empty`.
    pub version: Option<String>,
    pub root_uuid: String,
    pub running: bool,
    pub root_bytes: u64,
    pub verity_bytes: u64,
}

/// Both slots of a table, marking the one whose root UUID is the running
/// root hash's first half.
pub fn states(parts: &[Partition], running_root_hash: &str) -> Result<Vec<SlotState>> {
    let (running_uuid, _) = slots::uuids_of_root_hash(running_root_hash)?;
    let mut out = Vec::new();
    for s in SLOTS {
        let (Some(root), Some(verity)) = (parts.get(s.root_entry), parts.get(s.verity_entry)) else {
            anyhow::bail!("the boot disk has no slot {} (partitions {} and {}): it was installed before A/B updates; reinstall it to update in place", s.name, s.root_entry + 1, s.verity_entry + 1);
        };
        ensure!(
            root.type_guid == types::ROOT_X86_64 && verity.type_guid == types::ROOT_X86_64_VERITY,
            "partitions {} and {} of the boot disk are not a root and verity pair: this disk is not laid out in bpi-os slots",
            s.root_entry + 1,
            s.verity_entry + 1
        );
        out.push(SlotState {
            slot: s.name,
            version: slots::version_of_label(&root.name).map(str::to_string),
            root_uuid: root.guid.clone(),
            running: root.guid == running_uuid,
            root_bytes: root.size(),
            verity_bytes: verity.size(),
        });
    }
    ensure!(out.iter().filter(|s| s.running).count() == 1, "neither slot holds the running root (hash {running_root_hash}): was this booted from another disk?");
    Ok(out)
}

/// The slot an update writes: the one not running.
pub fn target(states: &[SlotState]) -> Slot {
    let running = states.iter().find(|s| s.running).map(|s| s.slot).unwrap_or('a');
    SLOTS.iter().copied().find(|s| s.name != running).expect("two slots")
}

/// The table with `slot` marked empty.
pub fn retired(parts: &[Partition], disk_guid: &str, slot: Slot) -> Vec<Partition> {
    let mut p = parts.to_vec();
    for (i, what) in [(slot.root_entry, "root"), (slot.verity_entry, "verity")] {
        p[i].name = EMPTY_LABEL.into();
        p[i].guid = gpt::derived_guid(format!("bpi-os empty slot {} {what} {disk_guid}", slot.name).as_bytes());
    }
    p
}

/// The table with `slot` holding `version` whose root hash is `root_hash`.
pub fn activated(parts: &[Partition], slot: Slot, version: &str, root_hash: &str) -> Result<Vec<Partition>> {
    let (root_uuid, verity_uuid) = slots::uuids_of_root_hash(root_hash)?;
    ensure!(!parts.iter().any(|p| p.guid == root_uuid), "a partition of this disk already has the UUID of root hash {root_hash}");
    let mut p = parts.to_vec();
    p[slot.root_entry].name = slots::root_label(version);
    p[slot.root_entry].guid = root_uuid;
    p[slot.verity_entry].name = slots::verity_label(version);
    p[slot.verity_entry].guid = verity_uuid;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(running: &str) -> Vec<Partition> {
        let (r, v) = slots::uuids_of_root_hash(running).unwrap();
        let p = |t: &str, guid: String, name: &str, first: u64| Partition { type_guid: t.into(), guid, name: name.into(), first_lba: first, last_lba: first + 2047, attributes: 0 };
        vec![
            p(types::ESP, gpt::derived_guid(b"esp"), "bpi-esp", 2048),
            p(types::ROOT_X86_64, r, "bpi-root_0.1.0", 4096),
            p(types::ROOT_X86_64_VERITY, v, "bpi-verity_0.1.0", 6144),
            p(types::ROOT_X86_64, gpt::derived_guid(b"e1"), EMPTY_LABEL, 8192),
            p(types::ROOT_X86_64_VERITY, gpt::derived_guid(b"e2"), EMPTY_LABEL, 10240),
            p(types::LINUX_GENERIC, gpt::derived_guid(b"data"), "bpi-data", 12288),
        ]
    }

    #[test]
    fn retire_then_activate_touches_only_the_target_slot() {
        let (h1, h2) = ("11".repeat(32), "22".repeat(32));
        let t = table(&h1);
        let st = states(&t, &h1).unwrap();
        assert_eq!((st[0].running, st[0].version.as_deref()), (true, Some("0.1.0")));
        assert_eq!((st[1].running, st[1].version.as_deref()), (false, None));
        let b = target(&st);
        assert_eq!(b.name, 'b');
        let r = retired(&t, "disk", b);
        assert_eq!(r[3].name, EMPTY_LABEL);
        assert_eq!(r[..3], t[..3]);
        assert_eq!(r[5], t[5]);
        let a = activated(&r, b, "0.2.0", &h2).unwrap();
        assert_eq!(a[3].name, "bpi-root_0.2.0");
        assert_eq!(a[4].name, "bpi-verity_0.2.0");
        assert_eq!(a[3].guid, slots::uuids_of_root_hash(&h2).unwrap().0);
        assert_eq!((a[3].first_lba, a[4].last_lba), (t[3].first_lba, t[4].last_lba));
        // Booted into 0.2.0, slot A is the target next time.
        let st2 = states(&a, &h2).unwrap();
        assert_eq!(target(&st2).name, 'a');
        // The same root hash in both slots would make the boot ambiguous.
        assert!(activated(&a, SLOTS[0], "0.2.0", &h2).is_err());
    }

    #[test]
    fn disks_without_slots_are_refused() {
        let h = "11".repeat(32);
        let t = table(&h);
        assert!(states(&t[..3], &h).unwrap_err().to_string().contains("before A/B"));
        assert!(states(&t, &"33".repeat(32)).unwrap_err().to_string().contains("neither slot"));
        let mut odd = t.clone();
        odd[3].type_guid = types::LINUX_GENERIC.into();
        assert!(states(&odd, &h).is_err());
    }
}

//! The A/B slots: two root + verity partition pairs of fixed size. The slot
//! that runs is the one whose partition UUIDs are the halves of the root hash
//! the booted UKI carries (systemd's veritysetup generator finds them so);
//! the other is the one an update writes. An unused pair is labelled
//! `_empty`, as systemd-sysupdate and ParticleOS label theirs.

/// A root slot's size: room for today's root (~340 MB) with headroom for
/// later versions, since an installed disk keeps its partitions forever.
pub const ROOT_SLOT_SIZE: u64 = 512 << 20;
/// A verity slot's size: a SHA-256 tree over 4 KiB blocks of a full root
/// slot is 1/128 of it plus the upper levels (~4.1 MiB); twice that.
pub const VERITY_SLOT_SIZE: u64 = 8 << 20;

/// The label of a slot partition that holds nothing bootable.
pub const EMPTY_LABEL: &str = "_empty";

/// The GPT entry indexes (0-based) of each slot's root and verity partitions;
/// the ESP is entry 0.
pub const SLOTS: [Slot; 2] = [Slot { name: 'a', root_entry: 1, verity_entry: 2 }, Slot { name: 'b', root_entry: 3, verity_entry: 4 }];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub name: char,
    pub root_entry: usize,
    pub verity_entry: usize,
}

impl Slot {
    pub fn other(&self) -> Slot {
        if self.name == 'a' {
            SLOTS[1]
        } else {
            SLOTS[0]
        }
    }
}

pub fn root_label(version: &str) -> String {
    format!("bpi-root_{version}")
}

pub fn verity_label(version: &str) -> String {
    format!("bpi-verity_{version}")
}

/// The version a slot's root label names, if it is one of ours.
pub fn version_of_label(label: &str) -> Option<&str> {
    label.strip_prefix("bpi-root_").filter(|v| !v.is_empty())
}

/// The partition UUIDs systemd derives from a root hash: the first and
/// second 128 bits (Discoverable Partitions Specification, "verity").
pub fn uuids_of_root_hash(root_hash: &str) -> anyhow::Result<(String, String)> {
    let rh = hex::decode(root_hash).map_err(|_| anyhow::anyhow!("root hash {root_hash:?} is not hex"))?;
    anyhow::ensure!(rh.len() == 32, "root hash {root_hash:?} is not 256 bits");
    Ok((crate::gpt::guid_string(&rh[..16]), crate::gpt::guid_string(&rh[16..])))
}

/// The UKI of a version on the ESP, under EFI/Linux; systemd-boot sorts
/// these by os-release version, newest first, and counts tries in the name.
pub fn uki_name(version: &str, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("bpi-os_{version}+{n}.efi"),
        None => format!("bpi-os_{version}.efi"),
    }
}

/// A UKI file name on the ESP, parsed: (version, tries left, tries done),
/// the counters absent on a blessed (or never counted) entry.
pub fn parse_uki_name(name: &str) -> Option<(String, Option<u32>, Option<u32>)> {
    let stem = name.strip_prefix("bpi-os_")?.strip_suffix(".efi")?;
    let Some((version, counter)) = stem.rsplit_once('+') else {
        return (!stem.is_empty()).then(|| (stem.to_string(), None, None));
    };
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse().ok()?, Some(d.parse().ok()?)),
        None => (counter.parse().ok()?, None),
    };
    (!version.is_empty()).then(|| (version.to_string(), Some(left), done))
}

/// Tries a freshly installed UKI gets before systemd-boot gives up on it.
pub const TRIES: u32 = 3;
/// The most `bpi-os update apply --tries` accepts: a version that fails this
/// often would keep a node down for a long while before falling back.
pub const MAX_TRIES: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uki_names_round_trip_with_counters() {
        assert_eq!(uki_name("0.2.0", Some(3)), "bpi-os_0.2.0+3.efi");
        assert_eq!(parse_uki_name("bpi-os_0.2.0+3.efi"), Some(("0.2.0".into(), Some(3), None)));
        assert_eq!(parse_uki_name("bpi-os_0.2.0+0-3.efi"), Some(("0.2.0".into(), Some(0), Some(3))));
        assert_eq!(parse_uki_name("bpi-os_0.2.0.efi"), Some(("0.2.0".into(), None, None)));
        assert_eq!(parse_uki_name("bpi-os.efi"), None);
        assert_eq!(parse_uki_name("bpi-os_+3.efi"), None);
        assert_eq!(parse_uki_name("bpi-os_1.0+x.efi"), None);
    }

    #[test]
    fn labels_and_uuids() {
        assert_eq!(version_of_label(&root_label("1.2.3")), Some("1.2.3"));
        assert_eq!(version_of_label(EMPTY_LABEL), None);
        assert!(verity_label("0.1.0-rc.1+build.20").encode_utf16().count() <= 36);
        let (a, b) = uuids_of_root_hash(&"ab".repeat(32)).unwrap();
        assert_eq!(a, "abababab-abab-abab-abab-abababababab");
        assert_eq!(b, a);
        assert!(uuids_of_root_hash("abc").is_err());
        assert_eq!(SLOTS[0].other(), SLOTS[1]);
        assert_eq!(SLOTS[1].other().name, 'a');
    }
}

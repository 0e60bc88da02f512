//! Every service the image ships, scored by `systemd-analyze security
//! --offline` (systemd's own exposure rating, 0 safest to 10): a unit whose
//! score rises past its bound here fails, and a new unit must be given one.

use std::path::Path;

use bpi_support::{skip, Cmd};

/// The most exposure each unit may have, and why where it is above 2.0.
const BOUNDS: &[(&str, f64, &str)] = &[
    ("bpi-ledger.service", 1.0, ""),
    ("bpi-drx-control.service", 1.0, ""),
    ("bpi-drx-data.service", 2.0, ""),
    ("bpi-qlock.service", 1.6, ""),
    ("bpi-health.service", 2.0, ""),
    // Downloads (the network) and writes the inactive slot's raw partitions,
    // the partition table and the ESP as root.
    ("bpi-update.service", 3.0, "downloads and writes raw partitions"),
    // Both mount the store into the host's namespace and drive cryptsetup and
    // the TPM2 on raw devices: no private namespaces, root, full /dev
    // (the floor is explained in the units).
    ("bpi-store.service", 7.8, "mounts into the host namespace"),
    ("bpi-store-init.service", 7.8, "mounts into the host namespace"),
    // Writes /etc (users, host name, connections, host keys), /var and
    // /bpi/config, mounts the cidata drive from a raw device, sets the host name.
    ("bpi-provision.service", 4.4, "configures the system itself on first boot"),
];

fn exposure(unit: &Path) -> f64 {
    let out = Cmd::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(unit).output().unwrap_or_else(|e| panic!("{e:#}"));
    let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no exposure line for {}: {out}", unit.display()));
    let score = line.split(": ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
    score.parse().unwrap_or_else(|_| panic!("cannot read the exposure in '{line}'"))
}

#[test]
fn every_service_is_within_its_exposure_bound() {
    if !skip::needs_program("systemd-analyze", "systemd") {
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
    let mut seen = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let (_, bound, why) = BOUNDS.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| panic!("{name} has no exposure bound in this test"));
        assert!(*bound <= 2.0 || !why.is_empty(), "{name}: a bound over 2.0 needs its reason");
        let score = exposure(&path);
        eprintln!("{name}: exposure {score} (bound {bound})");
        assert!(score <= *bound, "{name}: exposure {score} is over its bound {bound}");
        seen += 1;
    }
    assert_eq!(seen, BOUNDS.len(), "a unit in BOUNDS is gone from units/");
}

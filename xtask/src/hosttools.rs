//! Host tools the build and tests need, and the Debian packages that carry
//! them. Missing ones are installed with apt-get when we run as root;
//! otherwise the error names the packages.

use anyhow::{bail, Result};
use bpi_support::{cmd::which, progress, Cmd};

/// (program or file, Debian package)
pub const BUILD: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("veritysetup", "cryptsetup-bin"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("objcopy", "binutils"),
    ("qemu-img", "qemu-utils"),
    ("sfdisk", "fdisk"),
    ("systemctl", "systemd"),
    ("systemd-sysusers", "systemd"),
    ("zstd", "zstd"),
    // The data plane's eBPF C, compiled with clang -target bpf.
    ("clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("/usr/include/linux/bpf.h", "linux-libc-dev"),
];

pub const TEST: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    // The ledger's D-Bus tests run a private bus and call it with dbus-send.
    ("dbus-daemon", "dbus-daemon"),
    ("dbus-send", "dbus-bin"),
    ("chattr", "e2fsprogs"),
    // Software TPM2 for the encrypted store's QEMU tests.
    ("swtpm", "swtpm"),
    // The data plane's veth tests and benchmarks: traffic, VLAN offload off,
    // and the reference filters (xdp-filter, nftables) and generator (trafgen).
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("ethtool", "ethtool"),
    ("xdp-filter", "xdp-tools"),
    ("nft", "nftables"),
    ("trafgen", "netsniff-ng"),
];

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        std::path::Path::new(what).exists()
    } else {
        which(what).is_some()
    }
}

/// Makes sure every tool in `sets` is there.
pub fn ensure(sets: &[&[(&str, &str)]]) -> Result<()> {
    let mut missing: Vec<&str> = sets
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(what, _)| !present(what))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !bpi_support::host::is_root() {
        bail!(
            "missing host packages: {}. Install them with: sudo apt-get install {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    progress::note(&format!("installing missing host packages with apt-get: {}", missing.join(" ")));
    Cmd::new("apt-get").arg("update").echo().run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .echo()
        .run()?;
    let still: Vec<&str> = sets.iter().flat_map(|s| s.iter()).filter(|(w, _)| !present(w)).map(|(w, _)| *w).collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    Ok(())
}


//! Host tools the build and tests need, and the Debian packages that carry
//! them. They are one set: when anything is missing and we run as root, every
//! missing package of the whole set is installed in one apt transaction that
//! may remove nothing (apt's simulation is read first; see [`crate::apt`]).
//! Otherwise the error names the packages.

use std::sync::Once;

use anyhow::{bail, Context, Result};
use bpi_support::{cmd::which, progress, Cmd};

use crate::apt::{self, Pin};

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
    ("git", "git"),
    // The data plane's eBPF C, compiled with clang -target bpf.
    ("clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("/usr/include/linux/bpf.h", "linux-libc-dev"),
    // Secure Boot: keys (openssl), signature lists and authenticated
    // variables (efitools), Authenticode signing (sbsigntool).
    ("openssl", "openssl"),
    ("cert-to-efi-sig-list", "efitools"),
    ("sign-efi-sig-list", "efitools"),
    ("sbsign", "sbsigntool"),
    ("sbverify", "sbsigntool"),
    // sbsign's signing time frozen at the build's epoch (reproducibility).
    ("faketime", "faketime"),
    // BIOS boot: GRUB's i386-pc boot sector and core image (docs/boot.md).
    ("grub-mkimage", "grub-common"),
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    // A signed UKI's PCR 11 policy: systemd 252's systemd-measure needs a
    // TPM for the policy digest, a software one here (image/src/pcr.rs).
    ("swtpm", "swtpm"),
];

pub const TEST: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    // The UKI test checks our PE checksum against objcopy's on systemd's stub.
    ("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "systemd-boot-efi"),
    // The ledger's D-Bus tests run a private bus and call it with dbus-send.
    ("dbus-daemon", "dbus-daemon"),
    ("dbus-send", "dbus-bin"),
    // libFuzzer (the fuzz targets, `cargo xtask fuzz`) is C++.
    ("g++", "g++"),
    // Every unit's exposure is scored offline (formats/tests/unit_security.rs).
    ("systemd-analyze", "systemd"),
    ("chattr", "e2fsprogs"),
    ("losetup", "mount"),
    ("cryptsetup", "cryptsetup-bin"),
    // The independent ledger verifier (tools/verify-ledger.py).
    ("python3", "python3"),
    // (swtpm, the encrypted store's TPM2 in the QEMU tests, is in BUILD.)
    // Provisioning's QEMU tests: a cloud-init ISO made as Proxmox makes it,
    // and SSH into the guest (keys, host key scan, login).
    ("genisoimage", "genisoimage"),
    ("ssh", "openssh-client"),
    ("ssh-keyscan", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    // The data plane's veth tests and benchmarks: traffic, VLAN offload off,
    // and the reference filters (xdp-filter, nftables) and generator (trafgen).
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("ethtool", "ethtool"),
    ("xdp-filter", "xdp-tools"),
    ("nft", "nftables"),
    ("trafgen", "netsniff-ng"),
];

/// Every set, for the one transaction.
const ALL: &[Set] = &[BUILD, TEST];

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        std::path::Path::new(what).exists()
    } else {
        which(what).is_some()
    }
}

type Set = &'static [(&'static str, &'static str)];

fn missing_packages(sets: &[Set]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = sets.iter().flat_map(|s| s.iter()).filter(|(what, _)| !present(what)).map(|(_, pkg)| *pkg).collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Makes sure every tool in `sets` is there, installing (as root) whatever
/// the whole host set lacks in one transaction; then prints the versions of
/// the host packages, once per run.
pub fn ensure(sets: &[Set]) -> Result<()> {
    let needed = missing_packages(sets);
    if !needed.is_empty() {
        if !bpi_support::host::is_root() {
            bail!(
                "missing host packages: {}. Install them with: sudo apt-get install --no-install-recommends {}",
                needed.join(", "),
                needed.join(" ")
            );
        }
        install(&missing_packages(ALL))?;
        let still: Vec<&str> = ALL.iter().flat_map(|s| s.iter()).filter(|(w, _)| !present(w)).map(|(w, _)| *w).collect();
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(", "));
        }
    }
    static VERSIONS: Once = Once::new();
    let mut result = Ok(());
    VERSIONS.call_once(|| result = print_versions());
    result
}

fn install(packages: &[&str]) -> Result<()> {
    progress::note(&format!("installing missing host packages with apt-get: {}", packages.join(" ")));
    Cmd::new("apt-get").arg("update").echo().run()?;
    let mut args: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let first = simulate(&args)?;
    let pins = apt::pins_for_removals(&first, available_versions)?;
    if !pins.is_empty() {
        args.extend(pins.iter().map(Pin::arg));
        let second = simulate_allowing_downgrades(&args)?;
        let left = apt::removals(&second);
        if !left.is_empty() {
            bail!(
                "apt would still remove {} to install the host tools, even with {}. Install a consistent set by hand, then run this again",
                left.join(", "),
                pins.iter().map(Pin::arg).collect::<Vec<_>>().join(" ")
            );
        }
        for p in &pins {
            progress::note(&format!(
                "{}: {} -> {}, the version of {} in this transaction (apt would otherwise remove {})",
                p.package, p.installed, p.version, p.matches, p.package
            ));
        }
    }
    // --no-remove: should the real run differ from the simulation, apt stops
    // instead of removing anything.
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "--no-remove"])
        .args((!pins.is_empty()).then_some("--allow-downgrades"))
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .echo()
        .run()
        .context("apt-get install of the host tools failed; nothing was removed")?;
    Ok(())
}

fn simulate(args: &[String]) -> Result<Vec<apt::Action>> {
    let out = Cmd::new("apt-get").args(["install", "-s", "--no-install-recommends"]).args(args).output()?;
    Ok(apt::parse_simulation(&out))
}

fn simulate_allowing_downgrades(args: &[String]) -> Result<Vec<apt::Action>> {
    let out = Cmd::new("apt-get").args(["install", "-s", "--no-install-recommends", "--allow-downgrades"]).args(args).output()?;
    Ok(apt::parse_simulation(&out))
}

fn available_versions(package: &str) -> Result<Vec<String>> {
    Ok(apt::parse_madison(&Cmd::new("apt-cache").args(["madison", package]).output()?))
}

/// One line naming every host package and its installed version.
fn print_versions() -> Result<()> {
    let mut packages: Vec<&str> = ALL.iter().flat_map(|s| s.iter()).map(|(_, p)| *p).collect();
    packages.sort();
    packages.dedup();
    // Every installed package, filtered here: dpkg-query fails on a name it
    // has no record of (a tool found on PATH outside Debian's packages).
    let all = Cmd::new("dpkg-query").args(["-W", "-f=${Package} ${Version}\n"]).output()?;
    let versions: Vec<String> = all
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(p, v)| !v.is_empty() && packages.binary_search(p).is_ok())
        .map(|(p, v)| format!("{p} {v}"))
        .collect();
    progress::note(&format!("host packages: {}", versions.join(", ")));
    Ok(())
}

//! End-to-end: the built image booted under QEMU (TCG unless
//! BPI_QEMU_ACCEL=kvm works) and checked from outside through the guest agent.
//! The first test's two boots also carry the data plane (data_plane.rs, on
//! the first boot, which has no provisioning) and the ledger service
//! (ledger.rs, an entry before the reboot checked after it).

mod bios;
mod data_plane;
mod ledger;
mod secure_boot;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bpi_image::manifest::Manifest;
use bpi_formats::layout::{self, Home};
use bpi_qemu_tests::image_dir;
use bpi_qemu_tests::logscan::tail;
use bpi_qemu_tests::fixtures;
use bpi_qemu_tests::vm::{copy_image, flip_byte, ExtraDisk, Firmware, Machine, VmOptions};

fn manifest() -> Result<Manifest> {
    Manifest::load(&image_dir().join("manifest.json"))
}

fn raw() -> std::path::PathBuf {
    image_dir().join("bpi-os.raw")
}

/// A sparse copy of the image with one bit flipped at `offset` inside the
/// root partition; the copy lives as long as the returned directory.
fn tampered_copy(offset: u64) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let m = manifest()?;
    let root = m.root_partition().context("manifest has no root partition")?;
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("tampered.raw");
    copy_image(&raw(), &copy)?;
    flip_byte(&copy, root.offset + offset)?;
    Ok((dir, copy))
}

#[test]
fn boots_under_secure_boot_read_only_verity_root_and_keeps_state_across_reboot() -> Result<()> {
    let m = manifest()?;
    ensure!(m.signed_by.is_some(), "the image under test is unsigned: `cargo xtask test` builds it with --sign-with (docs/boot.md)");
    // OVMF with Secure Boot, its variables empty (Setup Mode), and a TPM2
    // (swtpm): systemd-boot enrolls the image's keys and resets; from then on
    // the firmware checks every image it starts, and the first boot of Linux
    // creates the encrypted store sealed to PCR 7, which now measures the
    // Secure Boot state and keys.
    // The disk is a copy with one byte of the verity canary's data changed:
    // nothing reads that file on its own, so the node boots as built, and
    // reading it is the tamper test for file data under UEFI.
    let (_copy_dir, copy) = tampered_copy(m.verity_canary.root_offset + 100)?;
    let tpm = tempfile::tempdir()?;
    let mut opts = VmOptions::new(copy);
    opts.tpm_state = Some(tpm.path().to_path_buf());
    opts.firmware = Firmware::OvmfSecureBoot;
    let ports = data_plane::Ports::add_to(&mut opts)?;
    let machine = Machine::new(opts)?;
    let mut vm = machine.start(1)?;
    secure_boot::check_enrolled(&machine)?;
    data_plane::wait_ssh(&vm, &ports)?;
    let took = vm.wait_booted()?;
    eprintln!("FIGURE boot to multi-user.target (first boot, OVMF with Secure Boot, {}): {:.1}s", machine.opts.accel, took.as_secs_f64());
    print_boot_profile(&vm, "first boot")?;
    vm.check_logs()?;
    ensure!(vm.sh("systemctl is-active multi-user.target")?.trim() == "active");
    secure_boot::check_on(&vm)?;

    // The root: erofs on dm-verity, read-only, pinned to the built root hash.
    let root = vm.sh("findmnt -no FSTYPE,SOURCE,OPTIONS /")?;
    let f: Vec<&str> = root.split_whitespace().collect();
    ensure!(f.first() == Some(&"erofs"), "root is not erofs: {root}");
    ensure!(f.get(1) == Some(&"/dev/mapper/root"), "root is not the verity device: {root}");
    ensure!(f.get(2).is_some_and(|o| o.split(',').any(|x| x == "ro")), "root is not read-only: {root}");
    let dm = vm.sh("dmsetup table root 2>/dev/null || veritysetup status root")?;
    ensure!(dm.contains("verity") || dm.contains("VERITY"), "root is not a verity target: {dm}");
    let write = vm.sh_any("touch /usr/bpi-write-test")?;
    ensure!(write.code != 0, "writing to /usr succeeded");

    // The preset's `disable` lines hold for Debian's units.
    for unit in bpi_formats::units::disabled() {
        let state = vm.sh_any(&format!("systemctl is-enabled {unit}"))?;
        ensure!(state.stdout.trim() == "disabled", "{unit} is {:?}, not disabled as the preset says", state.stdout.trim());
    }

    // Version and status from the binary that was built.
    let version = vm.sh("bpi-os --version")?;
    ensure!(version.trim() == format!("bpi-os {}", m.version), "guest says {version:?}, built {}", m.version);
    let status: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os status --json")?)?;
    ensure!(status["root_hash"] == m.root_hash, "status root hash {} != manifest {}", status["root_hash"], m.root_hash);
    ensure!(status["verity"]["active"] == true, "status: {status}");
    ensure!(status["verity"]["state"] == "verified", "status: {status}");
    ensure!(status["data"]["mounted"] == true, "status: {status}");
    // The documentation a node carries: docs, man pages and completions made
    // from the binary's own command definition.
    vm.sh("test -s /usr/share/doc/bpi-os/README.md && test -s /usr/share/doc/bpi-os/docs/cli.md && test -s /usr/share/doc/bpi-os/LICENSE")?;
    let man = vm.sh("ls /usr/share/man/man1 | grep -c '^bpi-os.*\\.1$'; grep -c 'subcmd__ledger' /usr/share/bash-completion/completions/bpi-os")?;
    ensure!(man.lines().next().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 30), "man pages missing in the guest: {man}");
    ensure!(man.lines().nth(1).is_some_and(|n| n != "0"), "bash completion does not know `ledger`: {man}");

    // The /bpi tree with the modes of DESIGN.md.
    let paths: Vec<&str> = layout::dirs(&[Home::Image, Home::Data, Home::Runtime]).map(|d| d.path).collect();
    let stat = vm.sh(&format!("stat -c '%n %a %U' {}", paths.join(" ")))?;
    for dir in layout::dirs(&[Home::Image, Home::Data, Home::Runtime]) {
        let want = format!("{} {:o} root", dir.path, dir.mode);
        ensure!(stat.lines().any(|l| l == want), "expected `{want}` in the guest; got:\n{stat}");
    }
    ensure!(vm.sh("findmnt -no FSTYPE /bpi/runtime")?.trim() == "tmpfs");
    ensure!(vm.sh("findmnt -no FSTYPE /tmp")?.trim() == "tmpfs", "/tmp is not a writable tmpfs");
    ensure!(vm.sh("findmnt -no FSTYPE /etc")?.trim() == "overlay");
    ensure!(vm.sh("findmnt -no FSTYPE /bpi/data")?.trim() == "ext4");

    // The encrypted store: LUKS2, TPM2-enrolled, unlocked and mounted; the
    // recovery key shown on the console and kept in /run only.
    let store: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os store status --json")?)?;
    ensure!(store["initialized"] == true && store["tpm2_enrolled"] == true && store["mounted"] == true, "store: {store}");
    ensure!(vm.sh("findmnt -no SOURCE /bpi/data/encrypted")?.trim() == "/dev/mapper/bpi-store");
    secure_boot::check_signed_pcr_seal(&vm)?;
    let key = vm.sh("cat /run/bpi-os/store-recovery-key")?;
    ensure!(key.len() == 71 && vm.serial().contains(key.trim()), "the recovery key was not shown on the console");
    let journal = vm.sh("journalctl -b --no-pager")?;
    ensure!(!journal.contains(key.trim()), "the recovery key is in the journal");
    // And it opens the volume.
    vm.sh("cryptsetup open --test-passphrase --key-file /run/bpi-os/store-recovery-key /dev/disk/by-partlabel/bpi-store")?;

    // Read after the status above: a detected corruption marks the verity
    // device's status `corrupted` for the rest of the boot.
    canary_reads_as_io_error(&vm, &m)?;
    vm.check_logs()?;

    data_plane::checks(&vm, &ports)?;
    let ledger_token = ledger::before_reboot(&vm)?;

    // State: /etc and /bpi/data persist, /bpi/runtime does not.
    let token = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    vm.sh(&format!(
        "echo {token} > /etc/bpi-test && echo {token} > /bpi/data/bpi-test && echo {token} > /bpi/runtime/bpi-test && echo {token} > /bpi/data/encrypted/bpi-test && sync"
    ))?;
    vm.poweroff()?;

    let mut vm = machine.start(2)?;
    let took = vm.wait_booted()?;
    eprintln!("FIGURE boot to multi-user.target (second boot): {:.1}s", took.as_secs_f64());
    print_boot_profile(&vm, "second boot")?;
    vm.check_logs()?;
    ensure!(vm.sh("cat /etc/bpi-test")?.trim() == token, "/etc lost its file across reboot");
    ensure!(vm.sh("cat /bpi/data/bpi-test")?.trim() == token, "/bpi/data lost its file across reboot");
    ensure!(vm.sh_any("test -e /bpi/runtime/bpi-test")?.code != 0, "/bpi/runtime kept a file across reboot");
    // The store unlocked itself from the TPM2, without a prompt.
    ensure!(vm.sh("cat /bpi/data/encrypted/bpi-test")?.trim() == token, "the encrypted store lost its file, or is not open");
    ensure!(vm.sh("systemctl is-active bpi-store.service")?.trim() == "active");
    ledger::after_reboot(&vm, &ledger_token)?;
    // QLock started by itself on the Meta-RIB the first boot wrote, and made
    // its identity inside the encrypted store (docs/qlock.md).
    ensure!(vm.sh("systemctl is-active bpi-qlock.service")?.trim() == "active", "bpi-qlock.service is not running");
    let id: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os nxos identity show --json")?)?;
    ensure!(id["encrypted_store"] == true && id["key_file"] == "/bpi/data/encrypted/pq-crypto/qlock-identity.key", "the QLock identity is not in the store: {id}");
    ensure!(vm.sh("stat -c %a /bpi/data/encrypted/pq-crypto/qlock-identity.key")?.trim() == "600", "the identity's key file is not 0600");
    // The data plane configured on the first boot attaches by itself on this one.
    let ebpf: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os nxos ebpf status --json")?)?;
    ensure!(ebpf["links"][0]["hook"]["program_name"].as_str().is_some_and(|n| n.starts_with("xdp_trust")), "the data plane did not attach from its saved config: {ebpf}");
    // A certificate appended to db (an update signed by KEK, written from
    // the running system): the boot chain still verifies, but PCR 7 differs
    // from the seal, the TPM2 keeps the key, and the recovery key opens it.
    secure_boot::append_to_db(&vm)?;
    vm.poweroff()?;
    let vm = machine.start(3)?;
    secure_boot::store_stays_locked_until_recovery(vm, key.trim(), &token)?;

    // One byte of the UKI changed: the firmware refuses it.
    let vm = machine.start(4)?;
    secure_boot::changed_uki_is_refused(vm)
}

#[test]
fn a_changed_byte_in_the_root_superblock_is_refused_under_uefi_and_bios() -> Result<()> {
    // erofs's superblock (magic at 1024) is the first thing mounting reads.
    let (_dir, copy) = tampered_copy(1024)?;
    for firmware in [Firmware::Ovmf, Firmware::SeaBios] {
        let mut opts = VmOptions::new(copy.clone());
        opts.firmware = firmware;
        let machine = Machine::new(opts)?;
        let mut vm = machine.start(1)?;
        if firmware == Firmware::Ovmf {
            // The initrd's emergency action is a reboot (a counted boot uses a
            // try): under -no-reboot QEMU exits on its own, after rd.timeout.
            vm.wait_exit(Duration::from_secs(600))?;
        } else {
            // The same initrd after another loader: its refusal is the point
            // here, the wait for the reboot (2 min of rd.timeout) is not.
            let t = std::time::Instant::now();
            let refused = |log: &str| log.contains("device-mapper: verity") && log.contains("corrupted");
            while !refused(&vm.serial()) && !vm.exited() && t.elapsed() < Duration::from_secs(600) {
                std::thread::sleep(Duration::from_secs(2));
            }
            // A few seconds more, for anything the initrd would do next.
            std::thread::sleep(Duration::from_secs(5));
        }
        let log = vm.serial();
        ensure!(
            log.contains("device-mapper: verity") && log.contains("corrupted"),
            "no verity error in the serial log ({firmware:?}):\n{}",
            tail(&log, 40)
        );
        ensure!(!log.contains("Reached target Multi-User System"), "the tampered root booted ({firmware:?}):\n{}", tail(&log, 40));
        eprintln!("tampered superblock ({firmware:?}): boot refused with: {}", log.lines().find(|l| l.contains("corrupted")).unwrap_or(""));
    }
    Ok(())
}

/// Where a boot's time went (issue 18's boot profiling), into the test log:
/// kernel, initrd and userspace, the slowest units, and the chain that held
/// multi-user.target.
fn print_boot_profile(vm: &bpi_qemu_tests::vm::Vm, which: &str) -> Result<()> {
    let profile = vm.sh("systemd-analyze time; systemd-analyze blame --no-pager | grep -v '\\.device$' | head -15; systemd-analyze critical-chain --no-pager multi-user.target")?;
    eprintln!("boot profile ({which}):\n  {}", profile.trim().replace('\n', "\n  "));
    Ok(())
}

/// The tamper test for file data: under UEFI on the Secure Boot test's
/// first boot, under SeaBIOS on the disk installed by the BIOS test.
fn canary_reads_as_io_error(vm: &bpi_qemu_tests::vm::Vm, m: &Manifest) -> Result<()> {
    let read = vm.sh_any(&format!("cat {} > /dev/null", m.verity_canary.path))?;
    ensure!(read.code != 0, "reading the tampered file succeeded");
    ensure!(read.stderr.contains("Input/output error"), "expected an I/O error, got: {}", read.stderr);
    let kernel = vm.sh("journalctl -k -b --no-pager | grep -i 'verity' || true")?;
    ensure!(kernel.contains("corrupted"), "no verity corruption in the kernel log: {kernel}");
    Ok(())
}

#[test]
fn boots_with_proxmox_defaults_seabios_and_kvm64_installs_from_there_and_the_harness_stops_at_a_panic() -> Result<()> {
    // Proxmox's defaults: SeaBIOS (no UEFI at all) and -cpu kvm64. No TPM2.
    let work = tempfile::Builder::new().prefix("bpi-bios-").tempdir()?;
    let target = work.path().join("target.raw");
    fixtures::sparse(&target, 6 * fixtures::GIB)?;
    let mut opts = VmOptions::new(raw());
    opts.cpu = Some("kvm64".into());
    opts.firmware = Firmware::SeaBios;
    opts.extra_disks = vec![
        ExtraDisk { file: target.clone(), serial: "bpi-target".into(), read_only: false },
        ExtraDisk { file: fixtures::media(work.path())?, serial: "bpi-media".into(), read_only: true },
    ];
    let machine = Machine::new(opts)?;
    let mut vm = machine.start(1)?;
    let took = vm.wait_booted()?;
    eprintln!("FIGURE boot to multi-user.target under SeaBIOS with -cpu kvm64: {:.1}s", took.as_secs_f64());
    vm.check_logs()?;
    bios::check_booted(&vm)?;
    // No TPM2 here: no store, and status says so plainly.
    let store: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os store status --json")?)?;
    ensure!(store["initialized"] == false, "a store was made without a TPM2: {store}");
    ensure!(vm.sh("bpi-os status")?.contains("no encrypted store: there is no TPM2"), "status does not say the store is missing");
    // An install from this BIOS-booted system, checked by booting it below.
    bios::install(&vm)?;

    // The harness stops at a kernel panic on the console instead of waiting
    // out its timeout: crash this guest's kernel and watch it do so.
    vm.sh("(sleep 1; echo c > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &")?;
    let t = std::time::Instant::now();
    match vm.wait_exit(Duration::from_secs(600)) {
        Err(e) if format!("{e:#}").contains("kernel panic") => {}
        other => anyhow::bail!("a crashed guest was not reported as a kernel panic: {other:?}"),
    }
    let seen = t.elapsed();
    eprintln!("harness: the guest's kernel panic was seen {:.1}s after the crash was triggered", seen.as_secs_f64());
    // panic=10: the kernel resets the machine by itself (a counted boot of a
    // new version uses a try; docs/updates.md). Under -no-reboot the reset
    // ends QEMU.
    let waited = std::time::Instant::now();
    while !vm.exited() {
        ensure!(waited.elapsed() < Duration::from_secs(120), "the panicked guest did not reset itself within 120 s (panic=10)");
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure!(vm.serial().contains("Rebooting in 10 seconds"), "the panic did not announce its reboot:\n{}", tail(&vm.serial(), 20));
    eprintln!("the panicked guest reset itself {:.1}s after the crash (panic=10)", t.elapsed().as_secs_f64());
    drop(vm);

    // The installed disk under SeaBIOS, with one byte of the verity canary's
    // data changed on it: it boots, and that file reads as an I/O error.
    let m = manifest()?;
    let root = m.root_partition().context("manifest has no root partition")?;
    flip_byte(&target, root.offset + m.verity_canary.root_offset + 100)?;
    let mut opts = VmOptions::new(target);
    opts.disk_size = "6G";
    opts.cpu = Some("kvm64".into());
    opts.firmware = Firmware::SeaBios;
    opts.host_access = true;
    opts.allow_reboot = true;
    let installed = Machine::new(opts)?;
    let mut vm = installed.start(1)?;
    let took = vm.wait_booted()?;
    eprintln!("FIGURE boot of the disk installed from a BIOS-booted system, under SeaBIOS: {:.1}s", took.as_secs_f64());
    bios::check_booted(&vm)?;
    canary_reads_as_io_error(&vm, &m)?;
    vm.check_logs()?;
    // Then that node is updated under BIOS (GRUB's trial, bless, fallback).
    bios::updates(&vm, &installed.dir.path().join("qga.sock"))?;
    vm.poweroff()
}

//! BIOS boot (docs/boot.md): GRUB from the protective MBR and the BIOS boot
//! partition, the kernel, initrd and command line from the ESP; an install
//! made from a system booted that way; and updates on that install.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpi_qemu_tests::httpd::Server;
use bpi_qemu_tests::updates::{apply, manifest, status, updates_dir, wait_version};
use bpi_qemu_tests::vm::Vm;

/// Booted through GRUB with no UEFI, onto the verity root the image pins.
pub fn check_booted(vm: &Vm) -> Result<()> {
    ensure!(vm.serial().contains("loading Linux (BIOS)"), "the serial log does not show GRUB's BIOS entry");
    let status: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os status --json")?)?;
    ensure!(status["boot"]["firmware"] == "bios", "bpi-os status: {}", status["boot"]);
    ensure!(status["verity"]["state"] == "verified" && status["root"]["fstype"] == "erofs", "status: {status}");
    ensure!(vm.sh_any("test -d /sys/firmware/efi")?.code != 0, "there is UEFI under SeaBIOS");
    Ok(())
}

/// `bpi-os install` onto the empty second disk from the media on the third.
pub fn install(vm: &Vm) -> Result<()> {
    vm.sh("mount -o ro /dev/disk/by-id/virtio-bpi-media /mnt")?;
    let t = Instant::now();
    let out = vm.sh_for("bpi-os install --disk /dev/disk/by-id/virtio-bpi-target --image /mnt --yes --no-store 2>&1", Duration::from_secs(1500))?;
    ensure!(out.code == 0, "install from the BIOS-booted system failed: {}", out.stdout);
    eprintln!("FIGURE install from the BIOS-booted live system: {:.1}s", t.elapsed().as_secs_f64());
    // The boot code and core image went with it (the first MiB, tables aside).
    let same = vm.sh("cmp -n 440 /dev/vda /dev/disk/by-id/virtio-bpi-target && cmp -i 17408 -n 1031168 /dev/vda /dev/disk/by-id/virtio-bpi-target && echo same")?;
    ensure!(same.trim() == "same", "the installed disk's boot code or BIOS boot partition differs from the image's");
    vm.sh("umount /mnt; sync")?;
    Ok(())
}

/// Updates under BIOS, on the installed disk booted through GRUB: N+1 goes
/// in with one try and boots through GRUB's trial, whose healthy boot makes
/// it GRUB's saved entry; N+2 (its health check fails) goes in over N with
/// one try, fails, and GRUB falls back to N+1 by itself. The kernels GRUB
/// boots are the bytes of each version's UKI.
pub fn updates(vm: &Vm, sock: &Path) -> Result<()> {
    let n = bpi_qemu_tests::updates::manifest(&bpi_qemu_tests::image_dir())?;
    let next_dir = updates_dir().join("next");
    let (n1, n2) = (manifest(&next_dir)?, manifest(&updates_dir().join("broken"))?);
    let www = tempfile::tempdir()?;
    std::os::unix::fs::symlink(next_dir.join("update"), www.path().join("next"))?;
    std::os::unix::fs::symlink(updates_dir().join("broken/update"), www.path().join("broken"))?;
    let server = Server::start(www.path().to_path_buf())?;

    // systemd's gpt-auto generator automounts the root disk's ESP at /boot
    // under BIOS too (systemd 252), where updates and the bless find it.
    let boot = vm.sh("systemctl is-active boot.automount && ls /boot/grub/grub.cfg")?;
    ensure!(boot.contains("active") && boot.contains("grub.cfg"), "the ESP is not automounted at /boot: {boot}");
    let st = status(vm)?;
    ensure!(st["bios"]["saved"] == n.version.as_str() && st["bios"]["trial"].is_null(), "GRUB's state as installed: {st}");
    let (c, out) = apply(vm, &format!("--from {} --tries 1", server.guest_url("next")))?;
    ensure!(c == 0, "apply N+1 under BIOS: {out}");
    let st = status(vm)?;
    ensure!(st["bios"]["trial"] == n1.version.as_str() && st["bios"]["tries_left"] == 1 && st["bios"]["saved"] == n.version.as_str(), "GRUB's state after the apply: {st}");
    // The BIOS files are the UKI's sections, byte for byte.
    let uki = std::fs::read(next_dir.join("update").join(bpi_formats::slots::uki_name(&n1.version, None)))?;
    let parts = bpi_formats::uki::parts(&uki)?;
    let sums = vm.sh(&format!("sha256sum /boot/bios/{v}/vmlinuz /boot/bios/{v}/initrd.img", v = n1.version))?;
    for (bytes, what) in [(&parts.kernel, "vmlinuz"), (&parts.initrd, "initrd.img")] {
        let want = bpi_support::digest::sha256_bytes(bytes);
        ensure!(sums.lines().any(|l| l.starts_with(&want) && l.ends_with(what)), "/boot/bios/{}/{what} is not the UKI's section ({want}):\n{sums}", n1.version);
    }

    let t = Instant::now();
    let _ = vm.sh_any("systemctl --no-block reboot");
    std::thread::sleep(Duration::from_secs(10));
    wait_version(vm, sock, &n1.version, Duration::from_secs(900))?;
    eprintln!("FIGURE reboot into the update under SeaBIOS (GRUB's trial) to multi-user on N+1: {:.1}s", t.elapsed().as_secs_f64());
    ensure!(vm.serial().contains(&format!("bpi-os {}: loading Linux (BIOS)", n1.version)), "GRUB did not boot N+1's entry");
    let st = status(vm)?;
    ensure!(st["running_slot"] == "b" && st["health"]["healthy"] == true, "N+1 under BIOS: {st}");
    ensure!(st["bios"]["saved"] == n1.version.as_str() && st["bios"]["trial"].is_null(), "N+1's healthy boot did not become GRUB's saved entry: {st}");
    ensure!(st["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["file"] == format!("bpi-os_{}.efi", n1.version))), "N+1's UKI was not blessed beside GRUB: {st}");

    // N+2 over N (slot A), one try: it fails, and GRUB goes back to N+1.
    let (c, out) = apply(vm, &format!("--from {} --tries 1", server.guest_url("broken")))?;
    ensure!(c == 0, "apply N+2 under BIOS: {out}");
    ensure!(vm.sh_any(&format!("test -e /boot/bios/{}", n.version))?.code != 0, "N's BIOS files stayed after its slot was retired");
    let t = Instant::now();
    let _ = vm.sh_any("systemctl --no-block reboot");
    std::thread::sleep(Duration::from_secs(20));
    wait_version(vm, sock, &n1.version, Duration::from_secs(1800))?;
    eprintln!("FIGURE automatic rollback under SeaBIOS, from reboot into N+2 (one failed try) to multi-user on N+1 again: {:.1}s", t.elapsed().as_secs_f64());
    let log = vm.serial();
    let (tried, back) = (log.rfind(&format!("bpi-os {}: loading Linux (BIOS)", n2.version)), log.rfind(&format!("bpi-os {}: loading Linux (BIOS)", n1.version)));
    ensure!(tried.zip(back).is_some_and(|(a, b)| a < b), "GRUB did not boot N+2 and then N+1");
    let st = status(vm)?;
    ensure!(st["bios"]["saved"] == n1.version.as_str() && st["bios"]["trial"].is_null(), "GRUB's state after the fallback: {st}");
    let failed = st["failed"].as_array().cloned().unwrap_or_default();
    let f = failed.iter().find(|f| f["version"] == n2.version.as_str()).with_context(|| format!("status names no failed {}: {st}", n2.version))?;
    ensure!(f["out_of_tries"] == true && f["failed_boots"].as_u64() == Some(1), "N+2 under BIOS: {f}");
    let ledger = vm.sh("bpi-os ledger show --json")?;
    ensure!(ledger.contains("\"update-out-of-tries\"") && ledger.contains("\"health-failed\""), "the ledger does not record N+2's failed trial");
    // Neither firmware nor a rollback picks N+2 again.
    let out = vm.sh_any("bpi-os update rollback 2>&1")?;
    ensure!(out.code == 3 && out.stdout.contains("used up its boot tries"), "rollback to N+2: {} {}", out.code, out.stdout);
    eprintln!("updates under BIOS: N+1 through GRUB's trial and blessed; N+2 failed its one try and GRUB fell back to N+1");
    Ok(())
}

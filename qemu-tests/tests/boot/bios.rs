//! BIOS boot (docs/boot.md): GRUB from the protective MBR and the BIOS boot
//! partition, the kernel, initrd and command line from the ESP; and an
//! install made from a system booted that way.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
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

//! The node's first step: boot the live image with an empty second disk and
//! a third holding the image files, install onto the second disk by its
//! /dev/disk/by-id name (refusals first, dd as the reference, a second
//! install without the TPM2 opened by its recovery key file).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpi_qemu_tests::image_dir;
use bpi_formats::layout::{self, Home};
use bpi_qemu_tests::vm::{ExtraDisk, Machine, Vm, VmOptions};

pub use bpi_qemu_tests::fixtures::{media, sparse, GIB};

/// What the install leaves: the installed disk and the TPM2 it was sealed to
/// (the same computer boots it next).
pub struct Installed {
    pub disk: PathBuf,
    pub tpm: PathBuf,
}

/// Installs version N from a live VM onto a 6 GiB disk in `work`.
pub fn install_from_live_vm(work: &Path) -> Result<Installed> {
    let target = work.join("target.raw");
    sparse(&target, 6 * GIB)?;
    let scratch = work.join("scratch.raw");
    sparse(&scratch, 2 * GIB)?;
    // One TPM2 for the live system and the installed disk: the same computer.
    let tpm = work.join("tpm");
    let mut opts = VmOptions::new(image_dir().join("bpi-os.raw"));
    opts.tpm_state = Some(tpm.clone());
    opts.extra_disks = vec![
        ExtraDisk { file: target.clone(), serial: "bpi-target".into(), read_only: false },
        ExtraDisk { file: media(work)?, serial: "bpi-media".into(), read_only: true },
        ExtraDisk { file: scratch, serial: "bpi-scratch".into(), read_only: false },
    ];
    let live = Machine::new(opts)?;
    let mut vm = live.start(1)?;
    vm.wait_booted()?;
    vm.check_logs()?;
    vm.sh("mount -o ro /dev/disk/by-id/virtio-bpi-media /mnt")?;

    // Refusals, from inside: the disk the running (verity) root is on, found
    // through device-mapper; a mounted disk.
    let own = vm.sh_any("bpi-os install --disk /dev/vda --image /mnt --yes --force")?;
    ensure!(own.code != 0 && own.stderr.contains("holds the running root"), "installing onto the live disk: {own:?}");
    // Its root and verity partitions are held by the verity device: the holder check, for real.
    ensure!(own.stderr.contains("device-mapper root"), "the dm holder of the live disk was not named: {}", own.stderr);
    let mounted = vm.sh_any("bpi-os install --disk /dev/disk/by-id/virtio-bpi-media --image /mnt --yes --force")?;
    ensure!(mounted.code != 0 && mounted.stderr.contains("is mounted at /mnt"), "installing onto a mounted disk: {mounted:?}");

    let dry = vm.sh("bpi-os install --disk /dev/disk/by-id/virtio-bpi-target --image /mnt --dry-run")?;
    ensure!(dry.contains("/dev/disk/by-id/virtio-bpi-target") && dry.contains("write the first MiB last"), "plan: {dry}");

    let t = Instant::now();
    let out = vm.sh_for("bpi-os install --disk /dev/disk/by-id/virtio-bpi-target --image /mnt --yes 2>&1", Duration::from_secs(1500))?;
    let took = t.elapsed();
    ensure!(out.code == 0, "install failed: {}", out.stdout);
    ensure!(
        out.stdout.contains("sealed to this machine's TPM2") && out.stdout.contains("recovery key, shown once"),
        "the install did not make a TPM2-sealed store: {}",
        out.stdout
    );
    let ours: f64 = out
        .stdout
        .split("body written at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("the install did not report its write rate")?;
    // The reference: dd of the same image to the same kind of disk, same VM.
    let dd = vm.sh_for(
        "dd if=/mnt/bpi-os.raw of=/dev/disk/by-id/virtio-bpi-scratch bs=4M oflag=direct conv=fsync 2>&1 | tail -1",
        Duration::from_secs(1500),
    )?;
    let dd_rate = dd_mb_per_s(&dd.stdout).with_context(|| format!("reading dd's rate from {:?}", dd.stdout))?;
    eprintln!("FIGURE install in the VM ({}): {:.1}s in all", live.opts.accel, took.as_secs_f64());
    eprintln!(
        "FIGURE install write throughput: {ours:.1} MB/s vs dd bs=4M oflag=direct conv=fsync {dd_rate:.1} MB/s: ratio {:.2}",
        ours / dd_rate
    );
    // Without the TPM2, the operator keeps the recovery key, and it opens the
    // store (onto the scratch disk, which now holds dd's copy: --force).
    let no_tpm = vm.sh_for(
        "bpi-os install --disk /dev/disk/by-id/virtio-bpi-scratch --image /mnt --yes --force --tpm2 no --recovery-key-file /run/store.key 2>&1",
        Duration::from_secs(1500),
    )?;
    ensure!(no_tpm.code == 0, "install without TPM2 failed: {}", no_tpm.stdout);
    ensure!(!no_tpm.stdout.contains("shown once"), "the key was shown though a file was named: {}", no_tpm.stdout);
    // The store partition follows the image's (ESP and two slots): found by its label on that disk.
    let part = vm.sh("udevadm settle; lsblk -nro PATH,PARTLABEL /dev/disk/by-id/virtio-bpi-scratch | awk '$2 == \"bpi-store\" { print $1 }'")?;
    let part = part.trim();
    ensure!(part.starts_with("/dev/"), "no bpi-store partition on the scratch disk: {part:?}");
    vm.sh(&format!("cryptsetup open --key-file /run/store.key {part} scratch-store"))?;
    vm.sh("mkfs.ext4 -q /dev/mapper/scratch-store && mount /dev/mapper/scratch-store /media && echo ok > /media/t && umount /media && cryptsetup close scratch-store")?;
    let wrong = vm.sh_any(&format!("printf wrong > /run/wrong.key; cryptsetup open --test-passphrase --key-file /run/wrong.key {part}"))?;
    ensure!(wrong.code != 0, "a wrong key opened the store");
    vm.check_logs()?;
    vm.poweroff()?;
    for f in ["media.ext4", "scratch.raw"] {
        std::fs::remove_file(work.join(f))?;
    }
    Ok(Installed { disk: target, tpm })
}

/// dd's last line: "... copied, 12.3 s, 117 MB/s" (or GB/s, kB/s).
fn dd_mb_per_s(line: &str) -> Option<f64> {
    let rate = line.trim().rsplit(", ").next()?;
    let (n, unit) = rate.split_once(' ')?;
    let n: f64 = n.replace(',', ".").parse().ok()?;
    let scale = match unit {
        "GB/s" => 1000.0,
        "MB/s" => 1.0,
        "kB/s" => 0.001,
        _ => return None,
    };
    Some(n * scale)
}

/// The installed disk's first boot, alone: the layout, units, a data
/// partition grown over the disk, the store the installer made unlocked by
/// the TPM2 without a prompt, and the A/B slots as the image lays them out
/// (A runs, B empty for the first update; docs/updates.md).
pub fn check_installed(vm: &Vm) -> Result<()> {
    let root = vm.sh("findmnt -no FSTYPE,SOURCE /")?;
    ensure!(root.contains("erofs") && root.contains("/dev/mapper/root"), "root: {root}");
    let paths: Vec<&str> = layout::dirs(&[Home::Image, Home::Data, Home::Runtime]).map(|d| d.path).collect();
    let stat = vm.sh(&format!("stat -c '%n %a' {}", paths.join(" ")))?;
    for d in layout::dirs(&[Home::Image, Home::Data, Home::Runtime]) {
        let want = format!("{} {:o}", d.path, d.mode);
        ensure!(stat.lines().any(|l| l == want), "expected `{want}`; got:\n{stat}");
    }
    for unit in bpi_formats::units::enabled() {
        let state = vm.sh_any(&format!("systemctl is-enabled {unit}"))?;
        ensure!(state.stdout.trim() == "enabled", "{unit} is {:?} on the installed disk", state.stdout.trim());
    }
    let data = vm.sh("lsblk -bno SIZE,PARTLABEL /dev/vda | grep bpi-data")?;
    let size: u64 = data.split_whitespace().next().and_then(|s| s.parse().ok()).context("bpi-data size")?;
    ensure!(size > 4 * GIB, "bpi-data was not grown over the disk: {data}");
    let store: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os store status --json")?)?;
    ensure!(store["tpm2_enrolled"] == true && store["mounted"] == true, "store on the installed disk: {store}");
    ensure!(vm.sh("findmnt -no SOURCE /bpi/data/encrypted")?.trim() == "/dev/mapper/bpi-store");
    let st: serde_json::Value = serde_json::from_str(&vm.sh("bpi-os update status --json")?)?;
    ensure!(st["running_slot"] == "a" && st["slots"][1]["version"].is_null() && st["health"]["healthy"] == true, "slots on the installed disk: {st}");
    Ok(())
}

//! The boot chain: a unified kernel image (systemd's EFI stub with kernel,
//! initrd, command line and os-release) and the ESP holding it and systemd-boot,
//! built with mkfs.vfat and mtools from files.

use std::path::Path;

use anyhow::{Context, Result};
use bpi_formats::grub;
use bpi_support::Cmd;

/// The kernel command line: the verity root hash pins the root; the consoles
/// are serial (Proxmox, QEMU) and the screen. A root that fails verity never
/// becomes a usable device, and dracut waits for it forever unless
/// `rd.timeout` is set: after it, the initrd gives up and reboots (no shell),
/// as a kernel panic does after 10 s: a new version's counted boot that
/// cannot come up uses a try, and systemd-boot falls back once they are gone.
pub fn cmdline(root_hash: &str) -> String {
    format!(
        "roothash={root_hash} root=/dev/mapper/root rootfstype=erofs ro \
         console=tty0 console=ttyS0,115200 systemd.firstboot=off \
         rd.timeout={ROOT_TIMEOUT_SECS} rd.shell=0 rd.emergency=reboot panic=10"
    )
}

/// How long the initrd waits for the root device before refusing to boot.
pub const ROOT_TIMEOUT_SECS: u32 = 120;

pub struct UkiInputs<'a> {
    pub stub: &'a Path,
    /// PE header timestamp (objcopy would write the current time).
    pub epoch: u64,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
    /// A signed build: the PCR 11 policy signed with this key set's PCR key
    /// (`.pcrsig`, `.pcrpkey`), by the measure tool of this image root.
    pub pcr: Option<(&'a crate::secureboot::KeySet, &'a Path)>,
}

/// Builds the UKI with objcopy, sections at the addresses systemd's stub expects.
pub fn make_uki(inp: &UkiInputs, work: &Path, out: &Path) -> Result<()> {
    let cmdline = work.join("cmdline.txt");
    let osrel = work.join("os-release");
    std::fs::write(&cmdline, format!("{}\0", inp.cmdline))?;
    std::fs::write(&osrel, inp.os_release)?;
    let _ = std::fs::remove_file(out);
    let section = |name: &str, file: &Path, vma: u64| {
        [
            format!("--add-section=.{name}={}", file.display()),
            format!("--change-section-vma=.{name}={vma:#x}"),
        ]
    };
    let mut objcopy = Cmd::new("objcopy").args(section("osrel", &osrel, 0x20000)).args(section("cmdline", &cmdline, 0x30000));
    if let Some((keys, root)) = inp.pcr {
        let sections = crate::pcr::Sections { kernel: inp.kernel, initrd: inp.initrd, cmdline: &cmdline, os_release: &osrel, public_key: &keys.pcr_public_key() };
        let signature = crate::pcr::sign(root, &sections, &keys.pcr_key(), work)?;
        objcopy = objcopy.args(section("pcrsig", &signature, 0x40000)).args(section("pcrpkey", &keys.pcr_public_key(), 0x50000));
    }
    objcopy
        .args(section("linux", inp.kernel, 0x2000000))
        .args(section("initrd", inp.initrd, 0x3000000))
        .arg(inp.stub)
        .arg(out)
        .run()
        .context("objcopy could not build the unified kernel image")?;
    crate::pe::set_timestamp(out, inp.epoch)?;
    let (uki, parts) = (std::fs::metadata(out)?.len(), std::fs::metadata(inp.kernel)?.len() + std::fs::metadata(inp.initrd)?.len());
    anyhow::ensure!(uki > parts, "the unified kernel image ({uki} bytes) is smaller than its kernel and initrd ({parts} bytes)");
    Ok(())
}

pub struct EspInputs<'a> {
    pub systemd_boot: &'a Path,
    pub uki: &'a Path,
    pub size: u64,
    pub volume_id: u32,
    pub epoch: u64,
    /// A signed image's key set: its `.auth` files go where systemd-boot
    /// enrolls them from on a machine in Setup Mode.
    pub enroll: Option<&'a crate::secureboot::KeySet>,
    /// BIOS boot's files: GRUB's configuration, kernel and initrd.
    pub bios: BiosFiles,
}

pub struct BiosFiles {
    pub version: String,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub grub_cfg: String,
    pub grubenv: Vec<u8>,
}

/// Builds the FAT ESP image: systemd-boot as the removable-media loader, the UKI
/// under EFI/Linux (found by systemd-boot without an entry file).
pub fn make_esp(inp: &EspInputs, work: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let epoch = inp.epoch.to_string();
    Cmd::new("mkfs.vfat")
        .args(["-C", "--invariant", "-F", "32", "-n", "BPI-ESP"])
        .arg("-i")
        .arg(format!("{:08x}", inp.volume_id))
        .arg(out)
        .arg((inp.size / 1024).to_string())
        .env("SOURCE_DATE_EPOCH", &epoch)
        .run()
        .context("mkfs.vfat could not build the ESP")?;
    // mcopy -m keeps each file's mtime: stage the files with the epoch's.
    let files = work.join("esp-files");
    std::fs::create_dir_all(&files)?;
    let epoch_time = filetime::FileTime::from_unix_time(inp.epoch as i64, 0);
    let staged = |name: &str, bytes: &[u8]| -> Result<std::path::PathBuf> {
        let p = files.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        filetime::set_file_times(&p, epoch_time, epoch_time)?;
        Ok(p)
    };
    let read = |src: &Path| std::fs::read(src).with_context(|| format!("reading {}", src.display()));
    let sdboot = staged("systemd-bootx64.efi", &read(inp.systemd_boot)?)?;
    // The UKI keeps its name (bpi-os_<version>.efi): the version tells
    // systemd-boot's entries and the updater's slots apart.
    let uki_name = inp.uki.file_name().and_then(|n| n.to_str()).context("the UKI's file name")?.to_string();
    let uki = staged(&uki_name, &read(inp.uki)?)?;
    let uki_dest = format!("::/EFI/Linux/{uki_name}");
    let loader = staged("loader.conf", loader_conf(inp.enroll.is_some()).as_bytes())?;
    let mtools = |prog: &str| Cmd::new(prog).env("SOURCE_DATE_EPOCH", &epoch).env("MTOOLS_SKIP_CHECK", "1");
    let mut dirs = vec!["::/EFI".to_string(), "::/EFI/BOOT".into(), "::/EFI/systemd".into(), "::/EFI/Linux".into(), "::/loader".into()];
    let mut copies = vec![
        (sdboot.clone(), "::/EFI/BOOT/BOOTX64.EFI".to_string()),
        (sdboot, "::/EFI/systemd/systemd-bootx64.efi".into()),
        (uki, uki_dest),
        (loader, "::/loader/loader.conf".into()),
    ];
    let b = &inp.bios;
    let version_dir = format!("::/bios/{}", b.version);
    dirs.extend(["::/grub".to_string(), "::/bios".into(), version_dir]);
    let grub_cfg = staged("grub.cfg", b.grub_cfg.as_bytes())?;
    let grubenv = staged("grubenv", &b.grubenv)?;
    let kernel = staged("vmlinuz", &b.kernel)?;
    let initrd = staged("initrd.img", &b.initrd)?;
    copies.push((grub_cfg, format!("::/{}", grub::GRUB_CFG)));
    copies.push((grubenv, format!("::/{}", grub::GRUBENV)));
    copies.push((kernel, format!("::/{}", grub::kernel_path(&b.version))));
    copies.push((initrd, format!("::/{}", grub::initrd_path(&b.version))));
    if let Some(keys) = inp.enroll {
        dirs.extend(["::/loader/keys".to_string(), format!("::/{}", crate::secureboot::ESP_KEYS_DIR)]);
        for k in crate::secureboot::KEYS {
            let auth = staged(&format!("{k}.auth"), &read(&keys.auth(k))?)?;
            copies.push((auth, format!("::/{}/{k}.auth", crate::secureboot::ESP_KEYS_DIR)));
        }
    }
    mtools("mmd").arg("-i").arg(out).args(&dirs).run()?;
    for (src, dest) in copies {
        mtools("mcopy").arg("-m").arg("-i").arg(out).arg(src).arg(dest).run()?;
    }
    Ok(())
}

/// systemd-boot's configuration: straight to the default entry, no editor
/// (a command line edited at the console would bypass the verity root hash).
/// A signed image enrolls its own keys on a machine in Setup Mode
/// (`secure-boot-enroll force`: the `auto` set, after a warning on the
/// console); a machine that already has a PK is left as it is.
pub fn loader_conf(enroll: bool) -> String {
    let mut s = String::from("timeout 0\neditor no\nauto-entries no\nauto-firmware no\n");
    if enroll {
        s.push_str("secure-boot-enroll force\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_pins_root_hash_and_consoles() {
        let c = cmdline("ab");
        assert!(c.starts_with("roothash=ab root=/dev/mapper/root "));
        assert!(c.contains("console=ttyS0,115200"));
        assert!(c.contains("rd.timeout=120 rd.shell=0 rd.emergency=reboot panic=10"), "{c}");
    }
}

//! BIOS boot (SeaBIOS, legacy firmware): GRUB's i386-pc boot sector in the
//! protective MBR, its core image in a BIOS boot partition, and on the ESP a
//! grub.cfg loading the same kernel, initrd and command line the UKI carries.
//!
//! What grub-install would do on a device is done here on bytes, as
//! grub-bios-setup does it: the boot sector learns the core image's first
//! sector, and the core image's first sector (diskboot) the rest of it.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use bpi_formats::grub;
use bpi_support::Cmd;

use crate::gpt::SECTOR;

pub const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";

/// The BIOS boot partition: right after the primary GPT, below the first
/// 1 MiB-aligned partition (sectors 34..2047).
pub const CORE_FIRST_LBA: u64 = 34;
pub const CORE_LAST_LBA: u64 = 2047;

/// Where GRUB reads its configuration: the ESP is partition 1 of the boot disk.
const PREFIX: &str = "(hd0,gpt1)/grub";

/// Modules built into the core image (with what they depend on, which
/// grub-mkimage adds): read the GPT and FAT of the boot disk, load Linux,
/// read and count down the A/B state in grubenv (`load_env`, `save_env`).
const MODULES: &[&str] = &["biosdisk", "part_gpt", "fat", "normal", "configfile", "linux", "echo", "test", "serial", "terminal", "loadenv"];

// Offsets in boot.img (grub-core/boot/i386/pc/boot.S).
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;
/// The MBR's boot code ends where the disk signature and partition table begin.
pub const MBR_CODE: usize = 440;
// The first blocklist entry, at the end of diskboot (the core image's first
// sector): start (u64), sector count (u16), segment (u16).
const BLOCKLIST_START: usize = 0x1f4;

/// The BIOS path's files for the ESP, taken out of the built UKI as an
/// update takes them out of its bundle's (bpi_formats::uki), and checked
/// against the build's own kernel, initrd and command line; GRUB starts on
/// the version (grubenv's `saved_entry`).
pub fn files_of_uki(uki: &Path, version: &str, built: (&Path, &Path, &str)) -> Result<crate::boot::BiosFiles> {
    let parts = bpi_formats::uki::parts(&std::fs::read(uki)?).with_context(|| format!("reading {}", uki.display()))?;
    ensure!(parts.kernel == std::fs::read(built.0)?, "the UKI's .linux section is not the kernel it was built from");
    ensure!(parts.initrd == std::fs::read(built.1)?, "the UKI's .initrd section is not the initrd it was built from");
    ensure!(parts.cmdline == built.2, "the UKI's command line {:?} is not the build's {:?}", parts.cmdline, built.2);
    let grub_cfg = grub::config(&[grub::Entry { version: version.to_string(), cmdline: parts.cmdline }])?;
    let mut state = grub::State { saved: None, trial: None, tries_left: 0 };
    state.bless(version);
    let mut env = grub::Env::new();
    state.apply_to(&mut env);
    Ok(crate::boot::BiosFiles { version: version.to_string(), kernel: parts.kernel, initrd: parts.initrd, grub_cfg, grubenv: grub::render_env(&env)? })
}

/// Writes the core image to `out`: built by grub-mkimage (its output depends
/// only on the modules and the prefix: no timestamps), with its blocklist
/// pointing at [`CORE_FIRST_LBA`].
pub fn make_core(out: &Path) -> Result<()> {
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", PREFIX, "-d", GRUB_DIR, "-o"])
        .arg(out)
        .args(MODULES)
        .run()
        .context("grub-mkimage could not build the BIOS core image")?;
    let mut core = std::fs::read(out)?;
    place_core(&mut core, CORE_FIRST_LBA)?;
    std::fs::write(out, core)?;
    Ok(())
}

/// Points diskboot's blocklist at the sectors after its own (the core image
/// lies in one run of sectors from `first_lba`).
pub fn place_core(core: &mut [u8], first_lba: u64) -> Result<()> {
    let sectors = core.len().div_ceil(SECTOR as usize) as u64;
    ensure!(sectors >= 2, "the core image is {} bytes: not a GRUB core image", core.len());
    ensure!(
        first_lba + sectors - 1 <= CORE_LAST_LBA,
        "the core image ({sectors} sectors) does not fit the BIOS boot partition ({}..{CORE_LAST_LBA})",
        first_lba
    );
    let len = u16::from_le_bytes([core[BLOCKLIST_START + 8], core[BLOCKLIST_START + 9]]);
    ensure!(u64::from(len) == sectors - 1, "diskboot's blocklist counts {len} sectors, the core image has {} after its first", sectors - 1);
    core[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(first_lba + 1).to_le_bytes());
    Ok(())
}

/// GRUB's boot sector code for a hard disk whose core image starts at
/// `core_lba`: the first 440 bytes of the MBR (the partition table after
/// them is the protective MBR's).
pub fn boot_code(core_lba: u64) -> Result<[u8; MBR_CODE]> {
    let img = std::fs::read(Path::new(GRUB_DIR).join("boot.img")).context("reading GRUB's boot.img")?;
    patch_boot_sector(&img, core_lba)
}

pub fn patch_boot_sector(img: &[u8], core_lba: u64) -> Result<[u8; MBR_CODE]> {
    ensure!(img.len() == SECTOR as usize && img[510..512] == [0x55, 0xaa], "boot.img is not a 512-byte boot sector");
    let mut code: [u8; MBR_CODE] = img[..MBR_CODE].try_into()?;
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    // A hard disk: trust the drive number the BIOS passes (grub-bios-setup
    // replaces the floppy check's jump with two NOPs).
    code[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_and_blocklist_are_placed() {
        let mut img = vec![0u8; 512];
        img[DRIVE_CHECK] = 0xeb;
        img[510] = 0x55;
        img[511] = 0xaa;
        let code = patch_boot_sector(&img, 34).unwrap();
        assert_eq!(&code[KERNEL_SECTOR..KERNEL_SECTOR + 8], &34u64.to_le_bytes());
        assert_eq!(&code[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert!(patch_boot_sector(&img[..511], 34).is_err());

        // A 3-sector core image: diskboot says 2 more sectors, from 35.
        let mut core = vec![0u8; 3 * 512 - 100];
        core[BLOCKLIST_START + 8] = 2;
        place_core(&mut core, 34).unwrap();
        assert_eq!(&core[BLOCKLIST_START..BLOCKLIST_START + 8], &35u64.to_le_bytes());
        // A blocklist that disagrees with the image's length is refused.
        core[BLOCKLIST_START + 8] = 5;
        assert!(place_core(&mut core, 34).is_err());
        // One that would run past the partition too.
        let mut big = vec![0u8; 3000 * 512];
        big[BLOCKLIST_START + 8..BLOCKLIST_START + 10].copy_from_slice(&2999u16.to_le_bytes());
        assert!(place_core(&mut big, 34).unwrap_err().to_string().contains("does not fit"));
    }
}

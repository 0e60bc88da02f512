//! The whole pipeline, step by step: base (cached) -> root tree -> erofs ->
//! verity -> UKI -> ESP -> GPT disk -> qcow2 -> manifest and checksums.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_support::{digest, progress, Cmd, Steps};

use crate::bios;
use crate::boot::{self, EspInputs, UkiInputs};
use crate::disk::{self, Part};
use crate::gpt::{self, types, Partition, ALIGN, ATTR_READ_ONLY, SECTOR};
use crate::manifest::{Canary, DiskInfo, Manifest, Package, PartitionInfo};
use crate::rootfs::{self, BaseInputs};
use crate::secureboot::KeySet;
use crate::sizes;
use crate::sources::Sources;
use crate::stage::{self, StageInputs};
use crate::verity;
use crate::{bundle, slots};
use bpi_ledger::checkpoint::NoteSigner;

/// Free space left after the partitions of bpi-os.raw, so the image boots as
/// it is and first boot has room for the data partition (sparse: costs no disk).
/// (The B slot, empty, was carved out of what used to be 1 GiB here.)
pub const DATA_RESERVE: u64 = 512 << 20;

pub struct BuildOptions<'a> {
    /// The source tree (workspace root).
    pub source_dir: PathBuf,
    /// Where bpi-os.raw, bpi-os.qcow2, SHA256SUMS and manifest.json go.
    pub out_dir: PathBuf,
    /// Scratch space; the staged root tree stays here for comparisons.
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub binary: PathBuf,
    pub version: String,
    pub mirror: Option<String>,
    /// Signs the update bundle; its public key goes into the image.
    pub update_signer: &'a NoteSigner,
    /// How long the bundle's metadata stays valid.
    pub update_valid_secs: u64,
    /// A test image whose boot health check fails ([`StageInputs::break_health`]).
    pub break_health: bool,
    /// Signs systemd-boot and the UKI for Secure Boot and puts the key set's
    /// public halves on the ESP for enrollment; none: an unsigned image.
    pub sign_with: Option<&'a KeySet>,
}

pub const RAW: &str = "bpi-os.raw";
pub const QCOW2: &str = "bpi-os.qcow2";
pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

/// The fixed salt of the verity hash tree (reproducibility needs a fixed one;
/// its secrecy buys nothing for a public image).
pub fn verity_salt() -> String {
    digest::sha256_bytes(b"bpi-os verity salt v1")
}

pub fn staged_root(work_dir: &Path) -> PathBuf {
    work_dir.join("root")
}

pub fn build(opts: &BuildOptions<'_>, steps: &Steps) -> Result<Manifest> {
    let sources = Sources::from_host(opts.mirror.as_deref())?;
    let image_dir = opts.source_dir.join("image");
    let inputs = BaseInputs { image_dir: &image_dir, sources: &sources };
    let lock = inputs.lock()?;
    let epoch = lock.epoch;
    let work = &opts.work_dir;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    std::fs::create_dir_all(&opts.out_dir)?;

    let (base_tar, debs) = steps.step("base root file system (mmdebstrap + dracut, cached by lock)", || {
        rootfs::base_tarball(&inputs, &opts.cache_dir, &work.join("mmdebstrap"))
    })?;

    let root = staged_root(work);
    let boot_dir = work.join("boot");
    let boot_files = steps.step("compose root tree", || {
        stage::compose(
            &StageInputs {
                base_tar: &base_tar,
                binary: &opts.binary,
                overlay_dir: &opts.source_dir.join("rootfs-overlay"),
                source_dir: &opts.source_dir,
                version: &opts.version,
                epoch,
                update_key: &opts.update_signer.verifier().to_vkey(),
                break_health: opts.break_health,
            },
            &root,
            &boot_dir,
        )
    })?;
    // The stub and boot loader come from the locked systemd-boot-efi package.
    let efi_dir = root.join("usr/lib/systemd/boot/efi");

    let package_sizes = sizes::package_sizes(&root)?;
    let erofs = work.join("root.erofs");
    steps.step("erofs root file system", || {
        verity::make_erofs(&root, &erofs, epoch, &gpt::derived_guid(format!("bpi-os erofs {epoch}").as_bytes()))
    })?;
    let erofs_bytes = std::fs::metadata(&erofs)?.len();
    progress::note(&format!("root file system {:.1} MB (budget {:.1} MB)", erofs_bytes as f64 / 1e6, sizes::ROOT_BUDGET_BYTES as f64 / 1e6));
    sizes::check_budget(erofs_bytes, sizes::ROOT_BUDGET_BYTES, &package_sizes)?;
    let canary_at = verity::find_in_file(&erofs, &stage::canary_bytes()[..64])?
        .context("the verity canary's data is not stored plainly in the erofs image")?;

    let hash_tree = work.join("root.verity");
    let root_hash = steps.step("dm-verity hash tree", || {
        let h = verity::format(&erofs, &hash_tree, &verity_salt(), &gpt::derived_guid(format!("bpi-os verity {epoch}").as_bytes()))?;
        verity::verify(&erofs, &hash_tree, &h)?;
        Ok::<_, anyhow::Error>(h)
    })?;
    let rh = hex::decode(&root_hash)?;

    let cmdline = boot::cmdline(&root_hash);
    let uki = work.join(slots::uki_name(&opts.version, None));
    steps.step("unified kernel image", || {
        boot::make_uki(
            &UkiInputs {
                stub: &efi_dir.join("linuxx64.efi.stub"),
                epoch,
                kernel: &boot_files.kernel,
                initrd: &boot_files.initrd,
                cmdline: &cmdline,
                os_release: &stage::os_release(&opts.version),
                pcr: opts.sign_with.map(|k| (k, root.as_path())),
            },
            work,
            &uki,
        )?;
        opts.sign_with.map_or(Ok(()), |k| k.sign(&uki, epoch))
    })?;

    let esp = work.join("esp.img");
    let sdboot = work.join("systemd-bootx64.efi");
    std::fs::copy(efi_dir.join("systemd-bootx64.efi"), &sdboot)?;
    if let Some(k) = opts.sign_with {
        steps.step("sign systemd-boot with the db key", || k.sign(&sdboot, epoch))?;
    }
    // Room for three versions (UKI, and kernel and initrd for BIOS boot):
    // one per slot, and a third while an update writes.
    let esp_size = {
        let bios = std::fs::metadata(&boot_files.kernel)?.len() + std::fs::metadata(&boot_files.initrd)?.len();
        let need = 2 * std::fs::metadata(&sdboot)?.len() + 3 * (std::fs::metadata(&uki)?.len() + bios);
        (need * 5 / 4).div_ceil(ALIGN).max(64) * ALIGN
    };
    steps.step("ESP (systemd-boot + UKI; GRUB's configuration, kernel and initrd)", || {
        let vol = u32::from_be_bytes(hex::decode(digest::sha256_bytes(format!("{root_hash} esp").as_bytes()))?[..4].try_into()?);
        let bios = bios::files_of_uki(&uki, &opts.version, (&boot_files.kernel, &boot_files.initrd, &cmdline))?;
        boot::make_esp(&EspInputs { systemd_boot: &sdboot, uki: &uki, size: esp_size, volume_id: vol, epoch, enroll: opts.sign_with, bios }, work, &esp)
    })?;
    let core = work.join("core.img");
    let boot_code = steps.step("BIOS boot: GRUB core image and boot sector", || {
        bios::make_core(&core)?;
        bios::boot_code(bios::CORE_FIRST_LBA)
    })?;

    for (file, max) in [(&erofs, slots::ROOT_SLOT_SIZE), (&hash_tree, slots::VERITY_SLOT_SIZE)] {
        let len = std::fs::metadata(file)?.len();
        anyhow::ensure!(len <= max, "{} is {len} bytes, more than its slot holds ({max}); an installed disk could not take it as an update", file.display());
    }
    let empty = work.join("empty");
    std::fs::write(&empty, b"")?;
    let (root_label, verity_label) = (slots::root_label(&opts.version), slots::verity_label(&opts.version));
    let contents = [
        (&esp, "bpi-esp", esp_size),
        (&erofs, root_label.as_str(), slots::ROOT_SLOT_SIZE),
        (&hash_tree, verity_label.as_str(), slots::VERITY_SLOT_SIZE),
        (&empty, slots::EMPTY_LABEL, slots::ROOT_SLOT_SIZE),
        (&empty, slots::EMPTY_LABEL, slots::VERITY_SLOT_SIZE),
    ];
    let extents = gpt::layout(&contents.iter().map(|c| c.2).collect::<Vec<_>>());
    let end = extents.last().map(|(o, l)| o + l).unwrap_or(ALIGN);
    let disk_size = end + DATA_RESERVE + ALIGN;
    let entry = |i: usize, type_guid: &str, guid: String, attributes: u64| Partition {
        type_guid: type_guid.into(),
        guid,
        name: contents[i].1.into(),
        first_lba: extents[i].0 / SECTOR,
        last_lba: (extents[i].0 + extents[i].1) / SECTOR - 1,
        attributes,
    };
    // systemd finds the verity data and hash partitions by these UUIDs: the
    // first and second halves of the root hash (Discoverable Partitions Spec).
    // Slot B is empty: its UUIDs name no root hash.
    let empty_guid = |what: &str| gpt::derived_guid(format!("{root_hash} empty slot b {what}").as_bytes());
    let parts = [
        Part { entry: entry(0, types::ESP, gpt::derived_guid(format!("{root_hash} esp").as_bytes()), 0), contents: &esp },
        Part { entry: entry(1, types::ROOT_X86_64, gpt::guid_string(&rh[..16]), ATTR_READ_ONLY), contents: &erofs },
        Part { entry: entry(2, types::ROOT_X86_64_VERITY, gpt::guid_string(&rh[16..32]), ATTR_READ_ONLY), contents: &hash_tree },
        Part { entry: entry(3, types::ROOT_X86_64, empty_guid("root"), ATTR_READ_ONLY), contents: &empty },
        Part { entry: entry(4, types::ROOT_X86_64_VERITY, empty_guid("verity"), ATTR_READ_ONLY), contents: &empty },
        // Last in the table, so the others keep their numbers; first on the
        // disk, in the sectors below the first aligned partition.
        Part {
            entry: Partition {
                type_guid: types::BIOS_BOOT.into(),
                guid: gpt::derived_guid(format!("{root_hash} bios boot").as_bytes()),
                name: "bpi-bios-boot".into(),
                first_lba: bios::CORE_FIRST_LBA,
                last_lba: bios::CORE_LAST_LBA,
                attributes: 0,
            },
            contents: &core,
        },
    ];
    let disk_guid = gpt::derived_guid(format!("{root_hash} disk").as_bytes());
    let raw_tmp = work.join(RAW);
    steps.step("assemble GPT disk", || disk::assemble(&raw_tmp, &disk_guid, &parts, disk_size, Some(&boot_code)))?;

    let qcow_tmp = work.join(QCOW2);
    steps.step("qcow2 for Proxmox", || {
        Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw_tmp).arg(&qcow_tmp).run()
    })?;

    let manifest = steps.step("manifest and checksums", || {
        let mut partitions = Vec::new();
        for p in &parts {
            partitions.push(PartitionInfo {
                name: p.entry.name.clone(),
                type_guid: p.entry.type_guid.clone(),
                guid: p.entry.guid.clone(),
                offset: p.entry.offset(),
                size: p.entry.size(),
                sha256: digest::sha256_range(&raw_tmp, p.entry.offset(), p.entry.size())?,
            });
        }
        let manifest = Manifest {
            name: "bpi-os".into(),
            version: opts.version.clone(),
            architecture: "x86_64".into(),
            source_date_epoch: epoch,
            kernel: boot_files.kernel_version.clone(),
            root_hash: root_hash.clone(),
            cmdline: cmdline.clone(),
            disk: DiskInfo { guid: disk_guid.clone(), size: disk_size, sha256: digest::sha256_file(&raw_tmp)? },
            partitions,
            verity_canary: Canary { path: format!("/{}", stage::CANARY_PATH), root_offset: canary_at },
            packages: debs
                .iter()
                .map(|d| Package {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    arch: d.arch.clone(),
                    sha256: d.sha256.clone(),
                    root_bytes: package_sizes.iter().find(|(n, _)| *n == d.name).map_or(0, |(_, b)| *b),
                })
                .collect(),
            root_fs_bytes: erofs_bytes,
            signed_by: opts.sign_with.map(KeySet::db_fingerprint).transpose()?,
        };
        let manifest_tmp = work.join(MANIFEST);
        std::fs::write(&manifest_tmp, serde_json::to_string_pretty(&manifest)? + "\n")?;
        let mut sums = String::new();
        for f in [RAW, QCOW2, MANIFEST] {
            sums.push_str(&format!("{}  {f}\n", digest::sha256_file(&work.join(f))?));
        }
        std::fs::write(work.join(SUMS), sums)?;
        // Publish: checksums last, so a reader never sees sums for other files.
        for f in [RAW, QCOW2, MANIFEST, SUMS] {
            std::fs::rename(work.join(f), opts.out_dir.join(f))
                .with_context(|| format!("moving {f} to {}", opts.out_dir.display()))?;
        }
        Ok::<_, anyhow::Error>(manifest)
    })?;
    steps.step("signed update bundle", || {
        bundle::write(
            &bundle::BundleInputs { version: &opts.version, root_hash: &root_hash, root: &erofs, verity: &hash_tree, uki: &uki, valid_secs: opts.update_valid_secs },
            opts.update_signer,
            &opts.out_dir.join(bundle::DIR),
        )
    })?;
    Ok(manifest)
}

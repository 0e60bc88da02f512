//! Host integration: `bpi-os install` with a small synthetic image (built
//! here with the image crate's own GPT writer), onto regular files
//! (`--allow-file`) and, as root, onto loop devices that are mounted, mapped
//! or used as swap. Every refusal leaves the target's bytes as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpi_formats::gpt::{self, derived_guid, types, Partition, SECTOR};
use bpi_formats::manifest::{Canary, DiskInfo, Manifest, PartitionInfo};
use bpi_support::digest::sha256_file;

const MIB: u64 = 1 << 20;

fn bpi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpi-os")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A bpi-os-shaped image: ESP and root partitions of patterned bytes, a GPT,
/// a manifest and SHA256SUMS, in `dir`. `body_mib` sizes the root partition.
fn image(dir: &Path, body_mib: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let raw = dir.join("bpi-os.raw");
    let ext = gpt::layout(&[2 * MIB, body_mib * MIB]);
    let parts = vec![
        Partition {
            type_guid: types::ESP.into(),
            guid: derived_guid(b"test-esp"),
            name: "bpi-esp".into(),
            first_lba: ext[0].0 / SECTOR,
            last_lba: (ext[0].0 + ext[0].1) / SECTOR - 1,
            attributes: 0,
        },
        Partition {
            type_guid: types::ROOT_X86_64.into(),
            guid: derived_guid(b"test-root"),
            name: "bpi-root".into(),
            first_lba: ext[1].0 / SECTOR,
            last_lba: (ext[1].0 + ext[1].1) / SECTOR - 1,
            attributes: gpt::ATTR_READ_ONLY,
        },
    ];
    let size = ext[1].0 + ext[1].1 + MIB;
    let disk_guid = derived_guid(b"test-disk");
    let t = gpt::tables(&disk_guid, &parts, size).unwrap();
    let mut bytes = vec![0u8; size as usize];
    for (i, b) in bytes[ext[0].0 as usize..(ext[1].0 + ext[1].1) as usize].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    bytes[t.backup_offset as usize..t.backup_offset as usize + t.backup.len()].copy_from_slice(&t.backup);
    bytes[..t.primary.len()].copy_from_slice(&t.primary);
    std::fs::write(&raw, &bytes).unwrap();
    let sha = sha256_file(&raw).unwrap();
    let manifest = Manifest {
        name: "bpi-os".into(),
        version: "0.0.0-test".into(),
        architecture: std::env::consts::ARCH.into(),
        source_date_epoch: 0,
        kernel: "test".into(),
        root_hash: "00".into(),
        cmdline: String::new(),
        disk: DiskInfo { guid: disk_guid, size, sha256: sha },
        partitions: parts
            .iter()
            .map(|p| PartitionInfo {
                name: p.name.clone(),
                type_guid: p.type_guid.clone(),
                guid: p.guid.clone(),
                offset: p.offset(),
                size: p.size(),
                sha256: String::new(),
            })
            .collect(),
        verity_canary: Canary { path: "/x".into(), root_offset: 0 },
        packages: Vec::new(),
        root_fs_bytes: 0, signed_by: None,
    };
    write_manifest(dir, &manifest);
    raw
}

fn write_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(m).unwrap()).unwrap();
    let sums = format!(
        "{}  bpi-os.raw\n{}  manifest.json\n",
        sha256_file(&dir.join("bpi-os.raw")).unwrap(),
        sha256_file(&dir.join("manifest.json")).unwrap()
    );
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

fn sparse(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

fn install(image: &Path, disk: &Path, state: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["install", "--disk", disk.to_str().unwrap(), "--image", image.to_str().unwrap(), "--yes"];
    args.extend(["--state-dir", state.to_str().unwrap()]);
    if !extra.contains(&"--recovery-key-file") {
        args.push("--no-store");
    }
    args.extend(extra);
    bpi(&args)
}

/// The result must boot the image: identical partitions, tables at both ends.
fn check_installed(raw: &Path, disk: &Path) {
    let img = std::fs::read(raw).unwrap();
    let d = std::fs::read(disk).unwrap();
    let (g1, p1) = gpt::parse_primary(&img).unwrap();
    let (g2, p2) = gpt::parse_primary(&d).unwrap();
    // The image's partitions, then the encrypted store's and the
    // provisioning partition, which the installer adds.
    assert_eq!((&g1, &p1[..]), (&g2, &p2[..p1.len()]));
    assert_eq!(p2.len(), p1.len() + 2);
    assert_eq!((p2[p1.len()].name.as_str(), p2[p1.len()].type_guid.as_str()), ("bpi-store", bpi_installer::store::PART_TYPE));
    assert_eq!((p2[p1.len() + 1].name.as_str(), p2[p1.len() + 1].type_guid.as_str()), ("bpi-provision", bpi_installer::disk::PROVISION_TYPE));
    for p in &p1 {
        let r = p.offset() as usize..(p.offset() + p.size()) as usize;
        assert!(img[r.clone()] == d[r], "partition {} differs", p.name);
    }
    assert_eq!(&d[d.len() - 512..d.len() - 504], b"EFI PART", "no backup GPT at the disk's end");
    if bpi_support::cmd::which("sfdisk").is_some() {
        let o = Command::new("sfdisk").arg("--verify").arg(disk).output().unwrap();
        assert!(o.status.success() && text(&o).contains("No errors detected"), "{}", text(&o));
    }
}

#[test]
fn installs_onto_a_file_and_reruns_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let raw = image(&dir.path().join("img"), 6);
    let disk = dir.path().join("disk");
    sparse(&disk, 600 * MIB);
    let state = dir.path().join("state");

    let dry = install(&raw, &disk, &state, &["--allow-file", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("write the first MiB last") && text(&dry).contains("nothing was written"), "{}", text(&dry));
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0), "--dry-run wrote");

    let o = install(&raw, &disk, &state, &["--allow-file"]);
    assert!(o.status.success(), "{}", text(&o));
    check_installed(&raw, &disk);
    assert!(std::fs::read_dir(&state).map_or(true, |mut d| d.next().is_none()), "state left after a finished install");

    // The disk now has a partition table: a second install needs --force.
    let before = sha256_file(&disk).unwrap();
    let o = install(&raw, &disk, &state, &["--allow-file"]);
    assert!(!o.status.success() && text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(sha256_file(&disk).unwrap(), before);
    let o = install(&raw, &disk, &state, &["--allow-file", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    check_installed(&raw, &disk);
}

/// The provisioning partition's bytes on an installed disk.
fn provision_partition(disk: &Path) -> Vec<u8> {
    let d = std::fs::read(disk).unwrap();
    let (_, parts) = gpt::parse_primary(&d).unwrap();
    let p = parts.iter().find(|p| p.name == "bpi-provision").expect("no bpi-provision partition");
    d[p.offset() as usize..(p.offset() + p.size()) as usize].to_vec()
}

#[test]
fn install_provision_puts_the_checked_documents_on_the_disk_for_first_boot() {
    let dir = tempfile::tempdir().unwrap();
    let raw = image(&dir.path().join("img"), 6);
    let disk = dir.path().join("disk");
    sparse(&disk, 600 * MIB);
    let state = dir.path().join("state");
    let ud = dir.path().join("user-data");
    std::fs::write(&ud, "#cloud-config\nhostname: metal1\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOpkNjf0LDiA486DX/kEXgZW0qEikRVMwyfsQjBWQ8a op@host\n").unwrap();

    // A set first boot would refuse is refused before anything is written.
    let bad = dir.path().join("bad-user-data");
    std::fs::write(&bad, "#cloud-config\nhostname: -metal\n").unwrap();
    let o = install(&raw, &disk, &state, &["--allow-file", "--provision", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains(&format!("{}:2:", bad.display())) && text(&o).contains("nothing was written"), "{}", text(&o));
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0), "a refused --provision wrote");

    let dry = install(&raw, &disk, &state, &["--allow-file", "--dry-run", "--provision", ud.to_str().unwrap()]);
    assert!(text(&dry).contains("write the provisioning given with --provision"), "{}", text(&dry));
    let o = install(&raw, &disk, &state, &["--allow-file", "--provision", ud.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    check_installed(&raw, &disk);
    let docs = bpi_provision::source::decode_partition(&provision_partition(&disk), "test").unwrap().expect("no payload");
    assert_eq!(docs.user_data.as_deref(), Some(std::fs::read_to_string(&ud).unwrap().as_str()));
    let c = bpi_provision::check::check(&docs);
    assert!(c.ok() && c.settings.hostname.as_deref() == Some("metal1"), "{:?}", c.errors);

    // A reinstall without --provision leaves no earlier provisioning behind.
    let o = install(&raw, &disk, &state, &["--allow-file", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(provision_partition(&disk).iter().all(|&b| b == 0), "an earlier install's provisioning stayed");
}

#[test]
fn bad_input_is_refused_and_the_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let good = image(&dir.path().join("good"), 4);
    let disk = dir.path().join("disk");
    // Old contents the install must not touch when it refuses.
    std::fs::write(&disk, vec![0xa5u8; 600 * MIB as usize]).unwrap();
    let before = sha256_file(&disk).unwrap();

    // A changed byte in the image.
    let bad = dir.path().join("bad");
    let raw = image(&bad, 4);
    let mut b = std::fs::read(&raw).unwrap();
    b[3 * MIB as usize] ^= 1;
    std::fs::write(&raw, &b).unwrap();
    let wrong_sum = install(&raw, &disk, &state, &["--allow-file", "--force"]);

    // An image for another architecture (with consistent checksums).
    let arch = dir.path().join("arch");
    let raw_arch = image(&arch, 4);
    let mut m = Manifest::load(&arch.join("manifest.json")).unwrap();
    m.architecture = "riscv64".into();
    write_manifest(&arch, &m);
    let wrong_arch = install(&raw_arch, &disk, &state, &["--allow-file", "--force"]);

    // A disk smaller than the image.
    let small = dir.path().join("small");
    std::fs::write(&small, vec![0x5au8; 4 * MIB as usize]).unwrap();
    let small_before = sha256_file(&small).unwrap();
    let too_small = install(&good, &small, &state, &["--allow-file", "--force"]);

    // Not a block device, without --allow-file; a directory; a character device.
    let file_target = install(&good, &disk, &state, &["--force"]);
    let dir_target = install(&good, dir.path(), &state, &["--allow-file"]);
    let char_target = install(&good, Path::new("/dev/null"), &state, &[]);

    // SHA256SUMS that does not vouch for the manifest; a FIFO and a device
    // where SHA256SUMS and the manifest belong (a plain read would hang or
    // never end).
    let unbound = dir.path().join("unbound");
    image(&unbound, 4);
    let sums = std::fs::read_to_string(unbound.join("SHA256SUMS")).unwrap();
    std::fs::write(unbound.join("SHA256SUMS"), sums.lines().filter(|l| !l.ends_with("manifest.json")).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let no_manifest_sum = install(&unbound, &disk, &state, &["--allow-file", "--force"]);
    let fifo = dir.path().join("fifo");
    image(&fifo, 4);
    std::fs::remove_file(fifo.join("SHA256SUMS")).unwrap();
    nix::unistd::mkfifo(&fifo.join("SHA256SUMS"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_sums = install(&fifo, &disk, &state, &["--allow-file", "--force"]);
    let device = dir.path().join("device");
    image(&device, 4);
    std::fs::remove_file(device.join("manifest.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", device.join("manifest.json")).unwrap();
    let device_manifest = install(&device, &disk, &state, &["--allow-file", "--force"]);

    // A missing image; a directory without one.
    let missing = install(&dir.path().join("nope/bpi-os.raw"), &disk, &state, &["--allow-file", "--force"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let no_raw = install(&empty, &disk, &state, &["--allow-file", "--force"]);

    for (name, o, want) in [
        ("checksum", &wrong_sum, "damaged or altered"),
        ("architecture", &wrong_arch, "the image is for riscv64"),
        ("too small", &too_small, "needs"),
        ("regular file", &file_target, "pass --allow-file"),
        ("directory", &dir_target, "not a block device"),
        ("char device", &char_target, "not a block device"),
        ("missing image", &missing, "cannot be read"),
        ("no raw in dir", &no_raw, "is not there"),
        ("manifest not in SHA256SUMS", &no_manifest_sum, "lists no checksum for manifest.json"),
        ("FIFO as SHA256SUMS", &fifo_sums, "not a regular file"),
        ("device as manifest", &device_manifest, "not a regular file"),
    ] {
        assert!(!o.status.success(), "{name}: accepted");
        assert!(text(o).contains(want), "{name}: {}", text(o));
    }
    assert_eq!(sha256_file(&disk).unwrap(), before, "a refused install changed the disk");
    assert_eq!(sha256_file(&small).unwrap(), small_before, "a refused install changed the small disk");
}

/// The image is read through the descriptor that was hashed, and what lands
/// on the disk is hashed again: a file moved over the image after the check
/// is not what gets installed, and bytes changed in place after the check
/// stop the install before the partition tables are written.
#[test]
fn what_is_installed_is_what_was_checked() {
    use bpi_installer::install::{self, DiskRequest};
    use bpi_installer::target::Allow;
    let dir = tempfile::tempdir().unwrap();
    let raw = image(&dir.path().join("img"), 6);
    let checked = std::fs::read(&raw).unwrap();
    let state = dir.path().join("state");
    let steps = bpi_support::Steps::new("test");
    let prepare = |disk: &Path| {
        sparse(disk, 600 * MIB);
        let req = DiskRequest { disk, image: &raw, allow: Allow { force: true, file: true }, state_dir: &state, store: None, provision: None };
        let c = install::check(&req).unwrap();
        install::prepare(&req, c, &steps).unwrap()
    };

    // Another image moved over bpi-os.raw between the check and the write.
    let disk = dir.path().join("disk-a");
    let p = prepare(&disk);
    let other = dir.path().join("other.raw");
    let mut swapped = checked.clone();
    swapped[3 * MIB as usize] ^= 0xff;
    std::fs::write(&other, &swapped).unwrap();
    std::fs::rename(&other, &raw).unwrap();
    bpi_installer::disk::apply(&p.plan, &p.image, &p.state_file, &steps, None).unwrap();
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[MIB as usize..4 * MIB as usize] == checked[MIB as usize..4 * MIB as usize], "the moved-in file was installed");

    // Bytes of the checked file itself changed after the check.
    std::fs::write(&raw, &checked).unwrap();
    let disk = dir.path().join("disk-b");
    let p = prepare(&disk);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x42], 3 * MIB).unwrap();
    let err = bpi_installer::disk::apply(&p.plan, &p.image, &p.state_file, &steps, None).err().expect("an altered image was installed");
    assert!(format!("{err:#}").contains("the image changed while it was written"), "{err:#}");
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(gpt::parse_primary(&on_disk).is_err(), "the tables were written over an unverified body");

    // The disk changed (here: resized) while the confirmation prompt waited.
    std::fs::write(&raw, &checked).unwrap();
    let disk = dir.path().join("disk-c");
    let p = prepare(&disk);
    assert!(install::reidentify(&p, Allow { force: true, file: true }).is_ok());
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(700 * MIB).unwrap();
    let err = install::reidentify(&p, Allow { force: true, file: true }).unwrap_err().to_string();
    assert!(err.contains("changed while the install waited"), "{err}");
}

#[test]
fn an_install_killed_while_writing_finishes_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the body write syncs and records progress on the way.
    let raw = image(&dir.path().join("img"), 700);
    let disk = dir.path().join("disk");
    sparse(&disk, 1400 * MIB);
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpi-os"))
        .args(["install", "--allow-file", "--yes", "--no-store", "--disk"])
        .arg(&disk)
        .arg("--image")
        .arg(&raw)
        .arg("--state-dir")
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has recorded some of the body.
    let t = std::time::Instant::now();
    loop {
        let recorded = std::fs::read_dir(&state)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .is_some_and(|s| s.contains("\"body_written\"") && !s.contains("\"body_written\": 0"));
        if recorded || t.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the install finished before it could be killed; the test proved nothing");
    // The state file and its directory are root's alone, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory");
    let file = std::fs::read_dir(&state).unwrap().next().unwrap().unwrap().path();
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    // The first MiB is written last: the half-written disk has no partition table.
    let head = std::fs::read(&disk).unwrap();
    assert_eq!(bpi_installer::target::table_kind(&head[..1024]), None, "a partition table before the body was verified");

    let o = install(&raw, &disk, &state, &["--allow-file"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming the install"), "{}", text(&o));
    check_installed(&raw, &disk);
}

#[test]
fn root_mode_lays_out_bpi_and_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let dry = bpi(&["install", "--root", root.to_str().unwrap(), "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("mkdir") || text(&dry).contains("create"), "{}", text(&dry));
    assert!(!root.join("bpi").exists(), "--dry-run created the tree");

    let o = bpi(&["install", "--root", root.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    for d in bpi_formats::layout::TREE {
        let meta = std::fs::metadata(root.join(d.path.trim_start_matches('/'))).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, d.mode, "{}", d.path);
    }
    for (name, contents) in bpi_formats::units::FILES {
        let dest = root.join(bpi_formats::units::destination(name));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), *contents, "{}", dest.display());
    }
    let wants = root.join("etc/systemd/system/multi-user.target.wants/bpi-ledger.service");
    assert!(wants.symlink_metadata().is_ok(), "bpi-ledger.service was not enabled");
    // Nothing is left to do on a second run.
    let again = bpi(&["install", "--root", root.to_str().unwrap(), "--dry-run"]);
    assert!(!text(&again).contains("install /"), "{}", text(&again));
}

/// A loop device over a fresh file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(file: &Path, size: u64) -> Option<Loop> {
        if size <= 64 * MIB {
            std::fs::write(file, vec![0x3cu8; size as usize]).unwrap();
        } else {
            sparse(file, size);
        }
        let o = Command::new("losetup").args(["--find", "--show"]).arg(file).output().ok()?;
        if !o.status.success() {
            bpi_support::skip::skip(&format!("losetup failed: {}", text(&o)));
            return None;
        }
        Some(Loop { dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()) })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}


fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", text(&o));
}

/// Reads the first and last MiB of a block device (what an install would touch first).
fn ends(dev: &Path) -> (Vec<u8>, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).unwrap();
    let size = Command::new("blockdev").arg("--getsize64").arg(dev).output().unwrap();
    let size: u64 = String::from_utf8_lossy(&size.stdout).trim().parse().unwrap();
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    f.read_exact_at(&mut a, 0).unwrap();
    f.read_exact_at(&mut b, size - MIB).unwrap();
    (a, b)
}

#[test]
fn disks_in_use_are_refused_mounted_swap_and_the_running_root() {
    if !bpi_support::skip::needs_root("loop devices, mounts and swap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let raw = image(&dir.path().join("img"), 4);

    // The disk the running root lives on.
    let root_dev = bpi_installer::target::inspect(Path::new("/"), Default::default()).err();
    assert!(root_dev.is_some(), "/ is a directory; inspecting it must fail");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_src = mounts.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/")).and_then(|l| {
        let f: Vec<&str> = l.split(" - ").nth(1)?.split_whitespace().collect();
        f.get(1).map(|s| s.to_string())
    });
    match root_src.filter(|s| s.starts_with("/dev/") && Path::new(s).exists()) {
        Some(src) => {
            // Name the whole disk that holds it.
            let disk = Command::new("lsblk").args(["-no", "PKNAME", &src]).output().unwrap();
            let parent = String::from_utf8_lossy(&disk.stdout).trim().to_string();
            let node = if parent.is_empty() { PathBuf::from(&src) } else { PathBuf::from(format!("/dev/{parent}")) };
            // (This sandbox may forbid even reading it; then there is nothing to compare.)
            let before = std::fs::File::open(&node).is_ok().then(|| ends(&node));
            let o = install(&raw, &node, &state, &["--force"]);
            assert!(!o.status.success() && text(&o).contains("holds the running root"), "{}", text(&o));
            if let Some(before) = before {
                assert!(ends(&node) == before, "a refused install changed the root disk");
            }
        }
        None => bpi_support::skip::skip("/ is not on a block device here, so the running root's disk cannot be tried"),
    }

    // A mounted disk.
    let Some(mounted) = Loop::new(&dir.path().join("m.img"), 64 * MIB) else { return };
    run("mkfs.ext4", &["-q", mounted.dev.to_str().unwrap()]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &[mounted.dev.to_str().unwrap(), mnt.to_str().unwrap()]);
    run("sync", &[]);
    let before = ends(&mounted.dev);
    let o = install(&raw, &mounted.dev, &state, &["--force"]);
    // Compared while still mounted: unmounting writes the superblock itself.
    let after = ends(&mounted.dev);
    run("umount", &[mnt.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("is mounted at"), "{}", text(&o));
    assert!(after == before);

    // A disk held by device-mapper is tried in the QEMU suite
    // (qemu-tests/tests/lifecycle/install.rs: the live disk under the dm-verity root):
    // this host's kernel has no device-mapper and cannot load it.

    // A disk used as swap.
    let Some(swap) = Loop::new(&dir.path().join("s.img"), 64 * MIB) else { return };
    run("mkswap", &["-q", swap.dev.to_str().unwrap()]);
    run("swapon", &[swap.dev.to_str().unwrap()]);
    let before = ends(&swap.dev);
    let o = install(&raw, &swap.dev, &state, &["--force"]);
    run("swapoff", &[swap.dev.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("in use as swap"), "{}", text(&o));
    assert!(ends(&swap.dev) == before);

    // And a free loop device takes the install.
    let Some(free) = Loop::new(&dir.path().join("f.img"), 600 * MIB) else { return };
    let o = install(&raw, &free.dev, &state, &[]);
    assert!(o.status.success(), "{}", text(&o));
    drop(free);
    check_installed(&raw, &dir.path().join("f.img"));
}

#[test]
fn without_a_tpm_the_store_is_keyed_by_the_recovery_key_file() {
    if !bpi_support::skip::needs_root("the store is formatted through a loop device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = image(&dir.path().join("img"), 4);
    let disk = dir.path().join("disk");
    sparse(&disk, 600 * MIB);
    let state = dir.path().join("state");
    // Without a TPM2 and without a choice, the install stops before writing.
    let o = bpi(&["install", "--allow-file", "--yes", "--tpm2", "no", "--disk", disk.to_str().unwrap(), "--image", raw.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--recovery-key-file PATH"), "{}", text(&o));
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0));

    let key = dir.path().join("recovery.key");
    let o = install(&raw, &disk, &state, &["--allow-file", "--tpm2", "no", "--recovery-key-file", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    check_installed(&raw, &disk);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // The store partition follows the image's, and its LUKS2 header opens with the key.
    let d = std::fs::read(&disk).unwrap();
    let (_, parts) = gpt::parse_primary(&d).unwrap();
    let store = parts.iter().find(|p| p.name == "bpi-store").expect("no bpi-store partition");
    assert_eq!(store.type_guid, bpi_installer::store::PART_TYPE);
    let region = dir.path().join("store.img");
    std::fs::write(&region, &d[store.offset() as usize..(store.offset() + store.size()) as usize]).unwrap();
    let ok = Command::new("cryptsetup").args(["open", "--test-passphrase", "--key-file"]).arg(&key).arg(&region).output().unwrap();
    assert!(ok.status.success(), "the recovery key does not open the store: {}", text(&ok));
    std::fs::write(dir.path().join("wrong.key"), "cbdefghi").unwrap();
    let bad = Command::new("cryptsetup").args(["open", "--test-passphrase", "--key-file"]).arg(dir.path().join("wrong.key")).arg(&region).output().unwrap();
    assert!(!bad.status.success(), "a wrong key opened the store");
}

#[test]
fn a_passphrase_and_the_shown_recovery_key_both_open_the_store() {
    if !bpi_support::skip::needs_root("the store is formatted through a loop device") {
        return;
    }
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let raw = image(&dir.path().join("img"), 4);
    let disk = dir.path().join("disk");
    sparse(&disk, 600 * MIB);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpi-os"))
        .args(["install", "--allow-file", "--yes", "--tpm2", "no", "--passphrase", "--disk"])
        .arg(&disk)
        .arg("--image")
        .arg(&raw)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse battery\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let key = out.split("shown once; keep it somewhere safe:").nth(1).and_then(|s| s.split_whitespace().next()).expect("no recovery key shown");
    let d = std::fs::read(&disk).unwrap();
    let (_, parts) = gpt::parse_primary(&d).unwrap();
    let store = parts.iter().find(|p| p.name == "bpi-store").unwrap();
    let region = dir.path().join("store.img");
    std::fs::write(&region, &d[store.offset() as usize..(store.offset() + store.size()) as usize]).unwrap();
    for (what, secret) in [("passphrase", "correct horse battery"), ("recovery key", key)] {
        let f = dir.path().join("k");
        std::fs::write(&f, secret).unwrap();
        let ok = Command::new("cryptsetup").args(["open", "--test-passphrase", "--key-file"]).arg(&f).arg(&region).output().unwrap();
        assert!(ok.status.success(), "the {what} does not open the store: {}", text(&ok));
    }
    // A short passphrase is refused before anything is written.
    let disk2 = dir.path().join("disk2");
    sparse(&disk2, 600 * MIB);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpi-os"))
        .args(["install", "--allow-file", "--yes", "--tpm2", "no", "--passphrase", "--disk"])
        .arg(&disk2)
        .arg("--image")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success() && text(&o).contains("shorter than 8"), "{}", text(&o));
    assert!(std::fs::read(&disk2).unwrap().iter().all(|&b| b == 0));
}

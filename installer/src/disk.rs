//! `bpi-os install --disk`: the plan (pure) and its application.
//!
//! Order matters, so that a kill at any moment leaves a disk that either
//! boots the whole image or does not boot at all, and a re-run finishes:
//! 1. wipe the old partition tables (primary and backup), so an old system
//!    whose data is being overwritten can no longer be booted half-way;
//! 2. write the image's body (everything after the first MiB, up to its own
//!    backup table), syncing as it goes and recording how far it got;
//! 3. read the body back and compare it with the image;
//! 4. write the backup GPT at the disk's end (relocated from the image's end);
//! 5. write the first MiB (protective MBR, primary GPT) last, and check both
//!    tables by reading them back.
//!
//! Completed steps are recorded in a state file; a re-run with the same image
//! and disk skips them (the partial body write resumes where it stopped).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use bpi_formats::gpt::{self, ALIGN, ENTRY_SECTORS, SECTOR};
use bpi_support::{progress, Cmd, Steps};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::Source;
use crate::store;
use crate::target::{self, Kind, Target};

/// Body writes are synced and recorded this often.
const CHECKPOINT_BYTES: u64 = 256 << 20;
const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    WipeTables { backup_offset: u64 },
    WriteBody { from: u64, to: u64 },
    VerifyBody { from: u64, to: u64 },
    WriteBackupTable { offset: u64, bytes: u64 },
    WritePrimaryTable { bytes: u64 },
    VerifyTables,
    RereadPartitions,
    /// (The passphrase itself is never in a plan or the state file.)
    InitStore { offset: u64, bytes: u64, tpm2: bool, pcrs: String, recovery_key_file: Option<PathBuf>, passphrase: bool },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::WipeTables { .. } => "wipe-tables",
            Step::WriteBody { .. } => "write-body",
            Step::VerifyBody { .. } => "verify-body",
            Step::WriteBackupTable { .. } => "write-backup-table",
            Step::WritePrimaryTable { .. } => "write-primary-table",
            Step::VerifyTables => "verify-tables",
            Step::RereadPartitions => "reread-partitions",
            Step::InitStore { .. } => "init-store",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::WipeTables { backup_offset } => write!(
                f,
                "zero the old partition tables (bytes 0..{} and {backup_offset}..end) so no old system boots half-overwritten",
                gpt::HEAD_BYTES
            ),
            Step::WriteBody { from, to } => {
                write!(f, "write image bytes {from}..{to} ({}) at the same offsets, syncing every 256 MiB", target::human(to - from))
            }
            Step::VerifyBody { from, to } => write!(f, "read bytes {from}..{to} back from the disk and compare with the image"),
            Step::WriteBackupTable { offset, bytes } => {
                write!(f, "write the backup GPT ({bytes} bytes) at the disk's end, offset {offset}")
            }
            Step::WritePrimaryTable { bytes } => {
                write!(f, "write the first MiB last ({bytes} bytes: protective MBR and primary GPT, sized for the whole disk)")
            }
            Step::VerifyTables => write!(f, "read both GPTs back and check them against the image's partitions"),
            Step::RereadPartitions => write!(f, "ask the kernel to re-read the partition table"),
            Step::InitStore { offset, bytes, tpm2, pcrs, recovery_key_file, passphrase } => {
                write!(f, "encrypted store on bpi-store (offset {offset}, {}): LUKS2 keyed by a new recovery key", target::human(*bytes))?;
                if *passphrase {
                    write!(f, ", plus the passphrase given")?;
                }
                if *tpm2 {
                    write!(f, ", plus a key sealed to this machine's TPM2 against PCR {pcrs}")?;
                }
                match recovery_key_file {
                    Some(p) => write!(f, "; the recovery key is written to {}", p.display()),
                    None => write!(f, "; the recovery key is shown once at the end"),
                }
            }
        }
    }
}

/// What an install will do, computed from the checked image and disk.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub image: PathBuf,
    pub image_sha256: String,
    pub image_size: u64,
    pub target: Target,
    pub steps: Vec<Step>,
    /// What first boot does with the rest of the disk.
    pub first_boot: String,
}

/// The operator's choice for the encrypted store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChoice {
    pub tpm2: bool,
    pub pcrs: String,
    pub recovery_key_file: Option<PathBuf>,
    pub passphrase: bool,
}

/// The smallest data partition first boot may make.
const MIN_DATA: u64 = 256 << 20;

/// The store partition the installer adds after the image's partitions (the
/// one first boot's repart would make), for a disk of `size` bytes.
pub fn store_partition(head: &[u8], size: u64) -> Result<gpt::Partition> {
    let start = gpt::end_of_partitions(head)?;
    let (disk_guid, _) = gpt::parse_primary(head)?;
    Ok(gpt::Partition {
        type_guid: store::PART_TYPE.into(),
        guid: gpt::derived_guid(format!("bpi-store {disk_guid} {size}").as_bytes()),
        name: store::PART_LABEL.into(),
        first_lba: start / SECTOR,
        last_lba: (start + store::SIZE) / SECTOR - 1,
        attributes: 0,
    })
}

/// The tables the disk gets: the image's, sized for the disk, plus the store partition.
pub fn disk_tables(head: &[u8], size: u64) -> Result<gpt::Tables> {
    let size = size - size % SECTOR;
    gpt::relocate_with(head, size, &[store_partition(head, size)?])
}

/// The plan for writing `src` to `t` (already checked by [`target::refusals`]).
pub fn plan(src: &Source, t: &Target, store_choice: Option<StoreChoice>) -> Result<Plan> {
    let image_backup = src.size - (1 + ENTRY_SECTORS) * SECTOR;
    ensure!(src.size > ALIGN + (1 + ENTRY_SECTORS) * SECTOR, "the image is too small to hold a GPT and a partition");
    let store_part = store_partition(&src.head, t.size)?;
    let needed = store_part.offset() + store_part.size() + MIN_DATA + ALIGN;
    ensure!(
        t.size >= needed,
        "{} is {}; the image, the encrypted store and the smallest data partition need {} ({needed} bytes)",
        t.path.display(),
        target::human(t.size),
        target::human(needed)
    );
    let tables = disk_tables(&src.head, t.size)?;
    let mut steps = vec![
        Step::WipeTables { backup_offset: (t.size / SECTOR - 1 - ENTRY_SECTORS) * SECTOR },
        Step::WriteBody { from: ALIGN, to: image_backup },
        Step::VerifyBody { from: ALIGN, to: image_backup },
        Step::WriteBackupTable { offset: tables.backup_offset, bytes: tables.backup.len() as u64 },
        Step::WritePrimaryTable { bytes: ALIGN },
        Step::VerifyTables,
    ];
    if t.kind == Kind::Block {
        steps.push(Step::RereadPartitions);
    }
    if let Some(c) = store_choice {
        steps.push(Step::InitStore {
            offset: store_part.offset(),
            bytes: store_part.size(),
            tpm2: c.tpm2,
            pcrs: c.pcrs,
            recovery_key_file: c.recovery_key_file,
            passphrase: c.passphrase,
        });
    }
    let rest = tables.backup_offset.saturating_sub(store_part.offset() + store_part.size());
    Ok(Plan {
        image: src.raw.clone(),
        image_sha256: src.sha256.clone(),
        image_size: src.size,
        target: t.clone(),
        steps,
        first_boot: format!(
            "first boot: systemd-repart creates bpi-data (ext4) in the remaining {} and grows it to the disk's end",
            target::human(rest)
        ),
    })
}

impl Plan {
    pub fn render(&self) -> String {
        let mut s = format!(
            "install {} (sha256 {}, {})\n   onto {}\n",
            self.image.display(),
            self.image_sha256,
            target::human(self.image_size),
            self.target.describe()
        );
        for (i, step) in self.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {step}\n", i + 1));
        }
        s.push_str(&format!("  then {}\n", self.first_boot));
        s
    }
}

/// Progress of one install, kept so a re-run after a kill finishes the job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub image_sha256: String,
    pub target: PathBuf,
    pub target_size: u64,
    pub done: Vec<String>,
    /// How far write-body got (bytes from its start, synced).
    pub body_written: u64,
}

/// The state file of an install of anything onto `target`.
pub fn state_path(state_dir: &Path, target: &Path) -> PathBuf {
    let key = hex::encode(&Sha256::digest(target.as_os_str().as_encoded_bytes())[..8]);
    state_dir.join(format!("install-{key}.json"))
}

/// The recorded state, if it belongs to this image and disk.
pub fn load_state(path: &Path, plan: &Plan) -> Option<State> {
    let s: State = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (s.image_sha256 == plan.image_sha256 && s.target == plan.target.path && s.target_size == plan.target.size).then_some(s)
}

fn save_state(path: &Path, s: &State) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?).with_context(|| format!("writing {}", tmp.display()))?;
    File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Opens the target for writing; a block device exclusively, so the kernel
/// refuses if anything mounted or mapped it since it was inspected.
fn open_target(t: &Target) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if t.kind == Kind::Block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(&t.path).with_context(|| match t.kind {
        Kind::Block => format!("opening {} exclusively (is it in use?)", t.path.display()),
        Kind::File => format!("opening {}", t.path.display()),
    })
}

/// Drops the target's cached pages so that reads come from the medium.
fn drop_cache(f: &File) {
    let _ = f.sync_all();
    // Length 0: to the end of the file or device.
    let _ = rustix::fs::fadvise(f, 0, 0, rustix::fs::Advice::DontNeed);
}

/// Direct I/O alignment (the largest logical block size in use).
const ALIGN_IO: usize = 4096;

/// A second handle on the target with O_DIRECT: bulk writes and reads skip
/// the page cache (no copy, and reads come from the medium). None where the
/// file system has no direct I/O (tmpfs); the buffered handle is used then.
fn open_direct(t: &Target) -> Option<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&t.path).ok()
}

/// A buffer whose start is aligned for O_DIRECT, without unsafe code: a
/// larger vector and the aligned window inside it.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN_IO];
        let start = (ALIGN_IO - raw.as_ptr() as usize % ALIGN_IO) % ALIGN_IO;
        AlignedBuf { raw, start, len }
    }
    fn get(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.len);
        &mut self.raw[self.start..self.start + n]
    }
}

/// Writes `data` at `at`: the aligned bulk directly, any unaligned tail buffered.
fn write_at(direct: Option<&File>, buffered: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let bulk = if direct.is_some() && at.is_multiple_of(ALIGN_IO as u64) { data.len() / ALIGN_IO * ALIGN_IO } else { 0 };
    if let Some(d) = direct.filter(|_| bulk > 0) {
        d.write_all_at(&data[..bulk], at)?;
    }
    if bulk < data.len() {
        buffered.write_all_at(&data[bulk..], at + bulk as u64)?;
    }
    Ok(())
}

/// Reads into `buf` from `at`, as [`write_at`] writes.
fn read_at(direct: Option<&File>, buffered: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let bulk = if direct.is_some() && at.is_multiple_of(ALIGN_IO as u64) { buf.len() / ALIGN_IO * ALIGN_IO } else { 0 };
    if let Some(d) = direct.filter(|_| bulk > 0) {
        d.read_exact_at(&mut buf[..bulk], at)?;
    }
    if bulk < buf.len() {
        buffered.read_exact_at(&mut buf[bulk..], at + bulk as u64)?;
    }
    Ok(())
}

/// Carries out `plan`, skipping what `state_file` says is done.
pub fn apply(plan: &Plan, state_file: &Path, steps: &Steps, passphrase: Option<&str>) -> Result<Applied> {
    let mut state = load_state(state_file, plan).unwrap_or_else(|| State {
        image_sha256: plan.image_sha256.clone(),
        target: plan.target.path.clone(),
        target_size: plan.target.size,
        ..Default::default()
    });
    if !state.done.is_empty() || state.body_written > 0 {
        progress::note(&format!(
            "resuming the install recorded in {}: done {:?}, body written {}",
            state_file.display(),
            state.done,
            state.body_written
        ));
    }
    // Held for the writing steps, closed before the partitions are re-read and
    // the store is made: an exclusive hold on the disk blocks both.
    let mut handles = Some((open_target(&plan.target)?, open_direct(&plan.target)));
    let mut image = File::open(&plan.image).with_context(|| format!("opening {}", plan.image.display()))?;
    let mut head = vec![0u8; gpt::HEAD_BYTES as usize];
    image.read_exact(&mut head).with_context(|| format!("reading {}", plan.image.display()))?;
    let tables = disk_tables(&head, plan.target.size)?;
    let store_part = store_partition(&head, plan.target.size)?;
    let mut rate = 0.0;
    let mut shown_key = None;

    for step in &plan.steps {
        if state.done.iter().any(|d| d == step.name()) {
            eprintln!("[install] {}: already done", step.name());
            continue;
        }
        if matches!(step, Step::RereadPartitions | Step::InitStore { .. }) {
            handles = None;
        }
        steps.step(step.name(), || -> Result<()> {
            let open = || handles.as_ref().map(|(d, dir)| (d, dir.as_ref())).context("the disk was closed before a writing step");
            match step {
                Step::WipeTables { backup_offset } => {
                    let (disk, _) = open()?;
                    disk.write_all_at(&vec![0u8; gpt::HEAD_BYTES as usize], 0)?;
                    let tail = plan.target.size - backup_offset;
                    disk.write_all_at(&vec![0u8; tail as usize], *backup_offset)?;
                    // An old LUKS header where the store goes must not pass for the new store.
                    disk.write_all_at(&vec![0u8; STORE_WIPE], store_part.offset())?;
                    disk.sync_all()?;
                }
                Step::WriteBody { from, to } => {
                    let (disk, direct) = open()?;
                    rate = write_body(&image, direct, disk, *from, *to, state_file, &mut state, steps)?;
                }
                Step::VerifyBody { from, to } => {
                    let (disk, direct) = open()?;
                    drop_cache(disk);
                    compare(&image, direct, disk, *from, *to, steps)?;
                }
                Step::WriteBackupTable { offset, .. } => {
                    ensure!(*offset == tables.backup_offset, "the disk changed size since the plan was made");
                    let (disk, _) = open()?;
                    disk.write_all_at(&tables.backup, tables.backup_offset)?;
                    disk.sync_all()?;
                }
                Step::WritePrimaryTable { .. } => {
                    let mut first = vec![0u8; ALIGN as usize];
                    image.read_exact_at(&mut first, 0)?;
                    first[..tables.primary.len()].copy_from_slice(&tables.primary);
                    let (disk, _) = open()?;
                    disk.write_all_at(&first, 0)?;
                    disk.sync_all()?;
                }
                Step::VerifyTables => {
                    let (disk, _) = open()?;
                    drop_cache(disk);
                    verify_tables(disk, &head, plan.target.size, &tables)?;
                }
                Step::RereadPartitions => {
                    // BLKRRPART is refused while the disk is open (ours is, exclusively);
                    // partx adds and updates partitions one by one, which is not.
                    let reread = Cmd::new("blockdev").arg("--rereadpt").arg(&plan.target.path).run();
                    if reread.is_err() {
                        if let Err(e) = Cmd::new("partx").arg("--update").arg(&plan.target.path).run() {
                            progress::note(&format!("the kernel did not re-read the partition table ({e}); it will at the next boot"));
                        }
                    }
                }
                Step::InitStore { offset, bytes, tpm2, pcrs, recovery_key_file, passphrase: wants_pass } => {
                    let pass = if *wants_pass { Some(passphrase.context("the plan wants a passphrase and none was given")?) } else { None };
                    let dev = StoreDevice::open(&plan.target, *offset, *bytes)?;
                    // A re-run starts the store afresh: it holds nothing yet.
                    OpenOptions::new().write(true).open(&dev.path)?.write_all_at(&vec![0u8; STORE_WIPE], 0)?;
                    let opts = store::InitOptions {
                        device: dev.path.clone(),
                        tpm2: if *tpm2 { store::Tpm2::Yes } else { store::Tpm2::No },
                        pcrs: pcrs.clone(),
                        recovery_key_file: recovery_key_file.clone(),
                        passphrase: pass.map(str::to_string),
                    };
                    let store_steps = store::plan(&opts, store::tpm2(std::time::Duration::ZERO), store::Holds::Nothing)?;
                    shown_key = store::apply(&store_steps, pass)?;
                }
            }
            Ok(())
        })?;
        state.done.push(step.name().to_string());
        save_state(state_file, &state)?;
    }
    let _ = std::fs::remove_file(state_file);
    Ok(Applied { rate, recovery_key: shown_key })
}

/// What an install reports at its end.
pub struct Applied {
    /// Bytes per second of the body write.
    pub rate: f64,
    /// The store's recovery key, to be shown once (when not written to a file).
    pub recovery_key: Option<String>,
}

/// How much of the store partition's start is zeroed (the LUKS2 header and more).
const STORE_WIPE: usize = 16 << 20;

/// The store partition as a device: the partition node of a block device, or
/// a loop device over that range of a file.
struct StoreDevice {
    path: PathBuf,
    loop_dev: bool,
}

impl StoreDevice {
    fn open(t: &Target, offset: u64, bytes: u64) -> Result<StoreDevice> {
        if t.kind == Kind::File {
            let dev = Cmd::new("losetup")
                .args(["--find", "--show", "--offset", &offset.to_string(), "--sizelimit", &bytes.to_string()])
                .arg(&t.path)
                .output()?;
            return Ok(StoreDevice { path: PathBuf::from(dev.trim()), loop_dev: true });
        }
        let _ = Cmd::new("udevadm").args(["settle", "--timeout=30"]).run();
        let name = t.path.file_name().and_then(|n| n.to_str()).context("the disk has a name")?.to_string();
        let start = (offset / SECTOR).to_string();
        let t0 = std::time::Instant::now();
        loop {
            let found = std::fs::read_dir(format!("/sys/class/block/{name}"))?.flatten().find(|e| {
                std::fs::read_to_string(e.path().join("start")).is_ok_and(|s| s.trim() == start)
            });
            if let Some(e) = found {
                let node = PathBuf::from("/dev").join(e.file_name());
                if node.exists() {
                    return Ok(StoreDevice { path: node, loop_dev: false });
                }
            }
            ensure!(t0.elapsed().as_secs() < 30, "the kernel shows no partition at sector {start} of {name} after re-reading the table");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for StoreDevice {
    fn drop(&mut self) {
        if self.loop_dev {
            let _ = Cmd::new("losetup").arg("-d").arg(&self.path).run();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_body(
    image: &File,
    direct: Option<&File>,
    disk: &File,
    from: u64,
    to: u64,
    state_file: &Path,
    state: &mut State,
    steps: &Steps,
) -> Result<f64> {
    let start = from + state.body_written.min(to - from);
    let mut progress = steps.bytes("writing", to - from);
    progress.add(start - from);
    let mut buf = AlignedBuf::new(CHUNK);
    let mut at = start;
    let mut since_sync = 0u64;
    let t = std::time::Instant::now();
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        let chunk = buf.get(n);
        image.read_exact_at(chunk, at).context("reading the image")?;
        write_at(direct, disk, chunk, at).context("writing the disk")?;
        at += n as u64;
        since_sync += n as u64;
        progress.add(n as u64);
        if since_sync >= CHECKPOINT_BYTES || at == to {
            // Direct writes can still sit in the disk's own cache: flush it.
            direct.unwrap_or(disk).sync_data().context("syncing the disk")?;
            disk.sync_data().context("syncing the disk")?;
            state.body_written = at - from;
            save_state(state_file, state)?;
            since_sync = 0;
        }
    }
    progress.finish();
    Ok((to - start) as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

fn compare(image: &File, direct: Option<&File>, disk: &File, from: u64, to: u64, steps: &Steps) -> Result<()> {
    let mut progress = steps.bytes("verifying", to - from);
    let mut a = vec![0u8; CHUNK];
    let mut b = AlignedBuf::new(CHUNK);
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        image.read_exact_at(&mut a[..n], at).context("reading the image")?;
        let back = b.get(n);
        read_at(direct, disk, back, at).context("reading the disk back")?;
        if a[..n] != back[..] {
            let i = a[..n].iter().zip(back.iter()).position(|(x, y)| x != y).unwrap_or(0);
            bail!("the disk differs from the image at byte {}: the write did not stick (bad medium?)", at + i as u64);
        }
        at += n as u64;
        progress.add(n as u64);
    }
    progress.finish();
    Ok(())
}

fn verify_tables(disk: &File, image_head: &[u8], size: u64, tables: &gpt::Tables) -> Result<()> {
    let mut head = vec![0u8; gpt::HEAD_BYTES as usize];
    disk.read_exact_at(&mut head, 0).context("reading the primary GPT back")?;
    let (guid, parts) = gpt::parse_primary(&head).context("the primary GPT read back is not valid")?;
    let (want_guid, want_parts) = gpt::parse_primary(image_head)?;
    ensure!(
        guid == want_guid && parts.starts_with(&want_parts),
        "the primary GPT read back does not list the image's partitions"
    );
    ensure!(head == tables.primary, "the primary GPT read back differs from what was written");
    let mut backup = vec![0u8; tables.backup.len()];
    disk.read_exact_at(&mut backup, tables.backup_offset).context("reading the backup GPT back")?;
    ensure!(backup == tables.backup, "the backup GPT read back differs from what was written");
    let last = &backup[backup.len() - SECTOR as usize..];
    ensure!(&last[..8] == b"EFI PART", "no backup GPT header in the disk's last sector");
    ensure!(tables.backup_offset + tables.backup.len() as u64 == size - size % SECTOR, "the backup GPT is not at the disk's end");
    Ok(())
}

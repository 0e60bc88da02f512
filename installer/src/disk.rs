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
use bpi_disk::gpt::{self, ALIGN, ENTRY_SECTORS, SECTOR};
use bpi_support::{progress, Cmd, Steps};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::Source;
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

/// The plan for writing `src` to `t` (already checked by [`target::refusals`]).
pub fn plan(src: &Source, t: &Target) -> Result<Plan> {
    let image_backup = src.size - (1 + ENTRY_SECTORS) * SECTOR;
    ensure!(src.size > ALIGN + (1 + ENTRY_SECTORS) * SECTOR, "the image is too small to hold a GPT and a partition");
    let tables = gpt::relocate(&src.head, t.size - t.size % SECTOR)?;
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
    let rest = tables.backup_offset.saturating_sub(src.size);
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

/// Carries out `plan`, skipping what `state_file` says is done. Returns the
/// bytes written per second during the body write (for the figures).
pub fn apply(plan: &Plan, state_file: &Path, steps: &Steps) -> Result<f64> {
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
    let disk = open_target(&plan.target)?;
    let direct = open_direct(&plan.target);
    let mut image = File::open(&plan.image).with_context(|| format!("opening {}", plan.image.display()))?;
    let mut head = vec![0u8; gpt::HEAD_BYTES as usize];
    image.read_exact(&mut head).with_context(|| format!("reading {}", plan.image.display()))?;
    let tables = gpt::relocate(&head, plan.target.size - plan.target.size % SECTOR)?;
    let mut rate = 0.0;

    for step in &plan.steps {
        if state.done.iter().any(|d| d == step.name()) {
            eprintln!("[install] {}: already done", step.name());
            continue;
        }
        steps.step(step.name(), || -> Result<()> {
            match step {
                Step::WipeTables { backup_offset } => {
                    disk.write_all_at(&vec![0u8; gpt::HEAD_BYTES as usize], 0)?;
                    let tail = plan.target.size - backup_offset;
                    disk.write_all_at(&vec![0u8; tail as usize], *backup_offset)?;
                    disk.sync_all()?;
                }
                Step::WriteBody { from, to } => {
                    rate = write_body(&image, direct.as_ref(), &disk, *from, *to, state_file, &mut state, steps)?;
                }
                Step::VerifyBody { from, to } => {
                    drop_cache(&disk);
                    compare(&image, direct.as_ref(), &disk, *from, *to, steps)?;
                }
                Step::WriteBackupTable { offset, .. } => {
                    ensure!(*offset == tables.backup_offset, "the disk changed size since the plan was made");
                    disk.write_all_at(&tables.backup, tables.backup_offset)?;
                    disk.sync_all()?;
                }
                Step::WritePrimaryTable { .. } => {
                    let mut first = vec![0u8; ALIGN as usize];
                    image.read_exact_at(&mut first, 0)?;
                    first[..tables.primary.len()].copy_from_slice(&tables.primary);
                    disk.write_all_at(&first, 0)?;
                    disk.sync_all()?;
                }
                Step::VerifyTables => {
                    drop_cache(&disk);
                    verify_tables(&disk, &head, plan.target.size, &tables)?;
                }
                Step::RereadPartitions => {
                    if let Err(e) = Cmd::new("blockdev").arg("--rereadpt").arg(&plan.target.path).run() {
                        progress::note(&format!("the kernel did not re-read the partition table ({e}); it will at the next boot"));
                    }
                }
            }
            Ok(())
        })?;
        state.done.push(step.name().to_string());
        save_state(state_file, &state)?;
    }
    let _ = std::fs::remove_file(state_file);
    Ok(rate)
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
    ensure!(guid == want_guid && parts == want_parts, "the primary GPT read back does not list the image's partitions");
    let mut backup = vec![0u8; tables.backup.len()];
    disk.read_exact_at(&mut backup, tables.backup_offset).context("reading the backup GPT back")?;
    ensure!(backup == tables.backup, "the backup GPT read back differs from what was written");
    let last = &backup[backup.len() - SECTOR as usize..];
    ensure!(&last[..8] == b"EFI PART", "no backup GPT header in the disk's last sector");
    ensure!(tables.backup_offset + tables.backup.len() as u64 == size - size % SECTOR, "the backup GPT is not at the disk's end");
    Ok(())
}

//! `bpi-os install --disk`: the plan (pure) and its application.
//!
//! Order matters, so that a kill at any moment leaves a disk that either
//! boots the whole image or does not boot at all, and a re-run finishes:
//! 1. wipe the old partition tables (primary and backup), so an old system
//!    whose data is being overwritten can no longer be booted half-way;
//! 2. write the image's body (everything after the first MiB, up to its own
//!    backup table), syncing as it goes and recording how far it got;
//! 3. read the body back and hash it, with the image's first MiB (kept in
//!    memory and written from there in step 5) and its tail, against the
//!    sha256 the image was checked with: what is on the disk is what was
//!    checked, even if the file changed after the check;
//! 4. write the backup GPT at the disk's end (relocated from the image's end);
//! 5. write the first MiB (protective MBR, primary GPT) last, and check both
//!    tables by reading them back.
//!
//! Completed steps are recorded in a state file; a re-run with the same image
//! and disk skips them (the partial body write resumes where it stopped).

pub mod io;
mod plan;
mod state;
mod store_device;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use bpi_formats::gpt::{self, ALIGN, SECTOR};
use bpi_support::{progress, Cmd, Steps};

use crate::store;
use io::{drop_cache, open_direct, open_target, read_at, write_at, AlignedBuf};
pub use plan::{disk_tables, plan, provision_partition, store_partition, Plan, Step, StoreChoice, PROVISION_TYPE};
use state::save_state;
pub use state::{load_state, state_path, State};
use store_device::{StoreDevice, STORE_WIPE};

/// Body writes are synced and recorded this often.
const CHECKPOINT_BYTES: u64 = 256 << 20;
const CHUNK: usize = 4 << 20;

/// Carries out `plan`, skipping what `state_file` says is done. `image` is
/// the image as opened and hashed by the check (`Source::file`).
pub fn apply(plan: &Plan, image: &File, state_file: &Path, steps: &Steps, passphrase: Option<&str>) -> Result<Applied> {
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
    // The first MiB is read once: hashed in VerifyBody, written in WritePrimaryTable.
    let mut first = vec![0u8; ALIGN as usize];
    image.read_exact_at(&mut first, 0).with_context(|| format!("reading {}", plan.image.display()))?;
    let head = first[..gpt::HEAD_BYTES as usize].to_vec();
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
                    rate = write_body(&Body { image, direct, disk }, (*from, *to), state_file, &mut state, steps)?;
                }
                Step::VerifyBody { from, to } => {
                    let (disk, direct) = open()?;
                    drop_cache(disk);
                    verify_written(&Body { image, direct, disk }, &first, (*from, *to), plan, steps)?;
                }
                Step::WriteBackupTable { offset, .. } => {
                    ensure!(*offset == tables.backup_offset, "the disk changed size since the plan was made");
                    let (disk, _) = open()?;
                    disk.write_all_at(&tables.backup, tables.backup_offset)?;
                    disk.sync_all()?;
                }
                Step::WritePrimaryTable { .. } => {
                    let mut written = first.clone();
                    written[..tables.primary.len()].copy_from_slice(&tables.primary);
                    let (disk, _) = open()?;
                    disk.write_all_at(&written, 0)?;
                    disk.sync_all()?;
                }
                Step::WriteProvision { offset, bytes, .. } => {
                    let (disk, _) = open()?;
                    let mut buf = plan.provision.clone();
                    buf.resize(*bytes as usize, 0);
                    disk.write_all_at(&buf, *offset)?;
                    disk.sync_all()?;
                    drop_cache(disk);
                    let mut back = vec![0u8; buf.len()];
                    disk.read_exact_at(&mut back, *offset)?;
                    ensure!(back == buf, "the provisioning partition did not read back as written");
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
                    let store_steps = store::plan(&opts, store::tpm2(std::time::Duration::ZERO), store::Holds::Nothing, store::running_pcr_public_key())?;
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

/// The image and the target's two handles, for the bulk steps.
struct Body<'a> {
    image: &'a File,
    direct: Option<&'a File>,
    disk: &'a File,
}

/// Writes the body from where the state says it stopped, recording progress.
fn write_body(b: &Body, (from, to): (u64, u64), state_file: &Path, state: &mut State, steps: &Steps) -> Result<f64> {
    let Body { image, direct, disk } = *b;
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

/// Hashes the image as the disk now holds it: `first` (the image's first MiB,
/// which step 5 writes from this very buffer), the body read back from the
/// disk, and the image's tail (its own backup table, which the disk gets
/// relocated), and compares the digest with the one the image was checked with.
fn verify_written(b: &Body, first: &[u8], (from, to): (u64, u64), plan: &Plan, steps: &Steps) -> Result<()> {
    use sha2::{Digest, Sha256};
    let Body { image, direct, disk } = *b;
    ensure!(first.len() as u64 == from, "the body does not start after the first MiB");
    let mut h = Sha256::new();
    h.update(first);
    let mut progress = steps.bytes("verifying", to - from);
    let mut back = AlignedBuf::new(CHUNK);
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        let chunk = back.get(n);
        read_at(direct, disk, chunk, at).context("reading the disk back")?;
        h.update(&chunk[..]);
        at += n as u64;
        progress.add(n as u64);
    }
    progress.finish();
    let mut tail = vec![0u8; (plan.image_size - to) as usize];
    image.read_exact_at(&mut tail, to).context("reading the image's tail")?;
    h.update(&tail);
    let have = hex::encode(h.finalize());
    ensure!(
        have == plan.image_sha256,
        "what is on the disk hashes to {have}, but the image was checked as {}: the image changed while it was written, or the write did not stick (bad medium?)",
        plan.image_sha256
    );
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

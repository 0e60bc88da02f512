//! A ledger store directory: the log, the newest signed checkpoint, the
//! verifier key, and the writer lock. One writer at a time appends; any number
//! of readers (show, verify, proof, export) read the files directly.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, IFlags};

use crate::block::{self, Draft, Hash};
use crate::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use crate::error::{IoContext, LedgerError, Result};
use crate::frame::{self, Tail};
use crate::log::{self, Log, Problem, LOG_FILE};

pub const DEFAULT_DIR: &str = "/bpi/data/immutable/blockchain-state";
pub const DEFAULT_KEY: &str = "/bpi/data/encrypted/ledger/checkpoint.key";
pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const VKEY_FILE: &str = "checkpoint.vkey";
pub const LOCK_FILE: &str = "writer.lock";
/// A copy of the newest signed checkpoint kept beside the signing key, not in
/// the store: on a node the key is in the encrypted store and the log is not,
/// so a log rolled back (or emptied, its checkpoint deleted) no longer matches
/// what the witness says was once checkpointed.
pub const WITNESS_FILE: &str = "checkpoint.witness";

/// Where the witness of the store signed with `key` is kept.
pub fn witness_path(key: &Path) -> PathBuf {
    key.with_file_name(WITNESS_FILE)
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub dir: PathBuf,
    /// The checkpoint signing key; made on first open if missing.
    pub key: PathBuf,
    /// Set the append-only inode attribute on the log (needs CAP_LINUX_IMMUTABLE).
    pub append_only: bool,
    /// The log's name in checkpoints, used only when a new key is made.
    pub origin: Option<String>,
}

impl StoreOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        StoreOptions { key: dir.join("checkpoint.key"), dir, append_only: false, origin: None }
    }
}

/// What opening the store found and did, for the journal.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub blocks: u64,
    /// Set when an interrupted append's torn record was cut off.
    pub cut: Option<String>,
    /// Why the append-only attribute is not set, when it is not.
    pub append_only: Option<String>,
}

/// What one durable append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub height: u64,
    #[serde(with = "hex::serde")]
    pub hash: Hash,
}

pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

fn dir_path(dir: &Path) -> String {
    dir.display().to_string()
}

/// Writes `path` so that a crash leaves either the old or the new content
/// (`bpi_support::fsmode::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    bpi_support::fsmode::write_atomic(path, bytes, mode).ctx(|| format!("writing {}", path.display()))
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    bpi_support::fsmode::sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))
}

fn set_append_only(file: &File, on: bool) -> std::io::Result<()> {
    let mut flags = rustix::fs::ioctl_getflags(file)?;
    flags.set(IFlags::APPEND, on);
    rustix::fs::ioctl_setflags(file, flags)?;
    Ok(())
}

fn is_append_only(file: &File) -> bool {
    rustix::fs::ioctl_getflags(file).is_ok_and(|f| f.contains(IFlags::APPEND))
}

/// Loads the signing key, or makes one (mode 0600, in a 0700 directory).
pub fn load_or_make_key(path: &Path, origin: Option<&str>) -> Result<NoteSigner> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return NoteSigner::parse_skey(&text).map_err(|e| LedgerError::BadData(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LedgerError::io(format!("reading the signing key {}", path.display()), e))
        }
        Err(_) => {}
    }
    let ctx = || format!("making the signing key {}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            bpi_support::fsmode::create_dirs(parent, 0o700).ctx(ctx)?;
        }
    }
    let mut seed = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).ctx(ctx)?;
    let name = origin.map(str::to_string).unwrap_or_else(|| format!("bpi-os/ledger/{}", hostname()));
    let signer = NoteSigner::from_seed(&name, seed)?;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).ctx(ctx)?;
    f.write_all(format!("{}\n", signer.to_skey()).as_bytes()).ctx(ctx)?;
    f.sync_all().ctx(ctx)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(signer)
}

/// Whether some process holds the writer lock of `dir` right now.
pub fn writer_active(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(LOCK_FILE)) else { return false };
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&f, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// Reads the newest checkpoint of `dir` and checks it against the log.
/// `Ok(None)` when the store has none yet.
pub fn check_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
    log: &Log,
    damaged_at: Option<u64>,
) -> Result<Option<Checkpoint>, String> {
    let text = match std::fs::read_to_string(dir.join(CHECKPOINT_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the checkpoint: {e}")),
    };
    check_note(&text, verifier, log, damaged_at).map(Some)
}

/// Checks the witness kept at `path` against the log: the log must still hold
/// every block it says was checkpointed, with the same Merkle root.
/// `Ok(None)` when there is no witness (a store that never had one).
pub fn check_witness(path: &Path, verifier: &NoteVerifier, log: &Log) -> Result<Option<Checkpoint>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the witness {}: {e}", path.display())),
    };
    check_note(&text, verifier, log, None)
        .map(Some)
        .map_err(|why| format!("the store was rolled back: the witness {} disagrees with it: {why}", path.display()))
}

/// A signed checkpoint note, checked against the log.
fn check_note(text: &str, verifier: &NoteVerifier, log: &Log, damaged_at: Option<u64>) -> Result<Checkpoint, String> {
    let cp = verifier.verify(text).map_err(|e| e.to_string())?;
    if let Some(h) = damaged_at.filter(|&h| cp.size >= h) {
        return Err(format!(
            "the signed checkpoint covers {} blocks; it cannot be checked past the damage at height {h}",
            cp.size
        ));
    }
    if cp.size > log.len() {
        return Err(format!(
            "the signed checkpoint covers {} blocks but the log holds {}: blocks {}..={} were removed",
            cp.size,
            log.len(),
            log.len() + 1,
            cp.size
        ));
    }
    if cp.size > 0 && log.index.tree.root(cp.size) != cp.root {
        return Err(format!(
            "the first {} blocks do not match the signed checkpoint's Merkle root: history was rewritten",
            cp.size
        ));
    }
    Ok(cp)
}

/// The writer's view of a store.
pub struct Store {
    log: Log,
    _lock: File,
    signer: NoteSigner,
    opts: StoreOptions,
    failed: Option<String>,
    checkpointed: u64,
    frames: Vec<u8>,
    encoded: Vec<u8>,
}

impl Store {
    /// Opens `opts.dir` for appending: takes the writer lock, checks every
    /// block and the newest checkpoint, and cuts (and reports) a torn tail.
    pub fn open(opts: StoreOptions) -> Result<(Store, OpenReport)> {
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let lock = acquire_lock(dir)?;
        let signer = load_or_make_key(&opts.key, opts.origin.as_deref())?;
        let vkey = format!("{}\n", signer.verifier().to_vkey());
        if std::fs::read_to_string(dir.join(VKEY_FILE)).ok().as_deref() != Some(vkey.as_str()) {
            write_atomic(&dir.join(VKEY_FILE), vkey.as_bytes(), 0o644)?;
        }

        let path = dir.join(LOG_FILE);
        let new_log = !path.exists();
        let loaded = log::load_path(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        if new_log {
            // The first acknowledged append must not vanish with its directory entry.
            sync_dir(dir)?;
        }
        if let Some(p) = loaded.problem {
            return Err(damaged(dir, p));
        }
        let log = Log { path: path.clone(), file, index: loaded.index };
        let checkpoint = check_checkpoint(dir, &signer.verifier(), &log, None).map_err(|what| LedgerError::Damaged {
            path: dir_path(dir),
            height: log.len() + 1,
            what,
        })?;
        check_witness(&witness_path(&opts.key), &signer.verifier(), &log).map_err(|what| LedgerError::Damaged {
            path: dir_path(dir),
            height: log.len() + 1,
            what,
        })?;

        let mut report = OpenReport { blocks: log.len(), ..Default::default() };
        if let Tail::Torn { offset, bytes, why } = loaded.tail {
            let was = is_append_only(&log.file);
            if was {
                set_append_only(&log.file, false).ctx(|| format!("clearing append-only on {}", path.display()))?;
            }
            log.file.set_len(offset).ctx(|| format!("cutting the torn tail of {}", path.display()))?;
            log.file.sync_all().ctx(|| format!("syncing {}", path.display()))?;
            if was {
                set_append_only(&log.file, true).ctx(|| format!("setting append-only on {}", path.display()))?;
            }
            report.cut = Some(format!(
                "cut {bytes} bytes of an interrupted append after block {} ({why}); no acknowledged block was in them",
                log.len()
            ));
        }
        if opts.append_only {
            if let Err(e) = set_append_only(&log.file, true) {
                report.append_only = Some(format!("the append-only attribute could not be set on {}: {e}", path.display()));
            }
        }
        let checkpointed = checkpoint.map_or(0, |c| c.size);
        let store = Store {
            log,
            _lock: lock,
            signer,
            opts,
            failed: None,
            checkpointed,
            frames: Vec::new(),
            encoded: Vec::new(),
        };
        Ok((store, report))
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Where this store's witness is kept (beside its signing key).
    pub fn witness(&self) -> PathBuf {
        witness_path(&self.opts.key)
    }

    /// Appends `drafts` in order with one write and one fdatasync. Each draft
    /// gets its own result: a draft that breaks a limit is refused alone; an
    /// I/O failure fails the whole batch and stops the writer (after a failed
    /// fsync the file's state is unknown until it is read again).
    pub fn append_batch(&mut self, drafts: &[Draft]) -> Vec<Result<Receipt>> {
        if let Some(why) = &self.failed {
            return drafts.iter().map(|_| Err(LedgerError::Poisoned(why.clone()))).collect();
        }
        let before = (self.log.len(), self.log.index.end, self.log.index.last_hash);
        let mut out: Vec<Result<Receipt>> = Vec::with_capacity(drafts.len());
        self.frames.clear();
        let mut pending = Vec::new();
        for d in drafts {
            if let Err(e) = d.check() {
                out.push(Err(e));
                continue;
            }
            // The index already holds this batch's earlier drafts.
            let height = self.log.len() + 1;
            let prev = self.log.index.last_hash;
            self.encoded.clear();
            block::encode(height, prev.as_ref(), d, &mut self.encoded);
            let hash = block::block_hash(&self.encoded);
            self.encoded.extend_from_slice(&hash);
            let offset = self.log.index.end + self.frames.len() as u64;
            frame::push(&self.encoded, &mut self.frames);
            let receipt = Receipt { height, hash };
            pending.push(receipt);
            // Index now, undo below if the write fails.
            let frame_len = (frame::HEADER + self.encoded.len()) as u64;
            self.log.index.push(offset, frame_len, hash, d.timestamp, &d.category);
            out.push(Ok(receipt));
        }
        if pending.is_empty() {
            return out;
        }
        let written = (&self.log.file).write_all(&self.frames).and_then(|()| self.log.file.sync_data());
        if let Err(e) = written {
            let why = format!("writing {}: {e}", self.log.path.display());
            self.log.index.truncate(before.0, before.1, before.2);
            self.failed = Some(why.clone());
            return out
                .into_iter()
                .map(|r| r.and_then(|_| Err(LedgerError::Poisoned(why.clone()))))
                .collect();
        }
        out
    }

    /// Signs a checkpoint of the current size and makes it the newest, if the
    /// log grew since the last one. Returns the newest checkpoint's text.
    pub fn checkpoint(&mut self) -> Result<String> {
        let path = self.opts.dir.join(CHECKPOINT_FILE);
        if self.checkpointed != self.log.len() || !path.exists() {
            let cp = Checkpoint { origin: self.signer.name.clone(), size: self.log.len(), root: self.log.index.root() };
            let note = self.signer.sign(&cp);
            write_atomic(&path, note.as_bytes(), 0o644)?;
            write_atomic(&witness_path(&self.opts.key), note.as_bytes(), 0o600)?;
            self.checkpointed = cp.size;
        }
        std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))
    }

    pub fn checkpointed(&self) -> u64 {
        self.checkpointed
    }
}

fn damaged(dir: &Path, p: Problem) -> LedgerError {
    LedgerError::Damaged { path: dir_path(dir), height: p.height, what: p.what }
}

fn acquire_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = match holder.trim() {
            "" => "another process".to_string(),
            pid => format!("pid {pid}"),
        };
        return Err(LedgerError::Busy { path: dir_path(dir), holder });
    }
    f.set_len(0).ctx(|| format!("writing {}", path.display()))?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes()).ctx(|| format!("writing {}", path.display()))?;
    Ok(f)
}

/// A read-only view for queries: every good block, and the first problem if
/// there is one. A torn tail is a problem only when no writer is appending.
pub fn open_read(dir: &Path) -> Result<(Log, Option<Problem>)> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Err(LedgerError::NotFound(format!(
            "no ledger at {} (no {LOG_FILE}); pass --store DIR to name another",
            dir.display()
        )));
    }
    let loaded = log::load_path(&path)?;
    let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
    let mut problem = loaded.problem;
    if problem.is_none() {
        if let Tail::Torn { offset, bytes, why } = loaded.tail {
            if !writer_active(dir) {
                problem = Some(Problem {
                    height: loaded.index.len() + 1,
                    offset,
                    what: format!("{bytes} bytes of an incomplete record ({why}); the writer cuts them when it next opens the store"),
                });
            }
        }
    }
    Ok((Log { path, file, index: loaded.index }, problem))
}

/// The verifier key of a store: `vkey` if given, else the store's own file.
pub fn load_verifier(dir: &Path, vkey: Option<&Path>) -> Result<NoteVerifier> {
    let path = vkey.map(Path::to_path_buf).unwrap_or_else(|| dir.join(VKEY_FILE));
    let text = std::fs::read_to_string(&path).ctx(|| format!("reading the verifier key {}", path.display()))?;
    NoteVerifier::parse_vkey(&text)
}

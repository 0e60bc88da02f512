//! Reading a ledger log: scanning its frames, checking every block's hash and
//! chain link, and building the in-memory index (offsets, Merkle tree, and the
//! per-block timestamp and category that queries need) without keeping blocks.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::block::{self, Block, Hash};
use crate::error::{IoContext, LedgerError, Result};
use crate::frame::{self, Tail};
use crate::merkle::{self, Tree};

/// The log file inside a store directory.
pub const LOG_FILE: &str = "blocks.log";

/// What the ledger knows of each block without reading it again.
#[derive(Default, Clone)]
pub struct Index {
    pub offsets: Vec<u64>,
    pub timestamps: Vec<u64>,
    pub categories: Vec<u16>,
    pub category_names: Vec<String>,
    pub tree: Tree,
    pub last_hash: Option<Hash>,
    /// Bytes of the log covered by good frames.
    pub end: u64,
}

impl Index {
    pub fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn category_id(&mut self, name: &str) -> u16 {
        match self.category_names.iter().position(|c| c == name) {
            Some(i) => i as u16,
            None => {
                self.category_names.push(name.to_string());
                (self.category_names.len() - 1) as u16
            }
        }
    }

    pub fn push(&mut self, offset: u64, frame_len: u64, block_hash: Hash, timestamp: u64, category: &str) {
        let id = self.category_id(category);
        self.offsets.push(offset);
        self.timestamps.push(timestamp);
        self.categories.push(id);
        self.tree.push(merkle::leaf_hash(&block_hash));
        self.last_hash = Some(block_hash);
        self.end = offset + frame_len;
    }

    /// Forgets blocks after `n` (a batch that could not be made durable).
    pub fn truncate(&mut self, n: u64, end: u64, last_hash: Option<Hash>) {
        self.offsets.truncate(n as usize);
        self.timestamps.truncate(n as usize);
        self.categories.truncate(n as usize);
        self.tree.truncate(n);
        self.last_hash = last_hash;
        self.end = end;
    }

    pub fn root(&self) -> Hash {
        self.tree.root(self.len())
    }
}

/// The first block that is wrong, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub height: u64,
    pub offset: u64,
    pub what: String,
}

/// A scanned log: the index of every good block before the first problem.
pub struct Loaded {
    pub index: Index,
    pub tail: Tail,
    pub problem: Option<Problem>,
}

/// What one worker found in its run of frames: the first problem (as an
/// index into the run), and the hashes at its edges for the joins.
struct Run {
    problem: Option<(usize, String)>,
    first_prev: Option<Hash>,
    last_hash: Option<Hash>,
    names: Vec<String>,
}

/// Checks frames `first..` of the log (height = index + 1) and fills the
/// per-block slices; chain links are checked inside the run, the joins between
/// runs by the caller.
fn check_run(
    buf: &[u8],
    frames: &[(u64, std::ops::Range<usize>)],
    first: usize,
    leaves: &mut [Hash],
    timestamps: &mut [u64],
    categories: &mut [u16],
) -> Run {
    let mut run = Run { problem: None, first_prev: None, last_hash: None, names: Vec::new() };
    for (i, (_, range)) in frames.iter().enumerate() {
        let expect = (first + i) as u64 + 1;
        let payload = &buf[range.clone()];
        let (content, stored) = payload.split_at(payload.len() - 32);
        let stored: Hash = stored.try_into().expect("32 bytes");
        let raw = match block::walk(content) {
            Ok(r) => r,
            Err(why) => {
                run.problem = Some((i, format!("the record does not decode: {why}")));
                break;
            }
        };
        if raw.height != expect {
            run.problem = Some((
                i,
                if raw.height > expect {
                    format!("block {expect} is missing: the record here is block {}", raw.height)
                } else {
                    format!("the record here is block {}, out of order", raw.height)
                },
            ));
            break;
        }
        if i == 0 {
            run.first_prev = raw.prev_hash;
        } else if raw.prev_hash != run.last_hash {
            run.problem = Some((i, "prev_hash does not match the hash of the block before it".into()));
            break;
        }
        if block::block_hash(content) != stored {
            run.problem = Some((i, "the block's content does not match its hash".into()));
            break;
        }
        let id = match run.names.iter().position(|c| c == raw.category) {
            Some(id) => id,
            None => {
                run.names.push(raw.category.to_string());
                run.names.len() - 1
            }
        };
        categories[i] = id as u16;
        timestamps[i] = raw.timestamp;
        leaves[i] = merkle::leaf_hash(&stored);
        run.last_hash = Some(stored);
    }
    run
}

/// How much of the log is read and checked at a time: the loader's memory
/// is this plus the index, whatever the file's size (a log is never read
/// whole: a sparse 1 TB file or a FIFO must not take the machine with it).
pub const WINDOW: usize = 64 << 20;

/// The index being built, window by window.
#[derive(Default)]
struct Building {
    index: Index,
    leaves: Vec<Hash>,
}

/// Scans and checks a log held in memory (tests; one window).
pub fn load(buf: &[u8]) -> Loaded {
    let mut b = Building::default();
    let (tail, problem) = load_window(buf, 0, &mut b, runs_for(buf.len()));
    finish(b, tail, problem)
}

/// Scans and checks the log at `path` a window at a time; an absent file is
/// an empty log. Only regular files are read.
pub fn load_path(path: &Path) -> Result<Loaded> {
    load_path_in(path, WINDOW)
}

fn load_path_in(path: &Path, window_size: usize) -> Result<Loaded> {
    let ctx = || format!("reading {}", path.display());
    let file = match bpi_support::fsmode::open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(finish(Building::default(), Tail::Clean, None)),
        Err(e) => return Err(LedgerError::io(ctx(), e)),
    };
    let len = file.metadata().ctx(ctx)?.len();
    let mut buf = vec![0u8; window_size.min(len as usize)];
    let mut b = Building::default();
    let mut at = 0u64;
    loop {
        let n = ((len - at) as usize).min(window_size);
        let window = &mut buf[..n];
        file.read_exact_at(window, at).ctx(ctx)?;
        let (tail, problem) = load_window(window, at, &mut b, runs_for(n));
        let more = at + (n as u64) < len;
        match tail {
            _ if problem.is_some() || !more => return Ok(finish(b, tail, problem)),
            // A record cut by the window's end: read again from its start. A
            // window that holds no whole record (records are far smaller) is
            // zeros or garbage, not a torn append.
            Tail::Torn { offset, .. } if offset > at => at = offset,
            Tail::Torn { offset, .. } => {
                let what = format!("{window_size} bytes without a record where records should be (zeros or garbage past what a torn append leaves)");
                let problem = Problem { height: b.index.len() + 1, offset, what: what.clone() };
                return Ok(finish(b, Tail::Damaged { offset, why: what }, Some(problem)));
            }
            Tail::Clean => at += n as u64,
            Tail::Damaged { .. } => unreachable!("a damaged tail is a problem"),
        }
    }
}

fn runs_for(bytes: usize) -> usize {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    workers.min((bytes / 256).div_ceil(4096)).max(1)
}

fn finish(b: Building, tail: Tail, problem: Option<Problem>) -> Loaded {
    let mut index = b.index;
    index.tree = Tree::from_leaves(b.leaves);
    Loaded { index, tail, problem }
}

/// Checks the frames of `buf` (the log's bytes from offset `base`) in `runs`
/// parallel runs and appends the good blocks to `b`. Hashing dominates, so
/// each run checks its frames in place. Returns the window's tail (offsets
/// in the file) and the first problem.
fn load_window(buf: &[u8], base: u64, b: &mut Building, runs: usize) -> (Tail, Option<Problem>) {
    let scan = frame::scan(buf);
    let n = scan.frames.len();
    let chunk = n.div_ceil(runs).max(1);
    let first = b.index.len() as usize;
    let mut leaves = vec![[0u8; 32]; n];
    let mut timestamps = vec![0u64; n];
    let mut categories = vec![0u16; n];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = scan
            .frames
            .chunks(chunk)
            .zip(leaves.chunks_mut(chunk))
            .zip(timestamps.chunks_mut(chunk))
            .zip(categories.chunks_mut(chunk))
            .enumerate()
            .map(|(k, (((f, l), t), c))| s.spawn(move || check_run(buf, f, first + k * chunk, l, t, c)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("ledger check worker panicked")).collect()
    });

    // Join the runs in order (the first to the blocks before this window): the
    // first problem wins; runs after it are dropped.
    let index = &mut b.index;
    let mut good = 0usize;
    let mut problem = None;
    let mut last: Option<Hash> = index.last_hash;
    for (k, run) in runs.into_iter().enumerate() {
        let start = k * chunk;
        let len = (n - start).min(chunk);
        let join_ok = run.problem.as_ref().is_some_and(|(i, _)| *i == 0) || run.first_prev == last;
        let (ok_len, bad) = if !join_ok {
            (0, Some("prev_hash does not match the hash of the block before it".to_string()))
        } else {
            match run.problem {
                Some((i, why)) => (i, Some(why)),
                None => (len, None),
            }
        };
        let ids: Vec<u16> = run.names.iter().map(|name| index.category_id(name)).collect();
        for c in &mut categories[start..start + ok_len] {
            *c = ids[*c as usize];
        }
        good = start + ok_len;
        if ok_len > 0 {
            last = run.last_hash;
        }
        if let Some(what) = bad {
            let offset = base + scan.frames[good].0;
            problem = Some(Problem { height: (first + good) as u64 + 1, offset, what });
            break;
        }
    }
    b.leaves.extend_from_slice(&leaves[..good]);
    index.timestamps.extend_from_slice(&timestamps[..good]);
    index.categories.extend_from_slice(&categories[..good]);
    index.offsets.extend(scan.frames[..good].iter().map(|(o, _)| base + *o));
    if let Some((_, r)) = scan.frames[..good].last() {
        index.end = base + r.end as u64;
    }
    index.last_hash = last;
    let tail = match scan.tail {
        Tail::Clean => Tail::Clean,
        Tail::Torn { offset, bytes, why } => Tail::Torn { offset: base + offset, bytes, why },
        Tail::Damaged { offset, why } => Tail::Damaged { offset: base + offset, why },
    };
    if problem.is_none() {
        if let Tail::Damaged { offset, why } = &tail {
            problem = Some(Problem { height: index.len() + 1, offset: *offset, what: why.clone() });
        }
    }
    (tail, problem)
}

/// Read access to a log on disk through its index.
pub struct Log {
    pub path: PathBuf,
    pub file: File,
    pub index: Index,
}

impl Log {
    pub fn len(&self) -> u64 {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Block `height` (1-based), read from disk.
    pub fn block(&self, height: u64) -> Result<Block> {
        if height == 0 || height > self.len() {
            return Err(LedgerError::NotFound(format!("no block {height}; the ledger has {} blocks", self.len())));
        }
        let offset = self.index.offsets[(height - 1) as usize];
        let mut header = [0u8; frame::HEADER];
        self.file.read_exact_at(&mut header, offset).ctx(|| format!("reading {}", self.path.display()))?;
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0u8; len];
        self.file
            .read_exact_at(&mut payload, offset + frame::HEADER as u64)
            .ctx(|| format!("reading {}", self.path.display()))?;
        decode_payload(&payload).map_err(|what| LedgerError::Damaged {
            path: self.path.display().to_string(),
            height,
            what,
        })
    }

    /// Heights of blocks in `category`, oldest first.
    pub fn heights_in_category(&self, category: &str) -> Vec<u64> {
        let Some(id) = self.index.category_names.iter().position(|c| c == category) else { return Vec::new() };
        (0..self.len()).filter(|&i| self.index.categories[i as usize] == id as u16).map(|i| i + 1).collect()
    }

    /// Heights of blocks stamped within `from..=to` (seconds since the epoch).
    pub fn heights_in_time(&self, from: u64, to: u64) -> Vec<u64> {
        (0..self.len()).filter(|&i| (from..=to).contains(&self.index.timestamps[i as usize])).map(|i| i + 1).collect()
    }

    pub fn stats(&self) -> Stats {
        let mut per_category = BTreeMap::new();
        for &c in &self.index.categories {
            *per_category.entry(self.index.category_names[c as usize].clone()).or_insert(0u64) += 1;
        }
        let ts = &self.index.timestamps;
        Stats {
            count: self.len(),
            bytes: self.index.end,
            first_height: (!ts.is_empty()).then_some(1),
            last_height: (!ts.is_empty()).then_some(self.len()),
            first_timestamp: ts.first().copied(),
            last_timestamp: ts.last().copied(),
            per_category,
            root: hex::encode(self.index.root()),
        }
    }
}

pub fn decode_payload(payload: &[u8]) -> Result<Block, String> {
    if payload.len() < 32 {
        return Err("record too short".into());
    }
    let (content, hash) = payload.split_at(payload.len() - 32);
    let (height, prev_hash, draft) = block::decode(content)?;
    Ok(Block { height, hash: hash.try_into().expect("32 bytes"), prev_hash, draft })
}

#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub count: u64,
    pub bytes: u64,
    pub first_height: Option<u64>,
    pub last_height: Option<u64>,
    pub first_timestamp: Option<u64>,
    pub last_timestamp: Option<u64>,
    pub per_category: BTreeMap<String, u64>,
    pub root: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with_runs(buf: &[u8], runs: usize) -> Loaded {
        let mut b = Building::default();
        let (tail, problem) = load_window(buf, 0, &mut b, runs);
        finish(b, tail, problem)
    }
    use crate::store::{Store, StoreOptions};
    use crate::Draft;

    fn log_bytes(n: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(StoreOptions::new(dir.path())).unwrap();
        let cats = ["settings", "policy", "settings", "user"];
        let drafts: Vec<Draft> = (0..n)
            .map(|i| {
                let c = cats[(i % 4) as usize];
                Draft::new("p", c, "set", "root", format!(r#"{{"key":"k{i}","value":{i}}}"#))
            })
            .collect();
        for r in s.append_batch(&drafts) {
            r.unwrap();
        }
        std::fs::read(dir.path().join(LOG_FILE)).unwrap()
    }

    type Summary = (u64, Option<(u64, String)>, Hash, Vec<String>, Vec<u64>);

    fn summary(l: &Loaded) -> Summary {
        let cats = (0..l.index.len() as usize)
            .map(|i| l.index.category_names[l.index.categories[i] as usize].clone())
            .collect();
        (
            l.index.len(),
            l.problem.as_ref().map(|p| (p.height, p.what.clone())),
            l.index.root(),
            cats,
            l.index.timestamps.clone(),
        )
    }

    #[test]
    fn checking_in_runs_finds_exactly_what_one_pass_finds() {
        let good = log_bytes(23);
        let frames: Vec<_> = frame::scan(&good).frames;
        let mut variants = vec![good.clone()];
        for (k, (off, r)) in frames.iter().enumerate() {
            let mut flipped = good.clone();
            flipped[r.start + 40] ^= 1;
            variants.push(flipped);
            let mut dropped = good[..*off as usize].to_vec();
            dropped.extend_from_slice(&good[r.end..]);
            variants.push(dropped);
            if let Some((_, r2)) = frames.get(k + 1) {
                let mut swapped = good[..*off as usize].to_vec();
                swapped.extend_from_slice(&good[r.end..r2.end]);
                swapped.extend_from_slice(&good[*off as usize..r.end]);
                swapped.extend_from_slice(&good[r2.end..]);
                variants.push(swapped);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        for (v, buf) in variants.iter().enumerate() {
            let one = summary(&load_with_runs(buf, 1));
            for runs in 2..=7 {
                assert_eq!(summary(&load_with_runs(buf, runs)), one, "variant {v}, {runs} runs");
            }
            // Read from a file a window at a time, windows cutting records
            // anywhere: the same blocks, the same first problem.
            std::fs::write(&file, buf).unwrap();
            for window in [600, 1000, 4096, 1 << 20] {
                let streamed = load_path_in(&file, window).unwrap();
                assert_eq!(summary(&streamed), one, "variant {v}, window {window}");
            }
            if v == 0 {
                assert_eq!(one.0, 23);
                assert!(one.1.is_none());
            } else if v != variants.len() - 1 {
                // (The last variant drops the last block: only a checkpoint sees that.)
                assert!(one.1.is_some(), "variant {v} passed");
            }
        }
    }
}

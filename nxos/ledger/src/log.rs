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

/// The fields of one frame that the chain check needs.
struct Meta {
    height: u64,
    prev: Option<Hash>,
    stored: Hash,
    computed: Hash,
    timestamp: u64,
    category_at: std::ops::Range<usize>,
}

fn meta(payload: &[u8], base: usize) -> Result<Meta, String> {
    let (content, stored) = payload.split_at(payload.len() - 32);
    let (height, prev, d) = block::decode(content)?;
    // Where the category sits inside `payload`, so it can be interned later
    // without keeping a String per block.
    let needle = d.category.as_bytes();
    let at = find_field(content, needle).ok_or("category field not where the encoding puts it")?;
    Ok(Meta {
        height,
        prev,
        stored: stored.try_into().expect("32 bytes"),
        computed: block::block_hash(content),
        timestamp: d.timestamp,
        category_at: base + at..base + at + needle.len(),
    })
}

fn find_field(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // The category is the third length-prefixed field after tag, height and time.
    let mut at = block::TAG.len() + 16;
    for _ in 0..2 {
        let n = u32::from_be_bytes(hay.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4 + n;
    }
    let n = u32::from_be_bytes(hay.get(at..at + 4)?.try_into().ok()?) as usize;
    (hay.get(at + 4..at + 4 + n)? == needle).then_some(at + 4)
}

/// Scans and checks a whole log held in memory.
pub fn load(buf: &[u8]) -> Loaded {
    let scan = frame::scan(buf);
    // Hashing dominates; split it over the cores, then check the chain in order.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = scan.frames.len().div_ceil(workers).max(1);
    let metas: Vec<Result<Meta, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = scan
            .frames
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(_, r)| meta(&buf[r.clone()], r.start)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("hash worker panicked")).collect()
    });

    let mut index = Index::default();
    let mut problem = None;
    for (i, (m, (offset, range))) in metas.into_iter().zip(&scan.frames).enumerate() {
        let expect = i as u64 + 1;
        let bad = |what: String| Some(Problem { height: expect, offset: *offset, what });
        let m = match m {
            Ok(m) => m,
            Err(why) => {
                problem = bad(format!("the record does not decode: {why}"));
                break;
            }
        };
        if m.height != expect {
            problem = bad(if m.height > expect {
                format!("block {expect} is missing: the record here is block {}", m.height)
            } else {
                format!("the record here is block {}, out of order", m.height)
            });
            break;
        }
        if m.prev != index.last_hash {
            problem = bad("prev_hash does not match the hash of the block before it".into());
            break;
        }
        if m.computed != m.stored {
            problem = bad("the block's content does not match its hash".into());
            break;
        }
        let category = std::str::from_utf8(&buf[m.category_at]).unwrap_or("?");
        index.push(*offset, (frame::HEADER + range.len()) as u64, m.stored, m.timestamp, category);
    }
    if problem.is_none() {
        let height = index.len() + 1;
        match &scan.tail {
            Tail::Clean => {}
            Tail::Damaged { offset, why } => {
                problem = Some(Problem { height, offset: *offset, what: why.clone() });
            }
            Tail::Torn { .. } => {}
        }
    }
    Loaded { index, tail: scan.tail, problem }
}

/// Read access to a log on disk through its index.
pub struct Log {
    pub path: PathBuf,
    pub file: File,
    pub index: Index,
}

impl Log {
    pub fn read_all(path: &Path) -> Result<Vec<u8>> {
        match std::fs::read(path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(LedgerError::io(format!("reading {}", path.display()), e)),
        }
    }

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

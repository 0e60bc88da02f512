//! Inclusion and consistency proofs over a store, in a JSON form that carries
//! everything a verifier needs besides the checkpoint.

use serde::{Deserialize, Serialize};

use crate::block::Hash;
use crate::error::{LedgerError, Result};
use crate::log::Log;
use crate::merkle;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inclusion {
    pub height: u64,
    pub tree_size: u64,
    /// The block's hash; the Merkle leaf is SHA-256(0x00 || block hash).
    #[serde(with = "hex::serde")]
    pub block_hash: Hash,
    #[serde(with = "hex::serde")]
    pub root: Hash,
    pub path: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Consistency {
    pub old_size: u64,
    pub new_size: u64,
    #[serde(with = "hex::serde")]
    pub old_root: Hash,
    #[serde(with = "hex::serde")]
    pub new_root: Hash,
    pub path: Vec<String>,
}

fn decode_path(path: &[String]) -> Option<Vec<Hash>> {
    path.iter().map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok())).collect()
}

fn size_or_len(log: &Log, size: Option<u64>) -> Result<u64> {
    let size = size.unwrap_or(log.len());
    if size == 0 || size > log.len() {
        return Err(LedgerError::NotFound(format!("tree size {size} is not in 1..={}", log.len())));
    }
    Ok(size)
}

pub fn inclusion(log: &Log, height: u64, size: Option<u64>) -> Result<Inclusion> {
    let size = size_or_len(log, size)?;
    if height == 0 || height > size {
        return Err(LedgerError::NotFound(format!("block {height} is not in a tree of {size}")));
    }
    let path = log.index.tree.inclusion_proof(height - 1, size).expect("bounds checked");
    let block_hash = log.block(height)?.hash;
    Ok(Inclusion {
        height,
        tree_size: size,
        block_hash,
        root: log.index.tree.root(size),
        path: path.iter().map(hex::encode).collect(),
    })
}

pub fn consistency(log: &Log, old: u64, new: Option<u64>) -> Result<Consistency> {
    let new = size_or_len(log, new)?;
    if old == 0 || old > new {
        return Err(LedgerError::NotFound(format!("old size {old} is not in 1..={new}")));
    }
    let path = log.index.tree.consistency_proof(old, new).expect("bounds checked");
    Ok(Consistency {
        old_size: old,
        new_size: new,
        old_root: log.index.tree.root(old),
        new_root: log.index.tree.root(new),
        path: path.iter().map(hex::encode).collect(),
    })
}

impl Inclusion {
    pub fn verify(&self) -> bool {
        let Some(path) = decode_path(&self.path) else { return false };
        let leaf = merkle::leaf_hash(&self.block_hash);
        merkle::verify_inclusion(self.height - 1, self.tree_size, &leaf, &path, &self.root)
    }
}

impl Consistency {
    pub fn verify(&self) -> bool {
        let Some(path) = decode_path(&self.path) else { return false };
        merkle::verify_consistency(self.old_size, self.new_size, &self.old_root, &self.new_root, &path)
    }
}

//! What org.bpi.os.Ledger1 returns, as D-Bus structs. D-Bus has no "none":
//! where the JSON forms have null, these have 0 or "" (heights and
//! timestamps start at 1), and an optional struct is an array of at most one.
//! A block's `data` stays the JSON text it was recorded as: it is the
//! operation's own JSON object (canonical, docs/ledger.md), not a reply shape.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

use crate::{
    block::{Block, Draft},
    log::Stats,
    proof::{Consistency, Inclusion},
    verify::Report,
};

/// A recorded block: what was asked (`draft`, whose `data` is the
/// operation's JSON object as recorded) and what the ledger added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct BlockView {
    pub height: u64,
    pub hash: String,
    /// "" for the first block.
    pub prev_hash: String,
    pub draft: Draft,
}

impl BlockView {
    /// About what the block costs in a D-Bus message (strings with their
    /// length words and terminators, numbers, padding): an upper bound.
    pub fn wire_size(&self) -> usize {
        let d = &self.draft;
        let strings = [&self.hash, &self.prev_hash, &d.producer, &d.category, &d.action, &d.user, &d.hostname, &d.data];
        64 + strings.iter().map(|s| s.len() + 8).sum::<usize>()
    }
}

impl From<&Block> for BlockView {
    fn from(b: &Block) -> Self {
        BlockView { height: b.height, hash: hex::encode(b.hash), prev_hash: b.prev_hash.map(hex::encode).unwrap_or_default(), draft: b.draft.clone() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct StatsView {
    pub count: u64,
    pub bytes: u64,
    /// 0 when the ledger is empty (so are the three below).
    pub first_height: u64,
    pub last_height: u64,
    pub first_timestamp: u64,
    pub last_timestamp: u64,
    pub per_category: std::collections::BTreeMap<String, u64>,
    pub root: String,
}

impl From<Stats> for StatsView {
    fn from(s: Stats) -> Self {
        StatsView {
            count: s.count,
            bytes: s.bytes,
            first_height: s.first_height.unwrap_or(0),
            last_height: s.last_height.unwrap_or(0),
            first_timestamp: s.first_timestamp.unwrap_or(0),
            last_timestamp: s.last_timestamp.unwrap_or(0),
            per_category: s.per_category,
            root: s.root,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct BadBlockView {
    pub height: u64,
    pub offset: u64,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct CheckpointView {
    pub present: bool,
    pub ok: bool,
    /// 0 with no checkpoint; "" where there is nothing to say.
    pub size: u64,
    pub verifier: String,
    pub problem: String,
}

/// `verify --json`'s report on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct ReportView {
    pub ok: bool,
    pub store: String,
    pub blocks: u64,
    pub root: String,
    /// The first bad block, if any (at most one).
    pub first_bad: Vec<BadBlockView>,
    pub checkpoint: CheckpointView,
    pub seconds: f64,
}

impl From<Report> for ReportView {
    fn from(r: Report) -> Self {
        let c = r.checkpoint;
        ReportView {
            ok: r.ok,
            store: r.store,
            blocks: r.blocks,
            root: r.root,
            first_bad: r.first_bad.into_iter().map(|b| BadBlockView { height: b.height, offset: b.offset, what: b.what }).collect(),
            checkpoint: CheckpointView {
                present: c.present,
                ok: c.ok,
                size: c.size.unwrap_or(0),
                verifier: c.verifier.unwrap_or_default(),
                problem: c.problem.unwrap_or_default(),
            },
            seconds: r.seconds,
        }
    }
}

/// An RFC 9162 inclusion proof; hashes in hex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct InclusionView {
    pub height: u64,
    pub tree_size: u64,
    pub block_hash: String,
    pub root: String,
    pub path: Vec<String>,
}

impl From<Inclusion> for InclusionView {
    fn from(p: Inclusion) -> Self {
        InclusionView { height: p.height, tree_size: p.tree_size, block_hash: hex::encode(p.block_hash), root: hex::encode(p.root), path: p.path }
    }
}

/// An RFC 9162 consistency proof; hashes in hex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct ConsistencyView {
    pub old_size: u64,
    pub new_size: u64,
    pub old_root: String,
    pub new_root: String,
    pub path: Vec<String>,
}

impl From<Consistency> for ConsistencyView {
    fn from(p: Consistency) -> Self {
        ConsistencyView { old_size: p.old_size, new_size: p.new_size, old_root: hex::encode(p.old_root), new_root: hex::encode(p.new_root), path: p.path }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ledger.md names each reply's D-Bus signature: they must be these.
    #[test]
    fn the_documented_signatures_are_the_real_ones() {
        let doc = include_str!("../../../docs/ledger.md");
        for sig in [
            format!("a{}", BlockView::SIGNATURE),
            ReportView::SIGNATURE.to_string(),
            StatsView::SIGNATURE.to_string(),
            InclusionView::SIGNATURE.to_string(),
            ConsistencyView::SIGNATURE.to_string(),
        ] {
            assert!(doc.contains(&format!("`{sig}`")), "docs/ledger.md does not give {sig}");
        }
    }
}

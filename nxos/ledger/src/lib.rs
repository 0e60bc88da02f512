//! The NXOS ledger (seed 000, sections 2.2, 4.2 and 9.1): a hash chain of
//! blocks in an append-only, checksummed log, a Merkle tree over it (RFC 9162)
//! with signed checkpoints (C2SP tlog-checkpoint), plugins that decide what
//! may be recorded, and a D-Bus service. Format and guarantees: docs/ledger.md.

pub mod block;
pub mod checkpoint;
pub mod commit;
pub mod error;
pub mod frame;
pub mod log;
pub mod merkle;
pub mod plugins;
pub mod proof;
pub mod service;
pub mod store;
pub mod time;
pub mod verify;
pub mod wire;

pub use block::{Block, Draft};
pub use commit::Ledger;
pub use error::{LedgerError, Result};
pub use store::{Receipt, Store, StoreOptions};

/// Seconds since the Unix epoch, as blocks carry them.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Draft {
    /// A draft stamped now, on this host, for this process and `user`.
    pub fn new(producer: &str, category: &str, action: &str, user: &str, data: String) -> Draft {
        Draft {
            timestamp: now(),
            producer: producer.to_string(),
            category: category.to_string(),
            action: action.to_string(),
            user: user.to_string(),
            hostname: store::hostname(),
            pid: std::process::id(),
            data,
        }
    }
}

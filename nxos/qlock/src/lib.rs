//! QLock (seed 003, "QLock Session Steering"): node identities and hybrid
//! post-quantum sessions between nodes, accepted or ended by trust.
//! docs/qlock.md names each construction.

pub mod identity;
pub mod kex;
pub mod handshake;
pub mod schedule;
pub mod node;
pub mod service;
pub mod session;

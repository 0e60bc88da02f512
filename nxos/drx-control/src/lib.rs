//! NXOS DRX control plane.
//!
//! - `model`: the Meta-RIB (nodes, links, settings) read from TOML, checked
//!   with errors that name the file, line and key.
//! - `trust`: seed 003's multi-factor trust score.
//! - `graph`: the Meta-RIB as arrays for path search, hop costs from seed
//!   003's route score.
//! - `path`: constrained best path and k backups, and why none exists.
//! - `policy`: intent policies compiled into constraints.
//! - `engine`: the live state: changes, recomputation, the routing table and
//!   the data plane's maps.
//! - `service`: the daemon on D-Bus (org.bpi.os.Control1); `wire`: the D-Bus
//!   types it takes and returns.

pub mod engine;
pub mod graph;
pub mod model;
pub mod path;
pub mod policy;
pub mod service;
pub mod trust;
pub mod wire;

/// Where the daemon reads its Meta-RIB and intents unless told otherwise.
pub const DEFAULT_TOPOLOGY: &str = "/bpi/config/system/topology.toml";
pub const DEFAULT_POLICIES: &str = "/bpi/config/policies/intent-policies";

//! NXOS DRX data plane: the `xdp_trust_routing` XDP program (C, under bpf/),
//! its pinned maps, and the code that loads, attaches and feeds it.
//!
//! - `layout`: the map value layouts shared with the C program, scores, verdicts.
//! - `prefix`: IPv4/IPv6 prefixes as the operator writes them.
//! - `plan`: a batch of trust changes turned into map writes (pure).
//! - `tables`: the double-buffered tables in bpffs, and the atomic apply.
//! - `attach`: load, attach, detach and report on interfaces.
//! - `config`: the data plane's section of /bpi/config/system.
//! - `stats`: the kernel's run-time statistics of the attached programs.
//! - `testbed`: bpffs, namespaces, veth pairs and frames for tests and benchmarks.

pub mod attach;
pub mod config;
pub mod layout;
pub mod plan;
pub mod prefix;
pub mod stats;
pub mod tables;
pub mod testbed;

/// The compiled eBPF object, embedded so the image ships one binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_trust.o"));

/// The programs in [`OBJECT`] an operator may load.
pub const PROGRAMS: &[&str] = &["xdp_trust_routing"];

/// Where the maps and links live unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/bpi";

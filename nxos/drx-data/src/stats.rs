//! The kernel's own run-time statistics of the programs attached under a
//! pin directory: how many times they ran and for how long. The kernel
//! counts time only while statistics are enabled (BPF_ENABLE_STATS, held
//! by the returned descriptor, or the sysctl kernel.bpf_stats_enabled).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Attached programs found.
    pub programs: u32,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Turns the kernel's run-time accounting on for as long as the descriptor is open.
pub fn enable() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)")
}

/// Sums the statistics of every program attached under `pin_dir`.
pub fn attached(pin_dir: &Path) -> Result<RunStats> {
    let ids: BTreeSet<u32> = crate::attach::links(pin_dir)?.into_iter().filter_map(|l| l.hook).filter_map(|h| u32::try_from(h.program_id).ok()).collect();
    let mut s = RunStats::default();
    if ids.is_empty() {
        return Ok(s);
    }
    for info in aya::programs::loaded_programs() {
        let info = info.context("reading a loaded program's information")?;
        if ids.contains(&info.id()) {
            s.programs += 1;
            s.run_time_ns += info.run_time().as_nanos() as u64;
            s.run_count += info.run_count();
        }
    }
    Ok(s)
}

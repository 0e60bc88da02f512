//! `cargo xtask bench`: every benchmark, each printing its figures as ratios
//! against a reference tool measured in the same run (docs/benchmarks.md).

use anyhow::Result;
use bpi_support::{progress::Steps, Cmd};

/// (package, bench target) pairs, run in this order.
const BENCHES: &[(&str, &str)] = &[("bpi-ledger", "ledger"), ("bpi-drx-data", "data_plane")];

pub fn bench() -> Result<()> {
    let steps = Steps::new("bench");
    for (package, target) in BENCHES {
        steps.step(&format!("{package}/{target}"), || {
            Cmd::new("cargo").args(["bench", "--locked", "-p", package, "--bench", target]).echo().run()
        })?;
    }
    Ok(())
}

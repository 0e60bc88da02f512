//! `cargo xtask bench`: every benchmark, each printing its figures as ratios
//! against a reference tool measured in the same run (docs/benchmarks.md).

use anyhow::Result;
use bpi_support::{progress::Steps, Cmd};

/// (package, bench target) pairs, run in this order.
const BENCHES: &[(&str, &str)] = &[("bpi-ledger", "ledger"), ("bpi-drx-data", "data_plane"), ("bpi-drx-control", "control"), ("bpi-qlock", "qlock")];

pub fn bench() -> Result<()> {
    let steps = Steps::new("bench");
    // The control-plane bench runs the real daemon to measure its memory.
    let bin = steps.step("bpi-os release binary", crate::image_cmd::build_binary)?;
    for (package, target) in BENCHES {
        steps.step(&format!("{package}/{target}"), || {
            Cmd::new(crate::cargo())
                .args(["bench", "--locked", "-p", package, "--bench", target])
                .env("CARGO_ENCODED_RUSTFLAGS", crate::buildenv::release_rustflags())
                .env("BPI_OS_BIN", &bin)
                .echo()
                .run()
        })?;
    }
    Ok(())
}

//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/, built with the stable
//! toolchain. libfuzzer-sys links libFuzzer; the coverage it steers by comes
//! from LLVM's SanitizerCoverage passes, which stable rustc runs through
//! `-C passes`/`-C llvm-args` (cargo-fuzz sets the same flags, plus
//! `-Zsanitizer` on nightly: the targets are safe Rust, where AddressSanitizer
//! adds little). Each target first replays fuzz/regressions/TARGET (every
//! crash found becomes a file there), then fuzzes from fuzz/corpus/TARGET
//! (committed seeds) into a working corpus kept under the target directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_support::{progress, Cmd, Steps};

use crate::{buildenv, cargo, workspace_root};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["ledger_log", "ledger_data", "config_files", "gpt_manifest", "image_source", "xdp_frames", "provision_docs"];

/// How long each target runs inside `cargo xtask test`.
pub const TEST_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Targets to run (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    crate::hosttools::ensure(&[crate::hosttools::BUILD, crate::hosttools::TEST])?;
    let targets: Vec<&str> = if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    let steps = Steps::new("fuzz");
    run(&targets, args.seconds, &steps)?;
    steps.finish();
    Ok(())
}

fn target_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// The flags cargo-fuzz uses for libFuzzer's coverage, without the sanitizer.
fn rustflags() -> String {
    [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "--cfg",
        "fuzzing",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ]
    .join(" ")
}

/// Builds every target; the directory of the binaries.
fn build() -> Result<PathBuf> {
    let target_dir = buildenv::target_dir()?.join("fuzz");
    // --target keeps the coverage flags off build scripts and proc macros.
    Cmd::new(cargo())
        .args(["build", "--locked", "--release", "--bins", "--target", &target_triple()])
        .env("RUSTFLAGS", rustflags())
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_root().join("fuzz"))
        .echo()
        .run()?;
    Ok(target_dir.join(target_triple()).join("release"))
}

/// What one target did.
pub struct Report {
    pub target: String,
    pub runs: u64,
    pub seconds: u64,
    pub regressions: usize,
}

/// "Done 63407 runs in 11 second(s)" from libFuzzer's last lines.
fn done_line(tail: &[String]) -> Option<(u64, u64)> {
    let line = tail.iter().rev().find(|l| l.starts_with("Done "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some((words.get(1)?.parse().ok()?, words.get(4)?.parse().ok()?))
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

/// Builds the targets, replays each one's regressions and fuzzes it for
/// `seconds`; fails on the first crash, naming the input that caused it.
pub fn run(targets: &[&str], seconds: u64, steps: &Steps) -> Result<Vec<Report>> {
    let bins = steps.step("build the fuzz targets (libFuzzer, SanitizerCoverage)", build)?;
    let fuzz_dir = workspace_root().join("fuzz");
    let work = buildenv::target_dir()?.join("fuzz");
    let mut reports = Vec::new();
    for t in targets {
        let report = steps.step(&format!("fuzz {t} for {seconds} s"), || -> Result<Report> {
            let bin = bins.join(t);
            let regressions = files_in(&fuzz_dir.join("regressions").join(t))?;
            if !regressions.is_empty() {
                Cmd::new(&bin).args(&regressions).run().with_context(|| format!("{t}: a recorded regression fails again"))?;
            }
            let corpus = work.join("corpus").join(t);
            let artifacts = work.join("artifacts").join(t);
            bpi_support::fsmode::create_dirs(&corpus, 0o755)?;
            bpi_support::fsmode::create_dirs(&artifacts, 0o755)?;
            let ran = Cmd::new(&bin)
                .arg(&corpus)
                .arg(fuzz_dir.join("corpus").join(t))
                .arg(format!("-max_total_time={seconds}"))
                .arg("-timeout=30")
                .arg("-rss_limit_mb=2048")
                .arg("-print_final_stats=1")
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .output_and_stderr_tail();
            let tail = match ran {
                Ok((_, tail)) => tail,
                Err(e) => {
                    let found = files_in(&artifacts)?;
                    bail!(
                        "{t} found a failure: {e}\nthe input(s): {}\nonce fixed, copy each into fuzz/regressions/{t}/ so every run replays it",
                        found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
            };
            let (runs, secs) = done_line(&tail).with_context(|| format!("{t}: no 'Done N runs' line from libFuzzer: {}", tail.join(" | ")))?;
            Ok(Report { target: t.to_string(), runs, seconds: secs, regressions: regressions.len() })
        })?;
        progress::note(&format!(
            "fuzz {}: {} runs in {} s ({}/s), {} regression input(s) replayed, no failure",
            report.target,
            report.runs,
            report.seconds,
            report.runs / report.seconds.max(1),
            report.regressions
        ));
        reports.push(report);
    }
    Ok(reports)
}

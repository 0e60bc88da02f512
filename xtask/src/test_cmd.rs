//! `cargo xtask test`: unit and host-integration tests, the image built twice
//! (the second time as a stranger would, to prove it reproducible), then the
//! QEMU end-to-end suite; at the end, every test that could not run, by name.

use std::path::Path;

use anyhow::Result;
use bpi_support::{progress, skip, Cmd, Steps};

use crate::{buildenv, cargo, fuzz_cmd, hosttools, image_cmd, workspace_root};

#[derive(clap::Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub qemu: QemuArgs,
}

#[derive(clap::Args, Clone)]
pub struct QemuArgs {
    /// QEMU accelerator: tcg (default; works everywhere) or kvm (probed first).
    #[arg(long, default_value = "tcg")]
    pub accel: String,
}

pub fn test(args: &TestArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::BUILD, hosttools::TEST])?;
    let skips = fresh_skip_log()?;
    let steps = Steps::new("test");
    let result = (|| {
        steps.step("unit and host-integration tests", || {
            Cmd::new(cargo())
                .args(["test", "--locked", "--workspace", "--exclude", "bpi-qemu-tests"])
                .env(skip::LOG_ENV, &skips)
                .current_dir(workspace_root())
                .echo()
                .run()
        })?;
        steps.step(&format!("fuzz targets, {} s each", fuzz_cmd::TEST_SECONDS), || {
            fuzz_cmd::run(fuzz_cmd::TARGETS, fuzz_cmd::TEST_SECONDS, &steps).map(|_| ())
        })?;
        steps.step("image, built twice and compared (reproducibility)", || {
            image_cmd::build_image(&image_cmd::BuildArgs { mirror: None, check_reproducible: true })
        })?;
        steps.step("QEMU end-to-end suite", || run_qemu_suite(&args.qemu, &skips))
    })();
    report_skips(&skips);
    result?;
    steps.finish();
    Ok(())
}

pub fn qemu_test(args: &QemuArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::TEST])?;
    let skips = fresh_skip_log()?;
    let result = run_qemu_suite(args, &skips);
    report_skips(&skips);
    result
}

fn fresh_skip_log() -> Result<std::path::PathBuf> {
    let path = buildenv::target_dir()?.join("test-skips.log");
    std::fs::create_dir_all(path.parent().expect("a file in the target dir"))?;
    std::fs::write(&path, b"")?;
    Ok(path)
}

/// Lists every test that could not run (none can, under CI or as root).
fn report_skips(log: &Path) {
    let skipped = skip::read_log(&std::fs::read_to_string(log).unwrap_or_default());
    if skipped.is_empty() {
        progress::note("skipped tests: none");
        return;
    }
    let verdict = if skip::required() { "could not run (failures under CI or as root)" } else { "skipped" };
    progress::note(&format!("{} tests {verdict}:", skipped.len()));
    for (test, why) in skipped {
        eprintln!("    {test}: {why}");
    }
}

fn run_qemu_suite(args: &QemuArgs, skips: &Path) -> Result<()> {
    progress::note(&format!("QEMU suite with accel={}", args.accel));
    Cmd::new(cargo())
        .args(["test", "--locked", "-p", "bpi-qemu-tests", "--", "--test-threads=1", "--nocapture"])
        .env("BPI_IMAGE_DIR", buildenv::target_dir()?.join("image"))
        .env("BPI_QEMU_ACCEL", &args.accel)
        .env(skip::LOG_ENV, skips)
        .current_dir(workspace_root())
        .echo()
        .run()?;
    Ok(())
}

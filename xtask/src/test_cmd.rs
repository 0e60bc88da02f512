//! `cargo xtask test`: unit and host-integration tests, the image built twice
//! (the second time as a stranger would, to prove it reproducible), then the
//! QEMU end-to-end suite; at the end, every test that could not run, by name.

use std::path::Path;

use anyhow::{Context, Result};
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
        steps.step("image, signed with the test keys, built twice and compared (reproducibility)", || {
            image_cmd::build_image(&image_cmd::BuildArgs {
                mirror: None,
                check_reproducible: true,
                version: None,
                out: None,
                test_break_health: false,
                sign_with: Some(image_cmd::test_keys()?),
            })
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

/// The images the update test installs over the built one: N+1 (a patch
/// version up) and N+2 (two up, built to fail its boot health check).
fn build_update_images() -> Result<std::path::PathBuf> {
    let dir = buildenv::target_dir()?.join("update-test");
    let (next, broken) = next_versions(env!("CARGO_PKG_VERSION"))?;
    for (name, version, break_health) in [("next", next, false), ("broken", broken, true)] {
        image_cmd::build_image(&image_cmd::BuildArgs {
            mirror: None,
            check_reproducible: false,
            version: Some(version),
            out: Some(dir.join(name)),
            test_break_health: break_health,
            sign_with: Some(image_cmd::test_keys()?),
        })?;
        // Only the bundle and manifest are used; the disk images are not.
        for f in ["bpi-os.raw", "bpi-os.qcow2"] {
            let _ = std::fs::remove_file(dir.join(name).join(f));
        }
    }
    Ok(dir)
}

/// X.Y.Z -> (X.Y.Z+1, X.Y.Z+2).
fn next_versions(v: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = v.split('.').collect();
    let patch: u64 = match parts.as_slice() {
        [_, _, p] => p.parse().with_context(|| format!("version {v}: patch {p} is not a number"))?,
        _ => anyhow::bail!("version {v} is not X.Y.Z"),
    };
    let base = format!("{}.{}", parts[0], parts[1]);
    Ok((format!("{base}.{}", patch + 1), format!("{base}.{}", patch + 2)))
}

fn run_qemu_suite(args: &QemuArgs, skips: &Path) -> Result<()> {
    progress::note(&format!("QEMU suite with accel={}", args.accel));
    let updates = build_update_images()?;
    Cmd::new(cargo())
        .args(["test", "--locked", "-p", "bpi-qemu-tests", "--", "--test-threads=1", "--nocapture"])
        .env("BPI_IMAGE_DIR", buildenv::target_dir()?.join("image"))
        .env("BPI_UPDATE_IMAGES_DIR", &updates)
        .env("BPI_SECURE_BOOT_KEYS", image_cmd::test_keys()?)
        .env("BPI_QEMU_ACCEL", &args.accel)
        .env(skip::LOG_ENV, skips)
        .current_dir(workspace_root())
        .echo()
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn update_test_versions_are_patch_bumps() {
        assert_eq!(super::next_versions("0.1.0").unwrap(), ("0.1.1".into(), "0.1.2".into()));
        assert!(super::next_versions("0.1").is_err());
    }
}

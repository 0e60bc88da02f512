//! `cargo xtask test`: unit and host-integration tests, then the image (built
//! or reused from the cache), then the QEMU end-to-end suite.

use anyhow::Result;
use bpi_support::{progress, Cmd, Steps};

use crate::{cargo, hosttools, image_cmd, workspace_root};

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
    let steps = Steps::new("test");
    steps.step("unit and host-integration tests", || {
        Cmd::new(cargo())
            .args(["test", "--locked", "--workspace", "--exclude", "bpi-qemu-tests"])
            .current_dir(workspace_root())
            .echo()
            .run()
    })?;
    image_cmd::build_image(&image_cmd::BuildArgs { mirror: None, check_reproducible: false })?;
    steps.step("QEMU end-to-end suite", || run_qemu_suite(&args.qemu))?;
    steps.finish();
    Ok(())
}

pub fn qemu_test(args: &QemuArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::TEST])?;
    run_qemu_suite(args)
}

fn run_qemu_suite(args: &QemuArgs) -> Result<()> {
    progress::note(&format!("QEMU suite with accel={}", args.accel));
    Cmd::new(cargo())
        .args(["test", "--locked", "-p", "bpi-qemu-tests", "--", "--test-threads=1", "--nocapture"])
        .env("BPI_IMAGE_DIR", workspace_root().join("target/image"))
        .env("BPI_QEMU_ACCEL", &args.accel)
        .current_dir(workspace_root())
        .echo()
        .run()?;
    Ok(())
}

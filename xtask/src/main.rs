//! Developer and CI entry points. `cargo xtask build-image` and
//! `cargo xtask test` are the two commands the README opens with.

mod apt;
mod bench_cmd;
mod fuzz_cmd;
mod buildenv;
mod hosttools;
mod image_cmd;
mod test_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build {bpi-os.raw,bpi-os.qcow2,SHA256SUMS,manifest.json} in <target dir>/image.
    BuildImage(image_cmd::BuildArgs),
    /// Resolve image/packages.txt against the mirror and rewrite image/packages.lock.
    Lock {
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Every test tier: unit, host integration, then the QEMU suite.
    Test(test_cmd::TestArgs),
    /// Only the QEMU suite, against the image already built.
    QemuTest(test_cmd::QemuArgs),
    /// Make a development Secure Boot key set (PK, KEK, db, and the PCR 11 policy key) for --sign-with.
    Keys(image_cmd::KeysArgs),
    /// Benchmarks, as ratios against reference tools run alongside.
    Bench,
    /// The fuzz targets (fuzz/), each for --seconds (300 by default).
    Fuzz(fuzz_cmd::FuzzArgs),
}

fn main() {
    let cli = Cli::parse();
    buildenv::normalize();
    let result = buildenv::check_toolchain().and_then(|()| match cli.command {
        Command::BuildImage(args) => image_cmd::build_image(&args),
        Command::Lock { mirror } => image_cmd::lock(mirror.as_deref()),
        Command::Test(args) => test_cmd::test(&args),
        Command::QemuTest(args) => test_cmd::qemu_test(&args),
        Command::Keys(args) => image_cmd::keys(&args),
        Command::Bench => bench_cmd::bench(),
        Command::Fuzz(args) => fuzz_cmd::fuzz(&args),
    });
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

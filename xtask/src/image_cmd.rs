//! `cargo xtask build-image` and `cargo xtask lock`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_image::{build, compare, rootfs, sources::Sources};
use bpi_support::{progress, Cmd, Steps};

use crate::{cargo, hosttools, workspace_root};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Debian mirror URL (default: the host's apt source for bookworm).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Build twice (second in another directory, with a cold cache) and compare.
    #[arg(long)]
    pub check_reproducible: bool,
}

pub fn build_image(args: &BuildArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::BUILD])?;
    let root = workspace_root();
    let steps = Steps::new("build-image");
    let binary = steps.step("bpi-os release binary", build_binary)?;
    let out = root.join("target/image");
    let opts = build::BuildOptions {
        source_dir: root.clone(),
        out_dir: out.clone(),
        work_dir: root.join("target/image-work"),
        cache_dir: rootfs::default_cache_dir(),
        binary: binary.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        mirror: args.mirror.clone(),
    };
    let first = build::build(&opts, &steps)?;
    report(&out, &first)?;
    if args.check_reproducible {
        let second_out = root.join("target/image-repro");
        let cold_cache = root.join("target/image-repro-cache");
        let _ = std::fs::remove_dir_all(&cold_cache);
        let opts2 = build::BuildOptions {
            out_dir: second_out.clone(),
            work_dir: root.join("target/image-repro-work"),
            cache_dir: cold_cache.clone(),
            ..opts
        };
        progress::note("second build for --check-reproducible (other directory, cold cache)");
        let second = build::build(&opts2, &steps)?;
        let _ = std::fs::remove_dir_all(&cold_cache);
        match compare::first_differing_partition(&first, &second) {
            None => progress::note(&format!("reproducible: both builds give sha256 {} for bpi-os.raw", first.disk.sha256)),
            Some(part) => {
                let file = if part == "bpi-root" {
                    compare::first_differing_file(
                        &build::staged_root(&root.join("target/image-work")),
                        &build::staged_root(&root.join("target/image-repro-work")),
                    )?
                    .map(|p| format!(", first differing file: /{}", p.display()))
                    .unwrap_or_default()
                } else {
                    String::new()
                };
                bail!(
                    "not reproducible: bpi-os.raw {} vs {}; first differing part: {part}{file}",
                    first.disk.sha256,
                    second.disk.sha256
                );
            }
        }
    }
    steps.finish();
    Ok(())
}

fn report(out: &Path, m: &bpi_image::manifest::Manifest) -> Result<()> {
    let raw = out.join(build::RAW);
    let meta = std::fs::metadata(&raw)?;
    use std::os::unix::fs::MetadataExt;
    let qcow = std::fs::metadata(out.join(build::QCOW2))?.len();
    progress::note(&format!(
        "{}: {} bytes apparent, {} bytes allocated; {}: {} bytes; root hash {}",
        raw.display(),
        meta.len(),
        meta.blocks() * 512,
        build::QCOW2,
        qcow,
        m.root_hash
    ));
    Ok(())
}

pub fn build_binary() -> Result<PathBuf> {
    Cmd::new(cargo())
        .args(["build", "--release", "--locked", "-p", "bpi-os"])
        .current_dir(workspace_root())
        .run()?;
    let bin = workspace_root().join("target/release/bpi-os");
    if !bin.is_file() {
        bail!("cargo built no {}", bin.display());
    }
    Ok(bin)
}

pub fn lock(mirror: Option<&str>) -> Result<()> {
    hosttools::ensure(&[hosttools::BUILD])?;
    let root = workspace_root();
    let image_dir = root.join("image");
    let sources = Sources::from_host(mirror)?;
    let inputs = rootfs::BaseInputs { image_dir: &image_dir, sources: &sources };
    // Keep the epoch of an existing lock so re-locking changes only versions.
    let epoch = match inputs.lock() {
        Ok(l) => l.epoch,
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() / 86400 * 86400,
    };
    let scratch = root.join("target/lock-work");
    let _ = std::fs::remove_dir_all(&scratch);
    let steps = Steps::new("lock");
    let lock = steps.step("resolve packages with mmdebstrap", || rootfs::make_lock(&inputs, epoch, &scratch))?;
    let path = image_dir.join("packages.lock");
    std::fs::write(&path, lock.render()).with_context(|| format!("writing {}", path.display()))?;
    progress::note(&format!("wrote {} ({} packages)", path.display(), lock.debs.len()));
    Ok(())
}

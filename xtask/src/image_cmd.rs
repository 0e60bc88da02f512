//! `cargo xtask build-image` and `cargo xtask lock`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_image::{build, compare, rootfs, secureboot::{self, KeySet}, sources::Sources};
use bpi_support::{progress, Cmd, Steps};

use crate::{buildenv, cargo, hosttools, workspace_root};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Debian mirror URL (default: the host's apt source for bookworm).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Build a second time from a copy of the working tree at another path
    /// (modes of a umask-077 checkout, its own target directory, an empty
    /// base cache, umask 077, TZ=Asia/Tokyo, C.UTF-8) and compare the bytes.
    #[arg(long)]
    pub check_reproducible: bool,
    /// The image's version (default: the workspace's); an update test builds
    /// N+1 with this.
    #[arg(long, env = "BPI_OS_VERSION")]
    pub version: Option<String>,
    /// Where the image and its update bundle go (default: <target>/image);
    /// its scratch directory is beside it, named <out>-work.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// For the update test only: an image whose boot health check fails.
    #[arg(long, hide = true)]
    pub test_break_health: bool,
    /// Sign systemd-boot and the UKI for Secure Boot with the db key of this
    /// key set (`cargo xtask keys`), and carry its public keys on the ESP for
    /// enrollment. Unsigned without it.
    #[arg(long, env = "BPI_SIGN_WITH", value_name = "DIR")]
    pub sign_with: Option<PathBuf>,
}

pub fn build_image(args: &BuildArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::BUILD])?;
    let root = workspace_root();
    let target = buildenv::target_dir()?;
    let steps = Steps::new("build-image");
    // An incomplete key set is refused before minutes of building.
    let keys = args.sign_with.as_deref().map(KeySet::open).transpose()?;
    let binary = steps.step("bpi-os release binary", build_binary)?;
    let out = args.out.clone().unwrap_or_else(|| target.join("image"));
    let work = out.with_file_name(format!("{}-work", out.file_name().and_then(|n| n.to_str()).unwrap_or("image")));
    let signer = update_key()?;
    let opts = build::BuildOptions {
        source_dir: root.clone(),
        out_dir: out.clone(),
        work_dir: work.clone(),
        cache_dir: rootfs::default_cache_dir(),
        binary: binary.clone(),
        version: args.version.clone().unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        mirror: args.mirror.clone(),
        update_signer: &signer,
        update_valid_secs: UPDATE_VALID_DAYS * 86400,
        break_health: args.test_break_health,
        sign_with: keys.as_ref(),
    };
    let first = build::build(&opts, &steps)?;
    report(&out, &first)?;
    if args.check_reproducible {
        let second = steps.step("second build: another checkout, umask 077, TZ=Asia/Tokyo, C.UTF-8, cold cache", || {
            second_build(&target.join("reproduce"), args.mirror.as_deref(), &opts.version, args.sign_with.as_deref())
        })?;
        match compare::first_differing_partition(&first, &second.manifest) {
            None => progress::note(&format!("reproducible: both builds give sha256 {} for bpi-os.raw", first.disk.sha256)),
            Some(part) => {
                let file = if part == compare::ROOT {
                    compare::first_differing_file(&build::staged_root(&work), &build::staged_root(&second.work_dir))?
                        .map(|p| format!(", first differing file: /{}", p.display()))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                bail!(
                    "not reproducible: bpi-os.raw {} vs {} (built in {}); first differing part: {part}{file}",
                    first.disk.sha256,
                    second.manifest.disk.sha256,
                    second.source.display()
                );
            }
        }
    }
    steps.finish();
    Ok(())
}

/// How long a bundle's signed metadata is valid (TUF's freeze protection).
const UPDATE_VALID_DAYS: u64 = 30;

/// The update signing key, made on first use (a development key: its
/// public half goes into every image built here).
pub fn update_key() -> Result<bpi_ledger::checkpoint::NoteSigner> {
    let path = bpi_image::bundle::key_path()?;
    let existed = path.exists();
    let signer = bpi_ledger::store::load_or_make_key(&path, Some(bpi_image::bundle::DEV_KEY_NAME)).with_context(|| format!("the update signing key {}", path.display()))?;
    if !existed {
        progress::note(&format!("made a development update signing key: {} (public: {})", path.display(), signer.verifier().to_vkey()));
    }
    Ok(signer)
}

/// The image of a second, independent build.
struct SecondBuild {
    manifest: bpi_image::manifest::Manifest,
    work_dir: PathBuf,
    source: PathBuf,
}

/// Builds the image again as a stranger would: from a copy of the source at
/// another path whose files have the modes a checkout under umask 077 gets,
/// with its own cargo target directory and an empty base cache, by
/// `cargo xtask build-image` run under umask 077, TZ=Asia/Tokyo and C.UTF-8.
fn second_build(dir: &Path, mirror: Option<&str>, version: &str, sign_with: Option<&Path>) -> Result<SecondBuild> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let source = dir.join("elsewhere/bpi-os-src");
    copy_checkout(&workspace_root(), &source)?;
    let target = dir.join("target");
    let mut build = vec!["xtask".to_string(), "build-image".to_string(), "--version".to_string(), version.to_string()];
    if let Some(m) = mirror {
        build.extend(["--mirror".to_string(), m.to_string()]);
    }
    // The same key: a signature is reproducible only for the same key.
    if let Some(k) = sign_with {
        build.extend(["--sign-with".to_string(), std::fs::canonicalize(k)?.display().to_string()]);
    }
    Cmd::new("sh")
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(cargo())
        .args(&build)
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", &target)
        .env("BPI_CACHE_DIR", dir.join("cold-cache"))
        .env("TZ", "Asia/Tokyo")
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "C.UTF-8")
        .echo()
        .run()?;
    let manifest = bpi_image::manifest::Manifest::load(&target.join("image").join(build::MANIFEST))?;
    Ok(SecondBuild { manifest, work_dir: target.join("image-work"), source })
}

/// Copies the files git knows of (tracked, and untracked but not ignored:
/// the working tree as it is) with modes 0600/0700, as a clone under umask
/// 077 has them.
fn copy_checkout(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let list = Cmd::new("git").args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]).current_dir(from).output()?;
    let mut copied = 0;
    for rel in list.split('\0').filter(|r| !r.is_empty()) {
        let src = from.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&src) else { continue }; // deleted in the working tree
        let dest = to.join(rel);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dest.parent().expect("a file has a parent"))?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dest)?;
            continue;
        }
        let mode = if meta.permissions().mode() & 0o100 != 0 { 0o700 } else { 0o600 };
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&dest)?;
        std::io::copy(&mut std::fs::File::open(&src)?, &mut out).with_context(|| format!("copying {}", src.display()))?;
        copied += 1;
    }
    progress::log(&format!("copied {copied} files of the working tree to {}", to.display()));
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

/// The release binary that goes into the image (and that the benchmarks
/// run), built with the path-mapping flags; returns where cargo put it.
pub fn build_binary() -> Result<PathBuf> {
    Cmd::new(cargo())
        .args(["build", "--release", "--locked", "-p", "bpi-os"])
        .env("CARGO_ENCODED_RUSTFLAGS", buildenv::release_rustflags())
        .current_dir(workspace_root())
        .run()?;
    let bin = buildenv::target_dir()?.join("release/bpi-os");
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
    let scratch = buildenv::target_dir()?.join("lock-work");
    let _ = std::fs::remove_dir_all(&scratch);
    let steps = Steps::new("lock");
    let lock = steps.step("resolve packages with mmdebstrap", || rootfs::make_lock(&inputs, epoch, &scratch))?;
    let path = image_dir.join("packages.lock");
    std::fs::write(&path, lock.render()).with_context(|| format!("writing {}", path.display()))?;
    progress::note(&format!("wrote {} ({} packages)", path.display(), lock.debs.len()));
    Ok(())
}

#[derive(clap::Args)]
pub struct KeysArgs {
    /// Where the key set goes (a new directory, outside the source tree).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The certificates' common name prefix.
    #[arg(long, default_value = "bpi-os development")]
    pub owner: String,
}

/// `cargo xtask keys`: a development Secure Boot key set.
pub fn keys(args: &KeysArgs) -> Result<()> {
    hosttools::ensure(&[hosttools::BUILD])?;
    let out = std::path::absolute(&args.out)?;
    if out.starts_with(workspace_root()) && !out.starts_with(buildenv::target_dir()?) {
        bail!("{} is inside the source tree: private keys do not belong where git could pick them up", out.display());
    }
    let set = secureboot::make_keys(&out, &args.owner)?;
    progress::note(&format!(
        "made PK, KEK, db and the PCR policy key in {} (db certificate sha256 {}); sign with `cargo xtask build-image --sign-with {}`",
        out.display(),
        set.db_fingerprint()?,
        out.display()
    ));
    Ok(())
}

/// The development key set the test suite signs its images with, made on
/// first use under the target directory.
pub fn test_keys() -> Result<PathBuf> {
    let dir = buildenv::target_dir()?.join("secure-boot-keys");
    // (A set made before the PCR key existed is made again.)
    if secureboot::KeySet::open(&dir).is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        secureboot::make_keys(&dir, "bpi-os test")?;
        progress::note(&format!("made the test suite's Secure Boot key set in {}", dir.display()));
    }
    Ok(dir)
}

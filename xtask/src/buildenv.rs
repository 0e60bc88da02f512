//! What xtask takes from the machine and what it fixes: the toolchain is
//! checked against rust-toolchain.toml, the target directory is asked of
//! cargo, and umask, time zone and locale are set so that none of the
//! caller's leaks into the image.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use bpi_support::Cmd;

use crate::{cargo, workspace_root};

/// The environment every xtask command runs in, whatever the caller's:
/// file modes from an explicit 022 (tools that create files without a mode
/// follow the umask), times in UTC (FAT time stamps are local time), one
/// locale (sort orders and messages).
pub fn normalize() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Single-threaded here: called first thing in main.
    std::env::set_var("TZ", "UTC");
    std::env::set_var("LC_ALL", "C.UTF-8");
    std::env::remove_var("LANGUAGE");
}

/// The release rust-toolchain.toml names.
pub fn pinned_toolchain(root: &Path) -> Result<String> {
    let path = root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_channel(&text).with_context(|| format!("{} names no [toolchain] channel", path.display()))
}

fn parse_channel(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
}

/// Fails unless rustc is the pinned release (a machine without rustup
/// ignores rust-toolchain.toml; its compiler would make other bytes).
pub fn check_toolchain() -> Result<()> {
    let root = workspace_root();
    let want = pinned_toolchain(&root)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Cmd::new(&rustc).arg("--version").current_dir(&root).output()?;
    let have = version.split_whitespace().nth(1).unwrap_or_default();
    if have != want {
        bail!(
            "bpi-os is built with Rust {want} (rust-toolchain.toml), so that every machine makes the same image; \
             this is {}. Install it with: rustup toolchain install {want}",
            version.trim()
        );
    }
    Ok(())
}

/// Cargo's target directory for this workspace (CARGO_TARGET_DIR, the
/// config's build.target-dir, or target/), as cargo itself reports it.
pub fn target_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let out = Cmd::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()?;
    let v: serde_json::Value = serde_json::from_str(&out).context("reading `cargo metadata`")?;
    let dir = v["target_directory"].as_str().context("`cargo metadata` names no target_directory")?;
    Ok(DIR.get_or_init(|| PathBuf::from(dir)).clone())
}

/// Flags for the release build of the binary that goes into the image: the
/// paths of this checkout and of cargo's registry are mapped to fixed names,
/// so the binary does not depend on where either lives.
pub fn release_rustflags() -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut flags: Vec<String> = std::env::var("RUSTFLAGS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    flags.push(format!("--remap-path-prefix={}=/cargo", cargo_home.display()));
    flags.push(format!("--remap-path-prefix={}=/bpi-os", workspace_root().display()));
    flags.join("\x1f")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel() {
        assert_eq!(parse_channel("[toolchain]\nchannel = \"1.95.0\"\n").as_deref(), Some("1.95.0"));
        assert_eq!(parse_channel("# x\n[toolchain]\n  channel=\"stable\"\n").as_deref(), Some("stable"));
        assert_eq!(parse_channel("[toolchain]\ncomponents = []\n"), None);
        assert_eq!(pinned_toolchain(&workspace_root()).unwrap().split('.').count(), 3, "pin an exact release");
    }
}

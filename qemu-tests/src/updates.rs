//! What the update tests share (the lifecycle test under UEFI, the SeaBIOS
//! test under BIOS): the N+1 and N+2 bundles `cargo xtask test` builds, an
//! apply run in the guest, and waiting for a guest that reboots on its own
//! (boot counting) to come up on a given version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpi_image::manifest::Manifest;

use crate::qga::Agent;
use crate::vm::Vm;

/// $BPI_UPDATE_IMAGES_DIR (set by `cargo xtask test`), or target/update-test:
/// `next` (N+1) and `broken` (N+2, whose boot health check fails).
pub fn updates_dir() -> PathBuf {
    std::env::var_os("BPI_UPDATE_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/update-test"))
}

pub fn manifest(dir: &Path) -> Result<Manifest> {
    Manifest::load(&dir.join("manifest.json")).with_context(|| format!("{}: run `cargo xtask qemu-test` (it builds the update images)", dir.display()))
}

/// Runs `bpi-os update apply ARGS` in the guest: (exit code, output).
pub fn apply(vm: &Vm, args: &str) -> Result<(i64, String)> {
    let out = vm.sh_for(&format!("bpi-os update apply {args} 2>&1"), Duration::from_secs(1800))?;
    Ok((out.code, format!("{}{}", out.stdout, out.stderr)))
}

pub fn status(vm: &Vm) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&vm.sh("bpi-os update status --json")?)?)
}

/// Waits until the guest runs `version` and has finished booting; the guest
/// may reboot several times on the way (boot counting).
pub fn wait_version(vm: &Vm, sock: &Path, version: &str, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        if let Ok(mut a) = Agent::connect(sock, Duration::from_secs(5)) {
            if let Ok(r) = a.sh(". /usr/lib/os-release; echo $IMAGE_VERSION; systemctl is-system-running --wait", Duration::from_secs(300)) {
                let mut l = r.stdout.lines();
                let (v, state) = (l.next().unwrap_or("").to_string(), l.next().unwrap_or("").to_string());
                if v != last {
                    eprintln!("  after {:.0}s the guest runs {v} ({state})", t.elapsed().as_secs_f64());
                    last = v.clone();
                }
                if v == version && (state == "running" || state == "degraded") && a.sh("systemctl is-active bpi-health.service", Duration::from_secs(60)).is_ok() {
                    return Ok(t.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    vm.fail(&format!("the guest did not come up on {version} within {timeout:?} (last seen: {last:?})"))
}

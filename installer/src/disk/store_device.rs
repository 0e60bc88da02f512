//! The store partition as a device of its own, for cryptsetup.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use bpi_formats::gpt::SECTOR;
use bpi_support::Cmd;

use crate::target::{Kind, Target};

/// How much of the store partition's start is zeroed (the LUKS2 header and more).
pub(super) const STORE_WIPE: usize = 16 << 20;

/// The store partition as a device: the partition node of a block device, or
/// a loop device over that range of a file.
pub(super) struct StoreDevice {
    pub(super) path: PathBuf,
    loop_dev: bool,
}

impl StoreDevice {
    pub(super) fn open(t: &Target, offset: u64, bytes: u64) -> Result<StoreDevice> {
        if t.kind == Kind::File {
            let dev = Cmd::new("losetup")
                .args(["--find", "--show", "--offset", &offset.to_string(), "--sizelimit", &bytes.to_string()])
                .arg(&t.path)
                .output()?;
            return Ok(StoreDevice { path: PathBuf::from(dev.trim()), loop_dev: true });
        }
        let _ = Cmd::new("udevadm").args(["settle", "--timeout=30"]).run();
        let name = t.path.file_name().and_then(|n| n.to_str()).context("the disk has a name")?.to_string();
        let start = (offset / SECTOR).to_string();
        let t0 = std::time::Instant::now();
        loop {
            let found = std::fs::read_dir(format!("/sys/class/block/{name}"))?.flatten().find(|e| {
                std::fs::read_to_string(e.path().join("start")).is_ok_and(|s| s.trim() == start)
            });
            if let Some(e) = found {
                let node = PathBuf::from("/dev").join(e.file_name());
                if node.exists() {
                    return Ok(StoreDevice { path: node, loop_dev: false });
                }
            }
            ensure!(t0.elapsed().as_secs() < 30, "the kernel shows no partition at sector {start} of {name} after re-reading the table");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for StoreDevice {
    fn drop(&mut self) {
        if self.loop_dev {
            let _ = Cmd::new("losetup").arg("-d").arg(&self.path).run();
        }
    }
}

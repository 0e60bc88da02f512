//! End-to-end: a node's life on one disk, in the real image under QEMU.
//! Version N is installed from a live VM onto a disk (install.rs); that disk
//! then boots alone and is updated, rolled back and falls back by itself
//! (update.rs). One test, so the installed disk's boots serve both.

mod install;
mod update;

use anyhow::Result;

#[test]
fn installed_from_a_live_vm_then_updated_rolled_back_and_falling_back() -> Result<()> {
    let work = tempfile::Builder::new().prefix("bpi-lifecycle-").tempdir()?;
    let installed = install::install_from_live_vm(work.path())?;
    update::updates_on_the_installed_disk(&installed)
}

//! The QEMU harness: boots a copy-on-write overlay of the built image under
//! OVMF, keeps the serial log, talks to the guest through qemu-guest-agent,
//! and scans logs for signs of trouble. Tests live in tests/.

pub mod fixtures;
pub mod httpd;
pub mod logscan;
pub mod qga;
pub mod updates;
pub mod vm;

use std::path::PathBuf;

/// target/image, or $BPI_IMAGE_DIR (set by `cargo xtask test`).
pub fn image_dir() -> PathBuf {
    std::env::var_os("BPI_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image"))
}

/// The Secure Boot key set the image under test was signed with:
/// $BPI_SECURE_BOOT_KEYS (set by `cargo xtask test`), or target/secure-boot-keys.
pub fn secure_boot_keys() -> PathBuf {
    std::env::var_os("BPI_SECURE_BOOT_KEYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/secure-boot-keys"))
}

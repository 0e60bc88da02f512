//! The installer's image check over arbitrary SHA256SUMS, manifest and raw
//! image, split from one input at 0xff bytes: refused with a reason, or
//! accepted only when the three agree; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let (sums, manifest, raw) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    std::fs::write(dir.path().join("bpi-os.raw"), raw).unwrap();
    let steps = bpi_support::Steps::new("fuzz");
    if let Ok(src) = bpi_installer::source::verify(dir.path(), &steps) {
        assert_eq!(src.size, raw.len() as u64);
        assert_eq!(src.sha256, bpi_support::digest::sha256_bytes(raw));
    }
});

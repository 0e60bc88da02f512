//! The GPT reader and the manifest parser over arbitrary bytes: errors, never
//! panics; a table it accepts lists partitions inside the disk it describes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, parts)) = bpi_formats::gpt::parse_primary(data) {
        for p in parts {
            assert!(p.last_lba >= p.first_lba, "{p:?}");
        }
    }
    let _ = bpi_formats::manifest::Manifest::parse(data, "manifest.json");
});

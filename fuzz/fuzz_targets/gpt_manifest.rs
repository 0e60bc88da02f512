//! The GPT reader, the manifest parser and the update metadata parser over
//! arbitrary bytes: errors, never panics; a table it accepts lists
//! partitions inside the disk it describes, and metadata it accepts names
//! exactly one file of each role, each fitting its place.
#![no_main]

use bpi_formats::update::{Metadata, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, parts)) = bpi_formats::gpt::parse_primary(data) {
        for p in &parts {
            assert!(p.last_lba >= p.first_lba, "{p:?}");
        }
    }
    let _ = bpi_formats::manifest::Manifest::parse(data, "manifest.json");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Metadata::parse(text) {
            for role in [Role::Root, Role::Verity, Role::Uki] {
                let f = m.file(role);
                assert!(f.size > 0 && !f.name.contains('/'), "{f:?}");
            }
            assert_eq!(Metadata::parse(&m.to_text()).ok(), Some(m.clone()));
        }
        for name in text.lines() {
            if let Some((v, _, _)) = bpi_formats::slots::parse_uki_name(name) {
                assert!(!v.is_empty());
            }
        }
    }
});

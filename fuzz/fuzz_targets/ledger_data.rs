//! A record's data, canonicalised: never a panic, and what it accepts is a
//! fixed point (the canonical form of the canonical form is itself), so a
//! verifier that re-canonicalises agrees with the stored bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(canonical) = bpi_ledger::block::canonical_json(text) {
        assert_eq!(bpi_ledger::block::canonical_json(&canonical).unwrap(), canonical);
    }
    for category in ["bridge", "network", "settings", "trust", "user"] {
        let _ = bpi_ledger::plugins::Plugins::default().prepare(category, text);
    }
});

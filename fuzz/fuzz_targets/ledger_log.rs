//! The ledger's log reader (frames, block decoding, chain and hash checks)
//! over arbitrary bytes: it must never panic, and what it accepts must be
//! self-consistent (offsets inside the input, increasing, one leaf a block).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = bpi_ledger::log::load(data);
    let index = &loaded.index;
    assert_eq!(index.offsets.len(), index.timestamps.len());
    assert_eq!(index.offsets.len(), index.categories.len());
    assert_eq!(index.tree.len(), index.len());
    assert!(index.offsets.windows(2).all(|w| w[0] < w[1]));
    assert!(index.end as usize <= data.len());
    if let Some(p) = &loaded.problem {
        assert_eq!(p.height, index.len() + 1);
    }
});

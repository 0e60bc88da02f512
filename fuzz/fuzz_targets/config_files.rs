//! Every configuration loader (the Meta-RIB, intent policies, drx-data.toml)
//! over arbitrary text: an error naming the file, never a panic or a stack
//! overflow (a bad file must not crash-loop a daemon at start).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for result in [
        bpi_drx_control::model::Topology::parse(text, "fuzz.toml").map(|_| ()),
        bpi_drx_control::policy::parse(text, "fuzz.toml").map(|_| ()),
        bpi_drx_data::config::parse(text, "fuzz.toml").map(|_| ()),
    ] {
        if let Err(e) = result {
            assert!(e.to_string().starts_with("fuzz.toml"), "an error that does not name the file: {e}");
        }
    }
});

//! First-boot provisioning over arbitrary documents (a cloud-init drive is
//! untrusted input read as root): user-data, network-config and meta-data,
//! split from one input at 0xff bytes. Never a panic; every finding names
//! its file and a line inside it; a set that passes plans without error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff).map(|p| String::from_utf8_lossy(p).into_owned());
    let docs = bpi_provision::source::Documents {
        source: "fuzz".into(),
        prefix: "cidata:".into(),
        user_data: parts.next(),
        network_config: parts.next(),
        meta_data: parts.next(),
        vendor_data: parts.next(),
        ..Default::default()
    };
    let c = bpi_provision::check::check(&docs);
    for f in c.errors.iter().chain(&c.notes) {
        let name = f.file.strip_prefix("cidata:").unwrap_or_else(|| panic!("a finding names no file of the set: {f}"));
        let text = docs.get(name).unwrap_or_else(|| panic!("a finding names a file that is not there: {f}"));
        // Lines as YAML counts them: a lone CR ends a line too.
        let lines = 1 + text.matches('\n').count() + text.match_indices('\r').filter(|(i, _)| text.as_bytes().get(i + 1) != Some(&b'\n')).count();
        assert!(f.line >= 1 && f.line <= lines + 1, "{f}: line outside the file ({lines} lines)");
    }
    if c.ok() {
        for a in bpi_provision::plan::plan(&c) {
            let _ = (a.describe(), a.record());
        }
    }
});

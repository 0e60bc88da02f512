//! The keys a node trusts for updates: signed-note verifier keys, one per
//! `*.pub` file in the image's directory and the operator's under /etc.

use std::path::Path;

use anyhow::{Context, Result};
use bpi_formats::update::{Metadata, Refusal, METADATA_MAX};
use bpi_ledger::checkpoint::NoteVerifier;

pub fn load(dirs: &[&Path]) -> Result<Vec<NoteVerifier>> {
    let mut keys = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "pub")).collect();
        paths.sort();
        for p in paths {
            let text = bpi_support::fsmode::read_small(&p, 4096).with_context(|| format!("reading {}", p.display()))?;
            let text = String::from_utf8_lossy(&text);
            keys.push(NoteVerifier::parse_vkey(text.trim()).with_context(|| format!("{} is not an update key", p.display()))?);
        }
    }
    Ok(keys)
}

/// Checks the metadata note's signature by one of `keys` and parses it.
pub fn open(note: &[u8], keys: &[NoteVerifier]) -> Result<Metadata> {
    anyhow::ensure!(!keys.is_empty(), "this node trusts no update key (none in {:?})", bpi_formats::update::KEY_DIRS);
    anyhow::ensure!(note.len() as u64 <= METADATA_MAX, "the update metadata is {} bytes, more than {METADATA_MAX}", note.len());
    let text = std::str::from_utf8(note).context("the update metadata is not UTF-8")?;
    let body = keys.iter().find_map(|k| k.open(text).ok()).ok_or_else(|| {
        let names: Vec<String> = keys.iter().map(|k| k.to_vkey()).collect();
        anyhow::anyhow!("the update metadata is not signed by a key this node trusts ({})", names.join(", "))
    })?;
    Metadata::parse(&body).map_err(|e: Refusal| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpi_ledger::checkpoint::NoteSigner;

    #[test]
    fn only_trusted_keys_open_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let ours = NoteSigner::from_seed("bpi-os.test/update", [1; 32]).unwrap();
        let theirs = NoteSigner::from_seed("bpi-os.test/update", [2; 32]).unwrap();
        std::fs::write(dir.path().join("ours.pub"), ours.verifier().to_vkey() + "\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = load(&[dir.path(), Path::new("/nonexistent")]).unwrap();
        assert_eq!(keys.len(), 1);
        let m = bpi_formats::update::Metadata {
            format: 1,
            name: "bpi-os".into(),
            version: "1.0.0".into(),
            architecture: std::env::consts::ARCH.into(),
            root_hash: "ab".repeat(32),
            issued: 1,
            expires: 2,
            files: ["root", "verity", "uki"]
                .iter()
                .map(|r| bpi_formats::update::BundleFile { role: serde_json::from_value(serde_json::json!(r)).unwrap(), name: format!("f.{r}"), size: 1, sha256: "0".repeat(64) })
                .collect(),
        };
        let good = ours.sign_text(&m.to_text()).unwrap();
        assert_eq!(open(good.as_bytes(), &keys).unwrap(), m);
        let bad = theirs.sign_text(&m.to_text()).unwrap();
        assert!(open(bad.as_bytes(), &keys).unwrap_err().to_string().contains("not signed by a key this node trusts"));
        let altered = good.replace("1.0.0", "9.0.0");
        assert!(open(altered.as_bytes(), &keys).is_err());
        assert!(open(good.as_bytes(), &[]).unwrap_err().to_string().contains("trusts no update key"));
    }
}

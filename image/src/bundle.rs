//! The update bundle a build writes beside the image: the root erofs, its
//! verity tree and the UKI under versioned names, the signed metadata
//! ([`bpi_formats::update`]) and a SHA256SUMS, so the directory can be served
//! as it is (and reads as a systemd-sysupdate source directory).

use std::path::Path;

use anyhow::{Context, Result};
use bpi_formats::update::{BundleFile, Metadata, Role, FORMAT, METADATA};
use bpi_ledger::checkpoint::NoteSigner;
use bpi_support::digest;

/// The bundle's directory under the image's output directory.
pub const DIR: &str = "update";

/// The development signing key's name (a signed-note key name).
pub const DEV_KEY_NAME: &str = "bpi-os.dev/update";

/// Where the key that signs update bundles is kept: `$BPI_KEY_DIR/update.key`,
/// else ~/.config/bpi-os/keys/update.key (not in the target or cache
/// directory, so the reproducibility check's second build signs with the
/// same key, and the update test can sign its bad bundles).
pub fn key_path() -> Result<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("BPI_KEY_DIR") {
        return Ok(std::path::PathBuf::from(d).join("update.key"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set BPI_KEY_DIR to where the update signing key is kept")?;
    Ok(std::path::PathBuf::from(home).join(".config/bpi-os/keys/update.key"))
}

pub struct BundleInputs<'a> {
    pub version: &'a str,
    pub root_hash: &'a str,
    pub root: &'a Path,
    pub verity: &'a Path,
    pub uki: &'a Path,
    pub valid_secs: u64,
}

pub fn file_names(version: &str) -> [(Role, String); 3] {
    [
        (Role::Root, format!("bpi-os_{version}.root.erofs")),
        (Role::Verity, format!("bpi-os_{version}.root.verity")),
        (Role::Uki, bpi_formats::slots::uki_name(version, None)),
    ]
}

/// Writes the bundle into `out` (replaced whole: the metadata last, so a
/// server never offers metadata whose files are not there yet).
pub fn write(inp: &BundleInputs, signer: &NoteSigner, out: &Path) -> Result<Metadata> {
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut files = Vec::new();
    let mut sums = String::new();
    for ((role, name), src) in file_names(inp.version).into_iter().zip([inp.root, inp.verity, inp.uki]) {
        let dest = tmp.join(&name);
        std::fs::copy(src, &dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        let sha256 = digest::sha256_file(&dest)?;
        sums.push_str(&format!("{sha256}  {name}\n"));
        files.push(BundleFile { role, name, size: std::fs::metadata(&dest)?.len(), sha256 });
    }
    let issued = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let metadata = Metadata {
        format: FORMAT,
        name: "bpi-os".into(),
        version: inp.version.to_string(),
        architecture: std::env::consts::ARCH.into(),
        root_hash: inp.root_hash.to_string(),
        issued,
        expires: issued + inp.valid_secs,
        files,
    };
    metadata.check_offer(issued, "0.0.0", true).map_err(|e| anyhow::anyhow!("the bundle's own metadata: {e}"))?;
    std::fs::write(tmp.join("SHA256SUMS"), sums)?;
    std::fs::write(tmp.join(METADATA), sign(&metadata, signer)?)?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&tmp, out).with_context(|| format!("moving the bundle to {}", out.display()))?;
    Ok(metadata)
}

/// The metadata as a signed note.
pub fn sign(m: &Metadata, signer: &NoteSigner) -> Result<String> {
    Ok(signer.sign_text(&m.to_text())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpi_ledger::checkpoint::NoteVerifier;

    #[test]
    fn bundle_metadata_verifies_and_names_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str, b: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let (root, verity, uki) = (f("r", b"root"), f("v", b"verity"), f("u", b"uki"));
        let signer = NoteSigner::from_seed("bpi-os.test/update", [7; 32]).unwrap();
        let out = dir.path().join("update");
        let inp = BundleInputs { version: "1.2.3", root_hash: &"cd".repeat(32), root: &root, verity: &verity, uki: &uki, valid_secs: 3600 };
        let m = write(&inp, &signer, &out).unwrap();
        let note = std::fs::read_to_string(out.join(METADATA)).unwrap();
        let body = NoteVerifier::parse_vkey(&signer.verifier().to_vkey()).unwrap().open(&note).unwrap();
        assert_eq!(Metadata::parse(&body).unwrap(), m);
        assert_eq!(m.file(Role::Uki).name, "bpi-os_1.2.3.efi");
        assert_eq!(m.file(Role::Root).sha256, digest::sha256_bytes(b"root"));
        assert_eq!(std::fs::read(out.join("bpi-os_1.2.3.root.verity")).unwrap(), b"verity");
        let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
        assert_eq!(sums.lines().count(), 3);
        assert_eq!(m.expires - m.issued, 3600);
    }
}

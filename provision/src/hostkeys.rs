//! SSH host keys: made on first boot in /etc/ssh, which lives on the data
//! partition (the /etc overlay's upper layer), never in the image; two
//! machines from one image never share a key.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The kinds made (RSA is left out: generating it under emulation costs seconds).
pub const KINDS: &[&str] = &["ed25519", "ecdsa"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostKey {
    pub kind: String,
    pub fingerprint: String,
}

/// Makes the host keys that are missing; returns the kinds it made.
pub fn ensure(dir: &Path) -> Result<Vec<String>> {
    let mut made = Vec::new();
    for kind in KINDS {
        let key = dir.join(format!("ssh_host_{kind}_key"));
        if key.exists() {
            continue;
        }
        bpi_support::fsmode::create_dirs(dir, 0o755)?;
        bpi_support::Cmd::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", "", "-f"]).arg(&key).run()?;
        made.push(kind.to_string());
    }
    Ok(made)
}

/// The fingerprints (SHA256, as ssh prints them) of the public host keys in `dir`.
pub fn fingerprints(dir: &Path) -> Result<Vec<HostKey>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    for n in names.iter().filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub")) {
        let p = dir.join(n);
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let key = ssh_key::PublicKey::from_openssh(text.trim()).with_context(|| format!("{} is not a public key", p.display()))?;
        out.push(HostKey { kind: key.algorithm().to_string(), fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_fingerprinted_as_ssh_keygen_does() {
        if !bpi_support::skip::needs_program("ssh-keygen", "openssh-client") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        assert_eq!(ensure(t.path()).unwrap(), ["ed25519", "ecdsa"]);
        assert!(ensure(t.path()).unwrap().is_empty(), "keys were made twice");
        let fps = fingerprints(t.path()).unwrap();
        assert_eq!(fps.len(), 2);
        let want = bpi_support::Cmd::new("ssh-keygen").arg("-lf").arg(t.path().join("ssh_host_ed25519_key.pub")).output().unwrap();
        let ed = fps.iter().find(|k| k.kind == "ssh-ed25519").unwrap();
        assert!(want.contains(&ed.fingerprint), "{want} vs {ed:?}");
    }
}

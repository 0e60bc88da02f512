//! The signed PCR 11 policy of a signed UKI (systemd's "signed PCR
//! policies", systemd-measure(1)). systemd-stub measures the UKI's sections
//! into PCR 11 and systemd-pcrphase adds the boot phases; the build signs
//! what PCR 11 will hold with the key set's PCR key, and the UKI carries the
//! signatures (`.pcrsig`) and the public key (`.pcrpkey`). A store sealed to
//! that public key (TPM2_PolicyAuthorize) unlocks under any UKI the key
//! signed, so an update does not reseal it.
//!
//! systemd 252's systemd-measure computes the policy digest in a TPM trial
//! session, so the build runs it against a software TPM (swtpm) that lives
//! for this one step; the digest does not depend on the TPM, and RSA PKCS#1
//! v1.5 signatures are deterministic, so the output is reproducible. The
//! measure tool is the image's own (Debian's systemd 252, the version whose
//! stub and cryptsetup read the result), run with the image's libraries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bpi_support::Cmd;

/// The PCR-11 phases in which the store is unlocked. The initrd measures no
/// phase (dracut leaves systemd-pcrphase out); the real root adds `sysinit`
/// before basic.target and `ready` later, and bpi-store.service (or an
/// operator's `bpi-os store unlock`) can run in either.
pub const PHASES: [&str; 2] = ["sysinit", "sysinit:ready"];

pub struct Sections<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a Path,
    pub os_release: &'a Path,
    /// The public key (PEM) that goes into `.pcrpkey`.
    pub public_key: &'a Path,
}

/// Signs the PCR 11 values the UKI made of `s` will produce, for each of
/// [`PHASES`], with `private_key`; returns the JSON for `.pcrsig`.
pub fn sign(root: &Path, s: &Sections, private_key: &Path, work: &Path) -> Result<PathBuf> {
    let out = work.join("tpm2-pcr-signature.json");
    let state = work.join("swtpm");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let sock = state.join("tpm.sock");
    let mut swtpm = Cmd::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}.ctrl", sock.display()))
        .spawn_daemon()?;
    swtpm.wait_for_path(&sock, Duration::from_secs(10))?;
    let libs = ["usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/systemd"].map(|d| root.join(d).display().to_string()).join(":");
    let mut cmd = Cmd::new(root.join("lib64/ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(libs)
        .arg(root.join("usr/lib/systemd/systemd-measure"))
        .arg("sign")
        .arg(format!("--tpm2-device=swtpm:path={}", sock.display()))
        .arg("--bank=sha256")
        .arg(path_arg("--linux", s.kernel))
        .arg(path_arg("--initrd", s.initrd))
        .arg(path_arg("--cmdline", s.cmdline))
        .arg(path_arg("--osrel", s.os_release))
        .arg(path_arg("--pcrpkey", s.public_key))
        .arg(path_arg("--public-key", s.public_key))
        .arg(path_arg("--private-key", private_key));
    for p in PHASES {
        cmd = cmd.arg(format!("--phase={p}"));
    }
    let json = cmd.output().context("systemd-measure could not sign the UKI's PCR 11 policy")?;
    drop(swtpm);
    let _ = std::fs::remove_dir_all(&state);
    check(&json)?;
    std::fs::write(&out, json.trim_end())?;
    Ok(out)
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("{flag}={}", p.display())
}

/// The output names PCR 11 in the SHA-256 bank, once per phase.
fn check(json: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(json).context("systemd-measure's output is not JSON")?;
    let entries = v["sha256"].as_array().context("systemd-measure signed no SHA-256 policy")?;
    ensure!(entries.len() == PHASES.len(), "systemd-measure signed {} policies, not one for each of {} phases: {json}", entries.len(), PHASES.len());
    for e in entries {
        ensure!(e["pcrs"] == serde_json::json!([11]) && e["sig"].as_str().is_some_and(|s| !s.is_empty()), "an unexpected policy from systemd-measure: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_must_sign_pcr_11_for_every_phase() {
        let one = r#"{"sha256":[{"pcrs":[11],"pkfp":"ab","pol":"cd","sig":"ef"}]}"#;
        assert!(check(one).unwrap_err().to_string().contains("not one for each of 2 phases"));
        let two = r#"{"sha256":[{"pcrs":[11],"pkfp":"ab","pol":"cd","sig":"ef"},{"pcrs":[11],"pkfp":"ab","pol":"ce","sig":"eg"}]}"#;
        check(two).unwrap();
        let other = r#"{"sha256":[{"pcrs":[7],"pkfp":"ab","pol":"cd","sig":"ef"},{"pcrs":[11],"pkfp":"ab","pol":"ce","sig":"eg"}]}"#;
        assert!(check(other).is_err());
        assert!(check("nope").is_err());
    }
}

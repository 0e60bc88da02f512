//! Secure Boot with the operator's own keys: a key set (PK, KEK, db, each an
//! X.509 certificate and its key, plus the EFI signature lists and the
//! authenticated variable updates firmware takes), and Authenticode signing
//! of systemd-boot and the UKIs with the db key.
//!
//! The tools are Debian's: openssl makes the keys, efitools turns the
//! certificates into EFI_SIGNATURE_LISTs and signs them as time-based
//! authenticated variables (UEFI 2.x, EFI_VARIABLE_AUTHENTICATION_2: PK
//! self-signed, KEK by PK, db by KEK), sbsigntool signs the PE images
//! (Authenticode, PKCS#7 with RSA-2048/SHA-256). systemd-boot enrolls the
//! `.auth` files from the ESP when the firmware is in Setup Mode.
//!
//! Beside them, a PCR key (RSA-2048, no certificate): it signs the UKI's
//! expected PCR 11 values (pcr.rs), and the store's TPM2 seal trusts it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bpi_support::{digest, Cmd};

/// The three keys, in the order firmware must enroll them (db and KEK while
/// still in Setup Mode; PK last, which leaves it).
pub const KEYS: [&str; 3] = ["db", "KEK", "PK"];

/// Where systemd-boot looks for a key set to enroll; `auto` is the one it
/// enrolls by itself under `secure-boot-enroll force`.
pub const ESP_KEYS_DIR: &str = "loader/keys/auto";

/// The PCR policy key's files: the private key and its public half (PEM).
const PCR_KEY: &str = "tpm2-pcr.key";
const PCR_PUBLIC_KEY: &str = "tpm2-pcr.pem";

/// The owner GUID of our signature list entries (efitools' -g).
const OWNER_FILE: &str = "GUID.txt";

/// A key set on disk, as `cargo xtask keys` writes it.
#[derive(Clone, Debug)]
pub struct KeySet {
    pub dir: PathBuf,
}

impl KeySet {
    /// Opens a key set, refusing one with a file missing.
    pub fn open(dir: &Path) -> Result<KeySet> {
        let set = KeySet { dir: dir.to_path_buf() };
        let files = KEYS.iter().flat_map(|k| [set.cert(k), set.key(k), set.auth(k)]).chain([set.pcr_key(), set.pcr_public_key()]);
        let missing: Vec<String> = files.filter(|f| !f.is_file()).map(|f| f.display().to_string()).collect();
        if !missing.is_empty() {
            bail!(
                "{} is not a complete Secure Boot key set (missing or not regular files: {}): make one with `cargo xtask keys --out {}`",
                dir.display(),
                missing.join(", "),
                dir.display()
            );
        }
        Ok(set)
    }

    pub fn cert(&self, k: &str) -> PathBuf {
        self.dir.join(format!("{k}.crt"))
    }
    pub fn key(&self, k: &str) -> PathBuf {
        self.dir.join(format!("{k}.key"))
    }
    pub fn esl(&self, k: &str) -> PathBuf {
        self.dir.join(format!("{k}.esl"))
    }
    pub fn auth(&self, k: &str) -> PathBuf {
        self.dir.join(format!("{k}.auth"))
    }
    pub fn pcr_key(&self) -> PathBuf {
        self.dir.join(PCR_KEY)
    }
    pub fn pcr_public_key(&self) -> PathBuf {
        self.dir.join(PCR_PUBLIC_KEY)
    }

    /// SHA-256 of the db certificate (DER), the name of what signed an image.
    pub fn db_fingerprint(&self) -> Result<String> {
        let der = Cmd::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(self.cert("db")).output_bytes()?;
        Ok(digest::sha256_bytes(&der))
    }

    /// Signs a PE image (systemd-boot, a UKI) in place with the db key.
    /// OpenSSL puts the current time in the PKCS#7 signingTime attribute;
    /// sbsign runs under faketime, frozen at the build's epoch, so the same
    /// key gives the same bytes (RSA PKCS#1 v1.5 signatures are deterministic).
    pub fn sign(&self, pe: &Path, epoch: u64) -> Result<()> {
        let signed = pe.with_extension("signed");
        let _ = std::fs::remove_file(&signed);
        let at = Cmd::new("date").args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d %H:%M:%S"]).env("TZ", "UTC").output()?;
        Cmd::new("faketime")
            .arg("-f")
            .arg(at.trim())
            .arg("sbsign")
            .env("TZ", "UTC")
            .arg("--key")
            .arg(self.key("db"))
            .arg("--cert")
            .arg(self.cert("db"))
            .arg("--output")
            .arg(&signed)
            .arg(pe)
            .run()
            .with_context(|| format!("sbsign could not sign {}", pe.display()))?;
        Cmd::new("sbverify").arg("--cert").arg(self.cert("db")).arg(&signed).run().with_context(|| format!("the signature sbsign put on {} does not verify", pe.display()))?;
        std::fs::rename(&signed, pe)?;
        Ok(())
    }
}

/// An authenticated append to db (signed by KEK) adding a new certificate,
/// made in `work`: what rotating the db key starts with. Firmware measures
/// db into PCR 7, so a store sealed before it no longer unseals.
pub fn db_append_update(set: &KeySet, work: &Path, cn: &str) -> Result<PathBuf> {
    let (key, cert, esl, auth) = (work.join("extra-db.key"), work.join("extra-db.crt"), work.join("extra-db.esl"), work.join("extra-db-append.auth"));
    let guid = std::fs::read_to_string(set.dir.join(OWNER_FILE))?.trim().to_string();
    new_cert(cn, &key, &cert, &esl, &guid)?;
    Cmd::new("sign-efi-sig-list").args(["-a", "-g"]).arg(&guid).arg("-k").arg(set.key("KEK")).arg("-c").arg(set.cert("KEK")).arg("db").arg(&esl).arg(&auth).run()?;
    Ok(auth)
}

/// A new RSA-2048 certificate valid for ten years, its key (mode 0600) and
/// the certificate as an EFI signature list owned by `guid`.
fn new_cert(cn: &str, key: &Path, cert: &Path, esl: &Path, guid: &str) -> Result<()> {
    Cmd::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650"])
        .arg("-subj")
        .arg(format!("/CN={cn}/"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .run()
        .with_context(|| format!("openssl could not make the key for {cn}"))?;
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Cmd::new("cert-to-efi-sig-list").arg("-g").arg(guid).arg(cert).arg(esl).run()?;
    Ok(())
}

/// Makes a development key set in `dir` (which must not hold one): RSA-2048
/// certificates valid for ten years, named after `owner`.
pub fn make_keys(dir: &Path, owner: &str) -> Result<KeySet> {
    if dir.join("PK.key").exists() {
        bail!("{} already holds a key set; remove it first to make a new one (machines enrolled with it would refuse images signed by another)", dir.display());
    }
    bpi_support::fsmode::create_dirs(dir, 0o700)?;
    let set = KeySet { dir: dir.to_path_buf() };
    let guid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?.trim().to_string();
    std::fs::write(dir.join(OWNER_FILE), format!("{guid}\n"))?;
    for k in KEYS {
        new_cert(&format!("{owner} {k}"), &set.key(k), &set.cert(k), &set.esl(k), &guid)?;
    }
    // Each list signed by the key above it; PK by itself.
    for (k, signer) in [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")] {
        Cmd::new("sign-efi-sig-list")
            .arg("-g")
            .arg(&guid)
            .arg("-k")
            .arg(set.key(signer))
            .arg("-c")
            .arg(set.cert(signer))
            .arg(k)
            .arg(set.esl(k))
            .arg(set.auth(k))
            .run()
            .with_context(|| format!("sign-efi-sig-list could not sign the {k} list"))?;
    }
    Cmd::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(set.pcr_key()).run()?;
    std::fs::set_permissions(set.pcr_key(), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Cmd::new("openssl").args(["pkey", "-pubout", "-in"]).arg(set.pcr_key()).arg("-out").arg(set.pcr_public_key()).run()?;
    KeySet::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_key_set_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.crt"), b"x").unwrap();
        let err = KeySet::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a complete Secure Boot key set") && err.contains("PK.auth") && err.contains("tpm2-pcr.key") && err.contains("cargo xtask keys"), "{err}");
    }

    /// Host tools (openssl, efitools, sbsigntool, faketime; `cargo xtask
    /// test` installs them): a key set, and systemd-boot signed twice with it.
    #[test]
    fn keys_sign_reproducibly_and_only_the_db_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let set = make_keys(&dir.path().join("keys"), "bpi-os unit test").unwrap();
        for k in KEYS {
            assert!(std::fs::metadata(set.auth(k)).unwrap().len() > std::fs::metadata(set.esl(k)).unwrap().len(), "{k}.auth holds no signature");
        }
        let again = make_keys(&dir.path().join("keys"), "x").unwrap_err().to_string();
        assert!(again.contains("already holds a key set"), "{again}");

        let stub = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
        let (a, b) = (dir.path().join("a.efi"), dir.path().join("b.efi"));
        std::fs::copy(stub, &a).unwrap();
        std::fs::copy(stub, &b).unwrap();
        set.sign(&a, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        set.sign(&b, 1_700_000_000).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "two signatures with one key and epoch differ");
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(stub).unwrap());
        assert!(Cmd::new("sbverify").arg("--cert").arg(set.cert("KEK")).arg(&a).run().is_err(), "a signature by db verified against KEK");
    }
}

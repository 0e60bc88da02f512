//! A node's identity: an Ed25519 key and an ML-DSA-65 key (FIPS 204), made
//! from two 32-byte seeds. A hybrid signature is both signatures side by
//! side and holds only if both verify: the "AND" composition of
//! draft-ietf-lamps-pq-composite-sigs, so the identity stands while either
//! scheme does. The node id is SHA-256 over a label and both public keys.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use ml_dsa::{EncodedVerifyingKey, MlDsa65};
use sha2::{Digest, Sha256};

pub const ED25519_PUBLIC: usize = 32;
pub const ED25519_SIG: usize = 64;
pub const MLDSA_PUBLIC: usize = 1952;
pub const MLDSA_SIG: usize = 3309;
/// The public identity as carried in the Meta-RIB: Ed25519 then ML-DSA-65.
pub const PUBLIC_LEN: usize = ED25519_PUBLIC + MLDSA_PUBLIC;
pub const HYBRID_SIG_LEN: usize = ED25519_SIG + MLDSA_SIG;
/// FIPS 204's context string: binds every ML-DSA signature to this protocol.
const MLDSA_CONTEXT: &[u8] = b"bpi-qlock v1";
const NODE_ID_LABEL: &[u8] = b"bpi-qlock node id v1";
/// The private file: the two seeds, nothing else.
const SECRET_LEN: usize = 64;
pub const IDENTITY_FILE: &str = "qlock-identity.key";

/// Which half of a hybrid signature failed, for refusals that say why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the Ed25519 signature does not verify")]
    Ed25519,
    #[error("the ML-DSA-65 signature does not verify")]
    MlDsa,
    #[error("the signature is {0} bytes, not {HYBRID_SIG_LEN}")]
    Length(usize),
}

pub struct Identity {
    ed: ed25519_dalek::SigningKey,
    ml: ml_dsa::SigningKey<MlDsa65>,
    seeds: [u8; SECRET_LEN],
    public: PublicIdentity,
}

#[derive(Clone)]
pub struct PublicIdentity {
    bytes: Vec<u8>,
    ed: ed25519_dalek::VerifyingKey,
    ml: ml_dsa::VerifyingKey<MlDsa65>,
}

/// Two identities are the same when their bytes are.
impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicIdentity {}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.node_id())
    }
}

/// The private keys never print.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public.node_id())
    }
}

impl Identity {
    /// From the two seeds: Ed25519's secret key, then ML-DSA's ξ.
    pub fn from_seeds(seeds: [u8; SECRET_LEN]) -> Identity {
        let ed_seed: [u8; 32] = seeds[..32].try_into().expect("32 bytes");
        let ml_seed: [u8; 32] = seeds[32..].try_into().expect("32 bytes");
        let ed = ed25519_dalek::SigningKey::from_bytes(&ed_seed);
        let ml = ml_dsa::SigningKey::<MlDsa65>::from_seed(&ml_seed.into());
        let mut bytes = ed.verifying_key().to_bytes().to_vec();
        bytes.extend_from_slice(&ml.expanded_key().verifying_key().encode());
        let public = PublicIdentity { bytes, ed: ed.verifying_key(), ml: ml.expanded_key().verifying_key() };
        Identity { ed, ml, seeds, public }
    }

    /// A new identity from the operating system's random source.
    pub fn generate() -> Result<Identity> {
        let mut seeds = [0u8; SECRET_LEN];
        getrandom::fill(&mut seeds).map_err(|e| anyhow::anyhow!("the random source failed: {e}"))?;
        Ok(Identity::from_seeds(seeds))
    }

    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Ed25519 (RFC 8032) and hedged ML-DSA-65 (FIPS 204 Algorithm 2) over the same message.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut out = self.ed.sign(msg).to_bytes().to_vec();
        let ml = self
            .ml
            .expanded_key()
            .sign_randomized(msg, MLDSA_CONTEXT, &mut getrandom::SysRng)
            .expect("ML-DSA signing: a short context and the system's random source do not fail");
        out.extend_from_slice(&ml.encode());
        out
    }

    /// Writes the seeds, 0600, atomically, into `dir` (made 0700).
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        bpi_support::fsmode::create_dirs(dir, 0o700).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(IDENTITY_FILE);
        bpi_support::fsmode::write_atomic(&path, &self.seeds, 0o600).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Reads the seeds back; refuses a file any other user could read.
    pub fn load(path: &Path) -> Result<Identity> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            bail!("{}: mode {:o} lets others read the node's private keys; it must be 0600", path.display(), meta.mode() & 0o777);
        }
        let bytes = bpi_support::fsmode::read_small(path, SECRET_LEN as u64 + 1).with_context(|| format!("reading {}", path.display()))?;
        let seeds: [u8; SECRET_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{}: {} bytes, not the {SECRET_LEN} of an identity", path.display(), bytes.len()))?;
        Ok(Identity::from_seeds(seeds))
    }
}

impl PublicIdentity {
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicIdentity> {
        if bytes.len() != PUBLIC_LEN {
            bail!("a public identity is {PUBLIC_LEN} bytes (Ed25519 then ML-DSA-65), not {}", bytes.len());
        }
        let ed = ed25519_dalek::VerifyingKey::from_bytes(bytes[..ED25519_PUBLIC].try_into().expect("32 bytes"))
            .map_err(|_| anyhow::anyhow!("its Ed25519 key is not a point on the curve"))?;
        let enc = EncodedVerifyingKey::<MlDsa65>::try_from(&bytes[ED25519_PUBLIC..]).expect("length checked above");
        let ml = ml_dsa::VerifyingKey::<MlDsa65>::decode(&enc);
        Ok(PublicIdentity { bytes: bytes.to_vec(), ed, ml })
    }

    pub fn from_base64(text: &str) -> Result<PublicIdentity> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).context("the identity is not base64")?;
        PublicIdentity::from_bytes(&bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    pub fn node_id_bytes(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(NODE_ID_LABEL);
        h.update(&self.bytes);
        h.finalize().into()
    }

    /// Hex of [`Self::node_id_bytes`].
    pub fn node_id(&self) -> String {
        hex::encode(self.node_id_bytes())
    }

    /// Both halves must hold; the error names the first that does not.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SigError> {
        if sig.len() != HYBRID_SIG_LEN {
            return Err(SigError::Length(sig.len()));
        }
        let ed = ed25519_dalek::Signature::from_bytes(sig[..ED25519_SIG].try_into().expect("64 bytes"));
        self.ed.verify(msg, &ed).map_err(|_| SigError::Ed25519)?;
        let ml = ml_dsa::Signature::<MlDsa65>::try_from(&sig[ED25519_SIG..]).map_err(|_| SigError::MlDsa)?;
        if !self.ml.verify_with_context(msg, MLDSA_CONTEXT, &ml) {
            return Err(SigError::MlDsa);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(n: u8) -> Identity {
        Identity::from_seeds([n; SECRET_LEN])
    }

    #[test]
    fn sizes_are_the_standards() {
        let id = fixed(1);
        assert_eq!(id.public().bytes().len(), PUBLIC_LEN);
        assert_eq!(PUBLIC_LEN, 1984);
        assert_eq!(id.sign(b"m").len(), HYBRID_SIG_LEN);
    }

    #[test]
    fn both_halves_must_verify() {
        let (a, b) = (fixed(1), fixed(2));
        let sig = a.sign(b"transcript");
        a.public().verify(b"transcript", &sig).unwrap();
        assert_eq!(a.public().verify(b"transcripT", &sig), Err(SigError::Ed25519));
        // Another node's signature fails under this node's keys.
        assert_eq!(a.public().verify(b"transcript", &b.sign(b"transcript")), Err(SigError::Ed25519));
        // Either half alone, with the other half taken from another node, fails.
        let other = b.sign(b"transcript");
        let mut ed_only = sig[..ED25519_SIG].to_vec();
        ed_only.extend_from_slice(&other[ED25519_SIG..]);
        assert_eq!(a.public().verify(b"transcript", &ed_only), Err(SigError::MlDsa));
        let mut ml_only = other[..ED25519_SIG].to_vec();
        ml_only.extend_from_slice(&sig[ED25519_SIG..]);
        assert_eq!(a.public().verify(b"transcript", &ml_only), Err(SigError::Ed25519));
        assert_eq!(a.public().verify(b"transcript", &sig[..100]), Err(SigError::Length(100)));
        let mut flipped = sig.clone();
        flipped[ED25519_SIG + 1000] ^= 1;
        assert_eq!(a.public().verify(b"transcript", &flipped), Err(SigError::MlDsa));
    }

    #[test]
    fn the_public_identity_round_trips_and_names_the_node() {
        let id = fixed(3);
        let back = PublicIdentity::from_base64(&id.public().to_base64()).unwrap();
        assert_eq!(&back, id.public());
        assert_eq!(back.node_id(), id.public().node_id());
        assert_ne!(fixed(4).public().node_id(), id.public().node_id());
        assert!(PublicIdentity::from_bytes(&[0; 10]).unwrap_err().to_string().contains("1984 bytes"));
        assert!(PublicIdentity::from_base64("not base64!").is_err());
    }

    #[test]
    fn the_private_file_is_0600_and_refused_otherwise() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate().unwrap();
        let path = id.save(&dir.path().join("pq-crypto")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(Identity::load(&path).unwrap().public(), id.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Identity::load(&path).unwrap_err().to_string().contains("must be 0600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [0u8; 10]).unwrap();
        assert!(Identity::load(&path).unwrap_err().to_string().contains("10 bytes"));
    }
}

//! The hybrid key share X25519MLKEM768 of draft-ietf-tls-ecdhe-mlkem: the
//! opener sends an ML-KEM-768 encapsulation key and an X25519 public key;
//! the answer is an ML-KEM ciphertext and an X25519 public key; the shared
//! secret is ML-KEM's shared secret followed by X25519's. The secret holds
//! while either problem stays hard.

use anyhow::{bail, Result};
use ml_kem::kem::{Decapsulate, Encapsulate, KeyExport};
use ml_kem::{DecapsulationKey, EncapsulationKey, MlKem768};

pub const MLKEM_PUBLIC: usize = 1184;
pub const MLKEM_CIPHERTEXT: usize = 1088;
pub const X25519_PUBLIC: usize = 32;
pub const OPEN_SHARE: usize = MLKEM_PUBLIC + X25519_PUBLIC;
pub const ANSWER_SHARE: usize = MLKEM_CIPHERTEXT + X25519_PUBLIC;
/// TLS's code point for X25519MLKEM768, used as the suite on the wire.
pub const SUITE_X25519MLKEM768: u16 = 0x11EC;
/// TLS's code point for plain X25519: offered only by a downgraded peer.
pub const SUITE_X25519: u16 = 0x001D;

/// The two shared secrets, 64 bytes: ML-KEM's, then X25519's.
pub struct Secret(pub [u8; 64]);

/// The opener's half: its private keys until the answer comes.
pub struct Opening {
    dk: DecapsulationKey<MlKem768>,
    x: x25519_dalek::StaticSecret,
    pub share: Vec<u8>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the random source failed: {e}"))?;
    Ok(b)
}

/// ML-KEM-768's encapsulation key for a 64-byte seed (d || z, FIPS 203 KeyGen_internal).
pub fn mlkem_public_from_seed(seed: [u8; 64]) -> Vec<u8> {
    DecapsulationKey::<MlKem768>::from_seed(seed.into()).encapsulation_key().to_bytes().to_vec()
}

/// A low-order X25519 point gives an all-zero secret any attacker knows.
fn contributory(shared: x25519_dalek::SharedSecret) -> Result<[u8; 32]> {
    if !shared.was_contributory() {
        bail!("the peer's X25519 share is a low-order point");
    }
    Ok(shared.to_bytes())
}

impl Opening {
    pub fn new() -> Result<Opening> {
        let dk = DecapsulationKey::<MlKem768>::from_seed(random::<64>()?.into());
        let x = x25519_dalek::StaticSecret::from(random::<32>()?);
        let mut share = dk.encapsulation_key().to_bytes().to_vec();
        share.extend_from_slice(x25519_dalek::PublicKey::from(&x).as_bytes());
        Ok(Opening { dk, x, share })
    }

    /// The secret from the answer's share.
    pub fn finish(self, answer: &[u8]) -> Result<Secret> {
        if answer.len() != ANSWER_SHARE {
            bail!("the answer's key share is {} bytes, not {ANSWER_SHARE}", answer.len());
        }
        let kem = self.dk.decapsulate_slice(&answer[..MLKEM_CIPHERTEXT]).map_err(|_| anyhow::anyhow!("ML-KEM ciphertext of the wrong length"))?;
        let peer: [u8; 32] = answer[MLKEM_CIPHERTEXT..].try_into().expect("32 bytes");
        let x = contributory(self.x.diffie_hellman(&peer.into()))?;
        Ok(join(&kem, &x))
    }
}

fn join(kem: &[u8], x: &[u8; 32]) -> Secret {
    let mut s = [0u8; 64];
    s[..32].copy_from_slice(kem);
    s[32..].copy_from_slice(x);
    Secret(s)
}

/// The answering side: its share and the secret, from the opener's share.
pub fn answer(open: &[u8]) -> Result<(Vec<u8>, Secret)> {
    if open.len() != OPEN_SHARE {
        bail!("the opener's key share is {} bytes, not {OPEN_SHARE}", open.len());
    }
    let key = open[..MLKEM_PUBLIC].try_into().expect("length checked");
    let ek = EncapsulationKey::<MlKem768>::new(key).map_err(|_| anyhow::anyhow!("the ML-KEM-768 encapsulation key fails FIPS 203's check"))?;
    let (ct, kem) = ek.encapsulate();
    let x = x25519_dalek::StaticSecret::from(random::<32>()?);
    let peer: [u8; 32] = open[MLKEM_PUBLIC..].try_into().expect("32 bytes");
    let secret = join(&kem, &contributory(x.diffie_hellman(&peer.into()))?);
    let mut share = ct.to_vec();
    share.extend_from_slice(x25519_dalek::PublicKey::from(&x).as_bytes());
    Ok((share, secret))
}

/// Plain X25519, key pair and exchange: the reference the benchmark measures against.
pub fn plain_x25519() -> Result<[u8; 32]> {
    let (a, b) = (x25519_dalek::StaticSecret::from(random::<32>()?), x25519_dalek::StaticSecret::from(random::<32>()?));
    let pb = x25519_dalek::PublicKey::from(&b);
    contributory(a.diffie_hellman(&pb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_get_the_same_secret() {
        let o = Opening::new().unwrap();
        assert_eq!(o.share.len(), OPEN_SHARE);
        let (share, r) = answer(&o.share).unwrap();
        assert_eq!(share.len(), ANSWER_SHARE);
        let i = o.finish(&share).unwrap();
        assert_eq!(i.0, r.0);
    }

    #[test]
    fn a_low_order_x25519_share_is_refused() {
        let o = Opening::new().unwrap();
        let mut share = o.share.clone();
        share[MLKEM_PUBLIC..].fill(0);
        assert!(answer(&share).err().unwrap().to_string().contains("low-order"));
        assert!(answer(&share[..100]).err().unwrap().to_string().contains("100 bytes"));
    }

    #[test]
    fn a_changed_ciphertext_gives_another_secret() {
        let o = Opening::new().unwrap();
        let (mut share, r) = answer(&o.share).unwrap();
        share[5] ^= 1;
        // ML-KEM's implicit rejection: no error, a secret the other side does not have.
        assert_ne!(o.finish(&share).unwrap().0, r.0);
    }
}

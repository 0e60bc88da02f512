//! The key schedule: HKDF-SHA256 (RFC 5869) with TLS 1.3's HKDF-Expand-Label
//! (RFC 8446 section 7.1) under the label prefix "qlock " instead of
//! "tls13 ", so no QLock key can equal a TLS key. Rekeying is TLS 1.3's
//! KeyUpdate ratchet (section 7.2): the next key is Expand-Label of the
//! current one with "traffic upd".

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub fn extract(ikm: &[u8]) -> [u8; 32] {
    let (prk, _) = hkdf::Hkdf::<Sha256>::extract(Some(&[0u8; 32]), ikm);
    prk.into()
}

pub fn expand_label(secret: &[u8; 32], label: &str, context: &[u8]) -> [u8; 32] {
    let full = format!("qlock {label}");
    assert!(full.len() <= 255 && context.len() <= 255, "labels and contexts are short");
    let mut info = Vec::with_capacity(4 + full.len() + context.len());
    info.extend_from_slice(&32u16.to_be_bytes());
    info.push(full.len() as u8);
    info.extend_from_slice(full.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let hk = hkdf::Hkdf::<Sha256>::from_prk(secret).expect("a 32-byte PRK");
    let mut out = [0u8; 32];
    hk.expand(&info, &mut out).expect("32 bytes is a valid length");
    out
}

pub fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant time, as HMAC checks must be.
pub fn mac_ok(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    tag.len() == 32 && bool::from(mac(key, parts).ct_eq(tag))
}

/// The next epoch's key.
pub fn next_key(key: &[u8; 32]) -> [u8; 32] {
    expand_label(key, "traffic upd", b"")
}

/// The key of session-control messages (rekey, close) in an epoch.
pub fn control_key(key: &[u8; 32]) -> [u8; 32] {
    expand_label(key, "control", b"")
}

/// What logs and the ledger show of a key: never the key.
pub fn fingerprint(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"bpi-qlock fingerprint v1");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869's test case 1, through the same hkdf crate: Extract with a
    /// salt and Expand, the building blocks expand_label composes.
    #[test]
    fn hkdf_is_rfc5869() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let mut okm = [0u8; 42];
        hk.expand(&info, &mut okm).unwrap();
        assert_eq!(hex::encode(okm), "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    }

    #[test]
    fn labels_and_epochs_give_different_keys() {
        let k = extract(b"secret");
        assert_ne!(expand_label(&k, "a", b""), expand_label(&k, "b", b""));
        assert_ne!(expand_label(&k, "a", b"x"), expand_label(&k, "a", b"y"));
        assert_ne!(next_key(&k), k);
        assert_ne!(next_key(&next_key(&k)), next_key(&k));
        assert!(mac_ok(&k, &[b"a", b"b"], &mac(&k, &[b"ab"])));
        assert!(!mac_ok(&k, &[b"a"], &mac(&k, &[b"b"])));
        assert!(!mac_ok(&k, &[b"a"], &[0; 31]));
    }
}

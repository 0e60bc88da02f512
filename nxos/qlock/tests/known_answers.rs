//! bpi-qlock's ML-DSA-65 identity key and ML-KEM-768 key share, made from
//! the IETF LAMPS drafts' example seeds, are the public keys those drafts
//! publish (tests/vectors/README.md).

use base64::Engine as _;

/// The DER inside a PEM file.
fn pem(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name)).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// A SubjectPublicKeyInfo ends with the BIT STRING of the key: its last `len` bytes.
fn key_of(spki: &[u8], len: usize) -> &[u8] {
    assert!(spki.len() > len);
    &spki[spki.len() - len..]
}

#[test]
fn the_mldsa65_identity_key_is_the_published_one() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    // The private document holds exactly this seed, at its end.
    assert!(pem("ML-DSA-65-seed.priv").ends_with(&seed));
    // An identity whose ML-DSA seed is that one (the Ed25519 half is irrelevant here).
    let mut seeds = [0u8; 64];
    seeds[32..].copy_from_slice(&seed);
    let id = bpi_qlock::identity::Identity::from_seeds(seeds);
    let ours = &id.public().bytes()[bpi_qlock::identity::ED25519_PUBLIC..];
    assert_eq!(ours, key_of(&pem("ML-DSA-65.pub"), bpi_qlock::identity::MLDSA_PUBLIC));
}

#[test]
fn the_mlkem768_key_share_is_the_published_one() {
    let seed: [u8; 64] = std::array::from_fn(|i| i as u8);
    assert!(pem("ML-KEM-768-seed.priv").ends_with(&seed));
    let ek = bpi_qlock::kex::mlkem_public_from_seed(seed);
    assert_eq!(ek.as_slice(), key_of(&pem("ML-KEM-768.pub"), bpi_qlock::kex::MLKEM_PUBLIC));
}

//! Signed checkpoints in the C2SP tlog-checkpoint form (a signed note): the
//! origin, tree size and root hash, signed with Ed25519. An auditor needs only
//! the verifier key (`<name>+<hash>+<base64 key>`) to check one, with this
//! code or any signed-note implementation (golang.org/x/mod/sumdb/note).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::block::Hash;
use crate::error::{LedgerError, Result};

const ALG_ED25519: u8 = 1;
const DASH: &str = "\u{2014} ";

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text that is signed.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }
}

fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    h.finalize()[..4].try_into().expect("4 bytes")
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['+', ' ', '\n']) || name.chars().any(char::is_control) {
        return Err(LedgerError::BadData(format!("key name {name:?} must be non-empty, without '+', spaces or newlines")));
    }
    Ok(())
}

/// A signer: the key name (the log's origin) and the Ed25519 key.
pub struct NoteSigner {
    pub name: String,
    key: SigningKey,
}

/// A verifier: what an auditor holds.
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    pub name: String,
    key: VerifyingKey,
}

impl NoteSigner {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self> {
        check_name(name)?;
        Ok(NoteSigner { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// `PRIVATE+KEY+<name>+<hash>+<base64(alg || seed)>`, the signed-note private key form.
    pub fn to_skey(&self) -> String {
        let mut k = vec![ALG_ED25519];
        k.extend_from_slice(self.key.as_bytes());
        let hash = key_hash(&self.name, self.key.verifying_key().as_bytes());
        format!("PRIVATE+KEY+{}+{}+{}", self.name, hex::encode(hash), B64.encode(k))
    }

    pub fn parse_skey(text: &str) -> Result<Self> {
        let bad = |why: &str| LedgerError::BadData(format!("not a signing key ({why})"));
        let rest = text.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(|| bad("no PRIVATE+KEY+ prefix"))?;
        // Names and hashes have no '+'; the base64 key may.
        let mut parts = rest.splitn(3, '+');
        let (name, _hash, k) = (parts.next(), parts.next(), parts.next());
        let (Some(k), Some(name)) = (k, name) else { return Err(bad("too few fields")) };
        let k = B64.decode(k).map_err(|_| bad("key is not base64"))?;
        if k.len() != 33 || k[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        NoteSigner::from_seed(name, k[1..].try_into().expect("32 bytes"))
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The checkpoint as a signed note.
    pub fn sign(&self, cp: &Checkpoint) -> String {
        self.sign_text(&cp.body()).expect("a checkpoint body is one line per field")
    }

    /// Any text as a signed note (update metadata uses this too). The text
    /// must end with a newline and hold no blank line (the note's separator).
    pub fn sign_text(&self, body: &str) -> Result<String> {
        if !body.ends_with('\n') || body.contains("\n\n") || body.trim().is_empty() {
            return Err(LedgerError::BadData("a signed note's text must be non-empty, end with a newline and hold no blank line".into()));
        }
        let sig: Signature = self.key.sign(body.as_bytes());
        let mut blob = key_hash(&self.name, self.key.verifying_key().as_bytes()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!("{body}\n{DASH}{} {}\n", self.name, B64.encode(blob)))
    }
}

impl NoteVerifier {
    /// `<name>+<hash>+<base64(alg || public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut k = vec![ALG_ED25519];
        k.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(key_hash(&self.name, self.key.as_bytes())), B64.encode(k))
    }

    pub fn parse_vkey(text: &str) -> Result<Self> {
        let bad = |why: &str| LedgerError::BadData(format!("not a verifier key ({why}): {}", text.trim()));
        let mut parts = text.trim().splitn(3, '+');
        let (name, hash, k) = (parts.next(), parts.next(), parts.next());
        let (Some(k), Some(hash), Some(name)) = (k, hash, name) else { return Err(bad("want name+hash+key")) };
        check_name(name)?;
        let k = B64.decode(k).map_err(|_| bad("key is not base64"))?;
        if k.len() != 33 || k[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let public: [u8; 32] = k[1..].try_into().expect("32 bytes");
        if hex::encode(key_hash(name, &public)) != hash {
            return Err(bad("key hash does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("invalid Ed25519 point"))?;
        Ok(NoteVerifier { name: name.to_string(), key })
    }

    /// Checks a signed note's signature by this key and returns its text.
    pub fn open(&self, note: &str) -> Result<String> {
        let bad = |why: String| LedgerError::BadData(why);
        let (body, sigs) = note.split_once("\n\n").ok_or_else(|| bad("no blank line before the signatures".into()))?;
        let body = format!("{body}\n");
        let want_hash = key_hash(&self.name, self.key.as_bytes());
        let mut signed = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix(DASH) else { return Err(bad(format!("bad signature line {line:?}"))) };
            let Some((name, blob)) = rest.split_once(' ') else { return Err(bad(format!("bad signature line {line:?}"))) };
            let blob = B64.decode(blob).map_err(|_| bad("signature is not base64".into()))?;
            if name != self.name || blob.len() != 68 || blob[..4] != want_hash {
                continue;
            }
            let sig = Signature::from_bytes(blob[4..].try_into().expect("64 bytes"));
            if self.key.verify(body.as_bytes(), &sig).is_err() {
                return Err(bad(format!("the signature by {} does not verify", self.name)));
            }
            signed = true;
        }
        if !signed {
            return Err(bad(format!("not signed by {}", self.to_vkey())));
        }
        Ok(body)
    }

    /// Parses and checks a signed checkpoint; `Err` says what is wrong.
    pub fn verify(&self, note: &str) -> Result<Checkpoint> {
        let bad = |why: String| LedgerError::BadData(format!("checkpoint: {why}"));
        let body = self.open(note).map_err(|e| bad(e.to_string()))?;
        let mut lines = body.lines();
        let origin = lines.next().unwrap_or_default().to_string();
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("second line is not a tree size".into()))?;
        let root = lines
            .next()
            .and_then(|s| B64.decode(s).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("third line is not a base64 SHA-256 root".into()))?;
        Ok(Checkpoint { origin, size, root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("bpi-os.test/ledger", [9u8; 32]).unwrap()
    }

    #[test]
    fn signed_checkpoint_verifies_with_the_public_key_alone() {
        let s = signer();
        let cp = Checkpoint { origin: "bpi-os.test/ledger".into(), size: 42, root: [3u8; 32] };
        let note = s.sign(&cp);
        assert!(note.starts_with("bpi-os.test/ledger\n42\nAwMD"));
        assert!(note.contains("\n\n\u{2014} bpi-os.test/ledger "));
        let v = NoteVerifier::parse_vkey(&s.verifier().to_vkey()).unwrap();
        assert_eq!(v.verify(&note).unwrap(), cp);
        let again = NoteSigner::parse_skey(&s.to_skey()).unwrap();
        assert_eq!(again.sign(&cp), note);
    }

    #[test]
    fn keys_whose_base64_holds_a_plus_round_trip() {
        let s = (0u8..=255)
            .map(|i| NoteSigner::from_seed("bpi-os.test/ledger", [i; 32]).unwrap())
            .find(|s| s.to_skey().matches('+').count() > 4 && s.verifier().to_vkey().matches('+').count() > 2)
            .expect("some seed gives keys with '+' in their base64");
        assert_eq!(NoteSigner::parse_skey(&s.to_skey()).unwrap().to_skey(), s.to_skey());
        assert_eq!(NoteVerifier::parse_vkey(&s.verifier().to_vkey()).unwrap().to_vkey(), s.verifier().to_vkey());
    }

    #[test]
    fn altered_checkpoint_or_other_key_is_refused() {
        let s = signer();
        let cp = Checkpoint { origin: "bpi-os.test/ledger".into(), size: 42, root: [3u8; 32] };
        let note = s.sign(&cp);
        let v = s.verifier();
        assert!(v.verify(&note.replacen("\n42\n", "\n43\n", 1)).is_err());
        let other = NoteSigner::from_seed("bpi-os.test/ledger", [8u8; 32]).unwrap().verifier();
        assert!(other.verify(&note).unwrap_err().to_string().contains("not signed by"));
        let mut vkey = v.to_vkey();
        vkey.pop();
        vkey.push('A');
        assert!(NoteVerifier::parse_vkey(&vkey).is_err());
        assert!(NoteSigner::from_seed("bad name", [0; 32]).is_err());
    }
}

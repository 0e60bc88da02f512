//! Seed 003's `PathProof`, one per hop, as a hash chain: each hop's hash
//! takes in the hash of the hop before it, and the hop signs its hash with
//! its QLock identity (hybrid Ed25519 + ML-DSA-65, both must verify). A
//! chain is checked hop by hop against the route the control plane chose,
//! the Meta-RIB's identities and trust, and the proof's lifetime; the
//! verdict names the first bad hop and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use bpi_qlock::identity::{Identity, PublicIdentity, SigError};

const HOP_LABEL: &[u8] = b"bpi-pof hop v1";
const PROOF_LABEL: &[u8] = b"bpi-pof proof v1";
/// The seed's proof_timeout_seconds.
pub const DEFAULT_LIFETIME_MS: u64 = 300_000;

/// One hop's proof, as the seed has it: node, previous hash, current hash,
/// signature, time, trust.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathProof {
    pub path_id: String,
    /// The hop's place on the path, from 0.
    pub index: u32,
    /// The node's name in the Meta-RIB.
    pub node: String,
    /// Hex of the previous hop's hash; 64 zeros at the first hop.
    pub previous_hash: String,
    /// Hex of this hop's hash.
    pub current_hash: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The trust the hop claims for itself, in millionths (checked against the Meta-RIB's).
    pub trust: u32,
    /// base64 of the hybrid signature over `current_hash`.
    pub signature: String,
}

/// Why a chain is not valid, at its first bad hop.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    #[error("the proof has no hops")]
    Empty,
    #[error("hop {index} says it is for path {found}, not {expected}")]
    OtherPath { index: usize, expected: String, found: String },
    #[error("hop {index} says it is at place {found}")]
    Misplaced { index: usize, found: u32 },
    #[error("hop {index} is {found}, but the route has {expected} there (a bypass)")]
    WrongNode { index: usize, expected: String, found: String },
    #[error("hop {index}: node {node} is not in the Meta-RIB with a QLock identity")]
    UnknownNode { index: usize, node: String },
    #[error("hop {index} does not link to the hop before it (its previous hash is not that hop's hash)")]
    BrokenLink { index: usize },
    #[error("hop {index}'s time is not after the hop before it (reordered or replayed)")]
    NotLater { index: usize },
    #[error("hop {index}'s hash is not the hash of its fields (a field was altered)")]
    Altered { index: usize },
    #[error("hop {index}: {why}")]
    Signature { index: usize, why: String },
    #[error("hop {index}: node {node}'s trust {trust:.3} is below the path's requirement {required:.3}")]
    LowTrust { index: usize, node: String, trust: f64, required: f64 },
    #[error("hop {index} is {age_ms} ms old; proofs last {lifetime_ms} ms")]
    Expired { index: usize, age_ms: u64, lifetime_ms: u64 },
    #[error("hop {index} is missing: the route has {expected} hops, the proof {found}")]
    MissingHop { index: usize, expected: usize, found: usize },
    #[error("the proof has {found} hops, more than the route's {expected}")]
    ExtraHop { expected: usize, found: usize },
}

impl Fault {
    /// The hop at fault, when there is one.
    pub fn hop(&self) -> Option<usize> {
        match self {
            Fault::Empty | Fault::ExtraHop { .. } => None,
            Fault::OtherPath { index, .. }
            | Fault::Misplaced { index, .. }
            | Fault::WrongNode { index, .. }
            | Fault::UnknownNode { index, .. }
            | Fault::BrokenLink { index }
            | Fault::NotLater { index }
            | Fault::Altered { index }
            | Fault::Signature { index, .. }
            | Fault::LowTrust { index, .. }
            | Fault::Expired { index, .. }
            | Fault::MissingHop { index, .. } => Some(*index),
        }
    }
}

/// What a chain is checked against.
pub struct Expect<'a> {
    pub path_id: &'a str,
    /// The route's nodes, in order.
    pub route: &'a [String],
    /// Each node's identity, by name.
    pub identities: &'a BTreeMap<String, PublicIdentity>,
    /// Each node's trust (the control plane's), by name.
    pub trust: &'a BTreeMap<String, f64>,
    /// The least trust every hop must have.
    pub required_trust: f64,
    pub now_ms: u64,
    pub lifetime_ms: u64,
}

/// The verdict: valid, or the first fault; and the proof's hash, which the ledger anchors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub path_id: String,
    pub valid: bool,
    pub hops: usize,
    pub first_bad_hop: Option<usize>,
    pub fault: Option<Fault>,
    pub reason: String,
    pub proof_hash: String,
}

fn hop_hash(path_id: &str, index: u32, node_id: &[u8; 32], previous: &[u8; 32], timestamp_ms: u64, trust: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HOP_LABEL);
    h.update((path_id.len() as u32).to_be_bytes());
    h.update(path_id.as_bytes());
    h.update(index.to_be_bytes());
    h.update(node_id);
    h.update(previous);
    h.update(timestamp_ms.to_be_bytes());
    h.update(trust.to_be_bytes());
    h.finalize().into()
}

/// The hash the ledger anchors: over the path id and every hop's hash, in order.
pub fn proof_hash(proof: &[PathProof]) -> String {
    let mut h = Sha256::new();
    h.update(PROOF_LABEL);
    for p in proof {
        h.update(p.path_id.as_bytes());
        h.update([0]);
        h.update(p.current_hash.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The hop this node adds after `previous` (None at the source).
pub fn add_hop(me: &Identity, name: &str, path_id: &str, previous: Option<&PathProof>, timestamp_ms: u64, trust: f64) -> PathProof {
    let index = previous.map_or(0, |p| p.index + 1);
    let prev: [u8; 32] = previous.and_then(|p| hex::decode(&p.current_hash).ok()).and_then(|b| b.try_into().ok()).unwrap_or([0; 32]);
    let trust = (trust.clamp(0.0, 1.0) * 1e6).round() as u32;
    let hash = hop_hash(path_id, index, &me.public().node_id_bytes(), &prev, timestamp_ms, trust);
    use base64::Engine as _;
    PathProof {
        path_id: path_id.into(),
        index,
        node: name.into(),
        previous_hash: hex::encode(prev),
        current_hash: hex::encode(hash),
        timestamp_ms,
        trust,
        signature: base64::engine::general_purpose::STANDARD.encode(me.sign(&hash)),
    }
}

fn check_hop(i: usize, p: &PathProof, before: Option<&PathProof>, e: &Expect<'_>) -> Result<(), Fault> {
    if p.path_id != e.path_id {
        return Err(Fault::OtherPath { index: i, expected: e.path_id.into(), found: p.path_id.clone() });
    }
    if p.index as usize != i {
        return Err(Fault::Misplaced { index: i, found: p.index });
    }
    if p.node != e.route[i] {
        return Err(Fault::WrongNode { index: i, expected: e.route[i].clone(), found: p.node.clone() });
    }
    let id = e.identities.get(&p.node).ok_or_else(|| Fault::UnknownNode { index: i, node: p.node.clone() })?;
    let expected_previous = before.map_or_else(|| "0".repeat(64), |b| b.current_hash.clone());
    if p.previous_hash != expected_previous {
        return Err(Fault::BrokenLink { index: i });
    }
    if before.is_some_and(|b| p.timestamp_ms <= b.timestamp_ms) {
        return Err(Fault::NotLater { index: i });
    }
    let prev: [u8; 32] = hex::decode(&p.previous_hash).ok().and_then(|b| b.try_into().ok()).ok_or(Fault::BrokenLink { index: i })?;
    let hash = hop_hash(&p.path_id, p.index, &id.node_id_bytes(), &prev, p.timestamp_ms, p.trust);
    if hex::encode(hash) != p.current_hash {
        return Err(Fault::Altered { index: i });
    }
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.decode(&p.signature).map_err(|_| Fault::Signature { index: i, why: "the signature is not base64".into() })?;
    id.verify(&hash, &sig).map_err(|why: SigError| Fault::Signature { index: i, why: format!("node {}'s signature does not verify: {why}", p.node) })?;
    let trust = e.trust.get(&p.node).copied().unwrap_or(0.0);
    if trust < e.required_trust {
        return Err(Fault::LowTrust { index: i, node: p.node.clone(), trust, required: e.required_trust });
    }
    let age_ms = e.now_ms.saturating_sub(p.timestamp_ms);
    if age_ms > e.lifetime_ms {
        return Err(Fault::Expired { index: i, age_ms, lifetime_ms: e.lifetime_ms });
    }
    Ok(())
}

/// Checks a chain hop by hop; the first fault ends the check.
pub fn verify(proof: &[PathProof], e: &Expect<'_>) -> Verdict {
    let fault = (|| {
        if proof.is_empty() {
            return Err(Fault::Empty);
        }
        for (i, p) in proof.iter().enumerate() {
            if i >= e.route.len() {
                return Err(Fault::ExtraHop { expected: e.route.len(), found: proof.len() });
            }
            check_hop(i, p, i.checked_sub(1).map(|j| &proof[j]), e)?;
        }
        if proof.len() < e.route.len() {
            return Err(Fault::MissingHop { index: proof.len(), expected: e.route.len(), found: proof.len() });
        }
        Ok(())
    })()
    .err();
    Verdict {
        path_id: e.path_id.into(),
        valid: fault.is_none(),
        hops: proof.len(),
        first_bad_hop: fault.as_ref().and_then(Fault::hop),
        reason: fault.as_ref().map_or_else(|| "every hop links, is later, is signed by its node and meets the trust requirement".into(), |f| f.to_string()),
        fault,
        proof_hash: proof_hash(proof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Net {
        ids: Vec<Identity>,
        names: Vec<String>,
        identities: BTreeMap<String, PublicIdentity>,
        trust: BTreeMap<String, f64>,
    }

    fn net(n: usize) -> Net {
        let ids: Vec<Identity> = (0..n).map(|i| Identity::from_seeds([i as u8 + 1; 64])).collect();
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let identities = names.iter().cloned().zip(ids.iter().map(|i| i.public().clone())).collect();
        let trust = names.iter().map(|n| (n.clone(), 0.9)).collect();
        Net { ids, names, identities, trust }
    }

    fn chain(net: &Net, t0: u64) -> Vec<PathProof> {
        let mut out: Vec<PathProof> = Vec::new();
        for (i, (id, name)) in net.ids.iter().zip(&net.names).enumerate() {
            let hop = add_hop(id, name, "p1", out.last(), t0 + i as u64, 0.9);
            out.push(hop);
        }
        out
    }

    fn expect(net: &Net, now_ms: u64) -> Expect<'_> {
        Expect { path_id: "p1", route: &net.names, identities: &net.identities, trust: &net.trust, required_trust: 0.7, now_ms, lifetime_ms: DEFAULT_LIFETIME_MS }
    }

    fn fault(proof: &[PathProof], e: &Expect<'_>) -> Fault {
        let v = verify(proof, e);
        assert!(!v.valid && v.first_bad_hop == v.fault.as_ref().and_then(Fault::hop));
        v.fault.unwrap()
    }

    #[test]
    fn a_whole_chain_verifies_and_has_a_stable_hash() {
        let n = net(4);
        let p = chain(&n, 1_000);
        let v = verify(&p, &expect(&n, 2_000));
        assert!(v.valid, "{}", v.reason);
        assert_eq!((v.hops, v.first_bad_hop), (4, None));
        assert_eq!(v.proof_hash, proof_hash(&p));
        assert_eq!(v.proof_hash.len(), 64);
    }

    #[test]
    fn every_bad_input_names_its_hop_and_reason() {
        let n = net(4);
        let good = chain(&n, 1_000);
        let e = expect(&n, 2_000);
        // A broken link: hop 2 claims another predecessor.
        let mut p = good.clone();
        p[2].previous_hash = good[0].current_hash.clone();
        assert_eq!(fault(&p, &e), Fault::BrokenLink { index: 2 });
        // A reordered hop: hops 1 and 2 swapped.
        let mut p = good.clone();
        p.swap(1, 2);
        assert_eq!(fault(&p, &e), Fault::Misplaced { index: 1, found: 2 });
        // A replayed timestamp: hop 3 rebuilt by its own node with hop 2's time.
        let mut p = good.clone();
        p[3] = add_hop(&n.ids[3], "n3", "p1", Some(&p[2]), p[2].timestamp_ms, 0.9);
        assert_eq!(fault(&p, &e), Fault::NotLater { index: 3 });
        // An altered field: hop 1's trust raised after signing.
        let mut p = good.clone();
        p[1].trust = 1_000_000;
        assert_eq!(fault(&p, &e), Fault::Altered { index: 1 });
        // A signature from another node: n2's hop signed by n0 (with n2's name and hash fields recomputed honestly by n0).
        let mut p = good.clone();
        let forged = add_hop(&n.ids[0], "n2", "p1", Some(&p[1]), p[2].timestamp_ms, 0.9);
        p[2] = forged;
        assert!(matches!(fault(&p, &e), Fault::Altered { index: 2 }), "n0's id is in the hash, so the hash no longer matches n2's");
        let mut p = good.clone();
        let other = add_hop(&n.ids[0], "n2", "p1", Some(&p[1]), p[2].timestamp_ms, 0.9);
        p[2].signature = other.signature;
        assert!(matches!(fault(&p, &e), Fault::Signature { index: 2, .. }));
        // A hop below the trust requirement.
        let mut low = expect(&n, 2_000);
        let mut trust = n.trust.clone();
        trust.insert("n1".into(), 0.5);
        low.trust = &trust;
        assert!(matches!(fault(&good, &low), Fault::LowTrust { index: 1, .. }));
        // An expired proof.
        let late = expect(&n, 1_000 + DEFAULT_LIFETIME_MS + 10);
        assert!(matches!(fault(&good, &late), Fault::Expired { index: 0, .. }));
        // A bypass: the route's n2 replaced by a node that took another way.
        let route: Vec<String> = ["n0", "n1", "nX", "n3"].map(String::from).to_vec();
        let bypass = Expect { route: &route, ..expect(&n, 2_000) };
        assert_eq!(fault(&good, &bypass), Fault::WrongNode { index: 2, expected: "nX".into(), found: "n2".into() });
        // A missing hop, and one too many.
        assert_eq!(fault(&good[..3], &e), Fault::MissingHop { index: 3, expected: 4, found: 3 });
        let short: Vec<String> = n.names[..3].to_vec();
        assert_eq!(fault(&good, &Expect { route: &short, ..expect(&n, 2_000) }), Fault::ExtraHop { expected: 3, found: 4 });
        // An unknown node.
        let mut ids = n.identities.clone();
        ids.remove("n1");
        assert_eq!(fault(&good, &Expect { identities: &ids, ..expect(&n, 2_000) }), Fault::UnknownNode { index: 1, node: "n1".into() });
        // Another path's proof, and none at all.
        assert!(matches!(fault(&good, &Expect { path_id: "p2", ..expect(&n, 2_000) }), Fault::OtherPath { index: 0, .. }));
        assert_eq!(fault(&[], &e), Fault::Empty);
        // Nothing invalid hashes like the valid proof.
        assert_ne!(proof_hash(&good[..3]), proof_hash(&good));
    }
}

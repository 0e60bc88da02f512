//! Per-packet hop stamps, the reference the XDP program is held to: a
//! header after the UDP header of packets to port 7779, and one 64-bit
//! stamp per link of the path, each SipHash-2-4 under that link's key.
//!
//! ```text
//!  0      2   3      4      5        6      8          12        16
//! +------+---+------+------+--------+------+----------+---------+----------------------+
//! |magic |ver|nodes |index |reserved|  0   | path id  |  seq    | stamp[0..nodes-1] u64|
//! +------+---+------+------+--------+------+----------+---------+----------------------+
//! ```
//!
//! Link `i` joins node `i` to node `i + 1`. Node `i` writes `stamp[i]` as it
//! sends on link `i`; node `i + 1` checks it (its index must be `i`, so a
//! skipped hop fails) and writes the next. A stamp covers the path id, the
//! link, the sequence number, the previous stamp (so stamps chain) and the
//! payload's length.
//!
//! Why SipHash-2-4 is enough here: it is a PRF under a 128-bit key that is
//! practical in eBPF (add-rotate-xor on 64-bit words, no tables); a stamp
//! is a 64-bit tag, so a node without the link's key forges one with
//! probability 2^-64 per try, and keys are per link, per path and per QLock
//! epoch, so a key lives no longer than its session's epoch. It does not
//! stop a node that holds a link key from replaying a packet it saw within
//! that epoch; sequence numbers make replays visible to the receiver.

use siphasher::sip::SipHasher24;

pub const PORT: u16 = 7779;
pub const MAGIC: u16 = 0xB9F0;
pub const VERSION: u8 = 1;
pub const MAX_NODES: u8 = 16;
pub const FIXED: usize = 16;

/// Why a stamped packet is refused (each its own counter in the data plane).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the header is truncated")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("unknown version")]
    BadVersion,
    #[error("node count outside 2..=16")]
    BadCount,
    #[error("the stamps are truncated")]
    TruncatedStamps,
    #[error("the hop index is past the path's end")]
    IndexPastEnd,
    #[error("the hop index is not this link's (a hop was skipped)")]
    WrongIndex,
    #[error("the stamp does not verify under this link's key")]
    WrongMac,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub nodes: u8,
    /// The link last stamped (the sender's place on the path).
    pub index: u8,
    pub path_id: u32,
    pub seq: u32,
    pub stamps: Vec<u64>,
}

impl Header {
    pub fn len(nodes: u8) -> usize {
        FIXED + 8 * usize::from(nodes.saturating_sub(1))
    }

    /// A fresh header at the source, before its stamp.
    pub fn new(nodes: u8, path_id: u32, seq: u32) -> Header {
        Header { nodes, index: 0, path_id, seq, stamps: vec![0; usize::from(nodes.saturating_sub(1))] }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Header::len(self.nodes));
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&[VERSION, self.nodes, self.index, 0, 0, 0]);
        b.extend_from_slice(&self.path_id.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        for s in &self.stamps {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, Refusal> {
        if b.len() < FIXED {
            return Err(Refusal::Truncated);
        }
        if u16::from_be_bytes([b[0], b[1]]) != MAGIC {
            return Err(Refusal::BadMagic);
        }
        if b[2] != VERSION {
            return Err(Refusal::BadVersion);
        }
        let nodes = b[3];
        if !(2..=MAX_NODES).contains(&nodes) {
            return Err(Refusal::BadCount);
        }
        if b.len() < Header::len(nodes) {
            return Err(Refusal::TruncatedStamps);
        }
        let word = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let stamps = (0..usize::from(nodes - 1)).map(|i| u64::from_be_bytes(b[FIXED + 8 * i..FIXED + 8 * i + 8].try_into().expect("8 bytes"))).collect();
        Ok(Header { nodes, index: b[4], path_id: word(8), seq: word(12), stamps })
    }
}

/// Link `link`'s stamp: SipHash-2-4 under its key over the path id, the link, the sequence number, the previous stamp and the payload's length.
pub fn stamp(key: &[u8; 16], path_id: u32, link: u8, seq: u32, previous: u64, payload_len: u16) -> u64 {
    let mut m = [0u8; 19];
    m[..4].copy_from_slice(&path_id.to_be_bytes());
    m[4] = link;
    m[5..9].copy_from_slice(&seq.to_be_bytes());
    m[9..17].copy_from_slice(&previous.to_be_bytes());
    m[17..].copy_from_slice(&payload_len.to_be_bytes());
    SipHasher24::new_with_key(key).hash(&m)
}

/// A link's key, from the QLock session key of the two nodes it joins:
/// HKDF-Expand-Label (docs/qlock.md) per path and link; a new epoch's key gives new link keys.
pub fn link_key(session_key: &[u8; 32], path_id: u32, link: u8) -> [u8; 16] {
    let mut ctx = path_id.to_be_bytes().to_vec();
    ctx.push(link);
    let k = bpi_qlock::schedule::expand_label(session_key, "pof link", &ctx);
    k[..16].try_into().expect("16 bytes")
}

fn previous(h: &Header, link: u8) -> u64 {
    link.checked_sub(1).map_or(0, |l| h.stamps[usize::from(l)])
}

/// The source (node 0) stamps link 0.
pub fn originate(h: &mut Header, key: &[u8; 16], payload_len: u16) {
    h.index = 0;
    h.stamps[0] = stamp(key, h.path_id, 0, h.seq, 0, payload_len);
}

/// Node `place` (1..nodes) checks the stamp of the link it came in on
/// (`place - 1`, under `in_key`) and, unless it is the destination, stamps
/// the next (under `out_key`).
pub fn forward(h: &mut Header, place: u8, in_key: &[u8; 16], out_key: Option<&[u8; 16]>, payload_len: u16) -> Result<(), Refusal> {
    if h.index >= h.nodes - 1 || place == 0 || place >= h.nodes {
        return Err(Refusal::IndexPastEnd);
    }
    let link = place - 1;
    if h.index != link {
        return Err(Refusal::WrongIndex);
    }
    if h.stamps[usize::from(link)] != stamp(in_key, h.path_id, link, h.seq, previous(h, link), payload_len) {
        return Err(Refusal::WrongMac);
    }
    if let (Some(k), true) = (out_key, place < h.nodes - 1) {
        h.stamps[usize::from(place)] = stamp(k, h.path_id, place, h.seq, h.stamps[usize::from(link)], payload_len);
        h.index = place;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SipHash paper's test vector (Aumasson and Bernstein, appendix A):
    /// key 00..0f, message 00..0e.
    #[test]
    fn siphash_is_the_papers() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(SipHasher24::new_with_key(&key).hash(&msg), 0xa129ca6149be45e5);
    }

    fn keys(n: u8, session: u8) -> Vec<[u8; 16]> {
        (0..n - 1).map(|l| link_key(&[session + l; 32], 77, l)).collect()
    }

    /// A packet through a 4-node path: every hop checks and stamps.
    fn walk(nodes: u8) -> (Header, Vec<[u8; 16]>) {
        let k = keys(nodes, 1);
        let mut h = Header::new(nodes, 77, 5);
        originate(&mut h, &k[0], 100);
        for place in 1..nodes {
            forward(&mut h, place, &k[usize::from(place - 1)], k.get(usize::from(place)), 100).unwrap();
        }
        (h, k)
    }

    #[test]
    fn a_path_stamps_and_checks_every_link_and_round_trips() {
        let (h, _) = walk(4);
        assert_eq!(h.index, 2);
        assert!(h.stamps.iter().all(|s| *s != 0));
        let bytes = h.encode();
        assert_eq!(bytes.len(), Header::len(4));
        assert_eq!(Header::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn every_malformed_or_forged_packet_is_refused_for_its_own_reason() {
        let k = keys(4, 1);
        let fresh = || {
            let mut h = Header::new(4, 77, 5);
            originate(&mut h, &k[0], 100);
            h
        };
        let good = fresh().encode();
        assert_eq!(Header::decode(&good[..10]), Err(Refusal::Truncated));
        assert_eq!(Header::decode(&good[..FIXED + 8]), Err(Refusal::TruncatedStamps));
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(Header::decode(&b), Err(Refusal::BadMagic));
        let mut b = good.clone();
        b[2] = 9;
        assert_eq!(Header::decode(&b), Err(Refusal::BadVersion));
        for n in [0u8, 1, 17] {
            let mut b = good.clone();
            b[3] = n;
            assert_eq!(Header::decode(&b), Err(Refusal::BadCount), "{n} nodes");
        }
        // A wrong key (another session's), another sequence number, a changed payload length, a flipped stamp.
        let other = keys(4, 9);
        assert_eq!(forward(&mut fresh(), 1, &other[0], Some(&k[1]), 100), Err(Refusal::WrongMac));
        let mut h = fresh();
        h.seq += 1;
        assert_eq!(forward(&mut h, 1, &k[0], Some(&k[1]), 100), Err(Refusal::WrongMac));
        assert_eq!(forward(&mut fresh(), 1, &k[0], Some(&k[1]), 101), Err(Refusal::WrongMac));
        let mut h = fresh();
        h.stamps[0] ^= 1 << 40;
        assert_eq!(forward(&mut h, 1, &k[0], Some(&k[1]), 100), Err(Refusal::WrongMac));
        // A skipped hop: node 2 receives what node 0 sent (a bypass around node 1).
        assert_eq!(forward(&mut fresh(), 2, &k[1], Some(&k[2]), 100), Err(Refusal::WrongIndex));
        // An index past the end.
        let mut h = fresh();
        h.index = 3;
        assert_eq!(forward(&mut h, 3, &k[2], None, 100), Err(Refusal::IndexPastEnd));
        // An earlier link's stamp changed: the next link's check fails, since stamps chain.
        let mut h = fresh();
        forward(&mut h, 1, &k[0], Some(&k[1]), 100).unwrap();
        h.stamps[0] ^= 1;
        assert_eq!(forward(&mut h, 2, &k[1], Some(&k[2]), 100), Err(Refusal::WrongMac));
    }

    #[test]
    fn link_keys_differ_by_path_link_and_epoch() {
        let s = [3u8; 32];
        assert_ne!(link_key(&s, 1, 0), link_key(&s, 2, 0));
        assert_ne!(link_key(&s, 1, 0), link_key(&s, 1, 1));
        // The next QLock epoch's key (its rekey) gives other link keys: an old epoch's stamp fails.
        let next = bpi_qlock::schedule::next_key(&s);
        assert_ne!(link_key(&s, 1, 0), link_key(&next, 1, 0));
        let mut h = Header::new(2, 1, 1);
        originate(&mut h, &link_key(&s, 1, 0), 10);
        assert_eq!(forward(&mut h, 1, &link_key(&next, 1, 0), None, 10), Err(Refusal::WrongMac));
    }
}

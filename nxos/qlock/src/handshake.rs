//! The QLock handshake: a signed key exchange in TLS 1.3's form (SIGMA:
//! each side signs the transcript with its identity, as CertificateVerify
//! does, and MACs it with a finished key), over the hybrid key share of
//! [`crate::kex`]. Two round trips:
//!
//! ```text
//! opener                                   answerer
//! HELLO  (ids, nonce, time, level, share) ──►  checks: suite, clock, replay, known node, trust
//!        ◄── REPLY (session id, nonce, share, signature, MAC)  or  REFUSE (reason)
//! FINISH (signature, MAC)                 ──►  checks both
//!        ◄── DONE (MAC under the session key)  or  REFUSE (reason)
//! ```
//!
//! Every message is a frame: a 4-byte big-endian length, a type byte, the
//! body. Both identities are in HELLO, so both signatures cover who is who.
//! This module is pure: bytes in, bytes out; the network is the caller's.

use std::io::{Read, Write};

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, PublicIdentity, SigError, HYBRID_SIG_LEN};
use crate::kex::{self, ANSWER_SHARE, OPEN_SHARE, SUITE_X25519, SUITE_X25519MLKEM768};
use crate::schedule::{expand_label, extract, mac, mac_ok};

pub const VERSION: u8 = 1;
/// No honest message is near this; a larger length is refused before it is read.
pub const MAX_FRAME: usize = 16 * 1024;
/// The longest session either side agrees to: a week (rekeyed all along).
pub const MAX_LIFETIME_S: u32 = 7 * 24 * 3600;
/// How far a HELLO's time may be from the answerer's clock, and how long its nonce is remembered.
pub const CLOCK_WINDOW_S: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Reply = 2,
    Finish = 3,
    Done = 4,
    Refuse = 5,
    Rekey = 6,
    Close = 7,
    Ack = 8,
}

impl Kind {
    fn of(b: u8) -> Option<Kind> {
        [Kind::Hello, Kind::Reply, Kind::Finish, Kind::Done, Kind::Refuse, Kind::Rekey, Kind::Close, Kind::Ack].into_iter().find(|k| *k as u8 == b)
    }
}

/// Why a handshake or a session message was refused: said to the peer and to the caller.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("downgrade: the peer offered suite {0:#06x} (classical only); only X25519MLKEM768 with hybrid signatures is accepted")]
    Downgrade(u16),
    #[error("protocol version {0} is not {VERSION}")]
    Version(u8),
    #[error("the HELLO is addressed to node {0}, not this one")]
    NotForUs(String),
    #[error("unknown node {0}: it is not in the Meta-RIB")]
    UnknownNode(String),
    #[error("the HELLO's time is {0} s off this node's clock (at most {CLOCK_WINDOW_S})")]
    Clock(u64),
    #[error("replay: this HELLO's nonce was seen in the last {CLOCK_WINDOW_S} s")]
    Replay,
    #[error("node {node}: trust {trust:.3} is below the session's level {level}")]
    Trust { node: String, trust: f64, level: String },
    #[error("the {who}'s signature does not verify: {why}")]
    Signature { who: &'static str, why: SigError },
    #[error("the {0}'s finished MAC does not verify")]
    Mac(&'static str),
    #[error("the key exchange failed: {0}")]
    Kex(String),
    #[error("the peer refused: {0}")]
    Peer(String),
}

fn malformed(what: &'static str, why: impl Into<String>) -> Refusal {
    Refusal::Malformed { what, why: why.into() }
}

/// One frame's bytes: length, type, body.
pub fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(body);
    out
}

/// Reads one frame (its bytes whole, for the transcript); refuses an oversized length before reading it.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        bail!("a frame of {n} bytes (1..{MAX_FRAME})");
    }
    let mut out = len.to_vec();
    out.resize(4 + n, 0);
    r.read_exact(&mut out[4..])?;
    Ok(out)
}

pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)?;
    w.flush()?;
    Ok(())
}

/// The type and body of a frame's bytes, checked to be `want` (a REFUSE is the peer's reason).
pub fn body(bytes: &[u8], want: Kind, what: &'static str) -> Result<Vec<u8>, Refusal> {
    if bytes.len() < 5 || u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize != bytes.len() - 4 {
        return Err(malformed(what, format!("a frame of {} bytes whose length field disagrees", bytes.len())));
    }
    match Kind::of(bytes[4]) {
        Some(k) if k == want => Ok(bytes[5..].to_vec()),
        Some(Kind::Refuse) => Err(Refusal::Peer(String::from_utf8_lossy(&bytes[5..bytes.len().min(5 + 1024)]).into_owned())),
        _ => Err(malformed(what, format!("message type {}", bytes[4]))),
    }
}

pub fn refuse_frame(r: &Refusal) -> Vec<u8> {
    frame(Kind::Refuse, r.to_string().as_bytes())
}

/// Reads fixed-size fields off a body, front to back.
struct Fields<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Refusal> {
        if self.rest.len() < n {
            return Err(malformed(self.what, format!("truncated in {field}")));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], Refusal> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }
    fn end(self) -> Result<(), Refusal> {
        if !self.rest.is_empty() {
            return Err(malformed(self.what, format!("{} bytes past its end", self.rest.len())));
        }
        Ok(())
    }
}

/// What an opener asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    pub suite: u16,
    pub from: [u8; 32],
    pub to: [u8; 32],
    pub nonce: [u8; 32],
    pub time: u64,
    /// The session's trust level, in millionths (the data plane's unit).
    pub level: u32,
    pub lifetime_s: u32,
    pub share: Vec<u8>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![VERSION];
        b.extend_from_slice(&self.suite.to_be_bytes());
        for part in [&self.from[..], &self.to, &self.nonce] {
            b.extend_from_slice(part);
        }
        b.extend_from_slice(&self.time.to_be_bytes());
        b.extend_from_slice(&self.level.to_be_bytes());
        b.extend_from_slice(&self.lifetime_s.to_be_bytes());
        b.extend_from_slice(&self.share);
        frame(Kind::Hello, &b)
    }

    /// Refuses another version or suite first (a downgrade names itself), then checks the shape.
    pub fn decode(bytes: &[u8]) -> Result<Hello, Refusal> {
        let b = body(bytes, Kind::Hello, "HELLO")?;
        let mut f = Fields { rest: &b, what: "HELLO" };
        let version = f.array::<1>("version")?[0];
        if version != VERSION {
            return Err(Refusal::Version(version));
        }
        let suite = u16::from_be_bytes(f.array("suite")?);
        if suite != SUITE_X25519MLKEM768 {
            return Err(Refusal::Downgrade(suite));
        }
        let hello = Hello {
            suite,
            from: f.array("from")?,
            to: f.array("to")?,
            nonce: f.array("nonce")?,
            time: u64::from_be_bytes(f.array("time")?),
            level: u32::from_be_bytes(f.array("level")?),
            lifetime_s: u32::from_be_bytes(f.array("lifetime")?),
            share: f.take(OPEN_SHARE, "key share")?.to_vec(),
        };
        f.end()?;
        if hello.level > 1_000_000 {
            return Err(malformed("HELLO", format!("trust level {} over 1.0", hello.level)));
        }
        if !(1..=MAX_LIFETIME_S).contains(&hello.lifetime_s) {
            return Err(malformed("HELLO", format!("lifetime {} s outside 1..{MAX_LIFETIME_S}", hello.lifetime_s)));
        }
        Ok(hello)
    }
}

/// An established session's secrets and terms, the same on both sides.
#[derive(Clone, Debug, PartialEq)]
pub struct Established {
    pub session_id: [u8; 16],
    pub key: [u8; 32],
    pub peer: [u8; 32],
    pub level: u32,
    pub lifetime_s: u32,
    pub opener: bool,
}

const RESPONDER_CONTEXT: &[u8] = b"bpi-qlock v1, answerer signature\0";
const OPENER_CONTEXT: &[u8] = b"bpi-qlock v1, opener signature\0";

fn snapshot(h: &Sha256) -> [u8; 32] {
    h.clone().finalize().into()
}

fn random<const N: usize>() -> Result<[u8; N], Refusal> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Refusal::Kex(format!("the random source failed: {e}")))?;
    Ok(b)
}

/// The keys both sides derive once the shares are exchanged.
struct Keys {
    hs: [u8; 32],
    opener_finished: [u8; 32],
    answerer_finished: [u8; 32],
}

fn keys(secret: &kex::Secret, th_share: &[u8; 32]) -> Keys {
    let hs = extract(&secret.0);
    Keys { opener_finished: expand_label(&hs, "o finished", th_share), answerer_finished: expand_label(&hs, "a finished", th_share), hs }
}

fn session_key(hs: &[u8; 32], th_final: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (expand_label(hs, "session", th_final), expand_label(hs, "done", th_final))
}

/// The opener between HELLO and REPLY.
pub struct Opener {
    hello: Hello,
    opening: kex::Opening,
    transcript: Sha256,
    peer: PublicIdentity,
}

/// The opener between FINISH and DONE.
pub struct OpenerFinished {
    pending: Established,
    done_key: [u8; 32],
    th_final: [u8; 32],
}

impl Opener {
    /// A HELLO to `peer` for a session at `level` (millionths) lasting `lifetime_s`.
    pub fn start(me: &Identity, peer: &PublicIdentity, level: u32, lifetime_s: u32, now: u64) -> Result<(Opener, Vec<u8>), Refusal> {
        let opening = kex::Opening::new().map_err(|e| Refusal::Kex(e.to_string()))?;
        let hello = Hello {
            suite: SUITE_X25519MLKEM768,
            from: me.public().node_id_bytes(),
            to: peer.node_id_bytes(),
            nonce: random()?,
            time: now,
            level,
            lifetime_s,
            share: opening.share.clone(),
        };
        let bytes = hello.encode();
        let mut transcript = Sha256::new();
        transcript.update(&bytes);
        Ok((Opener { hello, opening, transcript, peer: peer.clone() }, bytes))
    }

    /// Checks the REPLY (signature and MAC) and answers with FINISH.
    pub fn on_reply(self, me: &Identity, reply: &[u8]) -> Result<(OpenerFinished, Vec<u8>), Refusal> {
        let b = body(reply, Kind::Reply, "REPLY")?;
        let mut f = Fields { rest: &b, what: "REPLY" };
        let session_id: [u8; 16] = f.array("session id")?;
        let nonce: [u8; 32] = f.array("nonce")?;
        let share = f.take(ANSWER_SHARE, "key share")?;
        let sig = f.take(HYBRID_SIG_LEN, "signature")?;
        let tag = f.take(32, "MAC")?;
        f.end()?;
        let mut t = self.transcript;
        for part in [&session_id[..], &nonce, share] {
            t.update(part);
        }
        let th_share = snapshot(&t);
        self.peer.verify(&[RESPONDER_CONTEXT, &th_share].concat(), sig).map_err(|why| Refusal::Signature { who: "answerer", why })?;
        t.update(sig);
        let secret = self.opening.finish(share).map_err(|e| Refusal::Kex(e.to_string()))?;
        let k = keys(&secret, &th_share);
        if !mac_ok(&k.answerer_finished, &[&snapshot(&t)], tag) {
            return Err(Refusal::Mac("answerer"));
        }
        t.update(tag);
        let th_reply = snapshot(&t);
        let my_sig = me.sign(&[OPENER_CONTEXT, &th_reply].concat());
        t.update(&my_sig);
        let my_tag = mac(&k.opener_finished, &[&snapshot(&t)]);
        t.update(my_tag);
        let finish = frame(Kind::Finish, &[my_sig.as_slice(), &my_tag].concat());
        let th_final = snapshot(&t);
        let (key, done_key) = session_key(&k.hs, &th_final);
        let pending = Established { session_id, key, peer: self.hello.to, level: self.hello.level, lifetime_s: self.hello.lifetime_s, opener: true };
        Ok((OpenerFinished { pending, done_key, th_final }, finish))
    }
}

impl OpenerFinished {
    /// The answerer's DONE proves it holds the same session key.
    pub fn on_done(self, done: &[u8]) -> Result<Established, Refusal> {
        let b = body(done, Kind::Done, "DONE")?;
        if !mac_ok(&self.done_key, &[&self.th_final], &b) {
            return Err(Refusal::Mac("answerer's DONE"));
        }
        Ok(self.pending)
    }
}

/// The answerer between REPLY and FINISH.
pub struct Answerer {
    pending: Established,
    transcript: Sha256,
    opener_finished: [u8; 32],
    hs: [u8; 32],
    peer: PublicIdentity,
}

impl Answerer {
    /// Answers a HELLO already decoded and admitted (clock, replay, node and
    /// trust are the caller's checks, made before anything is signed).
    pub fn reply(me: &Identity, hello_bytes: &[u8], hello: &Hello, peer: &PublicIdentity) -> Result<(Answerer, Vec<u8>), Refusal> {
        if hello.to != me.public().node_id_bytes() {
            return Err(Refusal::NotForUs(hex::encode(hello.to)));
        }
        let (share, secret) = kex::answer(&hello.share).map_err(|e| Refusal::Kex(e.to_string()))?;
        let session_id: [u8; 16] = random()?;
        let nonce: [u8; 32] = random()?;
        let mut t = Sha256::new();
        t.update(hello_bytes);
        for part in [&session_id[..], &nonce, &share] {
            t.update(part);
        }
        let th_share = snapshot(&t);
        let k = keys(&secret, &th_share);
        let sig = me.sign(&[RESPONDER_CONTEXT, &th_share].concat());
        t.update(&sig);
        let tag = mac(&k.answerer_finished, &[&snapshot(&t)]);
        t.update(tag);
        let reply = frame(Kind::Reply, &[&session_id[..], &nonce, &share, &sig, &tag].concat());
        let pending = Established { session_id, key: [0; 32], peer: hello.from, level: hello.level, lifetime_s: hello.lifetime_s, opener: false };
        Ok((Answerer { pending, transcript: t, opener_finished: k.opener_finished, hs: k.hs, peer: peer.clone() }, reply))
    }

    /// Checks FINISH; the session and the DONE that confirms it.
    pub fn on_finish(self, finish: &[u8]) -> Result<(Established, Vec<u8>), Refusal> {
        let b = body(finish, Kind::Finish, "FINISH")?;
        let mut f = Fields { rest: &b, what: "FINISH" };
        let sig = f.take(HYBRID_SIG_LEN, "signature")?;
        let tag = f.take(32, "MAC")?;
        f.end()?;
        let mut t = self.transcript;
        let th_reply = snapshot(&t);
        self.peer.verify(&[OPENER_CONTEXT, &th_reply].concat(), sig).map_err(|why| Refusal::Signature { who: "opener", why })?;
        t.update(sig);
        if !mac_ok(&self.opener_finished, &[&snapshot(&t)], tag) {
            return Err(Refusal::Mac("opener"));
        }
        t.update(tag);
        let th_final = snapshot(&t);
        let (key, done_key) = session_key(&self.hs, &th_final);
        let done = frame(Kind::Done, &mac(&done_key, &[&th_final]));
        Ok((Established { key, ..self.pending }, done))
    }
}

/// A classical-only HELLO, as a downgraded peer would send: for the tests of the refusal.
pub fn downgraded_hello(from: [u8; 32], to: [u8; 32], now: u64) -> Vec<u8> {
    let mut b = vec![VERSION];
    b.extend_from_slice(&SUITE_X25519.to_be_bytes());
    b.extend_from_slice(&from);
    b.extend_from_slice(&to);
    b.extend_from_slice(&[7; 32]);
    b.extend_from_slice(&now.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&60u32.to_be_bytes());
    b.extend_from_slice(&[9; 32]);
    frame(Kind::Hello, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Identity, Identity) {
        (Identity::from_seeds([1; 64]), Identity::from_seeds([2; 64]))
    }

    /// The four messages of one handshake, and both sides' outcomes.
    fn run(a: &Identity, b: &Identity) -> ([Vec<u8>; 4], Established, Established) {
        let (o, hello) = Opener::start(a, b.public(), 700_000, 3600, 1000).unwrap();
        let h = Hello::decode(&hello).unwrap();
        let (ans, reply) = Answerer::reply(b, &hello, &h, a.public()).unwrap();
        let (of, finish) = o.on_reply(a, &reply).unwrap();
        let (eb, done) = ans.on_finish(&finish).unwrap();
        let ea = of.on_done(&done).unwrap();
        ([hello, reply, finish, done], ea, eb)
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (a, b) = ids();
        let (msgs, ea, eb) = run(&a, &b);
        assert_eq!(ea.key, eb.key);
        assert_eq!(ea.session_id, eb.session_id);
        assert_eq!((ea.peer, eb.peer), (b.public().node_id_bytes(), a.public().node_id_bytes()));
        assert!(ea.opener && !eb.opener);
        assert_eq!((ea.level, ea.lifetime_s), (700_000, 3600));
        // Two handshakes never share a key.
        assert_ne!(run(&a, &b).1.key, ea.key);
        let sizes: Vec<usize> = msgs.iter().map(Vec::len).collect();
        let hello = 5 + 1 + 2 + 3 * 32 + 8 + 4 + 4 + OPEN_SHARE;
        let reply = 5 + 16 + 32 + ANSWER_SHARE + HYBRID_SIG_LEN + 32;
        assert_eq!(sizes, [hello, reply, 5 + HYBRID_SIG_LEN + 32, 5 + 32]);
    }

    /// A flipped bit anywhere in any message fails the handshake at the
    /// side that reads it (24 places spread over each message).
    #[test]
    fn a_flipped_bit_in_any_message_fails() {
        let (a, b) = ids();
        let lens = run(&a, &b).0.map(|m| m.len());
        for (msg, len) in lens.into_iter().enumerate() {
            for i in 0..24 {
                // From the type byte to the last byte (the length field is checked by framing).
                let at = 4 + (len - 5) * i / 23;
                let flip = |m: &mut Vec<u8>, n: usize| {
                    if n == msg {
                        m[at] ^= 0x10;
                    }
                };
                let outcome = (|| -> Result<(), Refusal> {
                    let (o, mut hello) = Opener::start(&a, b.public(), 700_000, 3600, 1000).unwrap();
                    flip(&mut hello, 0);
                    let h = Hello::decode(&hello)?;
                    // The answerer admits only what the opener asked for (the caller's checks).
                    if h.from != a.public().node_id_bytes() || h.level != 700_000 || h.lifetime_s != 3600 || h.time != 1000 {
                        return Err(malformed("HELLO", "changed terms"));
                    }
                    let (ans, mut reply) = Answerer::reply(&b, &hello, &h, a.public())?;
                    flip(&mut reply, 1);
                    let (of, mut finish) = o.on_reply(&a, &reply)?;
                    flip(&mut finish, 2);
                    let (_, mut done) = ans.on_finish(&finish)?;
                    flip(&mut done, 3);
                    of.on_done(&done)?;
                    Ok(())
                })();
                assert!(outcome.is_err(), "message {msg}, byte {at}: a flipped bit went through");
            }
        }
    }

    #[test]
    fn a_downgrade_and_bad_shapes_are_refused() {
        let (a, b) = ids();
        let hello = downgraded_hello(a.public().node_id_bytes(), b.public().node_id_bytes(), 1000);
        assert_eq!(Hello::decode(&hello), Err(Refusal::Downgrade(SUITE_X25519)));
        assert!(Hello::decode(&hello).unwrap_err().to_string().contains("downgrade"));
        let (_, good) = Opener::start(&a, b.public(), 0, 60, 1000).unwrap();
        for lifetime in [0, MAX_LIFETIME_S + 1] {
            let (_, long) = Opener::start(&a, b.public(), 0, lifetime, 1000).unwrap();
            assert!(Hello::decode(&long).unwrap_err().to_string().contains("lifetime"), "{lifetime}");
        }
        let short = frame(Kind::Hello, &good[5..good.len() - 1]);
        assert!(Hello::decode(&short).unwrap_err().to_string().contains("truncated in key share"));
        let long = frame(Kind::Hello, &[&good[5..], &[0u8][..]].concat());
        assert!(Hello::decode(&long).unwrap_err().to_string().contains("past its end"));
        assert!(matches!(Hello::decode(&good[..good.len() - 3]), Err(Refusal::Malformed { .. })));
        let mut v2 = good.clone();
        v2[5] = 2;
        assert_eq!(Hello::decode(&v2), Err(Refusal::Version(2)));
        // A frame over the limit is refused by its length, before it is read.
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.push(1);
        assert!(read_frame(&mut huge.as_slice()).unwrap_err().to_string().contains("16384"));
    }

    #[test]
    fn another_nodes_signatures_fail() {
        let (a, b) = ids();
        let mallory = Identity::from_seeds([3; 64]);
        // Mallory answers a HELLO meant for b, signing as herself.
        let (o, hello) = Opener::start(&a, b.public(), 0, 60, 1000).unwrap();
        let h = Hello::decode(&hello).unwrap();
        assert!(matches!(Answerer::reply(&mallory, &hello, &h, a.public()), Err(Refusal::NotForUs(_))));
        let mut to_mallory = h.clone();
        to_mallory.to = mallory.public().node_id_bytes();
        let bytes = to_mallory.encode();
        let (_, reply) = Answerer::reply(&mallory, &bytes, &to_mallory, a.public()).unwrap();
        assert!(matches!(o.on_reply(&a, &reply), Err(Refusal::Signature { who: "answerer", why: SigError::Ed25519 })));
        // Mallory finishes a's handshake with b: b checks a's keys.
        let (o, hello) = Opener::start(&mallory, b.public(), 0, 60, 1000).unwrap();
        let h = Hello::decode(&hello).unwrap();
        let (ans, reply) = Answerer::reply(&b, &hello, &h, a.public()).unwrap();
        let (_, finish) = o.on_reply(&mallory, &reply).unwrap();
        assert!(matches!(ans.on_finish(&finish), Err(Refusal::Signature { who: "opener", why: SigError::Ed25519 })));
    }

    #[test]
    fn a_refusal_reaches_the_opener_as_the_peers_reason() {
        let (a, b) = ids();
        let (o, _) = Opener::start(&a, b.public(), 0, 60, 1000).unwrap();
        let why = Refusal::Trust { node: "edge-a".into(), trust: 0.42, level: "high (0.7)".into() };
        match o.on_reply(&a, &refuse_frame(&why)) {
            Err(Refusal::Peer(text)) => assert_eq!(text, "node edge-a: trust 0.420 is below the session's level high (0.7)"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted a refusal"),
        }
    }
}

//! A QLock node: its identity, the peers the Meta-RIB names, the session
//! table, and the trust it steers by. It opens sessions, answers them on
//! TCP, rekeys and ends them, and records each step in the ledger. No lock
//! is held across network I/O: a slow peer delays only its own session.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bpi_drx_control::model::Topology;
use bpi_support::record::Recorder;

use crate::handshake::{self, frame, read_frame, refuse_frame, write_frame, Answerer, Hello, Kind, Opener, Refusal, CLOCK_WINDOW_S};
use crate::identity::{Identity, PublicIdentity};
use crate::schedule::{control_key, fingerprint, mac, mac_ok, next_key};
use crate::session::{level_name, Session, SessionView, Table};

/// How long one network exchange may take before the session attempt fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const CATEGORY: &str = "qlock";

#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub identity: PublicIdentity,
    pub endpoint: Option<String>,
}

/// The Meta-RIB's nodes that carry a QLock identity, by name and by node id.
#[derive(Default)]
pub struct Directory {
    pub by_name: BTreeMap<String, Peer>,
    by_id: HashMap<[u8; 32], String>,
}

impl Directory {
    /// Every node with an identity except this one (`me`).
    pub fn from_topology(t: &Topology, me: &PublicIdentity) -> Result<Directory> {
        let mut d = Directory::default();
        for n in &t.nodes {
            let Some(text) = &n.identity else { continue };
            let identity = PublicIdentity::from_base64(text).with_context(|| format!("node '{}': identity", n.id))?;
            if &identity == me {
                continue;
            }
            if let Some(other) = d.by_id.insert(identity.node_id_bytes(), n.id.clone()) {
                bail!("nodes '{other}' and '{}' have the same QLock identity", n.id);
            }
            d.by_name.insert(n.id.clone(), Peer { name: n.id.clone(), identity, endpoint: n.qlock.clone() });
        }
        Ok(d)
    }

    /// Adds a peer (or replaces one of the same name).
    pub fn insert(&mut self, peer: Peer) {
        self.by_id.insert(peer.identity.node_id_bytes(), peer.name.clone());
        self.by_name.insert(peer.name.clone(), peer);
    }

    pub fn by_id(&self, id: &[u8; 32]) -> Option<&Peer> {
        self.by_name.get(self.by_id.get(id)?)
    }
}

/// The trust the node steers by: each node's score, and where it came from.
#[derive(Clone, Debug, Default)]
pub struct TrustView {
    pub source: String,
    pub scores: BTreeMap<String, f64>,
}

/// HELLO nonces seen in the clock window: a second one is a replay.
#[derive(Default)]
struct Replays {
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl Replays {
    fn admit(&mut self, nonce: [u8; 32], now: u64) -> bool {
        while let Some((n, t)) = self.order.front().copied() {
            if t + 2 * CLOCK_WINDOW_S > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if self.seen.contains_key(&nonce) {
            return false;
        }
        self.seen.insert(nonce, now);
        self.order.push_back((nonce, now));
        true
    }
}

pub struct Options {
    /// This node's name in the Meta-RIB.
    pub name: String,
    pub sessions_dir: PathBuf,
    pub rekey_s: u64,
    /// Where the identity's private file is, and whether that is the encrypted store.
    pub key_file: PathBuf,
    pub encrypted_store: bool,
}

pub struct Node {
    pub me: Identity,
    pub opts: Options,
    pub directory: Mutex<Directory>,
    table: Mutex<Table>,
    replays: Mutex<Replays>,
    pub trust: Mutex<TrustView>,
    recorder: Arc<dyn Recorder>,
    clock: fn() -> u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh TCP exchange with a peer's QLock endpoint.
fn connect(endpoint: &str) -> Result<TcpStream> {
    let addr = endpoint.to_socket_addrs().with_context(|| format!("resolving {endpoint}"))?.next().with_context(|| format!("{endpoint} resolves to no address"))?;
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {endpoint}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A session-control message (REKEY, CLOSE, ACK): session id, epoch, text, and a MAC under the epoch's control key.
fn control_frame(kind: Kind, key: &[u8; 32], id: &[u8; 16], epoch: u32, text: &str) -> Vec<u8> {
    let body = [&id[..], &epoch.to_be_bytes(), text.as_bytes()].concat();
    let tag = mac(&control_key(key), &[&[kind as u8], &body]);
    frame(kind, &[&body[..], &tag].concat())
}

/// The parts of a control message: session id, epoch, text, and its MAC (checked by the caller, who has the key).
struct Control {
    kind: Kind,
    id: [u8; 16],
    epoch: u32,
    text: String,
    signed: Vec<u8>,
    tag: Vec<u8>,
}

impl Control {
    /// Whether its MAC holds under `key`'s control key, for its own kind.
    fn verifies(&self, key: &[u8; 32]) -> bool {
        mac_ok(&control_key(key), &[&[self.kind as u8], &self.signed], &self.tag)
    }
}

fn parse_control(bytes: &[u8]) -> Result<Control, Refusal> {
    let bad = |why: &str| Refusal::Malformed { what: "session message", why: why.into() };
    if bytes.len() < 5 + 16 + 4 + 32 {
        return Err(bad("too short"));
    }
    let kind = [Kind::Rekey, Kind::Close, Kind::Ack].into_iter().find(|k| *k as u8 == bytes[4]).ok_or_else(|| bad("not REKEY, CLOSE or ACK"))?;
    let b = handshake::body(bytes, kind, "session message")?;
    let (signed, tag) = b.split_at(b.len() - 32);
    Ok(Control {
        kind,
        id: signed[..16].try_into().expect("16 bytes"),
        epoch: u32::from_be_bytes(signed[16..20].try_into().expect("4 bytes")),
        text: String::from_utf8_lossy(&signed[20..]).into_owned(),
        signed: signed.to_vec(),
        tag: tag.to_vec(),
    })
}

fn id_bytes(id: &str) -> Result<[u8; 16]> {
    hex::decode(id).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| anyhow!("'{id}' is not a session id (32 hex digits)"))
}

impl Node {
    pub fn new(me: Identity, opts: Options, directory: Directory, trust: TrustView, recorder: Arc<dyn Recorder>) -> Result<Node> {
        let table = Table::open(&opts.sessions_dir)?;
        Ok(Node { me, opts, directory: Mutex::new(directory), table: Mutex::new(table), replays: Mutex::default(), trust: Mutex::new(trust), recorder, clock: unix_now })
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn record(&self, action: &str, data: &serde_json::Value) -> String {
        self.recorder.record(CATEGORY, action, data)
    }

    pub fn record_identity_created(&self) -> String {
        let data = serde_json::json!({
            "node_id": self.me.public().node_id(), "name": self.opts.name,
            "key_file": self.opts.key_file.display().to_string(), "encrypted_store": self.opts.encrypted_store,
        });
        self.record("identity-created", &data)
    }

    pub fn sessions(&self) -> Vec<SessionView> {
        lock(&self.table).views()
    }

    /// The peer's trust, and a refusal naming it when below `level`.
    fn admit_trust(&self, peer: &str, level: u32) -> Result<(), Refusal> {
        let trust = lock(&self.trust).scores.get(peer).copied().unwrap_or(0.0);
        if trust * 1e6 < f64::from(level) {
            return Err(Refusal::Trust { node: peer.into(), trust, level: level_name(level) });
        }
        Ok(())
    }

    fn peer(&self, name: &str) -> Result<Peer> {
        let dir = lock(&self.directory);
        dir.by_name.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = dir.by_name.keys().map(String::as_str).collect();
            anyhow!("unknown peer '{name}': the Meta-RIB has no node of that name with a QLock identity (known: {})", if known.is_empty() { "none".into() } else { known.join(", ") })
        })
    }

    /// Checks a session could be opened (known peer with an endpoint, trust), without opening it.
    pub fn plan_open(&self, peer: &str, level: u32) -> Result<Peer> {
        let p = self.peer(peer)?;
        if p.endpoint.is_none() {
            bail!("peer '{peer}' has no qlock endpoint in the Meta-RIB");
        }
        self.admit_trust(peer, level).map_err(|r| anyhow!("refused: {r}"))?;
        Ok(p)
    }

    /// Opens a session to `peer`: the handshake over TCP, then the table and the ledger.
    pub fn open(&self, peer: &str, level: u32, lifetime_s: u32) -> Result<SessionView> {
        let p = self.plan_open(peer, level)?;
        let endpoint = p.endpoint.clone().expect("checked by plan_open");
        let mut s = connect(&endpoint)?;
        let established = (|| -> Result<_> {
            let (opener, hello) = Opener::start(&self.me, &p.identity, level, lifetime_s, self.now())?;
            write_frame(&mut s, &hello)?;
            let (finished, finish) = opener.on_reply(&self.me, &read_frame(&mut s)?)?;
            write_frame(&mut s, &finish)?;
            Ok(finished.on_done(&read_frame(&mut s)?)?)
        })()
        .with_context(|| format!("opening a session with '{peer}' at {endpoint}"))?;
        self.keep(established, &p, "session-start")
    }

    fn keep(&self, e: handshake::Established, p: &Peer, action: &str) -> Result<SessionView> {
        let now = self.now();
        let s = Session {
            id: hex::encode(e.session_id),
            peer: p.name.clone(),
            peer_node_id: p.identity.node_id(),
            opener: e.opener,
            level: e.level,
            created: now,
            expires: now + u64::from(e.lifetime_s),
            epoch: 0,
            keyed_at: now,
            key: hex::encode(e.key),
        };
        lock(&self.table).put(s.clone())?;
        let outcome = self.record(action, &s.record(None));
        bpi_support::progress::note(&format!("qlock: session {} with {} ({}, key {}): {outcome}", s.id, s.peer, level_name(s.level), fingerprint(&e.key)));
        Ok(s.view("active", ""))
    }

    /// Serves one TCP connection: a handshake, or a session message.
    pub fn serve_connection(&self, mut s: TcpStream) {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let peer_addr = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let first = match read_frame(&mut s) {
            Ok(f) => f,
            Err(e) => {
                let _ = write_frame(&mut s, &refuse_frame(&Refusal::Malformed { what: "frame", why: e.to_string() }));
                return;
            }
        };
        let outcome = if first.get(4) == Some(&(Kind::Hello as u8)) { self.answer(&mut s, &first) } else { self.on_control(&mut s, &first) };
        if let Err(r) = outcome {
            bpi_support::progress::note(&format!("qlock: refused {peer_addr}: {r}"));
            let _ = write_frame(&mut s, &refuse_frame(&r));
        }
    }

    /// The answerer's side of a handshake. Nothing is signed or recorded before every check passes.
    fn answer(&self, s: &mut (impl Read + Write), hello_bytes: &[u8]) -> Result<(), Refusal> {
        let hello = Hello::decode(hello_bytes)?;
        let now = self.now();
        let skew = now.abs_diff(hello.time);
        if skew > CLOCK_WINDOW_S {
            return Err(Refusal::Clock(skew));
        }
        let peer = lock(&self.directory).by_id(&hello.from).cloned().ok_or_else(|| Refusal::UnknownNode(hex::encode(hello.from)))?;
        if hello.to != self.me.public().node_id_bytes() {
            return Err(Refusal::NotForUs(hex::encode(hello.to)));
        }
        if !lock(&self.replays).admit(hello.nonce, now) {
            return Err(Refusal::Replay);
        }
        self.admit_trust(&peer.name, hello.level)?;
        let (answerer, reply) = Answerer::reply(&self.me, hello_bytes, &hello, &peer.identity)?;
        write_frame(s, &reply).map_err(|e| Refusal::Kex(e.to_string()))?;
        let finish = read_frame(s).map_err(|e| Refusal::Malformed { what: "FINISH", why: e.to_string() })?;
        let (established, done) = answerer.on_finish(&finish)?;
        self.keep(established, &peer, "session-start").map_err(|e| Refusal::Kex(format!("keeping the session: {e:#}")))?;
        write_frame(s, &done).map_err(|e| Refusal::Kex(e.to_string()))?;
        Ok(())
    }

    /// A REKEY or CLOSE from the peer of a live session, checked under the session's current key.
    fn on_control(&self, s: &mut (impl Read + Write), bytes: &[u8]) -> Result<(), Refusal> {
        let c = parse_control(bytes)?;
        let id = hex::encode(c.id);
        let mut table = lock(&self.table);
        let session = table.live.get(&id).cloned().ok_or_else(|| Refusal::Peer(format!("no live session {id}")))?;
        let key = session.key().map_err(|e| Refusal::Kex(e.to_string()))?;
        if !c.verifies(&key) {
            return Err(Refusal::Mac("session message"));
        }
        if c.epoch != session.epoch {
            return Err(Refusal::Malformed { what: "session message", why: format!("epoch {} is not the session's {}", c.epoch, session.epoch) });
        }
        match c.kind {
            Kind::Rekey => {
                if session.expires <= self.now() {
                    return Err(Refusal::Peer(format!("session {id} has expired")));
                }
                let next_k = next_key(&key);
                let next = Session { epoch: session.epoch + 1, keyed_at: self.now(), key: hex::encode(next_k), ..session };
                table.put(next.clone()).map_err(|e| Refusal::Kex(e.to_string()))?;
                drop(table);
                let _ = write_frame(s, &control_frame(Kind::Ack, &next_k, &c.id, next.epoch, "rekeyed"));
                self.record("session-rekey", &next.record(None));
            }
            _ => {
                let reason = format!("closed by {}: {}", session.peer, c.text);
                let (ended, _) = table.end(&id, &reason).expect("live above");
                drop(table);
                let _ = write_frame(s, &control_frame(Kind::Ack, &key, &c.id, c.epoch, "closed"));
                self.record("session-end", &ended.record(Some(&reason)));
            }
        }
        Ok(())
    }

    fn live(&self, id: &str) -> Result<Session> {
        id_bytes(id)?;
        lock(&self.table).live.get(id).cloned().ok_or_else(|| anyhow!("no live session {id} (see `bpi-os nxos sessions`)"))
    }

    fn endpoint_of(&self, s: &Session) -> Result<String> {
        self.peer(&s.peer)?.endpoint.ok_or_else(|| anyhow!("peer '{}' has no qlock endpoint in the Meta-RIB", s.peer))
    }

    /// Moves both sides of a session to the next epoch's key (TLS 1.3's KeyUpdate).
    pub fn rekey(&self, id: &str) -> Result<SessionView> {
        let s = self.live(id)?;
        if s.expires <= self.now() {
            bail!("session {id} has expired");
        }
        let key = s.key()?;
        let mut conn = connect(&self.endpoint_of(&s)?)?;
        write_frame(&mut conn, &control_frame(Kind::Rekey, &key, &id_bytes(id)?, s.epoch, ""))?;
        let ack = parse_control(&read_frame(&mut conn)?).map_err(|r| anyhow!("rekeying {id}: {r}"))?;
        let next_k = next_key(&key);
        if ack.kind != Kind::Ack || ack.epoch != s.epoch + 1 || !ack.verifies(&next_k) {
            bail!("rekeying {id}: the peer's acknowledgement does not verify under the next key");
        }
        let next = Session { epoch: s.epoch + 1, keyed_at: self.now(), key: hex::encode(next_k), ..s };
        lock(&self.table).put(next.clone())?;
        self.record("session-rekey", &next.record(None));
        Ok(next.view("active", ""))
    }

    /// Ends a session here and tells the peer (best effort: it ends its side by expiry otherwise).
    pub fn close(&self, id: &str, reason: &str) -> Result<SessionView> {
        let s = self.live(id)?;
        let told = self.tell_close(&s, reason);
        let Some((ended, view)) = lock(&self.table).end(id, reason) else { bail!("session {id} ended meanwhile") };
        let mut data = ended.record(Some(reason));
        data["peer_told"] = told.as_ref().map_or_else(|e| serde_json::Value::from(format!("{e:#}")), |()| true.into());
        self.record("session-end", &data);
        Ok(view)
    }

    fn tell_close(&self, s: &Session, reason: &str) -> Result<()> {
        let key = s.key()?;
        let mut conn = connect(&self.endpoint_of(s)?)?;
        write_frame(&mut conn, &control_frame(Kind::Close, &key, &id_bytes(&s.id)?, s.epoch, reason))?;
        match parse_control(&read_frame(&mut conn)?) {
            Ok(ack) if ack.kind == Kind::Ack && ack.verifies(&key) => Ok(()),
            Ok(_) => bail!("the peer's acknowledgement does not verify"),
            Err(r) => bail!("{r}"),
        }
    }

    /// The periodic work: expiry, trust below a session's level, and rekeying our own sessions.
    pub fn tick(&self) {
        let now = self.now();
        let live: Vec<Session> = lock(&self.table).live.values().cloned().collect();
        let scores = lock(&self.trust).scores.clone();
        for s in live {
            if s.expires <= now {
                if let Some((ended, _)) = lock(&self.table).end(&s.id, "expired") {
                    self.record("session-end", &ended.record(Some("expired")));
                }
                continue;
            }
            let trust = scores.get(&s.peer).copied().unwrap_or(0.0);
            if trust * 1e6 < f64::from(s.level) {
                let reason = format!("trust of {} fell to {trust:.3}, below the session's level {}", s.peer, level_name(s.level));
                let _ = self.close(&s.id, &reason);
                continue;
            }
            if s.opener && now.saturating_sub(s.keyed_at) >= self.opts.rekey_s {
                if let Err(e) = self.rekey(&s.id) {
                    bpi_support::progress::note(&format!("qlock: rekeying {}: {e:#}", s.id));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_admitted_once_within_the_window() {
        let mut r = Replays::default();
        assert!(r.admit([1; 32], 1000));
        assert!(!r.admit([1; 32], 1030));
        assert!(r.admit([2; 32], 1030));
        // Past twice the window the nonce is forgotten: its HELLO is refused by the clock check by then.
        assert!(r.admit([1; 32], 1000 + 2 * CLOCK_WINDOW_S));
    }

    #[test]
    fn control_messages_verify_only_under_their_key_and_kind() {
        let key = [5u8; 32];
        let f = control_frame(Kind::Close, &key, &[9; 16], 3, "bye");
        let c = parse_control(&f).unwrap();
        assert_eq!((c.kind, c.id, c.epoch, c.text.as_str()), (Kind::Close, [9; 16], 3, "bye"));
        assert!(mac_ok(&control_key(&key), &[&[Kind::Close as u8], &c.signed], &c.tag));
        assert!(!mac_ok(&control_key(&next_key(&key)), &[&[Kind::Close as u8], &c.signed], &c.tag));
        assert!(!mac_ok(&control_key(&key), &[&[Kind::Rekey as u8], &c.signed], &c.tag));
        let mut flipped = f.clone();
        flipped[10] ^= 1;
        let c = parse_control(&flipped).unwrap();
        assert!(!mac_ok(&control_key(&key), &[&[Kind::Close as u8], &c.signed], &c.tag));
        assert!(parse_control(&f[..20]).is_err());
    }
}

//! Host integration: two QLock nodes in two network namespaces joined by a
//! veth pair, each with its own dbus-daemon (the shipped policies), ledger
//! and `bpi-os nxos qlock serve`; node alpha also runs the control plane,
//! whose trust it steers by, and node beta steers by its Meta-RIB file.
//! The test process plays a third party on the wire with bpi-qlock's own
//! handshake code: replays, tampered messages, downgrades, strangers.
//! Needs root (namespaces, calling as `nobody`) and dbus-daemon.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpi_drx_data::testbed::{veth, Netns};
use bpi_qlock::handshake::{self, read_frame, Kind, Opener};
use bpi_qlock::identity::{Identity, ED25519_SIG, HYBRID_SIG_LEN};
use common::{can_run, cli, scratch, start_bus, text, Bus, Scratch, Service, NOBODY};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct Node {
    name: &'static str,
    addr: &'static str,
    s: Scratch,
    bus: Bus,
    ns: Netns,
    _ledger: Service,
    ledger_store: PathBuf,
    data: PathBuf,
    sessions: PathBuf,
    topology: PathBuf,
}

impl Node {
    fn new(name: &'static str, addr: &'static str, ns: Netns) -> Node {
        let s = scratch();
        let policies = ["units/dbus/org.bpi.os.QLock1.conf", "units/dbus/org.bpi.os.Ledger1.conf", "units/dbus/org.bpi.os.Control1.conf"].map(repo);
        let bus = start_bus(&s, &policies.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let ledger_store = s.dir.path().join("ledger");
        let ledger = common::serve(&s, &["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store", ledger_store.to_str().unwrap()]);
        let (data, sessions, topology) = (s.dir.path().join("data"), s.dir.path().join("qlock-sessions"), s.dir.path().join("topology.toml"));
        Node { name, addr, s, bus, ns, _ledger: ledger, ledger_store, data, sessions, topology }
    }

    fn serve(&self) -> Service {
        let args = [
            "nxos", "qlock", "serve", "--topology", self.topology.to_str().unwrap(), "--listen", &format!("{}:7778", self.addr),
            "--data-dir", self.data.to_str().unwrap(), "--sessions-dir", self.sessions.to_str().unwrap(), "--bus", &self.bus.address,
        ];
        common::serve_in(&self.s, &self.ns.name, &args)
    }

    fn cli(&self, uid: Option<u32>, args: &[&str]) -> std::process::Output {
        let mut full = args.to_vec();
        full.extend(["--bus", &self.bus.address]);
        cli(&self.s, uid, &full)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let o = self.cli(None, &full);
        assert!(o.status.success(), "{}: {args:?}: {}", self.name, text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The ledger's qlock blocks, oldest first.
    fn qlock_blocks(&self) -> Vec<Value> {
        let o = cli(&self.s, None, &["ledger", "show", "--store", self.ledger_store.to_str().unwrap(), "--category", "qlock", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap().as_array().cloned().unwrap_or_default()
    }

    fn actions(&self) -> Vec<String> {
        self.qlock_blocks().iter().map(|b| b["action"].as_str().unwrap_or_default().to_string()).collect()
    }

    fn sessions(&self) -> Vec<Value> {
        self.json(&["nxos", "sessions"]).as_array().cloned().unwrap()
    }

    fn node_id(&self) -> String {
        self.json(&["nxos", "identity", "show"])["node_id"].as_str().unwrap().to_string()
    }

    fn export(&self) -> String {
        let o = self.cli(None, &["nxos", "identity", "export", "--name", self.name, "--endpoint", &format!("{}:7778", self.addr)]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }
}

const LINK: &str = "[[link]]\na = \"alpha\"\nb = \"beta\"\nlatency_ms = 1.0\nbandwidth_mbps = 1000.0\n";

/// A Meta-RIB: this node with a score, the peer's exported lines with theirs.
fn meta_rib(local: &str, local_score: f64, peer_export: &str, peer_score: f64) -> String {
    format!("[control]\nlocal = \"{local}\"\n\n[[node]]\nid = \"{local}\"\nscore = {local_score}\n\n{peer_export}score = {peer_score}\n\n{LINK}")
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn failure(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", text(o));
    text(o)
}

/// One exchange with beta's QLock port from alpha's namespace: the frames sent, the frames read.
fn exchange(a: &Node, to: &str, send: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let to = to.to_string();
    a.ns
        .run(move || {
            let mut s = TcpStream::connect((to.as_str(), 7778)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            for f in send {
                s.write_all(&f).unwrap();
                match read_frame(&mut s) {
                    Ok(r) => got.push(r),
                    Err(_) => break,
                }
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            got
        })
        .unwrap()
}

fn refusal(frame: &[u8]) -> String {
    assert_eq!(frame[4], Kind::Refuse as u8, "not a refusal: type {}", frame[4]);
    String::from_utf8_lossy(&frame[5..]).into_owned()
}

fn now() -> u64 {
    bpi_qlock::node::unix_now()
}

#[test]
fn two_nodes_open_rekey_and_end_sessions_by_trust() {
    if !can_run() {
        return;
    }
    let (na, nb) = (Netns::new("qla").unwrap(), Netns::new("qlb").unwrap());
    veth(&na, "qa0", &nb, "qb0").unwrap();
    na.ip(&["addr", "add", "10.77.0.1/24", "dev", "qa0"]).unwrap();
    nb.ip(&["addr", "add", "10.77.0.2/24", "dev", "qb0"]).unwrap();
    let a = Node::new("alpha", "10.77.0.1", na);
    let b = Node::new("beta", "10.77.0.2", nb);

    // First start: each node makes its identity (0600, outside a store here, and says so).
    for n in [&a, &b] {
        std::fs::write(&n.topology, format!("[control]\nlocal = \"{}\"\n\n[[node]]\nid = \"{}\"\nscore = 0.9\n", n.name, n.name)).unwrap();
    }
    let (sa, sb) = (a.serve(), b.serve());
    let (ida, idb) = (a.node_id(), b.node_id());
    assert_ne!(ida, idb);
    let shown = a.json(&["nxos", "identity", "show"]);
    assert_eq!(shown["encrypted_store"], false);
    let key_file = PathBuf::from(shown["key_file"].as_str().unwrap());
    assert!(key_file.starts_with(&a.data) && key_file.ends_with("pq-crypto/qlock-identity.key"));
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (ea, eb) = (a.export(), b.export());
    assert!(ea.contains(&format!("# QLock node id {ida}")) && ea.contains("qlock = \"10.77.0.1:7778\""), "{ea}");
    drop((sa, sb));

    // Each Meta-RIB names the other: alpha trusts beta 0.8, beta trusts alpha 0.6.
    std::fs::write(&a.topology, meta_rib("alpha", 0.95, &eb, 0.8)).unwrap();
    std::fs::write(&b.topology, meta_rib("beta", 0.95, &ea, 0.6)).unwrap();
    let control = common::serve(&a.s, &["nxos", "--pin-dir", a.s.dir.path().join("no-pins").to_str().unwrap(), "control", "serve", "--topology", a.topology.to_str().unwrap(), "--bus", &a.bus.address]);
    let (_sa, _sb) = (a.serve(), b.serve());
    // The identities are kept across the restart, and each was recorded once.
    assert_eq!((a.node_id(), b.node_id()), (ida.clone(), idb.clone()));
    assert_eq!(a.actions(), ["identity-created"]);
    assert_eq!(b.actions(), ["identity-created"]);
    assert_eq!(a.json(&["nxos", "identity", "show"])["trust_source"], "control plane");
    assert_eq!(b.json(&["nxos", "identity", "show"])["trust_source"], "Meta-RIB file");

    // Refused, with the reason, and nothing recorded on either side:
    let refused = [
        // by beta's trust in alpha (0.6 < high 0.7), before beta signs anything;
        (vec!["--peer", "beta", "--trust-level", "high"], "node alpha: trust 0.600 is below the session's level high (0.7)"),
        // by alpha's own trust in beta (0.8 < critical 0.9), before anything is sent;
        (vec!["--peer", "beta", "--trust-level", "critical"], "node beta: trust 0.800 is below the session's level critical (0.9)"),
        (vec!["--peer", "gamma", "--trust-level", "low"], "unknown peer 'gamma'"),
        (vec!["--peer", "beta", "--trust-level", "extreme"], "unknown trust level 'extreme'"),
    ];
    for (args, want) in refused {
        let mut full = vec!["nxos", "sessions", "open"];
        full.extend(args);
        let e = failure(&a.cli(None, &full));
        assert!(e.contains(want), "{full:?}: {e}");
    }
    let e = failure(&a.cli(None, &["nxos", "sessions", "rekey", "--id", &"0".repeat(32)]));
    assert!(e.contains("no live session"), "{e}");
    // Nobody may not open sessions: the bus policy itself stops it.
    common::check_policy_against_service(&a.bus, "org.bpi.os.QLock1", "/org/bpi/os/QLock1", &repo("units/dbus/org.bpi.os.QLock1.conf"), bpi_qlock::service::ADMIN_METHODS);
    let e = failure(&a.cli(Some(NOBODY), &["nxos", "sessions", "open", "--peer", "beta", "--trust-level", "low"]));
    assert!(e.contains("Rejected send message") && e.contains("member=\"open\""), "{e}");
    // Queries are open to anyone.
    assert!(a.cli(Some(NOBODY), &["nxos", "sessions", "--json"]).status.success());
    // A dry run checks and changes nothing.
    let dry = a.json(&["nxos", "sessions", "open", "--peer", "beta", "--trust-level", "medium", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!((a.actions().len(), b.actions().len()), (1, 1));
    assert!(a.sessions().is_empty() && b.sessions().is_empty());

    // A session: the same id and key fingerprint on both sides, and in both ledgers.
    let opened = a.json(&["nxos", "sessions", "open", "--peer", "beta", "--trust-level", "medium"]);
    let id = opened["session"]["id"].as_str().unwrap().to_string();
    let (sa_list, sb_list) = (a.sessions(), b.sessions());
    let (x, y) = (&sa_list[0], &sb_list[0]);
    assert_eq!((x["id"].as_str(), y["id"].as_str()), (Some(id.as_str()), Some(id.as_str())));
    assert_eq!((x["role"].as_str(), y["role"].as_str()), (Some("opener"), Some("answerer")));
    assert_eq!((x["peer_node_id"].as_str(), y["peer_node_id"].as_str()), (Some(idb.as_str()), Some(ida.as_str())));
    assert_eq!(x["fingerprint"], y["fingerprint"]);
    assert_eq!(x["level"], "medium (0.5)");
    let (la, lb) = (a.qlock_blocks(), b.qlock_blocks());
    assert_eq!((la[1]["action"].as_str(), lb[1]["action"].as_str()), (Some("session-start"), Some("session-start")));
    assert_eq!(la[1]["data"]["fingerprint"], x["fingerprint"]);
    assert_eq!(lb[1]["data"]["fingerprint"], x["fingerprint"]);
    // The key is in the 0600 session file only.
    let file = a.sessions.join(format!("{id}.json"));
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let key = serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()).unwrap()["key"].as_str().unwrap().to_string();
    assert!(!std::fs::read_to_string(a.ledger_store.join("ledger.log")).unwrap_or_default().contains(&key));

    // A rekey moves both sides to epoch 1 and the same new key.
    let rekeyed = a.json(&["nxos", "sessions", "rekey", "--id", &id]);
    assert_eq!(rekeyed["session"]["epoch"], 1);
    let (x, y) = (a.sessions()[0].clone(), b.sessions()[0].clone());
    assert_eq!((x["epoch"].as_u64(), y["epoch"].as_u64()), (Some(1), Some(1)));
    assert_eq!(x["fingerprint"], y["fingerprint"]);
    assert_ne!(x["fingerprint"], la[1]["data"]["fingerprint"]);
    assert_eq!(b.actions().last().map(String::as_str), Some("session-rekey"));

    // On the wire, as alpha (its key file), from alpha's namespace: each
    // bad message is refused with its own reason and beta records nothing.
    let alpha = Identity::load(&key_file).unwrap();
    let beta_pub = bpi_qlock::identity::PublicIdentity::from_base64(b.json(&["nxos", "identity", "show"])["public"].as_str().unwrap()).unwrap();
    let recorded = b.qlock_blocks().len();
    for (place, want) in [(5 + 10, "Ed25519"), (5 + ED25519_SIG + 500, "ML-DSA-65"), (5 + HYBRID_SIG_LEN + 3, "opener's finished MAC")] {
        let (o, hello) = Opener::start(&alpha, &beta_pub, 0, 60, now()).unwrap();
        let reply_and_more = a
            .ns
            .run(|| {
                let mut s = TcpStream::connect(("10.77.0.2", 7778)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(&hello).unwrap();
                let reply = read_frame(&mut s).unwrap();
                let (_, mut finish) = o.on_reply(&alpha, &reply).unwrap();
                finish[place] ^= 1;
                s.write_all(&finish).unwrap();
                read_frame(&mut s).unwrap()
            })
            .unwrap();
        let why = refusal(&reply_and_more);
        assert!(why.contains(want), "a bit flipped at {place} of FINISH: {why}");
    }
    // A HELLO sent twice: the second is a replay.
    let (_, hello) = Opener::start(&alpha, &beta_pub, 0, 60, now()).unwrap();
    let first = exchange(&a, "10.77.0.2", vec![hello.clone()]);
    assert_eq!(first[0][4], Kind::Reply as u8);
    let again = exchange(&a, "10.77.0.2", vec![hello]);
    assert!(refusal(&again[0]).contains("replay"), "{}", refusal(&again[0]));
    // A classical-only HELLO is a downgrade; a stranger's is an unknown node; an old one is off the clock.
    let down = exchange(&a, "10.77.0.2", vec![handshake::downgraded_hello(alpha.public().node_id_bytes(), beta_pub.node_id_bytes(), now())]);
    assert!(refusal(&down[0]).contains("downgrade"), "{}", refusal(&down[0]));
    let stranger = Identity::generate().unwrap();
    let (_, hello) = Opener::start(&stranger, &beta_pub, 0, 60, now()).unwrap();
    assert!(refusal(&exchange(&a, "10.77.0.2", vec![hello])[0]).contains("unknown node"));
    let (_, hello) = Opener::start(&alpha, &beta_pub, 0, 60, now() - 3600).unwrap();
    assert!(refusal(&exchange(&a, "10.77.0.2", vec![hello])[0]).contains("off this node's clock"));
    assert_eq!(b.qlock_blocks().len(), recorded, "a refused handshake was recorded: {:?}", b.actions());
    // The same code completes an honest handshake with beta (so the refusals above were the tampering's).
    let (o, hello) = Opener::start(&alpha, &beta_pub, 0, 60, now()).unwrap();
    let ok = a
        .ns
        .run(|| {
            let mut s = TcpStream::connect(("10.77.0.2", 7778)).unwrap();
            s.write_all(&hello).unwrap();
            let (of, finish) = o.on_reply(&alpha, &read_frame(&mut s).unwrap()).unwrap();
            s.write_all(&finish).unwrap();
            of.on_done(&read_frame(&mut s).unwrap())
        })
        .unwrap();
    assert!(ok.is_ok(), "{:?}", ok.err());

    // alpha's control plane drops beta to 0.4, below medium: the session ends on both sides, with the reason in both ledgers.
    let o = a.cli(None, &["nxos", "trust", "update", "--node-id", "beta", "--score", "0.4"]);
    assert!(o.status.success(), "{}", text(&o));
    let ended = |n: &Node| n.sessions().iter().any(|s| s["id"] == id.as_str() && s["state"] == "ended");
    wait_until("the trust drop ends the session on both sides", Duration::from_secs(15), || ended(&a) && ended(&b));
    for n in [&a, &b] {
        let end = n.qlock_blocks().into_iter().rev().find(|blk| blk["action"] == "session-end" && blk["data"]["session"] == id.as_str()).unwrap();
        assert!(end["data"]["reason"].as_str().unwrap().contains("trust of beta fell to 0.400"), "{}: {end}", n.name);
    }

    // A 2-second session expires on both sides, and both ledgers say so.
    assert!(a.cli(None, &["nxos", "trust", "update", "--node-id", "beta", "--score", "0.8"]).status.success());
    wait_until("alpha sees beta's trust back", Duration::from_secs(10), || a.cli(None, &["nxos", "sessions", "open", "--peer", "beta", "--trust-level", "medium", "--dry-run"]).status.success());
    let short = a.json(&["nxos", "sessions", "open", "--peer", "beta", "--trust-level", "low", "--lifetime", "2"]);
    let sid = short["session"]["id"].as_str().unwrap().to_string();
    let expired = |n: &Node| n.sessions().iter().any(|s| s["id"] == sid.as_str() && s["reason"] == "expired");
    wait_until("the 2-second session expires on both sides", Duration::from_secs(15), || expired(&a) && expired(&b));
    for n in [&a, &b] {
        assert!(n.qlock_blocks().iter().any(|blk| blk["data"]["session"] == sid.as_str() && blk["data"]["reason"] == "expired"), "{}", n.name);
        assert!(!n.sessions.join(format!("{sid}.json")).exists(), "{}: the ended session's key file is still there", n.name);
    }
    drop(control);
}

//! The data plane on a real veth pair between two network namespaces:
//! TCP, UDP and ICMP over IPv4 and IPv6, untagged, 802.1Q-tagged and
//! QinQ-tagged, to high-, low- and unknown-trust destinations. Each verdict is
//! proven by delivery on the far side and by the counters; a score changed
//! while traffic flows flips the verdict at one point; detaching lets all
//! traffic through. Needs root; skipped with the reason otherwise.
//!
//! Untagged traffic is real: kernel sockets and ping on the near side, a
//! listening socket (or the kernel's echo reply) on the far side. This host's
//! kernel has no 8021q module (and cannot load one), so tagged traffic is
//! crafted frames sent by trafgen, and delivery is proven by a packet socket
//! on the far interface, which sees a frame only if XDP passed it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bpi_drx_data::{
    attach::{self, Mode},
    layout::{Reason, Settings},
    plan::Op,
    prefix::Prefix,
    tables::{Batch, Tables},
    testbed::{
        frames::{self, ETH_8021AD, ETH_8021Q, ETH_IP, ETH_IPV6},
        mac, trafgen, veth, BpfFs, Netns,
    },
};

const PROGRAM: &str = "xdp_trust_routing";
const PORT: u16 = 7777;
const WAIT: Duration = Duration::from_millis(800);

fn root() -> bool {
    bpi_support::skip::needs_root("network namespaces and XDP")
}

/// Two namespaces: `near` sends, `far` has the program on `vb`'s ingress.
struct Bed {
    near: Netns,
    far: Netns,
    fs: BpfFs,
    far_sockets: Vec<UdpSocket>,
    _listeners: Vec<TcpListener>,
}

/// In 10.210.0.0/24 and fd10:210::/64, host 1 is near, 2 is far, and the far
/// side also owns 0x10 (high trust), 0x20 (low) and 0x30 (unknown), written
/// in decimal for IPv4 (.16, .32, .48) and hex for IPv6 (::10, ::20, ::30).
fn addr(host: u8) -> [IpAddr; 2] {
    [format!("10.210.0.{host}").parse().unwrap(), format!("fd10:210::{host:x}").parse().unwrap()]
}

fn setup_addresses(ns: &Netns, dev: &str, hosts: &[u8]) {
    for host in hosts {
        let [a4, a6] = addr(*host);
        ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev]).unwrap();
        ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"]).unwrap();
    }
}

impl Bed {
    fn new() -> Bed {
        let near = Netns::new("near").unwrap();
        let far = Netns::new("far").unwrap();
        veth(&near, "va", &far, "vb").unwrap();
        setup_addresses(&near, "va", &[1]);
        setup_addresses(&far, "vb", &[2, 0x10, 0x20, 0x30]);
        let (udp, tcp) = far
            .run(|| {
                // Dual-stack: IPv4 arrives as v4-mapped addresses.
                let udp = vec![UdpSocket::bind(("::", PORT)).unwrap()];
                let tcp = vec![TcpListener::bind(("::", PORT)).unwrap()];
                (udp, tcp)
            })
            .unwrap();
        for s in &udp {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        Bed { near, far, fs: BpfFs::mount().unwrap(), far_sockets: udp, _listeners: tcp }
    }

    fn attach(&self, mode: Mode) {
        let pin_dir = self.fs.pin_dir();
        self.far.run(|| attach::attach(&pin_dir, PROGRAM, "vb", mode, Settings::default())).unwrap().unwrap();
    }

    fn tables(&self) -> Tables {
        Tables::open(&self.fs.pin_dir()).unwrap()
    }

    /// Collects UDP payloads that arrived on the far side within `wait`.
    fn drain(&self, wait: Duration) -> Vec<String> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            for s in &self.far_sockets {
                while let Ok(n) = s.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    if Instant::now() >= end {
                        break;
                    }
                }
            }
        }
        got
    }

    fn udp(&self, dst: IpAddr, token: &str) -> bool {
        self.drain(Duration::ZERO);
        self.near
            .run(|| {
                let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
                s.send_to(token.as_bytes(), SocketAddr::new(dst, PORT)).unwrap();
            })
            .unwrap();
        self.drain(WAIT).iter().any(|t| t == token)
    }

    fn tcp(&self, dst: IpAddr) -> bool {
        self.near.run(|| TcpStream::connect_timeout(&SocketAddr::new(dst, PORT), WAIT).is_ok()).unwrap()
    }

    fn ping(&self, dst: IpAddr) -> bool {
        self.near.cmd("ping").args(["-c", "1", "-W", "1"]).arg(dst.to_string()).run().is_ok()
    }
}

fn counters(t: &Tables) -> BTreeMap<&'static str, u64> {
    t.reason_counters().unwrap().into_iter().map(|(r, c)| (r.name(), c.packets)).collect()
}

fn trust_ops() -> Vec<Op> {
    let p = |t: &str| t.parse::<Prefix>().unwrap();
    vec![
        Op::SetScore { node: 1, score: 900_000 },
        Op::SetScore { node: 2, score: 200_000 },
        // A /30 and a /124 around the high host; host routes for the low one.
        Op::MapPrefix { prefix: p("10.210.0.16/30"), node: 1 },
        Op::MapPrefix { prefix: p("fd10:210::10/124"), node: 1 },
        Op::MapPrefix { prefix: p("10.210.0.32"), node: 2 },
        Op::MapPrefix { prefix: p("fd10:210::20"), node: 2 },
    ]
}

/// A packet socket on the far side: it sees a frame only if XDP passed it.
struct Tap(socket2::Socket);

impl Tap {
    fn open(ns: &Netns) -> Tap {
        const ETH_P_ALL: u16 = 0x0003;
        let sock = ns
            .run(|| {
                socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(socket2::Protocol::from(i32::from(ETH_P_ALL.to_be()))))
                    .unwrap()
            })
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Tap(sock)
    }

    /// Whether a frame carrying `token` arrived within `wait`.
    fn saw(&self, token: &[u8], wait: Duration) -> bool {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok(n) = std::io::Read::read(&mut &self.0, &mut buf) {
                if buf[..n].windows(token.len()).any(|w| w == token) {
                    return true;
                }
            }
        }
        false
    }
}

#[test]
fn verdicts_on_the_wire_for_every_protocol_family_and_tagging() {
    if !root() {
        return;
    }
    let bed = Bed::new();
    bed.attach(Mode::Native);
    let mut tables = bed.tables();
    tables.write_batch(&Batch::unrecorded("test"), |_| Ok(trust_ops())).unwrap();
    let snapshot = tables.snapshot().unwrap();
    let tap = Tap::open(&bed.far);
    let vb_mac = mac(&bed.far, "vb").unwrap();
    let taggings: [(&str, &[(u16, u16)]); 3] = [("untagged", &[]), ("802.1Q 100", &[(ETH_8021Q, 100)]), ("QinQ 300/400", &[(ETH_8021AD, 300), (ETH_8021Q, 400)])];
    let mut flows = 0;
    for (tagging, vlans) in taggings {
        for (host, pass, reason) in [(0x10u8, true, Reason::Trusted), (0x20, false, Reason::LowTrust), (0x30, true, Reason::Unknown)] {
            for dst in addr(host) {
                let route = snapshot.routes.iter().find(|(p, _)| p.contains(dst)).map(|(_, r)| *r);
                for proto in ["icmp", "udp", "tcp"] {
                    let what = format!("{proto} to {dst}, {tagging}");
                    let before = counters(&tables);
                    let prefix_before = route.map(|r| tables.prefix_counter(r.slot).unwrap().packets);
                    flows += 1;
                    let token = format!("bpi-token-{flows:04}");
                    let delivered = if vlans.is_empty() {
                        match proto {
                            "icmp" => bed.ping(dst),
                            "udp" => bed.udp(dst, &token),
                            _ => bed.tcp(dst),
                        }
                    } else {
                        let (l4, nh) = match (proto, dst.is_ipv4()) {
                            ("icmp", true) => (frames::echo(8, token.as_bytes()), 1),
                            ("icmp", false) => (frames::echo(128, token.as_bytes()), 58),
                            ("udp", _) => (frames::udp(PORT, token.as_bytes()), 17),
                            _ => (frames::tcp_syn(PORT, token.as_bytes()), 6),
                        };
                        let frame = match dst {
                            IpAddr::V4(d) => frames::ethernet_to(vb_mac, vlans, ETH_IP, &frames::ipv4(d.octets(), nh, &l4)),
                            IpAddr::V6(d) => frames::ethernet_to(vb_mac, vlans, ETH_IPV6, &frames::ipv6(d.octets(), nh, &l4)),
                        };
                        trafgen(&bed.near, "va", &[frame], 1).unwrap();
                        tap.saw(token.as_bytes(), WAIT)
                    };
                    assert_eq!(delivered, pass, "{what}: delivered={delivered}");
                    let after = counters(&tables);
                    assert!(after[reason.name()] > before[reason.name()], "{what}: counter {} did not move", reason.name());
                    let wrong = if pass { Reason::LowTrust } else { Reason::Trusted };
                    if reason != Reason::Unknown {
                        assert_eq!(after[wrong.name()], before[wrong.name()], "{what}: counter {} moved", wrong.name());
                    }
                    if let (Some(r), Some(b)) = (route, prefix_before) {
                        assert!(tables.prefix_counter(r.slot).unwrap().packets > b, "{what}: prefix counter did not move");
                    }
                }
            }
        }
    }
    eprintln!("checked {flows} flows; counters: {:?}", counters(&tables));
}

#[test]
fn a_score_changed_under_traffic_flips_the_verdict_once_and_detach_lets_all_pass() {
    if !root() {
        return;
    }
    let bed = Bed::new();
    bed.attach(Mode::Generic);
    let mut tables = bed.tables();
    tables.write_batch(&Batch::unrecorded("test"), |_| Ok(trust_ops())).unwrap();
    let low = addr(0x20)[0];
    let stop = AtomicBool::new(false);
    // Stops the sender however this scope ends, so a failed check cannot hang the test.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let sent = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let sender = s.spawn(|| {
            bed.near
                .run(|| {
                    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                    let mut seq = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        sock.send_to(format!("{seq}").as_bytes(), SocketAddr::new(low, PORT)).unwrap();
                        seq += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seq
                })
                .unwrap()
        });
        let early = bed.drain(Duration::from_millis(500));
        assert!(early.is_empty(), "low-trust traffic got through before the change: {early:?}");
        let dropped_before = counters(&tables)["low_trust"];
        assert!(dropped_before > 50, "only {dropped_before} drops counted");
        tables.write_batch(&Batch::unrecorded("test"), |_| Ok(vec![Op::SetScore { node: 2, score: 800_000 }])).unwrap();
        let late = bed.drain(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        let late: Vec<u32> = late.iter().chain(bed.drain(Duration::from_millis(200)).iter()).map(|t| t.parse().unwrap()).collect();
        assert!(late.len() > 50, "only {} datagrams passed after the change", late.len());
        // From the first datagram that passed, every later one passed too.
        let first = late[0];
        assert_eq!(late, (first..sent).collect::<Vec<_>>(), "the verdict flapped after the change");
        eprintln!("sent {sent}: {first} dropped, then every one passed");
        sent
    });
    assert!(sent > 0);
    // Detached, nothing filters: back to low trust, yet it passes and no counter moves.
    tables.write_batch(&Batch::unrecorded("test"), |_| Ok(vec![Op::SetScore { node: 2, score: 100_000 }])).unwrap();
    assert!(!bed.udp(low, "still-filtered"));
    attach::detach(&bed.fs.pin_dir(), "vb").unwrap();
    let before = counters(&tables);
    assert!(bed.udp(low, "detached"), "traffic was still dropped after detach");
    assert!(bed.ping(low) && bed.tcp(low));
    assert_eq!(counters(&tables), before, "counters moved with no program attached");
    assert!(bed.far.run(|| attach::hook("vb")).unwrap().unwrap().is_none());
}

#[test]
fn refuses_an_interface_someone_else_attached_to_and_unknown_interfaces() {
    if !root() {
        return;
    }
    let bed = Bed::new();
    let other = BpfFs::mount().unwrap();
    let other_dir = other.pin_dir();
    let pin_dir = bed.fs.pin_dir();
    bed.far
        .run(|| {
            let mut foreign = attach::load(&other_dir, PROGRAM, Settings::default()).unwrap();
            let prog: &mut aya::programs::Xdp = foreign.program_mut(PROGRAM).unwrap().try_into().unwrap();
            prog.attach("vb", aya::programs::XdpMode::Skb).unwrap();
            let err = attach::attach(&pin_dir, PROGRAM, "vb", Mode::Generic, Settings::default()).unwrap_err().to_string();
            assert!(err.contains("vb already has an XDP program attached") && err.contains("did not attach"), "{err}");
            let err = attach::attach(&pin_dir, PROGRAM, "nope0", Mode::Generic, Settings::default()).unwrap_err().to_string();
            assert!(err.contains("no network interface named 'nope0'"), "{err}");
            let err = attach::detach(&pin_dir, "vb").unwrap_err().to_string();
            assert!(err.contains("bpi-os has no program attached to 'vb'"), "{err}");
            // Nothing of ours was left behind.
            assert!(attach::attached_interfaces(&pin_dir).unwrap().is_empty());
        })
        .unwrap();
    // Attaching twice (a restart) swaps the program under the same link.
    bed.attach(Mode::Native);
    let first = bed.far.run(|| attach::hook("vb")).unwrap().unwrap().unwrap();
    let again = bed.far.run(|| attach::attach(&pin_dir, PROGRAM, "vb", Mode::Native, Settings::default())).unwrap().unwrap();
    assert!(again.replace);
    let second = bed.far.run(|| attach::hook("vb")).unwrap().unwrap().unwrap();
    assert_ne!(first.program_id, second.program_id);
    assert_eq!(second.mode, "native");
    let err = bed.far.run(|| attach::attach(&pin_dir, PROGRAM, "vb", Mode::Generic, Settings::default())).unwrap().unwrap_err().to_string();
    assert!(err.contains("unload it first to change the mode"), "{err}");
}

//! The program under BPF_PROG_TEST_RUN: every packet shape it meets, and
//! malformed ones, get the verdict the design says, and the counters agree.
//! Needs root (loading eBPF); skipped with the reason otherwise.

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use bpi_drx_data::{
    attach,
    layout::{Reason, Settings, Verdict, XDP_DROP, XDP_PASS},
    plan::Op,
    tables::{Batch, Counter, Tables},
    testbed::{
        frames::{self, ETH_8021AD, ETH_8021Q, ETH_IP, ETH_IPV6},
        BpfFs,
    },
};

const PROGRAM: &str = "xdp_trust_routing";

fn root() -> bool {
    bpi_support::skip::needs_root("loading eBPF programs")
}

struct Bed {
    _fs: BpfFs,
    ebpf: aya::Ebpf,
    tables: Tables,
}

impl Bed {
    fn new(settings: Settings) -> Bed {
        let fs = BpfFs::mount().unwrap();
        let ebpf = attach::load(&fs.pin_dir(), PROGRAM, settings).unwrap();
        let mut tables = Tables::open(&fs.pin_dir()).unwrap();
        let ops = vec![
            Op::SetScore { node: 1, score: 900_000 },
            Op::SetScore { node: 2, score: 100_000 },
            Op::MapPrefix { prefix: "10.1.0.0/16".parse().unwrap(), node: 1 },
            Op::MapPrefix { prefix: "10.2.0.0/16".parse().unwrap(), node: 2 },
            Op::MapPrefix { prefix: "10.2.3.0/24".parse().unwrap(), node: 1 },
            Op::MapPrefix { prefix: "fd00:1::/32".parse().unwrap(), node: 1 },
            Op::MapPrefix { prefix: "fd00:2::/32".parse().unwrap(), node: 2 },
            // A prefix whose node has no score: unknown.
            Op::MapPrefix { prefix: "10.9.0.0/16".parse().unwrap(), node: 77 },
        ];
        tables.write_batch(&Batch::unrecorded("test"), |_| Ok(ops.clone())).unwrap();
        Bed { _fs: fs, ebpf, tables }
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let prog = attach::program(&self.ebpf, PROGRAM).unwrap();
        prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap().return_value
    }

    fn counters(&self) -> BTreeMap<&'static str, Counter> {
        self.tables.reason_counters().unwrap().into_iter().map(|(r, c)| (r.name(), c)).collect()
    }

    /// Runs `frame` and checks both the verdict and which counter moved.
    fn expect(&self, what: &str, frame: &[u8], verdict: u32, reason: Reason) {
        let before = self.counters();
        let got = self.run(frame);
        assert_eq!(got, verdict, "{what}: verdict {got}, wanted {verdict}");
        let after = self.counters();
        for r in Reason::ALL {
            if matches!(r, Reason::CacheHit | Reason::CacheMiss) {
                continue;
            }
            let moved = after[r.name()].packets - before[r.name()].packets;
            let want = u64::from(r == reason);
            assert_eq!(moved, want, "{what}: counter {} moved by {moved}", r.name());
        }
        if frame.len() > 14 {
            assert_eq!(after[reason.name()].bytes - before[reason.name()].bytes, frame.len() as u64, "{what}: bytes");
        }
    }
}

fn v4(a: [u8; 4]) -> Vec<u8> {
    frames::ipv4(a, 17, &frames::udp(53, b"hello"))
}

fn v6(last: [u8; 4], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut a = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[2..4].copy_from_slice(&last[..2]);
    a[14..16].copy_from_slice(&last[2..]);
    frames::ipv6(a, next, payload)
}

#[test]
fn verdicts_by_destination_trust_for_every_encapsulation() {
    if !root() {
        return;
    }
    let bed = Bed::new(Settings::default());
    let tags: [&[(u16, u16)]; 4] = [&[], &[(ETH_8021Q, 10)], &[(ETH_8021AD, 20), (ETH_8021Q, 30)], &[(ETH_8021Q, 1), (ETH_8021Q, 2)]];
    for vlans in tags {
        let tag = format!("{} tags", vlans.len());
        let udp6 = frames::udp(53, b"x");
        let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
            ("v4 high", frames::ethernet(vlans, ETH_IP, &v4([10, 1, 2, 3])), XDP_PASS, Reason::Trusted),
            ("v4 low", frames::ethernet(vlans, ETH_IP, &v4([10, 2, 2, 3])), XDP_DROP, Reason::LowTrust),
            ("v4 longest match wins", frames::ethernet(vlans, ETH_IP, &v4([10, 2, 3, 4])), XDP_PASS, Reason::Trusted),
            ("v4 unknown", frames::ethernet(vlans, ETH_IP, &v4([192, 0, 2, 1])), XDP_PASS, Reason::Unknown),
            ("v4 node without score", frames::ethernet(vlans, ETH_IP, &v4([10, 9, 0, 1])), XDP_PASS, Reason::Unknown),
            ("v6 high", frames::ethernet(vlans, ETH_IPV6, &v6([0, 1, 0, 9], 17, &udp6)), XDP_PASS, Reason::Trusted),
            ("v6 low", frames::ethernet(vlans, ETH_IPV6, &v6([0, 2, 0, 9], 6, &[0; 20])), XDP_DROP, Reason::LowTrust),
            ("v6 unknown", frames::ethernet(vlans, ETH_IPV6, &v6([0, 3, 0, 9], 58, &[128, 0, 0, 0])), XDP_PASS, Reason::Unknown),
            ("arp", frames::ethernet(vlans, 0x0806, &[0; 28]), XDP_PASS, Reason::NotIp),
        ];
        for (what, frame, verdict, reason) in cases {
            bed.expect(&format!("{what}, {tag}"), &frame, verdict, reason);
        }
    }
}

#[test]
fn ipv6_extension_headers_are_walked_or_get_the_default_verdict() {
    if !root() {
        return;
    }
    let bed = Bed::new(Settings { default_verdict: Verdict::Drop, ..Settings::default() });
    // Hop-by-hop (8 bytes) then fragment (8 bytes) then UDP: walked, low trust.
    let mut chain = vec![44, 0, 1, 4, 0, 0, 0, 0];
    chain.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 1]);
    chain.extend_from_slice(&frames::udp(53, b"x"));
    bed.expect("hbh+frag+udp to low", &frames::ethernet(&[], ETH_IPV6, &v6([0, 2, 0, 1], 0, &chain)), XDP_DROP, Reason::LowTrust);
    bed.expect("hbh+frag+udp to high", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 0, &chain)), XDP_PASS, Reason::Trusted);
    // Routing header (len 2 => 24 bytes) then TCP.
    let mut rh = vec![6, 2, 0, 0, 0, 0, 0, 0];
    rh.extend_from_slice(&[0; 16]);
    rh.extend_from_slice(&[0; 20]);
    bed.expect("routing+tcp", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 43, &rh)), XDP_PASS, Reason::Trusted);
    // A routing header with segments left: the packet is going to the final
    // segment, not to its destination address (the next hop). Trust is the
    // final destination's: a low-trust final segment behind a trusted next
    // hop is dropped, and the other way round passes.
    let addr = |net: u8| -> [u8; 16] { [0xfd, 0, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9] };
    let srh = |final_net: u8, kind: u8| -> Vec<u8> {
        // Segment routing (type 4) or Mobile IPv6 (type 2): list[0] / the home address at byte 8.
        let mut h = vec![17, 2, kind, 1, 0, 0, 0, 0];
        h.extend_from_slice(&addr(final_net));
        h.extend_from_slice(&frames::udp(53, b"x"));
        h
    };
    for kind in [4u8, 2] {
        bed.expect(&format!("routing type {kind}, final low behind high"), &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 43, &srh(2, kind))), XDP_DROP, Reason::LowTrust);
        bed.expect(&format!("routing type {kind}, final high behind low"), &frames::ethernet(&[], ETH_IPV6, &v6([0, 2, 0, 1], 43, &srh(1, kind))), XDP_PASS, Reason::Trusted);
    }
    // Type 0 (deprecated): the last of its addresses.
    let mut rh0 = vec![17, 4, 0, 2, 0, 0, 0, 0];
    rh0.extend_from_slice(&addr(1));
    rh0.extend_from_slice(&addr(2));
    rh0.extend_from_slice(&frames::udp(53, b"x"));
    bed.expect("routing type 0, last address low", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 43, &rh0)), XDP_DROP, Reason::LowTrust);
    // A routing type it cannot read (RPL, 3) with segments left: default verdict.
    let mut rpl = srh(1, 3);
    rpl[2] = 3;
    bed.expect("routing type 3", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 43, &rpl)), XDP_DROP, Reason::Unparsed);
    // The final address cut off.
    let cut = srh(2, 4)[..12].to_vec();
    bed.expect("routing final address cut", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 43, &cut)), XDP_DROP, Reason::Malformed);
    // Mobility (135) and experimental (253): headers it does not walk.
    for nh in [135u8, 139, 140, 253, 254] {
        bed.expect(&format!("next header {nh}"), &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], nh, &[59, 0, 0, 0, 0, 0, 0, 0])), XDP_DROP, Reason::Unparsed);
    }
    // Dest-opts after an unknown one further down the chain.
    bed.expect("dstopts then 253", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 60, &[253, 0, 0, 0, 0, 0, 0, 0, 0, 0])), XDP_DROP, Reason::Unparsed);
    // Seven chained dest-opts headers: deeper than the program walks.
    let deep: Vec<u8> = (0..7).flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0]).collect();
    bed.expect("too deep", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 60, &deep)), XDP_DROP, Reason::Unparsed);
}

#[test]
fn malformed_frames_get_the_default_verdict() {
    if !root() {
        return;
    }
    for default in [Verdict::Drop, Verdict::Pass] {
        let bed = Bed::new(Settings { default_verdict: default, ..Settings::default() });
        let want = default.raw();
        let good4 = frames::ethernet(&[], ETH_IP, &v4([10, 1, 2, 3]));
        let good6 = frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 17, &frames::udp(53, b"x")));
        // Every truncation of a good frame inside its IP headers. (The kernel
        // refuses test runs shorter than an Ethernet header; drivers drop such runts.)
        for cut in 14..14 + 20 {
            bed.expect(&format!("v4 cut at {cut}"), &good4[..cut], want, Reason::Malformed);
        }
        for cut in 14..14 + 40 {
            bed.expect(&format!("v6 cut at {cut}"), &good6[..cut], want, Reason::Malformed);
        }
        let vlan = frames::ethernet(&[(ETH_8021Q, 5)], ETH_IP, &v4([10, 1, 2, 3]));
        bed.expect("vlan tag cut", &vlan[..16], want, Reason::Malformed);
        // A third VLAN tag: more than the program unwraps; not passed as not-IP.
        let three = frames::ethernet(&[(ETH_8021AD, 1), (ETH_8021Q, 2), (ETH_8021Q, 3)], ETH_IP, &v4([10, 2, 2, 3]));
        bed.expect("three vlan tags", &three, want, Reason::Unparsed);
        let mut bad = good4.clone();
        for ihl in [0u8, 1, 4] {
            bad[14] = 0x40 | ihl;
            bed.expect(&format!("ihl {ihl}"), &bad, want, Reason::Malformed);
        }
        bad[14] = 0x4f; // 60-byte header in a shorter packet
        bed.expect("ihl past the end", &bad, want, Reason::Malformed);
        bad[14] = 0x65; // version 6 in an IPv4 ethertype
        bed.expect("version 6 as ipv4", &bad, want, Reason::Malformed);
        let mut short_len = good4.clone();
        short_len[16..18].copy_from_slice(&10u16.to_be_bytes());
        bed.expect("total length below header", &short_len, want, Reason::Malformed);
        let mut v6_as_4 = good6.clone();
        v6_as_4[14] = 0x40;
        bed.expect("version 4 as ipv6", &v6_as_4, want, Reason::Malformed);
        // Hop-by-hop header claiming more than the packet holds, then another.
        let ext = [60u8, 200, 0, 0, 0, 0, 0, 0];
        bed.expect("ext header past the end", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 0, &ext)), want, Reason::Malformed);
        bed.expect("ext header cut", &frames::ethernet(&[], ETH_IPV6, &v6([0, 1, 0, 1], 0, &[17])), want, Reason::Malformed);
    }
}

#[test]
fn unknown_verdict_and_threshold_come_from_the_settings_and_change_atomically() {
    if !root() {
        return;
    }
    let mut bed = Bed::new(Settings::default());
    let unknown = frames::ethernet(&[], ETH_IP, &v4([192, 0, 2, 1]));
    let high = frames::ethernet(&[], ETH_IP, &v4([10, 1, 0, 1]));
    let low = frames::ethernet(&[], ETH_IP, &v4([10, 2, 0, 1]));
    bed.expect("unknown passes", &unknown, XDP_PASS, Reason::Unknown);
    bed.expect("low dropped", &low, XDP_DROP, Reason::LowTrust);
    let s = Settings { threshold: 950_000, unknown_verdict: Verdict::Drop, ..Settings::default() };
    let applied = bed.tables.write_batch(&Batch::unrecorded("test"), |_| Ok(vec![Op::Settings(s)])).unwrap();
    assert!(!applied.applied.unwrap().resynced);
    bed.expect("unknown dropped", &unknown, XDP_DROP, Reason::Unknown);
    bed.expect("0.9 below 0.95", &high, XDP_DROP, Reason::LowTrust);
    // A score change lands in both generations and in the cached answer.
    bed.tables.write_batch(&Batch::unrecorded("test"), |_| Ok(vec![Op::SetScore { node: 1, score: 960_000 }])).unwrap();
    bed.expect("0.96 above 0.95", &high, XDP_PASS, Reason::Trusted);
    bed.tables.write_batch(&Batch::unrecorded("test"), |_| Ok(vec![Op::SetScore { node: 1, score: 10_000 }])).unwrap();
    bed.expect("down again", &high, XDP_DROP, Reason::LowTrust);
    let snap = bed.tables.snapshot().unwrap();
    assert_eq!(snap.nodes[&1], 10_000);
    assert_eq!(snap.settings.unknown_verdict, Verdict::Drop);
    // Per-prefix counters: 10.1.0.0/16 saw the three `high` frames.
    let slot = snap.routes[&"10.1.0.0/16".parse().unwrap()].slot;
    assert_eq!(bed.tables.prefix_counter(slot).unwrap().packets, 3);
}

//! The XDP program's packet parser, run by the kernel (BPF_PROG_TEST_RUN) on
//! generated frames: every frame gets pass or drop, and exactly one reason
//! counter moves, by one. Needs root (loading eBPF, mounting bpffs).
#![no_main]

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use bpi_drx_data::{
    attach,
    layout::{Reason, Settings, Verdict, XDP_DROP, XDP_PASS},
    plan::Op,
    tables::{Batch, Tables},
    testbed::BpfFs,
};
use libfuzzer_sys::fuzz_target;

struct Bed {
    _fs: BpfFs,
    ebpf: aya::Ebpf,
    tables: Tables,
}

thread_local! {
    static BED: Bed = {
        let fs = BpfFs::mount().expect("mounting a bpffs (root?)");
        let ebpf = attach::load(&fs.pin_dir(), "xdp_trust_routing", Settings { default_verdict: Verdict::Drop, ..Settings::default() }).unwrap();
        let mut tables = Tables::open(&fs.pin_dir()).unwrap();
        let ops = vec![
            Op::SetScore { node: 1, score: 900_000 },
            Op::SetScore { node: 2, score: 100_000 },
            Op::MapPrefix { prefix: "10.0.0.0/8".parse().unwrap(), node: 1 },
            Op::MapPrefix { prefix: "10.2.0.0/16".parse().unwrap(), node: 2 },
            Op::MapPrefix { prefix: "fd00::/8".parse().unwrap(), node: 1 },
            Op::MapPrefix { prefix: "fd00:2::/32".parse().unwrap(), node: 2 },
        ];
        tables.write_batch(&Batch::unrecorded("fuzz"), |_| Ok(ops)).unwrap();
        Bed { _fs: fs, ebpf, tables }
    };
}

fn counters(t: &Tables) -> BTreeMap<&'static str, u64> {
    t.reason_counters().unwrap().into_iter().filter(|(r, _)| !matches!(r, Reason::CacheHit | Reason::CacheMiss)).map(|(r, c)| (r.name(), c.packets)).collect()
}

fuzz_target!(|frame: &[u8]| {
    // The kernel refuses test runs shorter than an Ethernet header.
    if frame.len() < 14 || frame.len() > 4096 {
        return;
    }
    BED.with(|bed| {
        let prog = attach::program(&bed.ebpf, "xdp_trust_routing").unwrap();
        let before = counters(&bed.tables);
        let verdict = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap().return_value;
        assert!(verdict == XDP_PASS || verdict == XDP_DROP, "verdict {verdict}");
        let after = counters(&bed.tables);
        let moved: Vec<(&str, u64)> = after.iter().map(|(k, v)| (*k, v - before[k])).filter(|(_, d)| *d > 0).collect();
        assert_eq!(moved.len(), 1, "counters moved: {moved:?}");
        assert_eq!(moved[0].1, 1, "counters moved: {moved:?}");
    });
});

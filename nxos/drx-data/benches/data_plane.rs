//! `cargo xtask bench` (data-plane part), on a veth pair between two network
//! namespaces driven by trafgen (netsniff-ng). Every figure sits next to a
//! reference measured in the same run:
//!
//! - drop rate of xdp_trust_routing (64k prefixes loaded) against xdp-tools'
//!   xdp-filter and an nftables netdev-ingress drop rule, the same frames
//!   from the same generator, and the generator's rate with no filter;
//! - trust-map update rate while traffic flows, single-change batches and
//!   1000-change batches;
//! - cost per packet by BPF_PROG_TEST_RUN at 64k prefixes, with the
//!   exact-match cache (the steady state for a flow) and without it (every
//!   lookup in the LPM trie).
//!
//! Prints a table and writes target/bench/data_plane.json. Needs root.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use bpi_drx_data::{
    attach::{self, Mode},
    layout::{Reason, Settings},
    plan::Op,
    prefix::Prefix,
    tables::{Batch, Tables},
    testbed::{frames, mac, trafgen, veth, BpfFs, Netns},
};
use bpi_support::Cmd;
use serde_json::json;

const PROGRAM: &str = "xdp_trust_routing";
const PACKETS: u64 = 600_000;
const ROUNDS: usize = 3;
const DST: [u8; 4] = [10, 99, 0, 1];

/// 65,536 /24s covering 10.0.0.0/8, spread over 1,024 nodes, all below the threshold.
fn table_ops() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..1024).map(|n| Op::SetScore { node: n, score: 100_000 }).collect();
    for i in 0..65_536u32 {
        let prefix = Prefix::V4 { addr: [10, (i >> 8) as u8, i as u8, 0], len: 24 };
        ops.push(Op::MapPrefix { prefix, node: i % 1024 });
    }
    ops
}

/// Sends PACKETS frames and returns (seconds, counter delta).
fn drive(gen: &Netns, frame: &[u8], counter: &dyn Fn() -> Result<u64>) -> Result<(f64, u64)> {
    let before = counter()?;
    let started = Instant::now();
    trafgen(gen, "bg", &[frame.to_vec()], PACKETS)?;
    let secs = started.elapsed().as_secs_f64();
    // Native XDP on veth runs in NAPI: give the last batch a moment to land.
    std::thread::sleep(Duration::from_millis(100));
    Ok((secs, counter()? - before))
}

fn nft_counter(sink: &Netns) -> Result<u64> {
    let out = sink.cmd("nft").args(["-j", "list", "table", "netdev", "bpibench"]).output()?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    for item in v["nftables"].as_array().context("nft -j")? {
        if let Some(expr) = item["rule"]["expr"].as_array() {
            for e in expr {
                if let Some(p) = e["counter"]["packets"].as_u64() {
                    return Ok(p);
                }
            }
        }
    }
    bail!("no counter in the nft ruleset: {out}")
}

fn xdp_filter_counter(sink: &Netns) -> Result<u64> {
    let out = sink.run(|| Cmd::new("xdp-filter").arg("status").output())??;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"XDP_DROP") {
            return Ok(words[1].parse()?);
        }
    }
    bail!("no XDP_DROP line in xdp-filter status: {out}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// xdp-filter (libxdp) keeps its pins under /sys/fs/bpf.
fn ensure_sys_bpffs() -> Result<()> {
    if bpi_drx_data::tables::check_bpffs(Path::new("/sys/fs/bpf")).is_err() {
        Cmd::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).run()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    if !bpi_support::host::is_root() {
        println!("data plane bench skipped: XDP, namespaces and bpffs need root");
        return Ok(());
    }
    ensure_sys_bpffs()?;
    let gen = Netns::new("bench-gen")?;
    let sink = Netns::new("bench-sink")?;
    veth(&gen, "bg", &sink, "bs")?;
    let frame = frames::ethernet_to(mac(&sink, "bs")?, &[], frames::ETH_IP, &frames::ipv4(DST, 17, &frames::udp(7777, &[0; 18])));
    let fs = BpfFs::mount()?;
    let pin_dir = fs.pin_dir();

    // Load the table once; it stays pinned while the program comes and goes.
    let t0 = Instant::now();
    sink.run(|| attach::attach(&pin_dir, PROGRAM, "bs", Mode::Native, Settings::default()))??;
    let mut tables = Tables::open(&pin_dir)?;
    tables.write_batch(&Batch::unrecorded("bench"), |_| Ok(table_ops()))?;
    let table_load = t0.elapsed().as_secs_f64();
    attach::detach(&pin_dir, "bs")?;

    let ours_counter = || -> Result<u64> {
        let t = Tables::open(&pin_dir)?;
        Ok(t.reason_counters()?.into_iter().find(|(r, _)| *r == Reason::LowTrust).map(|(_, c)| c.packets).unwrap_or(0))
    };
    let nft_conf = "table netdev bpibench {\n chain in {\n  type filter hook ingress device bs priority 0;\n  ip daddr 10.99.0.1 counter drop\n }\n}\n";
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        // The generator alone: frames reach the stack, which drops them (not ours, no forwarding).
        let (secs, _) = drive(&gen, &frame, &|| Ok(0))?;
        rates.entry("trafgen, no filter (sent/s)").or_default().push(PACKETS as f64 / secs);

        sink.run(|| attach::attach(&pin_dir, PROGRAM, "bs", Mode::Native, Settings::default()))??;
        let (secs, dropped) = drive(&gen, &frame, &ours_counter)?;
        attach::detach(&pin_dir, "bs")?;
        anyhow::ensure!(dropped >= PACKETS * 99 / 100, "xdp_trust_routing dropped only {dropped} of {PACKETS}");
        rates.entry("xdp_trust_routing").or_default().push(dropped as f64 / secs);

        sink.run(|| -> Result<()> {
            Cmd::new("xdp-filter").args(["load", "-m", "native", "bs"]).run()?;
            Cmd::new("xdp-filter").args(["ip", "-m", "dst", "10.99.0.1"]).run()?;
            Ok(())
        })??;
        let (secs, dropped) = drive(&gen, &frame, &|| xdp_filter_counter(&sink))?;
        sink.run(|| Cmd::new("xdp-filter").args(["unload", "bs"]).run())??;
        anyhow::ensure!(dropped >= PACKETS * 99 / 100, "xdp-filter dropped only {dropped} of {PACKETS}");
        rates.entry("xdp-filter").or_default().push(dropped as f64 / secs);

        sink.cmd("nft").args(["-f", "-"]).stdin_bytes(nft_conf).run()?;
        let (secs, dropped) = drive(&gen, &frame, &|| nft_counter(&sink))?;
        sink.cmd("nft").args(["delete", "table", "netdev", "bpibench"]).run()?;
        anyhow::ensure!(dropped >= PACKETS * 99 / 100, "nftables dropped only {dropped} of {PACKETS}");
        rates.entry("nftables netdev ingress").or_default().push(dropped as f64 / secs);
        eprintln!("round {} of {ROUNDS} done", round + 1);
    }
    let rate = |k: &str| median(rates[k].clone());
    let ours = rate("xdp_trust_routing");

    // Map updates while the program drops traffic.
    sink.run(|| attach::attach(&pin_dir, PROGRAM, "bs", Mode::Native, Settings::default()))??;
    // Traffic runs until both measurements are done (each a fixed 2 s), so
    // neither depends on how fast trafgen gets through a run.
    let done = AtomicBool::new(false);
    let (single, batched) = std::thread::scope(|s| -> Result<(f64, f64)> {
        let traffic = s.spawn(|| -> Result<()> {
            while !done.load(Ordering::Relaxed) {
                trafgen(&gen, "bg", std::slice::from_ref(&frame), PACKETS)?;
            }
            Ok(())
        });
        let mut measure = |ops_of: &dyn Fn(u64) -> Vec<Op>| -> Result<f64> {
            let (mut changes, started) = (0u64, Instant::now());
            while started.elapsed() < Duration::from_secs(2) {
                let ops = ops_of(changes);
                let n = ops.len() as u64;
                tables.write_batch(&Batch::unrecorded("bench"), |_| Ok(ops))?;
                changes += n;
            }
            Ok(changes as f64 / started.elapsed().as_secs_f64())
        };
        let single = measure(&|c| vec![Op::SetScore { node: (c % 1024) as u32, score: 100_000 + (c % 7) as u32 }]);
        let batched = measure(&|c| (0..1000).map(|i| Op::SetScore { node: i % 1024, score: 100_000 + (c % 7) as u32 }).collect());
        done.store(true, Ordering::Relaxed);
        traffic.join().map_err(|_| anyhow::anyhow!("traffic thread panicked"))??;
        Ok((single?, batched?))
    })?;
    attach::detach(&pin_dir, "bs")?;

    // Cost per packet, in the kernel's own test runner.
    let ebpf = attach::load(&pin_dir, PROGRAM, Settings::default())?;
    let prog = attach::program(&ebpf, PROGRAM)?;
    let mut per_packet = BTreeMap::new();
    for cache in [true, false] {
        let s = Settings { cache, ..tables.settings()? };
        tables.write_batch(&Batch::unrecorded("bench"), |_| Ok(vec![Op::Settings(s)]))?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            let r = prog.test_run(TestRunOptions { data_in: Some(&frame), repeat: 1_000_000, ..Default::default() })?;
            anyhow::ensure!(r.return_value == bpi_drx_data::layout::XDP_DROP, "test run gave verdict {}", r.return_value);
            runs.push(r.duration.as_nanos() as f64);
        }
        per_packet.insert(if cache { "cache on (flow steady state)" } else { "cache off (LPM trie every packet)" }, median(runs));
    }

    println!();
    println!("data plane, veth pair, {PACKETS} frames per run, median of {ROUNDS} runs:");
    for (k, v) in &rates {
        println!("  {k:<32} {:>10.0} pkt/s", rate(k));
        let _ = v;
    }
    let vs_xdp_filter = ours / rate("xdp-filter");
    let vs_nft = ours / rate("nftables netdev ingress");
    println!("  xdp_trust_routing / xdp-filter       {vs_xdp_filter:.3}");
    println!("  xdp_trust_routing / nftables         {vs_nft:.3}");
    println!("trust tables: 65,536 prefixes loaded in {table_load:.2} s");
    println!("map updates under traffic: {single:.0} single-change batches/s, {batched:.0} changes/s in 1000-change batches");
    for (k, v) in &per_packet {
        println!("cost per packet at 64k prefixes, {k}: {v:.1} ns");
    }
    let report = json!({
        "packets_per_run": PACKETS,
        "rounds": ROUNDS,
        "drop_rate_pps": rates.keys().map(|k| (k.to_string(), rate(k))).collect::<BTreeMap<_, _>>(),
        "runs_pps": rates,
        "ratio_vs_xdp_filter": vs_xdp_filter,
        "ratio_vs_nftables": vs_nft,
        "table_load_seconds_64k": table_load,
        "updates_per_s_single": single,
        "updates_per_s_batched_1000": batched,
        "ns_per_packet_64k": per_packet,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("data_plane.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

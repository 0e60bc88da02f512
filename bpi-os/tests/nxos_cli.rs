//! `bpi-os nxos ebpf|trust` as an operator runs it: bad input fails with a
//! clear error and changes nothing; on a veth pair (root) the program loads,
//! reports, takes trust updates and unloads.

use std::process::Command;

use bpi_drx_data::testbed::{veth, BpfFs, Netns};
use serde_json::Value;

fn bpi_os(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpi-os")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    let pins = pins.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["ebpf", "load", "--program", "xdp_nope", "--interface", "lo"], "unknown program 'xdp_nope'"),
        (&["ebpf", "load", "--interface", "nosuch0"], "no network interface named 'nosuch0'"),
        (&["ebpf", "load", "--interface", "lo", "--mode", "turbo"], "invalid value 'turbo' for '--mode"),
        (&["trust", "update", "--node-id", "1", "--score", "1.2"], "outside 0..1"),
        (&["trust", "update", "--node-id", "1", "--score", "NaN"], "not a finite number"),
        (&["trust", "update", "--node-id", "1", "--score", "-0.5"], "outside 0..1"),
        (&["trust", "update", "--node-id", "1", "--node-id", "2", "--score", "0.5"], "in pairs"),
        (&["trust", "map", "--prefix", "10.0.0.1/8", "--node-id", "1"], "host bits"),
        (&["trust", "map", "--prefix", "10.0.0.0/40", "--node-id", "1"], "0..=32"),
        (&["trust", "map", "--prefix", "fe80::zz/64", "--node-id", "1"], "not an IPv4 or IPv6"),
        (&["trust", "update", "--node-id", "1", "--score", "0.5"], "load the program first"),
        (&["ebpf", "unload", "--interface", "lo"], "no program attached to 'lo'"),
    ];
    for (args, want) in cases {
        let mut full = vec!["nxos", "--pin-dir", pins];
        full.extend_from_slice(args);
        let (ok, _, err) = bpi_os(&full);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: wanted '{want}' in: {err}");
    }
    assert!(!dir.path().join("pins").exists(), "a refused command created the pin directory");
    // Status of a machine with nothing loaded is an answer, not an error.
    let (ok, out, _) = bpi_os(&["nxos", "--pin-dir", pins, "ebpf", "status", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["loaded"], false);
}

#[test]
fn load_status_trust_and_unload_on_a_veth_pair() {
    if !bpi_support::skip::needs_root("XDP and network namespaces") {
        return;
    }
    let near = Netns::new("cli-near").unwrap();
    let far = Netns::new("cli-far").unwrap();
    veth(&near, "ca", &far, "cb").unwrap();
    let fs = BpfFs::mount().unwrap();
    let pins = fs.pin_dir();
    let pins = pins.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_bpi-os");
    let in_far = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", &far.name, bin, "nxos", "--pin-dir", pins]).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, out, err) = in_far(&["ebpf", "load", "--interface", "cb", "--mode", "generic", "--dry-run"]);
    assert!(ok && out.contains("would attach xdp_trust_routing on cb"), "{out}{err}");
    let (_, out, _) = in_far(&["ebpf", "status", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["loaded"], false, "dry run loaded something");

    let (ok, out, err) = in_far(&["ebpf", "load", "--interface", "cb", "--mode", "generic"]);
    assert!(ok && out.contains("attached xdp_trust_routing to cb"), "{out}{err}");
    assert!(err.contains("not recorded in the ledger"), "{err}");
    let (ok, out, err) = in_far(&["ebpf", "status", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["links"][0]["interface"], "cb");
    assert_eq!(v["links"][0]["hook"]["mode"], "generic");
    assert_eq!(v["settings"]["threshold"], 0.5);
    let version = v["version"].as_u64().unwrap();

    let (ok, out, _) = in_far(&["trust", "update", "--node-id", "7", "--score", "0.85", "--dry-run"]);
    assert!(ok && out.contains("put_node"), "{out}");
    let (_, out, _) = in_far(&["ebpf", "status", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["version"].as_u64().unwrap(), version, "dry run changed the maps");

    let (ok, out, err) = in_far(&["trust", "update", "--node-id", "7", "--score", "0.85", "--node-id", "8", "--score", "0.1"]);
    assert!(ok && out.contains("applied 2 change(s)"), "{out}{err}");
    let (ok, _, err) = in_far(&["trust", "map", "--prefix", "10.20.0.0/16", "--node-id", "7", "--prefix", "2001:db8::/32", "--node-id", "8"]);
    assert!(ok, "{err}");
    let (ok, out, err) = in_far(&["trust", "settings", "--threshold", "0.9", "--unknown-verdict", "drop"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = in_far(&["trust", "show", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"]["7"], 0.85);
    assert_eq!(v["settings"]["threshold"], 0.9);
    assert_eq!(v["settings"]["unknown_verdict"], "drop");
    assert_eq!(v["prefixes"].as_array().unwrap().len(), 2);
    assert_eq!(v["version"].as_u64().unwrap(), version + 3);
    let (ok, _, err) = in_far(&["trust", "unmap", "--prefix", "192.0.2.0/24"]);
    assert!(!ok && err.contains("not mapped"), "{err}");

    // Metrics under traffic: UDP from near to far, through the program on cb
    // (dropped by the drop verdict set above, counted either way).
    near.ip(&["addr", "add", "10.99.0.1/24", "dev", "ca"]).unwrap();
    far.ip(&["addr", "add", "10.99.0.2/24", "dev", "cb"]).unwrap();
    let cb_mac = bpi_drx_data::testbed::mac(&far, "cb").unwrap().map(|b| format!("{b:02x}")).join(":");
    near.ip(&["neigh", "add", "10.99.0.2", "lladdr", &cb_mac, "dev", "ca"]).unwrap();
    let sending = std::sync::atomic::AtomicBool::new(true);
    let samples = std::thread::scope(|sc| {
        sc.spawn(|| {
            near.run(|| {
                let sock = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
                let start = std::time::Instant::now();
                while sending.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < std::time::Duration::from_secs(20) {
                    let _ = sock.send_to(&[0u8; 64], "10.99.0.2:9");
                }
            })
            .unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = in_far(&["metrics", "--real-time", "--count", "2", "--interval", "0.5", "--json=short"]);
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let (ok, out, err) = samples;
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let last = &lines[1];
    let pps = last["packets_per_second"].as_f64().unwrap();
    let ns = last["ns_per_packet"].as_f64().unwrap();
    eprintln!("metrics under UDP traffic: {pps:.0} packets/s, {ns:.1} ns per packet (generic XDP)");
    assert!(pps > 100.0 && ns > 0.0, "{last}");
    assert!(last["packets"].as_u64().unwrap() > lines[0]["packets"].as_u64().unwrap(), "the counters did not grow: {out}");
    // No control plane or QLock on this machine's bus: null, not zero, and down in Prometheus.
    assert_eq!((last["nodes"].clone(), last["active_sessions"].clone(), last["verified_paths"].clone()), (Value::Null, Value::Null, Value::Null));
    let (ok, prom, err) = in_far(&["metrics", "--prometheus"]);
    assert!(ok, "{err}");
    for want in ["bpi_source_up{source=\"data_plane\"} 1", "bpi_source_up{source=\"control_plane\"} 0", "bpi_source_up{source=\"qlock\"} 0", "# TYPE bpi_xdp_packets_total counter"] {
        assert!(prom.contains(want), "no '{want}' in {prom}");
    }
    let textfile = tempfile::tempdir().unwrap();
    let f = textfile.path().join("bpi.prom");
    let (ok, _, err) = in_far(&["metrics", "--prometheus", "--textfile", f.to_str().unwrap()]);
    assert!(ok && std::fs::read_to_string(&f).unwrap().contains("bpi_xdp_packets_total"), "{err}");

    // Loading again is a restart: the program is swapped under the same link.
    let (ok, out, err) = in_far(&["ebpf", "load", "--interface", "cb", "--mode", "generic"]);
    assert!(ok && out.contains("swapped"), "{out}{err}");
    let (ok, out, err) = in_far(&["ebpf", "unload", "--all"]);
    assert!(ok && out.contains("detached from cb"), "{out}{err}");
    let (_, out, _) = in_far(&["ebpf", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["links"].as_array().unwrap().len(), 0);
    // The maps (and the trust in them) stay pinned for the next load.
    assert_eq!(v["loaded"], true);
}

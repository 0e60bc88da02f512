//! Host integration: `bpi-os nxos control serve` on a private dbus-daemon
//! with the shipped bus policy and the data plane's maps pinned in a private
//! bpffs. Queries work for anyone; trust changes only for root, recompute
//! the routes and land in the data plane; bad input changes nothing. Needs
//! root (eBPF maps, calling as `nobody`) and dbus-daemon; skipped otherwise.

mod common;

use std::path::{Path, PathBuf};

use bpi_drx_control::model::Topology;
use bpi_drx_data::{attach, layout::Settings, tables::Tables, testbed::BpfFs};
use common::{can_run, cli, scratch, start_bus, text, NOBODY};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[test]
fn control_plane_over_dbus_recomputes_and_writes_the_data_plane() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[&repo("units/dbus/org.bpi.os.Control1.conf"), &repo("units/dbus/org.bpi.os.Ledger1.conf")]);
    // The ledger on the same bus: the daemon records its data-plane writes there.
    let store = s.dir.path().join("ledger");
    let ledger = common::serve(&s, &["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store", store.to_str().unwrap()]);
    let fs = BpfFs::mount().unwrap();
    let pins = fs.pin_dir();
    drop(attach::load(&pins, "xdp_trust_routing", Settings::default()).unwrap());
    let topology = repo("docs/examples/topology.toml");
    let policies = repo("rootfs-overlay/bpi/config/policies/intent-policies");
    let (pins_s, topo_s, pol_s) = (pins.to_str().unwrap(), topology.to_str().unwrap(), policies.to_str().unwrap());
    let svc = common::serve(&s, &["nxos", "--pin-dir", pins_s, "control", "serve", "--topology", topo_s, "--policies", pol_s, "--bus", &bus.address]);

    // On start the daemon wrote every node's score and prefix, and its blacklist threshold.
    let snap = Tables::open(&pins).unwrap().snapshot().unwrap();
    assert_eq!(snap.nodes.len(), 4);
    assert_eq!(snap.routes.len(), 5);
    assert_eq!(snap.settings.threshold, 300_000);

    let b = bus.address.as_str();
    let topo = json(&cli(&s, Some(NOBODY), &["nxos", "topology", "--trust-scores", "--routing-table", "--json", "--bus", b]));
    assert_eq!(topo["nodes"].as_array().unwrap().len(), 4);
    let via = |t: &Value, dest: &str| t["routing_table"].as_array().unwrap().iter().find(|r| r["destination"] == dest).map(|r| r["next_hop"].as_str().unwrap().to_string());
    assert_eq!(via(&topo, "transit-b").as_deref(), Some("transit-b"));

    let r = json(&cli(&s, Some(NOBODY), &["nxos", "route", "--from", "edge-a", "--to", "dc-d", "--intent", "high_security_banking", "--json", "--bus", b]));
    assert_eq!(r["answer"], "found");
    assert_eq!(r["best"]["nodes"], serde_json::json!(["edge-a", "core-c", "dc-d"]));
    // No path is a "no" answer: exit 3, with the answer still printed.
    let out = cli(&s, None, &["nxos", "route", "--from", "edge-a", "--to", "dc-d", "--intent", "ultra_low_latency", "--json", "--bus", b]);
    assert_eq!(out.status.code(), Some(bpi_support::exit::CHECK_FAILED), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["answer"], "no_path");
    assert_eq!(r["constraint"], "latency_budget");

    // Nobody may not change trust; the bus policy itself stops it (its own
    // message, not the service's), and nothing changes.
    common::check_policy_against_service(&bus, "org.bpi.os.Control1", "/org/bpi/os/Control1", &repo("units/dbus/org.bpi.os.Control1.conf"), bpi_drx_control::service::ADMIN_METHODS);
    let denied = cli(&s, Some(NOBODY), &["nxos", "trust", "update", "--node-id", "transit-b", "--score", "0.1", "--bus", b]);
    assert!(!denied.status.success() && text(&denied).contains("Rejected send message"), "{}", text(&denied));
    assert!(text(&denied).contains("member=\"trust_update\""), "{}", text(&denied));
    // The control plane's own counters (`--detailed`); the summary's "changes" is the same count.
    let metrics = |who| {
        let m = json(&cli(&s, who, &["nxos", "metrics", "--detailed", "--json", "--bus", b]));
        assert_eq!(m["changes"], m["control_plane"]["changes"], "{m}");
        m["control_plane"].clone()
    };
    assert_eq!(metrics(Some(NOBODY))["changes"], 0);

    // Bad input through the bus: refused, nothing changes.
    for (args, want) in [
        (vec!["--node-id", "transit-b", "--score", "1.5"], "outside 0..1"),
        (vec!["--node-id", "nosuch", "--score", "0.5"], "unknown node 'nosuch'"),
    ] {
        let mut full = vec!["nxos", "trust", "update", "--bus", b];
        full.extend(args);
        let out = cli(&s, None, &full);
        assert!(!out.status.success() && text(&out).contains(want), "{want}: {}", text(&out));
    }
    // Unbounded work is refused, to anyone; the daemon keeps answering.
    let huge = cli(&s, Some(NOBODY), &["nxos", "route", "--from", "edge-a", "--to", "dc-d", "--backups", "2147483647", "--bus", b]);
    assert!(!huge.status.success() && text(&huge).contains("InvalidArgs") && text(&huge).contains("outside 0..16"), "{}", text(&huge));
    let out = cli(&s, None, &["nxos", "route", "--from", "edge-a", "--to", "dc-d", "--intent", "nosuch", "--bus", b]);
    assert!(!out.status.success() && text(&out).contains("unknown intent 'nosuch'"), "{}", text(&out));
    assert_eq!(metrics(None)["changes"], 0);

    // A hand-given path is checked, a cycle refused.
    let checked = json(&cli(&s, Some(NOBODY), &["nxos", "route", "--path", "edge-a,core-c,dc-d", "--intent", "high_security_banking", "--json", "--bus", b]));
    assert_eq!(checked["meets_constraints"], true);
    let cycle = cli(&s, None, &["nxos", "route", "--path", "edge-a,core-c,edge-a,dc-d", "--bus", b]);
    assert!(!cycle.status.success() && text(&cycle).contains("twice (a cycle)"), "{}", text(&cycle));

    // A link taken down moves the route; nobody may not do it.
    let denied = cli(&s, Some(NOBODY), &["nxos", "link", "update", "--a", "core-c", "--b", "dc-d", "--down", "--bus", b]);
    assert!(!denied.status.success() && text(&denied).contains("Rejected send message"), "{}", text(&denied));
    let out = cli(&s, None, &["nxos", "link", "update", "--a", "core-c", "--b", "dc-d", "--down", "--bus", b]);
    assert!(out.status.success(), "{}", text(&out));
    let r = json(&cli(&s, None, &["nxos", "route", "--from", "edge-a", "--to", "dc-d", "--json", "--bus", b]));
    assert_eq!(r["best"]["nodes"], serde_json::json!(["edge-a", "transit-b", "dc-d"]));
    let out = cli(&s, None, &["nxos", "link", "update", "--a", "core-c", "--b", "dc-d", "--up", "--bus", b]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(metrics(None)["changes"], 2);

    // A watcher learns of changes from the Changes property, without polling.
    let watcher = zbus::blocking::connection::Builder::address(b).unwrap().build().unwrap();
    let proxy = bpi_drx_control::service::Control1ProxyBlocking::new(&watcher).unwrap();
    let rx = common::watch(proxy.receive_changes_changed(), |c| c.get().unwrap());

    // Root blacklists transit-b and raises core-c in one command: one D-Bus
    // call, one batch (one version), one ledger block; routes move off
    // transit-b and the data plane drops it.
    let dp_of = |id: &str| Topology::load(&topology).unwrap().nodes.iter().find(|n| n.id == id).unwrap().dp_id;
    let (dp_b, dp_c) = (dp_of("transit-b"), dp_of("core-c"));
    let before = metrics(None)["data_plane_version"].as_u64().unwrap();
    let out = cli(&s, None, &["nxos", "trust", "update", "--node-id", "transit-b", "--score", "0.1", "--node-id", "core-c", "--score", "0.97", "--bus", b]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("routes recomputed"), "{}", text(&out));
    let m = metrics(None);
    assert_eq!(m["changes"], 3, "two pairs are one change: {m}");
    assert_eq!(m["data_plane_version"].as_u64().unwrap(), before + 1, "two pairs are one batch: {m}");
    common::wait_for(&rx, "Changes", 3);
    // One change, one signal: no later value. zbus's property stream also
    // yields the value it fetched when it started, which under load can come
    // after the signal; that is the same 3, not a second change.
    let later: Vec<u64> = std::iter::from_fn(|| rx.recv_timeout(std::time::Duration::from_secs(1)).ok()).collect();
    assert!(later.iter().all(|v| *v == 3), "one change, one signal: then {later:?}");
    let topo = json(&cli(&s, None, &["nxos", "topology", "--trust-scores", "--routing-table", "--json", "--bus", b]));
    assert_eq!(via(&topo, "transit-b"), None, "a blacklisted node is still routed to");
    let snap = Tables::open(&pins).unwrap().snapshot().unwrap();
    assert_eq!((snap.nodes[&dp_b], snap.nodes[&dp_c]), (100_000, 970_000));

    // With the daemon running, changes made by hand go through it too, and
    // it keeps them: a prefix mapped by hand survives the next trust change.
    let dp_c_s = dp_c.to_string();
    let out = cli(&s, None, &["nxos", "trust", "map", "--prefix", "192.0.2.0/24", "--node-id", &dp_c_s, "--bus", b]);
    assert!(out.status.success() && text(&out).contains("192.0.2.0/24 -> node"), "{}", text(&out));
    assert_eq!(metrics(None)["changes"], 4);
    // A dry run through the daemon says what would change and changes nothing.
    let version = Tables::open(&pins).unwrap().version().unwrap();
    let out = cli(&s, None, &["nxos", "trust", "update", "--node-id", "core-c", "--score", "0.5", "--dry-run", "--bus", b]);
    assert!(out.status.success() && text(&out).contains("would set node core-c: trust 0.5"), "{}", text(&out));
    assert_eq!(Tables::open(&pins).unwrap().version().unwrap(), version);
    assert_eq!(metrics(None)["changes"], 4);
    let out = cli(&s, None, &["nxos", "trust", "update", "--node-id", "core-c", "--score", "0.96", "--bus", b]);
    assert!(out.status.success(), "{}", text(&out));
    let snap = Tables::open(&pins).unwrap().snapshot().unwrap();
    assert_eq!(snap.routes[&"192.0.2.0/24".parse().unwrap()].node, dp_c);
    assert_eq!(snap.nodes[&dp_c], 960_000);
    let m = metrics(None);
    assert_eq!(m["changes"], 5);

    // Offline planning from the same file needs no daemon.
    let offline = json(&cli(&s, Some(NOBODY), &["nxos", "route", "--topology", topo_s, "--policies", pol_s, "--from", "edge-a", "--to", "dc-d", "--json"]));
    assert_eq!(offline["best"]["nodes"], serde_json::json!(["edge-a", "core-c", "dc-d"]));
    assert!(svc.stop().success());

    // Every data-plane write of the daemon is a ledger block on the same bus:
    // the first sync, the two-pair update, the map and the last update (the
    // link changes moved routes but wrote nothing into the data plane).
    assert!(ledger.stop().success());
    let shown = json(&cli(&s, None, &["ledger", "show", "--store", store.to_str().unwrap(), "--category", "trust", "--json"]));
    let blocks: Vec<&Value> = shown.as_array().unwrap().iter().filter(|b| b["data"]["source"] == "drx-control").collect();
    assert_eq!(blocks.len(), 4, "{shown}");
    assert_eq!(blocks[0]["data"]["version"], 1);
    assert_eq!(blocks[0]["data"]["changes"].as_array().unwrap().len(), 10, "settings, 4 scores, 5 prefixes: {shown}");
    let mut pair: Vec<String> = blocks[1]["data"]["changes"].as_array().unwrap().iter().map(|c| c.to_string()).collect();
    pair.sort();
    let mut want = vec![
        serde_json::json!({ "write": "put_node", "node": dp_b, "score": 100_000 }).to_string(),
        serde_json::json!({ "write": "put_node", "node": dp_c, "score": 970_000 }).to_string(),
    ];
    want.sort();
    assert_eq!(pair, want, "{shown}");
    assert_eq!(blocks[3]["data"]["version"], m["data_plane_version"]);
}

#[test]
fn policy_check_names_file_line_and_key() {
    let s = scratch();
    let ok = cli(&s, None, &["nxos", "policy", "check", repo("rootfs-overlay/bpi/config/policies/intent-policies/seed-intents.toml").to_str().unwrap()]);
    assert!(ok.status.success() && text(&ok).contains("3 intent(s): ultra_low_latency, high_security_banking, government_compliance"), "{}", text(&ok));
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[intent]]\nname = \"x\"\ntrust_flor = 0.9\n").unwrap();
    let out = cli(&s, None, &["nxos", "policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("bad.toml") && text(&out).contains("bad.toml:3:") && text(&out).contains("trust_flor"), "{}", text(&out));
    std::fs::write(&bad, "[[intent]]\nname = \"x\"\n\ncarbon_max = -2\n").unwrap();
    let out = cli(&s, None, &["nxos", "policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("bad.toml:4") && text(&out).contains("carbon_max"), "{}", text(&out));
}

/// On a bus whose policy allows everything, the service refuses `nobody` by itself.
#[test]
fn the_service_refuses_unprivileged_changes_without_the_policy() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[]);
    let topology = repo("docs/examples/topology.toml");
    let policies = repo("rootfs-overlay/bpi/config/policies/intent-policies");
    let nopins = s.dir.path().join("no-pins");
    let svc = common::serve(
        &s,
        &["nxos", "--pin-dir", nopins.to_str().unwrap(), "control", "serve", "--topology", topology.to_str().unwrap(), "--policies", policies.to_str().unwrap(), "--bus", &bus.address],
    );
    let b = bus.address.as_str();
    for args in [
        vec!["nxos", "trust", "update", "--node-id", "transit-b", "--score", "0.1", "--bus", b],
        vec!["nxos", "link", "update", "--a", "core-c", "--b", "dc-d", "--down", "--bus", b],
        vec!["nxos", "trust", "unmap", "--prefix", "10.1.0.0/16", "--bus", b],
    ] {
        let denied = cli(&s, Some(NOBODY), &args);
        let t = text(&denied);
        assert!(!denied.status.success() && t.contains("AccessDenied") && t.contains("allowed to root"), "{args:?}: {t}");
        assert!(!t.contains("Rejected send message"), "the allow-all bus refused it, not the service: {t}");
    }
    let m = json(&cli(&s, None, &["nxos", "metrics", "--json", "--bus", b]));
    assert_eq!(m["changes"], 0);
    assert!(svc.stop().success());
}

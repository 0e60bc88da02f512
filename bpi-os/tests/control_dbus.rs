//! Host integration: `bpi-os nxos control serve` on a private dbus-daemon
//! with the shipped bus policy and the data plane's maps pinned in a private
//! bpffs. Queries work for anyone; trust changes only for root, recompute
//! the routes and land in the data plane; bad input changes nothing. Needs
//! root (eBPF maps, calling as `nobody`) and dbus-daemon; skipped otherwise.

mod common;

use std::path::{Path, PathBuf};

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
    let metrics = |who| json(&cli(&s, who, &["nxos", "metrics", "--json", "--bus", b]));
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

    // Root blacklists transit-b: routes move off it and the data plane drops it.
    let dp_id = bpi_drx_control::model::default_dp_id("transit-b");
    let out = cli(&s, None, &["nxos", "trust", "update", "--node-id", "transit-b", "--score", "0.1", "--bus", b]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("routes recomputed"), "{}", text(&out));
    let topo = json(&cli(&s, None, &["nxos", "topology", "--trust-scores", "--routing-table", "--json", "--bus", b]));
    assert_eq!(via(&topo, "transit-b"), None, "a blacklisted node is still routed to");
    let snap = Tables::open(&pins).unwrap().snapshot().unwrap();
    assert_eq!(snap.nodes[&dp_id], 100_000);
    let m = metrics(None);
    assert_eq!(m["changes"], 3);
    assert!(m["data_plane_version"].as_u64().unwrap() >= 2, "{m}");

    // Offline planning from the same file needs no daemon.
    let offline = json(&cli(&s, Some(NOBODY), &["nxos", "route", "--topology", topo_s, "--policies", pol_s, "--from", "edge-a", "--to", "dc-d", "--json"]));
    assert_eq!(offline["best"]["nodes"], serde_json::json!(["edge-a", "core-c", "dc-d"]));
    assert!(svc.stop().success());

    // Every data-plane write of the daemon is a ledger block on the same bus:
    // the first sync and the trust change (the link changes moved routes but
    // wrote nothing into the data plane).
    assert!(ledger.stop().success());
    let shown = json(&cli(&s, None, &["ledger", "show", "--store", store.to_str().unwrap(), "--category", "trust", "--json"]));
    let blocks: Vec<&Value> = shown.as_array().unwrap().iter().filter(|b| b["data"]["source"] == "drx-control").collect();
    assert_eq!(blocks.len(), 2, "{shown}");
    assert_eq!(blocks[0]["data"]["version"], 1);
    assert_eq!(blocks[0]["data"]["changes"].as_array().unwrap().len(), 10, "settings, 4 scores, 5 prefixes: {shown}");
    assert_eq!(blocks[1]["data"]["version"], m["data_plane_version"]);
    assert_eq!(blocks[1]["data"]["changes"], serde_json::json!([{ "write": "put_node", "node": dp_id, "score": 100_000 }]));
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

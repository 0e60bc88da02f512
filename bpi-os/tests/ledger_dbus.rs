//! Host integration: `bpi-os ledger serve` on a private dbus-daemon started
//! here, called by the bpi-os CLI, by dbus-send and by a zbus proxy, as root
//! and as `nobody`. Needs root (to call as another user) and dbus-daemon;
//! skipped with the reason printed otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use bpi_ledger::service::Ledger1ProxyBlocking;
use common::{can_run, cli, command, scratch, start_bus, text, Bus, Scratch, Service, NOBODY};

const SEED_EXAMPLE: &str = r#"{"bridge_name": "ovsbr0", "uplink_interface": "enp2s0", "configuration": {"stp": false}}"#;

/// Starts the ledger service on `bus` over `store`.
fn serve(s: &Scratch, bus: &Bus, store: &Path, extra: &[&str]) -> Service {
    let store = store.to_str().unwrap();
    let mut args = vec!["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store", store];
    args.extend_from_slice(extra);
    common::serve(s, &args)
}

fn dbus_send(bus: &Bus, uid: Option<u32>, method: &str, args: &[&str]) -> Output {
    let mut c = command(Path::new("dbus-send"), uid);
    c.arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.bpi.os.Ledger1", "/org/bpi/os/Ledger1"])
        .arg(format!("org.bpi.os.Ledger1.{method}"))
        .args(args);
    c.output().unwrap()
}

fn count(bus: &Bus) -> u64 {
    let o = dbus_send(bus, None, "get_stats", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let json = &out[out.find('{').unwrap()..=out.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(&json.replace("\\\"", "\"")).unwrap();
    v["count"].as_u64().unwrap()
}

fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/dbus/org.bpi.os.Ledger1.conf")
}

#[test]
fn with_the_shipped_policy_anyone_queries_and_only_root_appends() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[&policy_file()]);
    let store = s.dir.path().join("store");
    let svc = serve(&s, &bus, &store, &[]);
    common::check_policy_against_service(&bus, "org.bpi.os.Ledger1", "/org/bpi/os/Ledger1", &policy_file(), bpi_ledger::service::ADMIN_METHODS);

    // The seed's example record (section 9.1.1), by root through the CLI.
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("recorded block 1"), "{}", text(&o));
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "network", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));

    // The seed's verbs, as its dbus-send lines call them.
    let o = dbus_send(&bus, None, "get_blocks_by_category", &["string:bridge"]);
    assert!(o.status.success() && text(&o).contains("ovsbr0"), "{}", text(&o));
    let o = dbus_send(&bus, None, "get_blocks_by_height", &["uint64:1", "uint64:2"]);
    assert!(text(&o).contains(r#"\"height\":2"#) || text(&o).contains(r#""height":2"#), "{}", text(&o));
    let o = dbus_send(&bus, None, "verify_blockchain_integrity", &[]);
    assert!(text(&o).contains(r#""ok":true"#) || text(&o).contains(r#"\"ok\":true"#), "{}", text(&o));

    // nobody may query, but not append: the bus policy says no.
    let o = dbus_send(&bus, Some(NOBODY), "ping", &[]);
    assert!(o.status.success() && text(&o).contains("pong"), "{}", text(&o));
    let o = dbus_send(&bus, Some(NOBODY), "get_stats", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(!o.status.success(), "nobody appended: {}", text(&o));
    assert!(text(&o).contains("AccessDenied"), "{}", text(&o));
    assert_eq!(count(&bus), 2);

    let status = svc.stop();
    assert!(status.success(), "serve exited with {status}");
    // The final checkpoint covers everything, and the copy verifies offline.
    let o = cli(&s, None, &["ledger", "verify", "--json", "--store", store.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checkpoint"]["size"], 2, "{v}");
}

#[test]
fn the_service_refuses_unprivileged_appends_even_on_an_open_bus() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[]);
    let store = s.dir.path().join("store");
    let svc = serve(&s, &bus, &store, &[]);
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(!o.status.success(), "nobody appended: {}", text(&o));
    assert!(text(&o).contains("allowed to root") && text(&o).contains("uid 65534"), "{}", text(&o));
    assert_eq!(count(&bus), 0);
    drop(svc);

    // With an admin group, its members may append, and the block names them.
    let svc = serve(&s, &bus, &store, &["--admin-group", "nogroup"]);
    let o = cli(&s, Some(NOBODY), &["ledger", "append", "--bus", &bus.address, "--category", "user", "--action", "login", "--data", r#"{"username":"nobody"}"#]);
    assert!(o.status.success(), "{}", text(&o));
    let o = dbus_send(&bus, None, "get_blocks_by_height", &["uint64:1", "uint64:1"]);
    assert!(text(&o).contains(r#"\"user\":\"nobody\""#) || text(&o).contains(r#""user":"nobody""#), "{}", text(&o));
    drop(svc);
}

#[test]
fn bad_input_over_dbus_is_refused_and_nothing_is_recorded() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[]);
    let store = s.dir.path().join("store");
    let _svc = serve(&s, &bus, &store, &[]);
    let conn = bpi_ledger::service::connect(Some(&bus.address)).unwrap();
    let proxy = Ledger1ProxyBlocking::new(&conn).unwrap();
    let big = format!(r#"{{"key":"x","value":"{}"}}"#, "a".repeat(70 * 1024));
    let cases = [
        ("bridge", "created", "{not json", "not valid JSON"),
        ("weather", "created", "{}", "unknown category"),
        ("settings", "modified", big.as_str(), "limit is 65536"),
        ("bridge", "created", r#"{"uplink_interface":"eth0"}"#, "missing \"bridge_name\""),
        ("bridge", "Created Twice", SEED_EXAMPLE, "action"),
    ];
    for (cat, action, data, want) in cases {
        let err = proxy.append(cat, action, data).expect_err("bad input was recorded");
        let msg = err.to_string();
        assert!(msg.contains("InvalidArgs") && msg.contains(want), "{cat}/{action}: {msg}");
    }
    let stats = proxy.get_stats().unwrap();
    assert!(stats.contains(r#""count":0"#), "{stats}");
    let (h, _) = proxy.append("bridge", "created", SEED_EXAMPLE).unwrap();
    assert_eq!(h, 1);
}

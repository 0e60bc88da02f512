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

/// A typed proxy on `bus` (the connection lives as long as the proxy).
fn proxy(bus: &Bus) -> Ledger1ProxyBlocking<'static> {
    let conn = bpi_ledger::service::connect(Some(&bus.address)).unwrap();
    Ledger1ProxyBlocking::new(&conn).unwrap()
}

fn count(bus: &Bus) -> u64 {
    proxy(bus).get_stats().unwrap().count
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
    // A watcher learns of new blocks from the Height property, without polling.
    let heights = common::watch(proxy(&bus).receive_height_changed(), |h| h.get().unwrap());

    // The seed's example record (section 9.1.1), by root through the CLI.
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "bridge", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("recorded block 1"), "{}", text(&o));
    let o = cli(&s, None, &["ledger", "append", "--bus", &bus.address, "--category", "network", "--action", "created", "--data", SEED_EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));
    common::wait_for(&heights, "Height", 2);

    // The seed's verbs, as its dbus-send lines call them, and typed through zbus.
    let o = dbus_send(&bus, None, "get_blocks_by_category", &["string:bridge"]);
    assert!(o.status.success() && text(&o).contains("ovsbr0"), "{}", text(&o));
    let o = dbus_send(&bus, None, "get_blocks_by_height", &["uint64:1", "uint64:2"]);
    assert!(o.status.success() && text(&o).contains("string \"network\""), "{}", text(&o));
    let p = proxy(&bus);
    let blocks = p.get_blocks_by_height(1, 2).unwrap();
    assert_eq!(blocks.iter().map(|b| (b.height, b.draft.category.as_str())).collect::<Vec<_>>(), [(1, "bridge"), (2, "network")]);
    assert_eq!(blocks[1].prev_hash, blocks[0].hash);
    let data: serde_json::Value = serde_json::from_str(&blocks[0].draft.data).unwrap();
    assert_eq!(data["bridge_name"], "ovsbr0");
    assert_eq!(p.get_blocks_by_category("bridge").unwrap().len(), 1);
    let report = p.verify_blockchain_integrity().unwrap();
    assert!(report.ok && report.blocks == 2 && report.first_bad.is_empty(), "{report:?}");
    let proof = p.inclusion_proof(1, 0).unwrap();
    assert_eq!((proof.height, proof.tree_size, proof.block_hash.as_str()), (1, 2, blocks[0].hash.as_str()));
    let consistent = p.consistency_proof(1, 2).unwrap();
    assert_eq!((consistent.old_size, consistent.new_size, consistent.new_root.as_str()), (1, 2, report.root.as_str()));

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
    assert_eq!(proxy(&bus).get_blocks_by_height(1, 1).unwrap()[0].draft.user, "nobody");
    drop(svc);
}

#[test]
fn bad_input_over_dbus_is_refused_nothing_is_recorded_and_answers_are_bounded() {
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
    assert_eq!(proxy.get_stats().unwrap().count, 0);

    // 700 blocks of 60 KB (42 MB) asked for at once: the answer stops short
    // of the bus's 32 MiB message limit at a whole block, the ledger stays on
    // the bus, and paging from the next height gets the rest.
    let big = format!(r#"{{"key":"x","value":"{}"}}"#, "b".repeat(60 * 1024));
    for _ in 0..700 {
        proxy.append("settings", "modified", &big).unwrap();
    }
    let first = proxy.get_blocks_by_height(1, 700).unwrap();
    let bytes: usize = first.iter().map(|b| b.draft.data.len()).sum();
    assert!(!first.is_empty() && first.len() < 700 && bytes <= bpi_ledger::service::MAX_ANSWER_BYTES, "{} blocks, {bytes} bytes", first.len());
    assert_eq!(first.last().unwrap().height, first.len() as u64);
    let mut got = first.len() as u64;
    while got < 700 {
        let page = proxy.get_blocks_by_height(got + 1, 700).unwrap();
        assert_eq!(page[0].height, got + 1);
        got += page.len() as u64;
    }
    assert_eq!(proxy.get_blocks_by_category("settings").unwrap().len(), first.len());
    let (h, _) = proxy.append("bridge", "created", SEED_EXAMPLE).unwrap();
    assert_eq!(h, 701);
}

/// Under systemd's watchdog the service says WATCHDOG=1 while the bus answers
/// it; when the bus goes away it exits with an error (so Restart=on-failure
/// brings it back) instead of living on unreachable, holding the store.
#[test]
fn the_service_feeds_the_watchdog_and_exits_when_the_bus_is_gone() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let bus = start_bus(&s, &[]);
    let store = s.dir.path().join("store");
    let store = store.to_str().unwrap();
    let mut svc = common::serve_env(&s, &["ledger", "serve", "--no-append-only", "--bus", &bus.address, "--store", store], &[("WATCHDOG_USEC", "300000")]);
    let fed = (0..5).filter_map(|_| svc.notified()).any(|m| m.contains("WATCHDOG=1"));
    assert!(fed, "no WATCHDOG=1 within five notifications");
    drop(bus);
    let status = svc.exited_within(std::time::Duration::from_secs(20)).expect("the service lived on without its bus");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// Eight verifications asked at once (they took the daemon to 1.15 GB: each
/// read the whole log) now run one at a time over a 64 MiB window: the
/// daemon's peak memory stays below three times the log (one window, the
/// writer's and the verifier's indexes, a debug build's allocator), where
/// eight whole copies would be more than eight times it.
#[test]
fn concurrent_verifications_do_not_multiply_the_daemons_memory() {
    if !can_run() {
        return;
    }
    let s = scratch();
    let store = s.dir.path().join("store");
    {
        let (mut w, _) = bpi_ledger::store::Store::open(bpi_ledger::store::StoreOptions::new(&store)).unwrap();
        let value = "v".repeat(900);
        for batch in 0..100 {
            let drafts: Vec<bpi_ledger::Draft> = (0..1000)
                .map(|i| bpi_ledger::Draft::new("settings-plugin", "settings", "modified", "root", format!(r#"{{"key":"k{batch}-{i}","value":"{value}"}}"#)))
                .collect();
            assert!(w.append_batch(&drafts).iter().all(|r| r.is_ok()));
        }
        w.checkpoint().unwrap();
    }
    let log_bytes = std::fs::metadata(store.join("blocks.log")).unwrap().len();
    assert!(log_bytes > 90 << 20, "a log of {log_bytes} bytes is too small to tell");
    let bus = start_bus(&s, &[]);
    let svc = serve(&s, &bus, &store, &[]);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let address = bus.address.clone();
            std::thread::spawn(move || {
                let conn = bpi_ledger::service::connect(Some(&address)).unwrap();
                let p = Ledger1ProxyBlocking::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().unwrap();
                p.verify_blockchain_integrity().unwrap()
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.ok && r.blocks == 100_000, "{r:?}");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", svc.pid())).unwrap();
    let hwm_kib: u64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
    eprintln!("log {} MiB; the daemon's peak {} MiB after eight concurrent verifications", log_bytes >> 20, hwm_kib >> 10);
    assert!(hwm_kib * 1024 < 3 * log_bytes, "peak {} MiB for a {} MiB log", hwm_kib >> 10, log_bytes >> 20);
}

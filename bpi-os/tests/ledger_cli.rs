//! The `bpi-os ledger` commands on a store directory, as an operator or an
//! auditor runs them on a copy: bad input changes nothing, queries and proofs
//! are right, and an independent verifier (tools/verify-ledger.py, standard
//! library only) agrees with `bpi-os ledger verify` on good and altered stores.

use std::path::Path;
use std::process::{Command, Output};

fn bpi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpi-os")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn append(store: &str, category: &str, action: &str, data: &str) -> Output {
    bpi(&["ledger", "append", "--store", store, "--category", category, "--action", action, "--data", data])
}

fn log_bytes(store: &str) -> Vec<u8> {
    std::fs::read(Path::new(store).join("blocks.log")).unwrap_or_default()
}

fn python_verify(store: &str) -> Option<Output> {
    if !bpi_support::skip::needs_program("python3", "python3") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/verify-ledger.py");
    Some(Command::new("python3").arg(script).arg(store).output().unwrap())
}

#[test]
fn bad_input_is_refused_with_a_reason_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let store = store.to_str().unwrap();
    assert!(append(store, "bridge", "created", r#"{"bridge_name":"br0"}"#).status.success());
    let before = log_bytes(store);
    let big = format!(r#"{{"key":"x","value":"{}"}}"#, "v".repeat(70_000));
    let cases = [
        ("bridge", "created", "{broken", "not valid JSON"),
        ("weather", "created", "{}", "unknown category \"weather\""),
        ("settings", "modified", big.as_str(), "the limit is 65536"),
        ("bridge", "created", r#"{"uplink_interface":"eth0"}"#, "missing \"bridge_name\""),
        ("bridge", "Made It", r#"{"bridge_name":"br0"}"#, "action \"Made It\""),
        ("bridge", "created", "[1,2]", "must be a JSON object"),
        ("bridge", "created", r#"{"bridge_name":"br0","bridge_name":"br1"}"#, "given twice"),
        ("settings", "modified", r#"{"key":"n","value":"v","n":123456789012345678901234567890}"#, "outside 64 bits"),
    ];
    for (cat, action, data, want) in cases {
        let o = append(store, cat, action, data);
        assert!(!o.status.success(), "{cat}/{action} was accepted");
        assert!(text(&o).contains(want), "{cat}/{action}: {}", text(&o));
        assert_eq!(log_bytes(store), before, "{cat}/{action} changed the log");
    }
    // --dry-run shows the record and writes nothing.
    let o = bpi(&["ledger", "append", "--store", store, "--dry-run", "--category", "port", "--action", "added", "--data", r#"{"port":"vnet0","bridge_name":"br0"}"#]);
    assert!(o.status.success() && text(&o).contains("would record: port/added by network-plugin"), "{}", text(&o));
    assert_eq!(log_bytes(store), before);
    // A recorded escape sequence is shown, not sent to the terminal.
    assert!(append(store, "settings", "modified", r#"{"key":"title","value":"\u001b]0;owned\u0007 \u009b2J"}"#).status.success());
    let o = bpi(&["ledger", "show", "--store", store, "--category", "settings"]);
    let shown = text(&o);
    assert!(o.status.success() && !shown.contains('\u{1b}') && !shown.contains('\u{9b}') && !shown.contains('\u{7}'), "{shown:?}");
    assert!(shown.contains("\\u{9b}2J"), "{shown}");
    // A store that does not exist is named.
    let o = bpi(&["ledger", "show", "--store", "/nonexistent/ledger"]);
    assert!(!o.status.success() && text(&o).contains("no ledger at /nonexistent/ledger"), "{}", text(&o));
}

#[test]
fn queries_proofs_export_and_an_independent_verifier_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let store = store.to_str().unwrap();
    for i in 0..11 {
        let (cat, data) = match i % 3 {
            0 => ("bridge", format!(r#"{{"bridge_name":"br{i}","uplink_interface":"enp2s0"}}"#)),
            1 => ("settings", format!(r#"{{"key":"mtu","value":{}}}"#, 1500 + i)),
            _ => ("mount", format!(r#"{{"path":"/bpi/data/{i}","ratio":{i}.25}}"#)),
        };
        let o = append(store, cat, "changed", &data);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = bpi(&["ledger", "show", "--store", store, "--category", "bridge", "--json"]);
    let blocks: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let heights: Vec<u64> = blocks.iter().map(|b| b["height"].as_u64().unwrap()).collect();
    assert_eq!(heights, vec![1, 4, 7, 10]);
    assert_eq!(blocks[1]["data"]["bridge_name"], "br3");
    assert_eq!(blocks[0]["prev_hash"], "");
    assert_eq!(blocks[1]["prev_hash"].as_str().unwrap().len(), 64);

    let o = bpi(&["ledger", "show", "--store", store, "--from", "3", "--to", "5", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.len(), 3);
    let o = bpi(&["ledger", "show", "--store", store, "--since", "2000-01-01", "--until", "2000-12-31", "--json"]);
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap().len(), 0);
    let o = bpi(&["ledger", "show", "--store", store, "--stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["count"], 11);
    assert_eq!(stats["per_category"]["mount"], 3);

    let o = bpi(&["ledger", "proof", "--store", store, "--height", "5", "--size", "9", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["tree_size"], 9);
    assert_eq!(p["path"].as_array().unwrap().len(), 4);
    let o = bpi(&["ledger", "proof", "--store", store, "--consistency", "4", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bpi(&["ledger", "proof", "--store", store, "--height", "12"]);
    assert!(!o.status.success() && text(&o).contains("block 12 is not in a tree of 11"), "{}", text(&o));

    let out = dir.path().join("export.jsonl");
    let o = bpi(&["ledger", "export", "--store", store, "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 11);
    assert!(lines.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));

    let o = bpi(&["ledger", "verify", "--store", store, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if let Some(py) = python_verify(store) {
        assert!(py.status.success(), "{}", text(&py));
        assert_eq!(text(&py).trim(), format!("ok 11 {}", r["root"].as_str().unwrap()));
    }

    // Alter one byte of block 6's data: both verifiers name height 6.
    let log = Path::new(store).join("blocks.log");
    let mut b = std::fs::read(&log).unwrap();
    let at = b.windows(13).position(|w| w == b"/bpi/data/5\"," as &[u8]).expect("block 6's data");
    b[at + 10] = b'6';
    std::fs::write(&log, &b).unwrap();
    let o = bpi(&["ledger", "verify", "--store", store, "--json"]);
    assert_eq!(o.status.code(), Some(bpi_support::exit::CHECK_FAILED), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["first_bad"]["height"], 6, "{r}");
    if let Some(py) = python_verify(store) {
        assert_eq!(py.status.code(), Some(1));
        assert!(text(&py).starts_with("bad 6:"), "{}", text(&py));
    }
    // Export refuses to copy a damaged record; show warns and shows what is good.
    let o = bpi(&["ledger", "export", "--store", store]);
    assert!(!o.status.success() && text(&o).contains("damaged at height 6"), "{}", text(&o));
    let o = bpi(&["ledger", "show", "--store", store, "--json"]);
    assert!(text(&o).contains("warning: the ledger is damaged at height 6"), "{}", text(&o));
}

//! docs/cli.md's conventions hold: every documented exit code happens where
//! it says, and commands that print take --json (pretty or short).

use std::path::{Path, PathBuf};
use std::process::Output;

use bpi_support::exit::{CHECK_FAILED, ERROR, NEEDS_PERSON, OK, USAGE};

fn bpi(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bpi-os")).args(args).stdin(std::process::Stdio::null()).output().unwrap()
}

fn code(args: &[&str]) -> i32 {
    let o = bpi(args);
    o.status.code().unwrap_or_else(|| panic!("{args:?} died: {o:?}"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn each_documented_exit_code_happens() {
    let topo = repo("docs/examples/topology.toml");
    let pols = repo("rootfs-overlay/bpi/config/policies/intent-policies");
    let (topo, pols) = (topo.to_str().unwrap(), pols.to_str().unwrap());
    let route = |intent: &str, json: bool| {
        let mut a = vec!["nxos", "route", "--topology", topo, "--policies", pols, "--from", "edge-a", "--to", "dc-d", "--intent", intent];
        if json {
            a.push("--json");
        }
        code(&a)
    };

    assert_eq!(code(&["--version"]), OK);
    assert_eq!(route("high_security_banking", false), OK);
    assert_eq!(route("high_security_banking", true), OK);

    assert_eq!(code(&["ledger", "show", "--store", "/nonexistent/ledger"]), ERROR);
    assert_eq!(code(&["nxos", "policy", "check", "/nonexistent/policy.toml"]), ERROR);
    assert_eq!(code(&["nxos", "route", "--topology", topo, "--policies", pols, "--from", "edge-a", "--to", "nosuch"]), ERROR);
    // A query may not ask for unbounded work (one search per backup).
    let o = bpi(&["nxos", "route", "--topology", topo, "--policies", pols, "--from", "edge-a", "--to", "dc-d", "--backups", "100000"]);
    assert_eq!(o.status.code(), Some(ERROR));
    assert!(String::from_utf8_lossy(&o.stderr).contains("backups: 100000 is outside 0..16"), "{}", String::from_utf8_lossy(&o.stderr));

    assert_eq!(code(&["--no-such-flag"]), USAGE);
    assert_eq!(code(&["nxos", "route", "--topology", topo]), USAGE);

    // "No" answers: no path (the same code with --json), a policy with an error.
    assert_eq!(route("ultra_low_latency", false), CHECK_FAILED);
    let o = bpi(&["nxos", "route", "--topology", topo, "--policies", pols, "--from", "edge-a", "--to", "dc-d", "--intent", "ultra_low_latency", "--json"]);
    assert_eq!(o.status.code(), Some(CHECK_FAILED));
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json still prints the answer");
    assert_eq!(answer["answer"], "no_path");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[intent]]\nname = \"x\"\ntrust_flor = 0.9\n").unwrap();
    assert_eq!(code(&["nxos", "policy", "check", bad.to_str().unwrap()]), CHECK_FAILED);
    // (A tampered ledger's `ledger verify` is tried in ledger_cli.rs.)

    // A store that needs a person to unlock (here: none at all).
    let o = bpi(&["store", "probe", "--device", "/nonexistent/store"]);
    assert_eq!(o.status.code(), Some(NEEDS_PERSON), "{}", String::from_utf8_lossy(&o.stderr));
}

fn stdout_json(args: &[&str], want_code: i32) -> serde_json::Value {
    let o = bpi(args);
    assert_eq!(o.status.code(), Some(want_code), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn commands_that_print_take_json_pretty_or_short() {
    let pol = repo("rootfs-overlay/bpi/config/policies/intent-policies/seed-intents.toml");
    let v = stdout_json(&["nxos", "policy", "check", pol.to_str().unwrap(), "--json"], OK);
    assert_eq!(v["intents"].as_array().unwrap().len(), 3, "{v}");
    let v = stdout_json(&["nxos", "start", "--dry-run", "--json"], OK);
    assert_eq!(v["units"], serde_json::json!(["bpi-drx-data.service", "bpi-drx-control.service", "bpi-qlock.service"]));
    let v = stdout_json(&["nxos", "start", "--trust-routing", "--qlock-steering", "--dry-run", "--json"], OK);
    assert_eq!(v["units"].as_array().unwrap().len(), 3);
    let v = stdout_json(&["nxos", "start", "--qlock-steering", "--dry-run", "--json"], OK);
    assert_eq!(v["units"], serde_json::json!(["bpi-qlock.service"]));
    assert_eq!(code(&["nxos", "start", "--proof-forward", "--dry-run"]), 1);
    let v = stdout_json(&["store", "probe", "--device", "/nonexistent/store", "--json"], NEEDS_PERSON);
    assert_eq!(v["unattended"], false);

    // --json=short is one line; --json is indented; anything else is a usage error.
    let short = bpi(&["nxos", "start", "--dry-run", "--json=short"]);
    assert_eq!(String::from_utf8_lossy(&short.stdout).trim().lines().count(), 1);
    assert!(String::from_utf8_lossy(&bpi(&["nxos", "start", "--dry-run", "--json"]).stdout).lines().count() > 1);
    assert_eq!(code(&["nxos", "start", "--dry-run", "--json=yaml"]), USAGE);

    // ledger export: JSON Lines, or with --json one array of the same blocks.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("ledger");
    let store = store.to_str().unwrap();
    for i in 0..3 {
        let data = format!("{{\"port\": \"vnet{i}\", \"bridge_name\": \"br0\"}}");
        let o = bpi(&["ledger", "append", "--store", store, "--category", "port", "--action", "added", "--data", &data]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let lines = bpi(&["ledger", "export", "--store", store]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&lines.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    // A copy of the record, written to a file, is as private as the record.
    let out = dir.path().join("export.jsonl");
    let o = bpi(&["ledger", "export", "--store", store, "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    for style in ["--json", "--json=short"] {
        let array = stdout_json(&["ledger", "export", "--store", store, style], OK);
        assert_eq!(array.as_array().unwrap(), &lines, "{style}");
    }
}

#[test]
fn man_pages_and_completions_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    // A root's man1 holds other packages' pages, dangling links among them: left alone.
    std::fs::create_dir_all(&man).unwrap();
    std::fs::write(man.join("arch.1.gz"), b"other").unwrap();
    std::os::unix::fs::symlink("test.1.gz", man.join("[.1.gz")).unwrap();
    let o = bpi(&["generate-docs", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(man.join("arch.1.gz")).unwrap(), b"other");
    assert!(String::from_utf8_lossy(&o.stdout).lines().all(|l| l.contains("bpi-os")), "it claims files not its own");
    for page in ["bpi-os.1", "bpi-os-ledger-verify.1", "bpi-os-nxos-trust-update.1", "bpi-os-store-init.1", "bpi-os-install.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".SH OPTIONS") || text.contains(".SH SUBCOMMANDS"), "{page}");
    }
    // The hidden generator documents nothing of itself.
    assert!(!man.join("bpi-os-generate-docs.1").exists());
    let bash = std::fs::read_to_string(dir.path().join("bash-completion/completions/bpi-os")).unwrap();
    assert!(bash.contains("subcmd__nxos__subcmd__route") && bash.contains("--json"), "bash completion lacks nxos route");
    assert!(dir.path().join("zsh/vendor-completions/_bpi-os").is_file());
    assert!(dir.path().join("fish/vendor_completions.d/bpi-os.fish").is_file());
}

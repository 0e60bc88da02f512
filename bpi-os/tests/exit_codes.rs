//! Every exit code docs/cli.md documents happens where it says.

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

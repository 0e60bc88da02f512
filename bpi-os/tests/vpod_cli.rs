//! `bpi-os nxos ports` (docs/vpod.md) as separate processes on one state
//! directory: 16 at once never get the same port, a port a socket listens
//! on is skipped, allocations survive (each call is a new process, as after
//! a restart), and bad input changes nothing.

use std::process::{Command, Output};

fn ports(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpi-os")).args(["nxos", "ports", "--state-dir"]).arg(dir).args(args).output().expect("running bpi-os")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn sixteen_processes_a_listener_and_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    // Something listens on the first dynamic port (if nothing else does already).
    let _held = std::net::TcpListener::bind("0.0.0.0:7900");
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_bpi-os"))
                .args(["nxos", "ports", "--state-dir"])
                .arg(&dir)
                .args(["allocate", "--range", "dynamic", "--service", &format!("svc-{i}"), "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut got: Vec<u64> = children.into_iter().map(|c| json(&c.wait_with_output().unwrap())["allocation"]["port"].as_u64().unwrap()).collect();
    got.sort();
    let n = got.len();
    got.dedup();
    assert_eq!(got.len(), n, "a port was handed out twice: {got:?}");
    assert!(!got.contains(&7900), "the port a socket listens on was handed out");
    let list = json(&ports(&dir, &["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 16, "{list}");
    // The same service again: its port, not a new one.
    let again = json(&ports(&dir, &["allocate", "--range", "dynamic", "--service", "svc-3", "--json"]));
    assert_eq!(again["new"], false);
    // Bad input: refused, the file as it was.
    let before = std::fs::read(dir.join("vpod-ports.json")).unwrap();
    for (args, says) in [
        (&["allocate", "--range", "web", "--service", "x"][..], "unknown port range \"web\""),
        (&["allocate", "--range", "core", "--service", "a b"][..], "service id"),
        (&["release", "--port", "22"][..], "in no vPod range"),
        (&["release", "--service", "nobody"][..], "holds no port"),
    ] {
        let o = ports(&dir, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
        assert!(err.contains("bpi-os: error:"), "{err}");
    }
    let after_refusals = std::fs::read(dir.join("vpod-ports.json")).unwrap();
    assert_eq!(before, after_refusals, "a refused call changed the allocations");
    // A dry-run release keeps it; a release frees it.
    let dry = json(&ports(&dir, &["release", "--service", "svc-0", "--dry-run", "--json"]));
    assert_eq!(dry["would_release"].as_array().unwrap().len(), 1);
    assert_eq!(json(&ports(&dir, &["list", "--json"])).as_array().unwrap().len(), 16);
    json(&ports(&dir, &["release", "--service", "svc-0", "--json"]));
    assert_eq!(json(&ports(&dir, &["list", "--json"])).as_array().unwrap().len(), 15);
    let ranges = json(&ports(&dir, &["ranges", "--json"]));
    let dynamic = ranges.as_array().unwrap().iter().find(|r| r["name"] == "dynamic").unwrap().clone();
    assert_eq!(dynamic["allocated"], 15);
}

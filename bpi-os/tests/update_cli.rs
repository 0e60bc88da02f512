//! `bpi-os update` run by someone other than root: the changing commands
//! refuse at once, before anything is downloaded, read or written.

use std::process::{Command, Stdio};

#[test]
fn apply_and_rollback_refuse_an_unprivileged_caller() {
    if !bpi_support::skip::needs_root("setpriv to run bpi-os as nobody") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().to_str().unwrap();
    for args in [vec!["update", "apply", "--from", dir], vec!["update", "apply", "--from", "http://192.0.2.1/never-asked"], vec!["update", "rollback"]] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_bpi-os"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("bpi-os: error: bpi-os update") && stderr.contains("run it as root"), "{args:?}: {stderr}");
    }
}

//! The ledger service in the booted image. An entry appended over the
//! system bus before a reboot is there after it, the chain and the signed
//! checkpoint verify, the log is append-only, and the shipped bus policy
//! keeps unprivileged users to queries.

use anyhow::{ensure, Result};
use bpi_qemu_tests::vm::Vm;

const STORE: &str = "/bpi/data/immutable/blockchain-state";

/// Before the reboot: returns the token the appended entry carries.
pub fn before_reboot(vm: &Vm) -> Result<String> {
    let state = vm.sh("systemctl show -p ActiveState,SubState,Type bpi-ledger.service")?;
    ensure!(state.contains("ActiveState=active") && state.contains("Type=notify"), "bpi-ledger.service: {state}");

    let token = format!("bpi-ledger-{}", std::process::id());
    let data = format!(r#"{{"bridge_name":"ovsbr0","uplink_interface":"enp2s0","configuration":{{"note":"{token}"}}}}"#);
    let out = vm.sh(&format!("bpi-os ledger append --category network --action created --data '{data}'"))?;
    ensure!(out.contains("through bpi-ledger.service"), "append did not go through the service: {out}");

    let denied = vm.sh_any(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups bpi-os ledger append --category network --action created --data '{data}'"
    ))?;
    ensure!(denied.code != 0 && denied.stderr.contains("AccessDenied"), "nobody could append: {denied:?}");
    let query = vm.sh("setpriv --reuid=65534 --regid=65534 --clear-groups dbus-send --system --print-reply --dest=org.bpi.os.Ledger1 /org/bpi/os/Ledger1 org.bpi.os.Ledger1.get_stats")?;
    // A StatsView struct: its per-category counts name the category just recorded.
    ensure!(query.contains("string \"network\""), "nobody could not query: {query}");

    let attrs = vm.sh(&format!("lsattr {STORE}/blocks.log"))?;
    ensure!(attrs.split_whitespace().next().is_some_and(|a| a.contains('a')), "the log is not append-only: {attrs}");
    let key = vm.sh("stat -c '%a %U' /bpi/data/encrypted/ledger/checkpoint.key")?;
    ensure!(key.trim() == "600 root", "signing key: {key}");
    Ok(token)
}

pub fn after_reboot(vm: &Vm, token: &str) -> Result<()> {
    let shown = vm.sh("bpi-os ledger show --category network --json")?;
    ensure!(shown.contains(token), "the entry appended before the reboot is gone: {shown}");
    let verify = vm.sh_any("bpi-os ledger verify --json")?;
    ensure!(verify.code == 0, "ledger verify failed after reboot: {}{}", verify.stdout, verify.stderr);
    let report: serde_json::Value = serde_json::from_str(&verify.stdout)?;
    ensure!(report["ok"] == true && report["checkpoint"]["present"] == true, "verify: {report}");
    eprintln!(
        "ledger in the VM: {} blocks after reboot, checkpoint at size {}",
        report["blocks"], report["checkpoint"]["size"]
    );
    Ok(())
}

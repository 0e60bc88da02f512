//! What several QEMU tests share: a Meta-RIB for the guest on QEMU's user
//! network, SSH from the host into a guest, and the checks of a node that
//! has no provisioning.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpi_support::Cmd;
use serde_json::Value;

use crate::vm::Vm;

/// A Meta-RIB for the guest (10.0.2.15) and QEMU's gateway (10.0.2.2).
pub const TOPOLOGY: &str = r#"[control]
local = "guest"

[[node]]
id = "guest"
prefixes = ["10.0.2.15/32"]
jurisdiction = "US"
attestation = "tpm"
uptime = 1.0
performance = 1.0
reputation = 1.0
known_vulnerabilities = 0
patch_level = 100
security_incidents = 0
compliance = 100

[[node]]
id = "peer"
prefixes = ["10.0.2.2/32"]
jurisdiction = "US"
attestation = "software"
uptime = 0.99
performance = 0.9
reputation = 0.9
known_vulnerabilities = 2
patch_level = 95
security_incidents = 0
compliance = 90

[[link]]
a = "guest"
b = "peer"
latency_ms = 1.0
bandwidth_mbps = 1000
"#;

/// ssh options for a throw-away guest: no known_hosts, no agent, no prompts.
fn ssh_opts(port: u16) -> Vec<String> {
    [
        "-p", &port.to_string(), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The guest's host keys as the host sees them through the forwarded port,
/// as `ssh-keygen -l` fingerprints (SHA256:...), sorted.
pub fn scanned_fingerprints(port: u16) -> Result<Vec<String>> {
    // One connection per key type; under emulation one may take long, so
    // ask for the two bpi-os makes and give each time.
    let mut scan = String::new();
    for _ in 0..3 {
        scan = Cmd::new("ssh-keyscan").args(["-T", "30", "-t", "ed25519,ecdsa", "-p", &port.to_string(), "127.0.0.1"]).output()?;
        if scan.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count() >= 2 {
            break;
        }
    }
    ensure!(!scan.trim().is_empty(), "ssh-keyscan found no host key on port {port}");
    let list = Cmd::new("ssh-keygen").args(["-l", "-f", "-"]).stdin_bytes(scan.into_bytes()).output()?;
    let mut fps: Vec<String> = list.lines().filter_map(|l| l.split_whitespace().nth(1).map(String::from)).collect();
    fps.sort();
    Ok(fps)
}

/// Polls from power-on until sshd answers on the forwarded port; the time from power-on.
pub fn wait_ssh_answers(vm: &Vm, port: u16) -> Result<Duration> {
    while vm.started.elapsed() < crate::vm::BOOT_TIMEOUT {
        let t = Instant::now();
        let ok = Cmd::new("ssh-keyscan").args(["-T", "3", "-p", &port.to_string(), "127.0.0.1"]).output().is_ok_and(|o| !o.trim().is_empty());
        if ok {
            return Ok(vm.started.elapsed());
        }
        let serial = vm.serial();
        if let Some(why) = crate::logscan::fatal(&serial) {
            return vm.fail(&format!("waiting for sshd: {why}"));
        }
        // A unit sshd needs has failed: it will not come (the console says which).
        if let Some(line) = serial.lines().find(|l| l.contains("Dependency failed for") && l.contains("ssh")) {
            return vm.fail(&format!("waiting for sshd: {}", line.trim()));
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
    }
    vm.fail("sshd did not answer within the boot timeout")
}

/// Runs a command in the guest over SSH as `user` with `key`.
pub fn ssh(port: u16, key: &Path, user: &str, command: &str) -> Result<String> {
    Ok(Cmd::new("ssh").args(ssh_opts(port)).arg("-i").arg(key).arg(format!("{user}@127.0.0.1")).arg(command).output()?)
}

/// Whether a login as `user` with `key` is refused.
pub fn ssh_refused(port: u16, key: &Path, user: &str) -> bool {
    Cmd::new("ssh").args(ssh_opts(port)).arg("-i").arg(key).arg(format!("{user}@127.0.0.1")).arg("true").run().is_err()
}

/// A new ed25519 key pair in `dir`; returns the private key's path.
pub fn new_key(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let key = dir.join(name);
    Cmd::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key).run()?;
    Ok(key)
}

/// Waits until `ifname` has `addr` (NetworkManager brings it up after boot).
pub fn wait_address(vm: &Vm, ifname: &str, addr: &str) -> Result<Value> {
    let t = Instant::now();
    loop {
        let j: Value = serde_json::from_str(&vm.sh(&format!("ip -j addr show dev {ifname}"))?)?;
        let has = j[0]["addr_info"].as_array().is_some_and(|a| a.iter().any(|i| i["local"] == addr));
        if has {
            return Ok(j);
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("{ifname} did not get {addr} within 120 s: {j}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The guest's one Ethernet interface.
pub fn ethernet(vm: &Vm) -> Result<String> {
    let links: Value = serde_json::from_str(&vm.sh("ip -j link show")?)?;
    links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["link_type"] == "ether"))
        .and_then(|l| l["ifname"].as_str())
        .map(String::from)
        .context("the guest has no Ethernet interface")
}

/// How long bpi-provision.service ran on this boot (its ExecStart), with
/// the phases its report gives: "1.83s (host keys 0.4s, ...)".
pub fn provision_seconds(vm: &Vm) -> Result<String> {
    let out = vm.sh("systemctl show bpi-provision.service -p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic")?;
    let get = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.parse::<f64>().ok()).unwrap_or(0.0);
    let total = (get("ExecMainExitTimestampMonotonic") - get("ExecMainStartTimestampMonotonic")) / 1e6;
    let report: Value = serde_json::from_str(&vm.sh("cat /run/bpi-provision.json")?)?;
    let phases: Vec<String> = report["seconds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {:.2}s", p[0].as_str().unwrap_or("?"), p[1].as_f64().unwrap_or(0.0)))
        .collect();
    Ok(format!("{total:.2}s ({})", phases.join(", ")))
}

/// A node booted with no provisioning: DHCP from QEMU's user network through
/// NetworkManager, sshd up with host keys made on this boot and no
/// authorized key, and the console saying how to provision.
pub fn unprovisioned_node_checks(vm: &Vm, port: u16) -> Result<()> {
    let nic = ethernet(vm)?;
    let a = wait_address(vm, &nic, "10.0.2.15")?;
    let dynamic = a[0]["addr_info"].as_array().into_iter().flatten().any(|i| i["local"] == "10.0.2.15" && i["dynamic"] == true);
    ensure!(dynamic, "10.0.2.15 on {nic} is not a DHCP lease: {a}");
    ensure!(vm.sh(&format!("nmcli -t -f GENERAL.STATE device show {nic}"))?.contains("100"), "NetworkManager does not have {nic} connected");
    ensure!(vm.sh("systemctl is-active ssh.service")?.trim() == "active", "sshd is not running");
    let keys = vm.sh("find /root/ /var/home -name authorized_keys | wc -l")?;
    ensure!(keys.trim() == "0", "an authorized_keys file exists on an unprovisioned node");
    let status: Value = serde_json::from_str(&vm.sh("bpi-os status --json")?)?;
    ensure!(status["provisioning"]["outcome"] == "no-source", "status: {}", status["provisioning"]);
    ensure!(status["ssh"]["service_active"] == true, "status: {}", status["ssh"]);
    let mut fps: Vec<String> = status["ssh"]["host_keys"].as_array().into_iter().flatten().filter_map(|k| k["fingerprint"].as_str().map(String::from)).collect();
    fps.sort();
    ensure!(fps.len() == 2, "expected ed25519 and ecdsa host keys: {}", status["ssh"]);
    let scanned = scanned_fingerprints(port)?;
    ensure!(scanned == fps, "the keys sshd serves {scanned:?} are not the ones status shows {fps:?}");
    eprintln!("FIGURE bpi-provision.service without provisioning (first boot, host keys made): {}", provision_seconds(vm)?);
    let console = vm.serial();
    ensure!(console.contains("no provisioning found") && console.contains("provisioning.md"), "the console does not say how to provision");
    for fp in &fps {
        ensure!(console.contains(fp.as_str()), "host key {fp} is not on the console");
    }
    // Nobody may log in: a key the node never saw is refused.
    let t = tempfile::tempdir()?;
    let key = new_key(t.path(), "stranger")?;
    ensure!(ssh_refused(port, &key, "root") && ssh_refused(port, &key, "bpi"), "a login without an authorized key succeeded");
    Ok(())
}

pub const GIB: u64 = 1 << 30;

/// A sparse file of `size` bytes (an empty disk).
pub fn sparse(path: &Path, size: u64) -> Result<()> {
    std::fs::File::create(path)?.set_len(size)?;
    Ok(())
}

/// An ext4 file system image holding bpi-os.raw, SHA256SUMS and manifest.json,
/// made from files (mke2fs -d), never mounted on the host: install media.
pub fn media(dir: &Path) -> Result<std::path::PathBuf> {
    let files = dir.join("media-files");
    std::fs::create_dir_all(&files)?;
    for f in ["bpi-os.raw", "SHA256SUMS", "manifest.json"] {
        Cmd::new("cp").arg("--sparse=always").arg(crate::image_dir().join(f)).arg(files.join(f)).run()?;
    }
    let img = dir.join("media.ext4");
    sparse(&img, 3 * GIB)?;
    Cmd::new("mkfs.ext4").args(["-q", "-F", "-L", "bpi-media", "-d"]).arg(&files).arg(&img).run()?;
    std::fs::remove_dir_all(&files)?;
    Ok(img)
}

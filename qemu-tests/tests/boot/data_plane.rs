//! bpi-drx-data.service in the booted image (a first boot, without
//! provisioning) attaches xdp_trust_routing to the guest's virtio NIC, the counters move when the
//! host sends traffic (through QEMU's user network), a trust change flips the
//! verdict, the attach is in the ledger, bpi-drx-control.service takes over
//! the trust (a change through it flips the verdict), and stopping the data
//! unit detaches.

use std::{net::UdpSocket, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use bpi_qemu_tests::fixtures::{self, TOPOLOGY};
use bpi_qemu_tests::vm::{Vm, VmOptions};
use serde_json::Value;

const DATAGRAMS: u64 = 40;


fn status(vm: &Vm) -> Result<Value> {
    Ok(serde_json::from_str(&vm.sh("bpi-os nxos ebpf status --json")?)?)
}

fn packets(status: &Value, reason: &str) -> u64 {
    status["counters"][reason]["packets"].as_u64().unwrap_or(0)
}

/// Sends datagrams from the host until the guest's `reason` counter has
/// moved by at least DATAGRAMS / 2 (the first may wait on ARP in QEMU's slirp).
fn send_until_counted(vm: &Vm, port: u16, reason: &str) -> Result<u64> {
    let before = packets(&status(vm)?, reason);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    for round in 0..5 {
        for i in 0..DATAGRAMS {
            sock.send_to(format!("bpi-{round}-{i}").as_bytes(), ("127.0.0.1", port))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let moved = packets(&status(vm)?, reason) - before;
        if moved >= DATAGRAMS / 2 {
            return Ok(moved);
        }
    }
    bail!("the guest's '{reason}' counter did not move with host traffic: {}", status(vm)?)
}

/// Forwards a host UDP port to the guest's NIC and SSH to a host port.
pub struct Ports {
    pub udp: u16,
    pub ssh: u16,
}

impl Ports {
    pub fn add_to(opts: &mut VmOptions) -> Result<Ports> {
        let udp = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let ssh = bpi_qemu_tests::vm::free_tcp_port()?;
        opts.nic_udp_forward = Some(udp);
        opts.ssh_forward = Some(ssh);
        Ok(Ports { udp, ssh })
    }
}

/// While the first boot (without provisioning) goes on: the time to sshd
/// answering, with no provisioning at all.
pub fn wait_ssh(vm: &Vm, ports: &Ports) -> Result<()> {
    let to_ssh = fixtures::wait_ssh_answers(vm, ports.ssh)?;
    eprintln!("FIGURE boot to \"ssh answers\" without provisioning: {:.1}s", to_ssh.as_secs_f64());
    Ok(())
}

/// Once booted: sshd has host keys of this boot and nobody authorized;
/// then the data plane.
pub fn checks(vm: &Vm, ports: &Ports) -> Result<()> {
    let (port, ssh_port) = (ports.udp, ports.ssh);
    fixtures::unprovisioned_node_checks(vm, ssh_port)?;

    // Shipped default: the unit is up and attached to nothing.
    let state = vm.sh("systemctl show -p ActiveState bpi-drx-data.service")?;
    ensure!(state.contains("ActiveState=active"), "bpi-drx-data.service: {state}");
    ensure!(status(vm)?["links"].as_array().is_some_and(|l| l.is_empty()), "attached with no interfaces configured");

    let links: Value = serde_json::from_str(&vm.sh("ip -j link show")?)?;
    let nic = links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["link_type"] == "ether"))
        .and_then(|l| l["ifname"].as_str())
        .context("the guest has no Ethernet interface")?
        .to_string();
    // NetworkManager's DHCP gave the NIC QEMU's address.
    fixtures::wait_address(vm, &nic, "10.0.2.15")?;
    vm.sh(&format!(
        "printf 'interfaces = [\"{nic}\"]\\nmode = \"native\"\\n' > /bpi/config/system/drx-data.toml && systemctl restart bpi-drx-data.service"
    ))?;
    let s = status(vm)?;
    ensure!(s["links"][0]["interface"] == nic.as_str() && s["links"][0]["hook"]["mode"] == "native", "not attached to {nic}: {s}");
    ensure!(s["links"][0]["hook"]["program_name"].as_str().is_some_and(|n| n.starts_with("xdp_trust")), "{s}");

    vm.sh("bpi-os nxos trust update --node-id 1 --score 0.9 && bpi-os nxos trust map --prefix 10.0.2.15/32 --node-id 1")?;
    let trusted = send_until_counted(vm, port, "trusted")?;
    vm.sh("bpi-os nxos trust update --node-id 1 --score 0.1")?;
    let dropped = send_until_counted(vm, port, "low_trust")?;
    let shown: Value = serde_json::from_str(&vm.sh("bpi-os nxos trust show --json")?)?;
    ensure!(shown["prefixes"][0]["packets"].as_u64().unwrap_or(0) >= trusted + dropped, "per-prefix counter: {shown}");
    eprintln!("guest {nic}: {trusted} host datagrams passed at trust 0.9, {dropped} dropped at 0.1");

    let ledger = vm.sh("bpi-os ledger show --category ebpf --json")?;
    ensure!(ledger.contains(&nic) && ledger.contains("\"load\""), "the attach is not in the ledger: {ledger}");
    let ledger = vm.sh("bpi-os ledger show --category trust --json")?;
    ensure!(ledger.contains("put_route"), "the trust changes are not in the ledger: {ledger}");

    // The control plane takes over: its Meta-RIB maps the guest's address to
    // node "guest", and a trust change through the daemon flips the verdict.
    vm.sh(&format!("cat > /bpi/config/system/topology.toml <<'EOF'\n{TOPOLOGY}EOF\nsystemctl start bpi-drx-control.service"))?;
    let state = vm.sh("systemctl show -p ActiveState bpi-drx-control.service")?;
    ensure!(state.contains("ActiveState=active"), "bpi-drx-control.service: {state}");
    let topo: Value = serde_json::from_str(&vm.sh("bpi-os nxos topology --trust-scores --routing-table --json")?)?;
    ensure!(topo["routing_table"][0]["destination"] == "peer", "routing table: {topo}");
    let out = vm.sh("bpi-os nxos trust update --node-id guest --score 0.1")?;
    ensure!(out.contains("routes recomputed") && out.contains("data plane version"), "trust update through the daemon: {out}");
    let dropped_by_control = send_until_counted(vm, port, "low_trust")?;
    vm.sh("bpi-os nxos trust update --node-id guest --score 0.95")?;
    let passed_by_control = send_until_counted(vm, port, "trusted")?;
    let ledger = vm.sh("bpi-os ledger show --category trust --json")?;
    ensure!(ledger.contains("drx-control"), "the control plane's writes are not in the ledger: {ledger}");
    eprintln!("control plane: {dropped_by_control} dropped at trust 0.1, {passed_by_control} passed at 0.95");

    // A restart swaps the program in place; a stop detaches.
    vm.sh("systemctl restart bpi-drx-data.service")?;
    ensure!(status(vm)?["links"][0]["hook"]["mode"] == "native", "not attached after a restart");
    vm.sh("systemctl stop bpi-drx-data.service")?;
    let hook = vm.sh(&format!("ip -j -d link show dev {nic}"))?;
    ensure!(!hook.contains("\"xdp\""), "still attached after stop: {hook}");
    ensure!(status(vm)?["links"].as_array().is_some_and(|l| l.is_empty()), "a link pin survived the stop");
    vm.check_logs()
}

//! Checked settings → the changes to make, computed without touching the
//! machine (so `provision check` and `apply --dry-run` show exactly what
//! `apply` does), each with the ledger record it leaves.

use serde::Serialize;
use serde_json::{json, Value};
use sha2::Digest;

use bpi_formats::update::{SOURCE_FILE, TIMER};

use crate::check::Checked;
use crate::network;

/// Where NetworkManager reads the provisioned connections.
pub const NM_DIR: &str = "/etc/NetworkManager/system-connections";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    Hostname { name: String },
    Hosts { content: String },
    User { name: String, groups: Vec<String>, sudo_nopasswd: bool },
    Password { user: String, expire: bool, #[serde(skip)] hash: String },
    AuthorizedKeys { user: String, fingerprints: Vec<String>, #[serde(skip)] keys: Vec<String> },
    Connection { id: String, path: String, content: String },
    /// bpi-*.nmconnection files of an earlier instance that this one does not keep.
    RemoveOtherConnections { keep: Vec<String> },
    ConfigFile { path: String, mode: u32, sha256: String, bytes: usize, #[serde(skip)] content: Vec<u8> },
    /// /etc/bpi-os/update-source: where `bpi-os update` looks.
    UpdateSource { source: String },
    /// bpi-update.timer enabled and started (unattended updates), or disabled and stopped.
    UpdateTimer { enable: bool },
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Hostname { name } => format!("set the host name to {name}"),
            Action::Hosts { .. } => "write /etc/hosts (127.0.1.1 is this node)".into(),
            Action::User { name, groups, sudo_nopasswd } => format!(
                "make user {name}{}{}",
                if groups.is_empty() { String::new() } else { format!(" in groups {}", groups.join(",")) },
                if *sudo_nopasswd { ", sudo without a password" } else { "" }
            ),
            Action::Password { user, expire, .. } => {
                format!("set {user}'s password hash{}", if *expire { ", to be changed at first login" } else { "" })
            }
            Action::AuthorizedKeys { user, fingerprints, .. } => format!("authorize {} SSH key(s) for {user}: {}", fingerprints.len(), fingerprints.join(", ")),
            Action::Connection { id, path, .. } => format!("NetworkManager connection {id} ({path})"),
            Action::RemoveOtherConnections { .. } => "remove provisioned connections of an earlier instance".into(),
            Action::ConfigFile { path, mode, bytes, .. } => format!("write {path} ({bytes} bytes, mode {mode:04o})"),
            Action::UpdateSource { source } => format!("take updates from {source} ({SOURCE_FILE})"),
            Action::UpdateTimer { enable: true } => format!("enable and start {TIMER}: unattended updates"),
            Action::UpdateTimer { enable: false } => format!("disable and stop {TIMER}: updates only when asked"),
        }
    }

    /// (category, action, data) for the ledger: user, settings and network plugins.
    pub fn record(&self) -> (&'static str, &'static str, Value) {
        match self {
            Action::Hostname { name } => ("settings", "provision-hostname", json!({"key": "hostname", "value": name})),
            Action::Hosts { content } => ("settings", "provision-hosts", json!({"key": "/etc/hosts", "value": {"sha256": sha(content.as_bytes())}})),
            Action::User { name, groups, sudo_nopasswd } => ("user", "provision-user", json!({"username": name, "groups": groups, "sudo_nopasswd": sudo_nopasswd})),
            Action::Password { user, expire, .. } => ("user", "provision-password", json!({"username": user, "password": "hash set", "expire": expire})),
            Action::AuthorizedKeys { user, fingerprints, .. } => ("user", "provision-ssh-keys", json!({"username": user, "ssh_keys": fingerprints})),
            Action::Connection { id, path, content } => ("connection", "provision-connection", json!({"connection": id, "path": path, "sha256": sha(content.as_bytes())})),
            Action::RemoveOtherConnections { keep } => ("connection", "provision-remove-connections", json!({"connection": "bpi-*", "keep": keep})),
            Action::ConfigFile { path, mode, sha256, bytes, .. } => ("settings", "provision-file", json!({"key": path, "value": {"sha256": sha256, "bytes": bytes, "mode": format!("{mode:04o}")}})),
            Action::UpdateSource { source } => ("settings", "provision-update-source", json!({"key": SOURCE_FILE, "value": source})),
            Action::UpdateTimer { enable } => ("settings", "provision-update-timer", json!({"key": TIMER, "value": if *enable { "enabled" } else { "disabled" }})),
        }
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A connection UUID derived from the instance and the interface, in the
/// RFC 9562 layout (version 8, custom), so a plan is the same every time.
fn uuid(instance: &str, id: &str) -> String {
    let mut h = sha2::Sha256::digest(format!("bpi-os connection\0{instance}\0{id}").as_bytes())[..16].to_vec();
    h[6] = (h[6] & 0x0f) | 0x80;
    h[8] = (h[8] & 0x3f) | 0x80;
    let x = hex::encode(h);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

pub fn hosts_file(hostname: &str, fqdn: Option<&str>) -> String {
    let names = match fqdn {
        Some(f) if f != hostname => format!("{f} {hostname}"),
        _ => hostname.to_string(),
    };
    format!("# Written by bpi-os provisioning (manage_etc_hosts).\n127.0.0.1 localhost\n127.0.1.1 {names}\n::1 localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n")
}

/// The changes for a checked set (which must have no errors).
pub fn plan(c: &Checked) -> Vec<Action> {
    let s = &c.settings;
    let mut out = Vec::new();
    if let Some(h) = &s.hostname {
        out.push(Action::Hostname { name: h.clone() });
        if s.manage_etc_hosts {
            out.push(Action::Hosts { content: hosts_file(h, s.fqdn.as_deref()) });
        }
    }
    for u in &s.users {
        if u.name != "root" {
            out.push(Action::User { name: u.name.clone(), groups: u.groups.clone(), sudo_nopasswd: u.sudo_nopasswd });
        }
        if let Some(hash) = &u.password_hash {
            out.push(Action::Password { user: u.name.clone(), expire: u.expire, hash: hash.clone() });
        }
        if !u.ssh_keys.is_empty() {
            let fingerprints = u.ssh_keys.iter().filter_map(|k| crate::settings::check_ssh_key(k).ok()).collect();
            out.push(Action::AuthorizedKeys { user: u.name.clone(), fingerprints, keys: u.ssh_keys.clone() });
        }
    }
    if let Some(net) = &s.network {
        let mut keep = Vec::new();
        for i in &net.interfaces {
            let file = format!("bpi-{}.nmconnection", i.id);
            out.push(Action::Connection {
                id: format!("bpi-{}", i.id),
                path: format!("{NM_DIR}/{file}"),
                content: network::keyfile(i, net, &uuid(&c.instance_id, &i.id)),
            });
            keep.push(file);
        }
        out.push(Action::RemoveOtherConnections { keep });
    }
    for f in &s.files {
        out.push(Action::ConfigFile { path: f.path.clone(), mode: f.mode, sha256: sha(&f.content), bytes: f.content.len(), content: f.content.clone() });
    }
    if let Some(u) = &s.update {
        out.push(Action::UpdateSource { source: u.source.clone() });
        out.push(Action::UpdateTimer { enable: u.automatic });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Documents;

    #[test]
    fn a_proxmox_set_plans_host_user_keys_network_and_files_with_records() {
        let ud = "#cloud-config\nhostname: node1\nmanage_etc_hosts: true\nfqdn: node1.example.net\nuser: op\npassword: $6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOpkNjf0LDiA486DX/kEXgZW0qEikRVMwyfsQjBWQ8a op@host\nchpasswd:\n  expire: False\nusers:\n  - default\nwrite_files:\n  - path: /bpi/config/notes.txt\n    content: hello\nbpi_update:\n  source: https://updates.example.net/bpi-os\n";
        let nc = "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: 'bc:24:11:00:00:01'\n    subnets:\n      - type: dhcp\n";
        let d = Documents { user_data: Some(ud.into()), network_config: Some(nc.into()), meta_data: Some("instance-id: i1\n".into()), ..Documents::default() };
        let c = crate::check::check(&d);
        assert!(c.ok(), "{:?}", c.errors);
        let p = plan(&c);
        let names: Vec<&str> = p.iter().map(|a| a.record().1).collect();
        assert_eq!(
            names,
            ["provision-hostname", "provision-hosts", "provision-user", "provision-password", "provision-ssh-keys", "provision-connection", "provision-remove-connections", "provision-file", "provision-update-source", "provision-update-timer"]
        );
        // Every record passes the ledger's own plugin checks.
        let plugins = bpi_ledger_shapes();
        for a in &p {
            let (cat, _, data) = a.record();
            assert!(plugins.contains(&cat), "{cat}");
            assert!(!data.to_string().contains("$6$"), "a password hash would be in the ledger: {data}");
        }
        // The same set plans the same bytes (connection UUIDs are derived).
        assert_eq!(p, plan(&crate::check::check(&d)));
        assert!(hosts_file("node1", Some("node1.example.net")).contains("127.0.1.1 node1.example.net node1\n"));
    }

    fn bpi_ledger_shapes() -> Vec<&'static str> {
        vec!["settings", "user", "connection"]
    }
}

//! The documents of one source read together into checked [`Settings`]:
//! user-data first, vendor-data filling what user-data leaves out,
//! meta-data for the instance-id and a fallback host name.

use serde::Serialize;

use crate::finding::{Finding, Findings};
use crate::settings::{self, Settings};
use crate::source::Documents;
use crate::{network, userdata};

#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub source: String,
    pub instance_id: String,
    pub settings: Settings,
    /// Any error refuses the whole set: nothing of it is applied.
    pub errors: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn check(docs: &Documents) -> Checked {
    let mut f = Findings::default();
    let ud_name = docs.file_name("user-data");
    let vd_name = docs.file_name("vendor-data");
    let md_name = docs.file_name("meta-data");
    let user = docs.user_data.as_deref().map(|t| userdata::parse(t, &ud_name, &mut f)).unwrap_or_default();
    let vendor = docs.vendor_data.as_deref().map(|t| userdata::parse(t, &vd_name, &mut f)).unwrap_or_default();

    let mut instance_id = None;
    let mut local_hostname = None;
    if let Some(md) = docs.meta_data.as_deref() {
        match crate::yaml::parse(md) {
            Err(e) => f.error(&md_name, e.line, format!("malformed YAML: {}", e.message)),
            Ok(root) => match root.map() {
                None => f.error(&md_name, root.line, format!("meta-data must be a mapping, not {}", root.kind())),
                Some(m) => {
                    for (k, v) in m {
                        match k.as_str() {
                            "instance-id" => match v.text() {
                                Some(id) if !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control) => instance_id = Some(id.to_string()),
                                _ => f.error(&md_name, v.line, "instance-id must be a non-empty string of at most 256 characters"),
                            },
                            "local-hostname" | "hostname" => match v.text() {
                                Some(h) => {
                                    let short = h.split('.').next().unwrap_or(h).to_string();
                                    match settings::check_label(&short) {
                                        Ok(()) => local_hostname = Some((short, h.contains('.').then(|| h.to_string()))),
                                        Err(e) => f.error(&md_name, v.line, e),
                                    }
                                }
                                None => f.error(&md_name, v.line, format!("{k} must be a string")),
                            },
                            other => f.note(&md_name, v.line, format!("{other} is not a key bpi-os reads in meta-data; ignored")),
                        }
                    }
                }
            },
        }
    }
    let net = docs.network_config.as_deref().and_then(|t| network::parse(t, &docs.file_name("network-config"), &mut f));

    let fqdn = user.fqdn.clone().or(vendor.fqdn.clone()).or_else(|| local_hostname.as_ref().and_then(|(_, fq)| fq.clone()));
    let hostname = user
        .hostname
        .clone()
        .or(vendor.hostname.clone())
        .or_else(|| fqdn.as_ref().and_then(|f| f.split('.').next().map(String::from)))
        .or_else(|| local_hostname.map(|(h, _)| h));
    let mut users = user.users.clone();
    if docs.user_data.is_none() {
        users = vendor.users.clone();
    }
    let mut files = vendor.files.clone();
    for uf in &user.files {
        files.retain(|v| v.path != uf.path);
        files.push(uf.clone());
    }
    let settings = Settings {
        hostname,
        fqdn,
        manage_etc_hosts: user.manage_etc_hosts.or(vendor.manage_etc_hosts).unwrap_or(false),
        users: if docs.user_data.is_none() && docs.vendor_data.is_none() { Vec::new() } else { users },
        network: net,
        files,
        update: user.update.clone().or(vendor.update.clone()),
    };
    Checked {
        source: docs.source.clone(),
        instance_id: instance_id.unwrap_or_else(|| format!("sha256:{}", docs.content_id())),
        settings,
        errors: f.errors,
        notes: f.notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOpkNjf0LDiA486DX/kEXgZW0qEikRVMwyfsQjBWQ8a op@host";
    const HASH: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    /// user-data exactly as qemu-server's cloudinit_userdata writes it.
    fn proxmox_user_data(user: &str, key: &str) -> String {
        format!("#cloud-config\nhostname: node1\nmanage_etc_hosts: true\nfqdn: node1.example.net\nuser: {user}\npassword: {HASH}\nssh_authorized_keys:\n  - {key}\nchpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n")
    }

    fn docs(ud: &str) -> Documents {
        Documents { source: "test".into(), prefix: "cidata:".into(), user_data: Some(ud.into()), meta_data: Some("instance-id: 3f2a\n".into()), ..Documents::default() }
    }

    #[test]
    fn proxmox_user_data_is_read_whole() {
        let c = check(&docs(&proxmox_user_data("op", KEY)));
        assert!(c.ok(), "{:?}", c.errors);
        assert_eq!(c.instance_id, "3f2a");
        assert_eq!(c.settings.hostname.as_deref(), Some("node1"));
        assert_eq!(c.settings.fqdn.as_deref(), Some("node1.example.net"));
        assert!(c.settings.manage_etc_hosts);
        let u = &c.settings.users[0];
        assert_eq!((u.name.as_str(), u.password_hash.as_deref(), u.expire), ("op", Some(HASH), false));
        assert_eq!(u.ssh_keys, vec![KEY.to_string()]);
        assert!(u.groups.contains(&"bpi-admin".to_string()) && u.sudo_nopasswd);
        // package_upgrade is reported, with its line, and ignored.
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert_eq!(c.notes[0].to_string(), "cidata:user-data:13: package_upgrade ignored: packages come with the image; update the image instead");
    }

    #[test]
    fn a_bad_key_a_bad_yaml_and_a_bad_topology_refuse_with_file_and_line() {
        let c = check(&docs(&proxmox_user_data("op", "ssh-ed25519 AAAAbroken op@host")));
        assert_eq!(c.errors.len(), 1);
        assert!(c.errors[0].to_string().starts_with("cidata:user-data:8: ssh_authorized_keys: is not an OpenSSH public key"), "{}", c.errors[0]);

        let c = check(&docs("#cloud-config\nhostname: [node1\n"));
        assert!(!c.ok() && c.errors[0].message.contains("malformed YAML"), "{:?}", c.errors);

        let topo = "#cloud-config\nwrite_files:\n  - path: /bpi/config/system/topology.toml\n    content: |\n      [[node]]\n      id = 1\n      colour = \"red\"\n";
        let c = check(&docs(topo));
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].to_string().starts_with("cidata:user-data:7: write_files /bpi/config/system/topology.toml: line 3 of the file: unknown field `colour`"), "{}", c.errors[0]);
        assert!(c.errors[0].message.contains("colour"), "{}", c.errors[0]);
    }

    #[test]
    fn files_outside_bpi_config_and_plain_passwords_are_refused() {
        let c = check(&docs("#cloud-config\nwrite_files:\n  - path: /etc/shadow\n    content: x\n"));
        assert!(c.errors[0].message.contains("outside /bpi/config"), "{:?}", c.errors);
        let c = check(&docs("#cloud-config\npassword: hunter2\n"));
        assert!(c.errors[0].message.contains("plain-text passwords are refused"), "{:?}", c.errors);
        let c = check(&docs("#cloud-config\nwrite_files:\n  - path: /bpi/config/../etc/x\n"));
        assert!(!c.ok());
    }

    #[test]
    fn bpi_update_names_a_source_and_turns_unattended_updates_on() {
        let c = check(&docs("#cloud-config\nbpi_update:\n  source: https://updates.example.net/bpi-os/\n"));
        assert!(c.ok(), "{:?}", c.errors);
        assert_eq!(c.settings.update, Some(crate::settings::Update { source: "https://updates.example.net/bpi-os/".into(), automatic: true }));
        let c = check(&docs("#cloud-config\nbpi_update:\n  source: /srv/updates\n  automatic: false\n"));
        assert_eq!(c.settings.update.map(|u| u.automatic), Some(false));
        for (ud, line, says) in [
            ("bpi_update: https://x/\n", 2, "must be a mapping"),
            ("bpi_update:\n  automatic: true\n", 3, "needs source"),
            ("bpi_update:\n  source: ftp://x/y\n", 3, "only http"),
            ("bpi_update:\n  source: https://x/\n  automatic: sometimes\n", 4, "true or false"),
            ("bpi_update:\n  source: https://x/\n  channel: beta\n", 4, "not a key of bpi_update"),
        ] {
            let c = check(&docs(&format!("#cloud-config\n{ud}")));
            assert_eq!(c.errors.len(), 1, "{ud}: {:?}", c.errors);
            assert!(c.errors[0].line == line && c.errors[0].message.contains(says), "{ud}: {}", c.errors[0]);
            assert!(c.settings.update.is_none());
        }
        // Left out, nothing about updates changes.
        assert_eq!(check(&docs("#cloud-config\nhostname: a\n")).settings.update, None);
    }

    #[test]
    fn no_meta_data_derives_an_instance_id_from_the_content() {
        let mut d = docs("#cloud-config\nhostname: a\n");
        d.meta_data = None;
        let a = check(&d).instance_id;
        d.user_data = Some("#cloud-config\nhostname: b\n".into());
        assert_ne!(a, check(&d).instance_id);
        assert!(a.starts_with("sha256:"));
    }

    #[test]
    fn unknown_keys_are_notes_not_errors() {
        let c = check(&docs("#cloud-config\nruncmd: [ls]\nhostname: a\n"));
        assert!(c.ok());
        assert_eq!(c.notes[0].line, 2);
    }
}

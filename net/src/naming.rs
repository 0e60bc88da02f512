//! Interface names: rendered from a template, mapped to what Linux and the
//! Proxmox GUI accept (lower-case ASCII letters, digits and `_`; at most 15
//! bytes, IFNAMSIZ less its NUL), and kept unique when two sources map to
//! the same name (seed 000, 5.2).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// Linux's limit on an interface name (IFNAMSIZ is 16 with the NUL).
pub const MAX_LEN: usize = 15;

/// What a template may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// The Proxmox guest id (VM or container).
    pub vmid: Option<u32>,
    /// The guest's interface index (`net0` is 0).
    pub index: u32,
    /// A container's name (Docker), or the interface's own name.
    pub container: Option<String>,
}

/// Every character Proxmox would refuse becomes `_`; letters are lower-cased.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// Renders `template` (`{vmid}`, `{index}`, `{_index}`: empty for index 0,
/// `_N` otherwise, `{container}`), sanitized. A name longer than
/// [`MAX_LEN`] or empty is an error, not cut short: two guests' names
/// would otherwise meet in the first 15 bytes without anyone choosing it.
pub fn render(template: &str, vars: &Vars) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { bail!("name template {template:?}: '{{' without '}}'") };
        let key = &rest[open + 1..open + close];
        match key {
            "vmid" => match vars.vmid {
                Some(v) => out.push_str(&v.to_string()),
                None => bail!("name template {template:?} uses {{vmid}}, but this interface belongs to no Proxmox guest"),
            },
            "index" => out.push_str(&vars.index.to_string()),
            "_index" => {
                if vars.index > 0 {
                    out.push_str(&format!("_{}", vars.index));
                }
            }
            "container" => match &vars.container {
                Some(c) => out.push_str(c),
                None => bail!("name template {template:?} uses {{container}}, but this interface has no container name"),
            },
            other => bail!("name template {template:?}: unknown placeholder {{{other}}} (known: {{vmid}}, {{index}}, {{_index}}, {{container}})"),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    let name = sanitize(&out);
    if name.is_empty() {
        bail!("name template {template:?} renders an empty name");
    }
    if name.len() > MAX_LEN {
        bail!("name template {template:?} renders {name:?}, {} bytes: an interface name has at most {MAX_LEN}", name.len());
    }
    Ok(name)
}

/// `name` for `source`, or, when another source holds it already (two
/// names that sanitize alike), the name with its tail replaced by `_` and
/// four hex digits of the source's SHA-256: the same source always gets
/// the same name, and different ones get different names.
pub fn unique(name: &str, source: &str, taken: &BTreeMap<String, String>) -> Result<String> {
    match taken.get(name) {
        None => return Ok(name.to_string()),
        Some(s) if s == source => return Ok(name.to_string()),
        Some(_) => {}
    }
    let digest = hex::encode(Sha256::digest(source.as_bytes()));
    // Four hex digits first; more only if those collide too.
    for width in [4, 6, 8] {
        let suffix = format!("_{}", &digest[..width]);
        let keep = name.len().min(MAX_LEN - suffix.len());
        let candidate = format!("{}{suffix}", &name[..keep]);
        if taken.get(&candidate).is_none_or(|s| s == source) {
            return Ok(candidate);
        }
    }
    bail!("no unique interface name for {source:?} near {name:?}")
}

/// A Proxmox guest interface by its host-side name: `vethVMIDiN` (an LXC
/// container's veth) or `tapVMIDiN` (a VM's tap), as (kind, vmid, index).
pub fn proxmox_guest(ifname: &str) -> Option<(GuestKind, u32, u32)> {
    let (kind, rest) = if let Some(r) = ifname.strip_prefix("veth") {
        (GuestKind::Lxc, r)
    } else if let Some(r) = ifname.strip_prefix("tap") {
        (GuestKind::Vm, r)
    } else {
        return None;
    };
    let (vmid, index) = rest.split_once('i')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !digits(vmid) || !digits(index) {
        return None;
    }
    Some((kind, vmid.parse().ok()?, index.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Lxc,
    Vm,
    Docker,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(vmid: u32, index: u32) -> Vars {
        Vars { vmid: Some(vmid), index, container: None }
    }

    #[test]
    fn templates_render_proxmox_names() {
        assert_eq!(render("vi{vmid}{_index}", &vars(100, 0)).unwrap(), "vi100");
        assert_eq!(render("vi{vmid}{_index}", &vars(100, 2)).unwrap(), "vi100_2");
        assert_eq!(render("tap{vmid}i{index}", &vars(7, 1)).unwrap(), "tap7i1");
        let web = Vars { vmid: None, index: 0, container: Some("Web-Front.1".into()) };
        assert_eq!(render("dk_{container}", &web).unwrap(), "dk_web_front_1");
        // Too long is an error naming the length, not a silent cut.
        let long = Vars { vmid: None, index: 0, container: Some("a-very-long-container".into()) };
        let e = render("dk_{container}", &long).unwrap_err().to_string();
        assert!(e.contains("24 bytes") && e.contains("at most 15"), "{e}");
        assert!(render("x{vmid}", &Vars::default()).unwrap_err().to_string().contains("no Proxmox guest"));
        assert!(render("x{nope}", &vars(1, 0)).unwrap_err().to_string().contains("unknown placeholder {nope}"));
        assert!(render("x{vmid", &vars(1, 0)).is_err());
        assert!(render("{_index}", &vars(1, 0)).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn sanitize_maps_what_proxmox_refuses() {
        assert_eq!(sanitize("vi-container-name"), "vi_container_name");
        assert_eq!(sanitize("ÄB c"), "_b_c");
    }

    #[test]
    fn names_that_sanitize_alike_stay_apart_and_stable() {
        let mut taken = BTreeMap::new();
        let a = unique("dk_web_1", "docker:web-1", &taken).unwrap();
        assert_eq!(a, "dk_web_1");
        taken.insert(a.clone(), "docker:web-1".to_string());
        let b = unique("dk_web_1", "docker:web.1", &taken).unwrap();
        assert_ne!(b, a);
        assert!(b.len() <= MAX_LEN && b.starts_with("dk_web_1_"), "{b}");
        assert_eq!(unique("dk_web_1", "docker:web.1", &taken).unwrap(), b, "not stable");
        assert_eq!(unique("dk_web_1", "docker:web-1", &taken).unwrap(), a);
        // A full-length name keeps 10 bytes and the suffix.
        taken.insert("abcdefghijklmno".into(), "one".into());
        let c = unique("abcdefghijklmno", "two", &taken).unwrap();
        assert_eq!(c.len(), MAX_LEN);
        assert!(c.starts_with("abcdefghij_"), "{c}");
    }

    #[test]
    fn proxmox_guest_interfaces_by_name() {
        assert_eq!(proxmox_guest("veth100i0"), Some((GuestKind::Lxc, 100, 0)));
        assert_eq!(proxmox_guest("tap101i2"), Some((GuestKind::Vm, 101, 2)));
        for n in ["veth100", "vethi0", "veth10xi0", "tap1i", "eth0", "veth01i0", "veth9ae4c1f"] {
            assert_eq!(proxmox_guest(n), None, "{n}");
        }
    }
}

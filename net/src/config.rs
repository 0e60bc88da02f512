//! The network agent's settings, /bpi/config/system/net.toml:
//!
//! ```toml
//! # Seconds NetworkManager waits, during a change, before it rolls the
//! # checkpoint back by itself (the agent died, or the node lost its path).
//! rollback_timeout = 30
//! # What must answer after a change: "gateway" (the default route's) or an address.
//! connectivity = "gateway"
//!
//! [[bridge]]
//! name = "ovsbr0"
//! uplink = "ens18"      # its addresses (DHCP or static) move to the bridge
//! stp = false
//!
//! [[attach]]
//! kind = "lxc"          # lxc: vethVMIDiN; vm: tapVMIDiN; docker: containers with `label`
//! bridge = "ovsbr0"
//! name = "vi{vmid}{_index}"
//!
//! [[attach]]
//! kind = "docker"
//! label = "netmaker.network"
//! bridge = "ovsbr1"
//! name = "nm_{container}"
//! ```

use std::collections::BTreeSet;

use anyhow::Result;
use bpi_support::config::{Source, Spanned};
use serde::Deserialize;

use crate::naming::{self, GuestKind, Vars};

pub const DEFAULT_PATH: &str = "/bpi/config/system/net.toml";
/// The checkpoint's rollback timeout when the file names none.
pub const ROLLBACK_TIMEOUT: u32 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    rollback_timeout: Option<Spanned<u32>>,
    connectivity: Option<Spanned<String>>,
    #[serde(default)]
    bridge: Vec<Spanned<RawBridge>>,
    #[serde(default)]
    attach: Vec<Spanned<RawAttach>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    name: Spanned<String>,
    uplink: Option<Spanned<String>>,
    #[serde(default)]
    stp: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttach {
    kind: Spanned<GuestKind>,
    bridge: Spanned<String>,
    name: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connectivity {
    Gateway,
    Address(std::net::IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub uplink: Option<String>,
    pub stp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub kind: GuestKind,
    pub bridge: String,
    /// The port's name template (naming::render).
    pub name: String,
    /// Docker: the container label that selects it.
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub rollback_timeout: u32,
    pub connectivity: Connectivity,
    pub bridges: Vec<Bridge>,
    pub attach: Vec<Attach>,
}

impl Default for Config {
    fn default() -> Self {
        Config { rollback_timeout: ROLLBACK_TIMEOUT, connectivity: Connectivity::Gateway, bridges: Vec::new(), attach: Vec::new() }
    }
}

/// The template a rule gets when it names none: `veth100i0` becomes `vi100`
/// (seed 000, 5.2); a VM's tap keeps the name Proxmox gave it.
pub fn default_template(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::Lxc => "vi{vmid}{_index}",
        GuestKind::Vm => "tap{vmid}i{index}",
        GuestKind::Docker => "dk_{container}",
    }
}

/// A bridge or port name as given: what Linux accepts, said with its line.
fn check_ifname(src: &Source, v: &Spanned<String>, what: &str) -> Result<String> {
    let n = v.get_ref();
    let ok = !n.is_empty() && n.len() <= naming::MAX_LEN && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !ok {
        return Err(src.error(v, format!("{what} {n:?} is not an interface name (1 to {} bytes of letters, digits, '_', '-', '.')", naming::MAX_LEN)));
    }
    Ok(n.clone())
}

pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let src = Source::new(text, origin);
    let raw: Raw = src.parse()?;
    let mut cfg = Config::default();
    if let Some(t) = &raw.rollback_timeout {
        if !(5..=600).contains(t.get_ref()) {
            return Err(src.error(t, "rollback_timeout must be 5 to 600 seconds"));
        }
        cfg.rollback_timeout = *t.get_ref();
    }
    if let Some(c) = &raw.connectivity {
        cfg.connectivity = match c.get_ref().as_str() {
            "gateway" => Connectivity::Gateway,
            a => Connectivity::Address(a.parse().map_err(|_| src.error(c, format!("connectivity {a:?} is neither \"gateway\" nor an IP address")))?),
        };
    }
    let mut names = BTreeSet::new();
    for b in &raw.bridge {
        let rb = b.get_ref();
        let name = check_ifname(&src, &rb.name, "bridge")?;
        if !names.insert(name.clone()) {
            return Err(src.error(&rb.name, format!("bridge {name:?} is defined twice")));
        }
        let uplink = rb.uplink.as_ref().map(|u| check_ifname(&src, u, "uplink")).transpose()?;
        cfg.bridges.push(Bridge { name, uplink, stp: rb.stp });
    }
    for a in &raw.attach {
        let ra = a.get_ref();
        let kind = *ra.kind.get_ref();
        let bridge = check_ifname(&src, &ra.bridge, "bridge")?;
        if !names.contains(&bridge) {
            return Err(src.error(&ra.bridge, format!("attach rule names bridge {bridge:?}, which no [[bridge]] defines")));
        }
        let template = ra.name.as_ref().map_or(default_template(kind).to_string(), |n| n.get_ref().clone());
        // The template must render for a typical guest of its kind.
        let sample = Vars { vmid: Some(100), index: 0, container: Some("c".into()) };
        if let Err(e) = naming::render(&template, &sample) {
            return Err(match &ra.name {
                Some(n) => src.error(n, format!("{e:#}")),
                None => src.error(a, format!("{e:#}")),
            });
        }
        let label = match (kind, &ra.label) {
            (GuestKind::Docker, None) => return Err(src.error(a, "a docker rule needs `label`, the container label that selects it")),
            (GuestKind::Docker, Some(l)) => Some(l.get_ref().clone()),
            (_, Some(l)) => return Err(src.error(l, "`label` selects Docker containers; lxc and vm rules match by interface name")),
            (_, None) => None,
        };
        cfg.attach.push(Attach { kind, bridge, name: template, label });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
rollback_timeout = 20
connectivity = "10.0.2.2"

[[bridge]]
name = "ovsbr0"
uplink = "ens3"

[[bridge]]
name = "ovsbr1"
stp = true

[[attach]]
kind = "lxc"
bridge = "ovsbr0"

[[attach]]
kind = "docker"
label = "netmaker.network"
bridge = "ovsbr1"
name = "nm_{container}"
"#;

    #[test]
    fn the_example_parses() {
        let c = parse(EXAMPLE, "net.toml").unwrap();
        assert_eq!(c.rollback_timeout, 20);
        assert_eq!(c.connectivity, Connectivity::Address("10.0.2.2".parse().unwrap()));
        assert_eq!(c.bridges[0], Bridge { name: "ovsbr0".into(), uplink: Some("ens3".into()), stp: false });
        assert!(c.bridges[1].stp && c.bridges[1].uplink.is_none());
        assert_eq!(c.attach[0].name, "vi{vmid}{_index}");
        assert_eq!(c.attach[1].label.as_deref(), Some("netmaker.network"));
        assert_eq!(parse("", "net.toml").unwrap(), Config::default());
    }

    #[test]
    fn bad_files_say_file_and_line() {
        let cases = [
            ("[[bridge]]\nname = \"ovsbr0\"\ncolour = \"red\"\n", "net.toml:3:", "unknown field `colour`"),
            ("[[bridge]]\nname = \"ovs bridge 0\"\n", "net.toml:2:", "not an interface name"),
            ("[[bridge]]\nname = \"b\"\n[[bridge]]\nname = \"b\"\n", "net.toml:4:", "defined twice"),
            ("[[bridge]]\nname = \"b\"\n[[attach]]\nkind = \"lxc\"\nbridge = \"c\"\n", "net.toml:5:", "no [[bridge]] defines"),
            ("[[bridge]]\nname = \"b\"\n[[attach]]\nkind = \"lxc\"\nbridge = \"b\"\nname = \"verylongnames{vmid}\"\n", "net.toml:6:", "at most 15"),
            ("[[bridge]]\nname = \"b\"\n[[attach]]\nkind = \"docker\"\nbridge = \"b\"\n", "net.toml:3:", "needs `label`"),
            ("[[bridge]]\nname = \"b\"\n[[attach]]\nkind = \"pod\"\nbridge = \"b\"\n", "net.toml:4:", "unknown variant"),
            ("rollback_timeout = 1\n", "net.toml:1:", "5 to 600"),
            ("connectivity = \"the internet\"\n", "net.toml:1:", "neither"),
        ];
        for (text, at, says) in cases {
            let e = format!("{:#}", parse(text, "net.toml").unwrap_err());
            assert!(e.starts_with(at) && e.contains(says), "{text:?}: {e}");
        }
    }
}

//! network-config, version 1 (what Proxmox writes) and version 2 (netplan
//! style), read into [`Network`]; and each interface rendered as a
//! NetworkManager keyfile.

use std::net::IpAddr;

use crate::finding::Findings;
use crate::settings::{self, Cidr, Interface, Network, Route, V4, V6};
use crate::yaml::Node;

pub fn parse(text: &str, file: &str, f: &mut Findings) -> Option<Network> {
    if text.trim().is_empty() {
        return None;
    }
    let root = match crate::yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            f.error(file, e.line, format!("malformed YAML: {}", e.message));
            return None;
        }
    };
    // Both `version: N ...` and `network: {version: N ...}` are written in the wild.
    let doc = root.get("network").filter(|n| n.map().is_some()).unwrap_or(&root);
    if doc.map().is_none() {
        f.error(file, doc.line, format!("network-config must be a mapping, not {}", doc.kind()));
        return None;
    }
    match doc.get("version").and_then(Node::text) {
        Some("1") => Some(v1(doc, file, f)),
        Some("2") => Some(v2(doc, file, f)),
        Some(v) => {
            f.error(file, doc.get("version").map_or(doc.line, |n| n.line), format!("network-config version {v} is not supported (1 or 2)"));
            None
        }
        None => {
            f.error(file, doc.line, "network-config has no version (1 or 2)");
            None
        }
    }
}

fn strings(v: Option<&Node>, file: &str, what: &str, f: &mut Findings) -> Vec<(String, usize)> {
    let Some(v) = v else { return Vec::new() };
    match (v.seq(), v.text()) {
        (Some(items), _) => items.iter().filter_map(|i| i.text().map(|t| (t.to_string(), i.line))).collect(),
        (None, Some(t)) => t.split_whitespace().map(|s| (s.to_string(), v.line)).collect(),
        _ => {
            f.error(file, v.line, format!("{what} must be a list"));
            Vec::new()
        }
    }
}

fn ips(v: Option<&Node>, file: &str, what: &str, f: &mut Findings) -> Vec<IpAddr> {
    strings(v, file, what, f)
        .into_iter()
        .filter_map(|(s, line)| match s.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                f.error(file, line, format!("{what}: {s:?} is not an IP address"));
                None
            }
        })
        .collect()
}

fn domains(v: Option<&Node>, file: &str, what: &str, f: &mut Findings) -> Vec<String> {
    strings(v, file, what, f)
        .into_iter()
        .filter_map(|(s, line)| match settings::check_fqdn(&s) {
            Ok(()) => Some(s),
            Err(e) => {
                f.error(file, line, format!("{what}: {e}"));
                None
            }
        })
        .collect()
}

fn mtu(v: Option<&Node>, file: &str, f: &mut Findings) -> Option<u32> {
    let v = v?;
    match v.text().and_then(|t| t.parse::<u32>().ok()).filter(|m| (68..=65535).contains(m)) {
        Some(m) => Some(m),
        None => {
            f.error(file, v.line, "mtu must be a number from 68 to 65535");
            None
        }
    }
}

fn new_interface(id: String) -> Interface {
    Interface { id, mac: None, ifname: None, mtu: None, ipv4: V4::Disabled, ipv6: V6::Disabled, routes: Vec::new(), dns: Vec::new(), search: Vec::new() }
}

fn add_static(iface: &mut Interface, c: Cidr, gw: Option<IpAddr>, file: &str, line: usize, f: &mut Findings) {
    match (c.addr, gw) {
        (IpAddr::V4(_), g) => {
            let gateway = match g {
                Some(IpAddr::V4(g)) => Some(g),
                Some(IpAddr::V6(_)) => {
                    f.error(file, line, "an IPv6 gateway for an IPv4 address");
                    None
                }
                None => None,
            };
            match &mut iface.ipv4 {
                V4::Static { addresses, gateway: g0 } => {
                    addresses.push(c);
                    *g0 = g0.or(gateway);
                }
                V4::Dhcp => f.error(file, line, format!("{}: both DHCP and a static IPv4 address", iface.id)),
                V4::Disabled => iface.ipv4 = V4::Static { addresses: vec![c], gateway },
            }
        }
        (IpAddr::V6(_), g) => {
            let gateway = match g {
                Some(IpAddr::V6(g)) => Some(g),
                Some(IpAddr::V4(_)) => {
                    f.error(file, line, "an IPv4 gateway for an IPv6 address");
                    None
                }
                None => None,
            };
            match &mut iface.ipv6 {
                V6::Static { addresses, gateway: g0 } => {
                    addresses.push(c);
                    *g0 = g0.or(gateway);
                }
                V6::Disabled => iface.ipv6 = V6::Static { addresses: vec![c], gateway },
                _ => f.error(file, line, format!("{}: both automatic and a static IPv6 address", iface.id)),
            }
        }
    }
}

fn gateway(v: Option<&Node>, file: &str, f: &mut Findings) -> Option<IpAddr> {
    let v = v?;
    match v.text().and_then(|t| t.parse().ok()) {
        Some(a) => Some(a),
        None => {
            f.error(file, v.line, format!("gateway {:?} is not an IP address", v.text().unwrap_or("")));
            None
        }
    }
}

fn unsupported_type(file: &str, line: usize, what: &str, f: &mut Findings) {
    f.error(file, line, format!("{what} is not supported by first-boot provisioning yet (bridges, bonds and VLANs come with the network agent); nothing was applied"));
}

fn v1(doc: &Node, file: &str, f: &mut Findings) -> Network {
    let mut net = Network::default();
    let Some(items) = doc.get("config").and_then(Node::seq) else {
        f.error(file, doc.line, "network-config version 1 needs a `config` list");
        return net;
    };
    for item in items {
        match item.get("type").and_then(Node::text) {
            Some("physical") => {
                let name = item.get("name").and_then(Node::text).unwrap_or("").to_string();
                if name.is_empty() {
                    f.error(file, item.line, "a physical interface needs a name");
                    continue;
                }
                let mut iface = new_interface(name.clone());
                iface.ifname = Some(name);
                if let Some(m) = item.get("mac_address") {
                    match settings::parse_mac(m.text().unwrap_or("")) {
                        Ok(mac) => iface.mac = Some(mac),
                        Err(e) => f.error(file, m.line, e),
                    }
                }
                iface.mtu = mtu(item.get("mtu"), file, f);
                for s in item.get("subnets").and_then(Node::seq).unwrap_or_default() {
                    subnet_v1(&mut iface, s, file, f);
                }
                for (k, x) in item.map().unwrap_or_default() {
                    if !["type", "name", "mac_address", "mtu", "subnets"].contains(&k.as_str()) {
                        f.note(file, x.line, format!("{k} is not a key bpi-os reads for an interface; ignored"));
                    }
                }
                net.interfaces.push(iface);
            }
            Some("nameserver") => {
                net.dns.extend(ips(item.get("address"), file, "nameserver address", f));
                net.search.extend(domains(item.get("search"), file, "nameserver search", f));
            }
            Some(t @ ("bond" | "bridge" | "vlan" | "route")) => unsupported_type(file, item.line, &format!("type: {t}"), f),
            Some(t) => f.error(file, item.line, format!("type: {t} is not a network-config version 1 type")),
            None => f.error(file, item.line, "a network-config entry needs a type"),
        }
    }
    net
}

fn subnet_v1(iface: &mut Interface, s: &Node, file: &str, f: &mut Findings) {
    let ty = s.get("type").and_then(Node::text).unwrap_or("");
    match ty {
        "dhcp" | "dhcp4" => match iface.ipv4 {
            V4::Static { .. } => f.error(file, s.line, format!("{}: both DHCP and a static IPv4 address", iface.id)),
            _ => iface.ipv4 = V4::Dhcp,
        },
        "dhcp6" | "ipv6_dhcpv6-stateful" => iface.ipv6 = V6::Dhcp,
        "ipv6_slaac" | "ipv6_dhcpv6-stateless" => iface.ipv6 = V6::Auto,
        "static" | "static6" => {
            let Some(a) = s.get("address") else {
                f.error(file, s.line, "a static subnet needs an address");
                return;
            };
            let prefix = match s.get("netmask").and_then(Node::text) {
                Some(m) if m.contains('.') => match settings::netmask_prefix(m) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        f.error(file, s.get("netmask").map_or(s.line, |n| n.line), e);
                        return;
                    }
                },
                Some(m) => m.parse().ok(),
                None => None,
            };
            match settings::parse_cidr(a.text().unwrap_or(""), prefix) {
                Ok(c) => {
                    let gw = gateway(s.get("gateway"), file, f);
                    add_static(iface, c, gw, file, a.line, f);
                }
                Err(e) => f.error(file, a.line, e),
            }
            iface.dns.extend(ips(s.get("dns_nameservers"), file, "dns_nameservers", f));
            iface.search.extend(domains(s.get("dns_search"), file, "dns_search", f));
            for r in s.get("routes").and_then(Node::seq).unwrap_or_default() {
                let to = r.get("network").and_then(Node::text).unwrap_or("");
                let prefix = r.get("netmask").and_then(Node::text).map(settings::netmask_prefix).transpose();
                let prefix = match prefix {
                    Ok(p) => p.or_else(|| r.get("prefix").and_then(Node::text).and_then(|p| p.parse().ok())),
                    Err(e) => {
                        f.error(file, r.line, e);
                        continue;
                    }
                };
                match (settings::parse_cidr(to, prefix), gateway(r.get("gateway"), file, f)) {
                    (Ok(to), Some(via)) => iface.routes.push(Route { to, via, metric: r.get("metric").and_then(Node::text).and_then(|m| m.parse().ok()) }),
                    (Err(e), _) => f.error(file, r.line, format!("route: {e}")),
                    (_, None) => f.error(file, r.line, "a route needs a gateway"),
                }
            }
        }
        "manual" => {}
        other => f.error(file, s.line, format!("subnet type {other:?} is not supported")),
    }
}

fn v2(doc: &Node, file: &str, f: &mut Findings) -> Network {
    let mut net = Network::default();
    for (k, v) in doc.map().unwrap_or_default() {
        match k.as_str() {
            "version" | "renderer" => {}
            "ethernets" => {
                for (id, e) in v.map().unwrap_or_default() {
                    net.interfaces.push(ethernet_v2(id, e, file, f));
                }
                if v.map().is_none() {
                    f.error(file, v.line, "ethernets must be a mapping");
                }
            }
            "bonds" | "bridges" | "vlans" | "wifis" | "tunnels" => unsupported_type(file, v.line, k, f),
            other => f.note(file, v.line, format!("{other} is not a key bpi-os reads in network-config; ignored")),
        }
    }
    net
}

fn ethernet_v2(id: &str, e: &Node, file: &str, f: &mut Findings) -> Interface {
    let mut iface = new_interface(id.to_string());
    let mut dhcp4 = false;
    let mut dhcp6 = false;
    let mut gw4 = None;
    let mut gw6 = None;
    let mut addresses = Vec::new();
    for (k, x) in e.map().unwrap_or_default() {
        match k.as_str() {
            "match" => {
                if let Some(m) = x.get("macaddress") {
                    match settings::parse_mac(m.text().unwrap_or("")) {
                        Ok(mac) => iface.mac = Some(mac),
                        Err(err) => f.error(file, m.line, err),
                    }
                }
                if let Some(n) = x.get("name").and_then(Node::text) {
                    iface.ifname = Some(n.to_string());
                }
            }
            "set-name" => {
                if iface.ifname.is_none() {
                    iface.ifname = x.text().map(String::from);
                }
            }
            "dhcp4" => dhcp4 = x.boolean().unwrap_or_else(|| {
                f.error(file, x.line, "dhcp4 must be true or false");
                false
            }),
            "dhcp6" => dhcp6 = x.boolean().unwrap_or_else(|| {
                f.error(file, x.line, "dhcp6 must be true or false");
                false
            }),
            "accept-ra" => {
                if x.boolean() == Some(true) && matches!(iface.ipv6, V6::Disabled) {
                    iface.ipv6 = V6::Auto;
                }
            }
            "addresses" => {
                for (a, line) in strings(Some(x), file, "addresses", f) {
                    match settings::parse_cidr(&a, None) {
                        Ok(c) => addresses.push((c, line)),
                        Err(err) => f.error(file, line, err),
                    }
                }
            }
            "gateway4" => gw4 = gateway(Some(x), file, f),
            "gateway6" => gw6 = gateway(Some(x), file, f),
            "mtu" => iface.mtu = mtu(Some(x), file, f),
            "nameservers" => {
                iface.dns.extend(ips(x.get("addresses"), file, "nameservers.addresses", f));
                iface.search.extend(domains(x.get("search"), file, "nameservers.search", f));
            }
            "routes" => {
                for r in x.seq().unwrap_or_default() {
                    let to = r.get("to").and_then(Node::text).unwrap_or("");
                    let to = if to == "default" || to == "0.0.0.0/0" { "0.0.0.0/0" } else { to };
                    match (settings::parse_cidr(to, None), gateway(r.get("via"), file, f)) {
                        (Ok(to), Some(via)) => iface.routes.push(Route { to, via, metric: r.get("metric").and_then(Node::text).and_then(|m| m.parse().ok()) }),
                        (Err(err), _) => f.error(file, r.line, format!("route: {err}")),
                        (_, None) => f.error(file, r.line, "a route needs via"),
                    }
                }
            }
            other => f.note(file, x.line, format!("ethernets.{id}.{other} is not a key bpi-os reads; ignored")),
        }
    }
    if dhcp4 {
        iface.ipv4 = V4::Dhcp;
    }
    if dhcp6 {
        iface.ipv6 = V6::Dhcp;
    }
    for (c, line) in addresses {
        let gw = if c.addr.is_ipv4() { gw4.filter(IpAddr::is_ipv4) } else { gw6.filter(IpAddr::is_ipv6) };
        add_static(&mut iface, c, gw, file, line, f);
    }
    iface
}

/// The NetworkManager keyfile for one provisioned interface. `uuid` is
/// derived by the caller so the same settings give the same file.
pub fn keyfile(iface: &Interface, net: &Network, uuid: &str) -> String {
    let mut s = format!("# Written by bpi-os provisioning; a new instance-id rewrites it.\n[connection]\nid=bpi-{}\nuuid={uuid}\ntype=ethernet\nautoconnect=true\nautoconnect-priority=100\n", iface.id);
    if iface.mac.is_none() {
        if let Some(n) = &iface.ifname {
            s.push_str(&format!("interface-name={n}\n"));
        }
    }
    s.push_str("\n[ethernet]\n");
    if let Some(m) = &iface.mac {
        s.push_str(&format!("mac-address={}\n", m.to_ascii_uppercase()));
    }
    if let Some(m) = iface.mtu {
        s.push_str(&format!("mtu={m}\n"));
    }
    let dns: Vec<IpAddr> = iface.dns.iter().chain(&net.dns).copied().collect();
    let search: Vec<&String> = iface.search.iter().chain(&net.search).collect();
    let family_dns = |v4: bool| -> String {
        let list: Vec<String> = dns.iter().filter(|a| a.is_ipv4() == v4).map(|a| a.to_string()).collect();
        if list.is_empty() { String::new() } else { format!("dns={};\n", list.join(";")) }
    };
    let search_line = if search.is_empty() { String::new() } else { format!("dns-search={};\n", search.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(";")) };
    let routes = |v4: bool| -> String {
        iface
            .routes
            .iter()
            .filter(|r| r.to.addr.is_ipv4() == v4)
            .enumerate()
            .map(|(i, r)| match r.metric {
                Some(m) => format!("route{}={},{},{m}\n", i + 1, r.to, r.via),
                None => format!("route{}={},{}\n", i + 1, r.to, r.via),
            })
            .collect()
    };

    s.push_str("\n[ipv4]\n");
    match &iface.ipv4 {
        V4::Disabled => s.push_str("method=disabled\n"),
        V4::Dhcp => s.push_str("method=auto\n"),
        V4::Static { addresses, gateway } => s.push_str(&manual(addresses, gateway.map(IpAddr::V4))),
    }
    if !matches!(iface.ipv4, V4::Disabled) {
        s.push_str(&family_dns(true));
        s.push_str(&search_line);
        s.push_str(&routes(true));
    }
    s.push_str("\n[ipv6]\n");
    match &iface.ipv6 {
        V6::Disabled => s.push_str("method=disabled\n"),
        V6::Auto => s.push_str("method=auto\n"),
        V6::Dhcp => s.push_str("method=dhcp\n"),
        V6::Static { addresses, gateway } => s.push_str(&manual(addresses, gateway.map(IpAddr::V6))),
    }
    if !matches!(iface.ipv6, V6::Disabled) {
        s.push_str(&family_dns(false));
        if matches!(iface.ipv4, V4::Disabled) {
            s.push_str(&search_line);
        }
        s.push_str(&routes(false));
    }
    s
}

/// A keyfile section's static addresses and gateway.
fn manual(addresses: &[Cidr], gateway: Option<IpAddr>) -> String {
    let mut s = "method=manual\n".to_string();
    for (i, a) in addresses.iter().enumerate() {
        s.push_str(&format!("address{}={a}\n", i + 1));
    }
    if let Some(g) = gateway {
        s.push_str(&format!("gateway={g}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Proxmox's nocloud_network writes for
    /// `--ipconfig0 ip=10.0.2.15/24,gw=10.0.2.2,ip6=dhcp --nameserver 10.0.2.3 --searchdomain example.net`.
    const PROXMOX_V1: &str = "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:2c:69:ec'\n      subnets:\n      - type: static\n        address: '10.0.2.15'\n        netmask: '255.255.255.0'\n        gateway: '10.0.2.2'\n      - type: dhcp6\n    - type: nameserver\n      address:\n      - '10.0.2.3'\n      search:\n      - 'example.net'\n";

    #[test]
    fn proxmox_v1_becomes_a_keyfile_matched_by_mac() {
        let mut f = Findings::default();
        let net = parse(PROXMOX_V1, "network-config", &mut f).unwrap();
        assert!(f.errors.is_empty() && f.notes.is_empty(), "{f:?}");
        let i = &net.interfaces[0];
        assert_eq!(i.mac.as_deref(), Some("bc:24:11:2c:69:ec"));
        let k = keyfile(i, &net, "u");
        assert!(k.contains("mac-address=BC:24:11:2C:69:EC\n"), "{k}");
        assert!(k.contains("[ipv4]\nmethod=manual\naddress1=10.0.2.15/24\ngateway=10.0.2.2\ndns=10.0.2.3;\ndns-search=example.net;\n"), "{k}");
        assert!(k.contains("[ipv6]\nmethod=dhcp\n"), "{k}");
        assert!(!k.contains("interface-name"), "{k}");
    }

    /// `--ipconfig0 ip=dhcp,ip6=fd00::15/64,gw6=fd00::2`, then `ip6=auto`, as nocloud_network writes them.
    #[test]
    fn proxmox_v1_dhcp4_with_static6_and_slaac() {
        let v1 = "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:2c:69:ec'\n      subnets:\n      - type: dhcp4\n      - type: static6\n        address: 'fd00::15/64'\n        gateway: 'fd00::2'\n";
        let mut f = Findings::default();
        let net = parse(v1, "network-config", &mut f).unwrap();
        assert!(f.errors.is_empty(), "{f:?}");
        let k = keyfile(&net.interfaces[0], &net, "u");
        assert!(k.contains("[ipv4]\nmethod=auto\n") && k.contains("[ipv6]\nmethod=manual\naddress1=fd00::15/64\ngateway=fd00::2\n"), "{k}");
        let slaac = v1.replace("      - type: static6\n        address: 'fd00::15/64'\n        gateway: 'fd00::2'\n", "      - type: ipv6_slaac\n");
        let net = parse(&slaac, "network-config", &mut f).unwrap();
        assert!(keyfile(&net.interfaces[0], &net, "u").contains("[ipv6]\nmethod=auto\n"));
    }

    #[test]
    fn proxmox_v2_and_routes_and_mtu() {
        let v2 = "version: 2\nethernets:\n    net0:\n        match:\n            macaddress: \"bc:24:11:2c:69:ec\"\n        set-name: eth0\n        addresses:\n        - '10.0.2.15/24'\n        - 'fd00::15/64'\n        gateway4: '10.0.2.2'\n        gateway6: 'fd00::2'\n        mtu: 1400\n        routes:\n        - to: 192.168.7.0/24\n          via: 10.0.2.9\n        nameservers:\n          addresses:\n          - '10.0.2.3'\n";
        let mut f = Findings::default();
        let net = parse(v2, "network-config", &mut f).unwrap();
        assert!(f.errors.is_empty(), "{f:?}");
        let k = keyfile(&net.interfaces[0], &net, "u");
        assert!(k.contains("mtu=1400\n") && k.contains("route1=192.168.7.0/24,10.0.2.9\n"), "{k}");
        assert!(k.contains("[ipv6]\nmethod=manual\naddress1=fd00::15/64\ngateway=fd00::2\n"), "{k}");
    }

    #[test]
    fn bad_values_say_where_and_bridges_are_refused() {
        let mut f = Findings::default();
        parse("version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n      - type: static\n        address: 10.0.2.300/24\n", "nc", &mut f);
        assert_eq!(f.errors[0].line, 7, "{f:?}");
        let mut f = Findings::default();
        parse("version: 2\nbridges:\n  br0: {}\n", "nc", &mut f);
        assert_eq!(f.errors[0].line, 3, "{f:?}");
        let mut f = Findings::default();
        parse("version: 3\n", "nc", &mut f);
        assert!(f.errors[0].message.contains("version 3"));
    }
}

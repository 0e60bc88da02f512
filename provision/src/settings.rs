//! The settings a provisioning source gives, checked: every value here has
//! passed its validator, so planning and applying need not check again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// The user made when user-data names none (cloud-init's "default" user).
pub const DEFAULT_USER: &str = "bpi";
/// Groups the default user joins: D-Bus admin methods and sudo.
pub const DEFAULT_GROUPS: &[&str] = &["bpi-admin", "sudo"];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Settings {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    /// Write /etc/hosts mapping 127.0.1.1 to the fqdn and hostname.
    pub manage_etc_hosts: bool,
    pub users: Vec<User>,
    /// None: NetworkManager's default (DHCP and IPv6 RA on every wired NIC).
    pub network: Option<Network>,
    pub files: Vec<ConfigFile>,
    /// `bpi_update:`: where updates come from, and whether bpi-update.timer
    /// installs them unattended. None: the node's update settings stay as they are.
    pub update: Option<Update>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Update {
    /// Checked by `bpi_formats::update::check_source`.
    pub source: String,
    pub automatic: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash; plain-text passwords are refused.
    pub password_hash: Option<String>,
    /// Make the person choose a new password at first login.
    pub expire: bool,
    pub ssh_keys: Vec<String>,
    pub groups: Vec<String>,
    /// sudo without a password (cloud-init's default user has it).
    pub sudo_nopasswd: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    /// The name the config gives it (eth0, net0): names the connection.
    pub id: String,
    /// Matched by MAC address when given (Proxmox always gives one), else by interface name.
    pub mac: Option<String>,
    pub ifname: Option<String>,
    pub mtu: Option<u32>,
    pub ipv4: V4,
    pub ipv6: V6,
    pub routes: Vec<Route>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum V4 {
    Disabled,
    Dhcp,
    Static { addresses: Vec<Cidr>, gateway: Option<Ipv4Addr> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum V6 {
    Disabled,
    /// Router advertisements (SLAAC), with DHCPv6 when the RA says so.
    Auto,
    Dhcp,
    Static { addresses: Vec<Cidr>, gateway: Option<Ipv6Addr> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub to: Cidr,
    pub via: IpAddr,
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigFile {
    pub path: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub mode: u32,
}

/// RFC 1123 host name label: 1-63 of [a-z0-9-], not starting or ending with '-'.
pub fn check_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a host name (1-63 letters, digits and '-', not at either end)"))
    }
}

pub fn check_fqdn(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    for label in s.trim_end_matches('.').split('.') {
        check_label(label).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(())
}

/// A login name as useradd accepts it on Debian.
pub fn check_user_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a user name (lower-case letters, digits, '_' and '-', starting with a letter or '_')"))
    }
}

/// A crypt(3) hash of a kind Debian's libcrypt checks: yescrypt, SHA-512,
/// SHA-256 or bcrypt. Anything else is refused: a plain-text password
/// would land in /etc/shadow as a hash nobody can match, or worse.
pub fn check_password_hash(s: &str) -> Result<(), String> {
    let crypt_chars = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"./".contains(&b));
    let parts: Vec<&str> = s.split('$').collect();
    let ok = match parts.as_slice() {
        ["", "6" | "5", rest @ ..] if (2..=3).contains(&rest.len()) => {
            let (salt_and_rounds, hash) = rest.split_at(rest.len() - 1);
            hash[0].len() == if parts[1] == "6" { 86 } else { 43 }
                && crypt_chars(hash[0])
                && salt_and_rounds.iter().all(|p| !p.is_empty() && !p.contains(':'))
        }
        ["", "y", params, salt, hash] => !params.is_empty() && crypt_chars(salt) && hash.len() == 43 && crypt_chars(hash),
        ["", "2b" | "2y", cost, rest] => cost.len() == 2 && cost.bytes().all(|b| b.is_ascii_digit()) && rest.len() == 53 && crypt_chars(rest),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("is not a crypt(3) password hash ($y$, $6$, $5$ or $2b$; make one with `openssl passwd -6` or `mkpasswd`); plain-text passwords are refused".into())
    }
}

/// An OpenSSH public key line (options before the key are refused).
pub fn check_ssh_key(s: &str) -> Result<String, String> {
    let key = ssh_key::PublicKey::from_openssh(s.trim()).map_err(|e| format!("is not an OpenSSH public key ({e})"))?;
    Ok(key.fingerprint(ssh_key::HashAlg::Sha256).to_string())
}

/// `addr/prefix` (prefix required unless `default_prefix` is given).
pub fn parse_cidr(s: &str, default_prefix: Option<u8>) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.trim().parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{p:?} is not a prefix length for {addr}"))?,
        None => default_prefix.ok_or_else(|| format!("{s:?} has no prefix length (write it as ADDRESS/PREFIX)"))?,
    };
    Ok(Cidr { addr, prefix })
}

/// A dotted IPv4 netmask as a prefix length.
pub fn netmask_prefix(s: &str) -> Result<u8, String> {
    let m: Ipv4Addr = s.parse().map_err(|_| format!("{s:?} is not a netmask"))?;
    let bits = u32::from(m);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(format!("{s:?} is not a contiguous netmask"));
    }
    Ok(bits.leading_ones() as u8)
}

pub fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a MAC address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(check_label("node-1").is_ok());
        assert!(check_label("-x").is_err() && check_label("a_b").is_err() && check_label("").is_err());
        assert!(check_fqdn("node1.example.net").is_ok());
        assert!(check_fqdn("node1..example").is_err());
    }

    #[test]
    fn password_hashes() {
        // `openssl passwd -6 -salt saltsalt secret`
        let h = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        assert_eq!(check_password_hash(h), Ok(()));
        assert!(check_password_hash("$6$rounds=5000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1").is_ok());
        assert!(check_password_hash("secret").is_err());
        assert!(check_password_hash("$6$salt$short").is_err());
        assert!(check_password_hash("$1$abc$def").is_err());
    }

    #[test]
    fn ssh_keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOpkNjf0LDiA486DX/kEXgZW0qEikRVMwyfsQjBWQ8a op@host";
        assert!(check_ssh_key(k).unwrap().starts_with("SHA256:"));
        assert!(check_ssh_key("ssh-ed25519 AAAAnotbase64!! x").is_err());
        // RSA and ECDSA keys, as most operators still have.
        assert!(check_ssh_key("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCm5nJ09cWkRM1zVmMg39b2SGfXBABxz+ai9Xs1vSiUO5VEGJ0pkIZn9Yr1qn7y5S1GiUIGI7n/qS32VD78p6NabKwSk3ikpHfb0WNrRfrea3st6f+boC8xX9MSRyfZi1TQCBVEZkauSwlBFKKscBxkeCQwXnRVggEYfiFyKbsdkTp/wEH4FZGle8HRv8JPgSDN4XIikU6kRy54/ij6IOzZr5a835MVXkNxTPiw7uUQvrpkmlKOXFPwpezSD7f4OzUR4vQ3YvjO8gM9+7O9ebkl39Y6Uwh6EmvJ42EogXvwJ87K/Q3Uf7XwWL4f3k38+k3ptqJ/KwEejWLfoe60z7jV r").is_ok());
        assert!(check_ssh_key("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKQfwmd3FfdnT9TUkqhW49T1x5nz7YGVKiwCSz7yvzIitDU+IwQT5kx0b7ju7qxK4ToZ8ZvKt/347jJEivji8Yk= e").is_ok());
        assert!(check_ssh_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOpkNjf0LDiA486DX/kEXgZW0qEikRVMwyfsQjBWQ").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_cidr("10.0.2.15/24", None).unwrap().to_string(), "10.0.2.15/24");
        assert!(parse_cidr("10.0.2.15", None).is_err());
        assert_eq!(parse_cidr("10.0.2.15", Some(24)).unwrap().prefix, 24);
        assert!(parse_cidr("10.0.2.300/24", None).is_err() && parse_cidr("fd00::1/129", None).is_err());
        assert_eq!(netmask_prefix("255.255.255.0"), Ok(24));
        assert!(netmask_prefix("255.0.255.0").is_err());
        assert_eq!(parse_mac("BC:24:11:00:00:01").unwrap(), "bc:24:11:00:00:01");
    }
}

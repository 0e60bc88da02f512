//! IPv4 and IPv6 prefixes, as an operator writes them ("10.1.0.0/16",
//! "2001:db8::/32", or a bare address meaning a host route).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    V4 { addr: [u8; 4], len: u8 },
    V6 { addr: [u8; 16], len: u8 },
}

impl Prefix {
    pub fn len(&self) -> u8 {
        match self {
            Prefix::V4 { len, .. } | Prefix::V6 { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked_eq(a: &[u8], b: &[u8], len: u8) -> bool {
            let full = usize::from(len / 8);
            let rest = len % 8;
            a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0)
        }
        match (self, ip) {
            (Prefix::V4 { addr, len }, IpAddr::V4(ip)) => masked_eq(addr, &ip.octets(), *len),
            (Prefix::V6 { addr, len }, IpAddr::V6(ip)) => masked_eq(addr, &ip.octets(), *len),
            _ => false,
        }
    }
}

fn host_bits_clear(addr: &[u8], len: u8) -> bool {
    addr.iter().enumerate().all(|(i, byte)| {
        let start = i as u32 * 8;
        let keep = u32::from(len).saturating_sub(start).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        byte & !mask == 0
    })
}

impl FromStr for Prefix {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = match addr.parse() {
            Ok(ip) => ip,
            Err(_) => bail!("malformed prefix '{text}': '{addr}' is not an IPv4 or IPv6 address"),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => bail!("malformed prefix '{text}': the length must be a number in 0..={max}"),
            },
        };
        let prefix = match ip {
            IpAddr::V4(v4) => Prefix::V4 { addr: v4.octets(), len },
            IpAddr::V6(v6) => Prefix::V6 { addr: v6.octets(), len },
        };
        let clear = match &prefix {
            Prefix::V4 { addr, len } => host_bits_clear(addr, *len),
            Prefix::V6 { addr, len } => host_bits_clear(addr, *len),
        };
        if !clear {
            bail!("malformed prefix '{text}': bits are set past the /{len} (host bits); write the network address");
        }
        Ok(prefix)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(*addr)),
            Prefix::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(*addr)),
        }
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_families() {
        for text in ["10.0.0.0/8", "192.0.2.7/32", "0.0.0.0/0", "2001:db8::/32", "fd00::1/128", "::/0"] {
            assert_eq!(text.parse::<Prefix>().unwrap().to_string(), text);
        }
        assert_eq!("192.0.2.1".parse::<Prefix>().unwrap().to_string(), "192.0.2.1/32");
        assert_eq!("2001:db8::1".parse::<Prefix>().unwrap().len(), 128);
    }

    #[test]
    fn refuses_malformed_prefixes_with_the_reason() {
        let cases = [
            ("10.0.0.0/33", "0..=32"),
            ("2001:db8::/129", "0..=128"),
            ("10.0.0.1/8", "host bits"),
            ("2001:db8::1/32", "host bits"),
            ("10.0.0/8", "not an IPv4 or IPv6"),
            ("ten/8", "not an IPv4 or IPv6"),
            ("10.0.0.0/x", "0..=32"),
            ("10.0.0.0/-1", "0..=32"),
        ];
        for (text, why) in cases {
            let err = text.parse::<Prefix>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn containment_follows_the_length() {
        let p: Prefix = "10.1.0.0/17".parse().unwrap();
        assert!(p.contains("10.1.127.255".parse().unwrap()));
        assert!(!p.contains("10.1.128.0".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Prefix>().unwrap().contains("8.8.8.8".parse().unwrap()));
    }
}

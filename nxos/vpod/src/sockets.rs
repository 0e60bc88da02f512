//! What the kernel says about local sockets, from /proc/net/{tcp,tcp6,udp,udp6}:
//! the ports something listens on (a TCP socket in LISTEN, or any bound UDP
//! socket), with the listener's uid and accept queue.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub tcp: bool,
    /// Bound to a loopback address only.
    pub loopback: bool,
    pub uid: u32,
    /// TCP: connections waiting in the accept queue, and its size.
    pub queued: u32,
    pub backlog: u32,
}

/// TCP's LISTEN state in /proc/net/tcp.
const LISTEN: &str = "0A";

/// One /proc/net/{tcp,udp}[6] table: `tcp` says which protocol it is.
pub fn parse(table: &str, tcp: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        if f.len() < 8 {
            continue;
        }
        if tcp && f[3] != LISTEN {
            continue;
        }
        let Some((addr, port)) = f[1].rsplit_once(':') else { continue };
        let Ok(port) = u16::from_str_radix(port, 16) else { continue };
        let Some((tx, rx)) = f[4].split_once(':') else { continue };
        let (tx, rx) = (u32::from_str_radix(tx, 16).unwrap_or(0), u32::from_str_radix(rx, 16).unwrap_or(0));
        out.push(Listener { port, tcp, loopback: is_loopback(addr), uid: f[7].parse().unwrap_or(u32::MAX), queued: rx, backlog: tx });
    }
    out
}

/// The kernel prints an address as 32-bit words in hex, each the word as it
/// lies in memory read in the host's byte order: `to_ne_bytes` gives the
/// address's bytes back.
fn is_loopback(hex: &str) -> bool {
    let bytes: Option<Vec<u8>> = (0..hex.len() / 8).map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok().map(u32::to_ne_bytes)).collect::<Option<Vec<_>>>().map(|w| w.concat());
    match bytes.as_deref() {
        Some([a, _, _, _]) => *a == 127,
        // ::1, or ::ffff:127.x.x.x
        Some(b) if b.len() == 16 => b[..15].iter().all(|&x| x == 0) && b[15] == 1 || b[..10].iter().all(|&x| x == 0) && b[10..12] == [0xff, 0xff] && b[12] == 127,
        _ => false,
    }
}

/// Every listener on this host (in this network namespace), by port.
pub fn listeners() -> BTreeMap<u16, Vec<Listener>> {
    let mut by_port: BTreeMap<u16, Vec<Listener>> = BTreeMap::new();
    for (file, tcp) in [("tcp", true), ("tcp6", true), ("udp", false), ("udp6", false)] {
        let text = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap_or_default();
        for l in parse(&text, tcp) {
            by_port.entry(l.port).or_default().push(l);
        }
    }
    by_port
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a real /proc/net/tcp and tcp6: 127.0.0.1:7777 listening (uid 1000,
    // 2 of 128 queued), 0.0.0.0:22 listening, one established connection.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E61 00000000:0000 0A 00000080:00000002 00:00000000 00000000  1000        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:00080000 00000000     0        0 9999 2 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   33        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:22B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    0        0 2 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_from_proc_net() {
        let l = parse(TCP, true);
        assert_eq!(l.len(), 2, "the established connection is no listener");
        assert_eq!(l[0], Listener { port: 7777, tcp: true, loopback: true, uid: 1000, queued: 2, backlog: 128 });
        assert_eq!((l[1].port, l[1].loopback), (22, false));
        let l6 = parse(TCP6, true);
        assert_eq!((l6[0].port, l6[0].loopback, l6[0].uid), (8080, true, 33));
        assert_eq!((l6[1].port, l6[1].loopback), (8888, false));
        // A bound UDP socket counts whatever its state.
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  5: 00000000:1EDC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 0\n";
        assert_eq!(parse(udp, false)[0].port, 7900);
    }

    #[test]
    fn this_hosts_listeners_include_one_we_open() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let found = listeners();
        let l = found.get(&port).expect("a listening socket the kernel does not list");
        assert!(l.iter().any(|l| l.tcp && l.loopback));
    }
}

//! Real network test beds for the tests and the benchmarks: a private bpffs,
//! network namespaces, veth pairs, and frames built byte by byte.
//! Everything here needs root and cleans up on drop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};
use bpi_support::Cmd;

/// A bpf file system mounted on a temporary directory: pins that no one
/// else sees and that vanish with it.
pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    pub fn mount() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpi-bpffs-").tempdir()?;
        Cmd::new("mount").args(["-t", "bpf", "bpf"]).arg(dir.path()).run()?;
        Ok(BpfFs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The pin directory the data plane uses inside it.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("bpi")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg("-l").arg(self.dir.path()).run();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop (with the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("bpi-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        Cmd::new("ip").args(["netns", "add", &name]).run()?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        Cmd::new("ip").args(["-n", &self.name]).args(args).run()?;
        Ok(())
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Cmd {
        Cmd::new("ip").args(["netns", "exec", &self.name, program])
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it makes
    /// stay in the namespace, and programs it starts run there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Cmd::new("ip").args(["netns", "del", &self.name]).run();
    }
}

/// Joins two namespaces with a veth pair `a_if` (in `a`) <-> `b_if` (in `b`),
/// both up. VLAN offload is turned off on both ends so tags travel in the
/// frame, where XDP sees them.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    Cmd::new("ip")
        .args(["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name])
        .run()?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.cmd("ethtool").args(["-K", ifname, "txvlan", "off", "rxvlan", "off"]).run()?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Frames built byte by byte, for BPF_PROG_TEST_RUN.
pub mod frames {
    pub const ETH_IP: u16 = 0x0800;
    pub const ETH_IPV6: u16 = 0x86dd;
    pub const ETH_8021Q: u16 = 0x8100;
    pub const ETH_8021AD: u16 = 0x88a8;

    /// Ethernet header, then the VLAN tags (outer first, each (tpid, vid)), then `payload`.
    pub fn ethernet(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        ethernet_to([0x02, 0, 0, 0, 0, 2], vlans, ethertype, payload)
    }

    /// As [`ethernet`], to the MAC address `dst`.
    pub fn ethernet_to(dst: [u8; 6], vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        let mut types: Vec<u16> = vlans.iter().map(|v| v.0).collect();
        types.push(ethertype);
        f.extend_from_slice(&types[0].to_be_bytes());
        for (i, (_, vid)) in vlans.iter().enumerate() {
            f.extend_from_slice(&vid.to_be_bytes());
            f.extend_from_slice(&types[i + 1].to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An IPv4 header (20 bytes, valid checksum) and `payload`.
    pub fn ipv4(dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1]);
        h.extend_from_slice(&dst);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// An IPv6 header and `payload`, whose first header is `next_header`.
    pub fn ipv6(dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next_header, 64]);
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    /// A TCP SYN (20-byte header, checksum left 0) followed by `payload`.
    pub fn tcp_syn(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x30, 0x39];
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        h.extend_from_slice(payload);
        h
    }

    /// An ICMP (`kind` 8) or ICMPv6 (`kind` 128) echo request carrying `payload`.
    pub fn echo(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1];
        h.extend_from_slice(payload);
        h
    }

    /// A UDP header (checksum left 0) and `payload`.
    pub fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x30, 0x39];
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(payload);
        h
    }
}

/// A trafgen(8) packet configuration holding `frames`, sent round robin.
pub fn trafgen_config(frames: &[Vec<u8>]) -> String {
    frames
        .iter()
        .map(|f| format!("{{ {} }}\n", f.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(", ")))
        .collect()
}

/// Sends `count` frames (round robin over `frames`) out of `ifname` in `ns` with trafgen.
pub fn trafgen(ns: &Netns, ifname: &str, frames: &[Vec<u8>], count: u64) -> Result<()> {
    let mut conf = tempfile::Builder::new().prefix("bpi-trafgen-").suffix(".cfg").tempfile()?;
    std::io::Write::write_all(&mut conf, trafgen_config(frames).as_bytes())?;
    ns.cmd("trafgen")
        .args(["--dev", ifname, "--in"])
        .arg(conf.path())
        .args(["--num", &count.to_string(), "--cpus", "1"])
        .run()?;
    Ok(())
}

/// The MAC address of `ifname` in `ns`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = Cmd::new("ip").args(["-n", &ns.name, "-j", "link", "show", "dev", ifname]).output()?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    let text = v[0]["address"].as_str().context("no address in `ip -j link`")?;
    let bytes: Vec<u8> = text.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text}"))
}

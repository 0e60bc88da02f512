//! Loading `xdp_trust_routing`, attaching it to interfaces through pinned
//! bpf_links (so it stays attached after the command exits), detaching it,
//! and reporting what is attached.
//!
//! Layout of the pin directory (default /sys/fs/bpf/bpi):
//!   drx_*            the maps, shared by every attachment
//!   links/IFNAME     one bpf_link per interface we attached

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use bpi_support::Cmd;
use serde::Serialize;

use crate::{layout::Settings, tables::Tables, OBJECT, PROGRAMS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the driver, before an skb exists.
    Native,
    /// In the kernel's generic receive path; works on every interface.
    Generic,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(Mode::Native),
            "generic" => Ok(Mode::Generic),
            other => bail!("mode '{other}' is not one of: native, generic"),
        }
    }
}

impl Mode {
    fn xdp(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

/// What `ip -d link` says is attached at the XDP hook of an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub mode: String,
    pub program_id: u64,
    pub program_name: String,
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn link_path(pin_dir: &Path, interface: &str) -> PathBuf {
    links_dir(pin_dir).join(interface)
}

pub fn check_program(program: &str) -> Result<()> {
    if !PROGRAMS.contains(&program) {
        bail!("unknown program '{program}'; this build carries: {}", PROGRAMS.join(", "));
    }
    Ok(())
}

pub fn if_index(interface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(|_| anyhow::anyhow!("no network interface named '{interface}' (see `ip link`)"))
}

/// The XDP hook of `interface`, from iproute2's JSON.
pub fn hook(interface: &str) -> Result<Option<Hook>> {
    let out = Cmd::new("ip").args(["-j", "-d", "link", "show", "dev", interface]).output()?;
    let links: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j -d link show`")?;
    Ok(parse_hook(&links))
}

fn parse_hook(links: &serde_json::Value) -> Option<Hook> {
    let xdp = links.get(0)?.get("xdp")?;
    let prog = xdp.get("prog").or_else(|| xdp.get("attached")?.get(0)?.get("prog"))?;
    let mode = match xdp.get("mode").and_then(|m| m.as_u64()) {
        Some(1) => "native",
        Some(2) => "generic",
        Some(3) => "offload",
        _ => "multiple",
    };
    Some(Hook {
        mode: mode.into(),
        program_id: prog.get("id")?.as_u64()?,
        program_name: prog.get("name").and_then(|n| n.as_str()).unwrap_or("").into(),
    })
}

/// Loads the object with its maps pinned under `pin_dir` (reusing pinned ones)
/// and initialises fresh tables with `defaults`.
pub fn load(pin_dir: &Path, program: &str, defaults: Settings) -> Result<Ebpf> {
    check_program(program)?;
    fs::create_dir_all(links_dir(pin_dir)).with_context(|| format!("creating {}", links_dir(pin_dir).display()))?;
    crate::tables::check_bpffs(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .with_context(|| format!("loading the eBPF object with its maps under {}", pin_dir.display()))?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("the object has no program '{program}'"))?
        .try_into()?;
    prog.load().with_context(|| format!("loading {program} (the kernel's verifier refused it)"))?;
    Tables::open(pin_dir)?.init_if_new(defaults)?;
    Ok(ebpf)
}

/// The loaded program, for BPF_PROG_TEST_RUN.
pub fn program<'a>(ebpf: &'a Ebpf, program: &str) -> Result<&'a Xdp> {
    Ok(ebpf.program(program).with_context(|| format!("the object has no program '{program}'"))?.try_into()?)
}

/// What attaching to an interface will do, computed before anything changes.
#[derive(Clone, Debug, Serialize)]
pub struct AttachPlan {
    pub interface: String,
    pub if_index: u32,
    pub program: String,
    pub mode: Mode,
    /// Our program is already attached there: swap the program under the
    /// same link (a restart leaves no moment without a filter).
    pub replace: bool,
    /// A link pin of ours whose attachment is gone (the interface was
    /// recreated): removed first.
    pub stale_pin: bool,
}

impl std::fmt::Display for AttachPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.replace { "swap in a fresh" } else { "attach" };
        write!(f, "{verb} {} on {} (ifindex {}) in {:?} mode", self.program, self.interface, self.if_index, self.mode)?;
        if self.stale_pin {
            write!(f, ", after removing a stale link pin")?;
        }
        Ok(())
    }
}

/// Checks everything attaching needs and says what it will do.
pub fn plan_attach(pin_dir: &Path, program: &str, interface: &str, mode: Mode) -> Result<AttachPlan> {
    check_program(program)?;
    let if_index = if_index(interface)?;
    let ours = link_path(pin_dir, interface).exists();
    let current = hook(interface)?;
    match (&current, ours) {
        (Some(h), false) => bail!(
            "{interface} already has an XDP program attached (id {}, '{}', {} mode) that bpi-os did not attach; \
             detach it first (for example `ip link set dev {interface} xdp off`)",
            h.program_id,
            h.program_name,
            h.mode
        ),
        (Some(h), true) if h.mode != format!("{mode:?}").to_lowercase() => bail!(
            "{interface} has our program attached in {} mode; unload it first to change the mode",
            h.mode
        ),
        _ => {}
    }
    Ok(AttachPlan {
        interface: interface.into(),
        if_index,
        program: program.into(),
        mode,
        replace: ours && current.is_some(),
        stale_pin: ours && current.is_none(),
    })
}

/// Carries out `plan` with the object [`load`] gave (one load serves every
/// interface of a command).
pub fn apply_attach(pin_dir: &Path, plan: &AttachPlan, ebpf: &mut Ebpf) -> Result<()> {
    let path = link_path(pin_dir, &plan.interface);
    let prog: &mut Xdp = ebpf.program_mut(&plan.program).context("program vanished")?.try_into()?;
    let link = if plan.replace {
        let pinned = PinnedLink::from_pin(&path).with_context(|| format!("opening our link {}", path.display()))?;
        let fd_link = pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?;
        let id = prog.attach_to_link(fd_link.try_into()?).context("swapping the program under our link")?;
        prog.take_link(id)?
    } else {
        if plan.stale_pin {
            fs::remove_file(&path).with_context(|| format!("removing stale link {}", path.display()))?;
        }
        let id = prog.attach(&plan.interface, plan.mode.xdp()).map_err(|e| attach_error(e, &plan.interface, plan.mode))?;
        prog.take_link(id)?
    };
    let fd_link: FdLink = link
        .try_into()
        .context("the kernel attached through netlink, not a bpf_link; bpi-os needs bpf_link XDP (Linux 5.9 or later)")?;
    fd_link.pin(&path).with_context(|| format!("pinning the link at {}", path.display()))?;
    Ok(())
}

/// Plans and applies in one go.
pub fn attach(pin_dir: &Path, program: &str, interface: &str, mode: Mode, defaults: Settings) -> Result<AttachPlan> {
    let plan = plan_attach(pin_dir, program, interface, mode)?;
    let mut ebpf = load(pin_dir, program, defaults)?;
    apply_attach(pin_dir, &plan, &mut ebpf)?;
    Ok(plan)
}

fn attach_error(e: ProgramError, interface: &str, mode: Mode) -> anyhow::Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc_errno) if libc_errno == nix::errno::Errno::EBUSY as i32 || libc_errno == nix::errno::Errno::EEXIST as i32 => {
            anyhow::anyhow!("{interface} already has an XDP program attached by someone else; detach it first")
        }
        Some(libc_errno) if mode == Mode::Native && libc_errno == nix::errno::Errno::EOPNOTSUPP as i32 => anyhow::anyhow!(
            "the driver of {interface} does not support native XDP; use --mode generic"
        ),
        _ => anyhow::Error::new(e).context(format!("attaching to {interface} in {mode:?} mode")),
    }
}

/// Detaches our program from `interface`.
pub fn detach(pin_dir: &Path, interface: &str) -> Result<()> {
    let path = link_path(pin_dir, interface);
    if !path.exists() {
        bail!("bpi-os has no program attached to '{interface}' (no link at {})", path.display());
    }
    let pinned = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    // Unpinned and closed: the kernel detaches the link.
    drop(pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?);
    Ok(())
}

/// The interfaces we have links for.
pub fn attached_interfaces(pin_dir: &Path) -> Result<Vec<String>> {
    let dir = links_dir(pin_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub interface: String,
    /// None when the interface is gone.
    pub if_index: Option<u32>,
    pub hook: Option<Hook>,
}

pub fn links(pin_dir: &Path) -> Result<Vec<LinkStatus>> {
    attached_interfaces(pin_dir)?
        .into_iter()
        .map(|interface| {
            let if_index = if_index(&interface).ok();
            let hook = if if_index.is_some() { hook(&interface)? } else { None };
            Ok(LinkStatus { interface, if_index, hook })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hook_from_iproute2_json() {
        let single: serde_json::Value = serde_json::from_str(
            r#"[{"ifindex":8,"xdp":{"mode":2,"prog":{"id":21,"name":"xdpfilt_alw_all"},"attached":[{"mode":2,"prog":{"id":21,"name":"xdpfilt_alw_all"}}]}}]"#,
        )
        .unwrap();
        assert_eq!(
            parse_hook(&single),
            Some(Hook { mode: "generic".into(), program_id: 21, program_name: "xdpfilt_alw_all".into() })
        );
        let none: serde_json::Value = serde_json::from_str(r#"[{"ifindex":1}]"#).unwrap();
        assert_eq!(parse_hook(&none), None);
        let native: serde_json::Value = serde_json::from_str(r#"[{"xdp":{"mode":1,"prog":{"id":5,"name":"x"}}}]"#).unwrap();
        assert_eq!(parse_hook(&native).unwrap().mode, "native");
    }

    #[test]
    fn refuses_unknown_programs_and_modes() {
        assert!(check_program("xdp_trust_routing").is_ok());
        let err = check_program("xdp_pass").unwrap_err().to_string();
        assert!(err.contains("unknown program 'xdp_pass'") && err.contains("xdp_trust_routing"), "{err}");
        assert!("turbo".parse::<Mode>().is_err());
    }
}

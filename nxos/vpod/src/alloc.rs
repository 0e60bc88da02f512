//! The allocator: one JSON file of allocations on the data partition, read,
//! changed and written back (atomically) under an exclusive `flock` on a
//! lock file beside it, so concurrent callers (threads or processes) take
//! turns. A port some socket listens on is never handed out, nor one held
//! by an allocation that has not expired; expired ones are dropped by the
//! next call and returned so the caller can record them.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::ranges;

/// On the data partition: allocations survive reboots and updates.
pub const DEFAULT_DIR: &str = "/bpi/data/nxos";
const STATE: &str = "vpod-ports.json";
const LOCK: &str = "vpod-ports.lock";
/// The allocation file's size at most: every port of every range, with room.
const MAX_STATE_BYTES: u64 = 4 << 20;
/// The longest lease `--ttl` takes: a year.
pub const MAX_TTL: u64 = 365 * 86400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub port: u16,
    pub range: String,
    pub service: String,
    /// Unix seconds.
    pub allocated_at: u64,
    pub expires_at: Option<u64>,
}

impl Allocation {
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    allocations: Vec<Allocation>,
}

/// What a call changed: the allocation made or found, and the expired
/// allocations it dropped on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocated {
    pub allocation: Allocation,
    /// False when the service already held a port in that range.
    pub new: bool,
    pub expired: Vec<Allocation>,
}

pub enum Select<'a> {
    Port(u16),
    Service(&'a str),
}

pub struct Allocator {
    dir: PathBuf,
}

/// A service id: what names the holder in the list and the ledger.
pub fn check_service(s: &str) -> Result<()> {
    ensure!(
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "service id {s:?}: 1 to 64 letters, digits, '.', '_' or '-'"
    );
    Ok(())
}

impl Allocator {
    pub fn new(dir: impl Into<PathBuf>) -> Allocator {
        Allocator { dir: dir.into() }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    /// Runs `f` on the state under the lock; writes it back when `f` says so.
    fn locked<T>(&self, f: impl FnOnce(&mut State) -> Result<(T, bool)>) -> Result<T> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let lock = File::options().create(true).append(true).open(self.dir.join(LOCK)).with_context(|| format!("opening the lock in {}", self.dir.display()))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive).context("locking the port allocations")?;
        let path = self.state_path();
        // A FIFO or device there would hang or feed the reader without end.
        let mut state: State = match bpi_support::fsmode::read_small(&path, MAX_STATE_BYTES) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is not a port allocation file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (out, changed) = f(&mut state)?;
        if changed {
            state.allocations.sort_by_key(|a| a.port);
            let bytes = serde_json::to_vec_pretty(&state)?;
            bpi_support::fsmode::write_atomic(&path, &bytes, 0o644).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(out)
        // The lock goes with `lock` when it closes.
    }

    /// A port in `range` for `service` (the one it holds there already, if
    /// any), skipping ports held or listened on (`busy`); with `dry_run`,
    /// the port it would get, nothing written.
    pub fn allocate(&self, range: &str, service: &str, ttl: Option<u64>, now: u64, busy: &dyn Fn(u16) -> bool, dry_run: bool) -> Result<Allocated> {
        let r = ranges::by_name(range)?;
        check_service(service)?;
        if let Some(t) = ttl {
            ensure!((1..=MAX_TTL).contains(&t), "--ttl {t}: 1 to {MAX_TTL} seconds");
        }
        self.locked(|st| {
            let expired = drop_expired(st, now);
            if let Some(a) = st.allocations.iter().find(|a| a.range == r.name && a.service == service) {
                let changed = !expired.is_empty();
                return Ok((Allocated { allocation: a.clone(), new: false, expired }, changed));
            }
            let Some(port) = r.iter().find(|&p| !st.allocations.iter().any(|a| a.port == p) && !busy(p)) else {
                bail!("no free port in range {} ({}): {} held by allocations, the rest listened on", r.name, r.describe(), st.allocations.iter().filter(|a| r.contains(a.port)).count());
            };
            let a = Allocation { port, range: r.name.to_string(), service: service.to_string(), allocated_at: now, expires_at: ttl.map(|t| now + t) };
            if dry_run {
                return Ok((Allocated { allocation: a, new: true, expired: Vec::new() }, false));
            }
            st.allocations.push(a.clone());
            Ok((Allocated { allocation: a, new: true, expired }, true))
        })
    }

    /// Releases the allocation of a port, or every one of a service; an
    /// error (and no change) when none matches. Returns (released, expired).
    pub fn release(&self, sel: Select, now: u64, dry_run: bool) -> Result<(Vec<Allocation>, Vec<Allocation>)> {
        if let Select::Service(s) = &sel {
            check_service(s)?;
        }
        self.locked(|st| {
            let expired = drop_expired(st, now);
            let hit = |a: &Allocation| match &sel {
                Select::Port(p) => a.port == *p,
                Select::Service(s) => a.service == *s,
            };
            let released: Vec<Allocation> = st.allocations.iter().filter(|a| hit(a)).cloned().collect();
            if released.is_empty() {
                match &sel {
                    Select::Port(p) if ranges::of_port(*p).is_none() => bail!("port {p} is in no vPod range"),
                    Select::Port(p) => bail!("port {p} is not allocated"),
                    Select::Service(s) => bail!("service {s:?} holds no port"),
                }
            }
            if !dry_run {
                st.allocations.retain(|a| !hit(a));
            }
            Ok(((released, expired.clone()), !dry_run || !expired.is_empty()))
        })
    }

    /// The allocations in force (expired ones dropped and returned).
    pub fn list(&self, now: u64) -> Result<(Vec<Allocation>, Vec<Allocation>)> {
        self.locked(|st| {
            let expired = drop_expired(st, now);
            let changed = !expired.is_empty();
            Ok(((st.allocations.clone(), expired), changed))
        })
    }
}

fn drop_expired(st: &mut State, now: u64) -> Vec<Allocation> {
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.allocations).into_iter().partition(|a| a.expired(now));
    st.allocations = kept;
    gone
}

/// Is this directory's state readable at all (for status)?
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(_: u16) -> bool {
        false
    }

    #[test]
    fn allocate_reuse_skip_expire_release() {
        let d = tempfile::tempdir().unwrap();
        let a = Allocator::new(d.path());
        let first = a.allocate("core", "vm-server", None, 100, &free, false).unwrap();
        assert_eq!((first.allocation.port, first.new), (7777, true));
        // The same service asking again keeps its port.
        let again = a.allocate("core", "vm-server", None, 101, &free, false).unwrap();
        assert_eq!((again.allocation.port, again.new), (7777, false));
        // A dry run says which port and keeps it free.
        let dry = a.allocate("core", "api", None, 100, &free, true).unwrap();
        assert_eq!((dry.allocation.port, dry.new), (7778, true));
        assert_eq!(a.list(100).unwrap().0.len(), 1);
        // A listened-on port is skipped.
        let b = a.allocate("core", "api", Some(10), 100, &|p| p == 7778, false).unwrap();
        assert_eq!(b.allocation.port, 7779);
        assert_eq!(b.allocation.expires_at, Some(110));
        assert_eq!(a.allocate("core", "c", None, 100, &free, false).unwrap().allocation.port, 7778);
        assert_eq!(a.allocate("core", "d", None, 100, &free, false).unwrap().allocation.port, 7780);
        let e = a.allocate("core", "e", None, 100, &free, false).unwrap_err().to_string();
        assert!(e.contains("no free port in range core (7777-7780): 4 held"), "{e}");
        // After api's lease ends its port comes back, and the call says so.
        let c = a.allocate("core", "e", None, 110, &free, false).unwrap();
        assert_eq!(c.allocation.port, 7779);
        assert_eq!(c.expired.iter().map(|x| x.service.as_str()).collect::<Vec<_>>(), ["api"]);
        // Survives a new allocator (a restart).
        let (list, _) = Allocator::new(d.path()).list(111).unwrap();
        assert_eq!(list.iter().map(|x| (x.port, x.service.as_str())).collect::<Vec<_>>(), [(7777, "vm-server"), (7778, "c"), (7779, "e"), (7780, "d")]);
        // Release by port, by service; nothing matching is an error and no change.
        let (dry, _) = a.release(Select::Port(7777), 112, true).unwrap();
        assert_eq!(dry.len(), 1);
        assert_eq!(a.list(112).unwrap().0.len(), 4, "a dry run released something");
        assert_eq!(a.release(Select::Port(7777), 112, false).unwrap().0[0].service, "vm-server");
        assert!(a.release(Select::Port(7777), 112, false).unwrap_err().to_string().contains("not allocated"));
        assert!(a.release(Select::Port(22), 112, false).unwrap_err().to_string().contains("in no vPod range"));
        assert!(a.release(Select::Service("nobody"), 112, false).unwrap_err().to_string().contains("holds no port"));
        assert_eq!(a.release(Select::Service("d"), 112, false).unwrap().0[0].port, 7780);
        // Bad input.
        assert!(a.allocate("web", "x", None, 1, &free, false).unwrap_err().to_string().contains("unknown port range"));
        assert!(a.allocate("core", "bad id", None, 1, &free, false).unwrap_err().to_string().contains("service id"));
        assert!(a.allocate("core", "x", Some(0), 1, &free, false).unwrap_err().to_string().contains("--ttl 0"));
        std::fs::write(a.state_path(), b"{\"allocations\": 3}").unwrap();
        assert!(a.list(1).unwrap_err().to_string().contains("not a port allocation file"));
        std::fs::remove_file(a.state_path()).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, a.state_path(), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        assert!(format!("{:#}", a.list(1).unwrap_err()).contains("not a regular file"));
    }

    #[test]
    fn sixteen_concurrent_callers_never_share_a_port() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || Allocator::new(dir).allocate("dynamic", &format!("svc-{i}"), None, 1, &free, false).unwrap().allocation.port)
            })
            .collect();
        let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 16, "{ports:?}");
        assert_eq!(Allocator::new(&dir).list(2).unwrap().0.len(), 16, "an allocation was lost to a concurrent write");
    }
}

//! The trust tables in bpffs, double-buffered.
//!
//! Every table a lookup uses (tries, node scores, settings) exists as
//! generation 0 and 1, and the program uses generation `version & 1`. A batch
//! is written into the idle generation, the version is bumped (one 8-byte
//! store the program reads once per packet), the kernel is made to wait for
//! every program still running on the old generation, and then the batch is
//! mirrored into the old generation so both match again. A packet therefore
//! sees the whole batch or none of it.
//!
//! If a batch dies between the bump and the mirror, the idle generation is
//! stale; its `applied` version says so, and the next batch copies the active
//! generation over it first.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use bpi_support::record::Recorder;

use crate::{
    layout::{maps, RawCounter, RawRoute, RawSettings, Reason, Settings},
    plan::{plan, Op, Plan, Route, Write},
    prefix::Prefix,
};

type Trie4 = LpmTrie<MapData, [u8; 4], RawRoute>;
type Trie6 = LpmTrie<MapData, [u8; 16], RawRoute>;

pub struct Tables {
    dir: PathBuf,
    version: Array<MapData, u64>,
    settings: Array<MapData, RawSettings>,
    trie4: [Trie4; 2],
    trie6: [Trie6; 2],
    nodes: [HashMap<MapData, u32, u32>; 2],
    stats: PerCpuArray<MapData, RawCounter>,
    prefix_stats: PerCpuArray<MapData, RawCounter>,
    grace: ArrayOfMaps<MapData, MapData>,
    grace_token: MapData,
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "the data plane's map {} is not pinned; load the program first (`bpi-os nxos ebpf load`)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &str) -> Result<T> {
    T::try_from(open(dir, name)?).with_context(|| format!("map {name} under {} has an unexpected shape", dir.display()))
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

fn sum(values: &PerCpuValues<RawCounter>) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter { packets: acc.packets + c[0], bytes: acc.bytes + c[1] })
}

/// What the active generation holds.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub version: u64,
    pub settings: Settings,
    pub nodes: BTreeMap<u32, u32>,
    pub routes: BTreeMap<Prefix, Route>,
}

/// Proof that the caller holds the pin directory's lock.
struct Held {
    _lock: Flock<File>,
}

/// Who asks for a batch, where it is recorded, and whether only to plan it.
pub struct Batch<'a> {
    /// Named in the ledger record ("bpi-os", "drx-control").
    pub source: &'a str,
    pub recorder: &'a dyn Recorder,
    pub dry_run: bool,
}

impl Batch<'static> {
    /// A batch nobody records: tests, benchmarks, planning offline.
    pub fn unrecorded(source: &'static str) -> Self {
        Batch { source, recorder: &bpi_support::record::NotRecorded, dry_run: false }
    }
}

/// What a batch did (or, on a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub plan: Plan,
    /// The maps' version after the batch (before it, on a dry run or an empty batch).
    pub version: u64,
    pub applied: Option<Applied>,
    /// The ledger's line about the record.
    pub recorded: Option<String>,
}

/// What an apply did.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub version: u64,
    pub writes: usize,
    /// The idle generation was stale (an earlier batch died half-way) and was copied first.
    pub resynced: bool,
}

impl Tables {
    /// Opens the pinned tables under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Tables {
            dir: dir.to_owned(),
            version: typed(dir, maps::VERSION)?,
            settings: typed(dir, maps::SETTINGS)?,
            trie4: [typed(dir, maps::TRIE4[0])?, typed(dir, maps::TRIE4[1])?],
            trie6: [typed(dir, maps::TRIE6[0])?, typed(dir, maps::TRIE6[1])?],
            nodes: [typed(dir, maps::NODES[0])?, typed(dir, maps::NODES[1])?],
            stats: typed(dir, maps::STATS)?,
            prefix_stats: typed(dir, maps::PREFIX_STATS)?,
            grace: typed(dir, maps::GRACE)?,
            grace_token: MapData::from_pin(dir.join(maps::GRACE_TOKEN))
                .with_context(|| format!("map {} is not pinned", dir.join(maps::GRACE_TOKEN).display()))?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One writer at a time: an exclusive lock on the pin directory.
    fn lock(&self) -> Result<Held> {
        let dir = File::open(&self.dir).with_context(|| format!("opening {}", self.dir.display()))?;
        Flock::lock(dir, FlockArg::LockExclusive)
            .map(|lock| Held { _lock: lock })
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", self.dir.display()))
    }

    pub fn version(&self) -> Result<u64> {
        self.version.get(&0, 0).context("reading drx_version")
    }

    fn settings_of(&self, generation: u32) -> Result<Option<Settings>> {
        Settings::from_raw(self.settings.get(&generation, 0).context("reading drx_settings")?)
    }

    /// The active generation's settings.
    pub fn settings(&self) -> Result<Settings> {
        let generation = (self.version()? & 1) as u32;
        self.settings_of(generation)?.context("the data plane's settings were never initialised")
    }

    /// Writes `defaults` into both generations if no one has yet: fresh maps
    /// are all zeros, which the program would read as "drop nothing, abort".
    pub fn init_if_new(&mut self, defaults: Settings) -> Result<bool> {
        let _held = self.lock()?;
        if self.settings_of(0)?.is_some() || self.settings_of(1)?.is_some() {
            return Ok(false);
        }
        let version = self.version()?;
        let raw = Settings { applied: version, ..defaults }.to_raw();
        self.settings.set(0, raw, 0).context("writing drx_settings")?;
        self.settings.set(1, raw, 0).context("writing drx_settings")?;
        Ok(true)
    }

    fn routes_of(&self, generation: usize) -> Result<BTreeMap<Prefix, Route>> {
        let mut routes = BTreeMap::new();
        for item in self.trie4[generation].iter() {
            let (key, value) = item.context("reading the IPv4 trie")?;
            let prefix = Prefix::V4 { addr: key.data(), len: key.prefix_len() as u8 };
            routes.insert(prefix, Route { node: value[0], slot: value[1] });
        }
        for item in self.trie6[generation].iter() {
            let (key, value) = item.context("reading the IPv6 trie")?;
            let prefix = Prefix::V6 { addr: key.data(), len: key.prefix_len() as u8 };
            routes.insert(prefix, Route { node: value[0], slot: value[1] });
        }
        Ok(routes)
    }

    fn nodes_of(&self, generation: usize) -> Result<BTreeMap<u32, u32>> {
        let mut nodes = BTreeMap::new();
        for item in self.nodes[generation].iter() {
            let (node, score) = item.context("reading the node scores")?;
            nodes.insert(node, score);
        }
        Ok(nodes)
    }

    /// The routes of the active generation (what a plan needs).
    pub fn routes(&self) -> Result<BTreeMap<Prefix, Route>> {
        self.routes_of((self.version()? & 1) as usize)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let version = self.version()?;
        let generation = (version & 1) as usize;
        Ok(Snapshot {
            version,
            settings: self.settings_of(generation as u32)?.context("the data plane's settings were never initialised")?,
            nodes: self.nodes_of(generation)?,
            routes: self.routes_of(generation)?,
        })
    }

    pub fn reason_counters(&self) -> Result<Vec<(Reason, Counter)>> {
        Reason::ALL
            .iter()
            .map(|r| Ok((*r, sum(&self.stats.get(&r.index(), 0).context("reading drx_stats")?))))
            .collect()
    }

    pub fn prefix_counter(&self, slot: u32) -> Result<Counter> {
        Ok(sum(&self.prefix_stats.get(&slot, 0).context("reading drx_prefix_stats")?))
    }

    fn write(&mut self, generation: usize, write: &Write, applied: u64) -> Result<()> {
        match write {
            Write::PutNode { node, score } => self.nodes[generation].insert(node, score, 0).context("writing a node score")?,
            Write::DeleteNode { node } => match self.nodes[generation].remove(node) {
                Ok(()) => {}
                // Deleting what is not there: the goal is met.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("deleting a node score"),
            },
            Write::PutRoute { prefix, node, slot } => match prefix {
                Prefix::V4 { addr, len } => self.trie4[generation].insert(&Key::new(u32::from(*len), *addr), [*node, *slot], 0),
                Prefix::V6 { addr, len } => self.trie6[generation].insert(&Key::new(u32::from(*len), *addr), [*node, *slot], 0),
            }
            .with_context(|| format!("writing the route for {prefix}"))?,
            Write::DeleteRoute { prefix } => {
                let result = match prefix {
                    Prefix::V4 { addr, len } => self.trie4[generation].remove(&Key::new(u32::from(*len), *addr)),
                    Prefix::V6 { addr, len } => self.trie6[generation].remove(&Key::new(u32::from(*len), *addr)),
                };
                match result {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).with_context(|| format!("deleting the route for {prefix}")),
                }
            }
            Write::PutSettings { settings } => {
                let raw = Settings { applied, ..*settings }.to_raw();
                self.settings.set(generation as u32, raw, 0).context("writing drx_settings")?;
            }
        }
        Ok(())
    }

    /// Stamps a generation as brought up to `applied`, keeping its settings.
    fn stamp(&mut self, generation: usize, applied: u64) -> Result<()> {
        let current = self.settings_of(generation as u32)?.context("the data plane's settings were never initialised")?;
        self.settings.set(generation as u32, Settings { applied, ..current }.to_raw(), 0).context("writing drx_settings")?;
        Ok(())
    }

    /// Makes generation `to` a copy of generation `from`.
    fn resync(&mut self, from: usize, to: usize, applied: u64) -> Result<()> {
        let want_routes = self.routes_of(from)?;
        let have_routes = self.routes_of(to)?;
        let want_nodes = self.nodes_of(from)?;
        let have_nodes = self.nodes_of(to)?;
        let mut writes = Vec::new();
        writes.extend(have_routes.keys().filter(|p| !want_routes.contains_key(p)).map(|p| Write::DeleteRoute { prefix: *p }));
        writes.extend(have_nodes.keys().filter(|n| !want_nodes.contains_key(n)).map(|n| Write::DeleteNode { node: *n }));
        writes.extend(want_routes.iter().map(|(p, r)| Write::PutRoute { prefix: *p, node: r.node, slot: r.slot }));
        writes.extend(want_nodes.iter().map(|(n, s)| Write::PutNode { node: *n, score: *s }));
        let settings = self.settings_of(from as u32)?.context("the data plane's settings were never initialised")?;
        writes.push(Write::PutSettings { settings });
        for w in &writes {
            self.write(to, w, applied)?;
        }
        Ok(())
    }

    /// Waits until no program run that started before now is still running:
    /// replacing a map-of-maps slot makes the kernel synchronize_rcu().
    fn grace_period(&mut self) -> Result<()> {
        self.grace.set(0, &self.grace_token, 0).context("waiting out running programs (drx_grace)")?;
        Ok(())
    }

    /// The one way the maps change: takes the pin directory's lock, asks
    /// `ops` for the batch while holding it (so what it reads cannot go stale),
    /// plans the batch against the routes it then holds, applies it as one
    /// generation flip and records it. An empty batch changes nothing.
    pub fn write_batch(&mut self, batch: &Batch<'_>, ops: impl FnOnce(&Tables) -> Result<Vec<Op>>) -> Result<Written> {
        let held = self.lock()?;
        let ops = ops(self)?;
        if ops.is_empty() {
            return Ok(Written { plan: Plan::default(), version: self.version()?, applied: None, recorded: None });
        }
        let routes = if Plan::touches_routes(&ops) { self.routes()? } else { BTreeMap::new() };
        let plan = plan(&ops, &routes)?;
        if batch.dry_run {
            return Ok(Written { version: self.version()?, plan, applied: None, recorded: None });
        }
        let applied = self.apply(&plan, &held)?;
        let data = serde_json::json!({ "version": applied.version, "source": batch.source, "changes": plan.writes });
        let recorded = batch.recorder.record("trust", "update", &data);
        Ok(Written { version: applied.version, plan, applied: Some(applied), recorded: Some(recorded) })
    }

    /// Applies `plan` atomically as seen by the program.
    fn apply(&mut self, plan: &Plan, _held: &Held) -> Result<Applied> {
        let version = self.version()?;
        let active = (version & 1) as usize;
        let idle = 1 - active;
        let idle_settings = self.settings_of(idle as u32)?.context("the data plane's settings were never initialised")?;
        let resynced = idle_settings.applied != version;
        if resynced {
            self.resync(active, idle, version)?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        for slot in &plan.fresh_slots {
            let zero = PerCpuValues::try_from(vec![[0u64; 2]; cpus]).context("building per-CPU zeros")?;
            self.prefix_stats.set(*slot, zero, 0).context("zeroing a prefix counter")?;
        }
        let next = version + 1;
        for w in &plan.writes {
            self.write(idle, w, next)?;
        }
        self.stamp(idle, next)?;
        self.version.set(0, next, 0).context("bumping drx_version")?;
        self.grace_period()?;
        for w in &plan.writes {
            self.write(active, w, next)?;
        }
        self.stamp(active, next)?;
        Ok(Applied { version: next, writes: plan.writes.len(), resynced })
    }
}

/// Checks a pin directory sits on a bpf file system.
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let probe = if dir.exists() { dir } else { dir.parent().unwrap_or(dir) };
    let fs = nix::sys::statfs::statfs(probe).with_context(|| format!("statfs {}", probe.display()))?;
    if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
        bail!("{} is not on a bpf file system; mount one (mount -t bpf bpf /sys/fs/bpf) or pass --pin-dir", probe.display());
    }
    Ok(())
}

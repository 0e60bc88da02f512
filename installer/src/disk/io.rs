//! The target's two handles: buffered, and O_DIRECT for the bulk, so writes
//! skip the page cache and reads come from the medium.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use anyhow::{Context, Result};

use crate::target::{Kind, Target};

/// Opens the target for writing; a block device exclusively, so the kernel
/// refuses if anything mounted or mapped it since it was inspected.
pub(super) fn open_target(t: &Target) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if t.kind == Kind::Block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(&t.path).with_context(|| match t.kind {
        Kind::Block => format!("opening {} exclusively (is it in use?)", t.path.display()),
        Kind::File => format!("opening {}", t.path.display()),
    })
}

/// Drops the target's cached pages so that reads come from the medium.
pub fn drop_cache(f: &File) {
    let _ = f.sync_all();
    // Length 0: to the end of the file or device.
    let _ = rustix::fs::fadvise(f, 0, 0, rustix::fs::Advice::DontNeed);
}

/// A second handle with O_DIRECT on any path (a partition an update writes).
pub fn open_direct_path(path: &std::path::Path) -> Option<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// Direct I/O alignment (the largest logical block size in use).
const ALIGN_IO: usize = 4096;

/// A second handle on the target with O_DIRECT: bulk writes and reads skip
/// the page cache (no copy, and reads come from the medium). None where the
/// file system has no direct I/O (tmpfs); the buffered handle is used then.
pub(super) fn open_direct(t: &Target) -> Option<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&t.path).ok()
}

/// A buffer whose start is aligned for O_DIRECT, without unsafe code: a
/// larger vector and the aligned window inside it.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN_IO];
        let start = (ALIGN_IO - raw.as_ptr() as usize % ALIGN_IO) % ALIGN_IO;
        AlignedBuf { raw, start, len }
    }
    pub fn get(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.len);
        &mut self.raw[self.start..self.start + n]
    }
}

/// Writes `data` at `at`: the aligned bulk directly, any unaligned tail buffered.
pub fn write_at(direct: Option<&File>, buffered: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let bulk = if direct.is_some() && at.is_multiple_of(ALIGN_IO as u64) { data.len() / ALIGN_IO * ALIGN_IO } else { 0 };
    if let Some(d) = direct.filter(|_| bulk > 0) {
        d.write_all_at(&data[..bulk], at)?;
    }
    if bulk < data.len() {
        buffered.write_all_at(&data[bulk..], at + bulk as u64)?;
    }
    Ok(())
}

/// Reads into `buf` from `at`, as [`write_at`] writes.
pub fn read_at(direct: Option<&File>, buffered: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let bulk = if direct.is_some() && at.is_multiple_of(ALIGN_IO as u64) { buf.len() / ALIGN_IO * ALIGN_IO } else { 0 };
    if let Some(d) = direct.filter(|_| bulk > 0) {
        d.read_exact_at(&mut buf[..bulk], at)?;
    }
    if bulk < buf.len() {
        buffered.read_exact_at(&mut buf[bulk..], at + bulk as u64)?;
    }
    Ok(())
}

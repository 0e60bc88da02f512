//! Directories with the modes we mean, whatever the umask. Each is made with
//! its mode (so it is never more open than meant, not even for a moment) and
//! then set to it exactly (mkdir(2) masks the mode with the umask).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Writes `path` so that a crash leaves either the old or the new content:
/// a temporary file beside it, made with `mode` (masked by the umask),
/// synced, renamed over `path`, and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Creates `path` and every missing parent with `mode`; directories that
/// exist already keep theirs.
pub fn create_dirs(path: &Path, mode: u32) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))),
    }
}

/// Opens `path` for reading only if it is a regular file: a FIFO or device
/// named where a file is expected would hang a reader or feed it without end.
/// Opened without blocking (a FIFO's open would wait for a writer), then
/// checked on the open descriptor, so the file checked is the file read.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// A small regular file's bytes: refused past `limit` bytes, not read whole
/// into memory first.
pub fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is {len} bytes; at most {limit} are expected", path.display())));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} grew past {limit} bytes while read", path.display())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_small(&f, 5).unwrap(), b"hello");
        assert!(read_small(&f, 4).unwrap_err().to_string().contains("at most 4"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Would block for ever on a plain open.
        assert!(read_small(&fifo, 1 << 20).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_small(Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_small(dir.path(), 1 << 20).is_err());
    }

    #[test]
    fn modes_do_not_follow_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        // The test binary's umask may be anything; 0755 must come out regardless.
        let deep = dir.path().join("a/b/c");
        create_dirs(&deep, 0o755).unwrap();
        for p in [dir.path().join("a"), dir.path().join("a/b"), deep.clone()] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o755, "{}", p.display());
        }
        assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777, 0o711, "an existing directory kept its mode");
        create_dirs(&deep, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777, 0o755);
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dirs(&dir.path().join("f/g"), 0o755).is_err());
    }
}

//! Directories with the modes we mean, whatever the umask. Each is made with
//! its mode (so it is never more open than meant, not even for a moment) and
//! then set to it exactly (mkdir(2) masks the mode with the umask).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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

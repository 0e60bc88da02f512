//! Facts about the process's own privileges, read from /proc.

/// Whether the real user is root (the `Uid:` line of /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

/// Gives the pages of freed heap memory back to the kernel (glibc's
/// malloc_trim). A daemon calls it once after loading a large file: the
/// parser's short-lived allocations leave free holes between long-lived data
/// that free() alone keeps resident.
#[allow(unsafe_code)]
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers and only touches the allocator's
    // own free lists; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

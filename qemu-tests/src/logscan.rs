//! Signs of trouble in a serial log or journal.

/// (pattern, what it means). Matched case-sensitively, line by line.
const TROUBLE: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("Oops:", "kernel oops"),
    ("BUG:", "kernel BUG"),
    ("WARNING: CPU:", "kernel WARNING"),
    ("cut here ]", "kernel WARNING"),
    ("emergency mode", "emergency shell"),
    ("Entering emergency", "emergency shell"),
    ("ordering cycle", "unit ordering cycle"),
    ("Failed to start", "failed unit"),
];

/// Console lines after which a boot cannot succeed: the harness stops there
/// instead of waiting for its timeout.
const FATAL: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("Entering emergency mode", "emergency shell"),
    ("You are in emergency mode", "emergency shell"),
    ("Cannot open access to console, the root account is locked", "emergency shell"),
    ("Give root password for maintenance", "emergency shell"),
];

/// The first line of a serial log that ends any hope of a boot, with what it means.
pub fn fatal(log: &str) -> Option<String> {
    log.lines().find_map(|l| FATAL.iter().find(|(p, _)| l.contains(p)).map(|(_, why)| format!("{why}: {}", l.trim())))
}

/// Every troubling line, with what it means.
pub fn trouble(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| TROUBLE.iter().find(|(p, _)| l.contains(p)).map(|(_, why)| format!("{why}: {}", l.trim())))
        .collect()
}

/// The last `n` lines of a log, for error messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_matters_only() {
        let log = "ok line\n[  1.0] Kernel panic - not syncing: VFS\nsystemd[1]: Found ordering cycle on a.service\n[ OK ] Reached target x\n";
        let t = trouble(log);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(t[0].starts_with("kernel panic"));
        assert!(trouble("all good\n").is_empty());
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
    }

    #[test]
    fn fatal_lines_end_a_boot_and_others_do_not() {
        assert_eq!(fatal("[  1.0] Kernel panic - not syncing: VFS\n").as_deref(), Some("kernel panic: [  1.0] Kernel panic - not syncing: VFS"));
        assert!(fatal("x\nYou are in emergency mode. After logging in, type\n").unwrap().starts_with("emergency shell"));
        // The kernel echoes its command line, rd.emergency=poweroff included.
        assert_eq!(fatal("Kernel command line: rd.shell=0 rd.emergency=poweroff\n[ OK ] Reached target\n"), None);
    }
}

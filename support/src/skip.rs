//! Tests that need what a machine may lack: root, a program, a kernel feature.
//!
//! A developer without root may skip such a test, and is told so. Under CI or
//! as root every capability the tests need is there (`cargo xtask test`
//! installs the tools), so a test that cannot run there is a failure, never a
//! silent pass. Every skip is appended to `$BPI_SKIP_LOG`, from which
//! `cargo xtask test` lists the skipped tests by name at the end of the run.

use std::io::Write;

/// The environment variable naming the file skips are recorded in.
pub const LOG_ENV: &str = "BPI_SKIP_LOG";

/// Whether a test that cannot run must fail instead: under CI (`CI` set to
/// anything but empty, `0` or `false`) or as root.
pub fn required() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    ci || crate::host::is_root()
}

/// The running test's name: the test binary's name (without cargo's hash)
/// and the libtest thread's name, which is the test's path.
pub fn current_test() -> String {
    let exe = std::env::current_exe().ok();
    let binary = exe
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .map(|n| strip_cargo_hash(&n).to_string())
        .unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("main").to_string();
    format!("{binary}::{thread}")
}

fn strip_cargo_hash(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => stem,
        _ => name,
    }
}

/// The calling test cannot run here, for `reason`. Panics (fails the test)
/// where [`required`]; otherwise prints and records the skip. The test
/// returns right after.
pub fn skip(reason: &str) {
    let test = current_test();
    record(&test, reason);
    if required() {
        panic!("{test} cannot run: {reason}. Under CI or as root this is a failure, not a skip.");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// True as root; otherwise skips (see [`skip`]) and returns false.
pub fn needs_root(why: &str) -> bool {
    if crate::host::is_root() {
        return true;
    }
    skip(&format!("needs root: {why}"));
    false
}

/// True when `program` is on PATH; otherwise skips and returns false.
pub fn needs_program(program: &str, package: &str) -> bool {
    if crate::cmd::which(program).is_some() {
        return true;
    }
    skip(&format!("{program} is not installed (Debian package {package}; `cargo xtask test` installs it)"));
    false
}

fn record(test: &str, reason: &str) {
    let Some(path) = std::env::var_os(LOG_ENV) else { return };
    let line = format!("{test}\t{}\n", reason.replace(['\n', '\t'], " "));
    // One write of one short line to an O_APPEND file: concurrent tests do not interleave.
    let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record a skip in {}: {e}", std::path::Path::new(&path).display());
    }
}

/// The skips recorded in a log written by [`skip`]: (test, reason), in order.
pub fn read_log(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, r)| (t.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_binary_and_the_test() {
        assert_eq!(strip_cargo_hash("install-0123456789abcdef"), "install");
        assert_eq!(strip_cargo_hash("bpi-os"), "bpi-os");
        assert_eq!(strip_cargo_hash("a-short"), "a-short");
        assert!(current_test().ends_with("::skip::tests::names_carry_the_binary_and_the_test"), "{}", current_test());
    }

    #[test]
    fn the_log_reads_back() {
        let v = read_log("a::t\tneeds root: x\n\nbroken line\nb::u\tno tool\n");
        assert_eq!(v, vec![("a::t".into(), "needs root: x".into()), ("b::u".into(), "no tool".into())]);
    }
}

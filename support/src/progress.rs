//! Progress reporting: one line per step with its duration, a spinner or bar on a
//! terminal, and plain lines (no escape codes) in CI and the journal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static DETAIL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether detail lines (command lines) are shown: as a program set it
/// (`bpi-os -v`); otherwise when BPI_VERBOSE is set or we are not on a
/// terminal, where a full log is worth more than a tidy screen (xtask in CI).
pub fn show_details(on: bool) {
    let _ = DETAIL.set(on);
}

/// Logs a detail line (command lines).
pub fn log(line: &str) {
    let on = *DETAIL.get_or_init(|| std::env::var_os("BPI_VERBOSE").is_some() || !std::io::stderr().is_terminal());
    if on {
        eprintln!("{}  {line}", journal_prefix(Priority::Debug));
    }
}

/// Says something the user must see (an install, a skipped tier).
pub fn note(line: &str) {
    eprintln!("{}==> {line}", journal_prefix(Priority::Notice));
}

/// An error, the last thing a failing command says.
pub fn error(program: &str, message: &str) {
    eprintln!("{}{program}: error: {message}", journal_prefix(Priority::Err));
}

/// syslog priorities, as journald reads them from a `<N>` line prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Err = 3,
    Notice = 5,
    Debug = 7,
}

/// `<N>` when stderr is the journal (systemd sets JOURNAL_STREAM to its
/// device and inode, the documented test), so `journalctl -p err` finds our
/// errors; nothing on a terminal, in a pipe or in CI.
pub fn journal_prefix(p: Priority) -> String {
    static TO_JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *TO_JOURNAL.get_or_init(|| stderr_is(std::env::var("JOURNAL_STREAM").ok().as_deref()));
    if on {
        format!("<{}>", p as u8)
    } else {
        String::new()
    }
}

fn stderr_is(journal_stream: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else { return false };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino())
}

/// A sequence of named steps of one long job.
pub struct Steps {
    job: String,
    started: Instant,
    tty: bool,
}

impl Steps {
    pub fn new(job: &str) -> Self {
        Steps {
            job: job.to_string(),
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Runs one step, printing its name, then its duration or failure.
    pub fn step<T, E>(&self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let t = Instant::now();
        let spinner = if self.tty {
            let s = ProgressBar::new_spinner();
            s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
            s.set_message(format!("{}: {name}", self.job));
            s.enable_steady_tick(Duration::from_millis(200));
            Some(s)
        } else {
            eprintln!("[{}] {name} ...", self.job);
            None
        };
        let r = f();
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        let verdict = if r.is_ok() { "done" } else { "FAILED" };
        eprintln!("[{}] {name}: {verdict} in {}", self.job, fmt_duration(t.elapsed()));
        r
    }

    /// A byte progress bar on a terminal; on other outputs, a line every 10%.
    pub fn bytes(&self, name: &str, total: u64) -> ByteProgress {
        ByteProgress::new(&format!("{}: {name}", self.job), total, self.tty)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(&self) {
        eprintln!("[{}] finished in {}", self.job, fmt_duration(self.elapsed()));
    }
}

/// Progress of a byte stream (writes, copies).
pub struct ByteProgress {
    bar: Option<ProgressBar>,
    name: String,
    total: u64,
    done: u64,
    next_report: u64,
    started: Instant,
}

impl ByteProgress {
    fn new(name: &str, total: u64, tty: bool) -> Self {
        let bar = tty.then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b.set_message(name.to_string());
            b
        });
        ByteProgress {
            bar,
            name: name.to_string(),
            total,
            done: 0,
            next_report: total / 10,
            started: Instant::now(),
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.set_position(self.done),
            None if self.done >= self.next_report && self.total > 0 => {
                let secs = self.started.elapsed().as_secs_f64().max(1e-6);
                let rate = self.done as f64 / secs;
                let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1.0);
                eprintln!(
                    "  {}: {}% ({} of {} bytes, {:.1} MB/s, eta {})",
                    self.name,
                    self.done * 100 / self.total,
                    self.done,
                    self.total,
                    rate / 1e6,
                    fmt_duration(Duration::from_secs_f64(eta))
                );
                self.next_report = self.done + self.total / 10;
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn the_journal_is_recognised_by_its_stream_only() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert!(stderr_is(Some(&format!("{}:{}", m.dev(), m.ino()))));
        assert!(!stderr_is(Some(&format!("{}:{}", m.dev(), m.ino() + 1))));
        assert!(!stderr_is(Some("garbage")));
        assert!(!stderr_is(None));
    }

    #[test]
    fn step_passes_result_through() {
        let steps = Steps::new("t");
        assert_eq!(steps.step("ok", || Ok::<_, ()>(7)), Ok(7));
        assert_eq!(steps.step("bad", || Err::<(), _>("x")), Err("x"));
    }
}

/// `text` safe to print to a terminal: control characters (C0, DEL, C1,
/// where escape sequences start) are shown as `\u{..}` instead of sent.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect())
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(super::printable("plain ünïcode"), "plain ünïcode");
        assert_eq!(super::printable("a\u{1b}[31mred\u{7f}\u{9b}2J\n"), "a\\u{1b}[31mred\\u{7f}\\u{9b}2J\\u{a}");
    }
}

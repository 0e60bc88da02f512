//! Runs external programs. Every command line is logged before it runs, and a
//! failure carries the command line, its exit status and the tail of its stderr,
//! so an error names what failed without re-running anything.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

/// How many trailing stderr lines an error keeps.
const TAIL_LINES: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{cmdline}`: {source} (is the program installed and on PATH?)")]
    Spawn {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmdline}` failed with {status}{}", render_tail(.stderr_tail))]
    Failed {
        cmdline: String,
        status: ExitStatus,
        stderr_tail: Vec<String>,
    },
    #[error("`{cmdline}`: output is not UTF-8")]
    NotUtf8 { cmdline: String },
}

fn render_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last lines of its stderr:\n  {}", lines.join("\n  "))
    }
}

/// A command to run, built like [`std::process::Command`].
pub struct Cmd {
    inner: Command,
    shown: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    echo: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Cmd {
            inner: Command::new(program),
            shown: vec![program.to_owned()],
            stdin: None,
            echo: std::env::var_os("BPI_VERBOSE").is_some(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.inner.arg(arg.as_ref());
        self.shown.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Feeds these bytes to the program's stdin.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Forwards the program's output to our stderr as it runs (long steps).
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// The command line as a shell user would type it.
    pub fn cmdline(&self) -> String {
        self.shown
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion; fails unless it exits 0.
    pub fn run(self) -> Result<(), CmdError> {
        self.output_bytes().map(|_| ())
    }

    /// Runs to completion and returns stdout as text.
    pub fn output(self) -> Result<String, CmdError> {
        let cmdline = self.cmdline();
        let out = self.output_bytes()?;
        String::from_utf8(out).map_err(|_| CmdError::NotUtf8 { cmdline })
    }

    /// Runs to completion and returns stdout as bytes.
    pub fn output_bytes(self) -> Result<Vec<u8>, CmdError> {
        self.output_and_stderr_tail().map(|(out, _)| out)
    }

    /// Runs to completion and returns stdout, and the last lines of stderr
    /// (for programs that report their results there).
    pub fn output_and_stderr_tail(mut self) -> Result<(Vec<u8>, Vec<String>), CmdError> {
        let cmdline = self.cmdline();
        crate::progress::log(&format!("$ {cmdline}"));
        self.inner
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.inner.spawn().map_err(|source| CmdError::Spawn {
            cmdline: cmdline.clone(),
            source,
        })?;
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            thread::spawn(move || {
                use std::io::Write;
                // A program that exits without reading all input is not our error here;
                // its exit status tells.
                let _ = stdin.write_all(&bytes);
            });
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let err_reader = {
            let stderr = child.stderr.take().expect("stderr was piped");
            let tail = Arc::clone(&tail);
            let echo = self.echo;
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("    {line}");
                    }
                    let mut t = tail.lock().expect("tail lock");
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        };
        let mut stdout = Vec::new();
        let mut out = child.stdout.take().expect("stdout was piped");
        if self.echo {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                eprintln!("    {}", String::from_utf8_lossy(&line));
                stdout.extend_from_slice(&line);
                stdout.push(b'\n');
            }
        } else {
            out.read_to_end(&mut stdout).map_err(|source| CmdError::Spawn {
                cmdline: cmdline.clone(),
                source,
            })?;
        }
        let status = child.wait().map_err(|source| CmdError::Spawn {
            cmdline: cmdline.clone(),
            source,
        })?;
        let _ = err_reader.join();
        let stderr_tail: Vec<String> = tail.lock().expect("tail lock").iter().cloned().collect();
        if status.success() {
            Ok((stdout, stderr_tail))
        } else {
            Err(CmdError::Failed {
                cmdline,
                status,
                stderr_tail,
            })
        }
    }
}

/// A program started by [`Cmd::spawn_daemon`]: killed and reaped when dropped.
pub struct Daemon {
    child: std::process::Child,
    cmdline: String,
}

impl Daemon {
    /// Fails with the command line when the daemon has already exited.
    pub fn check_running(&mut self) -> Result<(), CmdError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(CmdError::Failed { cmdline: self.cmdline.clone(), status, stderr_tail: Vec::new() }),
            _ => Ok(()),
        }
    }

    /// Waits until the daemon has made `path` (its socket), failing when it
    /// exits first or `timeout` passes.
    pub fn wait_for_path(&mut self, path: &std::path::Path, timeout: std::time::Duration) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        while !path.exists() {
            self.check_running()?;
            anyhow::ensure!(t.elapsed() < timeout, "`{}` did not make {} within {timeout:?}", self.cmdline, path.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cmd {
    /// Starts a helper that runs beside the caller (a software TPM, a
    /// server), its output discarded; it stops when the guard is dropped.
    pub fn spawn_daemon(mut self) -> Result<Daemon, CmdError> {
        let cmdline = self.cmdline();
        crate::progress::log(&format!("$ {cmdline} &"));
        let child = self
            .inner
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| CmdError::Spawn { cmdline: cmdline.clone(), source })?;
        Ok(Daemon { child, cmdline })
    }
}

/// Whether a program is on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c 'echo boom >&2; exit 3'"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn output_and_stdin() {
        let out = Cmd::new("cat").stdin_bytes("hello").output().unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Cmd::new("/nonexistent/prog").run().unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("--x=1"), "--x=1");
    }
}

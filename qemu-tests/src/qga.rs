//! A minimal qemu-guest-agent client: sync, ping, exec with captured output.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

pub struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

#[derive(Debug)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Agent {
    /// Connects and synchronises; fails if the agent does not answer within `wait`.
    pub fn connect(sock: &Path, wait: Duration) -> Result<Agent> {
        let s = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(wait))?;
        let mut a = Agent { reader: BufReader::new(s.try_clone()?), writer: s };
        let id = std::process::id() as u64 * 1000 + (Instant::now().elapsed().subsec_nanos() as u64 % 1000);
        a.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))?;
        // The reply follows a 0xff sentinel; skip anything before it.
        let mut byte = Vec::new();
        loop {
            byte.clear();
            a.reader.read_until(0xff, &mut byte).context("guest agent did not answer")?;
            if byte.last() == Some(&0xff) {
                break;
            }
            if byte.is_empty() {
                bail!("guest agent closed the connection");
            }
        }
        loop {
            let v = a.read()?;
            if v["return"].as_u64() == Some(id) {
                break;
            }
        }
        Ok(a)
    }

    fn send(&mut self, v: &Value) -> Result<()> {
        self.writer.write_all(v.to_string().as_bytes())?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    fn read(&mut self) -> Result<Value> {
        // Bytes, not a String: a sync reply left over from an earlier
        // connection starts with the 0xff sentinel, which is not UTF-8.
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).context("reading from the guest agent")?;
        if line.is_empty() {
            bail!("guest agent closed the connection");
        }
        let start = line.iter().position(|&b| b != 0xff).unwrap_or(line.len());
        Ok(serde_json::from_slice(&line[start..])?)
    }

    pub fn call(&mut self, execute: &str, arguments: Value) -> Result<Value> {
        self.send(&json!({"execute": execute, "arguments": arguments}))?;
        let v = self.read()?;
        if let Some(e) = v.get("error") {
            bail!("guest agent {execute} failed: {e}");
        }
        Ok(v["return"].clone())
    }

    /// Runs a shell command in the guest and waits for it.
    pub fn sh(&mut self, script: &str, timeout: Duration) -> Result<ExecOutput> {
        let r = self.call(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
        )?;
        let pid = r["pid"].as_i64().context("guest-exec returned no pid")?;
        let start = Instant::now();
        loop {
            let s = self.call("guest-exec-status", json!({"pid": pid}))?;
            if s["exited"].as_bool() == Some(true) {
                let dec = |k: &str| -> String {
                    s[k].as_str()
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok(ExecOutput { code: s["exitcode"].as_i64().unwrap_or(-1), stdout: dec("out-data"), stderr: dec("err-data") });
            }
            if start.elapsed() > timeout {
                bail!("guest command timed out after {timeout:?}: {script}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

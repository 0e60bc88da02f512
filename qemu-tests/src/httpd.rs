//! A small HTTP/1.1 file server for the update test: the guest reaches it at
//! the user network's gateway (10.0.2.2). It serves a directory with byte
//! ranges (`Range: bytes=N-`), logs each request, and misbehaves on demand:
//! cutting a file short (a dropped download) or sending more bytes than the
//! file has (a hostile or broken server).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Close the connection after this many body bytes of the named file.
    CutAfter { file: String, bytes: u64 },
    /// Send this many extra bytes after the named file (and say so in Content-Length).
    Extra { file: String, bytes: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range_from: Option<u64>,
    pub status: u16,
}

pub struct Server {
    pub port: u16,
    pub root: PathBuf,
    fault: Arc<Mutex<Fault>>,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serves `root` on 127.0.0.1 (a free port) until the process ends.
    pub fn start(root: PathBuf) -> anyhow::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (r, f, l) = (root.clone(), fault.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, f, l) = (r.clone(), f.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &r, &f, &l);
                });
            }
        });
        Ok(Server { port, root, fault, log })
    }

    pub fn set_fault(&self, f: Fault) {
        *self.fault.lock().expect("fault lock") = f;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log lock").clone()
    }

    /// The URL the guest uses for `dir` under the root.
    pub fn guest_url(&self, dir: &str) -> String {
        format!("http://10.0.2.2:{}/{dir}", self.port)
    }
}

fn serve(stream: TcpStream, root: &std::path::Path, fault: &Mutex<Fault>, log: &Mutex<Vec<Request>>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range_from = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range:") {
                range_from = v.trim().strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse().ok());
            }
        }
        let rel = path.trim_start_matches('/');
        let file = root.join(rel);
        let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let ok = !rel.split('/').any(|c| c == "..") && file.is_file();
        if !ok {
            log.lock().expect("log lock").push(Request { path, range_from, status: 404 });
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let mut body = Vec::new();
        std::fs::File::open(&file)?.read_to_end(&mut body)?;
        let f = fault.lock().expect("fault lock").clone();
        if let Fault::Extra { file: n, bytes } = &f {
            if *n == name {
                body.extend(std::iter::repeat_n(0x5a, *bytes as usize));
            }
        }
        let from = range_from.unwrap_or(0).min(body.len() as u64) as usize;
        let status = if range_from.is_some() { 206 } else { 200 };
        log.lock().expect("log lock").push(Request { path, range_from, status });
        let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n", if status == 206 { "Partial Content" } else { "OK" }, body.len() - from);
        if status == 206 {
            head.push_str(&format!("Content-Range: bytes {from}-{}/{}\r\n", body.len().saturating_sub(1), body.len()));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        let mut send = &body[from..];
        if let Fault::CutAfter { file: n, bytes } = &f {
            if *n == name {
                send = &send[..(*bytes as usize).min(send.len())];
                out.write_all(send)?;
                return Ok(()); // the connection drops mid-body
            }
        }
        out.write_all(send)?;
    }
}

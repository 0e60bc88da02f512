//! The seed's health score for a service holding a port: HTTP 0.3, TCP 0.2,
//! resources 0.3, security 0.2; healthy at 0.9 and up, degraded at 0.7,
//! unhealthy at 0.5, critical below. Each part is measured here, not
//! assumed:
//! - tcp: a connection to 127.0.0.1:PORT is accepted within a second;
//! - http: an HTTP/1.0 request gets a status line below 500 (a reply that
//!   is not HTTP counts half: the port speaks something else);
//! - resources: how full the listener's accept queue is (1 when empty, 0
//!   when full), from /proc/net/tcp;
//! - security: 1 when the listener runs as a user other than root, 0.5 as
//!   root (a compromise of it is a compromise of the node).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::sockets::Listener;

pub const WEIGHTS: Weights = Weights { http: 0.3, tcp: 0.2, resources: 0.3, security: 0.2 };

pub struct Weights {
    pub http: f64,
    pub tcp: f64,
    pub resources: f64,
    pub security: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Healthy,
    Degraded,
    Unhealthy,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub port: u16,
    pub http: f64,
    pub tcp: f64,
    pub resources: f64,
    pub security: f64,
    pub score: f64,
    pub state: State,
}

pub fn state_of(score: f64) -> State {
    match score {
        s if s >= 0.9 => State::Healthy,
        s if s >= 0.7 => State::Degraded,
        s if s >= 0.5 => State::Unhealthy,
        _ => State::Critical,
    }
}

/// The score of the four parts.
pub fn score(http: f64, tcp: f64, resources: f64, security: f64) -> f64 {
    let w = WEIGHTS;
    http * w.http + tcp * w.tcp + resources * w.resources + security * w.security
}

/// Resources and security from the port's TCP listener, if there is one.
pub fn from_listener(l: Option<&Listener>) -> (f64, f64) {
    match l {
        None => (0.0, 0.0),
        Some(l) => {
            let resources = if l.backlog == 0 { 1.0 } else { 1.0 - (f64::from(l.queued) / f64::from(l.backlog)).min(1.0) };
            (resources, if l.uid == 0 { 0.5 } else { 1.0 })
        }
    }
}

/// Checks the service on `port` now.
pub fn check(port: u16, listener: Option<&Listener>) -> Health {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(1);
    let tcp = TcpStream::connect_timeout(&addr, timeout).is_ok();
    let http = if tcp { http_score(&addr, timeout) } else { 0.0 };
    let (resources, security) = from_listener(listener);
    let tcp = if tcp { 1.0 } else { 0.0 };
    let s = score(http, tcp, resources, security);
    Health { port, http, tcp, resources, security, score: s, state: state_of(s) }
}

fn http_score(addr: &SocketAddr, timeout: Duration) -> f64 {
    let Ok(mut c) = TcpStream::connect_timeout(addr, timeout) else { return 0.0 };
    let _ = c.set_read_timeout(Some(timeout));
    let _ = c.set_write_timeout(Some(timeout));
    if c.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return 0.0;
    }
    let mut buf = [0u8; 32];
    let n = c.read(&mut buf).unwrap_or(0);
    let line = String::from_utf8_lossy(&buf[..n]);
    match line.strip_prefix("HTTP/1.").and_then(|r| r.get(2..5)).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if code < 500 => 1.0,
        Some(_) => 0.0,
        None if n > 0 => 0.5,
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_states_as_the_seed_has_them() {
        assert!((score(1.0, 1.0, 1.0, 1.0) - 1.0).abs() < 1e-9);
        assert_eq!(state_of(score(1.0, 1.0, 1.0, 0.5)), State::Healthy); // 0.9
        assert_eq!(state_of(score(0.5, 1.0, 1.0, 0.5)), State::Degraded); // 0.75
        assert_eq!(state_of(score(0.0, 1.0, 1.0, 0.5)), State::Unhealthy); // 0.6
        assert_eq!(state_of(score(0.0, 0.0, 0.0, 0.0)), State::Critical);
        let l = Listener { port: 1, tcp: true, loopback: true, uid: 1000, queued: 64, backlog: 128 };
        assert_eq!(from_listener(Some(&l)), (0.5, 1.0));
        assert_eq!(from_listener(None), (0.0, 0.0));
    }

    #[test]
    fn a_live_http_server_and_a_silent_port() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            // The TCP probe, then the HTTP request.
            for _ in 0..2 {
                let (mut s, _) = server.accept().unwrap();
                let mut b = [0u8; 256];
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
            }
        });
        let l = Listener { port, tcp: true, loopback: true, uid: 1000, queued: 0, backlog: 128 };
        let h = check(port, Some(&l));
        t.join().unwrap();
        assert_eq!((h.http, h.tcp, h.resources, h.security, h.state), (1.0, 1.0, 1.0, 1.0, State::Healthy));
        // Nothing listens there any more.
        let h = check(port, None);
        assert_eq!((h.score, h.state), (0.0, State::Critical));
    }
}

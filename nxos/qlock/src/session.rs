//! Sessions as kept on a node: one 0600 file per live session under
//! /bpi/runtime/qlock-sessions (tmpfs: the keys never reach a disk), the
//! seed's trust levels, and what the bus and the CLI show of a session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

use crate::schedule;

pub const DEFAULT_DIR: &str = "/bpi/runtime/qlock-sessions";
/// The seed's session_timeout_seconds and key_rotation_interval_seconds.
pub const DEFAULT_LIFETIME_S: u32 = 3600;
pub const DEFAULT_REKEY_S: u64 = 900;
/// Ended sessions the daemon still lists (their keys are gone).
const ENDED_KEPT: usize = 256;

/// The seed's TrustLevel, with the minimum trust each asks of the peer.
pub const LEVELS: [(&str, f64); 4] = [("low", 0.3), ("medium", 0.5), ("high", 0.7), ("critical", 0.9)];

/// A level by name, or a number in 0..=1; in millionths (the handshake's unit).
pub fn parse_level(text: &str) -> Result<u32> {
    if let Some((_, min)) = LEVELS.iter().find(|(n, _)| *n == text) {
        return Ok((min * 1e6).round() as u32);
    }
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok((v * 1e6).round() as u32),
        _ => bail!("unknown trust level '{text}': low (0.3), medium (0.5), high (0.7), critical (0.9), or a number from 0 to 1"),
    }
}

/// "high (0.7)", or the number alone when it is not one of the seed's levels.
pub fn level_name(millionths: u32) -> String {
    let v = f64::from(millionths) / 1e6;
    match LEVELS.iter().find(|(_, min)| (min * 1e6).round() as u32 == millionths) {
        Some((n, min)) => format!("{n} ({min})"),
        None => format!("{v}"),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// 32 hex digits.
    pub id: String,
    /// The peer's name in the Meta-RIB, and its node id.
    pub peer: String,
    pub peer_node_id: String,
    pub opener: bool,
    pub level: u32,
    pub created: u64,
    pub expires: u64,
    pub epoch: u32,
    /// When the current epoch's key was made.
    pub keyed_at: u64,
    /// The current epoch's key, hex. Only in the 0600 file, never on the bus or in the ledger.
    pub key: String,
}

/// What the bus, the CLI and the ledger see of a session: never its key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct SessionView {
    pub id: String,
    pub peer: String,
    pub peer_node_id: String,
    /// "opener" or "answerer".
    pub role: String,
    /// e.g. "high (0.7)".
    pub level: String,
    /// "active" or "ended".
    pub state: String,
    pub created: u64,
    pub expires: u64,
    pub epoch: u32,
    pub fingerprint: String,
    /// Why it ended; empty while active.
    pub reason: String,
}

impl Session {
    pub fn key(&self) -> Result<[u8; 32]> {
        let k = hex::decode(&self.key).context("the session file's key is not hex")?;
        k.try_into().map_err(|_| anyhow::anyhow!("the session file's key is not 32 bytes"))
    }

    pub fn view(&self, state: &str, reason: &str) -> SessionView {
        SessionView {
            id: self.id.clone(),
            peer: self.peer.clone(),
            peer_node_id: self.peer_node_id.clone(),
            role: if self.opener { "opener" } else { "answerer" }.into(),
            level: level_name(self.level),
            state: state.into(),
            created: self.created,
            expires: self.expires,
            epoch: self.epoch,
            fingerprint: self.key().map(|k| schedule::fingerprint(&k)).unwrap_or_default(),
            reason: reason.into(),
        }
    }

    /// The ledger's data for a session event: who, which session, the key's fingerprint.
    pub fn record(&self, reason: Option<&str>) -> serde_json::Value {
        let v = self.view("", reason.unwrap_or(""));
        let mut data = serde_json::json!({
            "node_id": self.peer_node_id, "peer": self.peer, "session": self.id, "role": v.role,
            "level": v.level, "epoch": self.epoch, "fingerprint": v.fingerprint, "expires": self.expires,
        });
        if let Some(r) = reason {
            data["reason"] = r.into();
        }
        data
    }
}

/// The live sessions (mirrored one file each) and the last ended ones.
pub struct Table {
    dir: PathBuf,
    pub live: BTreeMap<String, Session>,
    pub ended: Vec<SessionView>,
}

impl Table {
    /// Opens the directory (made 0700) and reads back the sessions a previous run left.
    pub fn open(dir: &Path) -> Result<Table> {
        bpi_support::fsmode::create_dirs(dir, 0o700).with_context(|| format!("creating {}", dir.display()))?;
        let mut live = BTreeMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = bpi_support::fsmode::read_small(&path, 64 * 1024).with_context(|| format!("reading {}", path.display()))?;
            let s: Session = serde_json::from_slice(&bytes).with_context(|| format!("{}: not a session", path.display()))?;
            live.insert(s.id.clone(), s);
        }
        Ok(Table { dir: dir.to_path_buf(), live, ended: Vec::new() })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the session's file (0600, atomically), then takes it into the table.
    pub fn put(&mut self, s: Session) -> Result<()> {
        let path = self.path(&s.id);
        bpi_support::fsmode::write_atomic(&path, &serde_json::to_vec(&s)?, 0o600).with_context(|| format!("writing {}", path.display()))?;
        self.live.insert(s.id.clone(), s);
        Ok(())
    }

    /// Removes the session and its file (its key with it); its view stays among the ended.
    pub fn end(&mut self, id: &str, reason: &str) -> Option<(Session, SessionView)> {
        let s = self.live.remove(id)?;
        let _ = std::fs::remove_file(self.path(id));
        let view = s.view("ended", reason);
        self.ended.push(view.clone());
        if self.ended.len() > ENDED_KEPT {
            self.ended.remove(0);
        }
        Some((s, view))
    }

    pub fn views(&self) -> Vec<SessionView> {
        self.live.values().map(|s| s.view("active", "")).chain(self.ended.iter().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_name_or_number() {
        assert_eq!(parse_level("high").unwrap(), 700_000);
        assert_eq!(parse_level("0.42").unwrap(), 420_000);
        assert_eq!(level_name(700_000), "high (0.7)");
        assert_eq!(level_name(420_000), "0.42");
        for bad in ["extreme", "1.5", "-0.1", "NaN", ""] {
            assert!(parse_level(bad).unwrap_err().to_string().contains("unknown trust level"), "{bad}");
        }
    }

    #[test]
    fn sessions_are_0600_files_read_back_and_removed_at_the_end() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("qlock-sessions");
        let mut t = Table::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let s = Session {
            id: "ab".repeat(16),
            peer: "edge-a".into(),
            peer_node_id: "cd".repeat(32),
            opener: true,
            level: 700_000,
            created: 10,
            expires: 3610,
            epoch: 0,
            keyed_at: 10,
            key: "11".repeat(32),
        };
        t.put(s.clone()).unwrap();
        let file = dir.join(format!("{}.json", s.id));
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Table::open(&dir).unwrap();
        assert_eq!(again.live.get(&s.id), Some(&s));
        let view = s.view("active", "");
        assert_eq!(view.fingerprint, schedule::fingerprint(&[0x11; 32]));
        assert!(!serde_json::to_string(&view).unwrap().contains(&s.key));
        assert!(!s.record(Some("expired")).to_string().contains(&s.key));
        let (_, ended) = t.end(&s.id, "expired").unwrap();
        assert_eq!((ended.state.as_str(), ended.reason.as_str()), ("ended", "expired"));
        assert!(!file.exists());
        assert_eq!(t.views().len(), 1);
        assert!(t.end(&s.id, "again").is_none());
    }
}

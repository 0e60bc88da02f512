//! Verifying a store as an auditor would: every record's checksum, height,
//! chain link and hash, then the Merkle root against the newest signed
//! checkpoint. The report names the first bad height and what is wrong.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::store::{self, CHECKPOINT_FILE};

#[derive(Debug, Serialize)]
pub struct BadBlock {
    pub height: u64,
    pub offset: u64,
    pub what: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    pub present: bool,
    pub ok: bool,
    pub size: Option<u64>,
    pub verifier: Option<String>,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub store: String,
    pub blocks: u64,
    pub root: String,
    pub first_bad: Option<BadBlock>,
    pub checkpoint: CheckpointStatus,
    pub seconds: f64,
}

/// Verifies the store in `dir`; `vkey` overrides the store's own verifier key
/// (an auditor brings the key they trust); `witness` is the checkpoint copy
/// kept beside the signing key (store::witness_path), checked when present.
pub fn verify(dir: &Path, vkey: Option<&Path>, witness: Option<&Path>) -> Result<Report> {
    let started = Instant::now();
    let (log, problem) = store::open_read(dir)?;
    let present = dir.join(CHECKPOINT_FILE).exists();
    let checkpoint = if !present {
        CheckpointStatus { present, ok: true, size: None, verifier: None, problem: None }
    } else {
        match store::load_verifier(dir, vkey) {
            Err(e) => CheckpointStatus { present, ok: false, size: None, verifier: None, problem: Some(e.to_string()) },
            Ok(v) => {
                let verifier = Some(v.to_vkey());
                match store::check_checkpoint(dir, &v, &log, problem.as_ref().map(|p| p.height)) {
                    Ok(cp) => CheckpointStatus { present, ok: true, size: cp.map(|c| c.size), verifier, problem: None },
                    Err(why) => CheckpointStatus { present, ok: false, size: None, verifier, problem: Some(why) },
                }
            }
        }
    };
    let checkpoint = match witness.filter(|w| w.exists()) {
        None => checkpoint,
        Some(w) => match store::load_verifier(dir, vkey).map_err(|e| e.to_string()).and_then(|v| store::check_witness(w, &v, &log)) {
            Ok(_) => checkpoint,
            Err(why) => CheckpointStatus { ok: false, problem: Some(why), ..checkpoint },
        },
    };
    let first_bad = problem.map(|p| BadBlock { height: p.height, offset: p.offset, what: p.what });
    Ok(Report {
        ok: first_bad.is_none() && checkpoint.ok,
        store: dir.display().to_string(),
        blocks: log.len(),
        root: hex::encode(log.index.root()),
        first_bad,
        checkpoint,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Report {
    /// One paragraph for people.
    pub fn render(&self) -> String {
        let mut s = format!("{}: {} blocks, Merkle root {}\n", self.store, self.blocks, self.root);
        match &self.first_bad {
            None => s.push_str("chain: every block's checksum, height, link and hash verify\n"),
            Some(b) => s.push_str(&format!("chain: BAD at height {} (byte {}): {}\n", b.height, b.offset, b.what)),
        }
        let c = &self.checkpoint;
        match (c.present, c.ok) {
            (false, _) => s.push_str("checkpoint: none yet (the writer signs one within a second of appending)\n"),
            (true, true) => s.push_str(&format!(
                "checkpoint: signed at size {} by {}, matches the log\n",
                c.size.unwrap_or(0),
                c.verifier.as_deref().unwrap_or("?")
            )),
            (true, false) => s.push_str(&format!("checkpoint: BAD: {}\n", c.problem.as_deref().unwrap_or("?"))),
        }
        s.push_str(if self.ok { "verified\n" } else { "NOT verified\n" });
        s
    }
}

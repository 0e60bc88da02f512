//! The state file: which steps of an install are done, so a re-run after a
//! kill finishes the job.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::Plan;

/// Progress of one install, kept so a re-run after a kill finishes the job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub image_sha256: String,
    pub target: PathBuf,
    pub target_size: u64,
    pub done: Vec<String>,
    /// How far write-body got (bytes from its start, synced).
    pub body_written: u64,
}

/// The state file of an install of anything onto `target`.
pub fn state_path(state_dir: &Path, target: &Path) -> PathBuf {
    let key = hex::encode(&Sha256::digest(target.as_os_str().as_encoded_bytes())[..8]);
    state_dir.join(format!("install-{key}.json"))
}

/// The recorded state, if it belongs to this image and disk.
pub fn load_state(path: &Path, plan: &Plan) -> Option<State> {
    let s: State = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (s.image_sha256 == plan.image_sha256 && s.target == plan.target.path && s.target_size == plan.target.size).then_some(s)
}

pub(super) fn save_state(path: &Path, s: &State) -> Result<()> {
    if let Some(dir) = path.parent() {
        bpi_support::fsmode::create_dirs(dir, 0o700)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Root's record of an install in progress: made 0600, never wider.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(s)?).with_context(|| format!("writing {}", tmp.display()))?;
    }
    File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

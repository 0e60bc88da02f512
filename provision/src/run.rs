//! What `bpi-os provision apply` does, and so what first boot does
//! (bpi-provision.service, before NetworkManager, sshd and the DRX units):
//! make missing host keys, find the provisioning source, check all of it,
//! then apply it once per instance-id, or refuse all of it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use bpi_support::record::Recorder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apply::{self, Target};
use crate::check::{self, Checked};
use crate::finding::Finding;
use crate::hostkeys::{self, HostKey};
use crate::plan::{self, Action};
use crate::source::{self, Documents};

/// Where the applied instance is remembered (the data partition).
pub const STATE_FILE: &str = "/var/lib/bpi-os/provision/state.json";
/// This boot's outcome, for `bpi-os status` and `provision show` (readable
/// by every user: /run/bpi-os is root's only, it holds the store's key).
pub const REPORT_FILE: &str = "/run/bpi-provision.json";
pub const SSH_DIR: &str = "/etc/ssh";
const MOUNT_POINT: &str = "/run/bpi-os/cidata";
pub const DOCS_HINT: &str = "/usr/share/doc/bpi-os/docs/provisioning.md";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Applied now.
    Applied,
    /// This instance-id was applied on an earlier boot: nothing was done.
    AlreadyApplied,
    /// Errors in the documents: nothing of them was applied.
    Refused,
    /// An action failed part way; the next boot (or `provision apply`) finishes it.
    Failed,
    /// No source at all.
    NoSource,
    /// --dry-run: what would be done.
    DryRun,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    pub source: Option<String>,
    pub instance_id: Option<String>,
    pub errors: Vec<Finding>,
    pub notes: Vec<Finding>,
    /// Sources found but not used (a lower-priority one).
    pub shadowed: Vec<String>,
    pub actions: Vec<String>,
    pub host_keys: Vec<HostKey>,
    pub host_keys_made: Vec<String>,
    pub message: String,
    /// Seconds each phase took (host keys, finding the source, checking, applying).
    #[serde(default)]
    pub seconds: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub instance_id: String,
    pub source: String,
    pub applied_at: u64,
    pub actions: Vec<String>,
}

pub fn load_state(path: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn load_report(path: &Path) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub struct Options {
    pub dry_run: bool,
    /// Apply even when this instance-id was applied before.
    pub again: bool,
    /// Read only this user-data file or directory instead of looking for sources.
    pub from: Option<PathBuf>,
    pub state_file: PathBuf,
    pub report_file: PathBuf,
    pub ssh_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dry_run: false,
            again: false,
            from: None,
            state_file: STATE_FILE.into(),
            report_file: REPORT_FILE.into(),
            ssh_dir: SSH_DIR.into(),
        }
    }
}

/// The sources on this machine, best first; the first one is used.
pub fn find_sources() -> Result<(Option<Documents>, Vec<String>)> {
    let mut found = Vec::new();
    // In bpi-provision.service, systemd hands the unit its credentials
    // (LoadCredential=); run by hand, PID 1's own store is read.
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(source::SYSTEM_CREDENTIALS));
    let d = Documents::from_dir(&creds, source::CREDENTIAL_PREFIX, "systemd credentials (SMBIOS type 11 or kernel command line)", "credential:bpi.provision.")?;
    if !d.is_empty() {
        found.push(d);
    }
    if let Some(dev) = source::cidata_device() {
        found.push(source::read_cidata(&dev, Path::new(MOUNT_POINT))?);
    }
    let part = Path::new("/dev/disk/by-partlabel").join(bpi_formats::layout::PROVISION_PARTITION);
    if part.exists() {
        let bytes = read_partition_head(&part)?;
        if let Some(d) = source::decode_partition(&bytes, &format!("the installer's provisioning partition {}", part.display()))? {
            found.push(d);
        }
    }
    let shadowed = found.iter().skip(1).map(|d| d.source.clone()).collect();
    Ok((found.into_iter().next(), shadowed))
}

fn read_partition_head(p: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(p)?.take(source::MAX_TOTAL * 2).read_to_end(&mut buf)?;
    Ok(buf)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the whole procedure; the report says what happened. An `Err` only
/// for trouble outside the documents (a drive that will not mount).
pub fn run(opts: &Options, recorder: &dyn Recorder, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let mut report = Report {
        outcome: Outcome::NoSource,
        source: None,
        instance_id: None,
        errors: Vec::new(),
        notes: Vec::new(),
        shadowed: Vec::new(),
        actions: Vec::new(),
        host_keys: Vec::new(),
        host_keys_made: Vec::new(),
        message: String::new(),
        seconds: Vec::new(),
    };
    let mut t = std::time::Instant::now();
    let mut lap = |report: &mut Report, name: &str| {
        report.seconds.push((name.to_string(), t.elapsed().as_secs_f64()));
        t = std::time::Instant::now();
    };
    if !opts.dry_run {
        report.host_keys_made = hostkeys::ensure(&opts.ssh_dir)?;
    }
    lap(&mut report, "host keys");
    let docs = match &opts.from {
        Some(dir) => Some(Documents::from_path(dir)?),
        None => {
            let (docs, shadowed) = find_sources()?;
            report.shadowed = shadowed;
            docs
        }
    };
    lap(&mut report, "find and read the source");
    match docs {
        None => {
            report.message = format!(
                "no provisioning found (no cidata drive, no bpi.provision.* credentials, nothing from the installer): every NIC uses DHCP and SSH has no authorized key. Provision with a cloud-init drive or credentials: see {DOCS_HINT}"
            );
        }
        Some(docs) => {
            let c = check::check(&docs);
            lap(&mut report, "check");
            decide(opts, &c, recorder, &mut report, say);
            lap(&mut report, "apply and record");
        }
    }
    report.host_keys = hostkeys::fingerprints(&opts.ssh_dir)?;
    if !opts.dry_run {
        if let Some(dir) = opts.report_file.parent() {
            bpi_support::fsmode::create_dirs(dir, 0o755)?;
        }
        apply::write_atomic(&opts.report_file, &serde_json::to_vec_pretty(&report)?, 0o644)?;
    }
    Ok(report)
}

fn decide(opts: &Options, c: &Checked, recorder: &dyn Recorder, report: &mut Report, say: &mut dyn FnMut(&str)) {
    report.source = Some(c.source.clone());
    report.instance_id = Some(c.instance_id.clone());
    report.errors = c.errors.clone();
    report.notes = c.notes.clone();
    for n in &c.notes {
        say(&format!("note: {n}"));
    }
    if !c.ok() {
        report.outcome = Outcome::Refused;
        report.message = format!(
            "provisioning from {} refused: nothing of it was applied; sshd and the DRX services stay stopped until it is fixed",
            c.source
        );
        if !opts.dry_run {
            let errors: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
            let line = recorder.record(
                "settings",
                "provision-refused",
                &json!({"key": "provision", "value": {"result": "refused", "source": c.source, "instance_id": c.instance_id, "errors": errors}}),
            );
            say(&format!("ledger: {line}"));
        }
        return;
    }
    let actions = plan::plan(c);
    report.actions = actions.iter().map(Action::describe).collect();
    if opts.dry_run {
        report.outcome = Outcome::DryRun;
        report.message = format!("{} change(s) would be made for instance {}", actions.len(), c.instance_id);
        return;
    }
    if !opts.again && load_state(&opts.state_file).is_some_and(|s| s.instance_id == c.instance_id) {
        report.outcome = Outcome::AlreadyApplied;
        report.actions.clear();
        report.message = format!("instance {} was applied on an earlier boot; nothing to do", c.instance_id);
        return;
    }
    let target = Target { root: "/".into() };
    for a in &actions {
        match apply::apply(&target, a, recorder) {
            Ok(line) => say(&format!("{}: {line}", a.describe())),
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.message = format!("{}: {e:#}; the next boot or `bpi-os provision apply` finishes it", a.describe());
                recorder.record(
                    "settings",
                    "provision-failed",
                    &json!({"key": "provision", "value": {"result": "failed", "instance_id": c.instance_id, "error": format!("{e:#}")}}),
                );
                return;
            }
        }
    }
    let state = State { instance_id: c.instance_id.clone(), source: c.source.clone(), applied_at: now(), actions: report.actions.clone() };
    let saved = serde_json::to_vec_pretty(&state).map_err(anyhow::Error::from).and_then(|b| {
        if let Some(d) = opts.state_file.parent() {
            bpi_support::fsmode::create_dirs(d, 0o755)?;
        }
        apply::write_atomic(&opts.state_file, &b, 0o644)
    });
    if let Err(e) = saved {
        report.outcome = Outcome::Failed;
        report.message = format!("applied, but the state could not be saved ({e:#}); the next boot applies it again");
        return;
    }
    recorder.record(
        "settings",
        "provision-applied",
        &json!({"key": "provision", "value": {"result": "applied", "source": c.source, "instance_id": c.instance_id, "changes": actions.len()}}),
    );
    report.outcome = Outcome::Applied;
    report.message = format!("instance {} from {} applied: {} change(s)", c.instance_id, c.source, actions.len());
}

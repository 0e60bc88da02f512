//! The encrypted store: a LUKS2 volume on the `bpi-store` partition, mounted
//! at /bpi/data/encrypted. Its key is a random recovery key (always enrolled,
//! shown or written once) and, where there is a TPM2, a key sealed to the TPM
//! against PCR 7 (configurable), so the volume unlocks at boot unattended.
//!
//! `init` plans (pure, from the facts) then applies; `unlock` opens, formats an
//! empty volume on its first unlock, and mounts it, moving into it whatever
//! was in the plain directory before (the ledger's key, say).

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::{bail, Context, Result};
use bpi_support::{progress, Cmd};
use serde::Serialize;

use bpi_formats::layout::{self, Home};

/// The store partition's GPT type (bpi-os's own; also in the initrd's repart.d).
pub const PART_TYPE: &str = "c3bdfd8e-9a16-4e6d-8304-f2985570092d";
pub const PART_LABEL: &str = "bpi-store";
pub const DEFAULT_DEVICE: &str = "/dev/disk/by-partlabel/bpi-store";
pub const MAPPER: &str = "bpi-store";
pub const MOUNT: &str = "/bpi/data/encrypted";
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
pub const SIZE: u64 = 256 << 20;
const CRYPTSETUP_HELPER: &str = "/usr/lib/systemd/systemd-cryptsetup";
/// A signed UKI's PCR public key (its `.pcrpkey`), put here by the initrd
/// (bpi-pcr-signature.service) with the signed policy beside it
/// (tpm2-pcr-signature.json), where systemd-cryptsetup reads it at unlock.
pub const SIGNED_PCR_PUBLIC_KEY: &str = "/run/systemd/tpm2-pcr-public-key.pem";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Tpm2 {
    /// Use a TPM2 when there is one.
    Auto,
    Yes,
    No,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub device: PathBuf,
    pub tpm2: Tpm2,
    /// PCRs the TPM2 key is sealed against, as systemd-cryptenroll takes them ("7", "0+7").
    pub pcrs: String,
    /// Write the recovery key here (created, mode 0600) instead of showing it.
    pub recovery_key_file: Option<PathBuf>,
    /// A passphrase the operator typed, enrolled beside the recovery key.
    pub passphrase: Option<String>,
}

/// What `init` will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    WriteRecoveryKey { path: PathBuf },
    LuksFormat { device: PathBuf },
    EnrollPassphrase { device: PathBuf },
    /// With `pcr_public_key`: also a signed PCR 11 policy, so any UKI that
    /// key signed unlocks the store (updates do not reseal it).
    EnrollTpm2 { device: PathBuf, pcrs: String, pcr_public_key: Option<PathBuf> },
    ShowRecoveryKey,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::WriteRecoveryKey { path } => write!(f, "write a new random recovery key to {} (mode 0600)", path.display()),
            Step::LuksFormat { device } => write!(f, "format {} as LUKS2, keyed by the recovery key", device.display()),
            Step::EnrollPassphrase { device } => write!(f, "enroll the operator's passphrase in {}", device.display()),
            Step::EnrollTpm2 { device, pcrs, pcr_public_key: None } => {
                write!(f, "seal a second key to the TPM2 against PCR {pcrs} and enroll it in {}", device.display())
            }
            Step::EnrollTpm2 { device, pcrs, pcr_public_key: Some(k) } => write!(
                f,
                "seal a second key to the TPM2 against PCR {pcrs} and PCR 11 as signed by the key in {} (the running UKI's), and enroll it in {}",
                k.display(),
                device.display()
            ),
            Step::ShowRecoveryKey => write!(f, "show the recovery key once"),
        }
    }
}

/// When `bpi-os store init` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Asked for by an operator.
    Now,
    /// By bpi-store-init.service on first boot: nothing to do when the store
    /// exists or there is no TPM2; the recovery key goes to a file under /run
    /// and the console.
    FirstBoot,
}

/// Where first boot keeps the recovery key until the operator copies it.
pub const FIRST_BOOT_KEY: &str = "/run/bpi-os/store-recovery-key";

/// What `bpi-os store init` comes to before anything is changed.
pub enum InitPlan {
    /// First boot, and the store exists.
    Exists,
    /// First boot without a TPM2: no store is made (a person would have to unlock it).
    NoTpm,
    /// The steps, with the options they were planned for.
    Steps(InitOptions, Vec<Step>),
}

/// Plans `bpi-os store init`; at first boot, waits up to 30 s for the TPM2's driver.
pub fn init_plan(mut opts: InitOptions, when: When) -> Result<InitPlan> {
    let holds = Holds::of(&opts.device);
    if when == When::FirstBoot && holds == Holds::Luks {
        return Ok(InitPlan::Exists);
    }
    let tpm = tpm2(std::time::Duration::from_secs(if when == When::FirstBoot { 30 } else { 0 }));
    if when == When::FirstBoot {
        if tpm == Tpm::Absent {
            return Ok(InitPlan::NoTpm);
        }
        if opts.recovery_key_file.is_none() {
            opts.recovery_key_file = Some(PathBuf::from(FIRST_BOOT_KEY));
        }
    }
    let steps = plan(&opts, tpm, holds, running_pcr_public_key())?;
    Ok(InitPlan::Steps(opts, steps))
}

/// Makes the store as planned and opens it, as the next boot would. The
/// recovery key to show once, if it went to no file.
pub fn init_apply(opts: &InitOptions, steps: &[Step]) -> Result<Option<String>> {
    let first_boot_key = Path::new(FIRST_BOOT_KEY);
    if opts.recovery_key_file.as_deref() == Some(first_boot_key) {
        bpi_support::fsmode::create_dirs(first_boot_key.parent().expect("a file under /run"), 0o700)?;
    }
    let pass = opts.passphrase.as_deref().filter(|p| !p.is_empty());
    let shown = apply(steps, pass)?;
    let enrolled = steps.iter().any(|s| matches!(s, Step::EnrollTpm2 { .. }));
    let key = match (enrolled, &opts.recovery_key_file, pass) {
        (true, _, _) => Key::Tpm2,
        (false, Some(f), _) => Key::File(f),
        (false, None, Some(p)) => Key::Passphrase(p),
        (false, None, None) => bail!("the store has no key this command can use to open it"),
    };
    unlock(&opts.device, key)?;
    Ok(shown)
}

/// Whether this machine has a TPM2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tpm {
    Present,
    Absent,
}

/// What the store's device holds before it is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    Nothing,
    Luks,
}

impl Holds {
    pub fn of(device: &Path) -> Holds {
        if is_luks(device) {
            Holds::Luks
        } else {
            Holds::Nothing
        }
    }
}

/// The running UKI's PCR public key, when it is a signed one.
pub fn running_pcr_public_key() -> Option<&'static Path> {
    let k = Path::new(SIGNED_PCR_PUBLIC_KEY);
    k.exists().then_some(k)
}

/// The plan for `opts`, given the TPM2, what the device holds and the
/// running UKI's PCR public key, if it carries one.
pub fn plan(opts: &InitOptions, tpm: Tpm, holds: Holds, pcr_public_key: Option<&Path>) -> Result<Vec<Step>> {
    let tpm_present = tpm == Tpm::Present;
    if holds == Holds::Luks {
        bail!("{} already holds a LUKS volume: the store exists (`bpi-os store status`)", opts.device.display());
    }
    let tpm = match opts.tpm2 {
        Tpm2::Auto => tpm_present,
        Tpm2::Yes if !tpm_present => bail!("--tpm2 yes, but there is no TPM2 ({TPM_DEVICE} is missing)"),
        Tpm2::Yes => true,
        Tpm2::No => false,
    };
    if !tpm && opts.recovery_key_file.is_none() && opts.passphrase.is_none() {
        bail!(
            "without a TPM2 a person unlocks the store: pass --recovery-key-file PATH to keep its recovery key, or --passphrase to set one{}",
            if tpm_present { "" } else { " (there is no TPM2 here)" }
        );
    }
    if !opts.pcrs.split('+').all(|p| p.parse::<u8>().is_ok_and(|n| n < 24)) {
        bail!("--tpm2-pcrs {:?} is not a '+'-separated list of PCRs 0-23", opts.pcrs);
    }
    let mut steps = Vec::new();
    // The key is kept before the volume exists, so no crash can leave a volume nobody can open.
    if let Some(path) = &opts.recovery_key_file {
        steps.push(Step::WriteRecoveryKey { path: path.clone() });
    }
    steps.push(Step::LuksFormat { device: opts.device.clone() });
    if opts.passphrase.is_some() {
        steps.push(Step::EnrollPassphrase { device: opts.device.clone() });
    }
    if tpm {
        steps.push(Step::EnrollTpm2 { device: opts.device.clone(), pcrs: opts.pcrs.clone(), pcr_public_key: pcr_public_key.map(Path::to_path_buf) });
    }
    if opts.recovery_key_file.is_none() {
        steps.push(Step::ShowRecoveryKey);
    }
    Ok(steps)
}

/// Whether this machine has a TPM2, waiting (up to `wait`) for its driver
/// when the firmware announces one (ACPI MSFT0101) but /dev/tpmrm0 is not
/// there yet: early in boot the module may still be loading.
pub fn tpm2(wait: std::time::Duration) -> Tpm {
    let announced = ["/sys/bus/acpi/devices", "/sys/bus/platform/devices"].iter().any(|d| {
        std::fs::read_dir(d)
            .map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().starts_with("MSFT0101")))
            .unwrap_or(false)
    });
    let t = std::time::Instant::now();
    loop {
        if Path::new(TPM_DEVICE).exists() {
            return Tpm::Present;
        }
        if !announced || t.elapsed() >= wait {
            return Tpm::Absent;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// 256 random bits in the modhex groups systemd uses for recovery keys.
pub fn new_recovery_key() -> Result<String> {
    const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw)).context("reading /dev/urandom")?;
    let chars: Vec<char> =
        raw.iter().flat_map(|b| [MODHEX[(b >> 4) as usize] as char, MODHEX[(b & 15) as usize] as char]).collect();
    Ok(chars.chunks(8).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-"))
}

/// Carries out `steps`; returns the recovery key when a step says to show it.
pub fn apply(steps: &[Step], passphrase: Option<&str>) -> Result<Option<String>> {
    let key = new_recovery_key()?;
    let mut shown = None;
    for step in steps {
        progress::log(&format!("store: {step}"));
        match step {
            Step::WriteRecoveryKey { path } => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating the recovery key file {} (it must not exist yet)", path.display()))?;
                // No newline: the file is a key file for `cryptsetup open --key-file`.
                f.write_all(key.as_bytes())?;
                f.sync_all()?;
            }
            Step::LuksFormat { device } => {
                // A 256-bit random key gains nothing from key stretching; a
                // memory-hard KDF would only make unlocking slow on small machines.
                Cmd::new("cryptsetup")
                    .args(["luksFormat", "--type", "luks2", "--batch-mode", "--label", PART_LABEL])
                    .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-"])
                    .arg(device)
                    .stdin_bytes(key.as_bytes().to_vec())
                    .run()?;
            }
            Step::EnrollPassphrase { device } => {
                let pass = passphrase.context("no passphrase was given")?;
                // Both keys as files in a private tmpfs directory, removed at once:
                // luksAddKey takes the new key from a file and the old from stdin.
                let dir = tempfile::Builder::new().prefix("bpi-store-").tempdir_in(private_run()?)?;
                let new = dir.path().join("new");
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&new)?.write_all(pass.as_bytes())?;
                let added = Cmd::new("cryptsetup")
                    .args(["luksAddKey", "--batch-mode", "--key-file", "-", "--new-keyfile"])
                    .arg(&new)
                    .arg(device)
                    .stdin_bytes(key.as_bytes().to_vec())
                    .run();
                drop(dir);
                added?;
            }
            Step::EnrollTpm2 { device, pcrs, pcr_public_key } => {
                let mut enroll = Cmd::new("systemd-cryptenroll").arg("--tpm2-device=auto").arg(format!("--tpm2-pcrs={pcrs}"));
                if let Some(k) = pcr_public_key {
                    enroll = enroll.arg(format!("--tpm2-public-key={}", k.display())).arg("--tpm2-public-key-pcrs=11");
                }
                enroll
                    .arg(device)
                    .env("PASSWORD", &key)
                    .run()?;
            }
            Step::ShowRecoveryKey => shown = Some(key.clone()),
        }
    }
    Ok(shown)
}

/// A root-only directory on tmpfs for short-lived key files.
fn private_run() -> Result<PathBuf> {
    let dir = PathBuf::from("/run/bpi-os/keys");
    bpi_support::fsmode::create_dirs(&dir, 0o700)?;
    Ok(dir)
}

pub fn is_luks(device: &Path) -> bool {
    Cmd::new("cryptsetup").arg("isLuks").arg(device).run().is_ok()
}

/// The LUKS2 token types on `device` (e.g. "systemd-tpm2").
pub fn tokens(device: &Path) -> Vec<String> {
    let Ok(json) = Cmd::new("cryptsetup").args(["luksDump", "--dump-json-metadata"]).arg(device).output() else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let mut t: Vec<String> = v["tokens"]
        .as_object()
        .map(|o| o.values().filter_map(|t| t["type"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    t.sort();
    t
}

/// What `bpi-os status` and `store status` say about the store.
#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    pub partition: Option<String>,
    pub initialized: bool,
    pub tpm2_present: bool,
    pub tpm2_enrolled: bool,
    pub unlocked: bool,
    pub mounted: bool,
    pub note: String,
}

pub fn status(device: &Path) -> Status {
    let partition = std::fs::canonicalize(device).ok().map(|p| p.display().to_string());
    let initialized = partition.is_some() && is_luks(device);
    let tpm2_present = Path::new(TPM_DEVICE).exists();
    let tpm2_enrolled = initialized && tokens(device).iter().any(|t| t == "systemd-tpm2");
    let unlocked = Path::new("/dev/mapper").join(MAPPER).exists();
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(MOUNT));
    let note = match (&partition, initialized, mounted) {
        (None, _, _) => "no store partition on this disk".to_string(),
        (Some(_), false, _) if !tpm2_present => {
            "no encrypted store: there is no TPM2; create one with `bpi-os store init --recovery-key-file PATH`".to_string()
        }
        (Some(_), false, _) => "no encrypted store yet; `bpi-os store init` creates it".to_string(),
        (Some(_), true, true) => format!("encrypted store unlocked and mounted at {MOUNT}"),
        (Some(_), true, false) if tpm2_enrolled => {
            "encrypted store locked: the TPM2 did not unseal its key (firmware or Secure Boot changed?); see docs/install.md on resealing".to_string()
        }
        (Some(_), true, false) => "encrypted store locked: unlock it with `bpi-os store unlock --recovery-key-file PATH`".to_string(),
    };
    Status { partition, initialized, tpm2_present, tpm2_enrolled, unlocked, mounted, note }
}

/// What opens the store.
pub enum Key<'a> {
    Tpm2,
    /// A file holding the recovery key (or any enrolled key).
    File(&'a Path),
    Passphrase(&'a str),
}

/// Opens the store (with the TPM2, a key file or a passphrase), makes
/// its file system on first use, and mounts it at /bpi/data/encrypted.
pub fn unlock(device: &Path, key: Key<'_>) -> Result<()> {
    let mapped = Path::new("/dev/mapper").join(MAPPER);
    if !mapped.exists() {
        let key_file = match key {
            Key::Tpm2 => None,
            Key::File(k) => Some(k),
            Key::Passphrase(p) => {
                Cmd::new("cryptsetup")
                    .args(["open", "--key-file", "-"])
                    .arg(device)
                    .arg(MAPPER)
                    .stdin_bytes(p.as_bytes().to_vec())
                    .run()
                    .context("the passphrase does not open the store")?;
                Some(Path::new(""))
            }
        };
        match key_file {
            Some(k) if k.as_os_str().is_empty() => {}
            Some(k) => Cmd::new("cryptsetup").arg("open").arg("--key-file").arg(k).arg(device).arg(MAPPER).run()?,
            None if tpm2(std::time::Duration::from_secs(30)) == Tpm::Absent => {
                return Err(bpi_support::exit::Failure::NeedsPerson(format!(
                    "no TPM2 appeared ({TPM_DEVICE}); unlock with `bpi-os store unlock --recovery-key-file PATH`"
                ))
                .into())
            }
            None => Cmd::new(CRYPTSETUP_HELPER)
                .args(["attach", MAPPER])
                .arg(device)
                .args(["-", "tpm2-device=auto,headless=true"])
                .run()
                .context(
                    "the TPM2 would not unseal the store's key: the boot state it was sealed to changed (Secure Boot turned off, other keys, \
                     another boot loader or firmware); open it with `bpi-os store unlock --recovery-key-file PATH` (docs/install.md)",
                )?,
        }
    }
    if status(device).mounted {
        return Ok(());
    }
    let fresh = Cmd::new("blkid").arg("-p").arg(&mapped).run().is_err();
    if fresh {
        Cmd::new("mkfs.ext4").args(["-q", "-L", "bpi-encrypted"]).arg(&mapped).run()?;
    }
    let mount = Path::new(MOUNT);
    // Whatever was kept in the plain directory moves into the store, then the
    // plain copies go: secrets must not stay readable beside the store.
    let staging = Path::new("/run/bpi-os/store-staging");
    bpi_support::fsmode::create_dirs(staging, 0o700)?;
    Cmd::new("mount").arg(&mapped).arg(staging).run()?;
    let moved = move_contents(mount, staging);
    Cmd::new("umount").arg(staging).run()?;
    moved?;
    Cmd::new("mount").arg(&mapped).arg(mount).run()?;
    std::fs::set_permissions(mount, std::fs::Permissions::from_mode(0o700))?;
    // The layout's directories under the store, on the store.
    let inside: Vec<layout::Step> =
        layout::plan(Path::new("/"), &[Home::Data])?.into_iter().filter(|s| s.path().starts_with(mount)).collect();
    layout::apply(&inside)?;
    Ok(())
}

fn move_contents(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if dest.exists() {
            continue;
        }
        Cmd::new("cp").args(["-a", "--"]).arg(e.path()).arg(&dest).run()?;
    }
    Cmd::new("sync").run()?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Unmounts and closes the store.
pub fn lock() -> Result<()> {
    if status(Path::new(DEFAULT_DEVICE)).mounted {
        Cmd::new("umount").arg(MOUNT).run()?;
    }
    if Path::new("/dev/mapper").join(MAPPER).exists() {
        Cmd::new("cryptsetup").arg("close").arg(MAPPER).run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(tpm2: Tpm2, file: bool) -> InitOptions {
        InitOptions {
            device: "/dev/vdb4".into(),
            tpm2,
            pcrs: "7".into(),
            recovery_key_file: file.then(|| "/root/rk".into()),
            passphrase: None,
        }
    }

    #[test]
    fn plans_follow_the_tpm_and_the_operators_choice() {
        let with_tpm = plan(&opts(Tpm2::Auto, false), Tpm::Present, Holds::Nothing, None).unwrap();
        assert_eq!(with_tpm.len(), 3);
        assert!(matches!(with_tpm[1], Step::EnrollTpm2 { .. }));
        assert_eq!(with_tpm[2], Step::ShowRecoveryKey);
        let mut with_pass = opts(Tpm2::No, false);
        with_pass.passphrase = Some("correct horse".into());
        let p = plan(&with_pass, Tpm::Present, Holds::Nothing, None).unwrap();
        assert_eq!(p[1], Step::EnrollPassphrase { device: "/dev/vdb4".into() });
        assert_eq!(p.last(), Some(&Step::ShowRecoveryKey));
        let no_tpm = plan(&opts(Tpm2::Auto, false), Tpm::Absent, Holds::Nothing, None).unwrap_err().to_string();
        assert!(no_tpm.contains("--recovery-key-file") && no_tpm.contains("no TPM2 here"), "{no_tpm}");
        let file = plan(&opts(Tpm2::Auto, true), Tpm::Absent, Holds::Nothing, None).unwrap();
        assert_eq!(file[0], Step::WriteRecoveryKey { path: "/root/rk".into() });
        assert_eq!(file.len(), 2);
        assert!(plan(&opts(Tpm2::Yes, true), Tpm::Absent, Holds::Nothing, None).unwrap_err().to_string().contains("no TPM2"));
        let off = plan(&opts(Tpm2::No, true), Tpm::Present, Holds::Nothing, None).unwrap();
        assert!(!off.iter().any(|s| matches!(s, Step::EnrollTpm2 { .. })));
        assert!(plan(&opts(Tpm2::Auto, true), Tpm::Present, Holds::Luks, None).unwrap_err().to_string().contains("already holds"));
        let mut bad = opts(Tpm2::Auto, true);
        bad.pcrs = "7+x".into();
        assert!(plan(&bad, Tpm::Present, Holds::Nothing, None).is_err());
    }

    #[test]
    fn a_signed_uki_adds_its_pcr_11_policy_to_the_seal() {
        let key = Path::new(SIGNED_PCR_PUBLIC_KEY);
        let p = plan(&opts(Tpm2::Auto, false), Tpm::Present, Holds::Nothing, Some(key)).unwrap();
        assert_eq!(p[1], Step::EnrollTpm2 { device: "/dev/vdb4".into(), pcrs: "7".into(), pcr_public_key: Some(key.into()) });
        assert!(p[1].to_string().contains("PCR 7 and PCR 11 as signed by the key in /run/systemd/tpm2-pcr-public-key.pem"), "{}", p[1]);
        let unsigned = plan(&opts(Tpm2::Auto, false), Tpm::Present, Holds::Nothing, None).unwrap();
        assert!(matches!(&unsigned[1], Step::EnrollTpm2 { pcr_public_key: None, .. }));
        // No TPM2 in the plan: no seal, signed or not.
        let off = plan(&opts(Tpm2::No, true), Tpm::Present, Holds::Nothing, Some(key)).unwrap();
        assert!(!off.iter().any(|s| matches!(s, Step::EnrollTpm2 { .. })));
    }

    #[test]
    fn recovery_keys_look_like_systemds() {
        let k = new_recovery_key().unwrap();
        assert_eq!(k.len(), 64 + 7);
        assert!(k.split('-').all(|g| g.len() == 8 && g.bytes().all(|b| b"cbdefghijklnrtuv".contains(&b))));
        assert_ne!(k, new_recovery_key().unwrap());
    }
}

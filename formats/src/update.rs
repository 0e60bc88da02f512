//! An update bundle's metadata: one signed document naming the version, when
//! it stops being valid, and every file's role, size and sha256. It is the
//! TUF "targets" role folded into one signed note (C2SP signed-note form,
//! Ed25519), and each check below answers one of the attacks TUF names:
//! arbitrary software (signature, checked by the caller), rollback (version),
//! freeze (expiry), mix-and-match (one document lists every file), endless
//! data (sizes). The directory also has a SHA256SUMS, as systemd-sysupdate's
//! layout has; the client does not trust it.

use serde::{Deserialize, Serialize};

use crate::slots::{ROOT_SLOT_SIZE, VERITY_SLOT_SIZE};

/// The signed metadata's file name in a bundle directory (or under a URL).
pub const METADATA: &str = "bpi-os.update";
/// The most a metadata note may be.
pub const METADATA_MAX: u64 = 64 << 10;
pub const FORMAT: u32 = 1;
/// The largest UKI a bundle may carry (the ESP holds three).
pub const UKI_MAX: u64 = 128 << 20;
/// Where an image carries the public keys it trusts for updates (signed-note
/// verifier keys, one per `*.pub` file); an operator adds theirs under /etc.
pub const KEY_DIRS: [&str; 2] = ["/usr/lib/bpi-os/update-keys", "/etc/bpi-os/update-keys"];
/// The node's update source (one line: an http(s):// URL or a directory),
/// written by the operator or by provisioning (`bpi_update:`).
pub const SOURCE_FILE: &str = "/etc/bpi-os/update-source";
/// The timer that runs `bpi-update.service` (unattended updates); off until
/// enabled.
pub const TIMER: &str = "bpi-update.timer";

/// Checks an update source as `bpi-os update` reads it: an http:// or
/// https:// URL with a host, or an absolute directory path; one line.
pub fn check_source(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} is not an update source: one URL or path, without spaces"));
    }
    if let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("{s}: the URL names no host"));
        }
        return Ok(());
    }
    if s.contains("://") {
        return Err(format!("{s}: only http://, https:// and directories are update sources"));
    }
    if !s.starts_with('/') {
        return Err(format!("{s}: a directory source must be an absolute path"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Root,
    Verity,
    Uki,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub role: Role,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub root_hash: String,
    /// Unix seconds: when it was signed, and after when no node accepts it.
    pub issued: u64,
    pub expires: u64,
    pub files: Vec<BundleFile>,
}

/// Why a bundle is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    Expired { expires: u64, now: u64 },
    Older { offered: String, running: String },
    Same { version: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "the update metadata is not valid: {why}"),
            Refusal::Expired { expires, now } => write!(
                f,
                "the update metadata expired {} ago (expires {expires}, now {now}): the server may be replaying an old release; ask for freshly signed metadata",
                human_secs(now.saturating_sub(*expires))
            ),
            Refusal::Older { offered, running } => {
                write!(f, "version {offered} is older than the running {running}; pass --allow-downgrade to install it anyway")
            }
            Refusal::Same { version } => write!(f, "version {version} is the running version"),
        }
    }
}

fn human_secs(s: u64) -> String {
    match s {
        s if s >= 86400 => format!("{} d", s / 86400),
        s if s >= 3600 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

/// Parses a version: semantic versioning, the order the client and
/// systemd-boot's version sort agree on for plain `X.Y.Z`.
pub fn parse_version(v: &str) -> Result<semver::Version, String> {
    semver::Version::parse(v).map_err(|e| format!("version {v:?} is not a semantic version ({e})"))
}

impl Metadata {
    pub fn parse(text: &str) -> Result<Metadata, Refusal> {
        let m: Metadata = serde_json::from_str(text.trim_end()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        m.check_shape()?;
        Ok(m)
    }

    /// The text that is signed: compact JSON and a newline (no blank line).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes") + "\n"
    }

    pub fn file(&self, role: Role) -> &BundleFile {
        self.files.iter().find(|f| f.role == role).expect("check_shape: every role is present")
    }

    fn check_shape(&self) -> Result<(), Refusal> {
        let bad = |why: String| Err(Refusal::Malformed(why));
        if self.format != FORMAT {
            return bad(format!("format {} (this client reads {FORMAT})", self.format));
        }
        if self.name != "bpi-os" {
            return bad(format!("it is for {:?}, not bpi-os", self.name));
        }
        if self.architecture != std::env::consts::ARCH {
            return bad(format!("it is for {}, this machine is {}", self.architecture, std::env::consts::ARCH));
        }
        parse_version(&self.version).map_err(Refusal::Malformed)?;
        if crate::slots::root_label(&self.version).encode_utf16().count() > 36 || self.version.contains(['/', ' ']) {
            return bad(format!("version {:?} is too long for a partition label", self.version));
        }
        crate::slots::uuids_of_root_hash(&self.root_hash).map_err(|e| Refusal::Malformed(e.to_string()))?;
        for role in [Role::Root, Role::Verity, Role::Uki] {
            let n = self.files.iter().filter(|f| f.role == role).count();
            if n != 1 {
                return bad(format!("{n} files with role {role:?} (want one)"));
            }
        }
        if self.files.len() != 3 {
            return bad(format!("{} files (want root, verity and uki)", self.files.len()));
        }
        for f in &self.files {
            let plain = !f.name.is_empty() && f.name != "." && f.name != ".." && !f.name.contains(['/', '\\', '\0']) && !f.name.starts_with('.');
            if !plain || f.name == METADATA {
                return bad(format!("file name {:?} is not a plain file name", f.name));
            }
            if f.sha256.len() != 64 || hex::decode(&f.sha256).is_err() {
                return bad(format!("{}: sha256 {:?} is not 64 hex digits", f.name, f.sha256));
            }
            let max = match f.role {
                Role::Root => ROOT_SLOT_SIZE,
                Role::Verity => VERITY_SLOT_SIZE,
                Role::Uki => UKI_MAX,
            };
            if f.size == 0 || f.size > max {
                return bad(format!("{}: {} bytes does not fit its place ({max} bytes at most)", f.name, f.size));
            }
        }
        if self.expires <= self.issued {
            return bad(format!("it expires ({}) before it was issued ({})", self.expires, self.issued));
        }
        Ok(())
    }

    /// Whether this node may install it now (the signature is checked before).
    pub fn check_offer(&self, now: u64, running: &str, allow_downgrade: bool) -> Result<(), Refusal> {
        if now >= self.expires {
            return Err(Refusal::Expired { expires: self.expires, now });
        }
        let offered = parse_version(&self.version).map_err(Refusal::Malformed)?;
        // A running version that is not semver (a hand-built image) is
        // treated as older than anything.
        if let Ok(run) = parse_version(running) {
            if offered == run {
                return Err(Refusal::Same { version: self.version.clone() });
            }
            if offered < run && !allow_downgrade {
                return Err(Refusal::Older { offered: self.version.clone(), running: running.to_string() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_urls_with_a_host_or_absolute_directories() {
        for ok in ["https://updates.example.net/bpi-os", "http://10.0.2.2:8080/next/", "/srv/bpi-os/update"] {
            assert_eq!(check_source(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [("", "not an update source"), ("https://", "no host"), ("http://:80/x", "no host"), ("ftp://h/x", "only http"), ("updates/next", "absolute"), ("https://h/a b", "without spaces")] {
            let e = check_source(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    pub fn sample() -> Metadata {
        let f = |role, name: &str, size| BundleFile { role, name: name.into(), size, sha256: "0".repeat(64) };
        Metadata {
            format: FORMAT,
            name: "bpi-os".into(),
            version: "0.2.0".into(),
            architecture: std::env::consts::ARCH.into(),
            root_hash: "ab".repeat(32),
            issued: 1000,
            expires: 2000,
            files: vec![f(Role::Root, "bpi-os_0.2.0.root", 100 << 20), f(Role::Verity, "bpi-os_0.2.0.verity", 1 << 20), f(Role::Uki, "bpi-os_0.2.0.efi", 40 << 20)],
        }
    }

    #[test]
    fn round_trips_and_checks_offers() {
        let m = sample();
        let text = m.to_text();
        assert!(text.ends_with("}\n") && !text.contains("\n\n"));
        assert_eq!(Metadata::parse(&text).unwrap(), m);
        assert_eq!(m.check_offer(1500, "0.1.0", false), Ok(()));
        assert!(matches!(m.check_offer(2000, "0.1.0", false), Err(Refusal::Expired { .. })));
        assert!(matches!(m.check_offer(1500, "0.3.0", false), Err(Refusal::Older { .. })));
        assert_eq!(m.check_offer(1500, "0.3.0", true), Ok(()));
        assert!(matches!(m.check_offer(1500, "0.2.0", true), Err(Refusal::Same { .. })));
        assert!(m.check_offer(1500, "0.3.0", false).unwrap_err().to_string().contains("--allow-downgrade"));
    }

    #[test]
    fn refuses_bad_shapes() {
        let refused = |edit: &dyn Fn(&mut Metadata), want: &str| {
            let mut m = sample();
            edit(&mut m);
            let e = Metadata::parse(&m.to_text()).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        refused(&|m| m.files[0].name = "../etc/passwd".into(), "plain file name");
        refused(&|m| m.files[0].name = METADATA.into(), "plain file name");
        refused(&|m| m.files[0].size = ROOT_SLOT_SIZE + 1, "does not fit");
        refused(&|m| m.files[1].role = Role::Root, "role Root");
        refused(&|m| m.files.push(m.files[0].clone()), "role Root");
        refused(&|m| m.files[2].sha256 = "xyz".into(), "64 hex");
        refused(&|m| m.version = "latest".into(), "semantic version");
        refused(&|m| m.root_hash = "00".into(), "256 bits");
        refused(&|m| m.architecture = "sparc".into(), "sparc");
        refused(&|m| m.expires = 10, "before it was issued");
        assert!(Metadata::parse("{\"format\":1}").is_err());
        assert!(Metadata::parse(&sample().to_text().replace("\"format\"", "\"extra\":1,\"format\"")).is_err());
    }
}

//! Carries out a plan's actions on the running system, recording each in
//! the ledger as it lands. Every action is idempotent, so a run stopped half
//! way is finished by the next boot (the instance is marked applied only
//! after the last action).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bpi_support::record::Recorder;
use bpi_support::Cmd;

use bpi_formats::update::{SOURCE_FILE, TIMER};

use crate::plan::{Action, NM_DIR};

/// Where the actions land: "/" on a node; a directory in tests (then only
/// file actions may be applied: users need the system's own tools).
pub struct Target {
    pub root: PathBuf,
}

impl Target {
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// Writes a file atomically (`bpi_support::fsmode::write_atomic`), making
/// its directory first, and sets `mode` exactly, whatever the umask.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    bpi_support::fsmode::create_dirs(dir, 0o755)?;
    bpi_support::fsmode::write_atomic(path, bytes, mode).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", path.display()))
}

/// Applies one action; returns the ledger outcome line.
pub fn apply(t: &Target, a: &Action, recorder: &dyn Recorder) -> Result<String> {
    match a {
        Action::Hostname { name } => {
            write_atomic(&t.path("/etc/hostname"), format!("{name}\n").as_bytes(), 0o644)?;
            if t.root == Path::new("/") {
                nix::unistd::sethostname(name).context("setting the kernel's host name")?;
            }
        }
        Action::Hosts { content } => write_atomic(&t.path("/etc/hosts"), content.as_bytes(), 0o644)?,
        Action::User { name, groups, sudo_nopasswd } => {
            let exists = nix::unistd::User::from_name(name).ok().flatten().is_some();
            let groups = groups.join(",");
            if exists {
                if !groups.is_empty() {
                    Cmd::new("usermod").args(["--append", "--groups", &groups, name]).run()?;
                }
            } else {
                let mut c = Cmd::new("useradd").args(["--create-home", "--user-group", "--shell", "/bin/bash"]);
                if !groups.is_empty() {
                    c = c.args(["--groups", &groups]);
                }
                c.arg(name).run()?;
            }
            let sudoers = t.path(&format!("/etc/sudoers.d/90-bpi-provision-{name}"));
            if *sudo_nopasswd {
                write_atomic(&sudoers, format!("# Written by bpi-os provisioning (cloud-init's default user).\n{name} ALL=(ALL) NOPASSWD:ALL\n").as_bytes(), 0o440)?;
            } else if sudoers.exists() {
                std::fs::remove_file(&sudoers)?;
            }
        }
        Action::Password { user, expire, hash } => {
            Cmd::new("usermod").args(["--password", hash, user]).run()?;
            if *expire {
                Cmd::new("chage").args(["--lastday", "0", user]).run()?;
            }
        }
        Action::AuthorizedKeys { user, keys, .. } => {
            let u = nix::unistd::User::from_name(user)?.with_context(|| format!("no user {user}"))?;
            let ssh = u.dir.join(".ssh");
            bpi_support::fsmode::create_dirs(&ssh, 0o700)?;
            let file = ssh.join("authorized_keys");
            let text = format!("# Written by bpi-os provisioning; a new instance-id replaces it.\n{}\n", keys.join("\n"));
            write_atomic(&file, text.as_bytes(), 0o600)?;
            for p in [&ssh, &file] {
                nix::unistd::chown(p.as_path(), Some(u.uid), Some(u.gid)).with_context(|| format!("chown {}", p.display()))?;
            }
        }
        Action::Connection { path, content, .. } => write_atomic(&t.path(path), content.as_bytes(), 0o600)?,
        Action::RemoveOtherConnections { keep } => {
            let dir = t.path(NM_DIR);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("bpi-") && n.ends_with(".nmconnection") && !keep.contains(&n) {
                        std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                    }
                }
            }
        }
        Action::ConfigFile { path, mode, content, .. } => write_atomic(&t.path(path), content, *mode)?,
        Action::UpdateSource { source } => write_atomic(&t.path(SOURCE_FILE), format!("{source}\n").as_bytes(), 0o644)?,
        Action::UpdateTimer { enable } => {
            // The wants link under /etc (the overlay's upper layer, kept across
            // updates); started without waiting, as this runs inside boot.
            let (verb, now) = if *enable { ("enable", "start") } else { ("disable", "stop") };
            anyhow::ensure!(t.root == Path::new("/"), "{TIMER} is {verb}d on the running system only");
            Cmd::new("systemctl").args([verb, "--no-reload", TIMER]).run()?;
            Cmd::new("systemctl").args([now, "--no-block", TIMER]).run()?;
        }
    }
    let (category, action, data) = a.record();
    Ok(recorder.record(category, action, &data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_actions_land_under_the_target_and_stale_connections_go() {
        let t = tempfile::tempdir().unwrap();
        let target = Target { root: t.path().to_path_buf() };
        let nm = t.path().join(NM_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&nm).unwrap();
        std::fs::write(nm.join("bpi-old.nmconnection"), "x").unwrap();
        std::fs::write(nm.join("mine.nmconnection"), "x").unwrap();
        let actions = [
            Action::Hosts { content: "127.0.0.1 localhost\n".into() },
            Action::Connection { id: "bpi-eth0".into(), path: format!("{NM_DIR}/bpi-eth0.nmconnection"), content: "[connection]\n".into() },
            Action::RemoveOtherConnections { keep: vec!["bpi-eth0.nmconnection".into()] },
            Action::ConfigFile { path: "/bpi/config/system/x.toml".into(), mode: 0o640, sha256: String::new(), bytes: 2, content: b"a\n".to_vec() },
            Action::UpdateSource { source: "https://updates.example.net/bpi-os".into() },
        ];
        for a in &actions {
            apply(&target, a, &bpi_support::record::NotRecorded).unwrap();
        }
        assert!(nm.join("bpi-eth0.nmconnection").exists());
        assert!(!nm.join("bpi-old.nmconnection").exists(), "a connection of an earlier instance stayed");
        assert!(nm.join("mine.nmconnection").exists(), "a connection bpi-os did not write was removed");
        let mode = std::fs::metadata(nm.join("bpi-eth0.nmconnection")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "NetworkManager ignores keyfiles others can read");
        assert_eq!(std::fs::read(t.path().join("bpi/config/system/x.toml")).unwrap(), b"a\n");
        assert_eq!(std::fs::read_to_string(t.path().join("etc/bpi-os/update-source")).unwrap(), "https://updates.example.net/bpi-os\n");
        let timer = apply(&target, &Action::UpdateTimer { enable: true }, &bpi_support::record::NotRecorded).unwrap_err();
        assert!(timer.to_string().contains("running system only"), "{timer}");
    }
}

//! The BIOS boot path's files on the ESP (docs/boot.md): each version's
//! kernel and initrd under `bios/<version>/`, one `grub/grub.cfg` with an
//! entry per version, and `grub/grubenv`, the state GRUB and bpi-os share.
//!
//! GRUB gets the A/B logic systemd-boot has under UEFI: `saved_entry` is the
//! version last found healthy; an update sets `trial_entry` with
//! `trial_tries` boots, which grub.cfg counts down (with `save_env`) before
//! each boot of it. Once they are used up, GRUB boots `saved_entry` again;
//! a healthy boot of the trial makes it `saved_entry` (the bless).

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Result};

use crate::slots::MAX_TRIES;

pub const GRUB_CFG: &str = "grub/grub.cfg";
pub const GRUBENV: &str = "grub/grubenv";
/// The ESP's directory of per-version BIOS files.
pub const BIOS_DIR: &str = "bios";

pub fn kernel_path(version: &str) -> String {
    format!("{BIOS_DIR}/{version}/vmlinuz")
}
pub fn initrd_path(version: &str) -> String {
    format!("{BIOS_DIR}/{version}/initrd.img")
}

/// A version's menu entry id (what `saved_entry` and `trial_entry` name).
pub fn entry_id(version: &str) -> String {
    format!("bpi-os_{version}")
}

pub fn version_of_entry(id: &str) -> Option<&str> {
    id.strip_prefix("bpi-os_").filter(|v| !v.is_empty())
}

pub struct Entry {
    pub version: String,
    pub cmdline: String,
}

/// GRUB's script language would read quotes, `$`, `;` and the like in a
/// command line; bpi-os's never has them, so anything else is refused.
fn check_word(what: &str, s: &str) -> Result<()> {
    let bad = s.chars().find(|c| !(c.is_ascii_alphanumeric() || " =._,:/-+@".contains(*c)));
    ensure!(bad.is_none(), "{what} {s:?} has {:?}, which grub.cfg would not pass on as it is", bad.unwrap_or(' '));
    Ok(())
}

/// grub.cfg for `entries` (newest first: with no usable saved entry GRUB
/// boots the first): serial console and screen, no menu, the trial count
/// down, then one entry per version with the command line its UKI carries.
pub fn config(entries: &[Entry]) -> Result<String> {
    ensure!(!entries.is_empty(), "no version to boot: grub.cfg would have no entry");
    let mut s = String::from(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         # A/B (docs/boot.md): the version found healthy, unless an update's\n\
         # trial has boots left; each boot of the trial uses one.\n\
         load_env saved_entry trial_entry trial_tries\n\
         set default=\"${saved_entry}\"\n\
         if [ -n \"${trial_entry}\" ]; then\n",
    );
    for n in (1..=MAX_TRIES).rev() {
        let kw = if n == MAX_TRIES { "if" } else { "elif" };
        s.push_str(&format!("    {kw} [ \"${{trial_tries}}\" = {n} ]; then set trial_tries={}; set default=\"${{trial_entry}}\"\n", n - 1));
    }
    s.push_str("    fi\n    save_env trial_tries\nfi\n");
    for e in entries {
        check_word("version", &e.version)?;
        check_word("command line", &e.cmdline)?;
        s.push_str(&format!(
            "menuentry \"bpi-os {v}\" --id {id} {{\n\
             \x20   echo \"bpi-os {v}: loading Linux (BIOS)\"\n\
             \x20   linux /{k} {c}\n\
             \x20   initrd /{i}\n\
             }}\n",
            v = e.version,
            id = entry_id(&e.version),
            k = kernel_path(&e.version),
            c = e.cmdline,
            i = initrd_path(&e.version)
        ));
    }
    Ok(s)
}

/// GRUB's environment block: exactly 1024 bytes, a header line, then
/// `name=value` lines, padded with `#`.
pub const ENV_SIZE: usize = 1024;
const ENV_HEADER: &str = "# GRUB Environment Block\n";

pub type Env = BTreeMap<String, String>;

pub fn parse_env(block: &[u8]) -> Result<Env> {
    ensure!(block.len() == ENV_SIZE && block.starts_with(ENV_HEADER.as_bytes()), "not a GRUB environment block ({} bytes)", block.len());
    let text = std::str::from_utf8(&block[ENV_HEADER.len()..])?;
    let mut env = Env::new();
    for line in text.split('\n') {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { bail!("GRUB environment line {line:?} has no '='") };
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

pub fn render_env(env: &Env) -> Result<Vec<u8>> {
    let mut out = ENV_HEADER.as_bytes().to_vec();
    for (k, v) in env {
        check_word("GRUB variable", k)?;
        check_word("GRUB value", v)?;
        out.extend_from_slice(format!("{k}={v}\n").as_bytes());
    }
    ensure!(out.len() <= ENV_SIZE, "the GRUB environment does not fit its 1024 bytes");
    out.resize(ENV_SIZE, b'#');
    Ok(out)
}

/// The A/B state grubenv holds, as bpi-os reads and changes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct State {
    /// The version GRUB boots when no trial is left.
    pub saved: Option<String>,
    /// An update's version on trial, and the boots it has left.
    pub trial: Option<String>,
    pub tries_left: u32,
}

impl State {
    pub fn of(env: &Env) -> State {
        let version = |k: &str| env.get(k).and_then(|id| version_of_entry(id)).map(str::to_string);
        State { saved: version("saved_entry"), trial: version("trial_entry"), tries_left: env.get("trial_tries").and_then(|t| t.parse().ok()).unwrap_or(0) }
    }

    /// Writes this state into `env`, keeping its other variables.
    pub fn apply_to(&self, env: &mut Env) {
        for k in ["saved_entry", "trial_entry", "trial_tries"] {
            env.remove(k);
        }
        if let Some(v) = &self.saved {
            env.insert("saved_entry".into(), entry_id(v));
        }
        if let Some(v) = &self.trial {
            env.insert("trial_entry".into(), entry_id(v));
            env.insert("trial_tries".into(), self.tries_left.to_string());
        }
    }

    /// An update installed: `version` boots next, `tries` times at most.
    pub fn start_trial(&mut self, version: &str, tries: u32) {
        self.trial = Some(version.to_string());
        self.tries_left = tries;
    }

    /// A healthy boot of `version`: it is what GRUB boots from now on.
    pub fn bless(&mut self, version: &str) -> bool {
        let changed = self.saved.as_deref() != Some(version) || self.trial.is_some();
        self.saved = Some(version.to_string());
        self.trial = None;
        self.tries_left = 0;
        changed
    }

    /// A version removed from the ESP: no trial of it is left.
    pub fn forget(&mut self, version: &str) {
        if self.trial.as_deref() == Some(version) {
            self.trial = None;
            self.tries_left = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_counts_the_trial_down_and_boots_each_version_with_its_cmdline() {
        let c = config(&[Entry { version: "0.1.1".into(), cmdline: "roothash=cd ro".into() }, Entry { version: "0.1.0".into(), cmdline: "roothash=ab ro".into() }]).unwrap();
        assert!(c.contains("menuentry \"bpi-os 0.1.1\" --id bpi-os_0.1.1 {\n"), "{c}");
        assert!(c.contains("    linux /bios/0.1.0/vmlinuz roothash=ab ro\n    initrd /bios/0.1.0/initrd.img\n"), "{c}");
        assert!(c.find("bpi-os_0.1.1").unwrap() < c.find("bpi-os_0.1.0").unwrap());
        // Every count from MAX_TRIES to 1 steps down by one; 0 boots the saved entry.
        for n in 1..=MAX_TRIES {
            assert!(c.contains(&format!("[ \"${{trial_tries}}\" = {n} ]; then set trial_tries={}; set default=\"${{trial_entry}}\"", n - 1)), "{n}");
        }
        assert!(!c.contains("= 0 ]"));
        assert!(config(&[Entry { version: "0.1.0".into(), cmdline: "init=/bin/sh; echo".into() }]).unwrap_err().to_string().contains("';'"));
        assert!(config(&[]).is_err());
    }

    #[test]
    fn env_block_round_trips_and_the_state_moves_as_grub_and_bpi_os_move_it() {
        let mut env = Env::new();
        env.insert("other".into(), "kept".into());
        let mut st = State::of(&env);
        assert_eq!(st, State { saved: None, trial: None, tries_left: 0 });
        st.bless("0.1.0");
        st.start_trial("0.1.1", 2);
        st.apply_to(&mut env);
        let block = render_env(&env).unwrap();
        assert_eq!(block.len(), ENV_SIZE);
        assert!(block.starts_with(b"# GRUB Environment Block\nother=kept\nsaved_entry=bpi-os_0.1.0\ntrial_entry=bpi-os_0.1.1\ntrial_tries=2\n#"));
        let back = parse_env(&block).unwrap();
        assert_eq!(back, env);
        // GRUB's save_env after two boots: the count at 0, the trial over.
        let mut used = back.clone();
        used.insert("trial_tries".into(), "0".into());
        assert_eq!(State::of(&used), State { saved: Some("0.1.0".into()), trial: Some("0.1.1".into()), tries_left: 0 });
        let mut st = State::of(&back);
        assert!(st.bless("0.1.1"));
        assert_eq!(st, State { saved: Some("0.1.1".into()), trial: None, tries_left: 0 });
        assert!(!st.bless("0.1.1"));
        st.start_trial("0.1.2", 1);
        st.forget("0.1.2");
        assert_eq!(st.trial, None);
        assert!(parse_env(b"short").is_err());
        let mut long = Env::new();
        long.insert("x".into(), "y".repeat(1100));
        assert!(render_env(&long).is_err());
        long.insert("x".into(), "a\nb".into());
        assert!(render_env(&long).is_err());
    }
}

//! `bpi-os store ...`: thin dispatch onto bpi-installer's store module.

use crate::output::Json;
use std::path::PathBuf;

use anyhow::{bail, Result};
use bpi_support::exit::Failure;
use bpi_installer::store::{self, InitOptions, InitPlan, Key, Tpm2, When};
use clap::{Args, Subcommand};

/// How a new store is keyed: `store init` and `install` take the same flags.
#[derive(Args, Clone, Debug)]
pub struct KeyFlags {
    /// Seal the key to this machine's TPM2: auto (when there is one), yes, no.
    #[arg(long, value_enum, default_value = "auto")]
    pub tpm2: Tpm2,
    /// PCRs to seal against, '+'-separated (see docs/install.md on resealing).
    #[arg(long, default_value = "7")]
    pub tpm2_pcrs: String,
    /// Write the recovery key here (must not exist) instead of showing it.
    #[arg(long, value_name = "PATH")]
    pub recovery_key_file: Option<PathBuf>,
    /// Also enroll a passphrase, asked for on the terminal (read from stdin otherwise).
    #[arg(long)]
    pub passphrase: bool,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Create the encrypted store (LUKS2; TPM2-sealed key where there is a TPM2, and a recovery key).
    Init {
        /// The store's partition (found by its GPT label).
        #[arg(long, default_value = store::DEFAULT_DEVICE)]
        device: PathBuf,
        #[command(flatten)]
        keys: KeyFlags,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// For bpi-store-init.service: do nothing if the store exists; keep the
        /// recovery key in /run/bpi-os/store-recovery-key and on the console.
        #[arg(long)]
        first_boot: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Whether there is a store, how it is protected, whether it is open.
    Status {
        /// The store's partition (found by its GPT label).
        #[arg(long, default_value = store::DEFAULT_DEVICE)]
        device: PathBuf,
        #[command(flatten)]
        json: Json,
    },
    /// Open (TPM2, or the recovery key) and mount at /bpi/data/encrypted.
    Unlock {
        /// The store's partition (found by its GPT label).
        #[arg(long, default_value = store::DEFAULT_DEVICE)]
        device: PathBuf,
        /// Unlock with the recovery key (or any enrolled key) in this file.
        #[arg(long, value_name = "PATH", conflicts_with = "passphrase")]
        recovery_key_file: Option<PathBuf>,
        /// Unlock with the passphrase (asked for, or read from stdin).
        #[arg(long)]
        passphrase: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Unmount and close.
    Lock,
    /// Exit 0 when the store can unlock without a person (LUKS with a TPM2 token), 4 otherwise.
    Probe {
        /// The store's partition (found by its GPT label).
        #[arg(long, default_value = store::DEFAULT_DEVICE)]
        device: PathBuf,
        #[command(flatten)]
        json: Json,
    },
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Init { device, keys: KeyFlags { tpm2, tpm2_pcrs, recovery_key_file, passphrase }, dry_run, first_boot, json } => {
            let when = if first_boot { When::FirstBoot } else { When::Now };
            let pass = if passphrase && !dry_run { Some(read_passphrase(true)?) } else { None };
            let opts = InitOptions {
                device,
                tpm2,
                pcrs: tpm2_pcrs,
                recovery_key_file,
                // A dry run plans the passphrase's enrolment without asking for it.
                passphrase: pass.or(passphrase.then(String::new)),
            };
            let say = |outcome: &str, text: &str| -> Result<()> {
                if json.on() {
                    json.print(&serde_json::json!({ "outcome": outcome }))
                } else {
                    println!("{text}");
                    Ok(())
                }
            };
            let (opts, steps) = match store::init_plan(opts, when)? {
                InitPlan::Exists => return say("exists", "the encrypted store exists already"),
                InitPlan::NoTpm => {
                    return say("no-tpm2", "no TPM2 here: no encrypted store was created (`bpi-os store init --recovery-key-file PATH` creates one)")
                }
                InitPlan::Steps(opts, steps) => (opts, steps),
            };
            if dry_run {
                if json.on() {
                    return json.print(&serde_json::json!({ "outcome": "dry-run", "steps": steps }));
                }
                for s in &steps {
                    println!("{s}");
                }
                println!("(dry run: nothing was changed)");
                return Ok(());
            }
            if !json.on() {
                for s in &steps {
                    println!("{s}");
                }
            }
            let shown = store::init_apply(&opts, &steps)?;
            if json.on() {
                // The recovery key is on stdout once either way; --json carries it for the script that asked.
                return json.print(&serde_json::json!({ "outcome": "created", "steps": steps, "mount": store::MOUNT, "recovery_key": shown, "recovery_key_file": opts.recovery_key_file }));
            }
            if let Some(key) = shown {
                println!("\nThe store's recovery key, shown once; keep it somewhere safe:\n\n    {key}\n");
            }
            if when == When::FirstBoot {
                let key = std::fs::read_to_string(store::FIRST_BOOT_KEY)?;
                println!(
                    "\nThe encrypted store was created. Its recovery key (also in {} until reboot; copy it somewhere safe, then delete it):\n\n    {key}\n",
                    store::FIRST_BOOT_KEY
                );
            }
            println!("encrypted store ready at {}", store::MOUNT);
            Ok(())
        }
        StoreCommand::Status { device, json } => {
            let s = store::status(&device);
            if json.on() {
                json.print(&s)?;
            } else {
                println!("{}", s.note);
            }
            Ok(())
        }
        StoreCommand::Unlock { device, recovery_key_file, passphrase, json } => {
            if !store::is_luks(&device) {
                bail!("{} holds no LUKS volume: there is no store to unlock (`bpi-os store init`)", device.display());
            }
            let pass = if passphrase { Some(read_passphrase(false)?) } else { None };
            let key = match (&recovery_key_file, &pass) {
                (Some(f), _) => Key::File(f),
                (None, Some(p)) => Key::Passphrase(p),
                (None, None) => Key::Tpm2,
            };
            store::unlock(&device, key)?;
            if json.on() {
                return json.print(&serde_json::json!({ "unlocked": true, "mount": store::MOUNT }));
            }
            println!("encrypted store mounted at {}", store::MOUNT);
            Ok(())
        }
        StoreCommand::Lock => store::lock(),
        StoreCommand::Probe { device, json } => {
            let s = store::status(&device);
            if json.on() {
                json.print(&serde_json::json!({ "unattended": s.initialized && s.tpm2_enrolled, "note": s.note }))?;
            }
            if s.initialized && s.tpm2_enrolled {
                Ok(())
            } else {
                Err(Failure::NeedsPerson(format!("the store cannot unlock without a person: {}", s.note)).into())
            }
        }
    }
}

/// A passphrase from the terminal (not echoed; asked twice when `confirm`),
/// or the first line of stdin when it is not a terminal (scripts, tests).
pub fn read_passphrase(confirm: bool) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let read_line = || -> Result<String> {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let pass = if stdin.is_terminal() {
        let ask = |prompt: &str| -> Result<String> {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            let saved = tcgetattr(&stdin)?;
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
            let line = read_line();
            tcsetattr(&stdin, SetArg::TCSANOW, &saved)?;
            eprintln!();
            line
        };
        let first = ask("Passphrase for the encrypted store: ")?;
        if confirm && ask("Again: ")? != first {
            bail!("the passphrases differ: nothing was changed");
        }
        first
    } else {
        read_line()?
    };
    if pass.chars().count() < 8 {
        bail!("the passphrase is shorter than 8 characters: nothing was changed");
    }
    Ok(pass)
}

//! The `bpi-os` command. Thin dispatch: the work lives in the libraries.

mod control;
mod docs;
mod firmware;
mod health;
mod install;
mod ledger;
mod metrics;
mod nxos;
mod output;
mod pof;
mod provision;
mod qlock;
mod status;
mod store;
mod update;
mod vpod;

use clap::{CommandFactory, Parser, Subcommand};
use output::Json;

#[derive(Parser)]
#[command(name = "bpi-os", version, about = "bpi-os: immutable network OS tooling")]
struct Cli {
    /// Show the external commands run, and their output.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, verity root hash and state, data partition state.
    Status {
        #[command(flatten)]
        json: Json,
    },
    /// Install bpi-os onto a disk (--disk), or lay out /bpi and the units in a tree (--root).
    Install(install::InstallArgs),
    /// The encrypted store at /bpi/data/encrypted.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// The tamper-evident ledger of every operation.
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
    /// First-boot provisioning (cloud-init drive, credentials): show, check, apply.
    Provision {
        #[command(subcommand)]
        command: provision::ProvisionCommand,
    },
    /// A/B updates from signed bundles: check, apply, status, rollback.
    Update {
        #[command(subcommand)]
        command: update::UpdateCommand,
    },
    /// Check this boot: verity root, data partition, ledger, the units bpi-os enables (bpi-health.service runs it with --boot).
    Health(health::HealthArgs),
    /// The NXOS DRX network runtime: the XDP data plane, trust, and the control plane (topology, routes, intents).
    Nxos(nxos::NxosArgs),
    /// Write the man pages and shell completions under DIR (a usr/share); the image build runs it.
    #[command(hide = true)]
    GenerateDocs {
        /// The directory to write into (a usr/share: man/, bash-completion/, zsh/, fish/).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    bpi_support::progress::show_details(cli.verbose);
    if cli.verbose {
        // Cmd forwards the output of what it runs when this is set.
        std::env::set_var("BPI_VERBOSE", "1");
    }
    let result = match cli.command {
        Command::Status { json } => status::run(json),
        Command::Ledger { command } => ledger::run(command),
        Command::Install(args) => install::run(args),
        Command::Store { command } => store::run(command),
        Command::Nxos(args) => nxos::run(args),
        Command::Provision { command } => provision::run(command),
        Command::Update { command } => update::run(command),
        Command::Health(args) => health::run(args),
        Command::GenerateDocs { out } => docs::generate(Cli::command(), &out).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
    };
    if let Err(e) = result {
        bpi_support::progress::error("bpi-os", &format!("{e:#}"));
        std::process::exit(bpi_support::exit::code_of(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (conflicts and requirements name real
    /// arguments, ...), over every command: they otherwise fire only when a
    /// command is first parsed.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `ledger append --help` lists every category the ledger takes, and no other.
    #[test]
    fn the_append_help_names_every_category() {
        let cmd = Cli::command();
        let append = cmd.find_subcommand("ledger").and_then(|l| l.find_subcommand("append")).expect("ledger append");
        let arg = append.get_arguments().find(|a| a.get_id() == "category").expect("--category");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let listed: Vec<&str> = help.split(": ").nth(1).unwrap_or("").trim_end_matches('.').split(", ").collect();
        assert_eq!(listed, bpi_ledger::plugins::Plugins::default().categories(), "{help}");
    }

    /// Every argument of every command says what it is for.
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "bpi-os", &mut missing);
        assert!(missing.is_empty(), "flags without help:\n  {}", missing.join("\n  "));
    }
}

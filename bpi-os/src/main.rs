//! The `bpi-os` command. Thin dispatch: the work lives in the libraries.

mod control;
mod install;
mod ledger;
mod nxos;
mod status;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bpi-os", version, about = "bpi-os: immutable network OS tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, verity root hash and state, data partition state.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
    /// The NXOS DRX network runtime: the XDP data plane, trust, and the control plane (topology, routes, intents).
    Nxos(nxos::NxosArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status { json } => status::run(json),
        Command::Ledger { command } => ledger::run(command),
        Command::Install(args) => install::run(args),
        Command::Store { command } => store::run(command),
        Command::Nxos(args) => nxos::run(args),
    };
    if let Err(e) = result {
        eprintln!("bpi-os: error: {e:#}");
        std::process::exit(1);
    }
}

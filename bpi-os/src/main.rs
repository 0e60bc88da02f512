//! The `bpi-os` command. Thin dispatch: the work lives in the libraries.

mod ledger;
mod status;

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
    /// The tamper-evident ledger of every operation.
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status { json } => status::run(json),
        Command::Ledger { command } => ledger::run(command),
    };
    if let Err(e) = result {
        eprintln!("bpi-os: error: {e:#}");
        std::process::exit(1);
    }
}

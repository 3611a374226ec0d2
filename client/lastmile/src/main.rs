//! `lastmile`: the user's command line. See `lastmile --help`.
//!
//! Today it reads and verifies the audit log (`lastmile audit …`); login, the agent and
//! the tunnel arrive with the client issue.

mod audit;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "lastmile: reach databases and servers without ever holding their credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read, search, export, decrypt and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::Command,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Audit { command } => match audit::run(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("lastmile: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

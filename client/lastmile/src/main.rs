//! `lastmile`: the user's command line. See `lastmile --help`.
//!
//! `login`, `status`, `resources`, `logout`: the user's identity on this machine (see
//! `session.rs`); `audit …`: reading and verifying the audit log. The agent and the
//! tunnel arrive with the rest of the client issue.

mod audit;
mod session;

use clap::{Parser, Subcommand};
use session::Output;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "lastmile: reach databases and servers without ever holding their credentials"
)]
struct Cli {
    /// How to print results (login, status, resources).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in: password (and TOTP), proven from this machine's device key.
    Login(session::LoginArgs),
    /// Who you are, on which device, until when; whether the session is still valid.
    Status,
    /// What you may reach.
    Resources,
    /// End the session (revoked at the API) and forget it here.
    Logout,
    /// Read, search, export, decrypt and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: Box<audit::Command>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let out = cli.output;
    let run = |f: std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<std::process::ExitCode>>>,
    >| {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(f));
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("lastmile: {e:#}");
                std::process::ExitCode::from(2)
            }
        }
    };
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Login(a) => run(Box::pin(async move {
            session::login(a, out).await.map(|()| ok)
        })),
        Command::Status => run(Box::pin(session::status(out))),
        Command::Resources => run(Box::pin(async move {
            session::resources(out).await.map(|()| ok)
        })),
        Command::Logout => run(Box::pin(
            async move { session::logout().await.map(|()| ok) },
        )),
        Command::Audit { command } => match audit::run(*command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("lastmile: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

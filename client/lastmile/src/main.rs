//! `lastmile`: the user's command line. See `lastmile --help`.
//!
//! `login`, `status`, `resources`, `logout`: the user's identity on this machine (see
//! `session.rs`); `agent` and `listen`: carrying connections through the tunnel (see
//! `agent.rs`); `audit …`: reading and verifying the audit log; `recordings …`: SSH
//! session recordings, played and verified against the audit log.

mod agent;
mod audit;
mod home;
mod known_hosts;
mod recordings;
mod session;
mod status;

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
    /// Why connections were refused here, newest first (a raw TCP client only sees its
    /// connection closed).
    Why,
    /// What you may reach.
    Resources,
    /// End the session (revoked at the API) and forget it here; the API URL and user name
    /// stay for the next `login`.
    Logout,
    /// Run the agent in the foreground: register with lastmiled and carry this user's
    /// connections to protected targets through the gateways (`login` starts it).
    Agent(agent::AgentArgs),
    /// Open a local port into the tunnel for one resource (hosts without eBPF).
    Listen(agent::ListenArgs),
    /// The organisation's CA certificate, which resources' TLS certificates chain to:
    /// point a client that verifies them at it (`PGSSLROOTCERT=$(lastmile ca --path)
    /// psql "sslmode=verify-full host=…"`).
    Ca {
        /// Print the file's path instead of the certificate.
        #[arg(long)]
        path: bool,
    },
    /// Read, search, export, decrypt and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: Box<audit::Command>,
    },
    /// SSH session recordings: list, play, export, and verify them against the audit log.
    Recordings {
        #[command(subcommand)]
        command: Box<recordings::Command>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let out = cli.output;
    let run = |f: Job| block_on(f, tokio::runtime::Builder::new_current_thread());
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Login(a) => run(Box::pin(async move {
            session::login(a, out).await.map(|()| ok)
        })),
        Command::Status => run(Box::pin(status::status(out))),
        Command::Why => run(Box::pin(async move { status::why(out).map(|()| ok) })),
        Command::Resources => run(Box::pin(async move {
            session::resources(out).await.map(|()| ok)
        })),
        Command::Logout => run(Box::pin(
            async move { session::logout().await.map(|()| ok) },
        )),
        Command::Agent(a) => {
            init_logging();
            run_multi(Box::pin(async move { agent::agent(a).await.map(|()| ok) }))
        }
        Command::Listen(a) => {
            init_logging();
            run_multi(Box::pin(
                async move { agent::listen(a, out).await.map(|()| ok) },
            ))
        }
        Command::Ca { path } => run(Box::pin(async move { session::ca(path).map(|()| ok) })),
        Command::Audit { command } => match audit::run(*command, out) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("lastmile: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Recordings { command } => match recordings::run(*command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("lastmile: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

type Job =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<std::process::ExitCode>>>>;

/// The agent and `listen` carry many connections at once: a multi-threaded runtime.
fn run_multi(f: Job) -> std::process::ExitCode {
    block_on(f, tokio::runtime::Builder::new_multi_thread())
}

fn block_on(f: Job, mut runtime: tokio::runtime::Builder) -> std::process::ExitCode {
    let result = runtime
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
}

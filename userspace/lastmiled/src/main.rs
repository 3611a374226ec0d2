//! lastmiled: the host daemon. See `lastmiled --help`.

mod node;
mod probe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "lastmile's host daemon: kernel interception (node) and the last-mile proxy (gateway)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node role: load and attach the eBPF programs, protect the configured
    /// targets, and accept the connections redirected to them.
    Node {
        /// Configuration file (TOML); the embedded defaults are used without one.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Connect to ADDRESS as any program would, and print as JSON where the connection
    /// went. Shows whether a target is intercepted from this process's cgroup.
    Probe(probe::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node { config } => node::run(config.as_deref()),
        Command::Probe(args) => probe::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lastmiled: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `cargo xtask …`: set up a machine, run the demo, the tests and the benchmarks.

mod bench;
mod demo;
mod exec;
mod fuzz;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "lastmile project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install everything building, testing and the demo need (idempotent).
    Setup,
    /// Set up if needed, build everything including the eBPF programs, and run every test.
    Test(test::Args),
    /// Set up if needed, build, and run lastmile's main job on one machine, leaving the
    /// stack running to use by hand.
    Demo {
        /// Stop the stack an earlier `demo` left, and remove everything it set up.
        #[arg(long)]
        stop: bool,
    },
    /// Run a benchmark; each prints its ratios against a baseline measured in the same run.
    Bench {
        #[arg(value_enum)]
        which: bench::Which,
    },
    /// Build the libFuzzer targets in fuzz/ (nightly, cargo-fuzz) and run each for a while.
    Fuzz(fuzz::Args),
    /// Build the Debian packages (cargo-deb) into target/debian; `--check` also tests
    /// them (layout, `systemd-analyze verify` and `security`, an install into a clean root).
    Package(package::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test(args) => test::run(&args),
        Command::Demo { stop: false } => demo::run(),
        Command::Demo { stop: true } => demo::stop(),
        Command::Bench { which } => bench::run(which),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Package(args) => package::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

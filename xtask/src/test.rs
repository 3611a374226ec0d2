//! `cargo xtask test`: set up, build everything (eBPF included), lint, and run every test.

use std::time::Instant;

use crate::exec::{cargo, must, step};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (when you know the machine is ready).
    #[arg(long)]
    no_setup: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Passed to `cargo test` after `--` (a test name filter, `--nocapture`, …).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.no_setup {
        crate::setup::run()?;
    }
    if !crate::exec::is_root() {
        eprintln!(
            "note: not root: tests that need eBPF or cgroups will say SKIPPED; \
             run `sudo cargo xtask test` to run them"
        );
    }
    if !args.no_lint {
        step("rustfmt");
        must(cargo().args(["fmt", "--all", "--check"]))?;
        step("clippy (host crates, with the real eBPF build)");
        must(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("build and run every test");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--"]);
    cmd.args(&args.test_args);
    must(&mut cmd)?;
    step(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

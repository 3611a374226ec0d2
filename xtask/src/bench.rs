//! `cargo xtask bench …`: benchmarks that print ratios against a baseline measured in the
//! same run (never a number compared with one from another day or machine).

use anyhow::bail;

use crate::exec::{cargo, must, step};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// connect()+close through the kernel redirect vs a plain loopback listener, and the
    /// programs' own run time per call (needs root).
    Connect,
    /// Durable appends per second and the time to verify a million events, next to raw
    /// SHA-256 and fsync rates.
    Audit,
    /// Signed-call checks per second and login latency (SQLite and PostgreSQL) next to one
    /// Ed25519 verification and one argon2id hash; revocation-to-subscriber latency.
    Api,
    /// Credential unlocks per second and their latency with the local KMS and with moto,
    /// next to one AES-256-GCM open and one Ed25519 verification.
    Unlock,
    /// Bulk throughput and round trips through agent → tunnel → gateway next to a direct
    /// connection and `ssh -L`; interactive latency beside a bulk stream; memory per idle
    /// stream with 10,000 open.
    Tunnel,
    /// pgbench TPS, relay CPU per transaction and new-connection cost through lastmile
    /// (tcp and postgres resources) next to direct, pgbouncer and `ssh -L`.
    Pg,
    /// `scp` of 1 GiB and the keystroke round trip of an interactive `ssh` through lastmile
    /// next to a direct login and `ssh -J` through a second sshd (needs root: sshd).
    Ssh,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Connect => {
            if !crate::exec::is_root() {
                bail!(
                    "bench connect loads eBPF programs and needs root: `sudo cargo xtask bench connect`"
                );
            }
            crate::setup::run()?;
            step("bench connect");
            must(cargo().args(["bench", "-p", "lastmiled", "--bench", "connect"]))
        }
        Which::Api => {
            step("bench api");
            must(cargo().args(["bench", "-p", "lastmile-api", "--bench", "api"]))
        }
        Which::Unlock => {
            step("bench unlock");
            must(cargo().args(["bench", "-p", "lastmile-api", "--bench", "unlock"]))
        }
        Which::Tunnel => {
            step("bench tunnel");
            build_with_lastmile("tunnel")?;
            must(cargo().args(["bench", "-p", "lastmiled", "--bench", "tunnel"]))
        }
        Which::Pg => {
            step("bench pg");
            build_with_lastmile("pg")?;
            must(cargo().args(["bench", "-p", "lastmiled", "--bench", "pg"]))
        }
        Which::Ssh => {
            step("bench ssh");
            build_with_lastmile("ssh")?;
            must(cargo().args(["bench", "-p", "lastmiled", "--bench", "ssh"]))
        }
        Which::Audit => {
            step("bench audit");
            must(cargo().args(["bench", "-p", "lastmile-audit", "--bench", "audit"]))
        }
    }
}

/// Builds the `lastmile` binary that a lastmiled bench runs next to its own, in the same
/// cargo invocation as the bench, so both resolve one feature set: built apart (a plain
/// `build -p lastmile`, then `bench`, which adds lastmiled's dev-dependencies) about a
/// hundred crates compiled twice. The `cargo bench` after it compiles nothing.
fn build_with_lastmile(bench: &str) -> anyhow::Result<()> {
    must(cargo().args([
        "build",
        "--release",
        "-p",
        "lastmile",
        "-p",
        "lastmiled",
        "--bins",
        "--bench",
        bench,
    ]))
}

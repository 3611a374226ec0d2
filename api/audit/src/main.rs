//! `lastmile-audit`: the audit log's own process. See `lastmile-audit --help`.

use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lastmile_audit::{
    checkpoints::{self, Publisher},
    log::{DEFAULT_SEGMENT_BYTES, Log, read_entries},
    verify::verify,
};
use lastmile_audit_log::NoteVerifier;

#[derive(Debug, Parser)]
#[command(version, about = "lastmile's tamper-evident audit log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a log: its data directory and its signing key. Prints the verifier key, which
    /// whoever verifies the log should keep (pin) somewhere the log's host cannot change.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// The log's name in its checkpoints, e.g. `audit.example.org/lastmile`.
        #[arg(long)]
        origin: String,
    },
    /// Append events, one JSON object per line of standard input, as a local writer.
    /// Each batch is durable before "acked <last seq>" is printed; a checkpoint is signed
    /// at least every second while there are new events.
    Append {
        #[command(flatten)]
        log: LogArgs,
        /// This writer's name, recorded with each event.
        #[arg(long, default_value = "local")]
        writer: String,
        /// Most events per durable batch (one fsync each).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
    },
    /// Check the log against its checkpoints; exits 1 and names the first failing entry
    /// when anything is wrong.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// The verifier key (`name+id+key`, or a file holding it). Pin it: taking it from
        /// the log's own directory proves nothing against whoever controls that directory.
        #[arg(long)]
        key: String,
        /// More directories of checkpoint notes (witness copies).
        #[arg(long)]
        witness: Vec<PathBuf>,
        /// A checkpoint note trusted earlier: the log must still contain it.
        #[arg(long)]
        pinned: Option<PathBuf>,
    },
    /// Serve the log over HTTPS with mutual TLS (see `lastmile_audit::service`).
    Serve {
        /// Configuration file (TOML, an `[audit]` table).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the last entries.
    Tail {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(short = 'n', default_value_t = 10)]
        count: usize,
    },
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// The log's origin (as given to `init`).
    #[arg(long)]
    origin: String,
    /// Where checkpoints are also written, once each (write-once storage).
    #[arg(long)]
    witness: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lastmile-audit: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Init { data_dir, origin } => {
            let verifier = checkpoints::init_key(&data_dir, &origin)?;
            println!("{verifier}");
        }
        Command::Append { log, writer, batch } => append(&log, &writer, batch.max(1))?,
        Command::Verify {
            data_dir,
            key,
            witness,
            pinned,
        } => {
            let key_text = if Path::new(&key).is_file() {
                std::fs::read_to_string(&key)?
            } else {
                key
            };
            let verifier: NoteVerifier = key_text.trim().parse().context("not a verifier key")?;
            let mut dirs = vec![checkpoints::checkpoints_dir(&data_dir)];
            dirs.extend(witness);
            let pinned = match pinned {
                Some(p) => Some((
                    p.clone(),
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )),
                None => None,
            };
            let report = verify(&data_dir, &dirs, &verifier, pinned);
            for p in &report.problems {
                println!("FAIL {p}");
            }
            if report.torn_tail {
                println!(
                    "note: the newest segment ends in an unfinished write (never acknowledged)"
                );
            }
            if report.ok() {
                println!(
                    "ok: {} entries, {} checkpoints verified",
                    report.entries, report.checkpoints
                );
            } else {
                match report.first_failing_entry() {
                    Some(i) => println!("first failing entry: {i}"),
                    None => println!("the checkpoints themselves are not trustworthy"),
                }
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Serve { config } => {
            let config = lastmile_audit::service::ServeConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(lastmile_audit::service::serve(config))?;
        }
        Command::Tail { data_dir, count } => {
            let entries = read_entries(&data_dir)?;
            let total = entries.count() as usize;
            for (_, r) in entries.records().skip(total.saturating_sub(count)) {
                println!("{}", String::from_utf8_lossy(&r.payload));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn append(args: &LogArgs, writer: &str, batch: usize) -> anyhow::Result<()> {
    let (mut log, recovered) = Log::open(&args.data_dir, DEFAULT_SEGMENT_BYTES)?;
    if recovered.torn_bytes_cut > 0 {
        eprintln!(
            "recovered: cut {} bytes of an unfinished write",
            recovered.torn_bytes_cut
        );
    }
    let signer = checkpoints::load_signer(&args.data_dir, &args.origin)
        .context("no signing key: run `lastmile-audit init` first")?;
    let mut publisher = Publisher::new(&args.data_dir, &args.origin, signer, args.witness.clone())?;
    if let Some(last) = publisher.last_size()
        && last > log.size()
    {
        bail!(
            "the log holds {} entries but a checkpoint of size {last} was published: acknowledged \
             entries are missing; run `lastmile-audit verify` before appending",
            log.size()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout();
    let mut last_checkpoint = Instant::now();
    let mut done = false;
    while !done {
        let mut events = Vec::with_capacity(batch);
        while events.len() < batch {
            match lines.next() {
                Some(line) => {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let event: serde_json::Value = serde_json::from_str(&line)
                        .with_context(|| format!("not a JSON event: {line}"))?;
                    if !event.is_object() {
                        bail!("an event must be a JSON object: {line}");
                    }
                    events.push(event);
                }
                None => {
                    done = true;
                    break;
                }
            }
        }
        if !events.is_empty() {
            let range = log.append(events, writer, SystemTime::now())?;
            writeln!(stdout, "acked {}", range.end - 1)?;
            stdout.flush()?;
        }
        if done || last_checkpoint.elapsed() >= Duration::from_secs(1) {
            publisher.publish(log.size(), log.root(), unix_now())?;
            last_checkpoint = Instant::now();
        }
    }
    Ok(())
}

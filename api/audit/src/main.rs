//! `lastmile-audit`: the audit log's own process (init, append, serve). Reading and
//! verifying the log is `lastmile audit …`, in the client.

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lastmile_audit::checkpoints::{self, KeySource, Signer};

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
        /// Where to make the signing key: on another filesystem than the data (default
        /// DATA_DIR/signing.key, which the service warns about).
        #[arg(long, conflicts_with = "kms_key_id")]
        signing_key: Option<PathBuf>,
        #[command(flatten)]
        kms: KmsArgs,
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
    /// Serve the log over HTTPS with mutual TLS (see `lastmile_audit::service`).
    Serve {
        /// Configuration file (TOML, an `[audit]` table).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// The log's origin (as given to `init`).
    #[arg(long)]
    origin: String,
    /// The signing key (as given to `init`; default DATA_DIR/signing.key).
    #[arg(long, conflicts_with = "kms_key_id")]
    signing_key: Option<PathBuf>,
    #[command(flatten)]
    kms: KmsArgs,
    /// Where checkpoints are also written, once each (write-once storage).
    #[arg(long)]
    witness: Option<PathBuf>,
}

/// A signing key held by a KMS (AWS KMS or a server speaking its API) instead of a file:
/// an ECC_NIST_P256 key for SIGN_VERIFY. Credentials come from AWS_ACCESS_KEY_ID and
/// AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN).
#[derive(Debug, clap::Args)]
struct KmsArgs {
    /// The KMS key (id, ARN or alias/…) that signs checkpoints.
    #[arg(long)]
    kms_key_id: Option<String>,
    /// The KMS's region.
    #[arg(long, default_value = "us-east-1", requires = "kms_key_id")]
    kms_region: String,
    /// The KMS's endpoint (default: the region's AWS endpoint).
    #[arg(long, requires = "kms_key_id")]
    kms_endpoint: Option<String>,
}

impl KmsArgs {
    /// The key source: the KMS key when one is named, else the key file.
    fn source(&self, signing_key: Option<PathBuf>, data_dir: &std::path::Path) -> KeySource {
        match &self.kms_key_id {
            Some(key_id) => KeySource::Kms(lastmile_vault::AwsConfig {
                endpoint: self.kms_endpoint.clone(),
                region: self.kms_region.clone(),
                key_id: key_id.clone(),
                access_key_id: None,
                secret_access_key: None,
            }),
            None => KeySource::File(signing_key.unwrap_or_else(|| checkpoints::key_path(data_dir))),
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Init {
            data_dir,
            origin,
            signing_key,
            kms,
        } => {
            let verifier = match kms.source(signing_key, &data_dir) {
                KeySource::File(key) => checkpoints::init_key_at(&data_dir, &key, &origin)?,
                source @ KeySource::Kms(_) => {
                    let signer = runtime()?.block_on(Signer::load(&source, &origin))?;
                    let verifier = signer.verifier();
                    checkpoints::init_verifier(&data_dir, &verifier)?;
                    verifier
                }
            };
            println!("{verifier}");
        }
        Command::Append { log, writer, batch } => append(&log, &writer, batch.max(1))?,
        Command::Serve { config } => {
            let config = lastmile_audit::service::ServeConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(lastmile_audit::service::serve(config))?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A runtime for the KMS calls of the local commands.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn append(args: &LogArgs, writer: &str, batch: usize) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let (mut log, recovered, mut publisher) =
        runtime.block_on(lastmile_audit::open_for_writing(
            &args.data_dir,
            &args.kms.source(args.signing_key.clone(), &args.data_dir),
            &args.origin,
            args.witness.clone(),
        ))?;
    if recovered.torn_bytes_cut > 0 {
        eprintln!(
            "recovered: cut {} bytes of an unfinished write",
            recovered.torn_bytes_cut
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
            runtime.block_on(publisher.publish(log.size(), log.root(), unix_now()))?;
            last_checkpoint = Instant::now();
        }
    }
    Ok(())
}

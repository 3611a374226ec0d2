//! lastmiled: the host daemon. See `lastmiled --help`.

mod probe;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lastmiled::{config::NodeConfig, intercept};

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
    /// The node role: kernel interception on this host.
    Node {
        #[command(subcommand)]
        action: Option<NodeAction>,
        /// Configuration file (TOML); the embedded defaults are used without one.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// The gateway role: the far end of users' tunnels, the last hop to resources.
    Gateway {
        #[command(subcommand)]
        action: Option<GatewayAction>,
        /// Configuration file (TOML); the embedded defaults are used without one.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Connect to ADDRESS as any program would, and print as JSON where the connection
    /// went. Shows whether a target is intercepted from this process's cgroup.
    Probe(probe::Args),
}

#[derive(Debug, Subcommand)]
enum NodeAction {
    /// Load and attach the programs (or keep those already pinned), protect the configured
    /// targets, and hand redirected connections to agents. The default action. SIGHUP
    /// reloads the configuration; on exit the interception stays in place.
    Run,
    /// Get this node's audit-writer certificate (`urn:lastmile:node:NAME`) with a
    /// one-time token from `lastmile-api nodes token NAME`; stored in `[api] state_dir`
    /// and presented to the audit service (`[node.audit.service]`) from then on.
    Enroll {
        /// The one-time enrollment token.
        #[arg(long)]
        token: String,
        /// The organisation's CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The API (default: `[api] url`).
        #[arg(long)]
        api: Option<String>,
    },
    /// Show the attached programs, map fill and counters, from the pins.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Detach the programs and remove the pinned maps: interception stops. Refused while
    /// `lastmiled node run` is running here, unless `--force`.
    Detach {
        /// Remove the interception under a running node (it keeps running, intercepting
        /// nothing, until it is restarted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GatewayAction {
    /// Announce this gateway to the API and serve tunnels. The default action.
    Run,
    /// Make this host's gateway key and get its certificate with a one-time token from
    /// `lastmile-api gateways token NAME --address …`; stored in `[api] state_dir`.
    Enroll {
        /// The one-time enrollment token.
        #[arg(long)]
        token: String,
        /// The organisation's CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The API (default: `[api] url`).
        #[arg(long)]
        api: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node { action, config } => match action.unwrap_or(NodeAction::Run) {
            NodeAction::Run => lastmiled::node::run(config.as_deref()),
            NodeAction::Status { output } => status(config.as_deref(), output),
            NodeAction::Detach { force } => detach(config.as_deref(), force),
            NodeAction::Enroll { token, ca, api } => {
                enroll_node(config.as_deref(), &token, &ca, api)
            }
        },
        Command::Gateway { action, config } => match action.unwrap_or(GatewayAction::Run) {
            GatewayAction::Run => lastmiled::gateway::run(config.as_deref()),
            GatewayAction::Enroll { token, ca, api } => enroll(config.as_deref(), &token, &ca, api),
        },
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

fn status(config: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let whole = lastmiled::config::Config::load(config)?;
    let known = lastmiled::node::targets::known(&whole)?;
    let config = whole.node;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "reading the pins under {} needs root: run `sudo lastmiled node status`",
            config.pin_dir.display()
        );
    }
    let status = intercept::pinned_status(&config.pin_dir)?;
    let attached = status.programs.iter().any(|p| p.attached);
    let targets =
        lastmiled::node::targets::rows(&known, &intercept::PinnedTarget::read_all(&config.pin_dir));
    match output {
        Output::Json => {
            #[derive(serde::Serialize)]
            struct NodeStatus<'a> {
                #[serde(flatten)]
                pinned: &'a intercept::PinnedStatus,
                targets: &'a [lastmiled::node::targets::TargetRow],
            }
            let both = NodeStatus {
                pinned: &status,
                targets: &targets,
            };
            println!("{}", serde_json::to_string_pretty(&both)?);
        }
        Output::Text => {
            println!("pins: {}", status.pin_dir.display());
            for p in &status.programs {
                let runs = match (p.run_count, p.run_time_ns) {
                    (Some(n), Some(t)) if n > 0 => format!(", {n} runs, {} ns/run", t / n),
                    _ => String::new(),
                };
                match (p.attached, p.link_id, p.program_id, p.cgroup_id) {
                    (true, Some(l), Some(id), Some(cg)) => println!(
                        "  {:<13} attached (link {l}, program {id}, cgroup {cg}{runs})",
                        p.name
                    ),
                    _ => println!("  {:<13} NOT attached", p.name),
                }
            }
            println!(
                "protected: {} IPv4, {} IPv6 entries; {} records awaiting accept",
                status.protected_v4, status.protected_v6, status.records_by_client
            );
            match status.counters {
                Some(c) => println!(
                    "counters: redirected {}, refused {}, passed through {}, exempt {}, other netns {}, \
                     unprotected {}, events dropped {}, records dropped {}",
                    c.redirected,
                    c.refused,
                    c.passed_through,
                    c.exempt,
                    c.other_netns,
                    c.unprotected,
                    c.events_dropped,
                    c.records_dropped
                ),
                None => println!(
                    "counters: unavailable (nothing pinned; is `lastmiled node run` set up here?)"
                ),
            }
            for line in lastmiled::node::targets::describe(&targets, &config.pin_dir) {
                println!("{line}");
            }
        }
    }
    if !attached {
        anyhow::bail!(
            "not attached: nothing intercepts connections on this host (no program pinned \
             under {}); `lastmiled node run` attaches",
            config.pin_dir.display()
        );
    }
    Ok(())
}

/// The configuration's `[api]`, pointed at `api` when given, and a runtime for one call.
fn api_and_runtime(
    config: Option<&Path>,
    api: Option<String>,
) -> anyhow::Result<(lastmiled::config::ApiConfig, tokio::runtime::Runtime)> {
    let mut config = lastmiled::config::Config::load(config)?;
    if let Some(url) = api {
        config.api.url = url;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((config.api, runtime))
}

fn enroll(
    config: Option<&Path>,
    token: &str,
    ca: &Path,
    api: Option<String>,
) -> anyhow::Result<()> {
    let (api, runtime) = api_and_runtime(config, api)?;
    let name = runtime.block_on(lastmiled::gateway::enroll(&api, ca, token))?;
    eprintln!(
        "enrolled as gateway `{name}`; identity in {}",
        api.state_dir.display()
    );
    Ok(())
}

fn enroll_node(
    config: Option<&Path>,
    token: &str,
    ca: &Path,
    api: Option<String>,
) -> anyhow::Result<()> {
    let (api, runtime) = api_and_runtime(config, api)?;
    let (name, expires_at) = runtime.block_on(lastmiled::gateway::enroll_node(&api, ca, token))?;
    eprintln!(
        "enrolled as node `{name}`; identity in {} (certificate until unix time {expires_at}: \
         enroll again with a new token before then)",
        api.state_dir.display()
    );
    Ok(())
}

fn detach(config: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let config = NodeConfig::load(config)?;
    // A running node answers on its agent socket.
    if lastmile_handoff::AgentLink::node_listens(&config.agent_socket) {
        if !force {
            anyhow::bail!(
                "`lastmiled node run` is running here (it answers on {}): stop it first \
                 (interception stays pinned when it stops, and detach then removes it), or \
                 `lastmiled node detach --force` to remove interception under it",
                config.agent_socket.display()
            );
        }
        eprintln!(
            "warning: lastmiled node is running; it keeps running but intercepts nothing until restarted"
        );
    }
    let removed = intercept::unpin_all(&config.pin_dir)
        .with_context(|| format!("removing {}", config.pin_dir.display()))?;
    if removed {
        eprintln!("detached: removed {}", config.pin_dir.display());
    } else {
        eprintln!("nothing pinned at {}", config.pin_dir.display());
    }
    Ok(())
}

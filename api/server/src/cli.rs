//! `lastmile-api`'s command line: the commands and their flags, and how results print
//! for people (values as the flags spell them) or as JSON.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lastmile_proto::wire::{CredentialKind, DevicePolicy, ResourceKind, UpstreamTls};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "lastmile-api", version, about = "lastmile's control plane")]
pub(crate) struct Cli {
    /// Configuration file (TOML, an [api] table); without one, the defaults.
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the organisation: CAs, the API's TLS certificate, the database, and the
    /// first admin, whose one-time password is printed once.
    Init {
        /// The organisation's name.
        #[arg(long, default_value = "lastmile")]
        org: String,
        /// The first admin's user name.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Where to write a copy of the organisation's CA certificate, readable by all
        /// (public; what `lastmile login --ca` and `lastmiled gateway enroll --ca` take).
        /// Default: `org-ca.pem` next to `--config`, else in the current directory.
        #[arg(long)]
        ca_out: Option<PathBuf>,
    },
    /// Serve the API.
    Serve,
    /// Users and groups.
    #[command(subcommand)]
    Users(Users),
    /// What users can reach.
    #[command(subcommand)]
    Resources(Resources),
    /// Who may reach what.
    #[command(subcommand)]
    Grants(Grants),
    /// Users' devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Login sessions.
    #[command(subcommand)]
    Sessions(Sessions),
    /// Gateways and their enrollment tokens.
    #[command(subcommand)]
    Gateways(Gateways),
    /// Nodes' audit-writer identities.
    #[command(subcommand)]
    Nodes(Nodes),
    /// Security readers of the audit log.
    #[command(subcommand, name = "audit-readers")]
    AuditReaders(AuditReaders),
    /// Organisation settings.
    #[command(subcommand)]
    Org(Org),
    /// The credential vault.
    #[command(subcommand)]
    Credentials(Credentials),
}

#[derive(Debug, Subcommand)]
pub(crate) enum Users {
    List,
    /// Add a user; prints a one-time password they change at first login.
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    Delete {
        name: String,
    },
    MakeAdmin {
        name: String,
    },
    DropAdmin {
        name: String,
    },
    Join {
        name: String,
        group: String,
    },
    Leave {
        name: String,
        group: String,
    },
    /// A new one-time password.
    ResetPassword {
        name: String,
    },
    /// Turn TOTP on (prints the otpauth:// URI once) or off.
    Totp {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

/// A wire enum from its serde name, as the API and the database spell it.
pub(crate) fn wire<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}` is not one of the values listed in --help"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Credentials {
    /// Store a new version of a resource's credential, read from standard input (or
    /// --file), never from the command line.
    Set {
        resource: String,
        /// password | ssh-key
        #[arg(long, value_parser = wire::<CredentialKind>, default_value = "password")]
        kind: CredentialKind,
        /// Read the secret from this file instead of standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Stored credentials (never their secrets).
    List,
    /// Re-wrap every stored data key under another KMS master key (the local KMS makes
    /// a new one when --to is not given).
    Rotate {
        #[arg(long)]
        to: Option<String>,
    },
}

// Parsed once per process: the size of its biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Resources {
    List,
    /// Create or replace a resource.
    Put {
        name: String,
        /// postgres | ssh | tcp
        #[arg(long, value_parser = wire::<ResourceKind>)]
        kind: ResourceKind,
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u16,
        /// Addresses nodes redirect: ADDR:PORT, [ADDR6]:PORT, PREFIX/LEN:PORT.
        #[arg(long)]
        protect: Vec<String>,
        /// A DNS name users dial for it, resolving to a protected address (repeat): put in
        /// the gateway's SSH host and TLS certificates for it and in users' known_hosts.
        #[arg(long = "dns-name")]
        names: Vec<String>,
        /// For postgres: disable | require | verify-full (default require); other kinds
        /// refuse it.
        #[arg(long, value_parser = wire::<UpstreamTls>)]
        upstream_tls: Option<UpstreamTls>,
        /// How the gateway logs in: a stored password or ssh-key, or an ssh-certificate
        /// signed per connection (password | ssh-key | ssh-certificate).
        #[arg(long, value_parser = wire::<CredentialKind>)]
        credential: Option<CredentialKind>,
        /// For ssh-certificate: an upstream user the certificates may log in as.
        #[arg(long = "ssh-principal")]
        ssh_principals: Vec<String>,
        /// For postgres: the database user the gateway logs in as (connections are
        /// refused, saying so, until it is set).
        #[arg(long)]
        database_user: Option<String>,
        /// For postgres: a database clients may ask for (repeat; none means any).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// For upstream-tls verify-full: a PEM file of the CA the target's certificate
        /// must chain to (default: the gateway host's system roots).
        #[arg(long)]
        upstream_ca: Option<PathBuf>,
        /// For ssh: a file of OpenSSH CA public keys whose host certificates the gateway
        /// accepts from the target (default, with no --ssh-host-keys either: the
        /// organisation's own SSH host CA; a target's key is never trusted on first use).
        #[arg(long)]
        ssh_host_ca: Option<PathBuf>,
        /// For ssh: a file of the target's OpenSSH host public keys, pinned (for example
        /// the output of `ssh-keyscan`, or /etc/ssh/ssh_host_*_key.pub).
        #[arg(long)]
        ssh_host_keys: Option<PathBuf>,
        /// For ssh: let users forward ports through the target (`ssh -L`, `-J`).
        #[arg(long)]
        ssh_allow_port_forwarding: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Grants {
    List,
    Add {
        resource: String,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        user: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// How long the grant lasts (e.g. 8h, 30d); forever without.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Devices {
    List {
        #[arg(long)]
        user: Option<String>,
    },
    Approve {
        id: String,
    },
    /// Revoke a device and end its sessions.
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Sessions {
    List {
        /// Include ended sessions.
        #[arg(long)]
        all: bool,
    },
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Gateways {
    List,
    /// A one-time enrollment token for a gateway.
    Token {
        name: String,
        /// DNS names and addresses the gateway serves on.
        #[arg(long = "address")]
        addresses: Vec<String>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: Duration,
    },
    Revoke {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Nodes {
    /// A one-time token for `lastmiled node enroll`, which gets the node a certificate
    /// naming `urn:lastmile:node:NAME` for its writes to the audit service.
    Token {
        name: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditReaders {
    /// A reader certificate (`urn:lastmile:audit-reader:NAME`, client authentication) for
    /// the key in a CSR, e.g. `openssl req -new -newkey ed25519 -nodes -keyout me.key
    /// -subj /CN=NAME -out me.csr`; printed as PEM.
    Issue {
        name: String,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "90days")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Org {
    /// How unknown devices are treated: trusted on first use, or pending approval.
    DevicePolicy {
        /// tofu | approval
        #[arg(value_parser = wire::<DevicePolicy>)]
        policy: DevicePolicy,
    },
}

pub(crate) fn print<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => {
            let t = text(value);
            if !t.is_empty() {
                println!("{t}");
            }
        }
    }
    Ok(())
}

/// A value as the CLI's flags and the JSON output spell it (`postgres`, `ssh-key`,
/// `trusted`), not as Rust's Debug does (`Postgres`).
pub(crate) fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

pub(crate) fn when(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

//! `lastmile-api`: set up an organisation, serve the API, and administer it locally.
//!
//! The administrative commands work on the configured database directly (as the service
//! user, on the API's host), through the same checked and audited code as the HTTP admin
//! endpoints; a running API sees their effects at once, revocations included.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lastmile_api::{
    ApiConfig, App,
    admin::{self, UserChange},
    gateways,
};
use lastmile_proto::wire::{
    CredentialKind, DevicePolicy, DeviceStatus, NewGatewayToken, NewGrant, NewUser, Resource,
    ResourceKind, Subject, UpstreamTls,
};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "lastmile-api", version, about = "lastmile's control plane")]
struct Cli {
    /// Configuration file (TOML, an [api] table); without one, the defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Organisation settings.
    #[command(subcommand)]
    Org(Org),
    /// The credential vault.
    #[command(subcommand)]
    Credentials(Credentials),
}

#[derive(Debug, Subcommand)]
enum Users {
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
fn wire<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}` is not one of the values listed in --help"))
}

#[derive(Debug, Subcommand)]
enum Credentials {
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

#[derive(Debug, Subcommand)]
enum Resources {
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
enum Grants {
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
enum Devices {
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
enum Sessions {
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
enum Gateways {
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
enum Org {
    /// How unknown devices are treated: trusted on first use, or pending approval.
    DevicePolicy {
        /// tofu | approval
        #[arg(value_parser = wire::<DevicePolicy>)]
        policy: DevicePolicy,
    },
}

fn print<T: Serialize>(
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
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

/// `HOST:PORT` as a user writes it: `[::1]:5432` for an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn when(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

fn actor() -> String {
    let uid = nix_uid();
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default();
    if name.is_empty() {
        format!("cli:uid={uid}")
    } else {
        format!("cli:{name}(uid={uid})")
    }
}

fn nix_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = ApiConfig::load(cli.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(cli, config))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain on one line, as the other binaries print it (not anyhow's
            // `Caused by:` list, nor a backtrace whenever RUST_BACKTRACE is set).
            eprintln!("lastmile-api: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: ApiConfig) -> anyhow::Result<()> {
    let out = cli.output;
    if let Command::Init { org, admin, ca_out } = &cli.command {
        let ca_out = ca_out.clone().unwrap_or_else(|| {
            cli.config
                .as_deref()
                .and_then(std::path::Path::parent)
                .unwrap_or(std::path::Path::new(""))
                .join("org-ca.pem")
        });
        return init(config, org, admin, &ca_out, out).await;
    }
    let app = App::open(config)
        .await
        .context("opening the organisation")?;
    let who = actor();
    match cli.command {
        Command::Init { .. } => unreachable_init(),
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(app.config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", app.config.listen))?;
            lastmile_api::http::serve(app, listener).await
        }
        Command::Users(u) => {
            let change = match u {
                Users::List => {
                    return print(out, &admin::list_users(&app).await?, |us| {
                        us.iter()
                            .map(|u| {
                                format!(
                                    "{:<20} {}{}{}{}",
                                    u.name,
                                    if u.admin { "admin " } else { "" },
                                    if u.disabled { "disabled " } else { "" },
                                    if u.totp { "totp " } else { "" },
                                    if u.groups.is_empty() {
                                        String::new()
                                    } else {
                                        format!("groups={}", u.groups.join(","))
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
                Users::Add {
                    name,
                    admin: a,
                    groups,
                } => {
                    let otp = admin::add_user(
                        &app,
                        &who,
                        NewUser {
                            name,
                            admin: a,
                            groups,
                        },
                    )
                    .await?;
                    return print(out, &otp, |o| {
                        format!(
                            "user {} created; one-time password (shown once): {}",
                            o.user, o.one_time_password
                        )
                    });
                }
                Users::ResetPassword { name } => {
                    let otp = admin::reset_password(&app, &who, &name).await?;
                    return print(out, &otp, |o| {
                        format!(
                            "one-time password for {} (shown once): {}",
                            o.user, o.one_time_password
                        )
                    });
                }
                Users::Totp { name, state } => {
                    let uri = admin::set_totp(&app, &who, &name, state == "on").await?;
                    return print(
                        out,
                        &serde_json::json!({"user": name, "otpauth": uri}),
                        |_| match &uri {
                            Some(u) => format!(
                                "TOTP on for {name}; add this to an authenticator (shown once):\n{u}"
                            ),
                            None => format!("TOTP off for {name}"),
                        },
                    );
                }
                Users::Disable { name } => (name, UserChange::Disable),
                Users::Enable { name } => (name, UserChange::Enable),
                Users::Delete { name } => (name, UserChange::Delete),
                Users::MakeAdmin { name } => (name, UserChange::Admin(true)),
                Users::DropAdmin { name } => (name, UserChange::Admin(false)),
                Users::Join { name, group } => (name, UserChange::JoinGroup(group)),
                Users::Leave { name, group } => (name, UserChange::LeaveGroup(group)),
            };
            admin::change_user(&app, &who, &change.0, change.1).await?;
            print(out, &serde_json::json!({"ok": true}), |_| String::new())
        }
        Command::Resources(r) => match r {
            Resources::List => print(out, &admin::list_resources(&app).await?, |rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "{:<20} {:<8} {} protect=[{}]{}",
                            r.name,
                            wire_name(&r.kind),
                            host_port(&r.host, r.port),
                            r.protect.join(", "),
                            // Only the kinds it applies to (postgres) have one.
                            r.upstream_tls
                                .map(|t| format!(" upstream_tls={}", wire_name(&t)))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Resources::Put {
                name,
                kind,
                host,
                port,
                protect,
                upstream_tls,
                credential,
                ssh_principals,
                database_user,
                databases,
                upstream_ca,
                ssh_host_ca,
                ssh_host_keys,
                ssh_allow_port_forwarding,
            } => {
                let ssh_host_ca = ssh_key_lines(ssh_host_ca.as_deref(), "--ssh-host-ca")?;
                let ssh_host_keys = ssh_key_lines(ssh_host_keys.as_deref(), "--ssh-host-keys")?;
                let upstream_ca = upstream_ca
                    .map(|f| {
                        std::fs::read_to_string(&f)
                            .with_context(|| format!("reading --upstream-ca {}", f.display()))
                    })
                    .transpose()?;
                let r = Resource {
                    name,
                    kind,
                    host,
                    port,
                    protect,
                    upstream_tls,
                    credential,
                    ssh_principals,
                    database_user,
                    databases,
                    upstream_ca,
                    ssh_host_ca,
                    ssh_host_keys,
                    ssh_allow_port_forwarding,
                };
                let r = admin::put_resource(&app, &who, r).await?;
                print(out, &r, |r| format!("resource {} saved", r.name))
            }
            Resources::Delete { name } => {
                admin::delete_resource(&app, &who, &name).await?;
                print(out, &serde_json::json!({"ok": true}), |_| {
                    format!("resource {name} deleted")
                })
            }
        },
        Command::Grants(g) => match g {
            Grants::List => print(out, &admin::list_grants(&app).await?, |gs| {
                gs.iter()
                    .map(|g| {
                        format!(
                            "{} {:<20} {}{}",
                            g.id,
                            g.resource,
                            match &g.subject {
                                Subject::User(u) => format!("user {u}"),
                                Subject::Group(g) => format!("group {g}"),
                            },
                            g.expires_at
                                .map(|e| format!(" until {}", when(e)))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Grants::Add {
                resource,
                user,
                group,
                expires_in,
            } => {
                let subject = match (user, group) {
                    (Some(u), None) => Subject::User(u),
                    (None, Some(g)) => Subject::Group(g),
                    _ => bail!("give exactly one of --user or --group"),
                };
                let expires_at =
                    expires_in.map(|d| lastmile_api::db::now() + lastmile_api::config::secs(d));
                let g = admin::add_grant(
                    &app,
                    &who,
                    NewGrant {
                        resource,
                        subject,
                        expires_at,
                    },
                )
                .await?;
                print(out, &g, |g| format!("grant {} created", g.id))
            }
            Grants::Revoke { id } => {
                admin::revoke_grant(&app, &who, &id).await?;
                print(out, &serde_json::json!({"ok": true}), |_| {
                    format!("grant {id} revoked")
                })
            }
        },
        Command::Devices(d) => match d {
            Devices::List { user } => print(
                out,
                &admin::list_devices(&app, user.as_deref()).await?,
                |ds| {
                    ds.iter()
                        .map(|d| {
                            format!(
                                "{} {:<16} {:<8} {:<24} last seen {}",
                                d.id,
                                d.user,
                                wire_name(&d.status),
                                d.name,
                                when(d.last_seen)
                            )
                            .to_lowercase()
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            ),
            Devices::Approve { id } => {
                admin::set_device_status(&app, &who, &id, DeviceStatus::Trusted).await?;
                print(out, &serde_json::json!({"ok": true}), |_| {
                    format!("device {id} approved")
                })
            }
            Devices::Revoke { id } => {
                admin::set_device_status(&app, &who, &id, DeviceStatus::Revoked).await?;
                print(out, &serde_json::json!({"ok": true}), |_| {
                    format!("device {id} revoked; its sessions ended")
                })
            }
        },
        Command::Sessions(s) => match s {
            Sessions::List { all } => print(out, &admin::list_sessions(&app, all).await?, |ss| {
                ss.iter()
                    .map(|s| {
                        format!(
                            "{} {:<16} {} until {}{}",
                            s.id,
                            s.user,
                            s.device,
                            when(s.expires_at),
                            s.revoke_reason
                                .as_ref()
                                .map(|r| format!(" REVOKED: {r}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Sessions::Revoke { id, reason } => {
                let r = admin::revoke(&app, &who, &id, reason.as_deref()).await?;
                print(out, &r, |r| format!("session {} revoked", r.session))
            }
        },
        Command::Gateways(g) => match g {
            Gateways::List => print(out, &gateways::list(&app).await?, |gs| {
                gs.iter()
                    .map(|g| {
                        format!(
                            "{:<20} [{}] certificate until {}",
                            g.name,
                            g.addresses.join(", "),
                            when(g.certificate_expires_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Gateways::Token {
                name,
                addresses,
                ttl,
            } => {
                let t = gateways::new_token(
                    &app,
                    &who,
                    NewGatewayToken {
                        name,
                        addresses,
                        ttl: Some(lastmile_api::config::secs(ttl)),
                    },
                )
                .await?;
                print(out, &t, |t| {
                    format!(
                        "enrollment token for gateway {} (one use, until {}):\n{}",
                        t.name,
                        when(t.expires_at),
                        t.token
                    )
                })
            }
            Gateways::Revoke { name } => {
                gateways::revoke(&app, &who, &name).await?;
                print(out, &serde_json::json!({"ok": true}), |_| {
                    format!("gateway {name} revoked")
                })
            }
        },
        Command::Credentials(c) => credentials(&app, &who, out, c).await,
        Command::Org(Org::DevicePolicy { policy }) => {
            admin::set_device_policy(&app, &who, policy).await?;
            print(out, &serde_json::json!({"device_policy": policy}), |_| {
                format!("device policy: {}", admin::stored_name(&policy))
            })
        }
    }
}

async fn credentials(app: &App, who: &str, out: Output, c: Credentials) -> anyhow::Result<()> {
    match c {
        Credentials::Set {
            resource,
            kind,
            file,
        } => {
            let mut secret = zeroize::Zeroizing::new(Vec::new());
            match &file {
                Some(f) => std::io::Read::read_to_end(
                    &mut std::fs::File::open(f)
                        .with_context(|| format!("reading {}", f.display()))?,
                    &mut secret,
                )?,
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("secret for {resource} (then Ctrl-D):");
                    }
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut secret)?
                }
            };
            // One trailing newline is the shell's, not the secret's.
            if kind == CredentialKind::Password && secret.last() == Some(&b'\n') {
                secret.pop();
                if secret.last() == Some(&b'\r') {
                    secret.pop();
                }
            }
            let info =
                lastmile_api::vault::set_credential(app, who, &resource, kind, secret).await?;
            print(out, &info, |i| {
                format!(
                    "credential for {} stored: version {}, data key wrapped by KMS key {}",
                    i.resource, i.version, i.key_id
                )
            })
        }
        Credentials::List => print(
            out,
            &lastmile_api::vault::list_credentials(app).await?,
            |cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{:<20} v{:<3} {} kms key {} by {} at {}",
                            c.resource,
                            c.version,
                            wire_name(&c.kind),
                            c.key_id,
                            c.created_by,
                            when(c.created_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        Credentials::Rotate { to } => {
            let (to, fresh) = match (to, &app.kms) {
                (Some(k), _) => (k, None),
                (None, lastmile_vault::Kms::Local(_)) => {
                    let mut local = lastmile_vault::LocalKms::open(&app.config.kms_dir())?;
                    let id = local.new_key()?;
                    (id, Some(lastmile_vault::Kms::Local(local)))
                }
                (None, lastmile_vault::Kms::Aws(_)) => {
                    bail!("with AWS KMS, name the new key: --to KEY_ID")
                }
            };
            let kms = fresh.as_ref().unwrap_or(&app.kms);
            let n = lastmile_api::vault::rotate(app, kms, who, &to).await?;
            // The organisation's own private keys move too.
            let keys =
                lastmile_api::pki::Pki::rewrap_keys(&app.config.keys_dir(), kms, &to).await?;
            print(
                out,
                &serde_json::json!({"rewrapped": n, "organisation_keys": keys, "kms_key": to}),
                |_| {
                    format!(
                        "{n} credential data keys and {keys} organisation keys re-wrapped under {to}"
                    )
                },
            )
        }
    }
}

fn unreachable_init() -> anyhow::Result<()> {
    bail!("init is handled before the organisation is opened")
}

async fn init(
    config: ApiConfig,
    org: &str,
    admin_name: &str,
    ca_out: &std::path::Path,
    out: Output,
) -> anyhow::Result<()> {
    if !lastmile_proto::wire::valid_name(org) {
        bail!(
            "`{org}` is not a valid organisation name: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        );
    }
    let keys = config.keys_dir();
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .context("opening the KMS")?;
    lastmile_api::pki::Pki::create(&keys, org, &config.names, &kms)
        .await
        .with_context(|| format!("creating the organisation's keys in {}", keys.display()))?;
    let done = async {
        let app = App::open(config).await?;
        let otp = admin::bootstrap(&app, admin_name).await?;
        anyhow::Ok((app, otp))
    }
    .await;
    let done = match done {
        Ok((app, otp)) => publish_ca(&keys.join("ca.crt"), ca_out).map(|ca| (app, otp, ca)),
        Err(e) => Err(e),
    };
    let (app, otp, ca_copy) = match done {
        Ok(v) => v,
        Err(e) => {
            // Leave nothing half made: the keys were new, so they go.
            let _ = std::fs::remove_dir_all(&keys);
            return Err(e.context("creating the organisation failed; its new keys were removed"));
        }
    };
    print(
        out,
        &serde_json::json!({
            "organisation": org,
            "keys": keys,
            "database": lastmile_api::db::redact(&app.config.database_url()),
            "admin": otp.user,
            "one_time_password": otp.one_time_password,
            "ca_certificate": ca_copy,
        }),
        |_| {
            format!(
                "organisation {org} created\n  keys:     {}\n  database: {}\n  CA certificate (public; give it to users and hosts for --ca): {}\n  admin:    {}\n  one-time password (shown once, changed at first login): {}",
                keys.display(),
                lastmile_api::db::redact(&app.config.database_url()),
                ca_copy.display(),
                otp.user,
                otp.one_time_password
            )
        },
    )
}

/// Writes a copy of the organisation's CA certificate to `to`, mode 0644 (the key
/// stays in the 0700 keys directory). An existing file is replaced only if it already
/// holds this certificate; another organisation's CA is never overwritten.
fn publish_ca(ca: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    match std::fs::read(to) {
        Ok(existing) if existing == pem => {}
        Ok(_) => bail!(
            "{} already holds another certificate: move it away or give `--ca-out` another path",
            to.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = to.with_extension("pem.tmp");
            // A leftover of an init that was killed here.
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            // Whatever the umask: the point of the copy is that everyone can read it.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            file.write_all(&pem)?;
            file.sync_all()?;
            std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", to.display())),
    }
    Ok(std::path::absolute(to).unwrap_or_else(|_| to.to_owned()))
}

/// The OpenSSH public key lines of `file` (blank lines, comments and a leading
/// `@cert-authority PATTERN` or `ssh-keyscan`'s `HOST` dropped), for `flag`.
fn ssh_key_lines(file: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Vec<String>> {
    let Some(file) = file else {
        return Ok(vec![]);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {flag} {}", file.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let start = words
                .iter()
                .position(|w| {
                    w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-")
                })
                .unwrap_or(0);
            words.get(start..).unwrap_or_default().join(" ")
        })
        .collect())
}

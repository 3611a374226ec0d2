//! `lastmile-api`: set up an organisation, serve the API, and administer it locally.
//!
//! The administrative commands work on the configured database directly (as the service
//! user, on the API's host), through the same checked and audited code as the HTTP admin
//! endpoints; a running API sees their effects at once, revocations included.

use anyhow::{Context as _, bail};
use clap::Parser;
use lastmile_api::{
    ApiConfig, App,
    admin::{self, UserChange},
    gateways,
};
use lastmile_proto::wire::{
    CredentialKind, DeviceStatus, NewGatewayToken, NewGrant, NewUser, Resource, Subject,
};

mod cli;
mod init;

use self::{cli::*, init::init};

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
                            lastmile_proto::wire::host_port(&r.host, r.port),
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
                names,
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
                    names,
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
        Command::Nodes(Nodes::Token { name, ttl }) => {
            let t =
                lastmile_api::nodes::new_token(&app, &who, &name, lastmile_api::config::secs(ttl))
                    .await?;
            print(out, &t, |t| {
                format!(
                    "enrollment token for node {} (one use, until {}):\n{}",
                    t.name,
                    when(t.expires_at),
                    t.token
                )
            })
        }
        Command::AuditReaders(AuditReaders::Issue { name, csr, ttl }) => {
            let csr = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading the CSR {}", csr.display()))?;
            let c = lastmile_api::nodes::issue_reader(
                &app,
                &who,
                &name,
                &csr,
                lastmile_api::config::secs(ttl),
            )
            .await?;
            print(out, &c, |c| c.certificate.trim_end().to_owned())
        }
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

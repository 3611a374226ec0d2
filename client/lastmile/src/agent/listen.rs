//! `lastmile listen`: the agent's core for one resource on a local port.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tracing::warn;

use lastmile_proto::connection::ClientConnectionId;

use super::{Core, short_nonce, sock_diag::socket_owner};
use crate::session;

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The resource to carry.
    resource: String,
    /// Local port (default: the resource's own port).
    #[arg(long)]
    port: Option<u16>,
    /// Local address to listen on: a loopback address (anyone who can reach the port
    /// uses your session).
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

/// `lastmile listen`: a local port into the tunnel, for hosts without eBPF.
/// With `--output json`, also prints `{"listening": ADDR, "resource": NAME}` on standard
/// output once it listens (for scripts that ask for port 0).
pub async fn listen(args: ListenArgs, out: session::Output) -> anyhow::Result<()> {
    if !args.bind.is_loopback() {
        anyhow::bail!(
            "--bind {} is not a loopback address: everyone who can reach that port would use your session; listen on 127.0.0.1 or ::1",
            args.bind
        );
    }
    let home = crate::home::Home::locate()?;
    let core = Core::start(&home, false).await?;
    let resource = core
        .resources
        .read()
        .ok()
        .and_then(|r| r.get(&args.resource).cloned())
        .with_context(|| {
            format!(
                "`{}` is not among your resources (`lastmile resources` lists them)",
                args.resource
            )
        })?;
    let port = args.port.unwrap_or(resource.port);
    let listener = tokio::net::TcpListener::bind((args.bind, port))
        .await
        .with_context(|| format!("cannot listen on {}:{port}", args.bind))?;
    let local = listener.local_addr()?;
    eprintln!(
        "lastmile: {local} carries connections to `{}`; Ctrl-C stops",
        resource.name
    );
    if out == session::Output::Json {
        println!(
            "{}",
            serde_json::json!({"listening": local.to_string(), "resource": resource.name})
        );
    }
    let kind = resource.kind;
    let me = nix::unistd::getuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Another user of this host must not ride this session.
                    match socket_owner(peer, local) {
                        Some(uid) if uid == me => {}
                        owner => {
                            warn!(%peer, owner = %owner.map_or_else(|| "unknown".to_owned(), |uid| format!("uid {uid}")), "connection from another user (or unknown) refused");
                            drop(tcp);
                            continue;
                        }
                    }
                    let id = ClientConnectionId::listened(peer.port(), &short_nonce());
                    tokio::spawn(core.clone().carry(tcp, resource.name.clone(), kind, id));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

//! One redirected connection: find who made it and for what, then hand it to their agent
//! or tell them, in their protocol, why not.

use std::{io, net::SocketAddr, os::fd::OwnedFd, sync::Arc, time::Duration};

use lastmile_audit_sink::error_chain;
use lastmile_handoff::{
    ClientAddr, Handoff, ResourceKind, TargetRef,
    refusal::{NoAgent, refuse},
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, info, info_span, warn};

use super::Shared;
use crate::events::{EventBody, NodeConnection, ProcInfo, comm, orig_dst};

/// How long a refused client gets to say enough for a protocol-aware answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let listen = listener.local_addr().ok();
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, client, listen, &shared).await {
                        warn!(%client, error = %error_chain(&e), "redirected connection failed");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    stream: TcpStream,
    client: SocketAddr,
    listen: Option<SocketAddr>,
    shared: &Shared,
) -> io::Result<()> {
    let record = shared
        .interceptor
        .lock()
        .map_err(|_| io::Error::other("interceptor lock poisoned"))?
        .record_for(client)
        .map_err(io::Error::other)?;
    let Some(record) = record else {
        // No kernel record: this connection did not come through the redirect.
        warn!(%client, "direct dial to the listener refused");
        shared.metrics.handoff("direct_dial");
        if let Some(listener) = listen {
            shared.event(EventBody::RefusedDirectDial { client, listener });
        }
        return Ok(());
    };
    // Read /proc now, while the caller is certainly alive; the kernel's event for this
    // connection is collected later.
    shared
        .proc_cache
        .insert(record.sock_cookie, ProcInfo::read(record.pid));
    let target = shared
        .targets
        .read()
        .ok()
        .and_then(|t| t.get(record.target_id));
    let conn = NodeConnection {
        sock_cookie: record.sock_cookie,
        target: target.as_ref().map(|t| t.name.clone()),
        protocol: target.as_ref().map(|t| t.kind),
        orig_dst: orig_dst(&record),
        client: ClientAddr(client),
        pid: record.pid,
        uid: record.uid,
        comm: comm(&record),
    };
    let span = info_span!(
        "connection",
        sock_cookie = record.sock_cookie,
        uid = record.uid,
        target = conn.target.as_deref().unwrap_or("none")
    );
    async move {
        let handoff = Handoff {
            sock_cookie: record.sock_cookie,
            orig_dst: conn.orig_dst,
            client: conn.client,
            target: target.clone().unwrap_or(TargetRef {
                name: "unknown".into(),
                kind: ResourceKind::Tcp,
            }),
            pid: record.pid,
            uid: record.uid,
            comm: conn.comm.clone(),
            cgroup_id: record.cgroup_id,
        };
        // The agent gets a blocking socket, as any program expects from accept(2).
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        let fd = OwnedFd::from(std_stream);
        match shared.agents.hand_off(record.uid, &handoff, fd) {
            Ok(agent_pid) => {
                info!(agent_pid, orig_dst = %conn.orig_dst, "handed to the agent");
                shared.metrics.handoff("handed_over");
                shared.event(EventBody::Handoff(conn));
                Ok(())
            }
            Err(fd) => {
                info!(orig_dst = %conn.orig_dst, "no agent for this uid; refusing");
                shared.metrics.handoff("no_agent");
                shared.event(EventBody::RefusedNoAgent(conn));
                let std_stream = std::net::TcpStream::from(fd);
                std_stream.set_nonblocking(true)?;
                let stream = TcpStream::from_std(std_stream)?;
                let message = NoAgent { uid: record.uid }.to_string();
                let kind = target.map(|t| t.kind).unwrap_or(ResourceKind::Tcp);
                match tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream, kind, message)).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                }
            }
        }
    }
    .instrument(span)
    .await
}

//! The agent socket: agents register for their uid (taken from SO_PEERCRED), and
//! redirected connections are handed to them.
//!
//! Which uid: the kernel attributes a connection to the connecting process's *real* uid
//! (`bpf_get_current_uid_gid`), the user who ran the program (a setuid program's
//! connections count as its invoker's), while SO_PEERCRED gives the agent's *effective*
//! uid. So that the two mean the same user, an agent whose real and effective uids differ
//! is refused.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use lastmile_audit_sink::error_chain;
use lastmile_handoff::{
    AgentMessage, Handoff, HandoffError, MAX_MESSAGE, NodeMessage, PROTOCOL_VERSION,
    parse_agent_message, send_connection, send_message,
};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, accept4, getsockopt, listen,
    recv, socket, sockopt::PeerCredentials,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use super::Shared;
use crate::events::EventBody;

/// One registered agent.
#[derive(Debug)]
struct Agent {
    id: u64,
    pid: i32,
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// Registered agents by uid; the newest registration of a uid gets its connections.
#[derive(Debug, Default)]
pub struct Agents {
    by_uid: Mutex<HashMap<u32, Vec<Agent>>>,
    next_id: AtomicU64,
}

impl Agents {
    /// Hands `conn` to the newest live agent of `uid`. Returns the conn back when no agent
    /// of that uid takes it (none registered, or every one gone or full), so the caller
    /// can refuse it.
    pub fn hand_off(&self, uid: u32, handoff: &Handoff, conn: OwnedFd) -> Result<i32, OwnedFd> {
        let Ok(mut by_uid) = self.by_uid.lock() else {
            return Err(conn);
        };
        let Some(agents) = by_uid.get_mut(&uid) else {
            return Err(conn);
        };
        while let Some(agent) = agents.last() {
            match send_connection(agent.fd.get_ref().as_raw_fd(), handoff, conn.as_raw_fd()) {
                Ok(()) => return Ok(agent.pid),
                Err(e) => {
                    warn!(uid, agent_pid = agent.pid, error = %error_chain(&e), "agent unusable; dropping it");
                    agents.pop();
                }
            }
        }
        Err(conn)
    }

    /// How many agents are registered now.
    pub fn count(&self) -> usize {
        self.by_uid
            .lock()
            .map_or(0, |by_uid| by_uid.values().map(Vec::len).sum())
    }

    fn add(&self, uid: u32, pid: i32, fd: Arc<AsyncFd<OwnedFd>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut by_uid) = self.by_uid.lock() {
            by_uid.entry(uid).or_default().push(Agent { id, pid, fd });
        }
        id
    }

    fn remove(&self, uid: u32, id: u64) {
        if let Ok(mut by_uid) = self.by_uid.lock()
            && let Some(list) = by_uid.get_mut(&uid)
        {
            list.retain(|a| a.id != id);
            if list.is_empty() {
                by_uid.remove(&uid);
            }
        }
    }
}

/// Binds the agent socket (SOCK_SEQPACKET), replacing a stale one, world-connectable:
/// who may register is decided per connection by SO_PEERCRED, not by file mode.
pub fn bind(path: &Path) -> anyhow::Result<AsyncFd<OwnedFd>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // Refuse to steal a socket a running lastmiled still serves.
        if lastmile_handoff::AgentLink::node_listens(path) {
            anyhow::bail!(
                "{} is served by another lastmiled; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    listen(&fd, Backlog::new(64)?)?;
    Ok(super::register(fd)?)
}

pub async fn accept_loop(listener: AsyncFd<OwnedFd>, shared: Arc<Shared>) {
    loop {
        let accepted = match listener.readable().await {
            Ok(mut guard) => match guard.try_io(|l| {
                accept4(
                    l.get_ref().as_raw_fd(),
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                )
                .map_err(io::Error::from)
            }) {
                Ok(result) => result,
                Err(_would_block) => continue,
            },
            Err(e) => {
                warn!(error = %e, "agent socket failed; no new agents can register");
                return;
            }
        };
        match accepted {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(raw) => {
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                tokio::spawn(serve_agent(fd, shared.clone()));
            }
            Err(e) => warn!(error = %e, "accepting an agent failed"),
        }
    }
}

async fn serve_agent(fd: OwnedFd, shared: Arc<Shared>) {
    let cred = match getsockopt(&fd, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "agent without peer credentials refused");
            return;
        }
    };
    let (uid, pid) = (cred.uid(), cred.pid());
    let Ok(fd) = super::register(fd) else { return };
    let fd = Arc::new(fd);
    let hello = tokio::time::timeout(Duration::from_secs(5), read_datagram(&fd)).await;
    let refuse = |reason: String| {
        warn!(uid, pid, %reason, "agent registration refused");
        let _ = send_message(fd.get_ref().as_raw_fd(), &NodeMessage::Refused { reason });
    };
    match hello {
        Ok(Ok(Some(bytes))) => match parse_agent_message(&bytes) {
            Ok(AgentMessage::Register { version }) if version == PROTOCOL_VERSION => {}
            Ok(AgentMessage::Register { version }) => {
                return refuse(format!(
                    "protocol version {version} unsupported; this lastmiled speaks {PROTOCOL_VERSION}"
                ));
            }
            Err(e) => return refuse(format!("malformed registration: {}", error_chain(&e))),
        },
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => return refuse("no registration within 5 s".into()),
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(real_and_effective_uid)
    {
        Some((real, effective)) if real == effective => {}
        Some((real, effective)) => {
            return refuse(format!(
                "this agent runs with real uid {real} and effective uid {effective}: connections are \
                 attributed to the real uid, so an agent must run with both the same (start it as \
                 the user whose connections it carries, not through a setuid program)"
            ));
        }
        None => return refuse(format!("cannot read the uids of agent process {pid}")),
    }
    if let Err(e) = send_message(
        fd.get_ref().as_raw_fd(),
        &NodeMessage::Registered {
            uid,
            version: PROTOCOL_VERSION,
        },
    ) {
        warn!(uid, pid, error = %error_chain(&e), "agent left during registration");
        return;
    }
    let id = shared.agents.add(uid, pid, fd.clone());
    info!(uid, pid, "agent registered");
    shared.event(EventBody::Agent {
        uid,
        pid: Some(pid),
        registered: true,
    });
    // The agent has nothing more to say in this version; reading tells us when it goes.
    while let Ok(Some(bytes)) = read_datagram(&fd).await {
        debug!(uid, pid, len = bytes.len(), "ignoring agent message");
    }
    shared.agents.remove(uid, id);
    info!(uid, pid, "agent gone");
    shared.event(EventBody::Agent {
        uid,
        pid: Some(pid),
        registered: false,
    });
}

/// One datagram, or None at end of stream.
async fn read_datagram(fd: &AsyncFd<OwnedFd>) -> Result<Option<Vec<u8>>, HandoffError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| HandoffError::Io(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
        match guard.try_io(|inner| {
            recv(
                inner.get_ref().as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        }) {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Ok(Err(e)) => {
                return Err(HandoffError::Io(nix::Error::from_raw(
                    e.raw_os_error().unwrap_or(0),
                )));
            }
            Err(_would_block) => continue,
        }
    }
}

/// The real and effective uids on the `Uid:` line of `/proc/PID/status` (proc(5): real,
/// effective, saved set, filesystem).
fn real_and_effective_uid(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(str::parse::<u32>);
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_read_from_proc_status() {
        let status =
            "Name:\tlastmile\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(super::real_and_effective_uid(status), Some((1000, 0)));
        assert_eq!(super::real_and_effective_uid("Name:\tx\n"), None);
        assert_eq!(super::real_and_effective_uid("Uid:\tx\t1\n"), None);
    }
}

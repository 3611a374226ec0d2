//! The hand-off of redirected connections from lastmiled (node) to users' agents.
//!
//! lastmiled listens on a Unix `SOCK_SEQPACKET` socket. An agent connects and sends
//! [`AgentMessage::Register`]; lastmiled reads the agent's uid from `SO_PEERCRED` (never
//! from the message) and answers [`NodeMessage::Registered`]. From then on, every
//! connection that a process of that uid made to a protected target arrives as one
//! [`NodeMessage::Connection`] datagram carrying the connected socket as `SCM_RIGHTS`.
//!
//! Each datagram is one JSON document; `SOCK_SEQPACKET` keeps the boundaries, so a file
//! descriptor always travels with exactly the message that describes it.
//!
//! This crate holds the messages and the blocking agent side ([`AgentLink`]); lastmiled
//! sends with [`send_connection`] on its non-blocking sockets.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

pub mod refusal;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    connect, recvmsg, sendmsg, socket,
};
use serde::{Deserialize, Serialize};

/// Version of this protocol; a peer speaking another is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest datagram either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What an agent says to lastmiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// "Send me my user's connections." The uid comes from the socket, not from here.
    Register { version: u32 },
}

/// What lastmiled says to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    /// Registration accepted for `uid`.
    Registered { uid: u32, version: u32 },
    /// Registration refused, and why.
    Refused { reason: String },
    /// A connection, whose socket travels with this message.
    Connection(Handoff),
}

/// What the agent learns with a handed-off connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The socket cookie of the application's socket, unique for the boot: it joins the
    /// kernel's event, the node's, the agent's proposal and the gateway's and API's events
    /// (`sock_cookie` in all of them). On this socket it keeps its first name,
    /// `connection_id`, so that a node and an agent of different versions (two packages,
    /// upgraded apart) still understand each other.
    #[serde(rename = "connection_id")]
    pub sock_cookie: u64,
    /// The destination the application asked for.
    pub orig_dst: OrigDstAddr,
    /// The application's end of the connection.
    pub client: ClientAddr,
    /// The protected target that matched.
    pub target: TargetRef,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// A protected target as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub name: String,
    pub kind: ResourceKind,
}

pub use lastmile_proto::{
    connection::{ClientAddr, OrigDstAddr},
    wire::ResourceKind,
};

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot reach lastmiled at {path} (is `lastmiled node` running?)")]
    Connect { path: String, source: nix::Error },
    #[error("the handoff socket failed")]
    Io(#[from] nix::Error),
    #[error("lastmiled closed the connection")]
    Closed,
    #[error("malformed message")]
    Malformed(#[from] serde_json::Error),
    #[error("message too large ({0} bytes, at most {MAX_MESSAGE})")]
    TooLarge(usize),
    #[error("a connection message arrived without its socket")]
    MissingSocket,
    #[error("lastmiled refused the registration: {0}")]
    Refused(String),
    #[error("unexpected message from lastmiled: {0:?}")]
    Unexpected(Box<NodeMessage>),
}

/// A Unix seqpacket socket (one message per send, its descriptors with it), close-on-exec:
/// what both ends of the agent socket speak.
fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// The agent's end: registered with lastmiled, receiving connections.
#[derive(Debug)]
pub struct AgentLink {
    fd: OwnedFd,
    uid: u32,
}

impl AgentLink {
    /// Whether a lastmiled node answers on `path` (a connect that is closed at once,
    /// without registering): for tools that must not act under a running node.
    pub fn node_listens(path: &Path) -> bool {
        let Ok(fd) = seqpacket() else {
            return false;
        };
        UnixAddr::new(path).is_ok_and(|addr| connect(fd.as_raw_fd(), &addr).is_ok())
    }

    /// Connects to lastmiled's agent socket and registers for the calling user.
    pub fn register(path: &Path) -> Result<Self, HandoffError> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path)?;
        connect(fd.as_raw_fd(), &addr).map_err(|source| HandoffError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let hello = serde_json::to_vec(&AgentMessage::Register {
            version: PROTOCOL_VERSION,
        })?;
        send(fd.as_fd().as_raw_fd(), &hello, None)?;
        let (message, stray) = receive(fd.as_raw_fd())?;
        drop(stray);
        match message {
            NodeMessage::Registered { uid, .. } => Ok(Self { fd, uid }),
            NodeMessage::Refused { reason } => Err(HandoffError::Refused(reason)),
            other => Err(HandoffError::Unexpected(Box::new(other))),
        }
    }

    /// The uid lastmiled registered us for.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Waits for the next handed-off connection.
    pub fn next(&self) -> Result<(Handoff, OwnedFd), HandoffError> {
        match receive(self.fd.as_raw_fd())? {
            (NodeMessage::Connection(handoff), Some(fd)) => Ok((handoff, fd)),
            (NodeMessage::Connection(_), None) => Err(HandoffError::MissingSocket),
            (other, _) => Err(HandoffError::Unexpected(Box::new(other))),
        }
    }
}

/// Sends `handoff` with `conn` to the agent on `agent` (non-blocking sockets return
/// `EAGAIN` when the agent's queue is full).
pub fn send_connection(agent: RawFd, handoff: &Handoff, conn: RawFd) -> Result<(), HandoffError> {
    let bytes = serde_json::to_vec(&NodeMessage::Connection(handoff.clone()))?;
    send(agent, &bytes, Some(conn))
}

/// Sends a message without a socket (registration answers).
pub fn send_message(to: RawFd, message: &NodeMessage) -> Result<(), HandoffError> {
    send(to, &serde_json::to_vec(message)?, None)
}

/// Parses an agent's datagram.
pub fn parse_agent_message(bytes: &[u8]) -> Result<AgentMessage, HandoffError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn send(fd: RawFd, bytes: &[u8], pass: Option<RawFd>) -> Result<(), HandoffError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(HandoffError::TooLarge(bytes.len()));
    }
    let iov = [IoSlice::new(bytes)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match pass {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(
        fd,
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    Ok(())
}

fn receive(fd: RawFd) -> Result<(NodeMessage, Option<OwnedFd>), HandoffError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(rights) = c {
                fds.extend(rights);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: SCM_RIGHTS gave us these descriptors; each is owned by nobody else.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
        .collect();
    if len == 0 {
        return Err(HandoffError::Closed);
    }
    let message: NodeMessage = serde_json::from_slice(buf.get(..len).unwrap_or_default())?;
    // At most one socket belongs to a message; extra ones are closed by dropping them.
    let first = if owned.is_empty() {
        None
    } else {
        Some(owned.swap_remove(0))
    };
    Ok((message, first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::socketpair;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn handoff() -> Handoff {
        Handoff {
            sock_cookie: 42,
            orig_dst: OrigDstAddr("127.0.0.2:5432".parse().unwrap()),
            client: ClientAddr("127.0.0.1:40000".parse().unwrap()),
            target: TargetRef {
                name: "orders-db".into(),
                kind: ResourceKind::Postgres,
            },
            pid: 7,
            uid: 1000,
            comm: "psql".into(),
            cgroup_id: 1,
        }
    }

    /// lastmiled's end and a registered agent's end of one connected socket pair.
    fn linked_pair() -> (OwnedFd, AgentLink) {
        let (node, agent) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (
            node,
            AgentLink {
                fd: agent,
                uid: 1000,
            },
        )
    }

    #[test]
    fn a_connection_travels_with_its_socket() {
        let (node, link) = linked_pair();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        send_connection(node.as_raw_fd(), &handoff(), theirs.as_raw_fd()).unwrap();
        drop(theirs);
        let (got, fd) = link.next().unwrap();
        assert_eq!(got, handoff());
        // The received descriptor is the same socket: bytes written on it reach us.
        let mut passed = UnixStream::from(fd);
        passed.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        ours.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn a_connection_message_without_a_socket_is_an_error() {
        let (node, link) = linked_pair();
        let bytes = serde_json::to_vec(&NodeMessage::Connection(handoff())).unwrap();
        send(node.as_raw_fd(), &bytes, None).unwrap();
        assert!(matches!(link.next(), Err(HandoffError::MissingSocket)));
    }

    #[test]
    fn malformed_and_closed_are_told_apart() {
        let (node, link) = linked_pair();
        send(node.as_raw_fd(), b"{not json", None).unwrap();
        assert!(matches!(link.next(), Err(HandoffError::Malformed(_))));
        drop(node);
        assert!(matches!(link.next(), Err(HandoffError::Closed)));
    }
}

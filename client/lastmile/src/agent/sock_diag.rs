//! Who owns a local TCP connection, asked of the kernel over NETLINK_SOCK_DIAG.

/// The uid owning the local TCP socket `client` connected to `server`, asked of the
/// kernel by exact 4-tuple over NETLINK_SOCK_DIAG (sock_diag(7): an `inet_diag_req_v2`
/// without NLM_F_DUMP looks one socket up; the answer's `inet_diag_msg` carries
/// `idiag_uid`). `None` when it cannot be told, which callers treat as a refusal.
pub(super) fn socket_owner(
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
) -> Option<u32> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt::ReceiveTimeout,
    };
    use std::os::fd::AsRawFd as _;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const IPPROTO_TCP: u8 = 6;
    let family: u8 = if client.is_ipv4() { 2 } else { 10 };
    let words = |a: std::net::IpAddr| -> [u8; 16] {
        match a {
            std::net::IpAddr::V4(v4) => {
                let mut w = [0u8; 16];
                w[..4].copy_from_slice(&v4.octets());
                w
            }
            std::net::IpAddr::V6(v6) => v6.octets(),
        }
    };
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    // inet_diag_sockid: ports and addresses in network order, interface, no cookie.
    req.extend_from_slice(&client.port().to_be_bytes());
    req.extend_from_slice(&server.port().to_be_bytes());
    req.extend_from_slice(&words(client.ip()));
    req.extend_from_slice(&words(server.ip()));
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    setsockopt(&fd, ReceiveTimeout, &nix::sys::time::TimeVal::new(1, 0)).ok()?;
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    let answer = buf.get(..n)?;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY || kind == NLMSG_ERROR {
        return None;
    }
    // inet_diag_msg after the 16-byte header: family, state, timer, retrans (4),
    // sockid (48), expires, rqueue, wqueue (12), then uid.
    let uid = answer.get(16 + 4 + 48 + 12..16 + 4 + 48 + 16)?;
    Some(u32::from_ne_bytes(uid.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn our_own_loopback_connection_is_ours_and_a_missing_one_is_nobodys() {
        for host in ["127.0.0.1", "[::1]"] {
            let Ok(l) = std::net::TcpListener::bind(format!("{host}:0")) else {
                continue; // no IPv6 loopback here
            };
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let owner = socket_owner(c.local_addr().unwrap(), l.local_addr().unwrap());
            assert_eq!(owner, Some(nix::unistd::getuid().as_raw()), "{host}");
            let mut gone = c.local_addr().unwrap();
            gone.set_port(gone.port().wrapping_add(1));
            assert_eq!(socket_owner(gone, l.local_addr().unwrap()), None, "{host}");
        }
    }
}

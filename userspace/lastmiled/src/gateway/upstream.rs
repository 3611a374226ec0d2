//! Connections from the gateway to resources.

use tokio::net::{TcpSocket, TcpStream};

use super::Gateway;

/// Connects to the resource with SO_MARK set, so interception on this host exempts it.
pub(super) async fn connect_upstream(
    gw: &Gateway,
    host: &str,
    port: u16,
) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("the name resolves to no address");
    let addrs = tokio::net::lookup_host((host, port)).await?;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &gw.mark)
            .map_err(std::io::Error::from)?;
        socket.set_nodelay(true)?;
        match tokio::time::timeout(gw.connect_timeout, socket.connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(last)
}

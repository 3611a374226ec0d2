//! A connection's names. The kernel knows a connection by its socket cookie, the client by
//! the id it proposes (which carries that cookie when the node handed the connection
//! over), the API and the gateways by the id the API chooses (`conn_…`). Audit events and
//! tracing spans use the same three field names everywhere: `sock_cookie`,
//! `client_connection` and `connection`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id a client proposes for one connection, in its signed authorization:
/// `sock-COOKIE-NONCE` for a connection the node handed over (COOKIE: the kernel's socket
/// cookie of the application's socket, the key that joins `kernel.connect`), or
/// `listen-PORT-NONCE` for one through `lastmile listen`. Any other text from a peer is
/// kept as it came: it is the client's claim, never trusted for anything but joining.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientConnectionId(String);

impl ClientConnectionId {
    /// A connection the node handed over, whose application socket has `sock_cookie`.
    pub fn handed_over(sock_cookie: u64, nonce: &str) -> Self {
        Self(format!("sock-{sock_cookie}-{nonce}"))
    }

    /// A connection accepted by `lastmile listen` from local port `port`.
    pub fn listened(port: u16, nonce: &str) -> Self {
        Self(format!("listen-{port}-{nonce}"))
    }

    /// The socket cookie a `sock-COOKIE-…` id carries; `None` for any other.
    pub fn sock_cookie(&self) -> Option<u64> {
        self.0
            .strip_prefix("sock-")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ClientConnectionId {
    /// An id as a peer sent it.
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for ClientConnectionId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl fmt::Display for ClientConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_cookie_is_read_back_only_from_a_handed_over_id() {
        let id = ClientConnectionId::handed_over(4242, "ab12cd");
        assert_eq!(id.as_str(), "sock-4242-ab12cd");
        assert_eq!(id.sock_cookie(), Some(4242));
        assert_eq!(ClientConnectionId::listened(4242, "ab").sock_cookie(), None);
        assert_eq!(ClientConnectionId::from("sock-x-1").sock_cookie(), None);
        assert_eq!(ClientConnectionId::from("sock-").sock_cookie(), None);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"sock-4242-ab12cd\"",
            "the wire form is the text"
        );
    }
}

/// The address an application asked to connect to, before the kernel redirected it
/// (what `getpeername` shows the application): the protected target's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrigDstAddr(pub std::net::SocketAddr);

/// The application's own end of a connection (its `getsockname`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

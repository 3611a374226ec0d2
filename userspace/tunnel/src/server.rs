//! The gateway's end: the TLS handshake that proves the session, then HTTP/2 streams.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{
    RecvStream, SendStream,
    server::{Connection, SendResponse},
};
use http::Request;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::{
    ALPN,
    buffered::{GrowableReader, HANDSHAKE_BUFFER},
    header::{Refusal, StreamHeader},
    settings,
    tls::{SessionIdentity, session_identity},
};

/// Why the gateway did not accept an agent's tunnel, or a stream on it.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("the peer does not speak the lastmile tunnel (ALPN)")]
    Alpn,
    #[error("the client certificate names no session (only session certificates open tunnels)")]
    NotASession,
    #[error("the tunnel failed")]
    H2(#[from] h2::Error),
    #[error("the tunnel's socket failed")]
    Io(#[from] std::io::Error),
}

/// A tunnel whose handshake succeeded: who is on the other end, and the streams to come.
pub struct Accepted {
    pub identity: SessionIdentity,
    pub peer: SocketAddr,
    pub connection: Connection<TlsStream<GrowableReader<TcpStream>>, Bytes>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("identity", &self.identity)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Runs the handshake: a client certificate chaining to the org CA (checked by rustls,
/// with its dates), naming a session; ALPN `lastmile-tunnel/1`; then HTTP/2.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Accepted, AcceptError> {
    tcp.set_nodelay(true)?;
    // Small until the peer is proven: a stranger's connection must not pin 256 KiB.
    let tcp = GrowableReader::new(tcp, HANDSHAKE_BUFFER);
    let mut tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(AcceptError::Tls)?;
    tls.get_mut().0.grow(settings::SOCKET_READ_BUFFER);
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(AcceptError::Alpn);
    }
    let identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(session_identity)
        .ok_or(AcceptError::NotASession)?;
    let connection = h2::server::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME)
        .max_concurrent_streams(settings::MAX_STREAMS)
        .max_header_list_size(settings::MAX_HEADER_LIST)
        .max_send_buffer_size(settings::SEND_BUFFER)
        .handshake(tls)
        .await?;
    Ok(Accepted {
        identity,
        peer,
        connection,
    })
}

/// One stream asking to be opened.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request<RecvStream>,
    pub respond: SendResponse<Bytes>,
}

impl Incoming {
    /// The stream header, or the refusal (already sent) if it is malformed.
    pub fn header(&mut self) -> Result<StreamHeader, Refusal> {
        StreamHeader::from_request(&self.request).inspect_err(|r| {
            let _ = self.respond.send_response(r.to_response(), true);
        })
    }

    /// Says yes: the stream carries the connection from here on.
    pub fn accept(mut self) -> Result<(SendStream<Bytes>, RecvStream), AcceptError> {
        let send = self.respond.send_response(http::Response::new(()), false)?;
        Ok((send, self.request.into_body()))
    }

    /// Says no, with the reason.
    pub fn refuse(mut self, refusal: &Refusal) {
        let _ = self.respond.send_response(refusal.to_response(), true);
    }
}

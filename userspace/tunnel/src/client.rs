//! The agent's end: one TLS 1.3 + HTTP/2 connection to one gateway, streams opened on it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::{
    ALPN,
    header::{Refusal, StreamHeader},
    settings,
};

/// Why the agent could not open a tunnel to a gateway, or a stream on it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to gateway {gateway} at {address}")]
    Connect {
        gateway: String,
        address: String,
        source: std::io::Error,
    },
    #[error("TLS with gateway {gateway} failed")]
    Tls {
        gateway: String,
        source: std::io::Error,
    },
    #[error("gateway {0} does not speak the lastmile tunnel (ALPN)")]
    Alpn(String),
    #[error("the tunnel failed")]
    H2(#[from] h2::Error),
    #[error("the gateway refused the connection: {0}")]
    Refused(Refusal),
    #[error("bad stream header: {0}")]
    Header(String),
}

/// How long connecting and the TLS handshake may take before the gateway counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A live tunnel to one gateway.
#[derive(Debug)]
pub struct Tunnel {
    gateway: String,
    send: SendRequest<Bytes>,
    open: Arc<AtomicBool>,
}

impl Tunnel {
    /// Connects to gateway `gateway` at `address` (`HOST:PORT`), verifies that its
    /// certificate chains to the org CA, names HOST and names this gateway.
    pub async fn connect(
        config: Arc<ClientConfig>,
        gateway: &str,
        address: &str,
    ) -> Result<Self, ConnectError> {
        let fail = |source: std::io::Error| ConnectError::Connect {
            gateway: gateway.to_owned(),
            address: address.to_owned(),
            source,
        };
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let (host, _) = address
            .rsplit_once(':')
            .ok_or_else(|| fail(std::io::Error::other("not HOST:PORT")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            fail(std::io::Error::other(
                "HOST is neither a name nor an address",
            ))
        })?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| fail(timed_out()))?
            .map_err(fail)?;
        tcp.set_nodelay(true).map_err(fail)?;
        let tcp = tokio::io::BufReader::with_capacity(settings::SOCKET_READ_BUFFER, tcp);
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| fail(timed_out()))?
        .map_err(|source| ConnectError::Tls {
            gateway: gateway.to_owned(),
            source,
        })?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ALPN) {
            return Err(ConnectError::Alpn(gateway.to_owned()));
        }
        let named = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::gateway_name);
        if named.as_deref() != Some(gateway) {
            return Err(ConnectError::Tls {
                gateway: gateway.to_owned(),
                source: std::io::Error::other(format!(
                    "the certificate at {address} is for gateway {named:?}, not `{gateway}`"
                )),
            });
        }
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(settings::STREAM_WINDOW)
            .initial_connection_window_size(settings::CONNECTION_WINDOW)
            .max_frame_size(settings::MAX_FRAME)
            .max_concurrent_streams(settings::MAX_STREAMS)
            .max_send_buffer_size(settings::SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let open = Arc::new(AtomicBool::new(true));
        let flag = open.clone();
        let name = gateway.to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(gateway = %name, error = %e, "tunnel ended");
            }
            flag.store(false, Ordering::Release);
        });
        Ok(Self {
            gateway: gateway.to_owned(),
            send,
            open,
        })
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Whether the connection is still up (a dead one is replaced, not reused).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens a stream with `header`; the gateway's refusal comes back as
    /// [`ConnectError::Refused`].
    pub async fn open(
        &self,
        header: &StreamHeader,
    ) -> Result<(SendStream<Bytes>, RecvStream), ConnectError> {
        let mut ready = self.send.clone().ready().await?;
        let (response, send) = ready.send_request(header.to_request(&self.gateway)?, false)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(ConnectError::Refused(Refusal::from_response(
                response.status(),
                response.headers(),
            )));
        }
        Ok((send, response.into_body()))
    }
}

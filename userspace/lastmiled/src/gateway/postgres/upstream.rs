//! The gateway's connection to the PostgreSQL server: TCP with the exempt mark, then TLS
//! as the resource's `upstream_tls` says (§55.2.10 "SSL Session Encryption": SSLRequest,
//! one byte `S` or `N`, then the TLS handshake). A server that will not do TLS when the
//! resource asks for it is a refused connection, never a plaintext retry.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use lastmile_proto::wire::{Resource, UpstreamTls};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// SSLRequest (§55.7): Int32 8, Int32 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Why the gateway could not open the upstream connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("cannot reach {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the server refused TLS, and the resource requires it (upstream_tls = {mode}); not retrying in plaintext"
    )]
    TlsRefused { mode: &'static str },
    #[error("the server answered the TLS request with {0:#04x}, not S or N")]
    BadTlsAnswer(u8),
    #[error("the TLS handshake with the server failed")]
    Handshake(#[source] io::Error),
    #[error("the resource's TLS settings are unusable: {0}")]
    Settings(String),
}

/// The server connection, plain or TLS.
pub(super) enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    /// The server's certificate (DER), when the connection is TLS: for SCRAM channel
    /// binding (tls-server-end-point).
    pub(super) fn server_certificate(&self) -> Option<&[u8]> {
        match self {
            Upstream::Plain(_) => None,
            Upstream::Tls(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref()),
        }
    }

    pub(super) fn is_tls(&self) -> bool {
        matches!(self, Upstream::Tls(_))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn mode_name(mode: UpstreamTls) -> &'static str {
    match mode {
        UpstreamTls::Disable => "disable",
        UpstreamTls::Require => "require",
        UpstreamTls::VerifyFull => "verify-full",
    }
}

/// Connects to `resource` and negotiates TLS as its `upstream_tls` says.
pub(super) async fn connect(
    gw: &super::super::Gateway,
    resource: &Resource,
) -> Result<Upstream, UpstreamError> {
    let mut tcp = super::super::upstream::connect_upstream(gw, &resource.host, resource.port)
        .await
        .map_err(|source| UpstreamError::Connect {
            address: format!("{}:{}", resource.host, resource.port),
            source,
        })?;
    if resource.upstream_tls_mode() == UpstreamTls::Disable {
        return Ok(Upstream::Plain(tcp));
    }
    let config = client_config(resource)?;
    let io = |source| UpstreamError::Connect {
        address: format!("{}:{}", resource.host, resource.port),
        source,
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(io)?;
    let answer = tcp.read_u8().await.map_err(io)?;
    match answer {
        b'S' => {}
        b'N' => {
            return Err(UpstreamError::TlsRefused {
                mode: mode_name(resource.upstream_tls_mode()),
            });
        }
        other => return Err(UpstreamError::BadTlsAnswer(other)),
    }
    let name = ServerName::try_from(resource.host.clone())
        .map_err(|e| UpstreamError::Settings(format!("`{}` as a TLS name: {e}", resource.host)))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(UpstreamError::Handshake)?;
    Ok(Upstream::Tls(Box::new(tls)))
}

fn client_config(resource: &Resource) -> Result<Arc<ClientConfig>, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Settings(e.to_string()))?;
    let config = match resource.upstream_tls_mode() {
        UpstreamTls::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &resource.upstream_ca {
                Some(pem) => {
                    let certs = lastmile_tunnel::tls::certificates(pem)
                        .map_err(|e| UpstreamError::Settings(format!("upstream_ca: {e}")))?;
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| UpstreamError::Settings(format!("upstream_ca: {e}")))?;
                    }
                }
                None => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            if roots.is_empty() {
                return Err(UpstreamError::Settings(
                    "verify-full has no CA to verify against: set the resource's upstream_ca, or install the system roots".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // `require`, as libpq's sslmode=require: encrypted, the certificate not checked.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `upstream_tls = require`: any certificate, but the handshake's signatures still
/// checked, so the session is at least bound to the key the server showed.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

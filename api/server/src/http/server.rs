//! The API's TLS server: TLS 1.3 with optional client certificates (a gateway's, from
//! the organisation's CA), one HTTP/1.1 connection per TLS session, the router of
//! [`super`] for each request with the connection's gateway peer.

use std::{sync::Arc, time::Duration};

use lastmile_proto::wire::uri;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, info, info_span, warn};

use super::{Peer, routes};
use crate::{app::App, auth};

fn tls_config(app: &App) -> anyhow::Result<ServerConfig> {
    use anyhow::Context as _;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(app.pki.tls_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("the API's TLS certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(app.pki.tls_key_pem.as_bytes())
        .context("the API's TLS key is not PEM")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(app.pki.ca_pem().as_bytes()) {
        roots.add(ca.context("the organisation CA is not PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Users authenticate by signing each call; gateways by their certificate. So a client
    // certificate is optional, and when one is presented it must chain to the
    // organisation's CA and be in date, or the handshake fails.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the API's TLS certificate and key do not match")
}

/// The gateway named by a verified client certificate's URI SAN, and its Ed25519 key.
fn gateway_of(cert: &CertificateDer<'_>) -> Option<crate::connections::GatewayPeer> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let name = san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => uri::gateway_name(u).map(str::to_owned),
        _ => None,
    })?;
    let spki = parsed.public_key();
    // RFC 8410 §3: id-Ed25519 is 1.3.101.112; the key is the raw 32 bytes.
    let key = (spki.algorithm.algorithm.to_id_string() == "1.3.101.112")
        .then(|| <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()).ok())
        .flatten();
    Some(crate::connections::GatewayPeer { name, key })
}

/// Serves until the process ends.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&app)?));
    let router = routes(app.clone());
    tokio::spawn(app.revocations_tail());
    tokio::spawn(auth::prune_nonces(app.clone()));
    if let Some(addr) = app.config.metrics_listen {
        lastmile_metrics::serve(addr, app.metrics.registry()).await?;
    }
    info!(listen = %listener.local_addr()?, "serving");
    let mut conn_id: u64 = 0;
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        conn_id += 1;
        let acceptor = acceptor.clone();
        let router = router.clone();
        let app = app.clone();
        let span = info_span!("conn", id = conn_id, %addr);
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        app.metrics.tls_failure();
                        return warn!(error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        app.metrics.tls_failure();
                        return warn!("TLS handshake timed out");
                    }
                };
                let peer = Peer(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(gateway_of),
                );
                // The router is built once; each request gets this connection's peer.
                let service = hyper::service::service_fn(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        tower::ServiceExt::oneshot(router.clone(), req)
                    },
                );
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                {
                    warn!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

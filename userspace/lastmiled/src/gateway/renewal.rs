//! Keeping the gateway certificate current.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use lastmile_proto::wire::GatewayCertificate;
use tracing::{info, warn};

use super::{
    Gateway,
    identity::{CERT_FILE, Identity, write_file},
};

/// However early renewal is asked for, at most one renewal a minute.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(60);

/// Keeps the gateway certificate current: renews it over mutual TLS (same key, new
/// certificate) before it ends, saves it, and serves new tunnels and API calls with it.
pub(super) async fn keep_certificate(
    gw: Arc<Gateway>,
    mut identity: Identity,
    url: String,
    dir: std::path::PathBuf,
    renew_before: Duration,
) {
    let renew_before = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let mut floor = Duration::ZERO;
    loop {
        let expires = lastmile_tunnel::tls::certificates(&identity.certificate_pem)
            .ok()
            .and_then(|c| c.first().and_then(lastmile_tunnel::tls::not_after))
            .unwrap_or(0);
        let wait = expires
            .saturating_sub(renew_before)
            .saturating_sub(lastmile_api_client::now())
            .max(0);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(0)).max(floor)).await;
        floor = MIN_RENEWAL_GAP;
        match renew(&gw, &identity).await {
            Ok(pem) => {
                identity.certificate_pem = pem;
                let rebuilt = write_file(
                    &dir.join(CERT_FILE),
                    identity.certificate_pem.as_bytes(),
                    0o644,
                )
                .and_then(|()| {
                    let tls = lastmile_tunnel::tls::gateway_config(
                        &identity.ca_pem,
                        &identity.certificate_pem,
                        &identity.key_pem,
                    )?;
                    let api = identity.api(&url)?;
                    Ok((tls, api))
                });
                match rebuilt {
                    Ok((tls, api)) => {
                        if let Ok(mut t) = gw.tls.write() {
                            *t = tls;
                        }
                        if let Ok(mut a) = gw.api.write() {
                            *a = api;
                        }
                        info!("gateway certificate renewed");
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "the renewed certificate is unusable")
                    }
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in 5 minutes")
            }
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

async fn renew(gw: &Gateway, identity: &Identity) -> anyhow::Result<String> {
    let pair = rcgen::KeyPair::from_pem(&identity.key_pem).context("reading the gateway key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)?
        .pem()?;
    let cert: GatewayCertificate = gw
        .api()
        .post("/v1/gateways/renew", &lastmile_proto::wire::Renew { csr })
        .await?;
    Ok(cert.certificate)
}

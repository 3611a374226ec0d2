//! TLS towards the client, for clients that insist on it (`sslmode=require`,
//! `verify-full`): the gateway presents a certificate for the resource's names, issued
//! by the organisation's CA through `POST /v1/gateways/resource-certificate` for a key
//! made here, cached until an hour before it ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::{Resource, ResourceCertificate, ResourceCertificateRequest};
use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};

use crate::gateway::Gateway;

/// Renew a resource's certificate when less than this is left of it.
const RENEW_BEFORE_SECS: i64 = 3600;

/// Server TLS configurations per resource.
#[derive(Debug, Default)]
pub(in crate::gateway) struct ServerTls {
    cache: Mutex<HashMap<String, (Arc<ServerConfig>, i64)>>,
}

impl ServerTls {
    /// The configuration for `resource`, asking the API for a certificate when none is
    /// cached or it ends within the hour.
    pub(super) async fn config(
        &self,
        gw: &Gateway,
        resource: &Resource,
    ) -> Result<Arc<ServerConfig>, String> {
        let now = lastmile_api_client::now();
        if let Some((config, expires)) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&resource.name).cloned())
            && expires - now > RENEW_BEFORE_SECS
        {
            return Ok(config);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("making a key: {e}"))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| format!("making a CSR: {e}"))?;
        let cert: ResourceCertificate = gw
            .api()
            .post(
                "/v1/gateways/resource-certificate",
                &ResourceCertificateRequest {
                    resource: resource.name.clone(),
                    csr,
                },
            )
            .await
            .map_err(|e| format!("the API did not issue a certificate: {}", error_chain(&e)))?;
        let chain = lastmile_tunnel::tls::certificates(&cert.certificate)
            .map_err(|e| format!("the issued certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
                .map_err(|e| format!("the TLS configuration: {e}"))?;
        let config = Arc::new(config);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(resource.name.clone(), (config.clone(), cert.expires_at));
        }
        Ok(config)
    }
}

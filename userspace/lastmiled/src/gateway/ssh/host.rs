//! The gateway's SSH host identity and its trust in targets.
//!
//! One Ed25519 host key per gateway, made once into `state_dir` (0600); per resource, a
//! host certificate from the organisation's SSH host CA for the names users dial
//! (`POST /v1/gateways/ssh-host-certificate`), cached until an hour before it ends.

use std::{
    collections::HashMap, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path,
    sync::Mutex,
};

use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::{CaBundle, Resource, SshHostCertificate, SshHostCertificateRequest};
use lastmile_ssh::bridge::{HostIdentity, HostTrust};
use russh::keys::{Certificate, PrivateKey, PublicKey, ssh_key::LineEnding};

use crate::gateway::Gateway;

/// The host key's file in `state_dir`.
pub(super) const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Renew a resource's host certificate when less than this is left of it.
const RENEW_BEFORE_SECS: i64 = 3600;

/// A fresh Ed25519 key, its seed from the system's random source.
pub(in crate::gateway) fn new_ed25519() -> Result<PrivateKey, String> {
    let seed = zeroize::Zeroizing::new(
        lastmile_api_client::random32().map_err(|e| format!("no randomness: {e}"))?,
    );
    let keypair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    Ok(PrivateKey::from(keypair))
}

/// The gateway's host key: read from `dir`, or made and written there (0600) the first
/// time.
pub(in crate::gateway) fn load_or_create_host_key(dir: &Path) -> anyhow::Result<PrivateKey> {
    use anyhow::Context as _;
    let path = dir.join(HOST_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = new_ed25519().map_err(anyhow::Error::msg)?;
            let text = key
                .to_openssh(LineEnding::LF)
                .context("encoding the SSH host key")?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The host key, the certificates for it per resource, and the organisation's SSH host
/// CA (the default trust for targets).
#[derive(Debug)]
pub(in crate::gateway) struct SshHosts {
    key: PrivateKey,
    certificates: Mutex<HashMap<String, (Certificate, i64)>>,
    organisation_host_ca: Mutex<Option<PublicKey>>,
}

impl SshHosts {
    pub(in crate::gateway) fn new(key: PrivateKey) -> Self {
        Self {
            key,
            certificates: Mutex::new(HashMap::new()),
            organisation_host_ca: Mutex::new(None),
        }
    }

    /// What the gateway presents to users of `resource`, asking the API for a
    /// certificate when none is cached or it ends within the hour.
    pub(super) async fn identity(
        &self,
        gw: &Gateway,
        resource: &Resource,
    ) -> Result<HostIdentity, String> {
        let now = lastmile_api_client::now();
        let cached = self
            .certificates
            .lock()
            .ok()
            .and_then(|c| c.get(&resource.name).cloned());
        if let Some((certificate, expires)) = cached
            && expires - now > RENEW_BEFORE_SECS
        {
            return Ok(self.with(certificate));
        }
        let public_key = self
            .key
            .public_key()
            .to_openssh()
            .map_err(|e| format!("encoding the host key: {e}"))?;
        let issued: SshHostCertificate = gw
            .api()
            .post(
                "/v1/gateways/ssh-host-certificate",
                &SshHostCertificateRequest {
                    resource: resource.name.clone(),
                    public_key,
                },
            )
            .await
            .map_err(|e| {
                format!(
                    "the API did not issue an SSH host certificate: {}",
                    error_chain(&e)
                )
            })?;
        let certificate = Certificate::from_openssh(issued.certificate.trim())
            .map_err(|e| format!("the issued SSH host certificate: {e}"))?;
        if let Ok(mut c) = self.certificates.lock() {
            c.insert(
                resource.name.clone(),
                (certificate.clone(), issued.expires_at),
            );
        }
        Ok(self.with(certificate))
    }

    fn with(&self, certificate: Certificate) -> HostIdentity {
        HostIdentity {
            key: self.key.clone(),
            certificate: Some(certificate),
        }
    }

    /// How the gateway checks `resource`'s target: its pinned keys and/or its host CAs;
    /// with neither, the organisation's own SSH host CA. Never on first use.
    pub(super) async fn trust(
        &self,
        gw: &Gateway,
        resource: &Resource,
    ) -> Result<HostTrust, String> {
        let parse = |field: &str, lines: &[String]| {
            lines
                .iter()
                .map(|l| {
                    PublicKey::from_openssh(l.trim())
                        .map_err(|e| format!("resource `{}` {field}: {e}", resource.name))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let keys = parse("ssh_host_keys", &resource.ssh_host_keys)?;
        let authorities = parse("ssh_host_ca", &resource.ssh_host_ca)?;
        let host_name = resource.host.clone();
        Ok(match (keys.is_empty(), authorities.is_empty()) {
            (false, false) => HostTrust::KeysOrCertificateAuthority {
                keys,
                authorities,
                host_name,
            },
            (false, true) => HostTrust::PinnedKeys(keys),
            (true, false) => HostTrust::CertificateAuthority {
                authorities,
                host_name,
            },
            (true, true) => HostTrust::CertificateAuthority {
                authorities: vec![self.organisation_ca(gw).await?],
                host_name,
            },
        })
    }

    async fn organisation_ca(&self, gw: &Gateway) -> Result<PublicKey, String> {
        if let Some(ca) = self
            .organisation_host_ca
            .lock()
            .ok()
            .and_then(|c| c.clone())
        {
            return Ok(ca);
        }
        let bundle: CaBundle = gw.api().get("/v1/ca").await.map_err(|e| {
            format!(
                "reading the organisation's SSH host CA from the API: {}",
                error_chain(&e)
            )
        })?;
        let ca = PublicKey::from_openssh(bundle.ssh_host_ca.trim())
            .map_err(|e| format!("the organisation's SSH host CA: {e}"))?;
        if let Ok(mut c) = self.organisation_host_ca.lock() {
            *c = Some(ca.clone());
        }
        Ok(ca)
    }
}

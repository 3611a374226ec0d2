//! This host's identity as a gateway: enrollment with a one-time token, and the key,
//! certificate and CA it left in `state_dir`.

use std::{
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use lastmile_api_client::ApiClient;
use lastmile_proto::wire::{Enroll, GatewayCertificate, NodeCertificate};

use crate::config::ApiConfig;

/// This host's identity with the API, as `lastmiled gateway enroll` left it.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub key: SigningKey,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_pem: String,
}

pub(super) const KEY_FILE: &str = "gateway.key";
pub(super) const CERT_FILE: &str = "gateway.pem";
pub(super) const CA_FILE: &str = "ca.pem";

impl Identity {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).with_context(|| {
                format!(
                    "reading {}: enroll this host first (`lastmiled gateway enroll --token …`)",
                    dir.join(f).display()
                )
            })
        };
        let key_pem = read(KEY_FILE)?;
        let certificate_pem = read(CERT_FILE)?;
        let ca_pem = read(CA_FILE)?;
        use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject as _};
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .with_context(|| format!("{} is not a PKCS#8 PEM key", dir.join(KEY_FILE).display()))?;
        let seed = lastmile_tunnel::tls::ed25519_seed(der.secret_pkcs8_der())
            .with_context(|| format!("{} is not an Ed25519 key", dir.join(KEY_FILE).display()))?;
        let cert = lastmile_tunnel::tls::certificates(&certificate_pem)?;
        let name = cert
            .first()
            .and_then(lastmile_tunnel::tls::gateway_name)
            .with_context(|| {
                format!(
                    "{} is not a gateway certificate",
                    dir.join(CERT_FILE).display()
                )
            })?;
        Ok(Self {
            name,
            key: SigningKey::from_bytes(&seed),
            key_pem,
            certificate_pem,
            ca_pem,
        })
    }

    pub fn api(&self, url: &str) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(
            url,
            &self.ca_pem,
            Some((&self.certificate_pem, &self.key_pem)),
        )?)
    }

    /// The addresses the certificate names.
    pub fn addresses(&self) -> Vec<String> {
        lastmile_tunnel::tls::certificates(&self.certificate_pem)
            .ok()
            .and_then(|c| c.first().map(lastmile_tunnel::tls::certificate_addresses))
            .unwrap_or_default()
    }
}

/// What enrolling as a gateway or a node differs in: where the token is spent and the
/// files the identity is kept in.
struct Enrollment {
    path: &'static str,
    key_file: &'static str,
    cert_file: &'static str,
}

/// Makes this host's Ed25519 key, sends a CSR with the one-time token to
/// `enrollment.path`, and stores key, certificate and CA in `state_dir`.
async fn enroll_as<C: serde::de::DeserializeOwned>(
    api: &ApiConfig,
    ca_file: &Path,
    token: &str,
    enrollment: &Enrollment,
    certificate: impl Fn(&C) -> &str,
) -> anyhow::Result<C> {
    let ca_pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading the organisation CA {}", ca_file.display()))?;
    let seed = lastmile_api_client::random32()?;
    let der = lastmile_tunnel::tls::ed25519_pkcs8(&seed);
    let pair = rcgen::KeyPair::try_from(der.as_slice()).context("making the key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)
        .context("making the CSR")?
        .pem()
        .context("making the CSR")?;
    let client = ApiClient::new(&api.url, &ca_pem, None)?;
    let cert: C = client
        .post(
            enrollment.path,
            &Enroll {
                token: token.to_owned(),
                csr,
            },
        )
        .await
        .context("enrolling with the API")?;
    let dir = &api.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_file(
        &dir.join(enrollment.key_file),
        pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join(enrollment.cert_file),
        certificate(&cert).as_bytes(),
        0o644,
    )?;
    write_file(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    Ok(cert)
}

/// `lastmiled gateway enroll`: this host's gateway key and certificate, with a token from
/// `lastmile-api gateways token NAME`.
pub async fn enroll(api: &ApiConfig, ca_file: &Path, token: &str) -> anyhow::Result<String> {
    let enrollment = Enrollment {
        path: "/v1/gateways/enroll",
        key_file: KEY_FILE,
        cert_file: CERT_FILE,
    };
    let cert: GatewayCertificate = enroll_as(
        api,
        ca_file,
        token,
        &enrollment,
        |c: &GatewayCertificate| &c.certificate,
    )
    .await?;
    Ok(cert.name)
}

/// This gateway's certificate as its audit-writer identity (the audit service accepts
/// it by `role:gateway`); read again when renewal rewrites the files.
pub fn audit_identity(dir: &Path) -> lastmile_audit_sink::ClientIdentity {
    lastmile_audit_sink::ClientIdentity::Files {
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    }
}

/// A node's key and certificate in `state_dir` (`lastmiled node enroll`).
pub const NODE_KEY_FILE: &str = "node.key";
pub const NODE_CERT_FILE: &str = "node.pem";

/// The node's audit-writer identity, if it enrolled.
pub fn node_audit_identity(dir: &Path) -> Option<lastmile_audit_sink::ClientIdentity> {
    let (cert, key) = (dir.join(NODE_CERT_FILE), dir.join(NODE_KEY_FILE));
    (cert.exists() && key.exists())
        .then_some(lastmile_audit_sink::ClientIdentity::Files { cert, key })
}

/// `lastmiled node enroll`: the node's key and certificate, with a token from
/// `lastmile-api nodes token NAME`. The certificate names `urn:lastmile:node:NAME`: the
/// node's identity when it writes to the audit service. Returns its name and expiry.
pub async fn enroll_node(
    api: &ApiConfig,
    ca_file: &Path,
    token: &str,
) -> anyhow::Result<(String, i64)> {
    let enrollment = Enrollment {
        path: "/v1/nodes/enroll",
        key_file: NODE_KEY_FILE,
        cert_file: NODE_CERT_FILE,
    };
    let cert: NodeCertificate =
        enroll_as(api, ca_file, token, &enrollment, |c: &NodeCertificate| {
            &c.certificate
        })
        .await?;
    Ok((cert.name, cert.expires_at))
}

pub(super) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

//! TLS 1.3 for both ends of the tunnel, and who a certificate speaks for.
//!
//! Both ends trust only the organisation's CA. The agent authenticates with its session
//! certificate (SAN URIs `urn:lastmile:user:…`, `…:session:…`, `…:device:…`, EKU
//! clientAuth) and the session key; the gateway with its gateway certificate
//! (`urn:lastmile:gateway:NAME` and its addresses, EKU serverAuth). An expired
//! certificate, one from another CA, or none at all fails the handshake.

use lastmile_proto::wire::{DeviceId, SessionId, UserName};
use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};
use x509_parser::extensions::GeneralName;

use crate::ALPN;

/// A certificate, key or CA that a TLS configuration cannot be made from.
#[derive(Debug, thiserror::Error)]
#[error("bad certificate or key: {0}")]
pub struct CredentialsError(String);

fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // TLS_AES_128_GCM_SHA256 first (TLS 1.3's mandatory suite, RFC 8446 §9.1): 128-bit
    // security and about 30% less CPU per byte than AES-256-GCM, which the tunnel's bulk
    // throughput feels (`cargo xtask bench tunnel`).
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

fn bad(what: &str, e: impl std::fmt::Display) -> CredentialsError {
    CredentialsError(format!("{what}: {e}"))
}

/// PKCS#8 v1 (RFC 8410 §7) for an Ed25519 seed: what rustls wants for the session key.
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// Every certificate in a PEM text.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("reading PEM certificates", e))?;
    if certs.is_empty() {
        return Err(CredentialsError("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, CredentialsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca_pem)? {
        roots.add(c).map_err(|e| bad("the organisation CA", e))?;
    }
    Ok(Arc::new(roots))
}

/// The agent's configuration: trust the org CA, present the session certificate.
pub fn agent_config(
    ca_pem: &str,
    session_certificate_pem: &str,
    session_seed: &[u8; 32],
) -> Result<Arc<ClientConfig>, CredentialsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ed25519_pkcs8(session_seed)));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", e))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certificates(session_certificate_pem)?, key)
        .map_err(|e| bad("the session certificate and key", e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The gateway's configuration: present the gateway certificate, require a client
/// certificate that chains to the org CA.
pub fn gateway_config(
    ca_pem: &str,
    gateway_certificate_pem: &str,
    gateway_key_pem: &str,
) -> Result<Arc<ServerConfig>, CredentialsError> {
    let key = PrivateKeyDer::from_pem_slice(gateway_key_pem.as_bytes())
        .map_err(|e| bad("the gateway key", e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| bad("the client verifier", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(gateway_certificate_pem)?, key)
        .map_err(|e| bad("the gateway certificate and key", e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Who a session certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    pub user: UserName,
    pub session: SessionId,
    pub device: DeviceId,
}

/// The subject alternative names of a certificate, each mapped by `pick`.
fn sans<T>(cert: &CertificateDer<'_>, pick: impl Fn(&GeneralName<'_>) -> Option<T>) -> Vec<T> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value.general_names.iter().filter_map(pick).collect()
}

fn san_uris(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, |n| match n {
        GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

/// The session a (verified) client certificate names; `None` for any other certificate
/// (a gateway's, say), which the gateway refuses.
pub fn session_identity(cert: &CertificateDer<'_>) -> Option<SessionIdentity> {
    let uris = san_uris(cert);
    let find = |prefix: &str| {
        uris.iter()
            .find_map(|u| u.strip_prefix(prefix).map(str::to_owned))
    };
    Some(SessionIdentity {
        // A user name the API would not have made is no user: refused like no name.
        user: UserName::parse(find("urn:lastmile:user:")?).ok()?,
        session: find("urn:lastmile:session:")?.into(),
        device: find("urn:lastmile:device:")?.into(),
    })
}

/// The gateway name a (verified) server certificate names.
pub fn gateway_name(cert: &CertificateDer<'_>) -> Option<String> {
    san_uris(cert)
        .iter()
        .find_map(|u| lastmile_proto::wire::uri::gateway_name(u).map(str::to_owned))
}

/// The seed in an Ed25519 PKCS#8 v1 key as [`ed25519_pkcs8`] writes it.
pub fn ed25519_seed(pkcs8: &[u8]) -> Option<[u8; 32]> {
    let prefix = ed25519_pkcs8(&[0; 32]);
    let prefix = prefix.get(..16)?;
    if pkcs8.len() != 48 || pkcs8.get(..16)? != prefix {
        return None;
    }
    pkcs8.get(16..)?.try_into().ok()
}

/// The DNS names and IP addresses a certificate names, as text.
pub fn certificate_addresses(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, |n| match n {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| std::net::Ipv4Addr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| std::net::Ipv6Addr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// When a certificate stops being valid (its notAfter, Unix seconds).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

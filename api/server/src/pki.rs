//! The organisation's keys: an X.509 CA for client, gateway and API identities, an SSH
//! user CA and an SSH host CA, and the API's own TLS certificate.
//!
//! Private keys live in `<data_dir>/keys`, a 0700 directory, in 0600 files (certificates
//! 0644) owned by the user the API runs as, written once and never overwritten; and each
//! is sealed under the KMS (envelope encryption, context: organisation and key name), so
//! the files alone give nothing: the KMS must agree to each start of the API.

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ssh_key::{LineEnding, PrivateKey, private::Ed25519Keypair};
use time::OffsetDateTime;

use lastmile_proto::wire::{CaBundle, uri};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} already exists: this data directory already holds an organisation; refusing to overwrite its keys"
    )]
    Exists(PathBuf),
    #[error(
        "{path} is missing or unreadable (run `lastmile-api init` first, or point --config at the right data_dir)"
    )]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}: {why}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not usable: {0}")]
    BadCsr(String),
    #[error("the KMS would not open {path}")]
    Kms {
        path: PathBuf,
        #[source]
        source: lastmile_vault::KmsError,
    },
    #[error("SSH certificate: {0}")]
    Ssh(String),
    #[error("random number generator failed: {0}")]
    Random(String),
}

/// The organisation's loaded keys.
#[derive(Debug)]
pub struct Pki {
    pub organisation: String,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    ssh_user_ca: PrivateKey,
    ssh_host_ca: PrivateKey,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key.sealed";
const TLS_CERT: &str = "api-tls.crt";
const TLS_KEY: &str = "api-tls.key.sealed";
const SSH_USER_CA: &str = "ssh_user_ca.sealed";
const SSH_HOST_CA: &str = "ssh_host_ca.sealed";
const ORG_NAME: &str = "organisation";

/// An Ed25519 public key as rcgen wants it (a session key never leaves the client).
struct Ed25519Public([u8; 32]);

impl rcgen::PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

pub fn random<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| PkiError::Random(e.to_string()))?;
    Ok(b)
}

fn time(unix: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| PkiError::BadCsr(format!("time out of range: {e}")))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to a new file (never replacing one), synced.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists(path.to_owned())
            } else {
                io(path)(e)
            }
        })?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read(dir: &Path, name: &str) -> Result<String, PkiError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| PkiError::Missing { path, source })
}

/// The encryption context of one of the organisation's private keys.
fn key_context(organisation: &str, name: &str) -> lastmile_vault::Context {
    lastmile_vault::Context::new([("lastmile:org", organisation), ("lastmile:key", name)])
}

async fn seal_key(
    kms: &lastmile_vault::Kms,
    organisation: &str,
    name: &str,
    pem: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let path = PathBuf::from(name);
    let sealed = lastmile_vault::envelope::seal(kms, &key_context(organisation, name), pem)
        .await
        .map_err(|source| PkiError::Kms {
            path: path.clone(),
            source,
        })?;
    serde_json::to_vec(&sealed).map_err(|e| PkiError::Invalid {
        path,
        what: "sealed key",
        why: e.to_string(),
    })
}

fn sealed_file(dir: &Path, name: &str) -> Result<lastmile_vault::Sealed, PkiError> {
    let path = dir.join(name);
    serde_json::from_str(&read(dir, name)?).map_err(|e| PkiError::Invalid {
        path,
        what: "sealed key (JSON)",
        why: e.to_string(),
    })
}

/// One of the organisation's private keys (PEM or OpenSSH text), opened by the KMS.
pub async fn open_key(
    dir: &Path,
    name: &str,
    kms: &lastmile_vault::Kms,
    organisation: &str,
) -> Result<zeroize::Zeroizing<String>, PkiError> {
    let path = dir.join(name);
    let sealed = sealed_file(dir, name)?;
    let plain = lastmile_vault::envelope::open(kms, &key_context(organisation, name), &sealed)
        .await
        .map_err(|source| PkiError::Kms {
            path: path.clone(),
            source,
        })?;
    String::from_utf8(plain.to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| PkiError::Invalid {
            path,
            what: "sealed key",
            why: "not text".into(),
        })
}

fn validity(params: &mut CertificateParams, not_after: i64) -> Result<(), PkiError> {
    params.not_before = time(crate::db::now() - 60)?;
    params.not_after = time(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(&random::<16>()?));
    Ok(())
}

/// Whether a PEM certificate names the API ([`lastmile_proto::wire::uri::API`]).
fn names_api(pem: &str) -> bool {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| {
        matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == lastmile_proto::wire::uri::API)
    })
}

/// An API certificate made before the API had a URI of its own: the same names, key
/// and lifetime, plus the URI. The file is replaced atomically.
fn reissue_with_api_uri(
    dir: &Path,
    old_pem: &str,
    key_pem: &str,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<String, PkiError> {
    let path = dir.join(TLS_CERT);
    let invalid = |why: String| PkiError::Invalid {
        path: path.clone(),
        what: "PEM certificate",
        why,
    };
    let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(e.to_string()))?;
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let der =
        CertificateDer::from_pem_slice(old_pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let (_, old) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "lastmile API");
    if let Ok(Some(san)) = old.subject_alternative_name() {
        for name in &san.value.general_names {
            use x509_parser::extensions::GeneralName;
            match name {
                GeneralName::DNSName(d) => params
                    .subject_alt_names
                    .push(SanType::DnsName((*d).to_owned().try_into()?)),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    params.subject_alt_names.extend(ip.map(SanType::IpAddress));
                }
                _ => {}
            }
        }
    }
    params
        .subject_alt_names
        .push(SanType::URI(lastmile_proto::wire::uri::API.try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, old.validity().not_after.timestamp())?;
    let pem = params.signed_by(&key, issuer)?.pem();
    let tmp = path.with_extension("crt.new");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, pem.as_bytes(), 0o644)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(pem)
}

fn ssh_ca(comment: String) -> Result<PrivateKey, PkiError> {
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&random::<32>()?));
    key.set_comment(comment);
    Ok(key)
}

impl Pki {
    /// Makes a new organisation's keys in `dir` (created 0700). `api_names` are the DNS
    /// names and addresses the API's TLS certificate covers.
    pub async fn create(
        dir: &Path,
        organisation: &str,
        api_names: &[String],
        kms: &lastmile_vault::Kms,
    ) -> Result<Self, PkiError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        if dir.join(CA_KEY).exists() {
            return Err(PkiError::Exists(dir.join(CA_KEY)));
        }
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, format!("lastmile CA {organisation}"));
        ca.distinguished_name
            .push(DnType::OrganizationName, organisation);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca, crate::db::now() + 10 * 365 * 86_400)?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let tls_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut tls = CertificateParams::new(api_names.to_vec())?;
        tls.distinguished_name
            .push(DnType::CommonName, "lastmile API");
        tls.subject_alt_names
            .push(SanType::URI(lastmile_proto::wire::uri::API.try_into()?));
        tls.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut tls, crate::db::now() + 2 * 365 * 86_400)?;
        let tls_cert = tls.signed_by(&tls_key, &issuer)?;

        let user_ca = ssh_ca(format!("lastmile ssh user CA {organisation}"))?;
        let host_ca = ssh_ca(format!("lastmile ssh host CA {organisation}"))?;

        let ssh_text = |k: &PrivateKey, path: &Path| {
            k.to_openssh(LineEnding::LF).map_err(|e| PkiError::Invalid {
                path: path.to_owned(),
                what: "OpenSSH key",
                why: e.to_string(),
            })
        };
        let user_text = ssh_text(&user_ca, &dir.join(SSH_USER_CA))?;
        let host_text = ssh_text(&host_ca, &dir.join(SSH_HOST_CA))?;
        let sealed = [
            (
                CA_KEY,
                seal_key(
                    kms,
                    organisation,
                    CA_KEY,
                    issuer.key().serialize_pem().as_bytes(),
                )
                .await?,
            ),
            (
                TLS_KEY,
                seal_key(
                    kms,
                    organisation,
                    TLS_KEY,
                    tls_key.serialize_pem().as_bytes(),
                )
                .await?,
            ),
            (
                SSH_USER_CA,
                seal_key(kms, organisation, SSH_USER_CA, user_text.as_bytes()).await?,
            ),
            (
                SSH_HOST_CA,
                seal_key(kms, organisation, SSH_HOST_CA, host_text.as_bytes()).await?,
            ),
        ];
        // The CA key is written first: its presence marks an initialised directory.
        for (name, bytes) in &sealed {
            write_new(&dir.join(name), bytes, 0o600)?;
        }
        write_new(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), 0o644)?;
        write_new(&dir.join(TLS_CERT), tls_cert.pem().as_bytes(), 0o644)?;
        write_new(&dir.join(ORG_NAME), organisation.as_bytes(), 0o644)?;
        Self::load(dir, kms).await
    }

    /// Re-wraps the sealed private keys' data keys under master key `to` (the keys
    /// themselves are not decrypted). Each file is replaced atomically.
    pub async fn rewrap_keys(
        dir: &Path,
        kms: &lastmile_vault::Kms,
        to: &str,
    ) -> Result<usize, PkiError> {
        let organisation = read(dir, ORG_NAME)?.trim().to_owned();
        let mut n = 0;
        for name in [CA_KEY, TLS_KEY, SSH_USER_CA, SSH_HOST_CA] {
            let path = dir.join(name);
            let sealed = sealed_file(dir, name)?;
            if sealed.key_id == to {
                continue;
            }
            let moved = lastmile_vault::envelope::rewrap(
                kms,
                &key_context(&organisation, name),
                &sealed,
                to,
            )
            .await
            .map_err(|source| PkiError::Kms {
                path: path.clone(),
                source,
            })?;
            let bytes = serde_json::to_vec(&moved).map_err(|e| PkiError::Invalid {
                path: path.clone(),
                what: "sealed key",
                why: e.to_string(),
            })?;
            let tmp = path.with_extension("sealed.new");
            let _ = std::fs::remove_file(&tmp);
            write_new(&tmp, &bytes, 0o600)?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            n += 1;
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(n)
    }

    /// Loads the keys `create` wrote, each opened by the KMS.
    pub async fn load(dir: &Path, kms: &lastmile_vault::Kms) -> Result<Self, PkiError> {
        let organisation = read(dir, ORG_NAME)?.trim().to_owned();
        let ca_key_pem = open_key(dir, CA_KEY, kms, &organisation).await?;
        let tls_key_pem = open_key(dir, TLS_KEY, kms, &organisation).await?;
        let user_pem = open_key(dir, SSH_USER_CA, kms, &organisation).await?;
        let host_pem = open_key(dir, SSH_HOST_CA, kms, &organisation).await?;
        let invalid = |name: &str, what: &'static str| {
            let path = dir.join(name);
            move |e: &dyn std::fmt::Display| PkiError::Invalid {
                path,
                what,
                why: e.to_string(),
            }
        };
        let ca_pem = read(dir, CA_CERT)?;
        let ca_key =
            KeyPair::from_pem(&ca_key_pem).map_err(|e| invalid(CA_KEY, "PEM private key")(&e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| invalid(CA_CERT, "PEM CA certificate")(&e))?;
        let ssh = |name: &str, text: &str| {
            PrivateKey::from_openssh(text).map_err(|e| invalid(name, "OpenSSH private key")(&e))
        };
        let mut tls_cert_pem = read(dir, TLS_CERT)?;
        if !names_api(&tls_cert_pem) {
            tls_cert_pem = reissue_with_api_uri(dir, &tls_cert_pem, &tls_key_pem, &issuer)?;
            tracing::info!(
                path = %dir.join(TLS_CERT).display(),
                "the API's certificate was re-issued to name {} (clients now require it)",
                lastmile_proto::wire::uri::API
            );
        }
        Ok(Self {
            organisation,
            ca_pem,
            issuer,
            ssh_user_ca: ssh(SSH_USER_CA, &user_pem)?,
            ssh_host_ca: ssh(SSH_HOST_CA, &host_pem)?,
            tls_cert_pem,
            tls_key_pem: tls_key_pem.to_string(),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn bundle(&self) -> CaBundle {
        CaBundle {
            organisation: self.organisation.clone(),
            x509: self.ca_pem.clone(),
            ssh_user_ca: self
                .ssh_user_ca
                .public_key()
                .to_openssh()
                .unwrap_or_default(),
            ssh_host_ca: self
                .ssh_host_ca
                .public_key()
                .to_openssh()
                .unwrap_or_default(),
        }
    }

    /// A client certificate for a session key: SAN URIs name the user, the session and the
    /// device; good for client authentication only.
    pub fn session_certificate(
        &self,
        user: &str,
        session: &str,
        device: &str,
        session_key: [u8; 32],
        not_after: i64,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        params.subject_alt_names = [uri::user(user), uri::session(session), uri::device(device)]
            .into_iter()
            .map(|u| Ok(SanType::URI(u.try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_after)?;
        Ok(params
            .signed_by(&Ed25519Public(session_key), &self.issuer)?
            .pem())
    }

    /// A gateway's certificate for the key in `csr` (whose signature is checked; nothing
    /// else in it is trusted): a URI naming the gateway, plus the DNS names and
    /// addresses the admin gave when making its enrollment token.
    pub fn gateway_certificate(
        &self,
        name: &str,
        addresses: &[String],
        csr_pem: &str,
        not_after: i64,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadCsr(format!(
                "{e} (send a PEM PKCS#10 request signed by the gateway's new key)"
            ))
        })?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(PkiError::BadCsr(
                "the gateway's key must be Ed25519: it also signs the gateway's API requests"
                    .into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        let mut sans = vec![SanType::URI(uri::gateway(name).try_into()?)];
        for a in addresses {
            sans.push(match a.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(a.clone().try_into()?),
            });
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_after)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// A client certificate, for the key in `csr` (whose signature is checked; nothing
    /// else in it is trusted), that names `uri` and is good for client authentication
    /// only: a node's audit-writer identity, or a security reader's.
    pub fn client_certificate(
        &self,
        name: &str,
        identity_uri: String,
        csr_pem: &str,
        not_after: i64,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadCsr(format!(
                "{e} (send a PEM PKCS#10 request signed by the new key)"
            ))
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::URI(identity_uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_after)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// The API's own audit-writer identity: a new key, in memory only, and a client
    /// certificate naming [`uri::API`] (its TLS certificate is for serving only).
    /// Returns (certificate PEM, key PEM).
    pub fn api_client_identity(&self, not_after: i64) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "lastmile-api");
        params.subject_alt_names = vec![SanType::URI(uri::API.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_after)?;
        let cert = params.signed_by(&key, &self.issuer)?.pem();
        Ok((cert, key.serialize_pem()))
    }

    /// A resource's TLS server certificate for the key in `csr`, held by a gateway that
    /// serves the resource: valid for `names` (DNS names and addresses) and server
    /// authentication only.
    pub fn resource_certificate(
        &self,
        resource: &str,
        names: &[String],
        csr_pem: &str,
        not_after: i64,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadCsr(format!(
                "{e} (send a PEM PKCS#10 request signed by the certificate's new key)"
            ))
        })?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("lastmile resource {resource}"));
        let mut sans = Vec::new();
        for a in names {
            sans.push(match a.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(a.clone().try_into()?),
            });
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_after)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// An OpenSSH host certificate for `key` (a gateway's SSH host key), valid for
    /// exactly `principals` (the names users dial), signed by the SSH host CA.
    pub fn ssh_host_certificate(
        &self,
        key: &ssh_key::PublicKey,
        principals: &[String],
        key_id: &str,
        valid_before: i64,
    ) -> Result<String, PkiError> {
        let ssh = |e: ssh_key::Error| PkiError::Ssh(e.to_string());
        if principals.is_empty() {
            return Err(PkiError::Ssh(
                "no principals: refusing to sign a host certificate valid for every host".into(),
            ));
        }
        let after = u64::try_from(crate::db::now() - 300).unwrap_or(0);
        let before = u64::try_from(valid_before).unwrap_or(0);
        let mut b = ssh_key::certificate::Builder::new(
            random::<16>()?.to_vec(),
            key.key_data().clone(),
            after,
            before,
        )
        .map_err(ssh)?;
        b.serial(u64::from_be_bytes(random::<8>()?)).map_err(ssh)?;
        b.cert_type(ssh_key::certificate::CertType::Host)
            .map_err(ssh)?;
        b.key_id(key_id).map_err(ssh)?;
        for p in principals {
            b.valid_principal(p.clone()).map_err(ssh)?;
        }
        let cert = b.sign(&self.ssh_host_ca).map_err(ssh)?;
        cert.to_openssh().map_err(ssh)
    }

    /// A short-lived OpenSSH user certificate for `key` (a gateway's per-connection key),
    /// valid for exactly `principals`, signed by the SSH user CA. Only `permit-pty`: no
    /// agent, port or X11 forwarding.
    pub fn ssh_user_certificate(
        &self,
        key: &ssh_key::PublicKey,
        principals: &[String],
        key_id: &str,
        valid_before: i64,
    ) -> Result<String, PkiError> {
        let ssh = |e: ssh_key::Error| PkiError::Ssh(e.to_string());
        let after = u64::try_from(crate::db::now() - 60).unwrap_or(0);
        let before = u64::try_from(valid_before).unwrap_or(0);
        let mut b = ssh_key::certificate::Builder::new(
            random::<16>()?.to_vec(),
            key.key_data().clone(),
            after,
            before,
        )
        .map_err(ssh)?;
        b.serial(u64::from_be_bytes(random::<8>()?)).map_err(ssh)?;
        b.cert_type(ssh_key::certificate::CertType::User)
            .map_err(ssh)?;
        b.key_id(key_id).map_err(ssh)?;
        if principals.is_empty() {
            return Err(PkiError::Ssh(
                "no principals: refusing to sign a certificate valid for every user".into(),
            ));
        }
        for p in principals {
            b.valid_principal(p.clone()).map_err(ssh)?;
        }
        b.extension("permit-pty", "").map_err(ssh)?;
        let cert = b.sign(&self.ssh_user_ca).map_err(ssh)?;
        cert.to_openssh().map_err(ssh)
    }
}

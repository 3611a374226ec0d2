//! The certificate a component presents to the audit service, kept current while it runs.
//!
//! A gateway's certificate lives a day and is renewed in place (its `state_dir` files are
//! rewritten); the API's own writer certificate is made in memory and replaced before it
//! ends. The audit client is built once, so it asks a [`ClientIdentity`] for the
//! certificate at each TLS handshake (rustls' `ResolvesClientCert`) rather than holding
//! the one it started with.
//!
//! Files are read again when either changes (by modification time); a pair that does not
//! load, or whose key is not the certificate's (a renewal that has written one file and
//! not yet the other), is skipped with a warning and the last good pair is presented
//! meanwhile. At start the pair must load: a component does not start with an identity
//! it cannot use.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use tokio_rustls::rustls::{
    self,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    sign::CertifiedKey,
};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    #[error("the certificate holds no certificate (PEM `CERTIFICATE` blocks)")]
    NoCertificate,
    #[error("the key is not the certificate's key")]
    Mismatch,
    #[error("the key cannot sign with TLS 1.3: {0}")]
    BadKey(String),
}

/// A certificate chain and its key, in memory, replaceable while connections use it.
#[derive(Debug)]
pub struct MemoryIdentity(RwLock<Arc<CertifiedKey>>);

impl MemoryIdentity {
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        Ok(Self(RwLock::new(certified(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            None,
        )?)))
    }

    /// Presents this chain and key from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
        let next = certified(chain_pem.as_bytes(), key_pem.as_bytes(), None)?;
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Where a component's audit-writer certificate comes from.
#[derive(Debug, Clone)]
pub enum ClientIdentity {
    /// PEM files (a chain and a PKCS#8, SEC1 or PKCS#1 key), read again when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Held by the component, which replaces it when it renews.
    Memory(Arc<MemoryIdentity>),
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|e| IdentityError::Unreadable {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn certified(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: Option<&CryptoProvider>,
) -> Result<Arc<CertifiedKey>, IdentityError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    if chain.is_empty() {
        return Err(IdentityError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| IdentityError::BadKey(e.to_string()))?;
    let ring = rustls::crypto::ring::default_provider();
    let provider = provider.unwrap_or(&ring);
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| IdentityError::BadKey(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // A key type rustls cannot compare (no SubjectPublicKeyInfo from the signer) is
        // taken as it is: the audit service's handshake will refuse a wrong one.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(_) => Err(IdentityError::Mismatch),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads the files' pair, naming the file at fault.
fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, IdentityError> {
    let (c, k) = (read(cert)?, read(key)?);
    certified(&c, &k, None).map_err(|e| match e {
        IdentityError::NoCertificate => IdentityError::Unreadable {
            path: cert.to_owned(),
            detail: e.to_string(),
        },
        IdentityError::BadKey(_) => IdentityError::Unreadable {
            path: key.to_owned(),
            detail: e.to_string(),
        },
        IdentityError::Mismatch => IdentityError::Unreadable {
            path: key.to_owned(),
            detail: format!("not the key of {}", cert.display()),
        },
        e @ IdentityError::Unreadable { .. } => e,
    })
}

/// The pair presented now and, for files, the modification times it was read at.
type Cached = (Option<(SystemTime, SystemTime)>, Arc<CertifiedKey>);

/// The rustls side: the current certificate at each handshake.
#[derive(Debug)]
pub(crate) struct Resolver {
    source: ClientIdentity,
    cached: Mutex<Cached>,
}

impl Resolver {
    /// Fails when the identity cannot be used now.
    pub(crate) fn new(source: ClientIdentity) -> Result<Self, IdentityError> {
        let (stamp, current) = match &source {
            ClientIdentity::Files { cert, key } => {
                let stamp = modified(cert).zip(modified(key));
                (stamp, load_files(cert, key)?)
            }
            ClientIdentity::Memory(m) => (None, m.current()),
        };
        Ok(Self {
            source,
            cached: Mutex::new((stamp, current)),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &self.source {
            ClientIdentity::Memory(m) => cached.1 = m.current(),
            ClientIdentity::Files { cert, key } => {
                let stamp = modified(cert).zip(modified(key));
                if stamp.is_some() && stamp != cached.0 {
                    match load_files(cert, key) {
                        Ok(next) => {
                            tracing::info!(cert = %cert.display(), "audit writer certificate reloaded");
                            *cached = (stamp, next);
                        }
                        Err(e) => tracing::warn!(
                            error = %crate::error_chain(&e),
                            "the audit writer certificate changed but does not load yet; \
                             presenting the previous one"
                        ),
                    }
                }
            }
        }
        cached.1.clone()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn subject(ck: &CertifiedKey) -> Vec<u8> {
        ck.cert.first().unwrap().as_ref().to_vec()
    }

    #[test]
    fn files_are_read_again_when_they_change_and_a_half_written_pair_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w.key"));
        let (c1, k1) = pair("one");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let r = Resolver::new(ClientIdentity::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();
        let first = subject(&r.current());

        // A renewal that has written the new key but not yet its certificate.
        let (c2, k2) = pair("two");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&key, &k2).unwrap();
        assert_eq!(
            subject(&r.current()),
            first,
            "a mismatched pair is not presented"
        );
        std::fs::write(&cert, &c2).unwrap();
        let second = subject(&r.current());
        assert_ne!(second, first, "the renewed certificate is presented");
        assert_eq!(
            second,
            CertificateDer::from_pem_slice(c2.as_bytes())
                .unwrap()
                .as_ref()
        );
    }

    #[test]
    fn an_unusable_identity_refuses_the_start_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w.key"));
        let (c1, _) = pair("one");
        let (_, k2) = pair("two");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k2).unwrap();
        let e = Resolver::new(ClientIdentity::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("w.key") && e.to_string().contains("not the key of"),
            "{e}"
        );
        std::fs::remove_file(&cert).unwrap();
        let e = Resolver::new(ClientIdentity::Files { cert, key }).unwrap_err();
        assert!(e.to_string().contains("w.pem"), "{e}");
    }

    #[test]
    fn a_memory_identity_is_replaced_in_place() {
        let (c1, k1) = pair("one");
        let m = Arc::new(MemoryIdentity::new(&c1, &k1).unwrap());
        let r = Resolver::new(ClientIdentity::Memory(m.clone())).unwrap();
        let first = subject(&r.current());
        let (c2, k2) = pair("two");
        assert!(matches!(m.replace(&c2, &k1), Err(IdentityError::Mismatch)));
        assert_eq!(subject(&r.current()), first);
        m.replace(&c2, &k2).unwrap();
        assert_ne!(subject(&r.current()), first);
    }
}

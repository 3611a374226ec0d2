//! The hop to the target: a russh client over a stream the gateway connected, that trusts
//! the target's host key only as the resource says (a host CA or pinned keys, never on
//! first use) and logs in as the principal with the caller's key and certificate.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{
    Algorithm, Certificate, EcdsaCurve, PrivateKey, PrivateKeyWithHashAlg, PublicKey,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::principal::Principal;

/// How the target proves it is the target.
#[derive(Debug, Clone)]
pub enum HostTrust {
    /// The target presents a host certificate signed by one of `authorities`, naming
    /// `host_name` among its principals (OpenSSH's `@cert-authority`).
    CertificateAuthority {
        authorities: Vec<PublicKey>,
        host_name: String,
    },
    /// The target's host key is one of these.
    PinnedKeys(Vec<PublicKey>),
    /// Both: a plain host key must be one of `keys`, a host certificate must be signed
    /// by one of `authorities` for `host_name` (a target offering a certificate is
    /// judged by the certificate alone).
    KeysOrCertificateAuthority {
        keys: Vec<PublicKey>,
        authorities: Vec<PublicKey>,
        host_name: String,
    },
}

/// The credential for the target: a fresh per-connection key with the API's short-lived
/// user certificate (`ssh-certificate` resources), or a stored key (`ssh-key` resources).
#[derive(Debug, Clone)]
pub struct UpstreamLogin {
    pub key: Arc<PrivateKey>,
    pub certificate: Option<Certificate>,
}

#[derive(Debug, Error)]
pub enum HostKeyError {
    #[error(
        "the resource configures no host CA and no pinned host key, and lastmile never trusts a target's key on first use; an administrator must set one"
    )]
    NothingTrusted,
    #[error(
        "the target presented a plain host key, but the resource expects a host certificate from its SSH host CA"
    )]
    CertificateExpected,
    #[error("the target presented a host certificate, but the resource pins host keys")]
    KeyExpected,
    #[error("the target's host key is not one of the resource's pinned keys")]
    NotPinned,
    #[error("the target's host certificate is a user certificate")]
    NotAHostCertificate,
    #[error(
        "the target's host certificate is not valid for {host_name:?} (it names {principals:?})"
    )]
    WrongHost {
        host_name: String,
        principals: Vec<String>,
    },
    #[error(
        "the target's host certificate is not signed by the resource's host CA, or is outside its validity"
    )]
    Invalid(#[source] russh::keys::ssh_key::Error),
}

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("cannot reach the target over SSH")]
    Connect(#[source] russh::Error),
    #[error("the target's host key is not trusted")]
    HostKey(#[source] HostKeyError),
    #[error(
        "the target refused the login as {0} (does it trust lastmile's SSH user CA, and list the principal?)"
    )]
    Refused(String),
    #[error("authentication to the target failed")]
    Auth(#[source] russh::Error),
}

/// Decide whether the key or certificate the target presented is trusted. Pure, so every
/// case is tested without a server; `now` is Unix seconds.
pub fn verify_host(
    trust: &HostTrust,
    presented: &PublicKeyOrCertificate,
    now: u64,
) -> Result<(), HostKeyError> {
    match trust {
        HostTrust::PinnedKeys(keys) if keys.is_empty() => Err(HostKeyError::NothingTrusted),
        HostTrust::CertificateAuthority { authorities, .. } if authorities.is_empty() => {
            Err(HostKeyError::NothingTrusted)
        }
        HostTrust::KeysOrCertificateAuthority {
            keys,
            authorities,
            host_name,
        } => match presented {
            PublicKeyOrCertificate::PublicKey { .. } => {
                verify_host(&HostTrust::PinnedKeys(keys.clone()), presented, now)
            }
            PublicKeyOrCertificate::Certificate(_) => verify_host(
                &HostTrust::CertificateAuthority {
                    authorities: authorities.clone(),
                    host_name: host_name.clone(),
                },
                presented,
                now,
            ),
        },
        HostTrust::PinnedKeys(keys) => match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                if keys
                    .iter()
                    .any(|pinned| pinned.key_data() == key.key_data())
                {
                    Ok(())
                } else {
                    Err(HostKeyError::NotPinned)
                }
            }
            PublicKeyOrCertificate::Certificate(_) => Err(HostKeyError::KeyExpected),
        },
        HostTrust::CertificateAuthority {
            authorities,
            host_name,
        } => {
            let PublicKeyOrCertificate::Certificate(cert) = presented else {
                return Err(HostKeyError::CertificateExpected);
            };
            if cert.cert_type() != CertType::Host {
                return Err(HostKeyError::NotAHostCertificate);
            }
            let fingerprints: Vec<_> = authorities
                .iter()
                .map(|ca| ca.fingerprint(HashAlg::Sha256))
                .collect();
            cert.validate_at(now, fingerprints.iter())
                .map_err(HostKeyError::Invalid)?;
            if !cert.valid_principals().iter().any(|p| p == host_name) {
                return Err(HostKeyError::WrongHost {
                    host_name: host_name.clone(),
                    principals: cert.valid_principals().to_vec(),
                });
            }
            Ok(())
        }
    }
}

/// The russh client handler of the upstream hop: it only judges the host key; channel
/// traffic is read from each channel by the relay.
#[derive(Debug)]
pub struct Upstream {
    trust: HostTrust,
    /// Why the host key was refused, for the error the gateway reports.
    refusal: Arc<std::sync::Mutex<Option<HostKeyError>>>,
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        match verify_host(&self.trust, presented, now) {
            Ok(()) => Ok(true),
            Err(error) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(error);
                }
                Ok(false)
            }
        }
    }
}

fn client_config(trust: &HostTrust) -> client::Config {
    let mut preferred = russh::Preferred::default();
    if matches!(
        trust,
        HostTrust::CertificateAuthority { .. } | HostTrust::KeysOrCertificateAuthority { .. }
    ) {
        // russh asks for host certificates only when told to (Preferred::host_key_certificates).
        preferred.host_key_certificates = Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]);
    }
    // Strict key exchange (the CVE-2023-48795 "Terrapin" fix) is negotiated through the
    // `kex-strict-c-v00@openssh.com` pseudo-algorithm in the kex list; russh's default
    // list carries it and we keep that list, so do not replace `preferred.kex`.
    debug_assert!(
        preferred
            .kex
            .iter()
            .any(|k| k.as_ref() == "kex-strict-c-v00@openssh.com")
    );
    client::Config {
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

/// Connect to the target over `stream`, check its host key and log in as `principal`.
pub async fn connect<S>(
    stream: S,
    trust: HostTrust,
    principal: &Principal,
    login: &UpstreamLogin,
) -> Result<client::Handle<Upstream>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refusal = Arc::new(std::sync::Mutex::new(None));
    let config = Arc::new(client_config(&trust));
    let handler = Upstream {
        trust,
        refusal: refusal.clone(),
    };
    let mut handle = match client::connect_stream(config, stream, handler).await {
        Ok(handle) => handle,
        Err(error) => {
            let refused = refusal.lock().ok().and_then(|mut slot| slot.take());
            return Err(match refused {
                Some(host_key) => UpstreamError::HostKey(host_key),
                None => UpstreamError::Connect(error),
            });
        }
    };
    let result = match &login.certificate {
        Some(cert) => {
            handle
                .authenticate_openssh_cert(principal.as_str(), login.key.clone(), cert.clone())
                .await
        }
        None => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(UpstreamError::Auth)?
                .flatten();
            handle
                .authenticate_publickey(
                    principal.as_str(),
                    PrivateKeyWithHashAlg::new(login.key.clone(), hash),
                )
                .await
        }
    }
    .map_err(UpstreamError::Auth)?;
    if result.success() {
        Ok(handle)
    } else {
        Err(UpstreamError::Refused(principal.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PrivateKey {
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::from(pair)
    }

    #[test]
    fn nothing_configured_trusts_nothing() {
        let presented = PublicKeyOrCertificate::from(key(1).public_key().clone());
        for trust in [
            HostTrust::PinnedKeys(Vec::new()),
            HostTrust::CertificateAuthority {
                authorities: Vec::new(),
                host_name: "web-1".to_owned(),
            },
        ] {
            assert!(matches!(
                verify_host(&trust, &presented, 0),
                Err(HostKeyError::NothingTrusted)
            ));
        }
    }

    #[test]
    fn pinned_keys_are_compared_exactly() {
        let pinned = HostTrust::PinnedKeys(vec![key(1).public_key().clone()]);
        let good = PublicKeyOrCertificate::from(key(1).public_key().clone());
        let other = PublicKeyOrCertificate::from(key(2).public_key().clone());
        assert!(verify_host(&pinned, &good, 0).is_ok());
        assert!(matches!(
            verify_host(&pinned, &other, 0),
            Err(HostKeyError::NotPinned)
        ));
    }

    #[test]
    fn with_both_a_plain_key_must_be_pinned() {
        let trust = HostTrust::KeysOrCertificateAuthority {
            keys: vec![key(1).public_key().clone()],
            authorities: vec![key(9).public_key().clone()],
            host_name: "web-1".to_owned(),
        };
        let good = PublicKeyOrCertificate::from(key(1).public_key().clone());
        let other = PublicKeyOrCertificate::from(key(2).public_key().clone());
        assert!(verify_host(&trust, &good, 0).is_ok());
        assert!(matches!(
            verify_host(&trust, &other, 0),
            Err(HostKeyError::NotPinned)
        ));
    }

    #[test]
    fn a_ca_wants_a_certificate() {
        let trust = HostTrust::CertificateAuthority {
            authorities: vec![key(9).public_key().clone()],
            host_name: "web-1".to_owned(),
        };
        let plain = PublicKeyOrCertificate::from(key(1).public_key().clone());
        assert!(matches!(
            verify_host(&trust, &plain, 0),
            Err(HostKeyError::CertificateExpected)
        ));
    }
}

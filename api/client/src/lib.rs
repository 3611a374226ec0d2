//! A client of `lastmile-api`.
//!
//! TLS is pinned to the organisation's CA (never the system roots). Login proves the
//! device key; the client makes a fresh session key per login; every later call is
//! signed by both keys ([`lastmile_proto::httpsig`]) with a new random nonce.

pub mod backoff;

use std::{sync::Arc, time::SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signer as _, SigningKey};
use lastmile_proto::{
    httpsig::{self, SignedHeaders, Signer},
    wire::{self, ErrorBody, ErrorCode, LoginResponse},
};
use reqwest::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the API refused: {status} {}: {}", body.error, body.message)]
    Api { status: u16, body: ErrorBody },
    #[error("cannot reach the API")]
    Transport(#[from] reqwest::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot sign the request")]
    Sign(#[from] httpsig::SigError),
    #[error("the API answered {status} with a body that is not what was expected: {body}")]
    Unexpected { status: u16, body: String },
    #[error("random number generator: {0}")]
    Random(String),
}

impl ClientError {
    /// The API's error code, when it refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Api { body, .. } => Some(&body.error),
            _ => None,
        }
    }

    /// Whether the TLS handshake failed because the server's certificate does not chain
    /// to the CA this client was given (another organisation's API, or the wrong CA file).
    pub fn certificate_not_from_ca(&self) -> bool {
        let Self::Transport(e) = self else {
            return false;
        };
        let unknown = |r: &rustls::Error| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                )
            )
        };
        // An io::Error's `source()` skips the error it wraps (here an io::Error around the
        // rustls one), so step into it instead.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<rustls::Error>().is_some_and(unknown) {
                return true;
            }
            cause = match c
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => Some(inner),
                None => c.source(),
            };
        }
        false
    }
}

/// 32 random bytes.
pub fn random32() -> Result<[u8; 32], ClientError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| ClientError::Random(e.to_string()))?;
    Ok(b)
}

/// A new Ed25519 key (device or session).
pub fn new_key() -> Result<SigningKey, ClientError> {
    Ok(SigningKey::from_bytes(&random32()?))
}

pub fn public_b64(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().as_bytes())
}

/// A logged-in session: what every signed call needs.
#[derive(Debug, Clone)]
pub struct Session {
    pub device_key: SigningKey,
    pub session_key: SigningKey,
    pub login: LoginResponse,
}

impl Session {
    /// The agent's consent to one connection to `resource` through `gateway`: a fresh
    /// [`wire::UnlockAuthorization`] and the session key's signature over it (base64).
    pub fn authorize(
        &self,
        resource: &wire::ResourceName,
        gateway: &wire::GatewayName,
        connection: &str,
    ) -> Result<(wire::UnlockAuthorization, String), ClientError> {
        let a = wire::UnlockAuthorization {
            session: self.login.session.as_str().into(),
            device: self.login.device.as_str().into(),
            resource: resource.clone(),
            gateway: gateway.clone(),
            connection: connection.into(),
            created: now(),
            nonce: nonce()?,
        };
        let sig = self
            .session_key
            .sign(&wire::unlock_authorization_message(&a));
        Ok((a, B64.encode(sig.to_bytes())))
    }
}

/// A server-sent event stream of revocations (`GET /v1/revocations`).
/// A revocation stream (`GET /v1/revocations`), read one event at a time.
#[derive(Debug)]
pub struct Revocations {
    response: reqwest::Response,
    buffer: String,
    position: Option<i64>,
}

impl Revocations {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
            position: None,
        }
    }

    /// The `seq` to resume after (`?since=`) if the stream breaks now: the last
    /// revocation read, or where the API said the stream starts.
    pub fn position(&self) -> Option<i64> {
        self.position
    }

    /// The next revocation; `Ok(None)` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<wire::Revocation>, ClientError> {
        loop {
            // One event ends at a blank line; its `data:` lines carry the JSON.
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| -> String {
                    event
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .map(str::trim_start)
                        .collect()
                };
                let data = field("data:");
                if data.is_empty() {
                    continue;
                }
                let unexpected = || ClientError::Unexpected {
                    status: 200,
                    body: data.clone(),
                };
                if field("event:") == "position" {
                    self.position = Some(data.trim().parse().map_err(|_| unexpected())?);
                    continue;
                }
                let r: wire::Revocation = serde_json::from_str(&data).map_err(|_| unexpected())?;
                self.position = Some(r.seq);
                return Ok(Some(r));
            }
            match self.response.chunk().await? {
                Some(bytes) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                None => return Ok(None),
            }
        }
    }
}

/// What login needs besides the password.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub totp: Option<&'a str>,
    pub new_password: Option<&'a str>,
    pub device_key: &'a SigningKey,
    pub fingerprint: &'a str,
    pub device_name: &'a str,
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    host: String,
    http: reqwest::Client,
}

/// A raw answer, for callers that inspect refusals.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if !(200..300).contains(&self.status) {
            return Err(match serde_json::from_str::<ErrorBody>(&self.body) {
                Ok(body) => ClientError::Api {
                    status: self.status,
                    body,
                },
                Err(_) => ClientError::Unexpected {
                    status: self.status,
                    body: self.body.clone(),
                },
            });
        }
        let body = if self.body.is_empty() {
            "null"
        } else {
            &self.body
        };
        serde_json::from_str(body).map_err(|_| ClientError::Unexpected {
            status: self.status,
            body: self.body.clone(),
        })
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh nonce: 24 random bytes, hex.
pub fn nonce() -> Result<String, ClientError> {
    Ok(random32()?
        .iter()
        .take(24)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The organisation's CA signs gateways' certificates too, and they also carry
/// `serverAuth`: a chain to the CA and the right name do not yet say the peer is the
/// API. Its certificate must also name [`wire::uri::API`], which no other component's
/// does. (rustls calls this "dangerous" because a custom verifier can weaken checks;
/// this one runs every check webpki does first and only adds one.)
#[derive(Debug)]
struct ApiVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

fn names_api(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == wire::uri::API))
}

impl rustls::client::danger::ServerCertVerifier for ApiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !names_api(end_entity) {
            return Err(rustls::Error::General(format!(
                "the server at this address has a certificate from the organisation's CA that is not \
                 the lastmile API's (it does not name {}): another lastmile component, a gateway \
                 perhaps, answers here. Check the API URL",
                wire::uri::API
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl ApiClient {
    /// `base` is `https://host:port`; `ca_pem` the organisation's CA; `identity` a
    /// client certificate chain and key (PEM), for gateways.
    pub fn new(
        base: &str,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Self, ClientError> {
        let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls(&e))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ApiVerifier { webpki }));
        let config = match identity {
            Some((cert, key)) => {
                let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| tls(&e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let base = base.trim_end_matches('/').to_owned();
        let host = base
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Tls(format!("`{base}` is not an https:// URL")))?
            .to_owned();
        Ok(Self { base, host, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answer(r: reqwest::Response) -> Result<Answer, ClientError> {
        let status = r.status().as_u16();
        let body = r.text().await?;
        Ok(Answer { status, body })
    }

    /// An unsigned call.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        Self::answer(req.send().await?).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None).await?.json()
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(
            Method::POST,
            path,
            Some(serde_json::to_vec(body).map_err(|e| ClientError::Tls(e.to_string()))?),
        )
        .await?
        .json()
    }

    /// Logs in: asks for a challenge, proves the device key over it, binds a new session key.
    pub async fn login(&self, l: &Login<'_>) -> Result<Session, ClientError> {
        let device_public = public_b64(l.device_key);
        let challenge: wire::Challenge = self
            .post(
                "/v1/login/challenge",
                &wire::ChallengeRequest {
                    user: l.user.to_owned(),
                    device_key: device_public.clone(),
                },
            )
            .await?;
        let session_key = new_key()?;
        let session_public = public_b64(&session_key);
        let message =
            wire::login_proof_message(l.user, &challenge.challenge, &session_public, l.fingerprint);
        let signature = B64.encode(l.device_key.sign(&message).to_bytes());
        let login: LoginResponse = self
            .post(
                "/v1/login",
                &wire::LoginRequest {
                    user: l.user.to_owned(),
                    password: l.password.to_owned(),
                    totp: l.totp.map(str::to_owned),
                    new_password: l.new_password.map(str::to_owned),
                    challenge: challenge.challenge,
                    session_key: session_public,
                    device: wire::DeviceProof {
                        public_key: device_public,
                        fingerprint: l.fingerprint.to_owned(),
                        name: l.device_name.to_owned(),
                        signature,
                    },
                },
            )
            .await?;
        Ok(Session {
            device_key: l.device_key.clone(),
            session_key,
            login,
        })
    }

    /// The three signature headers for a call, by `session`'s keys.
    pub fn sign(
        &self,
        session: &Session,
        method: &Method,
        path: &str,
        body: &[u8],
        created: i64,
        nonce: &str,
    ) -> Result<SignedHeaders, ClientError> {
        let target = format!("https://{}{path}", self.host);
        Ok(httpsig::sign(
            method.as_str(),
            &target,
            body,
            created,
            nonce,
            &[
                Signer {
                    label: httpsig::LABEL_DEVICE,
                    keyid: &session.login.device,
                    key: &session.device_key,
                },
                Signer {
                    label: httpsig::LABEL_SESSION,
                    keyid: &session.login.session,
                    key: &session.session_key,
                },
            ],
        )?)
    }

    /// Sends a call with the given signature headers and body, as they are (tests use
    /// this to send changed or replayed requests).
    pub async fn send_signed(
        &self,
        method: Method,
        path: &str,
        headers: &SignedHeaders,
        body: Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header(httpsig::HEADER_CONTENT_DIGEST, &headers.content_digest)
            .header(httpsig::HEADER_SIGNATURE_INPUT, &headers.signature_input)
            .header(httpsig::HEADER_SIGNATURE, &headers.signature);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        Self::answer(req.body(body).send().await?).await
    }

    /// A signed call, freshly signed now.
    pub async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Tls(e.to_string()))?,
            None => Vec::new(),
        };
        let headers = self.sign(session, &method, path, &body, now(), &nonce()?)?;
        self.send_signed(method, path, &headers, body).await
    }

    /// A signed streaming GET (the revocation stream).
    pub async fn stream(
        &self,
        session: &Session,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let headers = self.sign(session, &Method::GET, path, b"", now(), &nonce()?)?;
        Ok(self
            .http
            .get(self.url(path))
            .header(httpsig::HEADER_CONTENT_DIGEST, &headers.content_digest)
            .header(httpsig::HEADER_SIGNATURE_INPUT, &headers.signature_input)
            .header(httpsig::HEADER_SIGNATURE, &headers.signature)
            .timeout(std::time::Duration::from_secs(3600))
            .send()
            .await?)
    }

    /// A call signed by a gateway's key (label `gateway`, keyid its name); the gateway's
    /// certificate goes with it at the TLS layer.
    pub async fn call_as_gateway(
        &self,
        name: &str,
        key: &SigningKey,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let headers = httpsig::sign(
            method.as_str(),
            &format!("https://{}{path}", self.host),
            body,
            now(),
            &nonce()?,
            &[Signer {
                label: "gateway",
                keyid: name,
                key,
            }],
        )?;
        self.send_signed(method, path, &headers, body.to_vec())
            .await
    }

    /// An unsigned streaming GET (a gateway's, authenticated by its certificate).
    pub async fn stream_unsigned(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        Ok(self
            .http
            .get(self.url(path))
            .timeout(std::time::Duration::from_secs(3600))
            .send()
            .await?)
    }
}

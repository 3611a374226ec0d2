//! Stored credentials and their unlock.
//!
//! A credential is sealed with a data key from the KMS under the encryption context
//! (organisation, resource, version); only the wrapped data key is stored beside it.
//! It is unlocked only for a gateway with a valid identity (client certificate, and the
//! request signed with that certificate's key) that carries a fresh, unused authorization
//! signed by a live user session, bound to its device, whose user holds an unexpired
//! grant for the resource: neither alone suffices. The decryption is recorded in the
//! audit log before anything is released, and the secret leaves only sealed (age X25519)
//! to the recipient the gateway named for this one unlock.

use lastmile_proto::wire::ErrorCode;
use std::io::Write as _;

use axum::http::{HeaderMap, Method, Uri};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, VerifyingKey};
use lastmile_proto::wire::{
    CredentialInfo, CredentialKind, UnlockAuthorization, UnlockRequest, Unlocked,
    unlock_authorization_message,
};
use lastmile_vault::{Context, KmsError, Sealed, envelope};
use sqlx::Row as _;
use zeroize::Zeroizing;

use crate::{
    admin::{stored, stored_name},
    app::App,
    auth::{check_fresh, live_session, parse_signatures, sig_error, spend_nonce},
    config::secs,
    error::ApiError,
    events::{ApiEvent, ConnectionFields, CredentialChange},
};

pub(crate) fn kms_error(e: KmsError) -> ApiError {
    match e {
        KmsError::Refused => ApiError::internal(
            "the KMS refused to unwrap a stored credential (wrong key or context, or the stored ciphertext was changed)",
        ),
        e => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::KmsUnavailable,
            format!("the KMS could not be used, so nothing was released: {e}"),
        ),
    }
}

/// Stores a new version of `resource`'s credential. The secret is checked for its kind
/// (an SSH key must parse) and never logged.
pub async fn set_credential(
    app: &App,
    actor: &str,
    resource: &str,
    kind: CredentialKind,
    secret: Zeroizing<Vec<u8>>,
) -> Result<CredentialInfo, ApiError> {
    match kind {
        CredentialKind::SshCertificate => {
            return Err(ApiError::bad_request(
                ErrorCode::NothingToStore,
                "an ssh-certificate resource stores no secret: the API signs a certificate per connection",
            ));
        }
        CredentialKind::SshKey => {
            let text = std::str::from_utf8(&secret).map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::BadSecret,
                    "an SSH key must be an OpenSSH private key (text)",
                )
            })?;
            let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::BadSecret,
                    "this is not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)",
                )
            })?;
            if key.is_encrypted() {
                return Err(ApiError::bad_request(
                    ErrorCode::BadSecret,
                    "the SSH key is passphrase-protected; store it decrypted (the vault encrypts it)",
                ));
            }
        }
        CredentialKind::Password => {}
    }
    if secret.is_empty() || secret.len() > 16 * 1024 {
        return Err(ApiError::bad_request(
            ErrorCode::BadSecret,
            "a secret must be 1 byte to 16 KiB",
        ));
    }
    let mut tx = app.db.pool.begin().await?;
    let declared = crate::admin::require_resource(&mut tx, resource).await?;
    if declared.as_deref() != Some(stored_name(&kind).as_str()) {
        return Err(ApiError::bad_request(
            ErrorCode::CredentialKindMismatch,
            format!(
                "resource `{resource}` declares credential {}, not {}: store that kind, or change the resource's `credential` first",
                declared.as_deref().unwrap_or("(none)"),
                stored_name(&kind)
            ),
        ));
    }
    let version =
        sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM credentials WHERE resource = $1")
            .bind(resource)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("v")?
            + 1;
    let context = Context::credential(&app.pki.organisation, resource, version);
    let sealed = envelope::seal(&app.kms, &context, &secret)
        .await
        .map_err(kms_error)?;
    let t = app.clock.now();
    sqlx::query(
        "INSERT INTO credentials (resource, version, kind, key_id, wrapped_key, nonce, ciphertext, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(resource)
    .bind(version)
    .bind(stored_name(&kind))
    .bind(&sealed.key_id)
    .bind(B64.encode(&sealed.wrapped_key))
    .bind(B64.encode(sealed.nonce))
    .bind(B64.encode(&sealed.ciphertext))
    .bind(t)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::CredentialChange {
        actor,
        resource,
        version,
        kms_key: &sealed.key_id,
        change: CredentialChange::Set {
            credential_kind: &stored_name(&kind),
        },
    })
    .await?;
    tx.commit().await?;
    Ok(CredentialInfo {
        resource: resource.to_owned(),
        kind,
        version,
        key_id: sealed.key_id,
        created_at: t,
        created_by: actor.to_owned(),
    })
}

/// Every stored version, newest first per resource. No secrets.
pub async fn list_credentials(app: &App) -> Result<Vec<CredentialInfo>, ApiError> {
    sqlx::query("SELECT resource, version, kind, key_id, created_at, created_by FROM credentials ORDER BY resource, version DESC")
        .fetch_all(&app.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(CredentialInfo {
                resource: r.try_get("resource")?,
                kind: stored("kind", r.try_get("kind")?)?,
                version: r.try_get("version")?,
                key_id: r.try_get("key_id")?,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            })
        })
        .collect()
}

fn sealed_of(r: &sqlx::any::AnyRow) -> Result<Sealed, ApiError> {
    let b = |f: &str| -> Result<Vec<u8>, ApiError> {
        B64.decode(r.try_get::<String, _>(f)?)
            .map_err(|e| ApiError::internal(format!("stored {f}: {e}")))
    };
    Ok(Sealed {
        key_id: r.try_get("key_id")?,
        wrapped_key: b("wrapped_key")?,
        nonce: b("nonce")?
            .try_into()
            .map_err(|_| ApiError::internal("stored nonce is not 12 bytes"))?,
        ciphertext: b("ciphertext")?,
    })
}

/// Re-wraps every stored data key under master key `to` (the secrets are never
/// decrypted). Each row is changed and audited on its own, so a failure part-way leaves
/// every row readable (under its old key or its new one); run it again to finish.
/// Returns how many were re-wrapped. `kms` is the KMS that knows `to` (after a new
/// local key, a freshly opened one).
pub async fn rotate(
    app: &App,
    kms: &lastmile_vault::Kms,
    actor: &str,
    to: &str,
) -> Result<usize, ApiError> {
    let rows = sqlx::query("SELECT resource, version, key_id, wrapped_key, nonce, ciphertext FROM credentials WHERE key_id <> $1")
        .bind(to)
        .fetch_all(&app.db.pool)
        .await?;
    let mut done = 0;
    for r in rows {
        let resource: String = r.try_get("resource")?;
        let version: i64 = r.try_get("version")?;
        let sealed = sealed_of(&r)?;
        let context = Context::credential(&app.pki.organisation, &resource, version);
        let moved = envelope::rewrap(kms, &context, &sealed, to)
            .await
            .map_err(kms_error)?;
        let mut tx = app.db.pool.begin().await?;
        sqlx::query("UPDATE credentials SET key_id = $1, wrapped_key = $2 WHERE resource = $3 AND version = $4 AND key_id = $5")
            .bind(&moved.key_id)
            .bind(B64.encode(&moved.wrapped_key))
            .bind(&resource)
            .bind(version)
            .bind(&sealed.key_id)
            .execute(&mut *tx)
            .await?;
        app.audit(&ApiEvent::CredentialChange {
            actor,
            resource: &resource,
            version,
            kms_key: to,
            change: CredentialChange::Rewrap {
                from_key: &sealed.key_id,
            },
        })
        .await?;
        tx.commit().await?;
        done += 1;
    }
    Ok(done)
}

/// The gateway a connection's client certificate proved, and its key.
#[derive(Debug, Clone)]
pub struct GatewayPeer {
    pub name: String,
    /// The certificate's Ed25519 key; `None` for another algorithm.
    pub key: Option<[u8; 32]>,
}

/// The gateway on the TLS connection, checked before the body is read.
pub(crate) fn require_gateway<'a>(
    peer: Option<&'a GatewayPeer>,
    what: &str,
) -> Result<&'a GatewayPeer, ApiError> {
    peer.ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::GatewayCertificateRequired,
            format!("only a gateway can {what}: present the gateway's certificate (a user session alone never suffices)"),
        )
    })
}

/// A connection the API has authorized: the gateway that asked, the user's live,
/// device-bound session, and the user's signed authorization for this one connection.
#[derive(Debug)]
pub struct Authorized {
    /// This connection's id, chosen here. (The client's `authorization.connection` is
    /// only a hint, recorded as `client_connection`: it carries the node's socket cookie,
    /// the join key to kernel events, but a client could name anything.)
    pub connection: String,
    pub gateway: String,
    pub session: crate::auth::LiveSession,
    pub authorization: UnlockAuthorization,
    /// When the grant it rests on ends (`None`: never).
    pub grant_expires_at: Option<i64>,
}

impl Authorized {
    /// What names this connection in its audit events.
    pub fn fields<'a>(&'a self, resource: &'a str) -> ConnectionFields<'a> {
        ConnectionFields {
            connection: &self.connection,
            client_connection: &self.authorization.connection,
            sock_cookie: self.authorization.connection.sock_cookie(),
            session: &self.session.id,
            user: &self.session.user,
            device: &self.session.device,
            resource,
            gateway: &self.gateway,
        }
    }
}

/// Checks everything that lets a gateway act for a user on one connection to `resource`
/// (shared by `POST /v1/connections/authorize` and `POST /v1/credentials/unlock`):
/// 1. the gateway: a valid certificate (checked at the handshake), still enrolled, and the
///    request signed with that certificate's key;
/// 2. the user's authorization for this connection: signed by a live session's key, bound
///    to its device, fresh, for this gateway and resource, never used before;
/// 3. an unexpired grant of the resource to the user or one of their groups.
pub async fn authorize(
    app: &App,
    peer: Option<&GatewayPeer>,
    signed: (&Method, &Uri, &HeaderMap, &[u8]),
    resource: &str,
    authorization: Option<&UnlockAuthorization>,
    authorization_signature: Option<&str>,
) -> Result<Authorized, ApiError> {
    let (method, uri, headers, body) = signed;
    let gw = require_gateway(peer, "act for a user")?;
    crate::gateways::require_active(app, gw).await?;
    let key = gw
        .key
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| {
            ApiError::forbidden(
                ErrorCode::GatewayKeyUnsupported,
                "the gateway's certificate key is not Ed25519; enroll it again with an Ed25519 key",
            )
        })?;
    let sigs = parse_signatures(method, uri, headers, body)?;
    let sig = sigs.iter().find(|s| s.label == "gateway").ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::SignatureMissing,
            "an unlock must be signed by the gateway's key with the label `gateway`",
        )
    })?;
    if sig.keyid != gw.name {
        return Err(ApiError::unauthorized(
            ErrorCode::BadSignature,
            "the gateway signature's keyid is not the certificate's gateway",
        ));
    }
    sig.verify(&key).map_err(sig_error)?;
    check_fresh(app, sig)?;
    let t = app.clock.now();
    let window = secs(app.config.signature_window);
    if !spend_nonce(
        app,
        &format!("gateway:{}", gw.name),
        &sig.nonce,
        sig.created,
    )
    .await?
    {
        return Err(ApiError::unauthorized(
            ErrorCode::ReplayedNonce,
            "this gateway request was already made (its nonce is spent)",
        ));
    }

    // 2. The user's authorization for this connection.
    let (Some(authz), Some(authz_sig)) = (authorization, authorization_signature) else {
        return Err(ApiError::unauthorized(
            ErrorCode::AuthorizationMissing,
            "an unlock needs the user's per-connection authorization, signed by their session key: a gateway alone never suffices",
        ));
    };
    if authz.gateway.as_str() != gw.name {
        return Err(ApiError::forbidden(
            ErrorCode::AuthorizationOtherGateway,
            format!(
                "the authorization is for gateway `{}`, not `{}`",
                authz.gateway, gw.name
            ),
        ));
    }
    if authz.resource != resource {
        return Err(ApiError::forbidden(
            ErrorCode::AuthorizationOtherResource,
            format!(
                "the authorization is for resource `{}`, not `{}`",
                authz.resource, resource
            ),
        ));
    }
    if (authz.created - t).abs() > window {
        return Err(ApiError::unauthorized(
            ErrorCode::StaleAuthorization,
            format!(
                "the authorization was made at {} and the server's clock says {t}: more than {window}s apart",
                authz.created
            ),
        ));
    }
    if authz.nonce.len() < 16
        || authz.nonce.len() > 128
        || authz.connection.as_str().is_empty()
        || authz.connection.as_str().len() > 128
    {
        return Err(ApiError::bad_request(
            ErrorCode::BadAuthorization,
            "the authorization's nonce must be 16-128 characters and its connection 1-128",
        ));
    }
    let session = live_session(app, &authz.session).await?;
    let signature = B64
        .decode(authz_sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let signed = signature.is_some_and(|s| {
        session.session_key().is_ok_and(|k| {
            k.verify_strict(&unlock_authorization_message(authz), &s)
                .is_ok()
        })
    });
    if !signed {
        return Err(ApiError::unauthorized(
            ErrorCode::BadAuthorizationSignature,
            "the authorization is not signed by the session's key",
        ));
    }
    if !spend_nonce(
        app,
        &format!("authz:{}", session.id),
        &authz.nonce,
        authz.created,
    )
    .await?
    {
        return Err(ApiError::unauthorized(
            ErrorCode::ReplayedAuthorization,
            "this authorization was already used: each connection needs its own",
        ));
    }
    // The session key signed this device id: a mismatch is its holder's own doing.
    if authz.device.as_str() != session.device {
        return Err(session.presented_elsewhere(app, &authz.device).await);
    }
    session.check_standing()?;

    // 3. The grant.
    let grants = sqlx::query(
        "SELECT g.expires_at FROM grants g WHERE g.resource = $1 AND \
         ((g.subject_kind = 'user' AND g.subject = $2) OR \
          (g.subject_kind = 'group' AND g.subject IN (SELECT group_name FROM group_members WHERE user_name = $2)))",
    )
    .bind(resource)
    .bind(&session.user)
    .fetch_all(&app.db.pool)
    .await?;
    let expiries: Vec<Option<i64>> = grants
        .iter()
        .map(|r| r.try_get("expires_at"))
        .collect::<Result<_, _>>()?;
    if !expiries.iter().any(|e| e.is_none_or(|e| e > t)) {
        return Err(if expiries.is_empty() {
            ApiError::forbidden(
                ErrorCode::NoGrant,
                format!("user `{}` has no grant for `{}`", session.user, resource),
            )
        } else {
            ApiError::forbidden(
                ErrorCode::GrantExpired,
                format!(
                    "user `{}`'s grant for `{}` has expired",
                    session.user, resource
                ),
            )
        });
    }

    // The latest end among the grants in force (none: one never ends).
    let grant_expires_at = if expiries.iter().any(Option::is_none) {
        None
    } else {
        expiries.iter().flatten().copied().filter(|e| *e > t).max()
    };
    Ok(Authorized {
        connection: crate::auth::new_id("conn")?,
        gateway: gw.name.clone(),
        session,
        authorization: authz.clone(),
        grant_expires_at,
    })
}

/// `POST /v1/credentials/unlock`.
pub async fn unlock(
    app: &App,
    peer: Option<&GatewayPeer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Unlocked, ApiError> {
    require_gateway(peer, "unlock a credential")?;
    let req: UnlockRequest = crate::error::json(body)?;
    let authorized = authorize(
        app,
        peer,
        (method, uri, headers, body),
        &req.resource,
        req.authorization.as_ref(),
        req.authorization_signature.as_deref(),
    )
    .await?;
    release(
        app,
        &authorized,
        &req.resource,
        &req.recipient,
        req.ssh_public_key.as_deref(),
    )
    .await
}

/// Releases `resource`'s credential for an authorized connection: the newest stored
/// version sealed to `recipient`, or a fresh SSH certificate for `ssh_public_key`.
/// `credential.decrypt` is recorded before anything is released; no record, no release.
async fn release(
    app: &App,
    authorized: &Authorized,
    resource_name: &str,
    recipient: &str,
    ssh_public_key: Option<&str>,
) -> Result<Unlocked, ApiError> {
    let session = &authorized.session;
    let resource = sqlx::query("SELECT credential, ssh_principals FROM resources WHERE name = $1")
        .bind(resource_name)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::NoSuchResource,
                format!("there is no resource `{resource_name}`"),
            )
        })?;
    let recipient: age::x25519::Recipient = recipient.parse().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadRecipient,
            "recipient must be an age X25519 recipient (age1…)",
        )
    })?;
    let kind_name = |kind: CredentialKind| stored_name(&kind);
    let declared: Option<String> = resource.try_get("credential")?;
    let Some(declared) = declared else {
        return Err(ApiError::not_found(
            ErrorCode::NoCredential,
            format!(
                "resource `{resource_name}` declares no credential (set `credential` on the resource)"
            ),
        ));
    };
    if declared == "ssh-certificate" {
        let principals: Vec<String> =
            serde_json::from_str(&resource.try_get::<String, _>("ssh_principals")?)
                .map_err(ApiError::internal)?;
        let key_text = ssh_public_key.ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::SshPublicKeyMissing,
                "an ssh-certificate resource needs the gateway's per-connection ssh_public_key",
            )
        })?;
        let key = ssh_key::PublicKey::from_openssh(key_text).map_err(|_| {
            ApiError::bad_request(
                ErrorCode::BadSshPublicKey,
                "ssh_public_key is not an OpenSSH public key line",
            )
        })?;
        let certificate = app
            .pki
            .ssh_user_certificate(
                &key,
                &principals,
                &format!(
                    "{}@{}/{}",
                    session.user, resource_name, authorized.connection
                ),
                app.clock.now() + secs(app.config.ssh_certificate_ttl),
            )
            .map_err(|e| ApiError::internal(lastmile_audit_sink::error_chain(&e)))?;
        app.audit(&ApiEvent::CredentialDecrypt {
            connection: authorized.fields(resource_name),
            version: 0,
            credential_kind: &kind_name(CredentialKind::SshCertificate),
        })
        .await?;
        return Ok(Unlocked {
            resource: resource_name.to_owned(),
            kind: CredentialKind::SshCertificate,
            version: 0,
            sealed: None,
            ssh_certificate: Some(certificate),
        });
    }
    let row = sqlx::query(
        "SELECT version, kind, key_id, wrapped_key, nonce, ciphertext FROM credentials WHERE resource = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(resource_name)
    .fetch_optional(&app.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(ErrorCode::NoCredential, format!("no credential is stored for `{resource_name}` (`lastmile-api credentials set {resource_name}`)")))?;
    let version: i64 = row.try_get("version")?;
    let kind = stored("kind", row.try_get("kind")?)?;
    if stored_name(&kind) != declared {
        return Err(ApiError::conflict(
            ErrorCode::CredentialKindMismatch,
            format!(
                "resource `{resource_name}` declares a {declared} but the stored credential is a {}: store one of the declared kind",
                stored_name(&kind)
            ),
        ));
    }
    let context = Context::credential(&app.pki.organisation, resource_name, version);
    let secret = envelope::open(&app.kms, &context, &sealed_of(&row)?)
        .await
        .map_err(kms_error)?;
    let sealed = seal_to(&recipient, &secret)?;
    drop(secret);
    // Recorded before anything is released; no record, no release.
    app.audit(&ApiEvent::CredentialDecrypt {
        connection: authorized.fields(resource_name),
        version,
        credential_kind: &kind_name(kind),
    })
    .await?;
    Ok(Unlocked {
        resource: resource_name.to_owned(),
        kind,
        version,
        sealed: Some(B64.encode(sealed)),
        ssh_certificate: None,
    })
}

fn seal_to(recipient: &age::x25519::Recipient, secret: &[u8]) -> Result<Vec<u8>, ApiError> {
    let fail = |e: &dyn std::fmt::Display| ApiError::internal(format!("age: {e}"));
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| fail(&e))?;
    let mut out = Vec::with_capacity(secret.len() + 256);
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| fail(&e))?;
    w.write_all(secret).map_err(|e| fail(&e))?;
    w.finish().map_err(|e| fail(&e))?;
    Ok(out)
}

/// `POST /v1/connections/authorize`: may this gateway open `resource` for the user whose
/// authorization it carries? The `connection.open` audit event is written before the
/// answer; no record, no connection.
pub async fn authorize_connection(
    app: &App,
    peer: Option<&GatewayPeer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<lastmile_proto::wire::ConnectionAuthorized, ApiError> {
    require_gateway(peer, "open a connection")?;
    let req: lastmile_proto::wire::ConnectionRequest = crate::error::json(body)?;
    // Read before the session is checked: a revocation after the check is after this.
    let revocations_after = app.revocations.last();
    let a = authorize(
        app,
        peer,
        (method, uri, headers, body),
        &req.resource,
        req.authorization.as_ref(),
        req.authorization_signature.as_deref(),
    )
    .await?;
    let resource = crate::admin::resource(app, &req.resource).await?;
    app.audit(&ApiEvent::ConnectionOpen {
        connection: a.fields(&req.resource),
    })
    .await?;
    // The same authorization covers the credential: a handler that logs in upstream
    // asks for both in one call (one nonce, one round trip).
    let logs_in = resource.kind != lastmile_proto::wire::ResourceKind::Tcp;
    let credential = match &req.recipient {
        Some(recipient) if logs_in && resource.credential.is_some() => Some(
            release(
                app,
                &a,
                &req.resource,
                recipient,
                req.ssh_public_key.as_deref(),
            )
            .await?,
        ),
        _ => None,
    };
    Ok(lastmile_proto::wire::ConnectionAuthorized {
        resource,
        // Names in the database were checked when they were made.
        user: lastmile_proto::wire::UserName::parse(a.session.user.clone())
            .map_err(ApiError::internal)?,
        session: a.session.id.clone().into(),
        device: a.session.device.clone().into(),
        session_expires_at: a.session.expires_at,
        grant_expires_at: a.grant_expires_at,
        credential,
        revocations_after: Some(revocations_after),
        connection: a.connection.clone().into(),
    })
}

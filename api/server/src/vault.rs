//! Stored credentials: kept sealed, re-wrapped, and released to an authorized connection.
//!
//! A credential is sealed with a data key from the KMS under the encryption context
//! (organisation, resource, version); only the wrapped data key is stored beside it.
//! It is unlocked only for a gateway with a valid identity (client certificate, and the
//! request signed with that certificate's key) that carries a fresh, unused authorization
//! signed by a live user session, bound to its device, whose user holds an unexpired
//! grant for the resource: neither alone suffices. The decryption is recorded in the
//! audit log before anything is released, and the secret leaves only sealed (age X25519)
//! to the recipient the gateway named for this one unlock.

use std::io::Write as _;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use lastmile_proto::wire::{CredentialInfo, CredentialKind, ErrorCode, Unlocked};
use lastmile_vault::{Context, KmsError, Sealed, envelope};
use sqlx::Row as _;
use zeroize::Zeroizing;

use crate::{
    admin::{stored, stored_name},
    app::App,
    config::secs,
    connections::Authorized,
    error::ApiError,
    events::{ApiEvent, CredentialChange},
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
    let mut tx = app.db.begin().await?;
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
        let mut tx = app.db.begin().await?;
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

/// Releases `resource`'s credential for an authorized connection: the newest stored
/// version sealed to `recipient`, or a fresh SSH certificate for `ssh_public_key`.
/// `credential.decrypt` is recorded before anything is released; no record, no release.
pub(crate) async fn release(
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

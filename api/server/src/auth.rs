//! Sessions, and the check every signed call goes through (the login that makes a
//! session is in [`crate::login`]).
//!
//! Every later call carries two RFC 9421 signatures, by the device key and by the session
//! key, over the method, the target URI and the RFC 9530 content digest, with a created
//! time and a nonce. [`authenticate`] refuses each failure with its own code.

use lastmile_proto::wire::ErrorCode;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, Uri};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::VerifyingKey;
use lastmile_audit_sink::error_chain;
use lastmile_proto::{httpsig, wire};
use sha2::Digest as _;
use sqlx::Row as _;

use crate::{app::App, config::secs, error::ApiError, events::ApiEvent, pki::random};

/// Who made a signed call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    pub session: String,
    pub device: String,
    pub session_expires_at: i64,
}

pub(crate) fn key32(text: &str, what: &str) -> Result<[u8; 32], ApiError> {
    B64.decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::BadKey,
                format!("{what} must be a 32-byte Ed25519 public key in standard base64"),
            )
        })
}

pub(crate) fn verifying_key(raw: [u8; 32], what: &str) -> Result<VerifyingKey, ApiError> {
    VerifyingKey::from_bytes(&raw).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadKey,
            format!("{what} is not a valid Ed25519 point"),
        )
    })
}

/// A device's id: derived from its key, so the same key always names the same device.
pub fn device_id(public_key: &[u8; 32]) -> String {
    let h = sha2::Sha256::digest(public_key);
    let hex: String = h.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("dev_{hex}")
}

pub(crate) fn new_id(prefix: &str) -> Result<String, ApiError> {
    let r = random::<16>().map_err(ApiError::internal)?;
    Ok(format!(
        "{prefix}_{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Revokes a session (once: a second call finds nothing to do), records why, and wakes
/// the revocation stream. Returns the revocation, or `None` if it was already revoked or
/// does not exist.
pub async fn revoke_session(
    app: &App,
    session: &str,
    reason: &str,
    actor: &str,
) -> Result<Option<wire::Revocation>, ApiError> {
    let t = app.clock.now();
    let mut tx = app.db.begin().await?;
    let row = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL \
         RETURNING user_name, device_id",
    )
    .bind(t)
    .bind(reason)
    .bind(session)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let user: String = row.try_get("user_name")?;
    let device: String = row.try_get("device_id")?;
    let seq = crate::revocation::append(
        &mut tx,
        app.db.backend,
        &crate::revocation::New {
            session,
            user: &user,
            device: &device,
            reason,
            at: t,
            resource: None,
        },
    )
    .await?;
    app.audit(&ApiEvent::SessionRevoke {
        session,
        user: &user,
        device: &device,
        reason,
        actor,
    })
    .await?;
    tx.commit().await?;
    app.revocations.nudge();
    tracing::info!(session, reason, actor, "session revoked");
    Ok(Some(wire::Revocation {
        seq,
        session: session.into(),
        user: wire::UserName::parse(user).map_err(ApiError::internal)?,
        device: device.into(),
        reason: reason.to_owned(),
        at: t,
        resource: None,
    }))
}

pub fn sig_error(e: httpsig::SigError) -> ApiError {
    ApiError::unauthorized(e.code(), e.to_string())
}

/// Parses a request's RFC 9421 signatures (checking its Content-Digest), its target URI
/// being `https://` + Host + path and query as the client addressed it.
pub fn parse_signatures(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<httpsig::Signature>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::NoHost,
            "the request has no Host header, so its target URI cannot be checked",
        )
    })?;
    let target = format!(
        "https://{host}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    httpsig::parse(&httpsig::Request {
        method: method.as_str(),
        target_uri: &target,
        body,
        content_digest: header("content-digest"),
        signature_input: header("signature-input"),
        signature: header("signature"),
    })
    .map_err(sig_error)
}

/// Refuses a signature created too far from the server's clock, past its `expires`, or
/// with a nonce too short to be unique or too long to store.
pub fn check_fresh(app: &App, sig: &httpsig::Signature) -> Result<(), ApiError> {
    let t = app.clock.now();
    let window = secs(app.config.signature_window);
    let skew = sig.created.saturating_sub(t);
    if skew.abs() > window {
        let (by, way) = (
            skew.unsigned_abs(),
            if skew > 0 { "ahead of" } else { "behind" },
        );
        return Err(ApiError::unauthorized(
            ErrorCode::StaleSignature,
            format!(
                "the clocks differ by {by} s: the `{}` signature says {} and the API's clock {t}, so this machine's clock is {by} s {way} the API's (at most {window} s is accepted). Set this machine's clock (NTP), or replay no old request",
                sig.label, sig.created
            ),
        ));
    }
    if let Some(expires) = sig.expires
        && expires <= t
    {
        return Err(ApiError::unauthorized(
            ErrorCode::StaleSignature,
            format!(
                "the `{}` signature expired at {expires} (server time {t})",
                sig.label
            ),
        ));
    }
    if sig.nonce.len() < 16 || sig.nonce.len() > 128 {
        return Err(ApiError::unauthorized(
            ErrorCode::BadSignatureFormat,
            "the nonce must be 16-128 characters",
        ));
    }
    Ok(())
}

/// Checks a signed call and says who made it.
pub async fn authenticate(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, ApiError> {
    let signatures = parse_signatures(method, uri, headers, body)?;
    let find = |label: &str| {
        signatures.iter().find(|s| s.label == label).ok_or_else(|| {
            ApiError::unauthorized(
                ErrorCode::SignatureMissing,
                format!(
                    "the call needs two signatures, `device` and `session`; `{label}` is missing"
                ),
            )
        })
    };
    let device_sig = find(httpsig::LABEL_DEVICE)?;
    let session_sig = find(httpsig::LABEL_SESSION)?;
    if device_sig.created != session_sig.created || device_sig.nonce != session_sig.nonce {
        return Err(ApiError::unauthorized(
            ErrorCode::BadSignatureFormat,
            "the device and session signatures must carry the same created time and nonce",
        ));
    }
    check_fresh(app, session_sig)?;
    check_fresh(app, device_sig)?;

    let session = live_session(app, &session_sig.keyid).await?;
    session_sig
        .verify(&session.session_key()?)
        .map_err(sig_error)?;
    // Spends the request's nonce; a nonce already spent is a replay.
    let spend = || async {
        if spend_nonce(
            app,
            &session_sig.keyid,
            &session_sig.nonce,
            session_sig.created,
        )
        .await?
        {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                ErrorCode::ReplayedNonce,
                "this nonce was already used: the request is a replay (sign every request with a new nonce)",
            ))
        }
    };
    if device_sig.keyid != session.device {
        // The session signature does not cover the device signature's keyid, so a keyid
        // changed on a captured request proves nothing. Only a signature by another
        // registered device's own key, on a request not seen before, shows the session
        // key in use elsewhere; that, and only that, revokes the session.
        let key = registered_device_key(app, &device_sig.keyid).await?;
        if key.is_none_or(|k| device_sig.verify(&k).is_err()) {
            return Err(ApiError::unauthorized(
                ErrorCode::BadSignature,
                format!(
                    "the `device` signature does not verify with the key of device `{}`",
                    device_sig.keyid
                ),
            ));
        }
        spend().await?;
        return Err(session.presented_elsewhere(app, &device_sig.keyid).await);
    }
    device_sig
        .verify(&session.device_key()?)
        .map_err(sig_error)?;
    // Only a call whose signatures both verify spends its nonce.
    spend().await?;
    session.check_standing()?;
    Ok(Caller {
        admin: session.admin,
        user: session.user,
        session: session_sig.keyid.clone(),
        device: session.device,
        session_expires_at: session.expires_at,
    })
}

/// Records `nonce` for `key_id`; false when it was already used. A nonce is kept until a
/// signature created at `created` could no longer pass the time check.
pub async fn spend_nonce(
    app: &App,
    key_id: &str,
    nonce: &str,
    created: i64,
) -> Result<bool, ApiError> {
    let window = secs(app.config.signature_window);
    Ok(sqlx::query(
        "INSERT INTO nonces (key_id, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(key_id)
    .bind(nonce)
    .bind(created + window + 1)
    .execute(&app.db.pool)
    .await?
    .rows_affected()
        == 1)
}

/// A session that exists, is not revoked and has not expired, with its user and device.
#[derive(Debug)]
pub struct LiveSession {
    pub id: String,
    pub user: String,
    pub device: String,
    pub admin: bool,
    pub expires_at: i64,
    session_key: String,
    device_key: String,
    device_status: String,
    user_disabled: bool,
}

impl LiveSession {
    pub fn session_key(&self) -> Result<VerifyingKey, ApiError> {
        verifying_key(key32(&self.session_key, "session key")?, "session key")
    }

    pub fn device_key(&self) -> Result<VerifyingKey, ApiError> {
        verifying_key(key32(&self.device_key, "device key")?, "device key")
    }

    /// Call only once the session key's signature has verified and the request's nonce
    /// is spent: this session was presented from device `presented`, not its own, so its
    /// key was copied. It is revoked (and the revocation published); the error to answer
    /// with is returned.
    pub async fn presented_elsewhere(&self, app: &App, presented: &str) -> ApiError {
        if let Err(e) = revoke_session(
            app,
            &self.id,
            &format!("presented from another device ({presented})"),
            "api",
        )
        .await
        {
            return e;
        }
        ApiError::unauthorized(
            ErrorCode::SessionDeviceMismatch,
            "this session belongs to another device; it has been revoked. Run `lastmile login` on this device",
        )
    }

    /// The session's device must be trusted and its user enabled.
    pub fn check_standing(&self) -> Result<(), ApiError> {
        if self.device_status != "trusted" {
            return Err(ApiError::forbidden(
                ErrorCode::DeviceNotTrusted,
                format!("device {} is {}", self.device, self.device_status),
            ));
        }
        if self.user_disabled {
            return Err(ApiError::forbidden(
                ErrorCode::UserDisabled,
                "this user is disabled; ask an admin",
            ));
        }
        Ok(())
    }
}

/// The public key of registered device `id`, if there is one.
async fn registered_device_key(app: &App, id: &str) -> Result<Option<VerifyingKey>, ApiError> {
    let row = sqlx::query("SELECT public_key FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get("public_key")?;
    Ok(Some(verifying_key(
        key32(&text, "device key")?,
        "device key",
    )?))
}

/// Loads a session, refusing one that is unknown, revoked or expired.
pub async fn live_session(app: &App, id: &str) -> Result<LiveSession, ApiError> {
    let row = sqlx::query(
        "SELECT s.user_name, s.device_id, s.public_key, s.expires_at, s.revoked_at, s.revoke_reason, \
         u.admin, u.disabled, d.public_key AS device_key, d.status AS device_status \
         FROM sessions s JOIN users u ON u.name = s.user_name JOIN devices d ON d.id = s.device_id \
         WHERE s.id = $1",
    )
    .bind(id)
    .fetch_optional(&app.db.pool)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::unauthorized(
            ErrorCode::UnknownSession,
            "no such session: run `lastmile login`",
        ));
    };
    if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
        let reason: Option<String> = row.try_get("revoke_reason")?;
        return Err(ApiError::unauthorized(
            ErrorCode::SessionRevoked,
            format!(
                "this session was revoked ({}): run `lastmile login`",
                reason.unwrap_or_default()
            ),
        ));
    }
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= app.clock.now() {
        return Err(ApiError::unauthorized(
            ErrorCode::SessionExpired,
            "this session has expired: run `lastmile login`",
        ));
    }
    Ok(LiveSession {
        id: id.to_owned(),
        user: row.try_get("user_name")?,
        device: row.try_get("device_id")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        expires_at,
        session_key: row.try_get("public_key")?,
        device_key: row.try_get("device_key")?,
        device_status: row.try_get("device_status")?,
        user_disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

/// Forgets nonces that can no longer pass the time check, every minute.
pub async fn prune_nonces(app: Arc<App>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("DELETE FROM nonces WHERE expires_at < $1")
            .bind(app.clock.now())
            .execute(&app.db.pool)
            .await
        {
            tracing::warn!(error = %e, "pruning nonces failed");
        }
    }
}

/// `POST /v1/session/refresh`: a new certificate for the caller's session key.
pub async fn refresh(app: &App, caller: &Caller) -> Result<wire::Refreshed, ApiError> {
    let key: String = sqlx::query("SELECT public_key FROM sessions WHERE id = $1")
        .bind(&caller.session)
        .fetch_one(&app.db.pool)
        .await?
        .try_get("public_key")?;
    let raw = key32(&key, "session key")?;
    let expires =
        (app.clock.now() + secs(app.config.certificate_ttl)).min(caller.session_expires_at);
    let certificate = app
        .pki
        .session_certificate(&caller.user, &caller.session, &caller.device, raw, expires)
        .map_err(|e| ApiError::internal(error_chain(&e)))?;
    Ok(wire::Refreshed {
        certificate,
        certificate_expires_at: expires,
    })
}

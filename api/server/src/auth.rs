//! Login, sessions, and the check every signed call goes through.
//!
//! A login proves three things at once: the password (argon2id), the TOTP code when the
//! user has one, and possession of the device key (its signature over a fresh single-use
//! challenge, the user, the new session key and the machine fingerprint). The session
//! key is made by the client; the API binds it to user and device and certifies it.
//!
//! Every later call carries two RFC 9421 signatures, by the device key and by the session
//! key, over the method, the target URI and the RFC 9530 content digest, with a created
//! time and a nonce. [`authenticate`] refuses each failure with its own code.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, VerifyingKey};
use lastmile_audit_sink::error_chain;
use lastmile_proto::{
    httpsig,
    wire::{self, LoginRequest, LoginResponse},
};
use serde_json::json;
use sha2::Digest as _;
use sqlx::Row as _;

use crate::{app::App, config::secs, db::now, error::ApiError, pki::random, secret};

/// Who made a signed call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    pub session: String,
    pub device: String,
    pub session_expires_at: i64,
}

fn key32(text: &str, what: &str) -> Result<[u8; 32], ApiError> {
    B64.decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_key",
                format!("{what} must be a 32-byte Ed25519 public key in standard base64"),
            )
        })
}

fn verifying_key(raw: [u8; 32], what: &str) -> Result<VerifyingKey, ApiError> {
    VerifyingKey::from_bytes(&raw).map_err(|_| {
        ApiError::bad_request("bad_key", format!("{what} is not a valid Ed25519 point"))
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

/// `POST /v1/login/challenge`. A challenge is issued for any well-formed request, so
/// its answer says nothing about which user names exist.
pub async fn challenge(
    app: &App,
    req: wire::ChallengeRequest,
) -> Result<wire::Challenge, ApiError> {
    if !wire::valid_name(&req.user) {
        return Err(ApiError::bad_request(
            "bad_user",
            "user names are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        ));
    }
    key32(&req.device_key, "device_key")?;
    let t = now();
    let challenge = B64.encode(random::<32>().map_err(ApiError::internal)?);
    let expires_at = t + 60;
    sqlx::query("DELETE FROM challenges WHERE expires_at < $1")
        .bind(t)
        .execute(&app.db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO challenges (challenge, user_name, device_key, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&challenge)
    .bind(&req.user)
    .bind(&req.device_key)
    .bind(expires_at)
    .execute(&app.db.pool)
    .await?;
    Ok(wire::Challenge {
        challenge,
        expires_at,
    })
}

struct UserRow {
    password_hash: String,
    one_time: bool,
    totp_secret: Option<TotpSeed>,
    totp_last_step: i64,
    disabled: bool,
    locked_until: i64,
}

enum TotpSeed {
    Sealed(String),
    Clear(String),
}

impl TotpSeed {
    async fn open(&self, app: &App, user: &str) -> Result<zeroize::Zeroizing<String>, ApiError> {
        match self {
            Self::Clear(s) => Ok(zeroize::Zeroizing::new(s.clone())),
            Self::Sealed(s) => secret::open_totp(&app.kms, &app.pki.organisation, user, s)
                .await
                .map_err(crate::vault::kms_error),
        }
    }
}

async fn user_row(app: &App, name: &str) -> Result<Option<UserRow>, ApiError> {
    let row = sqlx::query(
        "SELECT password_hash, password_one_time, totp_secret, totp_sealed, totp_last_step, \
         disabled, locked_until FROM users WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&app.db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(UserRow {
        password_hash: r.try_get("password_hash")?,
        one_time: r.try_get::<i64, _>("password_one_time")? != 0,
        totp_secret: match r.try_get::<Option<String>, _>("totp_sealed")? {
            Some(sealed) => Some(TotpSeed::Sealed(sealed)),
            // Stored before seeds were sealed, and not sealed at start yet.
            None => r
                .try_get::<Option<String>, _>("totp_secret")?
                .map(TotpSeed::Clear),
        },
        totp_last_step: r.try_get("totp_last_step")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        locked_until: r.try_get("locked_until")?,
    }))
}

/// A refused login, audited (and counted against the user when it is a wrong secret).
async fn refuse_login(app: &App, user: &str, counted: bool, err: ApiError) -> ApiError {
    if counted {
        let t = now();
        let lock_at = app.config.max_failed_logins;
        let lock_until = t + secs(app.config.lockout);
        let r = sqlx::query(
            "UPDATE users SET failed_logins = failed_logins + 1, \
             locked_until = CASE WHEN failed_logins + 1 >= $1 THEN $2 ELSE locked_until END \
             WHERE name = $3",
        )
        .bind(lock_at)
        .bind(lock_until)
        .bind(user)
        .execute(&app.db.pool)
        .await;
        if let Err(e) = r {
            return ApiError::from(e);
        }
    }
    if let Err(e) = app
        .audit("login.failed", json!({"user": user, "reason": err.code}))
        .await
    {
        return e;
    }
    err
}

async fn argon2_verify(password: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || secret::verify_password(&password, &hash))
        .await
        .map_err(ApiError::internal)
}

/// A real argon2id hash of a random password, verified when the user does not exist so
/// that a wrong user name takes as long as a wrong password.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let random = random::<16>().map(|r| B64.encode(r)).unwrap_or_default();
            secret::hash_password(&random).unwrap_or_default()
        })
        .clone()
}

/// Seconds a client refused for [`too_many_logins`] waits: about one argon2id hash.
const LOGIN_RETRY_AFTER: u64 = 1;

fn too_many_logins() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_logins",
        format!(
            "the API is checking as many logins as it allows at once; send the same request again in {LOGIN_RETRY_AFTER}s"
        ),
    )
    .retry_after(LOGIN_RETRY_AFTER)
}

fn totp_replayed() -> ApiError {
    ApiError::unauthorized(
        "totp_replayed",
        "this TOTP code was already used: wait for the next one",
    )
}

/// `POST /v1/login`.
pub async fn login(app: &App, req: LoginRequest) -> Result<LoginResponse, ApiError> {
    // Before anything else, so a refused login leaves its challenge unspent for the retry.
    let _permit = app.logins.try_acquire().map_err(|_| too_many_logins())?;
    let t = now();
    // The challenge is single use: consumed before anything else is checked.
    let consumed = sqlx::query(
        "DELETE FROM challenges WHERE challenge = $1 AND user_name = $2 AND device_key = $3 AND expires_at >= $4",
    )
    .bind(&req.challenge)
    .bind(&req.user)
    .bind(&req.device.public_key)
    .bind(t)
    .execute(&app.db.pool)
    .await?
    .rows_affected();
    if consumed != 1 {
        return Err(ApiError::unauthorized(
            "bad_challenge",
            "the login challenge is unknown, expired, already used, or was issued for another user or device key: ask for a new one",
        ));
    }
    let wrong = || ApiError::unauthorized("bad_credentials", "wrong user name or password");
    let Some(user) = user_row(app, &req.user).await? else {
        let password = req.password.clone();
        // The dummy hash is made on first use; off the async threads, like every hash.
        tokio::task::spawn_blocking(move || secret::verify_password(&password, &dummy_hash()))
            .await
            .map_err(ApiError::internal)?;
        return Err(refuse_login(app, &req.user, false, wrong()).await);
    };
    if user.disabled {
        return Err(refuse_login(
            app,
            &req.user,
            false,
            ApiError::forbidden("user_disabled", "this user is disabled; ask an admin"),
        )
        .await);
    }
    if user.locked_until > t {
        return Err(refuse_login(
            app,
            &req.user,
            false,
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "user_locked",
                format!(
                    "too many failed logins; this user is locked for {} more seconds",
                    user.locked_until - t
                ),
            ),
        )
        .await);
    }
    if !argon2_verify(req.password.clone(), user.password_hash.clone()).await? {
        return Err(refuse_login(app, &req.user, true, wrong()).await);
    }
    let mut totp_step = None;
    if let Some(secret) = &user.totp_secret {
        let Some(code) = &req.totp else {
            return Err(refuse_login(
                app,
                &req.user,
                false,
                ApiError::unauthorized(
                    "totp_required",
                    "this user has TOTP: send the current code as `totp`",
                ),
            )
            .await);
        };
        let secret = secret.open(app, &req.user).await?;
        match secret::totp_step_matching(&secret, code, t) {
            None => {
                return Err(refuse_login(
                    app,
                    &req.user,
                    true,
                    ApiError::unauthorized(
                        "totp_invalid",
                        "the TOTP code is wrong (check the device's clock)",
                    ),
                )
                .await);
            }
            Some(step) if step <= user.totp_last_step => {
                return Err(refuse_login(app, &req.user, true, totp_replayed()).await);
            }
            Some(step) => totp_step = Some(step),
        }
    }
    let new_hash = if user.one_time {
        let Some(new) = &req.new_password else {
            return Err(ApiError::forbidden(
                "password_change_required",
                "this is a one-time password: log in again with `new_password` set to the password you choose",
            ));
        };
        secret::acceptable_password(new)
            .map_err(|why| ApiError::bad_request("weak_password", why))?;
        if *new == req.password {
            return Err(ApiError::bad_request(
                "weak_password",
                "the new password must differ from the one-time password",
            ));
        }
        let new = new.clone();
        Some(
            tokio::task::spawn_blocking(move || secret::hash_password(&new))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?,
        )
    } else {
        None
    };

    // The device proof.
    let device_raw = key32(&req.device.public_key, "device.public_key")?;
    let device_key = verifying_key(device_raw, "device.public_key")?;
    let session_raw = key32(&req.session_key, "session_key")?;
    verifying_key(session_raw, "session_key")?;
    if session_raw == device_raw {
        return Err(ApiError::bad_request(
            "bad_key",
            "the session key must be a new key, not the device key",
        ));
    }
    if req.device.fingerprint.len() != 64
        || !req
            .device
            .fingerprint
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
    {
        return Err(ApiError::bad_request(
            "bad_fingerprint",
            "device.fingerprint must be 64 hex digits (SHA-256)",
        ));
    }
    let signature = B64
        .decode(&req.device.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let message = wire::login_proof_message(
        &req.user,
        &req.challenge,
        &req.session_key,
        &req.device.fingerprint,
    );
    if signature.is_none_or(|s| device_key.verify_strict(&message, &s).is_err()) {
        return Err(refuse_login(
            app,
            &req.user,
            false,
            ApiError::unauthorized(
                "bad_device_proof",
                "the device signature over the login challenge does not verify with device.public_key",
            ),
        )
        .await);
    }

    let device = device_id(&device_raw);
    let name = if req.device.name.trim().is_empty() || req.device.name.len() > 128 {
        device.clone()
    } else {
        req.device.name.trim().to_owned()
    };
    let known = sqlx::query("SELECT user_name, fingerprint, status FROM devices WHERE id = $1")
        .bind(&device)
        .fetch_optional(&app.db.pool)
        .await?;
    // Read before the transaction, so that its first statement is a write: on SQLite a
    // transaction that read first fails (SQLITE_BUSY_SNAPSHOT) instead of waiting when a
    // concurrent login commits before its write.
    let policy: String = sqlx::query("SELECT device_policy FROM org WHERE id = 1")
        .fetch_one(&app.db.pool)
        .await?
        .try_get("device_policy")?;
    let mut tx = app.db.pool.begin().await?;
    match known {
        Some(row) => {
            let owner: String = row.try_get("user_name")?;
            let fingerprint: String = row.try_get("fingerprint")?;
            let status: String = row.try_get("status")?;
            if owner != req.user {
                return Err(refuse_login(
                    app,
                    &req.user,
                    false,
                    ApiError::forbidden(
                        "device_other_user",
                        "this device key is registered to another user; each user makes their own",
                    ),
                )
                .await);
            }
            if fingerprint != req.device.fingerprint {
                return Err(refuse_login(app, &req.user, false, ApiError::forbidden(
                    "device_fingerprint_mismatch",
                    "this device key was registered on another machine: a copied device key is refused. Make a new device key on this machine",
                )).await);
            }
            match status.as_str() {
                "trusted" => {}
                "pending" => {
                    return Err(ApiError::forbidden(
                        "device_pending",
                        format!(
                            "device {device} is waiting for an admin's approval (`lastmile-api devices approve {device}`)"
                        ),
                    ));
                }
                _ => {
                    return Err(refuse_login(
                        app,
                        &req.user,
                        false,
                        ApiError::forbidden(
                            "device_revoked",
                            format!("device {device} was revoked; ask an admin"),
                        ),
                    )
                    .await);
                }
            }
            sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
                .bind(t)
                .bind(&device)
                .execute(&mut *tx)
                .await?;
        }
        None => {
            let status = if policy == "approval" {
                "pending"
            } else {
                "trusted"
            };
            sqlx::query(
                "INSERT INTO devices (id, user_name, public_key, fingerprint, name, status, created_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&device)
            .bind(&req.user)
            .bind(&req.device.public_key)
            .bind(&req.device.fingerprint)
            .bind(&name)
            .bind(status)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            app.audit(
                "device.register",
                json!({"user": req.user, "device": device, "fingerprint": req.device.fingerprint, "name": name, "status": status}),
            )
            .await?;
            if status == "pending" {
                tx.commit().await?;
                return Err(ApiError::forbidden(
                    "device_pending",
                    format!(
                        "device {device} is registered and waits for an admin's approval (`lastmile-api devices approve {device}`); log in again once approved"
                    ),
                ));
            }
        }
    }
    let session = new_id("ses")?;
    let session_expires_at = t + secs(app.config.session_ttl);
    let certificate_expires_at = (t + secs(app.config.certificate_ttl)).min(session_expires_at);
    let certificate = app
        .pki
        .session_certificate(
            &req.user,
            &session,
            &device,
            session_raw,
            certificate_expires_at,
        )
        .map_err(|e| ApiError::internal(error_chain(&e)))?;
    sqlx::query(
        "INSERT INTO sessions (id, user_name, device_id, public_key, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&session)
    .bind(&req.user)
    .bind(&device)
    .bind(&req.session_key)
    .bind(t)
    .bind(session_expires_at)
    .execute(&mut *tx)
    .await?;
    // The TOTP step is spent by compare-and-set: of two logins that read the same last
    // step and both passed the check above, only the first to get here changes the row.
    let spent = sqlx::query(if totp_step.is_some() {
        "UPDATE users SET failed_logins = 0, locked_until = 0, totp_last_step = $1, \
         password_hash = COALESCE($2, password_hash), \
         password_one_time = CASE WHEN $2 IS NULL THEN password_one_time ELSE 0 END \
         WHERE name = $3 AND totp_last_step < $1"
    } else {
        "UPDATE users SET failed_logins = 0, locked_until = 0, \
         totp_last_step = CASE WHEN $1 > totp_last_step THEN $1 ELSE totp_last_step END, \
         password_hash = COALESCE($2, password_hash), \
         password_one_time = CASE WHEN $2 IS NULL THEN password_one_time ELSE 0 END \
         WHERE name = $3"
    })
    .bind(totp_step.unwrap_or(0))
    .bind(new_hash)
    .bind(&req.user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if totp_step.is_some() && spent != 1 {
        // Nothing of this login stays; the transaction's lock is released before the
        // refusal is counted.
        tx.rollback().await?;
        return Err(refuse_login(app, &req.user, true, totp_replayed()).await);
    }
    app.audit(
        "login",
        json!({"user": req.user, "device": device, "session": session, "totp": totp_step.is_some(), "password_changed": user.one_time}),
    )
    .await?;
    app.audit(
        "session.create",
        json!({"user": req.user, "device": device, "session": session, "expires_at": session_expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok(LoginResponse {
        user: req.user,
        device,
        session,
        session_expires_at,
        certificate,
        certificate_expires_at,
        ca: app.pki.ca_pem().to_owned(),
    })
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
    let t = now();
    let mut tx = app.db.pool.begin().await?;
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
    app.audit(
        "session.revoke",
        json!({"session": session, "user": user, "device": device, "reason": reason, "actor": actor}),
    )
    .await?;
    tx.commit().await?;
    app.revocations.nudge();
    tracing::info!(session, reason, actor, "session revoked");
    Ok(Some(wire::Revocation {
        seq,
        session: session.to_owned(),
        user,
        device,
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
            "no_host",
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
    let t = now();
    let window = secs(app.config.signature_window);
    if (sig.created - t).abs() > window {
        return Err(ApiError::unauthorized(
            "stale_signature",
            format!(
                "the `{}` signature was created at {} but the server's clock says {t}: more than {window}s apart. Check this machine's clock",
                sig.label, sig.created
            ),
        ));
    }
    if let Some(expires) = sig.expires
        && expires <= t
    {
        return Err(ApiError::unauthorized(
            "stale_signature",
            format!(
                "the `{}` signature expired at {expires} (server time {t})",
                sig.label
            ),
        ));
    }
    if sig.nonce.len() < 16 || sig.nonce.len() > 128 {
        return Err(ApiError::unauthorized(
            "bad_signature_format",
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
                "signature_missing",
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
            "bad_signature_format",
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
                "replayed_nonce",
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
                "bad_signature",
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
            "session_device_mismatch",
            "this session belongs to another device; it has been revoked. Run `lastmile login` on this device",
        )
    }

    /// The session's device must be trusted and its user enabled.
    pub fn check_standing(&self) -> Result<(), ApiError> {
        if self.device_status != "trusted" {
            return Err(ApiError::forbidden(
                "device_not_trusted",
                format!("device {} is {}", self.device, self.device_status),
            ));
        }
        if self.user_disabled {
            return Err(ApiError::forbidden(
                "user_disabled",
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
            "unknown_session",
            "no such session: run `lastmile login`",
        ));
    };
    if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
        let reason: Option<String> = row.try_get("revoke_reason")?;
        return Err(ApiError::unauthorized(
            "session_revoked",
            format!(
                "this session was revoked ({}): run `lastmile login`",
                reason.unwrap_or_default()
            ),
        ));
    }
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= now() {
        return Err(ApiError::unauthorized(
            "session_expired",
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
            .bind(now())
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
    let expires = (now() + secs(app.config.certificate_ttl)).min(caller.session_expires_at);
    let certificate = app
        .pki
        .session_certificate(&caller.user, &caller.session, &caller.device, raw, expires)
        .map_err(|e| ApiError::internal(error_chain(&e)))?;
    Ok(wire::Refreshed {
        certificate,
        certificate_expires_at: expires,
    })
}

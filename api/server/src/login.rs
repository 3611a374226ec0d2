//! `POST /v1/login/challenge` and `POST /v1/login`.
//!
//! A login proves three things at once: the password (argon2id), the TOTP code when the
//! user has one, and possession of the device key (its signature over a fresh single-use
//! challenge, the user, the new session key and the machine fingerprint). The session
//! key is made by the client; the API binds it to user and device and certifies it. The
//! decisions are in [`check`], without I/O and given the clock; this module reads what
//! they need and writes what they decide.

pub mod check;

use axum::http::StatusCode;
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{self, LoginRequest, LoginResponse};
use sqlx::Row as _;

use self::check::{DeviceStep, KnownDevice, Refusal};
use crate::{
    app::App,
    auth::{device_id, key32, new_id},
    config::secs,
    error::ApiError,
    events::ApiEvent,
    pki::random,
    secret,
};

/// `POST /v1/login/challenge`. A challenge is issued for any well-formed request, so
/// its answer says nothing about which user names exist.
pub async fn challenge(
    app: &App,
    req: wire::ChallengeRequest,
) -> Result<wire::Challenge, ApiError> {
    if !wire::valid_name(&req.user) {
        return Err(ApiError::bad_request(
            ErrorCode::BadUser,
            "user names are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        ));
    }
    key32(&req.device_key, "device_key")?;
    let t = app.clock.now();
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
        let t = app.clock.now();
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
        .audit(&ApiEvent::LoginFailed {
            user,
            reason: &err.code,
        })
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
        ErrorCode::TooManyLogins,
        format!(
            "the API is checking as many logins as it allows at once; send the same request again in {LOGIN_RETRY_AFTER}s"
        ),
    )
    .retry_after(LOGIN_RETRY_AFTER)
}

/// A refusal as the client gets it, recorded (and counted) as [`check::Refusal`] says.
async fn refuse(app: &App, user: &str, r: Refusal) -> ApiError {
    match r {
        Refusal::Counted(e) => refuse_login(app, user, true, e).await,
        Refusal::Recorded(e) => refuse_login(app, user, false, e).await,
        Refusal::Told(e) => e,
    }
}

/// `POST /v1/login`.
pub async fn login(app: &App, req: LoginRequest) -> Result<LoginResponse, ApiError> {
    // Before anything else, so a refused login leaves its challenge unspent for the retry.
    let _permit = app.logins.try_acquire().map_err(|_| too_many_logins())?;
    let t = app.clock.now();
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
            ErrorCode::BadChallenge,
            "the login challenge is unknown, expired, already used, or was issued for another user or device key: ask for a new one",
        ));
    }
    let Some(user) = user_row(app, &req.user).await? else {
        let password = req.password.clone();
        // The dummy hash is made on first use; off the async threads, like every hash.
        tokio::task::spawn_blocking(move || secret::verify_password(&password, &dummy_hash()))
            .await
            .map_err(ApiError::internal)?;
        return Err(refuse(app, &req.user, check::wrong_password()).await);
    };
    match decide(app, &req, &user, t).await {
        Ok(d) => open_session(app, req, &user, d, t).await,
        Err(r) => Err(refuse(app, &req.user, r).await),
    }
}

/// What the checks decided for a login that may go on.
struct Decided {
    totp_step: Option<i64>,
    new_hash: Option<String>,
    proof: check::Proof,
}

/// Every check of the request against the user's row, in the order a refusal is
/// reported: the account, the password, TOTP, the new password, the device proof.
async fn decide(app: &App, req: &LoginRequest, user: &UserRow, t: i64) -> Result<Decided, Refusal> {
    check::account(
        check::Account {
            disabled: user.disabled,
            locked_until: user.locked_until,
        },
        t,
    )?;
    if !argon2_verify(req.password.clone(), user.password_hash.clone()).await? {
        return Err(check::wrong_password());
    }
    let totp_step = match (
        &user.totp_secret,
        check::totp_code(user.totp_secret.is_some(), req.totp.as_deref())?,
    ) {
        (Some(seed), Some(code)) => {
            let seed = seed.open(app, &req.user).await?;
            Some(check::totp_step(&seed, code, user.totp_last_step, t)?)
        }
        _ => None,
    };
    let new_hash = match check::new_password(user.one_time, req)? {
        Some(new) => {
            let new = new.to_owned();
            Some(
                tokio::task::spawn_blocking(move || secret::hash_password(&new))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    let proof = check::device_proof(req)?;
    Ok(Decided {
        totp_step,
        new_hash,
        proof,
    })
}

/// The device registered or noted, the session made and certified, the user's row
/// updated (the TOTP step spent), and the events written, in one transaction.
async fn open_session(
    app: &App,
    req: LoginRequest,
    user: &UserRow,
    d: Decided,
    t: i64,
) -> Result<LoginResponse, ApiError> {
    let device = device_id(&d.proof.device);
    let name = check::device_name(&req.device.name, &device);
    let known = sqlx::query("SELECT user_name, fingerprint, status FROM devices WHERE id = $1")
        .bind(&device)
        .fetch_optional(&app.db.pool)
        .await?
        .map(|row| -> Result<KnownDevice, sqlx::Error> {
            Ok(KnownDevice {
                owner: row.try_get("user_name")?,
                fingerprint: row.try_get("fingerprint")?,
                status: row.try_get("status")?,
            })
        })
        .transpose()?;
    // Read before the transaction, so that its first statement is a write: on SQLite a
    // transaction that read first fails (SQLITE_BUSY_SNAPSHOT) instead of waiting when a
    // concurrent login commits before its write.
    let policy: String = sqlx::query("SELECT device_policy FROM org WHERE id = 1")
        .fetch_one(&app.db.pool)
        .await?
        .try_get("device_policy")?;
    let step = match check::device(
        known.as_ref(),
        &device,
        &req.user,
        &d.proof.fingerprint,
        &policy,
    ) {
        Ok(step) => step,
        Err(r) => return Err(refuse(app, &req.user, r).await),
    };
    let mut tx = app.db.begin().await?;
    match step {
        DeviceStep::Seen => {
            sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
                .bind(t)
                .bind(&device)
                .execute(&mut *tx)
                .await?;
        }
        DeviceStep::Register { pending } => {
            let status = if pending { "pending" } else { "trusted" };
            sqlx::query(
                "INSERT INTO devices (id, user_name, public_key, fingerprint, name, status, created_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&device)
            .bind(&req.user)
            .bind(&req.device.public_key)
            .bind(d.proof.fingerprint.as_str())
            .bind(&name)
            .bind(status)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            app.audit(&ApiEvent::DeviceRegister {
                user: &req.user,
                device: &device,
                fingerprint: d.proof.fingerprint.as_str(),
                name: &name,
                status,
            })
            .await?;
            if pending {
                tx.commit().await?;
                return Err(check::pending(&device, true));
            }
        }
    }
    let session = new_id("ses")?;
    let (session_expires_at, certificate_expires_at) = check::expiries(
        t,
        secs(app.config.session_ttl),
        secs(app.config.certificate_ttl),
    );
    let certificate = app
        .pki
        .session_certificate(
            &req.user,
            &session,
            &device,
            d.proof.session,
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
    let spent = sqlx::query(if d.totp_step.is_some() {
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
    .bind(d.totp_step.unwrap_or(0))
    .bind(d.new_hash)
    .bind(&req.user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if d.totp_step.is_some() && spent != 1 {
        // Nothing of this login stays; the transaction's lock is released before the
        // refusal is counted.
        tx.rollback().await?;
        return Err(refuse(app, &req.user, check::totp_replayed()).await);
    }
    app.audit(&ApiEvent::Login {
        user: &req.user,
        device: &device,
        session: &session,
        totp: d.totp_step.is_some(),
        password_changed: user.one_time,
    })
    .await?;
    app.audit(&ApiEvent::SessionCreate {
        user: &req.user,
        device: &device,
        session: &session,
        expires_at: session_expires_at,
    })
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

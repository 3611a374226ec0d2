//! The decisions of a login, without I/O: each step takes what was read (the user's row,
//! the device's row, the organisation's policy) and the clock, and returns what to do.
//! `super::login` does the reading and writing around them.

use ed25519_dalek::{Signature, VerifyingKey};
use lastmile_proto::wire::ErrorCode;
use lastmile_proto::{
    device::DeviceFingerprint,
    wire::{self, LoginRequest},
};

use crate::{
    auth::{key32, verifying_key},
    error::ApiError,
    secret,
};

/// A login refused, and what the refusal costs the user.
#[derive(Debug)]
pub enum Refusal {
    /// A wrong secret (password, TOTP code): recorded as `login.failed` and counted
    /// toward the lockout.
    Counted(ApiError),
    /// Recorded as `login.failed`, not counted.
    Recorded(ApiError),
    /// Said to the client only: a step the user still has to take (a new password, an
    /// approval), or a malformed request.
    Told(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Told(e)
    }
}

/// What the account must allow before its password is even checked.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    pub disabled: bool,
    pub locked_until: i64,
}

/// A disabled or locked user is refused (neither counts as another failure).
pub fn account(a: Account, now: i64) -> Result<(), Refusal> {
    if a.disabled {
        return Err(Refusal::Recorded(ApiError::forbidden(
            ErrorCode::UserDisabled,
            "this user is disabled; ask an admin",
        )));
    }
    if a.locked_until > now {
        return Err(Refusal::Recorded(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UserLocked,
            format!(
                "too many failed logins; this user is locked for {} more seconds",
                a.locked_until - now
            ),
        )));
    }
    Ok(())
}

pub fn wrong_password() -> Refusal {
    Refusal::Counted(ApiError::unauthorized(
        ErrorCode::BadCredentials,
        "wrong user name or password",
    ))
}

/// A user with TOTP must send a code (asking for one is not a failure).
pub fn totp_code(has_totp: bool, code: Option<&str>) -> Result<Option<&str>, Refusal> {
    match (has_totp, code) {
        (false, _) => Ok(None),
        (true, Some(code)) => Ok(Some(code)),
        (true, None) => Err(Refusal::Recorded(ApiError::unauthorized(
            ErrorCode::TotpRequired,
            "this user has TOTP: send the current code as `totp`",
        ))),
    }
}

/// The TOTP step `code` matches at `now`, if it is later than the last one spent.
pub fn totp_step(seed: &str, code: &str, last_step: i64, now: i64) -> Result<i64, Refusal> {
    match secret::totp_step_matching(seed, code, now) {
        None => Err(Refusal::Counted(ApiError::unauthorized(
            ErrorCode::TotpInvalid,
            "the TOTP code is wrong (check the device's clock)",
        ))),
        Some(step) if step <= last_step => Err(totp_replayed()),
        Some(step) => Ok(step),
    }
}

pub fn totp_replayed() -> Refusal {
    Refusal::Counted(ApiError::unauthorized(
        ErrorCode::TotpReplayed,
        "this TOTP code was already used: wait for the next one",
    ))
}

/// The password to store instead of a one-time one; `None` when the password is the
/// user's own.
pub fn new_password(one_time: bool, req: &LoginRequest) -> Result<Option<&str>, Refusal> {
    if !one_time {
        return Ok(None);
    }
    let Some(new) = &req.new_password else {
        return Err(Refusal::Told(ApiError::forbidden(
            ErrorCode::PasswordChangeRequired,
            "this is a one-time password: log in again with `new_password` set to the password you choose",
        )));
    };
    secret::acceptable_password(new)
        .map_err(|why| ApiError::bad_request(ErrorCode::WeakPassword, why))?;
    if *new == req.password {
        return Err(Refusal::Told(ApiError::bad_request(
            ErrorCode::WeakPassword,
            "the new password must differ from the one-time password",
        )));
    }
    Ok(Some(new))
}

/// The keys a login proved: the device's, by its signature over the challenge, and the
/// new session's.
#[derive(Debug, Clone)]
pub struct Proof {
    pub device: [u8; 32],
    pub session: [u8; 32],
    /// The machine the device key was used on, checked well formed.
    pub fingerprint: DeviceFingerprint,
}

/// Checks the device's signature over the challenge, the user, the session key and the
/// machine fingerprint.
pub fn device_proof(req: &LoginRequest) -> Result<Proof, Refusal> {
    let device_raw = key32(&req.device.public_key, "device.public_key")?;
    let device_key: VerifyingKey = verifying_key(device_raw, "device.public_key")?;
    let session_raw = key32(&req.session_key, "session_key")?;
    verifying_key(session_raw, "session_key")?;
    if session_raw == device_raw {
        return Err(Refusal::Told(ApiError::bad_request(
            ErrorCode::BadKey,
            "the session key must be a new key, not the device key",
        )));
    }
    let fingerprint = DeviceFingerprint::parse(&req.device.fingerprint).map_err(|e| {
        Refusal::Told(ApiError::bad_request(
            ErrorCode::BadFingerprint,
            format!("device.fingerprint: {e}"),
        ))
    })?;
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&req.device.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let message =
        // Signed as sent: the client signs the text it sends.
        wire::login_proof_message(&req.user, &req.challenge, &req.session_key, &req.device.fingerprint);
    if signature.is_none_or(|s| device_key.verify_strict(&message, &s).is_err()) {
        return Err(Refusal::Recorded(ApiError::unauthorized(
            ErrorCode::BadDeviceProof,
            "the device signature over the login challenge does not verify with device.public_key",
        )));
    }
    Ok(Proof {
        device: device_raw,
        session: session_raw,
        fingerprint,
    })
}

/// The device's row, when its key is registered.
#[derive(Debug, Clone)]
pub struct KnownDevice {
    pub owner: String,
    pub fingerprint: String,
    pub status: String,
}

/// What to do with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStep {
    /// A trusted device: note that it was seen, and go on.
    Seen,
    /// A key not seen before: register it with this status (`trusted`, or `pending`
    /// under the approval policy, which ends this login after the registration).
    Register { pending: bool },
}

/// The device `device` (its id) of `user`, with `fingerprint`, under the organisation's
/// `policy` (`approval` or trust on first use).
pub fn device(
    known: Option<&KnownDevice>,
    device: &str,
    user: &str,
    fingerprint: &DeviceFingerprint,
    policy: &str,
) -> Result<DeviceStep, Refusal> {
    let Some(row) = known else {
        return Ok(DeviceStep::Register {
            pending: policy == "approval",
        });
    };
    if row.owner != user {
        return Err(Refusal::Recorded(ApiError::forbidden(
            ErrorCode::DeviceOtherUser,
            "this device key is registered to another user; each user makes their own",
        )));
    }
    if row.fingerprint != fingerprint.as_str() {
        return Err(Refusal::Recorded(ApiError::forbidden(
            ErrorCode::DeviceFingerprintMismatch,
            "this device key was registered on another machine: a copied device key is refused. Make a new device key on this machine",
        )));
    }
    match row.status.as_str() {
        "trusted" => Ok(DeviceStep::Seen),
        "pending" => Err(Refusal::Told(pending(device, false))),
        _ => Err(Refusal::Recorded(ApiError::forbidden(
            ErrorCode::DeviceRevoked,
            format!("device {device} was revoked; ask an admin"),
        ))),
    }
}

/// A device waiting for an admin; `just_registered` when this login registered it.
pub fn pending(device: &str, just_registered: bool) -> ApiError {
    ApiError::forbidden(
        ErrorCode::DevicePending,
        if just_registered {
            format!(
                "device {device} is registered and waits for an admin's approval (`lastmile-api devices approve {device}`); log in again once approved"
            )
        } else {
            format!(
                "device {device} is waiting for an admin's approval (`lastmile-api devices approve {device}`)"
            )
        },
    )
}

/// When the new session and its first certificate end: the certificate never outlives
/// the session.
pub fn expiries(now: i64, session_ttl: i64, certificate_ttl: i64) -> (i64, i64) {
    let session = now.saturating_add(session_ttl);
    (session, now.saturating_add(certificate_ttl).min(session))
}

/// The name a device is listed under: what the client sent, else its id.
pub fn device_name(sent: &str, device: &str) -> String {
    let sent = sent.trim();
    if sent.is_empty() || sent.len() > 128 {
        device.to_owned()
    } else {
        sent.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn code(r: Result<impl std::fmt::Debug, Refusal>) -> (&'static str, String) {
        match r {
            Ok(v) => panic!("not refused: {v:?}"),
            Err(Refusal::Counted(e)) => ("counted", e.code.to_string()),
            Err(Refusal::Recorded(e)) => ("recorded", e.code.to_string()),
            Err(Refusal::Told(e)) => ("told", e.code.to_string()),
        }
    }

    #[test]
    fn a_lock_holds_until_its_time_and_says_how_long_is_left() {
        let locked = Account {
            disabled: false,
            locked_until: 1_000,
        };
        match account(locked, 990) {
            Err(Refusal::Recorded(e)) => {
                assert_eq!(e.code, ErrorCode::UserLocked);
                assert!(e.message.contains("10 more seconds"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(account(locked, 1_000).is_ok(), "the lock ends at its time");
        let disabled = Account {
            disabled: true,
            locked_until: 0,
        };
        assert_eq!(
            code(account(disabled, 0)),
            ("recorded", "user_disabled".into())
        );
    }

    #[test]
    fn totp_codes_are_asked_for_checked_and_spent_once() {
        assert_eq!(totp_code(false, None).unwrap(), None);
        assert_eq!(
            code(totp_code(true, None)),
            ("recorded", "totp_required".into())
        );
        let seed = "JBSWY3DPEHPK3PXP";
        let now = 1_700_000_000;
        let current = secret::totp_now(seed, now).unwrap();
        let step = totp_step(seed, &current, 0, now).unwrap();
        assert_eq!(
            code(totp_step(seed, &current, step, now)),
            ("counted", "totp_replayed".into())
        );
        assert_eq!(
            code(totp_step(seed, "000000", 0, now + 3600)).1,
            "totp_invalid"
        );
    }

    fn request(device: &SigningKey, session: &SigningKey, fingerprint: &str) -> LoginRequest {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let session_key = b64(session.verifying_key().as_bytes());
        let message = wire::login_proof_message("alice", "chal", &session_key, fingerprint);
        LoginRequest {
            user: "alice".into(),
            password: "one-time-pass".into(),
            totp: None,
            new_password: None,
            challenge: "chal".into(),
            session_key,
            device: wire::DeviceProof {
                public_key: b64(device.verifying_key().as_bytes()),
                fingerprint: fingerprint.into(),
                name: "laptop".into(),
                signature: b64(&device.sign(&message).to_bytes()),
            },
        }
    }

    #[test]
    fn the_device_proof_binds_the_challenge_session_key_and_fingerprint() {
        let device = SigningKey::from_bytes(&[1; 32]);
        let session = SigningKey::from_bytes(&[2; 32]);
        let fp = "ab".repeat(32);
        let req = request(&device, &session, &fp);
        let proof = device_proof(&req).unwrap();
        assert_eq!(proof.device, *device.verifying_key().as_bytes());
        let mut other = req.clone();
        other.challenge = "another".into();
        assert_eq!(
            code(device_proof(&other)),
            ("recorded", "bad_device_proof".into())
        );
        let same = request(&device, &device, &fp);
        assert_eq!(code(device_proof(&same)), ("told", "bad_key".into()));
        let short = request(&device, &session, "abcd");
        assert_eq!(
            code(device_proof(&short)),
            ("told", "bad_fingerprint".into())
        );
    }

    #[test]
    fn a_one_time_password_must_be_replaced_by_another() {
        let device = SigningKey::from_bytes(&[1; 32]);
        let mut req = request(&device, &SigningKey::from_bytes(&[2; 32]), &"ab".repeat(32));
        assert_eq!(new_password(false, &req).unwrap(), None);
        assert_eq!(
            code(new_password(true, &req)),
            ("told", "password_change_required".into())
        );
        req.new_password = Some(req.password.clone());
        assert_eq!(code(new_password(true, &req)).1, "weak_password");
        req.new_password = Some("correct horse battery staple".into());
        assert_eq!(
            new_password(true, &req).unwrap(),
            Some("correct horse battery staple")
        );
    }

    #[test]
    fn devices_are_registered_trusted_or_pending_and_copies_refused() {
        let fp = DeviceFingerprint::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(
            device(None, "dev_1", "alice", &fp, "tofu").unwrap(),
            DeviceStep::Register { pending: false }
        );
        assert_eq!(
            device(None, "dev_1", "alice", &fp, "approval").unwrap(),
            DeviceStep::Register { pending: true }
        );
        let row = |owner: &str, fingerprint: &str, status: &str| KnownDevice {
            owner: owner.into(),
            fingerprint: fingerprint.into(),
            status: status.into(),
        };
        let ok = row("alice", fp.as_str(), "trusted");
        assert_eq!(
            device(Some(&ok), "dev_1", "alice", &fp, "tofu").unwrap(),
            DeviceStep::Seen
        );
        let bobs = row("bob", fp.as_str(), "trusted");
        assert_eq!(
            code(device(Some(&bobs), "dev_1", "alice", &fp, "tofu")).1,
            "device_other_user"
        );
        let copied = row("alice", &"cd".repeat(32), "trusted");
        assert_eq!(
            code(device(Some(&copied), "dev_1", "alice", &fp, "tofu")).1,
            "device_fingerprint_mismatch"
        );
        let waiting = row("alice", fp.as_str(), "pending");
        assert_eq!(
            code(device(Some(&waiting), "dev_1", "alice", &fp, "tofu")),
            ("told", "device_pending".into())
        );
        let revoked = row("alice", fp.as_str(), "revoked");
        assert_eq!(
            code(device(Some(&revoked), "dev_1", "alice", &fp, "tofu")),
            ("recorded", "device_revoked".into())
        );
    }

    #[test]
    fn the_first_certificate_never_outlives_the_session() {
        assert_eq!(expiries(100, 3600, 60), (3700, 160));
        assert_eq!(expiries(100, 30, 60), (130, 130));
        assert_eq!(device_name("  ", "dev_1"), "dev_1");
        assert_eq!(device_name(" laptop ", "dev_1"), "laptop");
    }
}

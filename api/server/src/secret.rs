//! Passwords (argon2id, RFC 9106) and TOTP (RFC 6238 over HOTP, RFC 4226).

use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};
use hmac::{Hmac, Mac as _};

use crate::pki::{PkiError, random};

/// Hashes a password with argon2id at the crate's default parameters (19 MiB, t=2,
/// p=1: OWASP's minimum), as a PHC string that carries its own salt and parameters.
pub fn hash_password(password: &str) -> Result<String, PkiError> {
    let salt =
        SaltString::encode_b64(&random::<16>()?).map_err(|e| PkiError::Random(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PkiError::Random(format!("argon2: {e}")))
}

/// Whether `password` matches the PHC string `hash`. A malformed stored hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new password for people to type once: 20 characters of base32 (100 bits).
pub fn one_time_password() -> Result<String, PkiError> {
    Ok(data_encoding::BASE32_NOPAD
        .encode(&random::<13>()?)
        .chars()
        .take(20)
        .collect::<String>()
        .to_lowercase())
}

/// The minimum a chosen password must meet.
pub fn acceptable_password(password: &str) -> Result<(), String> {
    if password.chars().count() < 12 {
        return Err("a password needs at least 12 characters".to_owned());
    }
    if password.len() > 1024 {
        return Err("a password may have at most 1024 bytes".to_owned());
    }
    Ok(())
}

/// TOTP's step (RFC 6238 §4: X = 30 s).
pub const TOTP_STEP: i64 = 30;

/// A new TOTP secret, 160 bits (RFC 4226 §4 recommends 160), base32 as authenticator apps
/// take it.
pub fn new_totp_secret() -> Result<String, PkiError> {
    Ok(data_encoding::BASE32_NOPAD.encode(&random::<20>()?))
}

/// The KMS context a user's TOTP seed is sealed under.
fn totp_context(organisation: &str, user: &str) -> lastmile_vault::Context {
    lastmile_vault::Context::new([("lastmile:org", organisation), ("lastmile:totp", user)])
}

/// A TOTP seed sealed by the KMS, as stored (`users.totp_sealed`).
pub async fn seal_totp(
    kms: &lastmile_vault::Kms,
    organisation: &str,
    user: &str,
    secret_b32: &str,
) -> Result<String, lastmile_vault::KmsError> {
    let sealed = lastmile_vault::envelope::seal(
        kms,
        &totp_context(organisation, user),
        secret_b32.as_bytes(),
    )
    .await?;
    serde_json::to_string(&sealed)
        .map_err(|e| lastmile_vault::KmsError::Unavailable(format!("sealed TOTP seed: {e}")))
}

/// The base32 seed back from [`seal_totp`]'s text.
pub async fn open_totp(
    kms: &lastmile_vault::Kms,
    organisation: &str,
    user: &str,
    stored: &str,
) -> Result<zeroize::Zeroizing<String>, lastmile_vault::KmsError> {
    let sealed: lastmile_vault::Sealed =
        serde_json::from_str(stored).map_err(|_| lastmile_vault::KmsError::Refused)?;
    let plain =
        lastmile_vault::envelope::open(kms, &totp_context(organisation, user), &sealed).await?;
    String::from_utf8(plain.to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| lastmile_vault::KmsError::Refused)
}

/// The `otpauth://` URI authenticator apps scan.
pub fn totp_uri(organisation: &str, user: &str, secret: &str) -> String {
    format!(
        "otpauth://totp/lastmile%20{organisation}:{user}?secret={secret}&issuer=lastmile%20{organisation}&algorithm=SHA1&digits=6&period={TOTP_STEP}"
    )
}

/// The 6-digit HOTP value of `secret` at `counter` (RFC 4226 §5.3, HMAC-SHA-1, dynamic
/// truncation).
pub fn hotp(secret: &[u8], counter: u64) -> Option<u32> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).ok()?;
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h.last()? & 0x0f);
    let word = h.get(offset..offset + 4)?;
    let code = u32::from_be_bytes([
        word.first()? & 0x7f,
        *word.get(1)?,
        *word.get(2)?,
        *word.get(3)?,
    ]);
    Some(code % 1_000_000)
}

/// The time step `code` matches at `now`, allowing one step of clock drift either way
/// (RFC 6238 §5.2), or `None`. The caller refuses steps at or before the last one used,
/// so a code cannot be replayed.
pub fn totp_step_matching(secret_b32: &str, code: &str, now: i64) -> Option<i64> {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .ok()?;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let step = now / TOTP_STEP;
    [step - 1, step, step + 1].into_iter().find(|s| {
        u64::try_from(*s)
            .ok()
            .and_then(|c| hotp(&secret, c))
            .is_some_and(|v| v == want)
    })
}

/// The current code for `secret_b32` (for tests and the admin's check).
pub fn totp_now(secret_b32: &str, now: i64) -> Option<String> {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .ok()?;
    let v = hotp(&secret, u64::try_from(now / TOTP_STEP).ok()?)?;
    Some(format!("{v:06}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        // Appendix B: secret "12345678901234567890", 8 digits; we use 6, which are the
        // last six of each.
        let secret = b"12345678901234567890";
        for (t, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            let v = hotp(secret, t / 30).unwrap();
            assert_eq!(format!("{v:06}"), eight[2..]);
        }
    }

    #[test]
    fn totp_accepts_one_step_of_drift_and_no_more() {
        let s = new_totp_secret().unwrap();
        let now = 1_700_000_000;
        let code = totp_now(&s, now).unwrap();
        assert_eq!(totp_step_matching(&s, &code, now), Some(now / 30));
        assert!(totp_step_matching(&s, &code, now + 30).is_some());
        assert!(totp_step_matching(&s, &code, now + 90).is_none());
        assert!(totp_step_matching(&s, "12345", now).is_none());
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_eq!(one_time_password().unwrap().len(), 20);
    }
}

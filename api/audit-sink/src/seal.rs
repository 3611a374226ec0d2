//! Encrypting events on the host to age X25519 recipients, and reading them back.

use std::{io::Write as _, path::Path};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Map, Value};

use crate::CLEAR_FIELDS;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("`{0}` is not an age X25519 recipient (age1…)")]
    BadRecipient(String),
    #[error("no recipients: give at least one age1… recipient to encrypt to")]
    NoRecipients,
    #[error("{path}: no AGE-SECRET-KEY-1… identity in it")]
    NoIdentity { path: String },
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("this event is not encrypted to any of the given identities ({0})")]
    NotForUs(String),
    #[error("the encrypted part is malformed: {0}")]
    Malformed(String),
    #[error("an audit event must be a JSON object")]
    NotAnEvent,
}

/// Parses age recipients (`age1…`), refusing any that is not one.
pub fn parse_recipients(texts: &[String]) -> Result<Vec<age::x25519::Recipient>, SealError> {
    if texts.is_empty() {
        return Err(SealError::NoRecipients);
    }
    texts
        .iter()
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| SealError::BadRecipient(t.clone()))
        })
        .collect()
}

/// Reads the X25519 identities in an age identity file (`age-keygen` output).
pub fn load_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, SealError> {
    let text = std::fs::read_to_string(path).map_err(|source| SealError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let identities: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .filter_map(|l| l.parse().ok())
        .collect();
    if identities.is_empty() {
        return Err(SealError::NoIdentity {
            path: path.display().to_string(),
        });
    }
    Ok(identities)
}

/// Encrypts `event` to `recipients`: the result keeps the [`CLEAR_FIELDS`] and carries the
/// whole original event, age-encrypted, in `"sealed"` (base64).
pub fn seal(event: &Value, recipients: &[age::x25519::Recipient]) -> Result<Value, SealError> {
    let object = event.as_object().ok_or(SealError::NotAnEvent)?;
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let plaintext = serde_json::to_vec(event).map_err(|e| SealError::Encrypt(e.to_string()))?;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut ciphertext = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut ciphertext)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    writer
        .write_all(&plaintext)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut sealed = Map::new();
    for field in CLEAR_FIELDS {
        if let Some(v) = object.get(*field) {
            sealed.insert((*field).to_owned(), v.clone());
        }
    }
    sealed.insert("sealed".into(), Value::String(STANDARD.encode(ciphertext)));
    Ok(Value::Object(sealed))
}

/// Decrypts a sealed event with any of `identities`; an event that is not sealed is
/// returned as it is.
pub fn open(event: &Value, identities: &[age::x25519::Identity]) -> Result<Value, SealError> {
    let Some(sealed) = event.get("sealed") else {
        return Ok(event.clone());
    };
    let bytes = STANDARD
        .decode(
            sealed
                .as_str()
                .ok_or_else(|| SealError::Malformed("\"sealed\" is not a string".into()))?,
        )
        .map_err(|e| SealError::Malformed(e.to_string()))?;
    let decryptor =
        age::Decryptor::new(&bytes[..]).map_err(|e| SealError::Malformed(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| SealError::NotForUs(e.to_string()))?;
    let mut plaintext = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut plaintext)
        .map_err(|e| SealError::Malformed(e.to_string()))?;
    serde_json::from_slice(&plaintext).map_err(|e| SealError::Malformed(e.to_string()))
}

/// Opens every sealed event found anywhere in a log envelope (its `event` field) or a
/// bare event.
pub fn open_all(line: &Value, identities: &[age::x25519::Identity]) -> Result<Value, SealError> {
    match line.get("event") {
        Some(event) if line.get("seq").is_some() => {
            let mut out = line.clone();
            if let Some(slot) = out.get_mut("event") {
                *slot = open(event, identities)?;
            }
            Ok(out)
        }
        _ => open(line, identities),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"v": 1, "kind": "query", "session": "s-1", "user": "alice", "query": "select secret from vault"})
    }

    #[test]
    fn a_sealed_event_reads_back_exactly_with_the_identity() {
        let id = age::x25519::Identity::generate();
        let sealed = seal(&event(), &[id.to_public()]).unwrap();
        assert!(!sealed.to_string().contains("select secret"), "{sealed}");
        assert_eq!(sealed["kind"], "query");
        assert_eq!(sealed["session"], "s-1");
        assert_eq!(open(&sealed, &[id]).unwrap(), event());
    }

    #[test]
    fn without_the_identity_it_stays_unreadable() {
        let id = age::x25519::Identity::generate();
        let stranger = age::x25519::Identity::generate();
        let sealed = seal(&event(), &[id.to_public()]).unwrap();
        assert!(matches!(
            open(&sealed, &[stranger]),
            Err(SealError::NotForUs(_))
        ));
    }

    #[test]
    fn any_of_several_recipients_can_read_it() {
        let (a, b) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let sealed = seal(&event(), &[a.to_public(), b.to_public()]).unwrap();
        assert_eq!(open(&sealed, &[b]).unwrap(), event());
        assert_eq!(open(&sealed, &[a]).unwrap(), event());
    }

    #[test]
    fn bad_recipients_and_identity_files_are_named() {
        assert!(matches!(
            parse_recipients(&["age1nope".into()]),
            Err(SealError::BadRecipient(_))
        ));
        assert!(matches!(
            parse_recipients(&[]),
            Err(SealError::NoRecipients)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        std::fs::write(&path, "# nothing here\n").unwrap();
        assert!(matches!(
            load_identities(&path),
            Err(SealError::NoIdentity { .. })
        ));
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret as _;
        std::fs::write(
            &path,
            format!("# created: now\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        assert_eq!(load_identities(&path).unwrap().len(), 1);
    }
}

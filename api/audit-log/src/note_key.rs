//! The keys of signed notes (<https://c2sp.org/signed-note>): the log's signing key
//! ([`NoteSigner`], Ed25519) and the verifier keys that open its checkpoints
//! ([`NoteVerifier`]: Ed25519, type `0x01`, or ECDSA P-256 held by a KMS, type `0x02`),
//! with their key names, key IDs and text form `name+keyid+base64(type || key)`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::checkpoint::{CheckpointError, ECDSA_ALGORITHM, ED25519_ALGORITHM, P256_SPKI_PREFIX};

/// signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode spaces
/// or plus (U+002B) characters." Control characters are refused too, since a note
/// may not contain them.
pub(crate) fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(CheckpointError::InvalidKeyName(name.to_string()));
    }
    Ok(())
}

/// signed-note key ID: `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`,
/// read as a big-endian u32.
fn compute_key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_ALGORITHM]);
    h.update(key.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let [a, b, c, d, ..] = digest;
    u32::from_be_bytes([a, b, c, d])
}

/// The log's signing key, with its key name. Keep it secret.
#[derive(Clone)]
pub struct NoteSigner {
    pub(crate) name: String,
    pub(crate) key: SigningKey,
    pub(crate) key_id: u32,
}

impl fmt::Debug for NoteSigner {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate(name: &str) -> Result<Self, CheckpointError> {
        Self::from_key(name, SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key from its 32-byte Ed25519 secret seed (RFC 8032 section 5.1.5).
    pub fn from_bytes(name: &str, secret: [u8; 32]) -> Result<Self, CheckpointError> {
        Self::from_key(name, SigningKey::from_bytes(&secret))
    }

    fn from_key(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let key_id = compute_key_id(name, &key.verifying_key());
        Ok(Self {
            name: name.to_string(),
            key,
            key_id,
        })
    }

    /// The 32-byte secret seed, for storing the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key name written in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching public verifier, to hand to whoever checks checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: PublicKey::Ed25519(self.key.verifying_key()),
            key_id: self.key_id,
        }
    }
}

/// A public key that checkpoints are checked against, with its key name and key ID.
///
/// Its text form is the standard verifier key `<name>+<key ID as 8 hex digits>+<base64
/// of the signature type || public key>`, as used by Go's `golang.org/x/mod/sumdb/note`
/// and the transparency-log ecosystem: `0x01 || 32-byte Ed25519 key`, or `0x02 || DER
/// SubjectPublicKeyInfo` of a P-256 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub(crate) name: String,
    key: PublicKey,
    pub(crate) key_id: u32,
}

/// The public half of a signing key, by signature type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    Ed25519(VerifyingKey),
    /// The DER SubjectPublicKeyInfo of a P-256 key, checked to be of that form.
    EcdsaP256(Vec<u8>),
}

impl NoteVerifier {
    /// A verifier from a key name and a 32-byte Ed25519 public key.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let key = VerifyingKey::from_bytes(&public_key)
            .map_err(|_| CheckpointError::InvalidPublicKey("a valid Ed25519 point"))?;
        let key_id = compute_key_id(name, &key);
        Ok(Self {
            name: name.to_string(),
            key: PublicKey::Ed25519(key),
            key_id,
        })
    }

    /// A verifier from a key name and the DER SubjectPublicKeyInfo of a NIST P-256 key
    /// (what a KMS's `GetPublicKey` returns for an `ECC_NIST_P256` key), for signature
    /// type 0x02. The key ID is `SHA-256(SPKI)[:4]`, as signed-note specifies for that
    /// type (the name is not hashed in).
    pub fn ecdsa_p256(name: &str, spki_der: &[u8]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        spki_der
            .strip_prefix(P256_SPKI_PREFIX.as_slice())
            .filter(|p| p.len() == 65 && p.first() == Some(&0x04))
            .map(|_| ())
            .ok_or(CheckpointError::InvalidPublicKey(
                "the DER SubjectPublicKeyInfo of a NIST P-256 key with an uncompressed point",
            ))?;
        // ring checks that the point is on the curve when it verifies: a key that is not
        // has every signature refused (BadSignature), none accepted.
        let digest: [u8; 32] = Sha256::digest(spki_der).into();
        let [a, b, c, d, ..] = digest;
        Ok(Self {
            name: name.to_string(),
            key: PublicKey::EcdsaP256(spki_der.to_vec()),
            key_id: u32::from_be_bytes([a, b, c, d]),
        })
    }

    /// Parses the `<name>+<hex key ID>+<base64 key>` text form, checking that the
    /// stated key ID is the one the name and key give.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        // The name has no '+' and the key ID is hex, so the first two '+' split the
        // fields; the base64 key may itself contain '+'.
        let (name, rest) = text
            .split_once('+')
            .ok_or(CheckpointError::MalformedVerifierKey(
                "no '+' after the key name",
            ))?;
        let (id_hex, key_b64) =
            rest.split_once('+')
                .ok_or(CheckpointError::MalformedVerifierKey(
                    "no '+' after the key ID",
                ))?;
        check_key_name(name)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckpointError::MalformedVerifierKey(
                "the key ID is not 8 hex digits",
            ));
        }
        let stated = u32::from_str_radix(id_hex, 16)
            .map_err(|_| CheckpointError::MalformedVerifierKey("the key ID is not 8 hex digits"))?;
        let key_data = BASE64
            .decode(key_b64)
            .map_err(|_| CheckpointError::MalformedVerifierKey("the key is not valid base64"))?;
        let (&algorithm, key) = key_data
            .split_first()
            .ok_or(CheckpointError::MalformedVerifierKey("the key is empty"))?;
        let verifier = match algorithm {
            ED25519_ALGORITHM => {
                let key: [u8; 32] = key.try_into().map_err(|_| {
                    CheckpointError::MalformedVerifierKey("an Ed25519 key must be 32 bytes")
                })?;
                Self::new(name, key)?
            }
            ECDSA_ALGORITHM => Self::ecdsa_p256(name, key)?,
            other => return Err(CheckpointError::UnsupportedAlgorithm(other)),
        };
        if verifier.key_id != stated {
            return Err(CheckpointError::KeyIdMismatch {
                stated,
                computed: verifier.key_id,
            });
        }
        Ok(verifier)
    }

    /// The key name expected in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signed-note signature type of the key (0x01 or 0x02).
    pub fn algorithm(&self) -> u8 {
        match self.key {
            PublicKey::Ed25519(_) => ED25519_ALGORITHM,
            PublicKey::EcdsaP256(_) => ECDSA_ALGORITHM,
        }
    }

    /// The key's bytes as the verifier key text carries them, after the type byte: the
    /// 32-byte Ed25519 key, or the P-256 key's DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> &[u8] {
        match &self.key {
            PublicKey::Ed25519(k) => k.as_bytes(),
            PublicKey::EcdsaP256(spki) => spki,
        }
    }

    /// Whether `signature` is this key's over `text` (Ed25519 strict verification, or
    /// ECDSA P-256 over SHA-256 of the text, ASN.1 DER).
    pub(crate) fn verifies(&self, text: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            PublicKey::Ed25519(key) => {
                Signature::from_slice(signature).is_ok_and(|s| key.verify_strict(text, &s).is_ok())
            }
            PublicKey::EcdsaP256(spki) => {
                let point = spki.get(P256_SPKI_PREFIX.len()..).unwrap_or_default();
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_ASN1,
                    point,
                )
                .verify(text, signature)
                .is_ok()
            }
        }
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key_data = vec![self.algorithm()];
        key_data.extend_from_slice(self.public_key());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key_data)
        )
    }
}

impl FromStr for NoteVerifier {
    type Err = CheckpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

//! Signed checkpoints: the tree head of the audit log in the C2SP formats
//! <https://c2sp.org/tlog-checkpoint> and <https://c2sp.org/signed-note>.
//!
//! A checkpoint commits the log to its whole history: whoever holds a signed
//! checkpoint can later demand an inclusion proof for any entry and a consistency
//! proof to any newer checkpoint (see [`crate::merkle`]), so the log cannot quietly
//! rewrite or drop entries. Using the standard text format means existing witnesses
//! and verifiers of the transparency-log ecosystem can check our checkpoints.
//!
//! ```text
//! lastmile.example/audit
//! 4
//! m81RJAr0AFFo8DMSG6hb5abtTw5qX6wmIGZym4+/3ss=
//! time 1700000000
//!
//! — lastmile.example/audit CHG/pcoioqXweHW/NmJg7rUX7LIrNuvWCI9GpPgrIhLF4UXKl7apiAOs9kM//btl+FWR0QjcTTJLfJyE4sqBV0QK1wk=
//! ```
//!
//! That note is checked by the verifier key
//! `lastmile.example/audit+0871bfa5+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs`.
//!
//! The body is the three lines the checkpoint spec mandates (origin, tree size in
//! decimal, root hash in standard base64) plus one extension line, `time
//! <unix-seconds>`, which lastmile always writes and always requires. Signatures are
//! Ed25519 (signed-note signature type `0x01`) over the body text, or, for a signing
//! key held by a KMS that cannot sign Ed25519, ECDSA over P-256 with SHA-256
//! (type `0x02`, "as implemented by github.com/transparency-dev/witness": the verifier
//! key carries the DER SubjectPublicKeyInfo, the key ID is the first four bytes of its
//! SHA-256, and the signature is ASN.1 DER).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;
use thiserror::Error;

use crate::merkle::Hash;
use crate::note_key::check_key_name;
pub use crate::note_key::{NoteSigner, NoteVerifier};

/// Signed-note signature type identifier of Ed25519 (c2sp.org/signed-note, "Signature
/// types"). It is hashed into the key ID and prefixes the key in the verifier key text.
pub const ED25519_ALGORITHM: u8 = 0x01;

/// Signed-note signature type identifier of ECDSA (c2sp.org/signed-note, "Signature
/// types"); lastmile accepts it on NIST P-256 only, the curve the spec recommends.
pub const ECDSA_ALGORITHM: u8 = 0x02;

/// The DER prefix of every P-256 SubjectPublicKeyInfo with an uncompressed point
/// (RFC 5480 section 2: `id-ecPublicKey` with the `secp256r1` named curve, then a BIT
/// STRING of 66 bytes); the 65-byte point follows. A KMS's `GetPublicKey` gives this form.
pub(crate) const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Start of every signature line: em dash (U+2014) and a space (signed-note "Format").
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// Prefix of lastmile's extension line.
const TIME_PREFIX: &str = "time ";

/// Most signature lines `open` will look at. The signed-note spec asks verifiers to
/// cap this and to accept at least 16; 100 is what Go's reference implementation uses.
const MAX_SIGNATURES: usize = 100;

/// Length of the base64 signature blob's key ID prefix (signed-note "Format").
const KEY_ID_LEN: usize = 4;

/// What is wrong with a checkpoint body (the note text).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The text does not end with a newline (each line must, the last included).
    #[error("the body does not end with a newline")]
    MissingFinalNewline,
    /// Not exactly origin, size, root and time lines.
    #[error("the body has {found} lines; expected 4 (origin, tree size, root hash, time)")]
    WrongLineCount {
        /// How many lines there were.
        found: usize,
    },
    /// The origin line is empty (tlog-checkpoint: "The origin MUST be non-empty").
    #[error("the origin line is empty")]
    EmptyOrigin,
    /// The origin holds an ASCII control character, which a signed note may not contain.
    #[error("the origin contains an ASCII control character")]
    OriginControlCharacter,
    /// The size is not ASCII decimal without leading zeros, or does not fit in u64.
    #[error(
        "the tree size {0:?} is not a decimal number without leading zeros that fits in 64 bits"
    )]
    NonCanonicalSize(String),
    /// The root hash line is not canonical standard base64 (RFC 4648 section 4).
    #[error("the root hash {0:?} is not canonical padded standard base64")]
    RootNotBase64(String),
    /// The root hash decodes to the wrong number of bytes.
    #[error("the root hash is {0} bytes long; a SHA-256 hash is 32")]
    WrongRootLength(usize),
    /// The fourth line is not `time <unix-seconds>`.
    #[error("the fourth line {0:?} is not `time <unix-seconds>`")]
    BadTimeLine(String),
    /// The time is not ASCII decimal without leading zeros, or does not fit in u64.
    #[error("the time {0:?} is not a decimal number without leading zeros that fits in 64 bits")]
    NonCanonicalTime(String),
}

/// Why a checkpoint could not be signed or opened, or a key not be made or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The signed text is not a valid lastmile checkpoint body.
    #[error("malformed checkpoint body")]
    MalformedBody(#[from] BodyError),
    /// The note around the body is not a valid signed note.
    #[error("malformed signed note: {0}")]
    MalformedNote(&'static str),
    /// The note carries no signature line with the verifier's name and key ID.
    #[error("the note has no signature by key {name} (key ID {key_id:08x})")]
    NoSignatureByKey {
        /// The verifier's key name.
        name: String,
        /// The verifier's key ID.
        key_id: u32,
    },
    /// A signature line claims to be by the verifier's key, but does not verify.
    #[error("the signature by key {name} (key ID {key_id:08x}) does not verify")]
    BadSignature {
        /// The verifier's key name.
        name: String,
        /// The verifier's key ID.
        key_id: u32,
    },
    /// The key name is empty or has a Unicode space, a control character or a '+'.
    #[error(
        "invalid key name {0:?}: it must be non-empty, without spaces, control characters or '+'"
    )]
    InvalidKeyName(String),
    /// The bytes are not a valid public key of the signature type.
    #[error("the public key is not {0}")]
    InvalidPublicKey(&'static str),
    /// The verifier key text is not `<name>+<8 hex digits>+<base64 key>`.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    /// The verifier key is for another signature type than Ed25519.
    #[error(
        "verifier key has signature type {0:#04x}; only Ed25519 (0x01) and ECDSA P-256 (0x02) are supported"
    )]
    UnsupportedAlgorithm(u8),
    /// The key ID in the verifier key text is not the one its name and key give.
    #[error("verifier key states key ID {stated:08x}, but its name and key give {computed:08x}")]
    KeyIdMismatch {
        /// The key ID written in the text.
        stated: u32,
        /// The key ID computed from the name and the key.
        computed: u32,
    },
}

/// A tree head of the audit log: which log, how many entries, their Merkle root, and
/// when the log signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `lastmile.example/audit`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of those leaves.
    pub root: Hash,
    /// Unix seconds at which the checkpoint was made (passed in by the caller).
    pub time: u64,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root and time lines, each ending in "\n".
    /// This is exactly the byte string that gets signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n{TIME_PREFIX}{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.as_bytes()),
            self.time
        )
    }

    /// Parses a body strictly: any text that [`Checkpoint::body`] would not produce
    /// byte for byte is rejected, so one checkpoint has exactly one signed form.
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(BodyError::MissingFinalNewline)?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root, time] = lines.as_slice() else {
            return Err(BodyError::WrongLineCount { found: lines.len() }.into());
        };
        check_origin(origin)?;
        let size = parse_canonical_u64(size)
            .ok_or_else(|| BodyError::NonCanonicalSize(size.to_string()))?;
        let root = parse_root(root)?;
        let time = time
            .strip_prefix(TIME_PREFIX)
            .ok_or_else(|| BodyError::BadTimeLine(time.to_string()))?;
        let time = parse_canonical_u64(time)
            .ok_or_else(|| BodyError::NonCanonicalTime(time.to_string()))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            time,
        })
    }
}

/// tlog-checkpoint: "The origin MUST be non-empty"; signed-note: no ASCII control
/// characters other than newline, and a newline would end the line anyway.
fn check_origin(origin: &str) -> Result<(), BodyError> {
    if origin.is_empty() {
        return Err(BodyError::EmptyOrigin);
    }
    if origin.chars().any(|c| c < ' ') {
        return Err(BodyError::OriginControlCharacter);
    }
    Ok(())
}

/// Decimal with no sign, no spaces and no leading zeros (tlog-checkpoint: "with no
/// leading zeroes (unless the tree is empty, in which case the tree size is `0`)").
fn parse_canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_root(line: &str) -> Result<Hash, BodyError> {
    // The STANDARD engine requires canonical padding and rejects non-zero trailing
    // bits, so each hash has exactly one accepted encoding.
    let bytes = BASE64
        .decode(line)
        .map_err(|_| BodyError::RootNotBase64(line.to_string()))?;
    let len = bytes.len();
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| BodyError::WrongRootLength(len))?;
    Ok(Hash(bytes))
}

/// Signs a checkpoint: its body, a blank line, and one signature line (signed-note
/// "Format"). Refuses a checkpoint whose body would not parse back (an empty origin
/// or one with a control character), so that nothing ambiguous is ever signed.
pub fn sign(checkpoint: &Checkpoint, signer: &NoteSigner) -> Result<String, CheckpointError> {
    check_origin(&checkpoint.origin)?;
    Ok(sign_text(&checkpoint.body(), signer))
}

/// Signs any note text ending in a newline.
fn sign_text(text: &str, signer: &NoteSigner) -> String {
    let signature = signer.key.sign(text.as_bytes());
    note_text(text, &signer.name, signer.key_id, &signature.to_bytes())
}

/// A note text, a blank line and one signature line.
fn note_text(text: &str, name: &str, key_id: u32, signature: &[u8]) -> String {
    let mut blob = Vec::with_capacity(KEY_ID_LEN + signature.len());
    blob.extend_from_slice(&key_id.to_be_bytes());
    blob.extend_from_slice(signature);
    format!(
        "{text}\n{SIGNATURE_LINE_PREFIX}{name} {}\n",
        BASE64.encode(blob)
    )
}

/// The signed note of a checkpoint whose body (`checkpoint.body()`) was signed
/// elsewhere, by the key behind `verifier` (a KMS, which never hands out its key): for
/// type 0x02 the ASN.1 DER ECDSA signature over the body. The signature is checked
/// before the note is returned, so a wrong key or a garbled answer is never published.
pub fn attach_signature(
    checkpoint: &Checkpoint,
    verifier: &NoteVerifier,
    signature: &[u8],
) -> Result<String, CheckpointError> {
    check_origin(&checkpoint.origin)?;
    let note = note_text(
        &checkpoint.body(),
        &verifier.name,
        verifier.key_id,
        signature,
    );
    open_text(&note, verifier)?;
    Ok(note)
}

/// Opens a signed checkpoint: requires a valid signature by `verifier` (same key name
/// and key ID), ignores signature lines of other keys as the signed-note spec demands,
/// and only then parses the body.
pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, CheckpointError> {
    let text = open_text(note, verifier)?;
    Checkpoint::parse_body(text)
}

/// The signed-note part of [`open`]: returns the verified note text.
fn open_text<'a>(note: &'a str, verifier: &NoteVerifier) -> Result<&'a str, CheckpointError> {
    use CheckpointError::MalformedNote;

    // "Signed notes MUST be valid UTF-8 [a &str is] and MUST NOT contain any ASCII
    // control characters (those below U+0020) other than newline."
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(MalformedNote("it contains an ASCII control character"));
    }
    // "the text is separated from the signatures by the last empty line in the note";
    // the text keeps its final newline.
    let split = note.rfind("\n\n").ok_or(MalformedNote(
        "no blank line separates the text from the signatures",
    ))?;
    let (text, signatures) = match (note.get(..=split), note.get(split + 2..)) {
        (Some(text), Some(signatures)) => (text, signatures),
        _ => return Err(MalformedNote("cannot split the text from the signatures")),
    };
    let signatures = signatures
        .strip_suffix('\n')
        .ok_or(MalformedNote("the signatures do not end with a newline"))?;
    if signatures.is_empty() {
        return Err(MalformedNote("it has no signature lines"));
    }

    let mut verified = false;
    for (count, line) in signatures.split('\n').enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(MalformedNote("it has more than 100 signature lines"));
        }
        let line = line
            .strip_prefix(SIGNATURE_LINE_PREFIX)
            .ok_or(MalformedNote(
                "a signature line does not start with an em dash and a space",
            ))?;
        let (name, blob) = line.split_once(' ').ok_or(MalformedNote(
            "a signature line has no space after the key name",
        ))?;
        if check_key_name(name).is_err() {
            return Err(MalformedNote("a signature line has an invalid key name"));
        }
        let blob = BASE64
            .decode(blob)
            .map_err(|_| MalformedNote("a signature is not valid base64"))?;
        let (key_id, signature) = blob.split_first_chunk::<KEY_ID_LEN>().ok_or(MalformedNote(
            "a signature is shorter than its 4-byte key ID",
        ))?;
        if signature.is_empty() {
            return Err(MalformedNote("a signature is empty after its key ID"));
        }
        // "Verifiers MUST ignore signatures from unknown keys, even if they share a
        // name or ID (but not both) with a known key."
        if name != verifier.name || u32::from_be_bytes(*key_id) != verifier.key_id {
            continue;
        }
        // "If the key name and ID match a known key, verifiers MUST verify the
        // signature. If a signature from a known key fails to verify, clients SHOULD
        // reject the whole note." verify_strict also refuses malleable signatures.
        if !verifier.verifies(text.as_bytes(), signature) {
            return Err(CheckpointError::BadSignature {
                name: verifier.name.clone(),
                key_id: verifier.key_id,
            });
        }
        verified = true;
    }
    if !verified {
        return Err(CheckpointError::NoSignatureByKey {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, root_from_leaves};

    const ORIGIN: &str = "lastmile.example/audit";

    fn checkpoint() -> Checkpoint {
        let leaves: Vec<Hash> = (0u8..4).map(|i| leaf_hash(&[i])).collect();
        Checkpoint {
            origin: ORIGIN.to_string(),
            size: 4,
            root: root_from_leaves(&leaves),
            time: 1_700_000_000,
        }
    }

    fn signer() -> NoteSigner {
        NoteSigner::from_bytes(ORIGIN, [7; 32]).unwrap()
    }

    fn body_err(text: &str) -> BodyError {
        match Checkpoint::parse_body(text) {
            Err(CheckpointError::MalformedBody(e)) => e,
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    const ROOT_B64: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn body_is_the_exact_text() {
        let cp = Checkpoint {
            origin: "example.com/log".to_string(),
            size: 20852163,
            root: Hash([0; 32]),
            time: 42,
        };
        assert_eq!(
            cp.body(),
            format!("example.com/log\n20852163\n{ROOT_B64}\ntime 42\n")
        );
        assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp);
    }

    #[test]
    fn body_round_trips_extremes() {
        for (size, time) in [(0, 0), (u64::MAX, u64::MAX), (1, 9)] {
            let cp = Checkpoint {
                size,
                time,
                ..checkpoint()
            };
            assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp);
        }
    }

    #[test]
    fn sign_and_open_round_trip() {
        let cp = checkpoint();
        let signer = signer();
        let note = sign(&cp, &signer).unwrap();
        assert!(note.starts_with(&format!("{}\n\u{2014} {ORIGIN} ", cp.body())));
        assert!(note.ends_with('\n'));
        assert_eq!(open(&note, &signer.verifier()).unwrap(), cp);

        let generated = NoteSigner::generate(ORIGIN).unwrap();
        let note = sign(&cp, &generated).unwrap();
        assert_eq!(open(&note, &generated.verifier()).unwrap(), cp);
    }

    #[test]
    fn known_answer_note() {
        // The example in the module docs; Ed25519 is deterministic, so this pins the
        // exact bytes we produce.
        let want = "lastmile.example/audit\n4\n\
            m81RJAr0AFFo8DMSG6hb5abtTw5qX6wmIGZym4+/3ss=\ntime 1700000000\n\n\
            \u{2014} lastmile.example/audit CHG/pcoioqXweHW/NmJg7rUX7LIrNuvWCI9GpPgrIhLF4UXKl7apiAOs9kM//btl+FWR0QjcTTJLfJyE4sqBV0QK1wk=\n";
        assert_eq!(sign(&checkpoint(), &signer()).unwrap(), want);
        let vkey = "lastmile.example/audit+0871bfa5+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";
        assert_eq!(signer().verifier().to_string(), vkey);
        assert_eq!(open(want, &vkey.parse().unwrap()).unwrap(), checkpoint());
    }

    #[test]
    fn go_sumdb_note_reference_vector() {
        // From golang.org/x/mod/sumdb/note: the PeterNeumann key and its signed note.
        // Ed25519 is deterministic, so we must produce the same bytes.
        let skey = BASE64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        assert_eq!(skey[0], ED25519_ALGORITHM);
        let seed: [u8; 32] = skey[1..].try_into().unwrap();
        let signer = NoteSigner::from_bytes("PeterNeumann", seed).unwrap();
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        assert_eq!(signer.verifier().to_string(), vkey);
        assert_eq!(signer.key_id(), 0xc74f20a3);
        assert_eq!(NoteVerifier::parse(vkey).unwrap(), signer.verifier());

        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let want = format!(
            "{text}\n\u{2014} PeterNeumann \
             x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        assert_eq!(sign_text(text, &signer), want);
        assert_eq!(open_text(&want, &signer.verifier()).unwrap(), text);
        // It is a valid note but not a checkpoint.
        assert!(matches!(
            open(&want, &signer.verifier()),
            Err(CheckpointError::MalformedBody(BodyError::WrongLineCount {
                found: 2
            }))
        ));
    }

    #[test]
    fn any_change_to_the_body_breaks_the_signature() {
        let cp = checkpoint();
        let signer = signer();
        let note = sign(&cp, &signer).unwrap();
        let signature_block = note.strip_prefix(&cp.body()).unwrap();
        let changed = [
            Checkpoint {
                size: cp.size + 1,
                ..cp.clone()
            },
            Checkpoint {
                root: leaf_hash(b"other"),
                ..cp.clone()
            },
            Checkpoint {
                origin: "lastmile.example/other".to_string(),
                ..cp.clone()
            },
            Checkpoint {
                time: cp.time + 1,
                ..cp.clone()
            },
        ];
        for forged in changed {
            let forged_note = format!("{}{signature_block}", forged.body());
            assert_eq!(
                open(&forged_note, &signer.verifier()),
                Err(CheckpointError::BadSignature {
                    name: ORIGIN.to_string(),
                    key_id: signer.key_id()
                }),
                "{forged:?}"
            );
        }
    }

    #[test]
    fn same_name_other_key_is_not_our_signature() {
        let cp = checkpoint();
        let ours = signer();
        let impostor = NoteSigner::from_bytes(ORIGIN, [8; 32]).unwrap();
        assert_ne!(ours.key_id(), impostor.key_id());
        let note = sign(&cp, &impostor).unwrap();
        assert_eq!(
            open(&note, &ours.verifier()),
            Err(CheckpointError::NoSignatureByKey {
                name: ORIGIN.to_string(),
                key_id: ours.key_id()
            })
        );
    }

    #[test]
    fn same_key_other_name_is_not_our_signature() {
        let cp = checkpoint();
        let ours = signer();
        let renamed = NoteSigner::from_bytes("lastmile.example/renamed", [7; 32]).unwrap();
        let note = sign(&cp, &renamed).unwrap();
        assert!(matches!(
            open(&note, &ours.verifier()),
            Err(CheckpointError::NoSignatureByKey { .. })
        ));
    }

    #[test]
    fn other_signatures_are_ignored() {
        let cp = checkpoint();
        let ours = signer();
        let witness = NoteSigner::from_bytes("witness.example/w1", [9; 32]).unwrap();
        let note = sign(&cp, &ours).unwrap();
        let witness_note = sign(&cp, &witness).unwrap();
        let witness_line = witness_note
            .strip_prefix(&format!("{}\n", cp.body()))
            .unwrap();
        let cosigned = format!("{note}{witness_line}");
        assert_eq!(open(&cosigned, &ours.verifier()).unwrap(), cp);
        assert_eq!(open(&cosigned, &witness.verifier()).unwrap(), cp);

        // An unknown key whose ID collides with ours but whose name differs: ignored.
        let (_, blob) = witness_line.trim_end().rsplit_once(' ').unwrap();
        let mut bytes = BASE64.decode(blob).unwrap();
        bytes[..4].copy_from_slice(&ours.key_id().to_be_bytes());
        let colliding = format!("\u{2014} witness.example/w2 {}\n", BASE64.encode(&bytes));
        assert_eq!(
            open(&format!("{note}{colliding}"), &ours.verifier()).unwrap(),
            cp
        );
    }

    #[test]
    fn a_second_bad_signature_by_our_key_rejects_the_note() {
        let cp = checkpoint();
        let ours = signer();
        let note = sign(&cp, &ours).unwrap();
        let mut blob = ours.key_id().to_be_bytes().to_vec();
        blob.extend_from_slice(&[0; 64]);
        let bad_line = format!("\u{2014} {ORIGIN} {}\n", BASE64.encode(&blob));
        assert!(matches!(
            open(&format!("{note}{bad_line}"), &ours.verifier()),
            Err(CheckpointError::BadSignature { .. })
        ));
        // A matching key ID with a signature of the wrong length is a bad signature.
        let short = format!("\u{2014} {ORIGIN} {}\n", BASE64.encode(&blob[..40]));
        assert!(matches!(
            open(&format!("{}\n{short}", cp.body()), &ours.verifier()),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_notes() {
        let cp = checkpoint();
        let ours = signer();
        let v = ours.verifier();
        let note = sign(&cp, &ours).unwrap();
        let body = cp.body();
        let sig_line = note.strip_prefix(&format!("{body}\n")).unwrap().to_string();
        let blob = sig_line.trim_end().rsplit_once(' ').unwrap().1.to_string();
        let cases = [
            ("no blank line", format!("{body}{sig_line}")),
            ("no final newline", note.trim_end_matches('\n').to_string()),
            ("no signatures", format!("{body}\n")),
            ("hyphen not em dash", format!("{body}\n- {ORIGIN} {blob}\n")),
            (
                "no space after dash",
                format!("{body}\n\u{2014}{ORIGIN} {blob}\n"),
            ),
            (
                "no space after name",
                format!("{body}\n\u{2014} {ORIGIN}\n"),
            ),
            ("bad base64", format!("{body}\n\u{2014} {ORIGIN} %%%%\n")),
            ("empty signature", format!("{body}\n\u{2014} {ORIGIN} \n")),
            ("short blob", format!("{body}\n\u{2014} {ORIGIN} AAAA\n")),
            ("name with plus", format!("{body}\n\u{2014} a+b {blob}\n")),
            ("control char", note.replacen("lastmile", "last\tmile", 1)),
            ("carriage return", note.replace('\n', "\r\n")),
            ("trailing blank line", format!("{note}\n")),
            (
                "too many signatures",
                format!("{note}{}", sig_line.repeat(MAX_SIGNATURES)),
            ),
        ];
        for (what, text) in cases {
            assert!(
                matches!(open(&text, &v), Err(CheckpointError::MalformedNote(_))),
                "{what}: {:?}",
                open(&text, &v)
            );
        }
    }

    #[test]
    fn signed_but_malformed_body() {
        let ours = signer();
        let note = sign_text("lastmile.example/audit\n4\n", &ours);
        assert_eq!(
            open(&note, &ours.verifier()),
            Err(CheckpointError::MalformedBody(BodyError::WrongLineCount {
                found: 2
            }))
        );
    }

    #[test]
    fn refuses_to_sign_an_ambiguous_origin() {
        let ours = signer();
        for (origin, want) in [
            ("", BodyError::EmptyOrigin),
            ("a\nb", BodyError::OriginControlCharacter),
        ] {
            let cp = Checkpoint {
                origin: origin.to_string(),
                ..checkpoint()
            };
            assert_eq!(sign(&cp, &ours), Err(CheckpointError::MalformedBody(want)));
        }
    }

    #[test]
    fn body_parse_errors() {
        let ok = |size: &str, root: &str, time: &str| format!("o\n{size}\n{root}\n{time}\n");
        assert_eq!(body_err("o\n1\nx\ntime 1"), BodyError::MissingFinalNewline);
        assert_eq!(body_err(""), BodyError::MissingFinalNewline);
        assert_eq!(
            body_err(&format!("o\n1\n{ROOT_B64}\n")),
            BodyError::WrongLineCount { found: 3 }
        );
        assert_eq!(
            body_err(&format!("{}junk\n", ok("1", ROOT_B64, "time 1"))),
            BodyError::WrongLineCount { found: 5 }
        );
        assert_eq!(
            body_err(&format!("{}\n", ok("1", ROOT_B64, "time 1"))),
            BodyError::WrongLineCount { found: 5 }
        );
        assert_eq!(
            body_err(&format!("\n1\n{ROOT_B64}\ntime 1\n")),
            BodyError::EmptyOrigin
        );
        assert_eq!(
            body_err(&format!("o\r\n1\n{ROOT_B64}\ntime 1\n")),
            BodyError::OriginControlCharacter
        );
        for size in [
            "",
            "01",
            "00",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1e3",
            "0x10",
            "18446744073709551616",
            "١",
        ] {
            assert_eq!(
                body_err(&ok(size, ROOT_B64, "time 1")),
                BodyError::NonCanonicalSize(size.to_string()),
                "{size:?}"
            );
        }
        assert_eq!(
            body_err(&ok("1", "", "time 1")),
            BodyError::WrongRootLength(0)
        );
        for root in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // missing padding
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", // non-zero trailing bits
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-=", // URL-safe alphabet
            " AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", // leading space
        ] {
            assert_eq!(
                body_err(&ok("1", root, "time 1")),
                BodyError::RootNotBase64(root.to_string()),
                "{root:?}"
            );
        }
        let short = BASE64.encode([0u8; 31]);
        assert_eq!(
            body_err(&ok("1", &short, "time 1")),
            BodyError::WrongRootLength(31)
        );
        let long = BASE64.encode([0u8; 33]);
        assert_eq!(
            body_err(&ok("1", &long, "time 1")),
            BodyError::WrongRootLength(33)
        );
        for line in ["", "1700000000", "Time 1", "time:1", "timestamp 1"] {
            assert_eq!(
                body_err(&ok("1", ROOT_B64, line)),
                BodyError::BadTimeLine(line.to_string()),
                "{line:?}"
            );
        }
        for time in ["", " 1", "01", "+1", "18446744073709551616"] {
            assert_eq!(
                body_err(&ok("1", ROOT_B64, &format!("time {time}"))),
                BodyError::NonCanonicalTime(time.to_string()),
                "{time:?}"
            );
        }
        assert!(Checkpoint::parse_body(&ok("0", ROOT_B64, "time 0")).is_ok());
    }

    #[test]
    fn verifier_key_text_round_trips() {
        let v = signer().verifier();
        let text = v.to_string();
        let (name, rest) = text.split_once('+').unwrap();
        let (id, key) = rest.split_once('+').unwrap();
        assert_eq!(name, ORIGIN);
        assert_eq!(id, format!("{:08x}", v.key_id()));
        assert_eq!(BASE64.decode(key).unwrap().len(), 33);
        assert_eq!(NoteVerifier::parse(&text).unwrap(), v);
        assert_eq!(text.parse::<NoteVerifier>().unwrap(), v);
        assert_eq!(
            NoteVerifier::new(ORIGIN, v.public_key().try_into().unwrap()).unwrap(),
            v
        );
        // Upper-case hex is accepted, as in Go's parser.
        let upper = format!("{name}+{}+{key}", id.to_uppercase());
        assert_eq!(NoteVerifier::parse(&upper).unwrap(), v);
    }

    #[test]
    fn verifier_key_parse_errors() {
        let v = signer().verifier();
        let text = v.to_string();
        let (name, rest) = text.split_once('+').unwrap();
        let (id, key) = rest.split_once('+').unwrap();
        let malformed = |s: &str| {
            assert!(
                matches!(
                    NoteVerifier::parse(s),
                    Err(CheckpointError::MalformedVerifierKey(_))
                ),
                "{s:?}: {:?}",
                NoteVerifier::parse(s)
            );
        };
        malformed(name);
        malformed(&format!("{name}+{id}"));
        malformed(&format!("{name}+{}+{key}", &id[..7]));
        malformed(&format!("{name}+{id}0+{key}"));
        malformed(&format!("{name}+-{}+{key}", &id[..7]));
        malformed(&format!("{name}+{id}+%%%%"));
        malformed(&format!("{name}+{id}+"));
        let mut key_data = BASE64.decode(key).unwrap();
        key_data.push(0);
        malformed(&format!("{name}+{id}+{}", BASE64.encode(&key_data)));

        key_data.pop();
        key_data[0] = 0x03;
        assert_eq!(
            NoteVerifier::parse(&format!("{name}+{id}+{}", BASE64.encode(&key_data))),
            Err(CheckpointError::UnsupportedAlgorithm(0x03))
        );
        // An Ed25519 key under the ECDSA type is not a P-256 SubjectPublicKeyInfo.
        key_data[0] = 0x02;
        assert!(matches!(
            NoteVerifier::parse(&format!("{name}+{id}+{}", BASE64.encode(&key_data))),
            Err(CheckpointError::InvalidPublicKey(_))
        ));
        assert!(matches!(
            NoteVerifier::parse(&format!("{name}+00000000+{key}")),
            Err(CheckpointError::KeyIdMismatch { stated: 0, .. })
        ));
        assert!(matches!(
            NoteVerifier::parse(&format!("other.example+{id}+{key}")),
            Err(CheckpointError::KeyIdMismatch { .. })
        ));
        assert!(matches!(
            NoteVerifier::parse(&format!("+{id}+{key}")),
            Err(CheckpointError::InvalidKeyName(_))
        ));
        assert!(matches!(
            NoteVerifier::parse(&format!("a b+{id}+{key}")),
            Err(CheckpointError::InvalidKeyName(_))
        ));
    }

    #[test]
    fn key_names_are_checked() {
        for bad in ["", "a b", "a+b", "a\u{00a0}b", "a\tb", "a\nb"] {
            assert!(
                matches!(
                    NoteSigner::from_bytes(bad, [1; 32]),
                    Err(CheckpointError::InvalidKeyName(_))
                ),
                "{bad:?}"
            );
            assert!(matches!(
                NoteVerifier::new(bad, signer().verifier().public_key().try_into().unwrap()),
                Err(CheckpointError::InvalidKeyName(_))
            ));
        }
    }

    #[test]
    fn signer_debug_hides_the_secret() {
        let s = signer();
        let debug = format!("{s:?}");
        assert!(debug.contains(ORIGIN));
        assert!(!debug.contains("secret"));
        assert!(!debug.contains(&format!("{:?}", s.to_bytes())));
        assert_eq!(
            NoteSigner::from_bytes(ORIGIN, s.to_bytes())
                .unwrap()
                .key_id(),
            s.key_id()
        );
    }

    /// A note made outside this crate (Python's `cryptography`, ECDSA P-256 over
    /// SHA-256, DER signature; key ID SHA-256 of the SPKI) opens with the verifier key
    /// text made the same way: signature type 0x02 as c2sp.org/signed-note defines it.
    #[test]
    fn an_ecdsa_p256_note_signed_elsewhere_opens() {
        let vkey = "lastmile.example/audit+4ea046cc+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCHk498ji20a7KM1t4uKC/6vUCOVzzvVNqUP5hnRkdyLSbw02p785X/QUmPGb/zjCzxS0D/jF8dZEXgzIxlSNgA=";
        let note = "lastmile.example/audit\n4\nm81RJAr0AFFo8DMSG6hb5abtTw5qX6wmIGZym4+/3ss=\ntime 1700000000\n\n\u{2014} lastmile.example/audit TqBGzDBFAiBT9Djuam1sfH3VAQRUJMOIN0QZ+9CRI/nHD+EynIIX9AIhAMwq1kJzt0GGcrVg1B0f6AbwyHDHS7Km6kUTemqUKGpq\n";
        let v = NoteVerifier::parse(vkey).unwrap();
        assert_eq!(v.algorithm(), ECDSA_ALGORITHM);
        assert_eq!(v.key_id(), 0x4ea0_46cc);
        assert_eq!(v.to_string(), vkey);
        let c = open(note, &v).unwrap();
        assert_eq!((c.size, c.time), (4, 1_700_000_000));
        // One changed character of the body, and the signature no longer verifies.
        let changed = note.replacen("\n4\n", "\n5\n", 1);
        assert!(matches!(
            open(&changed, &v),
            Err(CheckpointError::BadSignature { .. })
        ));
        // The Ed25519 key of the same name has another key ID: its verifier ignores
        // the ECDSA line and finds no signature of its own.
        assert!(matches!(
            open(note, &signer().verifier()),
            Err(CheckpointError::NoSignatureByKey { .. })
        ));
    }

    fn p256_key() -> (ring::signature::EcdsaKeyPair, Vec<u8>) {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        (key, spki)
    }

    /// What a KMS does: sign the body elsewhere; `attach_signature` makes the note and
    /// refuses a signature that is not the key's.
    #[test]
    fn attach_signature_checks_what_it_is_given() {
        let (key, spki) = p256_key();
        let v = NoteVerifier::ecdsa_p256(ORIGIN, &spki).unwrap();
        let c = checkpoint();
        let rng = ring::rand::SystemRandom::new();
        let sig = key.sign(&rng, c.body().as_bytes()).unwrap();
        let note = attach_signature(&c, &v, sig.as_ref()).unwrap();
        assert_eq!(open(&note, &v).unwrap(), c);
        assert_eq!(NoteVerifier::parse(&v.to_string()).unwrap(), v);
        // A signature over another body, or garbage, is refused, not published.
        let mut eight = checkpoint();
        eight.size = 8;
        let other = key.sign(&rng, eight.body().as_bytes()).unwrap();
        assert!(matches!(
            attach_signature(&c, &v, other.as_ref()),
            Err(CheckpointError::BadSignature { .. })
        ));
        assert!(attach_signature(&c, &v, b"not a signature").is_err());
        // Another key's signature does not verify under this key.
        let (other_key, _) = p256_key();
        let foreign = other_key.sign(&rng, c.body().as_bytes()).unwrap();
        assert!(attach_signature(&c, &v, foreign.as_ref()).is_err());
    }

    #[test]
    fn ecdsa_keys_that_are_not_p256_spki_are_refused() {
        let (_, spki) = p256_key();
        for bad in [&spki[..90], &spki[1..], b"".as_slice()] {
            assert!(matches!(
                NoteVerifier::ecdsa_p256(ORIGIN, bad),
                Err(CheckpointError::InvalidPublicKey(_))
            ));
        }
        // A compressed point (0x02/0x03 prefix) is not the form a KMS gives.
        let mut compressed = spki.clone();
        compressed[26] = 0x02;
        assert!(NoteVerifier::ecdsa_p256(ORIGIN, &compressed).is_err());
        // Signature types other than 0x01 and 0x02 are named in the refusal.
        let text = format!("{ORIGIN}+00000000+{}", BASE64.encode([0x04u8; 33]));
        assert!(matches!(
            NoteVerifier::parse(&text),
            Err(CheckpointError::UnsupportedAlgorithm(0x04))
        ));
    }
}

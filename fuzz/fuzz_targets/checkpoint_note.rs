//! Signed checkpoints as a verifier, a witness or the audit service reads them:
//! `Checkpoint::parse_body` (the tlog-checkpoint body), `open` (the signed note: signature
//! lines, key names and IDs, Ed25519 and ECDSA P-256 signatures) and `NoteVerifier::parse`
//! (the verifier key text).
//!
//! Input: the text, used as a note, as a body and, line by line, as verifier keys.
//!
//! Checked beyond "no panic":
//! - parsing is strict: a body that parses is exactly `Checkpoint::body()` of the result;
//! - a note that opens holds a body that parses to the same checkpoint;
//! - every checkpoint that parses, signed with our key, opens to itself with our verifier
//!   and does not open with a verifier of the same name and another key, nor an ECDSA one;
//! - a verifier key that parses prints as the same text (its key ID in lower case).

#![no_main]

use lastmile_audit_log::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier, open, sign};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "lastmile.example/audit";

/// A P-256 SubjectPublicKeyInfo (the curve's generator point as the key): a well-formed
/// type 0x02 key whose signatures the fuzzer can only try to forge.
const P256_SPKI: [u8; 91] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1,
    0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d,
    0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe,
    0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b,
    0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let signer = NoteSigner::from_bytes(NAME, [7; 32]).expect("a valid key name");
    let verifier = signer.verifier();
    let other = NoteSigner::from_bytes(NAME, [8; 32])
        .expect("a valid key name")
        .verifier();
    let ecdsa = NoteVerifier::ecdsa_p256(NAME, &P256_SPKI).expect("a P-256 key");

    // The text as a signed note.
    for v in [&verifier, &other, &ecdsa] {
        match open(text, v) {
            Ok(cp) => {
                let body = cp.body();
                assert!(text.starts_with(&body), "{cp:?} is not what was signed");
                assert_eq!(Checkpoint::parse_body(&body), Ok(cp));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    // The text as a body.
    if let Ok(cp) = Checkpoint::parse_body(text) {
        assert_eq!(
            cp.body(),
            text,
            "a body is accepted in a non-canonical form"
        );
        let note = sign(&cp, &signer).expect("a parsed checkpoint can be signed");
        assert_eq!(open(&note, &verifier), Ok(cp.clone()));
        for v in [&other, &ecdsa] {
            assert!(matches!(
                open(&note, v),
                Err(CheckpointError::NoSignatureByKey { .. })
            ));
        }
    }

    // Lines as verifier keys.
    for line in text.lines() {
        if let Ok(v) = NoteVerifier::parse(line) {
            // The key ID may be read in upper case; it is printed in lower case.
            let mut parts = line.splitn(3, '+');
            let (name, id, key) = (parts.next(), parts.next(), parts.next());
            let expected = format!(
                "{}+{}+{}",
                name.unwrap_or_default(),
                id.unwrap_or_default().to_ascii_lowercase(),
                key.unwrap_or_default()
            );
            assert_eq!(v.to_string(), expected);
            assert_eq!(NoteVerifier::parse(&v.to_string()), Ok(v));
        }
    }
});

//! RFC 9421 request signatures as the API verifies them: `httpsig::parse` (the RFC 8941
//! structured fields of Content-Digest, Signature-Input and Signature, the covered
//! components and parameters, the signature base) and `Signature::verify`.
//!
//! Input, as lines: method, target URI, Content-Digest, Signature-Input, Signature, then
//! the body (the rest, newlines included). A header line `-` is an absent header; a
//! Content-Digest line `auto` is the body's real digest, so the fuzzer gets past it.
//!
//! Checked beyond "no panic":
//! - what `parse` accepts is well formed: 1 to MAX_SIGNATURES signatures with non-empty
//!   nonce and keyid, each base one line per covered component plus `@signature-params`;
//!   verifying it with the device or session key never panics;
//! - round trip: signing the input's method, URI and body (its text also gives the nonce
//!   and the device keyid: `NONCE KEYID`) with two keys, whenever `sign` accepts them
//!   (it refuses what `parse` would), gives headers that `parse` accepts and whose
//!   signatures verify with the right key and not with the other one.

#![no_main]

use ed25519_dalek::SigningKey;
use lastmile_proto::httpsig::{
    self, LABEL_DEVICE, LABEL_SESSION, MAX_SIGNATURES, Request, SigError, Signer,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = lastmile_fuzz::lines(data, 6);
    let get = |i: usize| lines.get(i).map_or("", String::as_str);
    let header = |i: usize| match get(i) {
        "-" => None,
        s => Some(s),
    };
    let (method, uri, body) = (get(0), get(1), get(5).as_bytes());
    let digest = match get(2) {
        "auto" => Some(httpsig::content_digest(body)),
        "-" => None,
        s => Some(s.to_owned()),
    };
    let req = Request {
        method,
        target_uri: uri,
        body,
        content_digest: digest.as_deref(),
        signature_input: header(3),
        signature: header(4),
    };
    let device = SigningKey::from_bytes(&[7; 32]);
    let session = SigningKey::from_bytes(&[9; 32]);
    match httpsig::parse(&req) {
        Ok(sigs) => {
            assert!(!sigs.is_empty() && sigs.len() <= MAX_SIGNATURES);
            for sig in &sigs {
                assert!(!sig.nonce.is_empty() && !sig.keyid.is_empty());
                let base = sig.signature_base();
                assert_eq!(base.matches('\n').count(), 3, "{base:?}");
                assert!(base.contains("\n\"@signature-params\": ("), "{base:?}");
                let _ = sig.verify(&device.verifying_key());
                let _ = sig.verify(&session.verifying_key());
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.code());
        }
    }

    // Round trip, with the input's values where `sign` takes them: the method, the URI,
    // the body, and a nonce and device keyid from the body's text ("NONCE KEYID...").
    let text = get(5);
    let (nonce, keyid) = text.split_once(' ').unwrap_or((text, "dev-1"));
    let created = 1_700_000_000 + i64::try_from(data.len()).unwrap_or(0);
    let signers = [
        Signer {
            label: LABEL_DEVICE,
            keyid,
            key: &device,
        },
        Signer {
            label: LABEL_SESSION,
            keyid: "sess-1",
            key: &session,
        },
    ];
    let signed = match httpsig::sign(method, uri, body, created, nonce, &signers) {
        Ok(h) => h,
        Err(SigError::CannotSign { .. } | SigError::BadComponentValue { .. }) => return,
        Err(e) => panic!("sign failed unexpectedly: {e}"),
    };
    let req = Request {
        method,
        target_uri: uri,
        body,
        content_digest: Some(&signed.content_digest),
        signature_input: Some(&signed.signature_input),
        signature: Some(&signed.signature),
    };
    // `sign` refuses whatever `parse` would (an empty nonce or keyid, a header over
    // MAX_HEADER_LEN), so what it signs parses.
    let sigs = match httpsig::parse(&req) {
        Ok(s) => s,
        Err(e) => panic!("our own signature does not parse: {e}\n{signed:?}"),
    };
    assert_eq!(sigs.len(), 2);
    assert_eq!(
        (sigs[0].label.as_str(), sigs[0].keyid.as_str()),
        (LABEL_DEVICE, keyid)
    );
    assert_eq!((sigs[0].created, sigs[0].nonce.as_str()), (created, nonce));
    assert_eq!(sigs[1].label, LABEL_SESSION);
    assert_eq!(sigs[0].verify(&device.verifying_key()), Ok(()));
    assert_eq!(sigs[1].verify(&session.verifying_key()), Ok(()));
    assert!(sigs[0].verify(&session.verifying_key()).is_err());
});

//! Request signing: RFC 9421 HTTP Message Signatures (Ed25519 only) over an RFC 9530
//! `Content-Digest` (sha-256 only).
//!
//! Every API call after login carries two signatures over the same request: one by the
//! user's device key (label [`LABEL_DEVICE`]) and one by the session key (label
//! [`LABEL_SESSION`]). Both cover exactly [`COVERED`] and carry the parameters `created`,
//! `nonce`, `keyid` and `alg="ed25519"`. Covering `content-digest` binds the body through
//! its digest, so the signature itself stays independent of the body size.
//!
//! The sender calls [`sign`] and sends the three returned header values. The receiver
//! calls [`parse`], which checks everything that needs no key (the digest, the shape of
//! both signature headers, the covered components and parameters) and returns one
//! [`Signature`] per label; it then looks each `keyid` up and calls
//! [`Signature::verify`]. Freshness of `created` and replay of `nonce` are the caller's
//! business: this module has no clock and no memory.
//!
//! Structured fields (RFC 8941) are parsed and serialised with the `sfv` crate, in its
//! RFC 8941 mode, because RFC 9421 §4 and RFC 9530 §2 define these headers as RFC 8941
//! dictionaries.

use crate::error_code::ErrorCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sfv::{BareItem, Dictionary, FieldType as _, InnerList, Item, ListEntry, Parser, Version};
use sha2::{Digest as _, Sha256};

/// The label of the signature made with the user's device key.
pub const LABEL_DEVICE: &str = "device";
/// The label of the signature made with the session key.
pub const LABEL_SESSION: &str = "session";
/// The components every lastmile signature must cover.
pub const COVERED: &[&str] = &["@method", "@target-uri", "content-digest"];
/// The only signature algorithm lastmile accepts (RFC 9421 §3.3.6).
pub const ALG_ED25519: &str = "ed25519";

/// Name of the RFC 9530 header carrying the body digest.
pub const HEADER_CONTENT_DIGEST: &str = "Content-Digest";
/// Name of the RFC 9421 header carrying the covered components and parameters.
pub const HEADER_SIGNATURE_INPUT: &str = "Signature-Input";
/// Name of the RFC 9421 header carrying the signature bytes.
pub const HEADER_SIGNATURE: &str = "Signature";

/// Longest header value [`parse`] accepts, in bytes. Our own headers are a few hundred
/// bytes; the bound keeps a hostile peer from making us parse megabytes.
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Most signatures [`parse`] accepts in one request. We send two; a few spare leave room
/// for a proxy's own signature without letting a peer make us check hundreds.
pub const MAX_SIGNATURES: usize = 4;

/// The RFC 9530 §5 algorithm key for SHA-256.
const DIGEST_SHA256: &str = "sha-256";
/// Length of an Ed25519 signature (RFC 8032 §5.1.6: R || S).
const ED25519_SIG_LEN: usize = 64;

// Parameter names (RFC 9421 §2.3). `sfv::key_ref` is a const fn, so a typo here fails
// the build rather than a request.
const KEY_CREATED: &sfv::KeyRef = sfv::key_ref("created");
const KEY_EXPIRES: &sfv::KeyRef = sfv::key_ref("expires");
const KEY_NONCE: &sfv::KeyRef = sfv::key_ref("nonce");
const KEY_KEYID: &sfv::KeyRef = sfv::key_ref("keyid");
const KEY_ALG: &sfv::KeyRef = sfv::key_ref("alg");
const SF_ALG_ED25519: &sfv::StringRef = sfv::string_ref(ALG_ED25519);

/// Why a request could not be signed, or why a signed request was refused.
///
/// Each message says what is wrong and what the sender should do about it, because the
/// server returns it to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// A header the scheme needs is absent; the value is the header's name.
    #[error(
        "the request has no {0} header: every signed lastmile request must send \
         Content-Digest, Signature-Input and Signature"
    )]
    MissingHeader(&'static str),
    /// A header is present but is not what RFC 9421 / RFC 9530 / RFC 8941 say it must be.
    #[error("the {header} header is malformed: {why}")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The body hashes to something other than what Content-Digest says.
    #[error(
        "the body does not match Content-Digest: the request was changed in transit or \
         signed over a different body"
    )]
    DigestMismatch,
    /// Content-Digest names only algorithms we do not implement.
    #[error(
        "Content-Digest has no sha-256 digest: lastmile only checks sha-256 (RFC 9530), \
         so send `sha-256=:<base64 of the SHA-256 of the body>:`"
    )]
    UnsupportedDigest,
    /// A signature does not cover a component lastmile requires.
    #[error(
        "signature {label:?} does not cover {component:?}: lastmile signatures must cover \
         \"@method\" \"@target-uri\" \"content-digest\""
    )]
    MissingComponent {
        /// The signature's label.
        label: String,
        /// The component it lacks, one of [`COVERED`].
        component: &'static str,
    },
    /// A signature covers a component lastmile does not know how to reproduce.
    #[error(
        "signature {label:?} covers {component:?}, which lastmile does not sign over: \
         cover exactly \"@method\" \"@target-uri\" \"content-digest\", without component \
         parameters"
    )]
    UnexpectedComponent {
        /// The signature's label.
        label: String,
        /// The component identifier as it appeared (a name, or a description of the item).
        component: String,
    },
    /// A signature lacks a parameter lastmile requires.
    #[error(
        "signature {label:?} has no {param:?} parameter: lastmile signatures must carry \
         created, nonce, keyid and alg=\"ed25519\""
    )]
    MissingParam {
        /// The signature's label.
        label: String,
        /// The missing parameter.
        param: &'static str,
    },
    /// A signature names an algorithm other than ed25519.
    #[error("signature {label:?} uses alg={alg:?}: lastmile only accepts alg=\"ed25519\"")]
    UnsupportedAlg {
        /// The signature's label.
        label: String,
        /// The algorithm it named.
        alg: String,
    },
    /// A label appears in one of Signature-Input and Signature but not the other.
    #[error(
        "signature label {label:?} is missing from the {missing_from} header: \
         Signature-Input and Signature must name the same labels (RFC 9421 §4)"
    )]
    LabelMismatch {
        /// The unmatched label.
        label: String,
        /// The header that lacks it.
        missing_from: &'static str,
    },
    /// The signature does not verify with the key it was checked against.
    #[error(
        "signature {label:?} does not verify: it was made with another key, or the method, \
         target URI or Content-Digest differ from what was signed"
    )]
    BadSignature {
        /// The signature's label.
        label: String,
    },
    /// The method or target URI cannot be put on one line of a signature base.
    #[error("the request's {component} cannot be signed or verified: {why}")]
    BadComponentValue {
        /// `@method` or `@target-uri`.
        component: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The signer's inputs cannot be expressed in RFC 9421 headers.
    #[error("cannot sign the request: {why}")]
    CannotSign {
        /// What is wrong, naming the offending input.
        why: String,
    },
}

impl SigError {
    /// The API's error code for this refusal (the `error` of its 401 body): a missing
    /// signature, a changed body and a signature that does not verify each have their
    /// own, so a client can tell them apart; anything else about the headers' shape is
    /// `bad_signature_format`.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MissingHeader(_) => ErrorCode::SignatureMissing,
            Self::DigestMismatch => ErrorCode::BodyChanged,
            Self::BadSignature { .. } => ErrorCode::BadSignature,
            Self::Malformed { .. }
            | Self::UnsupportedDigest
            | Self::MissingComponent { .. }
            | Self::UnexpectedComponent { .. }
            | Self::MissingParam { .. }
            | Self::UnsupportedAlg { .. }
            | Self::LabelMismatch { .. }
            | Self::BadComponentValue { .. }
            // Only a signer makes this one; were it ever sent, its headers would be the
            // malformed ones.
            | Self::CannotSign { .. } => ErrorCode::BadSignatureFormat,
        }
    }
}

/// RFC 9530 `Content-Digest` field value for `body`: `sha-256=:<base64>:`.
///
/// RFC 9530 §2: a Dictionary keyed by algorithm (§5: `sha-256`) whose values are byte
/// sequences, which RFC 8941 §3.3.5 writes as standard base64 between colons.
#[must_use]
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "{DIGEST_SHA256}=:{}:",
        STANDARD.encode(Sha256::digest(body))
    )
}

/// One signer: the label its signature goes under, the key id the server looks its key
/// up by, and the key.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// The dictionary key in Signature-Input and Signature, e.g. [`LABEL_DEVICE`]. Must be
    /// an RFC 8941 key: lowercase letters, digits, `_`, `-`, `.`, `*`, starting with a
    /// letter or `*`.
    pub label: &'a str,
    /// The `keyid` parameter: printable ASCII.
    pub keyid: &'a str,
    /// The Ed25519 key that signs.
    pub key: &'a SigningKey,
}

/// The three header values to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Value of `Content-Digest`.
    pub content_digest: String,
    /// Value of `Signature-Input`.
    pub signature_input: String,
    /// Value of `Signature`.
    pub signature: String,
}

/// Signs a request with every signer (same created and nonce for all).
///
/// `method` is used as given (RFC 9421 §2.2.1: the method is case-sensitive, so send it
/// in uppercase as HTTP does); `target_uri` is the full target URI as the server will
/// rebuild it (`https://` + Host + path-and-query, RFC 9421 §2.2.2).
///
/// # Errors
///
/// [`SigError::CannotSign`] when there is no signer, more than [`MAX_SIGNATURES`], a
/// repeated or invalid label, a `keyid` or `nonce` that is empty or not printable ASCII,
/// a `created` outside RFC 8941's integer range, or headers longer than
/// [`MAX_HEADER_LEN`] (a long `nonce` or `keyid`); [`SigError::BadComponentValue`] when the
/// method is not an HTTP token or the URI is not visible ASCII. All of these are bugs in
/// the caller, but they are reported rather than turned into headers the server refuses.
pub fn sign(
    method: &str,
    target_uri: &str,
    body: &[u8],
    created: i64,
    nonce: &str,
    signers: &[Signer<'_>],
) -> Result<SignedHeaders, SigError> {
    check_method(method)?;
    check_target_uri(target_uri)?;
    if signers.is_empty() {
        return Err(cannot_sign("there is no signer".to_owned()));
    }
    if signers.len() > MAX_SIGNATURES {
        return Err(cannot_sign(format!(
            "{} signers, but a verifier accepts at most {MAX_SIGNATURES}",
            signers.len()
        )));
    }
    let created = sfv::Integer::try_from(created).map_err(|_| {
        cannot_sign(format!(
            "created={created} is outside the RFC 8941 integer range"
        ))
    })?;
    // `parse` refuses an empty nonce or keyid (RFC 9421 §2.3 leaves them free-form, but
    // an empty nonce defeats the caller's replay check and an empty keyid names no key),
    // so they are refused here rather than turned into headers no verifier takes.
    if nonce.is_empty() {
        return Err(cannot_sign(
            "the nonce is empty, which a verifier refuses: pass a fresh random value for \
             every request"
                .to_owned(),
        ));
    }
    let nonce = sfv::StringRef::from_str(nonce)
        .map_err(|e| cannot_sign(format!("nonce {nonce:?} is not an RFC 8941 string: {e}")))?;
    let content_digest = content_digest(body);

    let mut inputs = Dictionary::new();
    let mut signatures = Dictionary::new();
    for signer in signers {
        let label = sfv::KeyRef::from_str(signer.label).map_err(|e| {
            cannot_sign(format!(
                "label {:?} is not an RFC 8941 key (lowercase letters, digits, '_', '-', \
                 '.', '*', starting with a letter or '*'): {e}",
                signer.label
            ))
        })?;
        if inputs.contains_key(label) {
            return Err(cannot_sign(format!(
                "label {:?} is used by two signers",
                signer.label
            )));
        }
        if signer.keyid.is_empty() {
            return Err(cannot_sign(format!(
                "the keyid of signer {:?} is empty, which a verifier refuses: pass the id \
                 the server knows the key by",
                signer.label
            )));
        }
        let keyid = sfv::StringRef::from_str(signer.keyid).map_err(|e| {
            cannot_sign(format!(
                "keyid {:?} is not an RFC 8941 string: {e}",
                signer.keyid
            ))
        })?;
        let inner = lastmile_inner_list(created, nonce, keyid)?;
        let base = signature_base(
            &[
                ("@method", method),
                ("@target-uri", target_uri),
                ("content-digest", &content_digest),
            ],
            &serialize_inner_list(&inner),
        );
        let signature = ed25519_dalek::Signer::sign(signer.key, base.as_bytes());
        inputs.insert(label.to_owned(), ListEntry::InnerList(inner));
        signatures.insert(
            label.to_owned(),
            ListEntry::Item(Item::new(BareItem::ByteSequence(
                signature.to_bytes().to_vec(),
            ))),
        );
    }
    // Both dictionaries have at least one member, so serialisation yields Some.
    let empty = || cannot_sign("nothing to serialise".to_owned());
    let headers = SignedHeaders {
        content_digest,
        signature_input: inputs.serialize().ok_or_else(empty)?,
        signature: signatures.serialize().ok_or_else(empty)?,
    };
    // `parse` refuses a header over MAX_HEADER_LEN; only Signature-Input can get there,
    // through a long nonce or keyid.
    for (name, value) in [
        (HEADER_CONTENT_DIGEST, &headers.content_digest),
        (HEADER_SIGNATURE_INPUT, &headers.signature_input),
        (HEADER_SIGNATURE, &headers.signature),
    ] {
        if value.len() > MAX_HEADER_LEN {
            return Err(cannot_sign(format!(
                "the {name} header would be {} bytes long, but a verifier accepts at most \
                 {MAX_HEADER_LEN}: use a shorter nonce or keyid",
                value.len()
            )));
        }
    }
    Ok(headers)
}

fn cannot_sign(why: String) -> SigError {
    SigError::CannotSign { why }
}

/// The covered components in [`COVERED`] order with lastmile's parameters, in the order
/// `created`, `nonce`, `keyid`, `alg` (RFC 9421 §2.3 lets the signer pick any order; the
/// verifier takes whatever order the header has).
fn lastmile_inner_list(
    created: sfv::Integer,
    nonce: &sfv::StringRef,
    keyid: &sfv::StringRef,
) -> Result<InnerList, SigError> {
    let mut items = Vec::with_capacity(COVERED.len());
    for component in COVERED {
        let name = sfv::StringRef::from_str(component)
            .map_err(|e| cannot_sign(format!("component {component:?}: {e}")))?;
        items.push(Item::new(name));
    }
    let mut params = sfv::Parameters::new();
    params.insert(KEY_CREATED.to_owned(), BareItem::Integer(created));
    params.insert(KEY_NONCE.to_owned(), BareItem::from(nonce));
    params.insert(KEY_KEYID.to_owned(), BareItem::from(keyid));
    params.insert(KEY_ALG.to_owned(), BareItem::from(SF_ALG_ED25519));
    Ok(InnerList::with_params(items, params))
}

/// The canonical RFC 8941 §4.1.1.1 serialisation of an inner list with its parameters:
/// the `@signature-params` value (RFC 9421 §2.3) and the dictionary member value in
/// Signature-Input, which are the same string.
fn serialize_inner_list(inner: &InnerList) -> String {
    let mut out = String::new();
    {
        // A list with one member is serialised with no separator, so the buffer ends up
        // holding exactly that member.
        let mut list = sfv::ListSerializer::with_buffer(&mut out);
        let mut ser = list.inner_list();
        ser.items(&inner.items);
        let _ = ser.finish().parameters(&inner.params).finish();
        let _ = list.finish();
    }
    out
}

/// The signature base of RFC 9421 §2.5: for each covered component, in the order given,
/// the line `"<name>": <value>` followed by LF; then `"@signature-params": <params>` with
/// no trailing LF.
///
/// `components` holds (name, value) pairs whose names need no RFC 8941 escaping and
/// carry no component parameters, so `"<name>"` is their serialised identifier (§2.5
/// step 2.1). Values must not contain LF; callers check that.
fn signature_base(components: &[(&str, &str)], signature_params: &str) -> String {
    let mut base = String::new();
    for (name, value) in components {
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    base
}

/// RFC 9110 §9.1: a method is a token; RFC 9110 §5.6.2 lists `tchar`. Checking this also
/// guarantees the value cannot break the line structure of the signature base.
fn check_method(method: &str) -> Result<(), SigError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(SigError::BadComponentValue {
            component: "@method",
            why: "a method must be a non-empty HTTP token (RFC 9110 §9.1)",
        });
    }
    Ok(())
}

/// RFC 3986 URIs are visible ASCII with no spaces; refusing anything else keeps LF and
/// other control characters out of the signature base.
fn check_target_uri(uri: &str) -> Result<(), SigError> {
    if uri.is_empty() || !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SigError::BadComponentValue {
            component: "@target-uri",
            why: "the target URI must be non-empty visible ASCII without spaces (RFC 3986)",
        });
    }
    Ok(())
}

/// What the verifier was given.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request method, as received.
    pub method: &'a str,
    /// The full target URI: `https://` + Host + path-and-query.
    pub target_uri: &'a str,
    /// The body, as received (after any transfer decoding, before any interpretation).
    pub body: &'a [u8],
    /// The `Content-Digest` header value, if present.
    pub content_digest: Option<&'a str>,
    /// The `Signature-Input` header value, if present.
    pub signature_input: Option<&'a str>,
    /// The `Signature` header value, if present.
    pub signature: Option<&'a str>,
}

/// One parsed signature, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The label it was sent under.
    pub label: String,
    /// Its `keyid` parameter: which key to verify it with.
    pub keyid: String,
    /// Its `created` parameter, in Unix seconds.
    pub created: i64,
    /// Its `nonce` parameter.
    pub nonce: String,
    /// Its `expires` parameter, in Unix seconds, if the signer set one (lastmile's signer
    /// does not). RFC 9421 §2.3 defines it; the caller, which has the clock, enforces it.
    pub expires: Option<i64>,
    /// The signature base this signature must be over.
    base: String,
    /// The 64 signature bytes.
    signature: ed25519_dalek::Signature,
}

impl Signature {
    /// Checks the signature over its base with `key`.
    ///
    /// Uses `verify_strict`, which on top of RFC 8032 §5.1.7 refuses small-order keys and
    /// signature points, so no weak key can produce a signature that verifies for many
    /// messages.
    ///
    /// # Errors
    ///
    /// [`SigError::BadSignature`] when the signature does not verify with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), SigError> {
        key.verify_strict(self.base.as_bytes(), &self.signature)
            .map_err(|_| SigError::BadSignature {
                label: self.label.clone(),
            })
    }

    /// The RFC 9421 §2.5 signature base the signature is checked over; for logging why a
    /// signature failed.
    #[must_use]
    pub fn signature_base(&self) -> &str {
        &self.base
    }
}

/// Parses and checks everything but the keys.
///
/// Checks that the Content-Digest header is present and matches the body (sha-256;
/// other algorithms are ignored, and a header with no sha-256 is refused), that
/// Signature-Input and Signature are well-formed RFC 8941 dictionaries with the same
/// labels (at most [`MAX_SIGNATURES`], each header at most [`MAX_HEADER_LEN`] bytes), that
/// each signature covers exactly [`COVERED`] (in any order, each once, no component
/// parameters) and has `created`, `nonce`, `keyid` and `alg="ed25519"` (an absent `alg` is
/// refused, though RFC 9421 makes it optional). Other parameters, such as `expires` and
/// `tag`, are allowed and are part of what is signed.
///
/// Returns one [`Signature`] per label, in the order of Signature-Input.
///
/// The `@signature-params` line of each base is the member's inner list re-serialised
/// canonically (RFC 8941 §4.1), not the bytes as received. RFC 9421 §2.3 defines the value
/// as that serialisation, and re-serialising means we only ever sign over text we
/// produced ourselves; a sender that serialises canonically, as every RFC 8941
/// implementation does, is unaffected.
///
/// # Errors
///
/// A [`SigError`] naming the first problem found.
pub fn parse(req: &Request<'_>) -> Result<Vec<Signature>, SigError> {
    let digest_value = header(req.content_digest, HEADER_CONTENT_DIGEST)?;
    let input_value = header(req.signature_input, HEADER_SIGNATURE_INPUT)?;
    let signature_value = header(req.signature, HEADER_SIGNATURE)?;
    check_method(req.method)?;
    check_target_uri(req.target_uri)?;
    check_content_digest(digest_value, req.body)?;

    let inputs = parse_dictionary(input_value, HEADER_SIGNATURE_INPUT)?;
    let signatures = parse_dictionary(signature_value, HEADER_SIGNATURE)?;
    for label in inputs.keys() {
        if !signatures.contains_key(label) {
            return Err(SigError::LabelMismatch {
                label: label.as_str().to_owned(),
                missing_from: HEADER_SIGNATURE,
            });
        }
    }
    for label in signatures.keys() {
        if !inputs.contains_key(label) {
            return Err(SigError::LabelMismatch {
                label: label.as_str().to_owned(),
                missing_from: HEADER_SIGNATURE_INPUT,
            });
        }
    }

    // RFC 9421 §2.1: a field's component value is its value with leading and trailing
    // whitespace (OWS: SP and HTAB) removed.
    let digest_component = digest_value.trim_matches([' ', '\t']);
    let mut parsed = Vec::with_capacity(inputs.len());
    for (label, input) in &inputs {
        let signature = signatures
            .get(label)
            .ok_or_else(|| SigError::LabelMismatch {
                label: label.as_str().to_owned(),
                missing_from: HEADER_SIGNATURE,
            })?;
        parsed.push(parse_one(
            label.as_str(),
            input,
            signature,
            req.method,
            req.target_uri,
            digest_component,
        )?);
    }
    Ok(parsed)
}

/// The header's value, or why it cannot be used: absent, or over [`MAX_HEADER_LEN`].
fn header<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, SigError> {
    let value = value.ok_or(SigError::MissingHeader(name))?;
    if value.len() > MAX_HEADER_LEN {
        return Err(SigError::Malformed {
            header: name,
            why: format!(
                "it is {} bytes long; at most {MAX_HEADER_LEN} are accepted",
                value.len()
            ),
        });
    }
    Ok(value)
}

/// Parses an RFC 8941 dictionary with 1 to [`MAX_SIGNATURES`] members.
fn parse_dictionary(value: &str, name: &'static str) -> Result<Dictionary, SigError> {
    let dict: Dictionary = Parser::new(value)
        .with_version(Version::Rfc8941)
        .parse()
        .map_err(|e| SigError::Malformed {
            header: name,
            why: format!("not an RFC 8941 dictionary: {e}"),
        })?;
    if dict.is_empty() {
        return Err(SigError::Malformed {
            header: name,
            why: "it names no signature".to_owned(),
        });
    }
    if dict.len() > MAX_SIGNATURES {
        return Err(SigError::Malformed {
            header: name,
            why: format!(
                "it names {} signatures; at most {MAX_SIGNATURES} are accepted",
                dict.len()
            ),
        });
    }
    Ok(dict)
}

/// RFC 9530 §2: Content-Digest is a dictionary of algorithm -> byte sequence. We check
/// the sha-256 member and ignore the others (§2 lets a recipient ignore any digest);
/// without a sha-256 member there is nothing we can check.
fn check_content_digest(value: &str, body: &[u8]) -> Result<(), SigError> {
    let malformed = |why: String| SigError::Malformed {
        header: HEADER_CONTENT_DIGEST,
        why,
    };
    let dict: Dictionary = Parser::new(value)
        .with_version(Version::Rfc8941)
        .parse()
        .map_err(|e| malformed(format!("not an RFC 8941 dictionary: {e}")))?;
    if dict.is_empty() {
        return Err(malformed("it names no digest".to_owned()));
    }
    let expected = match dict.get(DIGEST_SHA256) {
        None => return Err(SigError::UnsupportedDigest),
        Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        })) => bytes,
        Some(_) => {
            return Err(malformed(
                "the sha-256 member is not a byte sequence (`sha-256=:<base64>:`)".to_owned(),
            ));
        }
    };
    if expected.len() != 32 {
        return Err(malformed(format!(
            "the sha-256 digest is {} bytes long; SHA-256 gives 32",
            expected.len()
        )));
    }
    if Sha256::digest(body).as_slice() != expected.as_slice() {
        return Err(SigError::DigestMismatch);
    }
    Ok(())
}

/// Checks one Signature-Input member and its Signature member and builds the base.
fn parse_one(
    label: &str,
    input: &ListEntry,
    signature: &ListEntry,
    method: &str,
    target_uri: &str,
    content_digest: &str,
) -> Result<Signature, SigError> {
    let malformed_input = |why: String| SigError::Malformed {
        header: HEADER_SIGNATURE_INPUT,
        why: format!("signature {label:?}: {why}"),
    };
    // RFC 9421 §4.1: each member is an inner list of component identifiers with the
    // signature parameters as the list's parameters.
    let ListEntry::InnerList(inner) = input else {
        return Err(malformed_input(
            "the member must be an inner list of covered components (RFC 9421 §4.1)".to_owned(),
        ));
    };

    // The components, in the order listed: that order is the order of the base's lines
    // (RFC 9421 §2.5).
    let mut components: Vec<(&str, &str)> = Vec::with_capacity(COVERED.len());
    for item in &inner.items {
        let BareItem::String(name) = &item.bare_item else {
            return Err(malformed_input(
                "a component identifier must be a string (RFC 9421 §2)".to_owned(),
            ));
        };
        let name = name.as_str();
        if name == "@signature-params" {
            // RFC 9421 §2.3: it must not be listed among the covered components.
            return Err(malformed_input(
                "\"@signature-params\" must not be listed as a covered component (RFC 9421 §2.3)"
                    .to_owned(),
            ));
        }
        if !item.params.is_empty() {
            return Err(SigError::UnexpectedComponent {
                label: label.to_owned(),
                component: format!("{name} with component parameters"),
            });
        }
        let value = match name {
            "@method" => method,
            "@target-uri" => target_uri,
            "content-digest" => content_digest,
            _ => {
                return Err(SigError::UnexpectedComponent {
                    label: label.to_owned(),
                    component: name.to_owned(),
                });
            }
        };
        if components.iter().any(|(seen, _)| *seen == name) {
            // RFC 9421 §2.5: a component identifier must not appear twice.
            return Err(malformed_input(format!(
                "{name:?} is listed twice (RFC 9421 §2.5)"
            )));
        }
        components.push((name, value));
    }
    if let Some(component) = COVERED
        .iter()
        .find(|c| !components.iter().any(|(name, _)| name == *c))
    {
        return Err(SigError::MissingComponent {
            label: label.to_owned(),
            component,
        });
    }

    // RFC 9421 §2.3: created and expires are Integers; nonce, keyid and alg are Strings.
    let params = &inner.params;
    let int_param = |key: &'static sfv::KeyRef| -> Result<Option<i64>, SigError> {
        match params.get(key) {
            None => Ok(None),
            Some(BareItem::Integer(v)) => Ok(Some(i64::from(*v))),
            Some(_) => Err(malformed_input(format!(
                "parameter {} must be an integer (RFC 9421 §2.3)",
                key.as_str()
            ))),
        }
    };
    let str_param = |key: &'static sfv::KeyRef| -> Result<Option<String>, SigError> {
        match params.get(key) {
            None => Ok(None),
            Some(BareItem::String(v)) => Ok(Some(v.as_str().to_owned())),
            Some(_) => Err(malformed_input(format!(
                "parameter {} must be a string (RFC 9421 §2.3)",
                key.as_str()
            ))),
        }
    };
    let missing = |param: &'static str| SigError::MissingParam {
        label: label.to_owned(),
        param,
    };
    let created = int_param(KEY_CREATED)?.ok_or_else(|| missing("created"))?;
    let expires = int_param(KEY_EXPIRES)?;
    let nonce = str_param(KEY_NONCE)?.ok_or_else(|| missing("nonce"))?;
    let keyid = str_param(KEY_KEYID)?.ok_or_else(|| missing("keyid"))?;
    let alg = str_param(KEY_ALG)?.ok_or_else(|| missing("alg"))?;
    if nonce.is_empty() {
        return Err(malformed_input("the nonce is empty".to_owned()));
    }
    if keyid.is_empty() {
        return Err(malformed_input("the keyid is empty".to_owned()));
    }
    if alg != ALG_ED25519 {
        return Err(SigError::UnsupportedAlg {
            label: label.to_owned(),
            alg,
        });
    }

    // RFC 9421 §4.2: each Signature member is a byte sequence; Ed25519 gives 64 bytes
    // (RFC 9421 §3.3.6). Member parameters are not defined, so any are ignored.
    let malformed_sig = |why: &str| SigError::Malformed {
        header: HEADER_SIGNATURE,
        why: format!("signature {label:?}: {why}"),
    };
    let ListEntry::Item(Item {
        bare_item: BareItem::ByteSequence(bytes),
        ..
    }) = signature
    else {
        return Err(malformed_sig(
            "the member must be a byte sequence (`:<base64>:`, RFC 9421 §4.2)",
        ));
    };
    let bytes: [u8; ED25519_SIG_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| malformed_sig("an ed25519 signature is 64 bytes"))?;

    let base = signature_base(&components, &serialize_inner_list(inner));
    Ok(Signature {
        label: label.to_owned(),
        keyid,
        created,
        nonce,
        expires,
        base,
        signature: ed25519_dalek::Signature::from_bytes(&bytes),
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    const METHOD: &str = "POST";
    const URI: &str = "https://api.example.test/v1/things?x=1";
    const BODY: &[u8] = br#"{"hello":"world"}"#;
    const CREATED: i64 = 1_700_000_000;
    const NONCE: &str = "n0nce-123";

    fn device_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn session_key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn signed() -> SignedHeaders {
        let (d, s) = (device_key(), session_key());
        sign(
            METHOD,
            URI,
            BODY,
            CREATED,
            NONCE,
            &[
                Signer {
                    label: LABEL_DEVICE,
                    keyid: "dev-1",
                    key: &d,
                },
                Signer {
                    label: LABEL_SESSION,
                    keyid: "sess-1",
                    key: &s,
                },
            ],
        )
        .unwrap()
    }

    fn request<'a>(h: &'a SignedHeaders) -> Request<'a> {
        Request {
            method: METHOD,
            target_uri: URI,
            body: BODY,
            content_digest: Some(&h.content_digest),
            signature_input: Some(&h.signature_input),
            signature: Some(&h.signature),
        }
    }

    /// Parses and verifies the first signature with the device key.
    fn check_device(req: &Request<'_>) -> Result<(), SigError> {
        let sigs = parse(req)?;
        sigs[0].verify(&device_key().verifying_key())
    }

    #[test]
    fn content_digest_of_empty_body() {
        // SHA-256 of the empty string, base64.
        assert_eq!(
            content_digest(b""),
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
    }

    #[test]
    fn round_trip_with_two_signers() {
        let h = signed();
        assert_eq!(
            h.signature_input,
            "device=(\"@method\" \"@target-uri\" \"content-digest\");created=1700000000;\
             nonce=\"n0nce-123\";keyid=\"dev-1\";alg=\"ed25519\", \
             session=(\"@method\" \"@target-uri\" \"content-digest\");created=1700000000;\
             nonce=\"n0nce-123\";keyid=\"sess-1\";alg=\"ed25519\""
        );
        let sigs = parse(&request(&h)).unwrap();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0].label, LABEL_DEVICE);
        assert_eq!(sigs[0].keyid, "dev-1");
        assert_eq!(sigs[1].label, LABEL_SESSION);
        assert_eq!(sigs[1].keyid, "sess-1");
        for sig in &sigs {
            assert_eq!(sig.created, CREATED);
            assert_eq!(sig.nonce, NONCE);
            assert_eq!(sig.expires, None);
        }
        sigs[0].verify(&device_key().verifying_key()).unwrap();
        sigs[1].verify(&session_key().verifying_key()).unwrap();
        // Keys are not interchangeable.
        assert_eq!(
            sigs[0].verify(&session_key().verifying_key()),
            Err(SigError::BadSignature {
                label: LABEL_DEVICE.to_owned()
            })
        );
        assert_eq!(
            sigs[0].signature_base(),
            format!(
                "\"@method\": POST\n\"@target-uri\": {URI}\n\"content-digest\": {}\n\
                 \"@signature-params\": (\"@method\" \"@target-uri\" \"content-digest\");\
                 created=1700000000;nonce=\"n0nce-123\";keyid=\"dev-1\";alg=\"ed25519\"",
                content_digest(BODY)
            )
        );
    }

    /// RFC 9421 Appendix B.1.4 test-key-ed25519, as PKCS#8 and SPKI DER in base64. Both
    /// encodings end in the 32 raw key bytes (RFC 8410 §7, §10.1).
    const RFC_PRIVATE_PKCS8: &str =
        "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const RFC_PUBLIC_SPKI: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

    fn last_32(b64: &str) -> [u8; 32] {
        let der = STANDARD.decode(b64).unwrap();
        der[der.len() - 32..].try_into().unwrap()
    }

    #[test]
    fn rfc9421_b26_ed25519_example() {
        // RFC 9421 Appendix B.2.6 (line wrapping of RFC 8792 undone).
        let input = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \
                     \"content-type\" \"content-length\");created=1618884473;\
                     keyid=\"test-key-ed25519\"";
        let expected_signature = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9\
                                  EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
        let expected_base = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
                             \"@method\": POST\n\
                             \"@path\": /foo\n\
                             \"@authority\": example.com\n\
                             \"content-type\": application/json\n\
                             \"content-length\": 18\n\
                             \"@signature-params\": (\"date\" \"@method\" \"@path\" \
                             \"@authority\" \"content-type\" \"content-length\");\
                             created=1618884473;keyid=\"test-key-ed25519\"";

        // Our canonical re-serialisation of the member is the spec's @signature-params.
        let dict = parse_dictionary(input, HEADER_SIGNATURE_INPUT).unwrap();
        let ListEntry::InnerList(inner) = &dict["sig-b26"] else {
            panic!("not an inner list");
        };
        let params = serialize_inner_list(inner);
        assert_eq!(
            format!("sig-b26={params}"),
            input,
            "canonical form differs from the RFC's"
        );

        let base = signature_base(
            &[
                ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                ("@method", "POST"),
                ("@path", "/foo"),
                ("@authority", "example.com"),
                ("content-type", "application/json"),
                ("content-length", "18"),
            ],
            &params,
        );
        assert_eq!(base, expected_base);

        // The spec's signature verifies with the spec's public key.
        let public = VerifyingKey::from_bytes(&last_32(RFC_PUBLIC_SPKI)).unwrap();
        let sig_bytes: [u8; 64] = STANDARD
            .decode(expected_signature)
            .unwrap()
            .try_into()
            .unwrap();
        let signature = Signature {
            label: "sig-b26".to_owned(),
            keyid: "test-key-ed25519".to_owned(),
            created: 1_618_884_473,
            nonce: String::new(),
            expires: None,
            base: base.clone(),
            signature: ed25519_dalek::Signature::from_bytes(&sig_bytes),
        };
        signature.verify(&public).unwrap();

        // Ed25519 is deterministic, so the spec's private key gives the very same bytes.
        let private = SigningKey::from_bytes(&last_32(RFC_PRIVATE_PKCS8));
        assert_eq!(private.verifying_key(), public);
        let ours = ed25519_dalek::Signer::sign(&private, base.as_bytes());
        assert_eq!(STANDARD.encode(ours.to_bytes()), expected_signature);
    }

    #[test]
    fn changed_body_is_digest_mismatch() {
        let h = signed();
        let req = Request {
            body: br#"{"hello":"mallory"}"#,
            ..request(&h)
        };
        assert_eq!(parse(&req), Err(SigError::DigestMismatch));
    }

    #[test]
    fn changed_body_and_digest_is_bad_signature() {
        let h = signed();
        let body: &[u8] = b"other";
        let digest = content_digest(body);
        let req = Request {
            body,
            content_digest: Some(&digest),
            ..request(&h)
        };
        assert!(matches!(
            check_device(&req),
            Err(SigError::BadSignature { label }) if label == LABEL_DEVICE
        ));
    }

    #[test]
    fn changed_method_is_bad_signature() {
        let h = signed();
        let req = Request {
            method: "PUT",
            ..request(&h)
        };
        assert!(matches!(
            check_device(&req),
            Err(SigError::BadSignature { .. })
        ));
        // Methods are case-sensitive (RFC 9421 §2.2.1).
        let req = Request {
            method: "post",
            ..request(&h)
        };
        assert!(matches!(
            check_device(&req),
            Err(SigError::BadSignature { .. })
        ));
    }

    #[test]
    fn changed_uri_is_bad_signature() {
        let h = signed();
        for uri in [
            "https://api.example.test/v1/things?x=2",
            "https://evil.example.test/v1/things?x=1",
            "http://api.example.test/v1/things?x=1",
        ] {
            let req = Request {
                target_uri: uri,
                ..request(&h)
            };
            assert!(
                matches!(check_device(&req), Err(SigError::BadSignature { .. })),
                "{uri}"
            );
        }
    }

    #[test]
    fn signature_by_another_key_is_bad_signature() {
        let other = SigningKey::from_bytes(&[42; 32]);
        let h = sign(
            METHOD,
            URI,
            BODY,
            CREATED,
            NONCE,
            &[Signer {
                label: LABEL_DEVICE,
                keyid: "dev-1",
                key: &other,
            }],
        )
        .unwrap();
        assert_eq!(
            check_device(&request(&h)),
            Err(SigError::BadSignature {
                label: LABEL_DEVICE.to_owned()
            })
        );
    }

    #[test]
    fn changed_parameters_are_bad_signature() {
        // The parameters are part of the base: a replayed signature with a fresh
        // created or nonce does not verify.
        let h = signed();
        for (from, to) in [
            ("created=1700000000", "created=1700000001"),
            ("nonce=\"n0nce-123\"", "nonce=\"n0nce-124\""),
            ("keyid=\"dev-1\"", "keyid=\"dev-2\""),
        ] {
            let input = h.signature_input.replacen(from, to, 1);
            let req = Request {
                signature_input: Some(&input),
                ..request(&h)
            };
            assert!(
                matches!(check_device(&req), Err(SigError::BadSignature { .. })),
                "{to}"
            );
        }
    }

    #[test]
    fn missing_component_is_refused() {
        let h = signed();
        for (component, covered) in [
            ("content-digest", "(\"@method\" \"@target-uri\")"),
            ("@method", "(\"@target-uri\" \"content-digest\")"),
            ("@target-uri", "(\"content-digest\" \"@method\")"),
            ("@method", "()"),
        ] {
            let input = h.signature_input.replacen(
                "(\"@method\" \"@target-uri\" \"content-digest\")",
                covered,
                1,
            );
            let req = Request {
                signature_input: Some(&input),
                ..request(&h)
            };
            assert_eq!(
                parse(&req),
                Err(SigError::MissingComponent {
                    label: LABEL_DEVICE.to_owned(),
                    component,
                }),
                "{covered}"
            );
        }
    }

    #[test]
    fn extra_or_repeated_component_is_refused() {
        let h = signed();
        let covered = "(\"@method\" \"@target-uri\" \"content-digest\")";
        let cases = [
            "(\"@method\" \"@target-uri\" \"content-digest\" \"date\")",
            "(\"@method\" \"@target-uri\" \"content-digest\";sf)",
        ];
        for extra in cases {
            let input = h.signature_input.replacen(covered, extra, 1);
            let req = Request {
                signature_input: Some(&input),
                ..request(&h)
            };
            assert!(
                matches!(parse(&req), Err(SigError::UnexpectedComponent { .. })),
                "{extra}"
            );
        }
        for bad in [
            "(\"@method\" \"@method\" \"@target-uri\" \"content-digest\")",
            "(\"@method\" \"@target-uri\" \"content-digest\" \"@signature-params\")",
            "(\"@method\" @target-uri \"content-digest\")",
        ] {
            let input = h.signature_input.replacen(covered, bad, 1);
            let req = Request {
                signature_input: Some(&input),
                ..request(&h)
            };
            assert!(
                matches!(
                    parse(&req),
                    Err(SigError::Malformed {
                        header: HEADER_SIGNATURE_INPUT,
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn components_in_another_order_verify() {
        // Any order is fine; the base follows the order in Signature-Input.
        let key = device_key();
        let digest = content_digest(BODY);
        let params = "(\"content-digest\" \"@target-uri\" \"@method\");created=1700000000;\
                      keyid=\"dev-1\";nonce=\"n\";alg=\"ed25519\"";
        let base = signature_base(
            &[
                ("content-digest", &digest),
                ("@target-uri", URI),
                ("@method", METHOD),
            ],
            params,
        );
        let sig = ed25519_dalek::Signer::sign(&key, base.as_bytes());
        let input = format!("device={params}");
        let signature = format!("device=:{}:", STANDARD.encode(sig.to_bytes()));
        let req = Request {
            method: METHOD,
            target_uri: URI,
            body: BODY,
            content_digest: Some(&digest),
            signature_input: Some(&input),
            signature: Some(&signature),
        };
        let sigs = parse(&req).unwrap();
        assert_eq!(sigs[0].signature_base(), base);
        sigs[0].verify(&key.verifying_key()).unwrap();
    }

    #[test]
    fn non_canonical_whitespace_still_verifies() {
        // We re-serialise the member canonically, so optional whitespace the sender's
        // stack added between members or inside the list does not matter.
        let h = signed();
        let input = format!(
            "  {}",
            h.signature_input
                .replace("(\"@method\" ", "(  \"@method\"   ")
                .replace(", session=", " ,   session=")
        );
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        check_device(&req).unwrap();
    }

    #[test]
    fn wrong_or_missing_alg_is_refused() {
        let h = signed();
        let input = h
            .signature_input
            .replacen("alg=\"ed25519\"", "alg=\"rsa-pss-sha512\"", 1);
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        assert_eq!(
            parse(&req),
            Err(SigError::UnsupportedAlg {
                label: LABEL_DEVICE.to_owned(),
                alg: "rsa-pss-sha512".to_owned(),
            })
        );
        let input = h.signature_input.replacen(";alg=\"ed25519\"", "", 1);
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        assert_eq!(
            parse(&req),
            Err(SigError::MissingParam {
                label: LABEL_DEVICE.to_owned(),
                param: "alg",
            })
        );
        // alg as a token, not a string, is malformed.
        let input = h
            .signature_input
            .replacen("alg=\"ed25519\"", "alg=ed25519", 1);
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        assert!(matches!(parse(&req), Err(SigError::Malformed { .. })));
    }

    #[test]
    fn missing_params_are_refused() {
        let h = signed();
        for (cut, param) in [
            (";created=1700000000", "created"),
            (";nonce=\"n0nce-123\"", "nonce"),
            (";keyid=\"dev-1\"", "keyid"),
        ] {
            let input = h.signature_input.replacen(cut, "", 1);
            let req = Request {
                signature_input: Some(&input),
                ..request(&h)
            };
            assert_eq!(
                parse(&req),
                Err(SigError::MissingParam {
                    label: LABEL_DEVICE.to_owned(),
                    param,
                })
            );
        }
        let input = h
            .signature_input
            .replacen("created=1700000000", "created=\"1700000000\"", 1);
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        assert!(matches!(parse(&req), Err(SigError::Malformed { .. })));
    }

    #[test]
    fn expires_is_reported_and_signed() {
        let h = signed();
        let input = h.signature_input.replacen(
            ";alg=\"ed25519\"",
            ";alg=\"ed25519\";expires=1700000300",
            1,
        );
        let req = Request {
            signature_input: Some(&input),
            ..request(&h)
        };
        let sigs = parse(&req).unwrap();
        assert_eq!(sigs[0].expires, Some(1_700_000_300));
        // It was not in what the signer signed, so the signature no longer verifies.
        assert!(sigs[0].verify(&device_key().verifying_key()).is_err());
    }

    #[test]
    fn missing_headers_are_named() {
        let h = signed();
        let cases = [
            (
                Request {
                    content_digest: None,
                    ..request(&h)
                },
                HEADER_CONTENT_DIGEST,
            ),
            (
                Request {
                    signature_input: None,
                    ..request(&h)
                },
                HEADER_SIGNATURE_INPUT,
            ),
            (
                Request {
                    signature: None,
                    ..request(&h)
                },
                HEADER_SIGNATURE,
            ),
        ];
        for (req, name) in cases {
            assert_eq!(parse(&req), Err(SigError::MissingHeader(name)));
        }
    }

    #[test]
    fn garbage_headers_are_malformed() {
        let h = signed();
        let garbage = [
            "",
            "   ",
            "!!!",
            "device=(",
            "device=\"unterminated",
            "a=1,,b=2",
            "Device=1",
            "device=:not base64!:",
        ];
        for g in garbage {
            let cases = [
                (
                    Request {
                        content_digest: Some(g),
                        ..request(&h)
                    },
                    HEADER_CONTENT_DIGEST,
                ),
                (
                    Request {
                        signature_input: Some(g),
                        ..request(&h)
                    },
                    HEADER_SIGNATURE_INPUT,
                ),
                (
                    Request {
                        signature: Some(g),
                        ..request(&h)
                    },
                    HEADER_SIGNATURE,
                ),
            ];
            for (req, name) in cases {
                assert!(
                    matches!(parse(&req), Err(SigError::Malformed { header, .. }) if header == name),
                    "{name}: {g:?} gave {:?}",
                    parse(&req)
                );
            }
        }
    }

    #[test]
    fn wrong_member_shapes_are_malformed() {
        let h = signed();
        let sig_cases = [
            "device=:AAAA:, session=:AAAA:".to_owned(),
            "device=(1 2), session=:AAAA:".to_owned(),
            "device=?1, session=?1".to_owned(),
        ];
        for s in &sig_cases {
            let req = Request {
                signature: Some(s),
                ..request(&h)
            };
            assert!(
                matches!(
                    parse(&req),
                    Err(SigError::Malformed {
                        header: HEADER_SIGNATURE,
                        ..
                    })
                ),
                "{s}"
            );
        }
        let input = "device=1, session=2";
        let req = Request {
            signature_input: Some(input),
            ..request(&h)
        };
        assert!(matches!(
            parse(&req),
            Err(SigError::Malformed {
                header: HEADER_SIGNATURE_INPUT,
                ..
            })
        ));
    }

    #[test]
    fn bounds_are_enforced() {
        let h = signed();
        let long = format!(
            "{}, x=\"{}\"",
            h.signature_input,
            "a".repeat(MAX_HEADER_LEN)
        );
        let req = Request {
            signature_input: Some(&long),
            ..request(&h)
        };
        assert!(matches!(
            parse(&req),
            Err(SigError::Malformed {
                header: HEADER_SIGNATURE_INPUT,
                ..
            })
        ));
        let many = (0..=MAX_SIGNATURES)
            .map(|i| format!("s{i}=:AAAA:"))
            .collect::<Vec<_>>()
            .join(", ");
        let req = Request {
            signature: Some(&many),
            ..request(&h)
        };
        assert!(matches!(
            parse(&req),
            Err(SigError::Malformed {
                header: HEADER_SIGNATURE,
                ..
            })
        ));
    }

    #[test]
    fn label_mismatch_is_refused() {
        let h = signed();
        let one = signed_single(LABEL_DEVICE);
        // Signature-Input has device and session, Signature only device.
        let req = Request {
            signature: Some(&one.signature),
            ..request(&h)
        };
        assert_eq!(
            parse(&req),
            Err(SigError::LabelMismatch {
                label: LABEL_SESSION.to_owned(),
                missing_from: HEADER_SIGNATURE,
            })
        );
        // And the other way round.
        let req = Request {
            signature_input: Some(&one.signature_input),
            ..request(&h)
        };
        assert_eq!(
            parse(&req),
            Err(SigError::LabelMismatch {
                label: LABEL_SESSION.to_owned(),
                missing_from: HEADER_SIGNATURE_INPUT,
            })
        );
    }

    fn signed_single(label: &str) -> SignedHeaders {
        let d = device_key();
        sign(
            METHOD,
            URI,
            BODY,
            CREATED,
            NONCE,
            &[Signer {
                label,
                keyid: "dev-1",
                key: &d,
            }],
        )
        .unwrap()
    }

    #[test]
    fn digest_algorithms() {
        let h = signed();
        let sha512_only = "sha-512=:AAAA:";
        let req = Request {
            content_digest: Some(sha512_only),
            ..request(&h)
        };
        assert_eq!(parse(&req), Err(SigError::UnsupportedDigest));

        let short = "sha-256=:AAAA:";
        let req = Request {
            content_digest: Some(short),
            ..request(&h)
        };
        assert!(matches!(parse(&req), Err(SigError::Malformed { .. })));

        // Another algorithm next to sha-256 is ignored for the digest check, but the
        // header as a whole is a covered component, so the signature no longer verifies.
        let both = format!("sha-512=:AAAA:, {}", h.content_digest);
        let req = Request {
            content_digest: Some(&both),
            ..request(&h)
        };
        assert!(matches!(
            check_device(&req),
            Err(SigError::BadSignature { .. })
        ));

        // Surrounding whitespace is not part of the component value (RFC 9421 §2.1).
        let padded = format!("  {}\t", h.content_digest);
        let req = Request {
            content_digest: Some(&padded),
            ..request(&h)
        };
        check_device(&req).unwrap();
    }

    #[test]
    fn sign_refuses_bad_input() {
        let d = device_key();
        let signer = |label| Signer {
            label,
            keyid: "k",
            key: &d,
        };
        let ok = [signer(LABEL_DEVICE)];
        assert!(matches!(
            sign(METHOD, URI, BODY, CREATED, NONCE, &[]),
            Err(SigError::CannotSign { .. })
        ));
        assert!(matches!(
            sign(
                METHOD,
                URI,
                BODY,
                CREATED,
                NONCE,
                &[signer("device"), signer("device")]
            ),
            Err(SigError::CannotSign { .. })
        ));
        assert!(matches!(
            sign(METHOD, URI, BODY, CREATED, NONCE, &[signer("Device")]),
            Err(SigError::CannotSign { .. })
        ));
        assert!(matches!(
            sign(METHOD, URI, BODY, CREATED, "nonce\u{e9}", &ok),
            Err(SigError::CannotSign { .. })
        ));
        assert!(matches!(
            sign(METHOD, URI, BODY, i64::MAX, NONCE, &ok),
            Err(SigError::CannotSign { .. })
        ));
        assert!(matches!(
            sign("PO ST", URI, BODY, CREATED, NONCE, &ok),
            Err(SigError::BadComponentValue {
                component: "@method",
                ..
            })
        ));
        assert!(matches!(
            sign(
                METHOD,
                "https://x/\n\"@method\": GET",
                BODY,
                CREATED,
                NONCE,
                &ok
            ),
            Err(SigError::BadComponentValue {
                component: "@target-uri",
                ..
            })
        ));
        // A nonce that needs escaping is fine and round-trips.
        let nonce = "a \"quoted\" \\ nonce";
        let h = sign(METHOD, URI, BODY, CREATED, nonce, &ok).unwrap();
        let sigs = parse(&request(&h)).unwrap();
        assert_eq!(sigs[0].nonce, nonce);
        sigs[0].verify(&d.verifying_key()).unwrap();
    }

    #[test]
    fn line_injection_in_request_is_refused() {
        let h = signed();
        let req = Request {
            target_uri: "https://x/\n\"@method\": GET",
            ..request(&h)
        };
        assert!(matches!(
            parse(&req),
            Err(SigError::BadComponentValue { .. })
        ));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert_eq!(
            SigError::DigestMismatch.to_string(),
            "the body does not match Content-Digest: the request was changed in transit or \
             signed over a different body"
        );
        assert!(
            SigError::MissingHeader(HEADER_SIGNATURE)
                .to_string()
                .contains("no Signature header")
        );
    }

    /// Found by fuzzing (fuzz/corpus/httpsig/regression-sign-empty-nonce): `sign` took an
    /// empty nonce (or keyid) and made headers that `parse` refuses ("the nonce is empty"),
    /// where its documentation promises to report such input rather than sign it. The same
    /// for a nonce or keyid so long that Signature-Input is over `MAX_HEADER_LEN`.
    #[test]
    fn sign_refuses_what_parse_refuses() {
        let d = device_key();
        let long = "n".repeat(MAX_HEADER_LEN);
        for (nonce, keyid) in [
            ("", "dev-1"),
            (NONCE, ""),
            (long.as_str(), "dev-1"),
            (NONCE, long.as_str()),
        ] {
            let signer = Signer {
                label: LABEL_DEVICE,
                keyid,
                key: &d,
            };
            match sign(METHOD, URI, BODY, CREATED, nonce, &[signer]) {
                Err(SigError::CannotSign { .. }) => {}
                Ok(h) => panic!(
                    "signed with nonce {nonce:?}, keyid {keyid:?}: {}",
                    h.signature_input
                ),
                Err(e) => panic!("{e}"),
            }
        }
        // The message says what is wrong and what to pass instead.
        let e = sign(METHOD, URI, BODY, CREATED, "", &[signer_with(&d, "k")]).unwrap_err();
        assert!(e.to_string().contains("nonce is empty"), "{e}");
        let e = sign(METHOD, URI, BODY, CREATED, NONCE, &[signer_with(&d, "")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("keyid of signer \"device\" is empty"),
            "{e}"
        );
    }

    fn signer_with<'a>(key: &'a SigningKey, keyid: &'a str) -> Signer<'a> {
        Signer {
            label: LABEL_DEVICE,
            keyid,
            key,
        }
    }
}

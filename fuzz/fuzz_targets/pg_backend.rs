//! The server's direction of a PostgreSQL connection, as the gateway reads it: the
//! upstream login (`auth::Authenticator`: cleartext, MD5, SCRAM-SHA-256(-PLUS) with the
//! server-first and server-final messages), then the relay's framing and
//! `message::parse_backend`; and `auth::tls_server_end_point` on the server's certificate.
//!
//! Input: one flag byte, then the server's bytes (or, with flag bit 2, a certificate).
//! - bit 0: the gateway has TLS upstream (channel binding `tls-server-end-point`);
//! - bit 2: the rest is a DER certificate for `tls_server_end_point`;
//! - bits 3-7: the read size of the chunked relay.
//!
//! The SCRAM client nonce is random, so a fuzzer could never echo it: every `@` in an
//! AuthenticationSASLContinue body is replaced by the nonce the gateway sent. An iteration
//! count above 64 is not fed (PBKDF2 would make the run slow, not find more).
//!
//! Checked beyond "no panic": relaying in reads of any size frames exactly as one read;
//! the messages the gateway also builds itself (AuthenticationOk, ParameterStatus,
//! ReadyForQuery, BackendKeyData) are rebuilt byte for byte from what was decoded.

#![no_main]

use lastmile_postgres::auth::{
    AuthStep, Authenticator, ChannelBindingPolicy, Credentials, tls_server_end_point,
};
use lastmile_postgres::frame::{self, FrameError, Limits, Scanner, Step};
use lastmile_postgres::message::{self, AuthRequest, Backend, parse_backend};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// The gateway's choice (`gateway/postgres/relay.rs`).
fn backend_inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'C' | b'I' | b'E' | b'Z' | b'G' | b'H' | b'W' | b'c' | b's' | b'K'
    )
}

const MAX_ITERATIONS: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    if flags & 4 != 0 {
        if let Some(hash) = tls_server_end_point(data) {
            assert!(
                matches!(hash.len(), 28 | 32 | 48 | 64),
                "{} bytes",
                hash.len()
            );
        }
        return;
    }
    let policy = if flags & 1 == 0 {
        ChannelBindingPolicy::None
    } else {
        ChannelBindingPolicy::TlsServerEndPoint(vec![0x5a; 32])
    };
    let rest = login(data, policy);
    let read_size = usize::from(flags >> 3) + 1;
    let whole = relay(rest, rest.len().max(1));
    let chunked = relay(rest, read_size);
    assert_eq!(
        whole, chunked,
        "reads of {read_size} bytes frame differently"
    );
});

/// The login as `gateway/postgres/login.rs` runs it: every message whole, until
/// AuthenticationOk and ReadyForQuery; returns the bytes after that.
fn login(stream: &[u8], policy: ChannelBindingPolicy) -> &[u8] {
    let mut auth = Authenticator::new(
        Credentials {
            user: "fuzz".to_owned(),
            password: Zeroizing::new(b"pencil".to_vec()),
        },
        policy,
    );
    let mut nonce: Option<Vec<u8>> = None;
    let mut scanner = Scanner::new(Limits::default(), |_| true);
    let mut pos = 0;
    let mut done = false;
    loop {
        let rest = &stream[pos..];
        let Ok(Step::Message { tag, len }) = scanner.next(rest) else {
            return rest;
        };
        let msg = &rest[..len];
        pos += len;
        let Ok(parsed) = parse_backend(tag, frame::body(msg)) else {
            return &stream[pos..];
        };
        check_rebuilt(&parsed, msg);
        match parsed {
            Backend::Authentication(request) if !done => {
                let spliced;
                let request = match (request, &nonce) {
                    (AuthRequest::SaslContinue(data), Some(n)) => {
                        spliced = splice_nonce(data, n);
                        if too_many_iterations(&spliced) {
                            return &stream[pos..];
                        }
                        AuthRequest::SaslContinue(&spliced)
                    }
                    (other, _) => other,
                };
                match auth.feed(&request) {
                    Ok(AuthStep::Send(reply)) => {
                        if matches!(request, AuthRequest::Sasl { .. }) {
                            nonce = client_nonce(&reply);
                            assert!(nonce.is_some(), "no nonce in {reply:?}");
                        }
                    }
                    Ok(AuthStep::Wait) => {}
                    Ok(AuthStep::Done) => done = true,
                    Err(e) => {
                        let _ = e.to_string();
                        return &stream[pos..];
                    }
                }
            }
            Backend::ReadyForQuery { .. } if done => return &stream[pos..],
            Backend::ErrorResponse(_) => return &stream[pos..],
            _ => {}
        }
    }
}

/// `r=` of the client-first-message inside a SASLInitialResponse.
fn client_nonce(msg: &[u8]) -> Option<Vec<u8>> {
    let at = msg.windows(2).position(|w| w == b"r=")?;
    let nonce = msg.get(at + 2..)?;
    let end = nonce.iter().position(|&b| b == b',').unwrap_or(nonce.len());
    Some(nonce.get(..end)?.to_vec())
}

fn splice_nonce(data: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + nonce.len());
    for &b in data {
        if b == b'@' {
            out.extend_from_slice(nonce);
        } else {
            out.push(b);
        }
    }
    out
}

fn too_many_iterations(server_first: &[u8]) -> bool {
    String::from_utf8_lossy(server_first)
        .split(',')
        .filter_map(|a| a.strip_prefix("i="))
        .any(|i| i.parse::<u64>().map_or(true, |i| i > MAX_ITERATIONS))
}

/// The messages the gateway writes itself must come out of its builders exactly as a
/// server sent them.
fn check_rebuilt(parsed: &Backend<'_>, msg: &[u8]) {
    let rebuilt = match parsed {
        Backend::Authentication(AuthRequest::Ok) => message::authentication_ok(),
        Backend::ParameterStatus { name, value } => message::parameter_status(name, value),
        Backend::ReadyForQuery { status } => message::ready_for_query(*status),
        Backend::BackendKeyData(key) => key.encode_backend_key_data(),
        Backend::ErrorResponse(e) | Backend::NoticeResponse(e) => {
            for (code, value) in &e.fields {
                assert_ne!(*code, 0);
                assert!(!value.contains('\0'));
            }
            return;
        }
        _ => return,
    };
    assert_eq!(rebuilt, msg, "{parsed:?} rebuilds differently");
}

type Relayed = (Vec<(bool, u8, Vec<u8>)>, Vec<u8>, Option<FrameError>);

/// The relay towards the client, in reads of `read_size` bytes: (inspected?, tag, bytes)
/// per message, the bytes forwarded, the error it stopped at.
fn relay(stream: &[u8], read_size: usize) -> Relayed {
    let mut scanner = Scanner::new(Limits::default(), backend_inspected);
    let mut seen: Vec<(bool, u8, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in stream.chunks(read_size) {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match scanner.next(rest) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Pass { tag, .. }) => seen.push((false, tag, Vec::new())),
                Ok(Step::Forward(n)) => {
                    assert!(n > 0 && n <= rest.len());
                    match seen.last_mut() {
                        Some((false, _, bytes)) => bytes.extend_from_slice(&rest[..n]),
                        _ => panic!("Forward outside a passed message"),
                    }
                    pos += n;
                }
                Ok(Step::Message { tag, len }) => {
                    assert!(len >= frame::HEADER_LEN && len <= rest.len());
                    let msg = &rest[..len];
                    // What the statement log is given: decoding must not depend on reads.
                    let _ = parse_backend(tag, frame::body(msg));
                    seen.push((true, tag, msg.to_vec()));
                    pos += len;
                }
                Err(e) => {
                    out.extend_from_slice(&buf[..pos]);
                    return (seen, out, Some(e));
                }
            }
        }
        out.extend_from_slice(&buf[..pos]);
        buf.drain(..pos);
    }
    (seen, out, None)
}

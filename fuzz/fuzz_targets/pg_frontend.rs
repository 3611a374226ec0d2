//! The client's direction of a PostgreSQL connection, as the gateway reads it: start-up
//! packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), then typed messages
//! framed by `frame::Scanner` and decoded by `message::parse_frontend`.
//!
//! Input: one byte choosing the read size of the chunked relay, then the client's bytes.
//!
//! Checked beyond "no panic":
//! - a start-up packet is refused or accepted whole: every shorter prefix needs more bytes;
//!   a StartupMessage re-encodes to one that parses back to the same parameters;
//! - relaying in reads of any size gives the same messages and the same forwarded bytes
//!   as one read of everything (the framing does not depend on where reads end);
//! - every frontend message that decodes is re-encoded by postgres-protocol's encoders
//!   byte for byte.

#![no_main]

use bytes::{BufMut, BytesMut};
use lastmile_postgres::frame::{self, FrameError, Limits, Scanner, Step};
use lastmile_postgres::message::{Frontend, parse_frontend};
use lastmile_postgres::startup::{
    MAX_STARTUP_PACKET, PROTOCOL_OPTION_PREFIX, StartupPacket, parse_startup,
};
use libfuzzer_sys::fuzz_target;
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

/// The gateway's choice (`gateway/postgres/relay.rs`): the messages the statement log reads.
fn frontend_inspected(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' | b'c' | b'f')
}

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, data)) = data.split_first() else {
        return;
    };
    let Some(messages) = startup_phase(data) else {
        return;
    };
    let read_size = usize::from(read_size % 64) + 1;
    let whole = relay(messages, messages.len().max(1), frontend_inspected);
    let chunked = relay(messages, read_size, frontend_inspected);
    assert_eq!(
        whole, chunked,
        "reads of {read_size} bytes frame differently"
    );
    decode_all(messages);
});

/// Parses start-up packets as the gateway does until the StartupMessage; returns the bytes
/// after it, or None when the connection ends in this phase.
fn startup_phase(mut buf: &[u8]) -> Option<&[u8]> {
    loop {
        let (packet, n) = parse_startup(buf).ok()??;
        assert!(
            (8..=MAX_STARTUP_PACKET).contains(&n) && n <= buf.len(),
            "{n}"
        );
        for cut in [0, 1, 3, 4, 5, 7, 8, n / 2, n - 1] {
            if cut < n {
                let prefix = buf.get(..cut).unwrap_or_default();
                assert_eq!(
                    parse_startup(prefix),
                    Ok(None),
                    "a {cut}-byte prefix of a {n}-byte packet"
                );
            }
        }
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {}
            StartupPacket::Cancel(key) => {
                assert_eq!(
                    key.encode_cancel_request(),
                    buf.get(..n).unwrap_or_default()
                );
                return None;
            }
            StartupPacket::Startup(m) => {
                assert!(m.user().is_some_and(|u| !u.is_empty()));
                let upstream = m.encode();
                let Ok(Some((StartupPacket::Startup(again), len))) = parse_startup(&upstream)
                else {
                    panic!("the upstream StartupMessage does not parse back: {upstream:?}");
                };
                assert_eq!(len, upstream.len());
                assert_eq!(again.minor, 0);
                let kept: Vec<_> = m
                    .params
                    .iter()
                    .filter(|(k, _)| !k.starts_with(PROTOCOL_OPTION_PREFIX))
                    .cloned()
                    .collect();
                assert_eq!(again.params, kept);
                assert!(!again.needs_negotiation());
                return buf.get(n..);
            }
        }
        buf = buf.get(n..)?;
    }
}

/// What a relay saw: per message ("pass"/"msg", tag, its bytes), the bytes it forwarded,
/// and the framing error it stopped at.
type Relayed = (
    Vec<(&'static str, u8, Vec<u8>)>,
    Vec<u8>,
    Option<FrameError>,
);

/// Drives a Scanner the way the gateway's relay does, in reads of `read_size` bytes.
fn relay(stream: &[u8], read_size: usize, inspect: fn(u8) -> bool) -> Relayed {
    let mut scanner = Scanner::new(Limits::default(), inspect);
    let mut seen: Vec<(&'static str, u8, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in stream.chunks(read_size) {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match scanner.next(rest) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Pass { tag, len }) => {
                    assert!(len >= frame::HEADER_LEN);
                    seen.push(("pass", tag, Vec::new()));
                }
                Ok(Step::Forward(n)) => {
                    assert!(n > 0 && n <= rest.len(), "forward {n} of {}", rest.len());
                    match seen.last_mut() {
                        Some(("pass", _, bytes)) => bytes.extend_from_slice(&rest[..n]),
                        _ => panic!("Forward outside a passed message"),
                    }
                    pos += n;
                }
                Ok(Step::Message { tag, len }) => {
                    assert!(len >= frame::HEADER_LEN && len <= rest.len());
                    assert_eq!(rest[0], tag);
                    seen.push(("msg", tag, rest[..len].to_vec()));
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

/// Frames every message whole and decodes it; what decodes must be what postgres-protocol
/// would have encoded.
fn decode_all(stream: &[u8]) {
    let mut scanner = Scanner::new(Limits::default(), |_| true);
    let mut pos = 0;
    while let Ok(Step::Message { tag, len }) = scanner.next(&stream[pos..]) {
        let msg = &stream[pos..pos + len];
        pos += len;
        let Ok(parsed) = parse_frontend(tag, frame::body(msg)) else {
            continue;
        };
        if let Some(encoded) = reencode(&parsed, msg) {
            assert_eq!(
                encoded, msg,
                "postgres-protocol encodes {parsed:?} differently"
            );
        }
    }
}

fn reencode(parsed: &Frontend<'_>, msg: &[u8]) -> Option<Vec<u8>> {
    let mut b = BytesMut::new();
    let ok = match parsed {
        Frontend::Query { text } => frontend::query(text, &mut b).is_ok(),
        Frontend::Parse {
            statement,
            text,
            param_types,
        } => frontend::parse(statement, text, param_types.iter().copied(), &mut b).is_ok(),
        Frontend::Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        } => frontend::bind(
            portal,
            statement,
            param_formats.iter().copied(),
            params.iter().copied(),
            |p, buf| {
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(match p {
                    Some(v) => {
                        buf.put_slice(v);
                        IsNull::No
                    }
                    None => IsNull::Yes,
                })
            },
            result_formats.iter().copied(),
            &mut b,
        )
        .is_ok(),
        Frontend::Execute { portal, max_rows } => {
            frontend::execute(portal, *max_rows, &mut b).is_ok()
        }
        Frontend::Close { kind, name } => frontend::close(*kind, name, &mut b).is_ok(),
        Frontend::Sync => {
            frontend::sync(&mut b);
            true
        }
        Frontend::Flush => {
            frontend::flush(&mut b);
            true
        }
        Frontend::Terminate => {
            frontend::terminate(&mut b);
            true
        }
        Frontend::CopyDone => {
            frontend::copy_done(&mut b);
            true
        }
        Frontend::CopyFail { message } => frontend::copy_fail(message, &mut b).is_ok(),
        Frontend::CopyData { len } => {
            assert_eq!(*len, frame::body(msg).len());
            return None;
        }
        Frontend::Other { .. } => return None,
    };
    assert!(ok, "postgres-protocol cannot encode {parsed:?}");
    Some(b.to_vec())
}

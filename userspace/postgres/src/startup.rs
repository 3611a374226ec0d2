//! The untyped packets a client sends before the session starts (§55.2.1, §55.7):
//! StartupMessage, SSLRequest, GSSENCRequest and CancelRequest, and the
//! NegotiateProtocolVersion answer.
//!
//! These packets have no type byte: an Int32 length (counting itself) and an Int32 code that
//! is either a protocol version or one of three magic request codes.

use thiserror::Error;

use crate::wire::{Reader, be_i32, begin, finish, put_cstr};

/// The largest startup packet accepted, in bytes including the length field: the server's own
/// `MAX_STARTUP_PACKET_LENGTH` (src/include/libpq/pqcomm.h), so nothing a real server would
/// take is refused and a client cannot make the gateway buffer more.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// The most parameters a StartupMessage may carry. psql sends about six; a few dozen `-c`
/// settings in `PGOPTIONS` still fit. The packet size bounds memory anyway; this bounds the
/// work of looking parameters up and what is written to the audit log.
pub const MAX_STARTUP_PARAMS: usize = 64;

/// The smallest startup packet: the length and the code.
const MIN_STARTUP_PACKET: usize = 8;

/// 1234.5678, 1234.5679, 1234.5680 (§55.7 CancelRequest, SSLRequest, GSSENCRequest): chosen
/// so as never to be a protocol version.
const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;

/// The only protocol major version spoken (§55.1: version 3.0; 2.0 is gone since PG 14).
pub const PROTOCOL_MAJOR: u16 = 3;

/// The newest minor version of protocol 3 the gateway speaks.
pub const PROTOCOL_MINOR: u16 = 0;

/// Startup parameter names with this prefix are protocol options, not run-time settings
/// (§55.2.1); a server that does not know one answers with NegotiateProtocolVersion.
pub const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// One packet of the start-up phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage: protocol version and parameters.
    Startup(StartupMessage),
    /// SSLRequest: the client asks for TLS; the answer is one byte, `S` or `N`.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption; the answer is one byte.
    GssEncRequest,
    /// CancelRequest: sent on a new connection to cancel a query on another one.
    Cancel(CancelKey),
}

/// A StartupMessage (§55.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Always 3.
    pub major: u16,
    /// The minor version the client asked for; the gateway answers anything above 0 with
    /// NegotiateProtocolVersion.
    pub minor: u16,
    /// The parameters in the order sent; names are unique only if the client made them so.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A version 3.0 StartupMessage with these parameters.
    pub fn new(params: Vec<(String, String)>) -> Self {
        Self {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            params,
        }
    }

    /// The value of parameter `key`. If the client sent it twice, the last one, as the server
    /// takes it (a later value overwrites an earlier one in `ProcessStartupPacket`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter: required, so always present in a parsed message.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The `database` parameter, which "defaults to the user name" (§55.7 StartupMessage). An
    /// empty value means the default too, as the server reads it.
    pub fn database(&self) -> Option<&str> {
        match self.get("database") {
            Some(db) if !db.is_empty() => Some(db),
            _ => self.user(),
        }
    }

    /// The `_pq_.` protocol options the client asked for. The gateway knows none, so every
    /// one of them is unrecognized and goes into [`negotiate_protocol_version`].
    pub fn protocol_options(&self) -> Vec<&str> {
        self.params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with(PROTOCOL_OPTION_PREFIX))
            .collect()
    }

    /// Whether the server must answer with NegotiateProtocolVersion before authentication:
    /// the client asked for a newer minor version or for protocol options (§55.2.1).
    pub fn needs_negotiation(&self) -> bool {
        self.minor > PROTOCOL_MINOR || !self.protocol_options().is_empty()
    }

    /// The packet to send upstream: version 3.0 whatever the client asked (the gateway has
    /// negotiated the client down to 3.0 itself), with every parameter except `_pq_.`
    /// options, which 3.0 does not have. A NUL inside a name or value cannot be encoded and
    /// cuts that string there; parsed messages never contain one.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&PROTOCOL_MAJOR.to_be_bytes());
        out.extend_from_slice(&PROTOCOL_MINOR.to_be_bytes());
        for (k, v) in &self.params {
            if k.starts_with(PROTOCOL_OPTION_PREFIX) {
                continue;
            }
            put_cstr(&mut out, k);
            put_cstr(&mut out, v);
        }
        out.push(0);
        let len = i32::try_from(out.len()).unwrap_or(i32::MAX).to_be_bytes();
        if let Some(slot) = out.get_mut(..4) {
            slot.copy_from_slice(&len);
        }
        out
    }
}

/// The key a CancelRequest names a backend by (§55.2.7): the BackendKeyData a server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelKey {
    /// The backend's process id.
    pub pid: i32,
    /// Its secret key.
    pub secret: i32,
}

impl CancelKey {
    /// A CancelRequest packet (§55.7) carrying this key, to send on a new connection.
    pub fn encode_cancel_request(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&16_i32.to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret.to_be_bytes());
        out
    }

    /// A BackendKeyData message (§55.7, `K`) carrying this key, to send to the client.
    pub fn encode_backend_key_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13);
        let at = begin(&mut out, b'K');
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret.to_be_bytes());
        finish(&mut out, at);
        out
    }
}

/// Why a start-up packet was refused. The connection cannot continue after any of these.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    /// The length field is below 8, the size of the length and the code.
    #[error("the startup packet's length field says {len} bytes, below the minimum of 8")]
    TooShort { len: i32 },
    /// The length field exceeds [`MAX_STARTUP_PACKET`].
    #[error(
        "the startup packet's length field says {len} bytes, above the limit of {}",
        MAX_STARTUP_PACKET
    )]
    TooLong { len: i32 },
    /// A protocol major version other than 3 (or a request code that is not one of the three).
    #[error(
        "the client asked for protocol version {major}.{minor}; only 3.x is spoken (is this a PostgreSQL client?)"
    )]
    UnsupportedProtocol { major: u16, minor: u16 },
    /// An SSLRequest, GSSENCRequest or CancelRequest of the wrong length.
    #[error("a {request} must be {expected} bytes long, this one is {len}")]
    RequestLength {
        request: &'static str,
        expected: usize,
        len: usize,
    },
    /// A parameter name or value without its NUL, or no final NUL after the last pair.
    #[error("the startup parameters are not terminated by a zero byte")]
    MissingTerminator,
    /// Bytes after the terminating zero byte.
    #[error("the startup packet has {count} bytes after its terminating zero byte")]
    TrailingBytes { count: usize },
    /// A parameter name or value that is not UTF-8.
    #[error("startup parameter number {index} is not valid UTF-8")]
    NotUtf8 { index: usize },
    /// More than [`MAX_STARTUP_PARAMS`] parameters.
    #[error("the startup packet has more than {max} parameters")]
    TooManyParams { max: usize },
    /// No `user` parameter, or an empty one; the server requires it.
    #[error("the startup packet names no user; set one (psql -U, or PGUSER)")]
    MissingUser,
}

/// Parses one start-up packet from the front of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a packet; read more and call again with all of it.
/// `Ok(Some((packet, consumed)))`: the packet and how many bytes of `buf` it took. A client
/// may send a StartupMessage right after TLS is set up, so parse again after an SSLRequest.
pub fn parse_startup(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, StartupError> {
    let Some(len) = be_i32(buf) else {
        return Ok(None);
    };
    let size = usize::try_from(len).map_err(|_| StartupError::TooShort { len })?;
    if size < MIN_STARTUP_PACKET {
        return Err(StartupError::TooShort { len });
    }
    if size > MAX_STARTUP_PACKET {
        return Err(StartupError::TooLong { len });
    }
    let Some(packet) = buf.get(..size) else {
        return Ok(None);
    };
    let mut r = Reader::new(packet.get(4..).unwrap_or_default());
    let code = r.u32().ok_or(StartupError::TooShort { len })?;
    let fixed = |request: &'static str, expected: usize, packet: StartupPacket| {
        if size == expected {
            Ok(Some((packet, size)))
        } else {
            Err(StartupError::RequestLength {
                request,
                expected,
                len: size,
            })
        }
    };
    match code {
        SSL_REQUEST_CODE => fixed("SSLRequest", 8, StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => fixed("GSSENCRequest", 8, StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32().unwrap_or_default();
            let secret = r.i32().unwrap_or_default();
            fixed(
                "CancelRequest",
                16,
                StartupPacket::Cancel(CancelKey { pid, secret }),
            )
        }
        _ => {
            let major = u16::try_from(code >> 16).unwrap_or(u16::MAX);
            let minor = u16::try_from(code & 0xffff).unwrap_or(u16::MAX);
            if major != PROTOCOL_MAJOR {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let params = parse_params(r)?;
            let message = StartupMessage {
                major,
                minor,
                params,
            };
            if message.user().is_none_or(str::is_empty) {
                return Err(StartupError::MissingUser);
            }
            Ok(Some((StartupPacket::Startup(message), size)))
        }
    }
}

/// Name/value pairs, then a zero byte that must be the packet's last (§55.7 StartupMessage).
fn parse_params(mut r: Reader<'_>) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = r.cstr().ok_or(StartupError::MissingTerminator)?;
        if name.is_empty() {
            if !r.is_empty() {
                return Err(StartupError::TrailingBytes {
                    count: r.remaining(),
                });
            }
            return Ok(params);
        }
        if params.len() == MAX_STARTUP_PARAMS {
            return Err(StartupError::TooManyParams {
                max: MAX_STARTUP_PARAMS,
            });
        }
        let value = r.cstr().ok_or(StartupError::MissingTerminator)?;
        let index = params.len() + 1;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| StartupError::NotUtf8 { index })
        };
        params.push((text(name)?, text(value)?));
    }
}

/// A NegotiateProtocolVersion message (§55.7, `v`): the newest minor version the server
/// supports and the protocol options it did not recognize. Sent when
/// [`StartupMessage::needs_negotiation`]; the session then continues at 3.`newest_minor`.
pub fn negotiate_protocol_version(newest_minor: u16, unrecognized: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    let at = begin(&mut out, b'v');
    out.extend_from_slice(&i32::from(newest_minor).to_be_bytes());
    let count = i32::try_from(unrecognized.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for name in unrecognized {
        put_cstr(&mut out, name);
    }
    finish(&mut out, at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(version: u32, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(8 + body.len()).unwrap();
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    const V3: u32 = 196608;

    #[test]
    fn psql_startup_message() {
        let buf = startup_bytes(
            V3,
            b"user\0alice\0database\0shop\0application_name\0psql\0client_encoding\0UTF8\0\0",
        );
        let (packet, used) = parse_startup(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        let StartupPacket::Startup(m) = packet else {
            panic!("{packet:?}")
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("shop"));
        assert_eq!(m.get("application_name"), Some("psql"));
        assert_eq!(m.get("nope"), None);
        assert!(!m.needs_negotiation());
        // Re-encoding gives the same bytes.
        assert_eq!(m.encode(), buf);
    }

    #[test]
    fn database_defaults_to_user() {
        let buf = startup_bytes(V3, b"user\0bob\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.database(), Some("bob"));
        let buf = startup_bytes(V3, b"user\0bob\0database\0\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.database(), Some("bob"));
    }

    #[test]
    fn later_duplicate_wins() {
        let buf = startup_bytes(V3, b"user\0a\0user\0b\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.user(), Some("b"));
    }

    #[test]
    fn partial_packets_need_more() {
        let buf = startup_bytes(V3, b"user\0alice\0\0");
        for cut in 0..buf.len() {
            assert_eq!(parse_startup(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        // Extra bytes after the packet are left for the next call.
        let mut two = buf.clone();
        two.extend_from_slice(&[0, 0, 0, 8, 4, 210, 22, 47]);
        let (_, used) = parse_startup(&two).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(
            parse_startup(&two[used..]),
            Ok(Some((StartupPacket::SslRequest, 8)))
        );
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        assert_eq!(
            parse_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]),
            Ok(Some((StartupPacket::SslRequest, 8)))
        );
        assert_eq!(
            parse_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]),
            Ok(Some((StartupPacket::GssEncRequest, 8)))
        );
        let key = CancelKey {
            pid: 4242,
            secret: -7,
        };
        let cancel = key.encode_cancel_request();
        assert_eq!(
            cancel,
            [
                0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 0xff, 0xff, 0xff, 0xf9
            ]
        );
        assert_eq!(
            parse_startup(&cancel),
            Ok(Some((StartupPacket::Cancel(key), 16)))
        );
    }

    #[test]
    fn encoders_match_postgres_protocol() {
        let mut theirs = bytes::BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(4242, -7, &mut theirs);
        let key = CancelKey {
            pid: 4242,
            secret: -7,
        };
        assert_eq!(key.encode_cancel_request(), theirs.to_vec());

        let mut theirs = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "alice"), ("database", "shop")],
            &mut theirs,
        )
        .unwrap();
        let ours = StartupMessage::new(vec![
            ("user".into(), "alice".into()),
            ("database".into(), "shop".into()),
        ]);
        assert_eq!(ours.encode(), theirs.to_vec());
    }

    #[test]
    fn backend_key_data_bytes() {
        let key = CancelKey {
            pid: 1,
            secret: 0x01020304,
        };
        assert_eq!(
            key.encode_backend_key_data(),
            [b'K', 0, 0, 0, 12, 0, 0, 0, 1, 1, 2, 3, 4]
        );
    }

    #[test]
    fn request_lengths_are_exact() {
        let mut ssl = vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0];
        assert_eq!(
            parse_startup(&ssl),
            Err(StartupError::RequestLength {
                request: "SSLRequest",
                expected: 8,
                len: 12
            })
        );
        ssl[3] = 8;
        ssl[7] = 0x2e; // a CancelRequest of 8 bytes
        assert!(matches!(
            parse_startup(&ssl),
            Err(StartupError::RequestLength {
                request: "CancelRequest",
                ..
            })
        ));
        ssl[7] = 0x30;
        ssl[3] = 9;
        assert!(matches!(
            parse_startup(&ssl),
            Err(StartupError::RequestLength {
                request: "GSSENCRequest",
                ..
            })
        ));
    }

    #[test]
    fn length_below_eight() {
        for len in [0_i32, 4, 7, -1, i32::MIN] {
            let mut buf = len.to_be_bytes().to_vec();
            buf.extend_from_slice(&[0; 8]);
            assert_eq!(parse_startup(&buf), Err(StartupError::TooShort { len }));
        }
    }

    #[test]
    fn length_above_the_limit_is_refused_before_buffering() {
        // Only the length is needed to refuse: the gateway never waits for 10 MB.
        assert_eq!(
            parse_startup(&10_001_i32.to_be_bytes()),
            Err(StartupError::TooLong { len: 10_001 })
        );
        let exactly = startup_bytes(V3, &{
            let mut body = b"user\0u\0x\0".to_vec();
            body.resize(MAX_STARTUP_PACKET - 8 - 2, b'v');
            body.extend_from_slice(b"\0\0");
            body
        });
        assert_eq!(exactly.len(), MAX_STARTUP_PACKET);
        assert!(parse_startup(&exactly).unwrap().is_some());
    }

    #[test]
    fn other_protocol_versions() {
        let buf = startup_bytes(2 << 16, b"user\0u\0\0");
        assert_eq!(
            parse_startup(&buf),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        // An unknown 1234.x code is not a request we know.
        let buf = startup_bytes((1234 << 16) | 5681, b"");
        assert_eq!(
            parse_startup(&buf),
            Err(StartupError::UnsupportedProtocol {
                major: 1234,
                minor: 5681
            })
        );
    }

    #[test]
    fn newer_minor_and_protocol_options_need_negotiation() {
        let buf = startup_bytes(V3 | 2, b"user\0u\0_pq_.frob\0on\0_pq_.x\0y\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.minor, 2);
        assert!(m.needs_negotiation());
        assert_eq!(m.protocol_options(), ["_pq_.frob", "_pq_.x"]);
        // Upstream gets 3.0 without the options.
        assert_eq!(m.encode(), startup_bytes(V3, b"user\0u\0\0"));

        let v = negotiate_protocol_version(0, &m.protocol_options());
        let mut expected = vec![b'v', 0, 0, 0, 29, 0, 0, 0, 0, 0, 0, 0, 2];
        expected.extend_from_slice(b"_pq_.frob\0_pq_.x\0");
        assert_eq!(v, expected);
        assert_eq!(
            negotiate_protocol_version(0, &[]),
            [b'v', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn missing_terminators() {
        // No final zero byte after the last pair.
        let buf = startup_bytes(V3, b"user\0u\0");
        assert_eq!(parse_startup(&buf), Err(StartupError::MissingTerminator));
        // A value without its NUL.
        let buf = startup_bytes(V3, b"user\0u");
        assert_eq!(parse_startup(&buf), Err(StartupError::MissingTerminator));
        // No parameters at all, not even the terminator.
        let buf = startup_bytes(V3, b"");
        assert_eq!(parse_startup(&buf), Err(StartupError::MissingTerminator));
    }

    #[test]
    fn trailing_bytes_after_terminator() {
        let buf = startup_bytes(V3, b"user\0u\0\0zz");
        assert_eq!(
            parse_startup(&buf),
            Err(StartupError::TrailingBytes { count: 2 })
        );
    }

    #[test]
    fn non_utf8() {
        let buf = startup_bytes(V3, b"user\0u\0app\0\xff\0\0");
        assert_eq!(parse_startup(&buf), Err(StartupError::NotUtf8 { index: 2 }));
    }

    #[test]
    fn too_many_params() {
        let mut body = b"user\0u\0".to_vec();
        for i in 1..MAX_STARTUP_PARAMS {
            body.extend_from_slice(format!("p{i}\0v\0").as_bytes());
        }
        body.push(0);
        assert!(parse_startup(&startup_bytes(V3, &body)).unwrap().is_some());
        body.pop();
        body.extend_from_slice(b"one\0more\0\0");
        assert_eq!(
            parse_startup(&startup_bytes(V3, &body)),
            Err(StartupError::TooManyParams {
                max: MAX_STARTUP_PARAMS
            })
        );
    }

    #[test]
    fn missing_or_empty_user() {
        let buf = startup_bytes(V3, b"database\0d\0\0");
        assert_eq!(parse_startup(&buf), Err(StartupError::MissingUser));
        let buf = startup_bytes(V3, b"user\0\0\0");
        assert_eq!(parse_startup(&buf), Err(StartupError::MissingUser));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert_eq!(
            StartupError::MissingUser.to_string(),
            "the startup packet names no user; set one (psql -U, or PGUSER)"
        );
        assert!(
            StartupError::TooLong { len: 20000 }
                .to_string()
                .contains("20000")
        );
    }
}

//! Typed views of the messages the gateway reads (§55.7), borrowing from a whole message
//! handed over by [`crate::frame::Scanner`], and builders for the few messages the gateway
//! writes to the client itself.
//!
//! Only the messages the audit log and the login need are decoded; every other type is
//! `Other { tag }` and passes through the relay untouched anyway.

use thiserror::Error;

use crate::startup::CancelKey;
use crate::wire::{Reader, Tag, begin, finish, put_cstr};

/// The answer to SSLRequest (§55.2.9) when the gateway will start TLS.
pub const SSL_SUPPORTED: u8 = b'S';
/// The answer to SSLRequest, or to GSSENCRequest (§55.2.10), when it will not.
pub const SSL_NOT_SUPPORTED: u8 = b'N';

/// A client message (§55.7, the ones marked F).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// `Q`: a simple query, possibly several statements.
    Query { text: &'a str },
    /// `P`: prepare `text` as `statement` ("" is the unnamed statement).
    Parse {
        statement: &'a str,
        text: &'a str,
        param_types: Vec<u32>,
    },
    /// `B`: bind parameters to `statement`, making `portal` ("" is the unnamed portal).
    Bind {
        portal: &'a str,
        statement: &'a str,
        param_formats: Vec<i16>,
        /// `None` is SQL NULL.
        params: Vec<Option<&'a [u8]>>,
        result_formats: Vec<i16>,
    },
    /// `E`: run `portal`; `max_rows` 0 means all.
    Execute { portal: &'a str, max_rows: i32 },
    /// `C`: close a statement (`kind` `S`) or portal (`P`).
    Close { kind: u8, name: &'a str },
    /// `S`.
    Sync,
    /// `H`.
    Flush,
    /// `d`: `len` bytes of COPY data (not kept).
    CopyData { len: usize },
    /// `c`.
    CopyDone,
    /// `f`: the client aborts a COPY FROM STDIN.
    CopyFail { message: &'a str },
    /// `X`.
    Terminate,
    /// Any other type (Describe, FunctionCall, password messages, ...), not decoded.
    Other { tag: u8 },
}

/// A server message (§55.7, the ones marked B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    /// `C`: a statement finished; `tag` is e.g. "SELECT 5" or "INSERT 0 3".
    CommandComplete { tag: &'a str },
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`.
    ErrorResponse(ErrorFields<'a>),
    /// `N`.
    NoticeResponse(ErrorFields<'a>),
    /// `Z`: `status` is `I` (idle), `T` (in a transaction) or `E` (in a failed one).
    ReadyForQuery { status: u8 },
    /// `G`.
    CopyInResponse,
    /// `H`.
    CopyOutResponse,
    /// `W`.
    CopyBothResponse,
    /// `d`: `len` bytes of COPY data (not kept).
    CopyData { len: usize },
    /// `c`.
    CopyDone,
    /// `s`: an Execute stopped at its row limit.
    PortalSuspended,
    /// `1`.
    ParseComplete,
    /// `2`.
    BindComplete,
    /// `3`.
    CloseComplete,
    /// `K`.
    BackendKeyData(CancelKey),
    /// `S`.
    ParameterStatus { name: &'a str, value: &'a str },
    /// `R`.
    Authentication(AuthRequest<'a>),
    /// `v`.
    NegotiateProtocolVersion,
    /// Any other type (DataRow, RowDescription, NotificationResponse, ...), not decoded.
    Other { tag: u8 },
}

/// The fields of an ErrorResponse or NoticeResponse (§55.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields<'a> {
    /// `V` (never localized, PG 9.6+), else `S`; empty if the server sent neither.
    pub severity: &'a str,
    /// `C`: the SQLSTATE code; empty if absent.
    pub code: &'a str,
    /// `M`: the primary message; empty if absent.
    pub message: &'a str,
    /// Every field in the order sent, by its type byte.
    pub fields: Vec<(u8, &'a str)>,
}

impl<'a> ErrorFields<'a> {
    /// The field of type `code` (`D` detail, `H` hint, `P` position, ...).
    pub fn get(&self, code: u8) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
    }
}

/// An authentication request (§55.7 Authentication*, §55.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// 0: authenticated.
    Ok,
    /// 3.
    CleartextPassword,
    /// 5.
    Md5Password { salt: [u8; 4] },
    /// 10: the SASL mechanisms the server offers, in its order of preference.
    Sasl { mechanisms: Vec<&'a str> },
    /// 11: the server-first-message.
    SaslContinue(&'a [u8]),
    /// 12: the server-final-message.
    SaslFinal(&'a [u8]),
    /// Any other code: 2 Kerberos V5, 7 GSSAPI, 8 GSS continue, 9 SSPI, or unknown.
    Other(i32),
}

/// Why a message that the framing delivered whole does not decode. The message cannot be
/// logged; PostgreSQL would refuse it too ("invalid message format").
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    /// The body ends before the fields its type requires.
    #[error("message {tag} ends before all of its fields")]
    Truncated { tag: Tag },
    /// A string field has no terminating zero byte.
    #[error("a string in message {tag} has no terminating zero byte")]
    Unterminated { tag: Tag },
    /// A string field is not UTF-8 (the client or server encoding is not UTF8).
    #[error("a string in message {tag} is not UTF-8; set client_encoding to UTF8")]
    NotUtf8 { tag: Tag },
    /// Bytes after the last field.
    #[error("message {tag} has {count} bytes after its last field")]
    TrailingBytes { tag: Tag, count: usize },
    /// A negative element count.
    #[error("message {tag} gives a negative count, {count}")]
    NegativeCount { tag: Tag, count: i16 },
    /// A Bind parameter length below -1 (-1 is NULL).
    #[error("Bind gives a parameter length of {length}, below -1")]
    ParamLength { length: i32 },
    /// A Close naming neither a statement nor a portal.
    #[error("Close names kind {kind}, neither 'S' (statement) nor 'P' (portal)")]
    CloseKind { kind: Tag },
}

/// A [`Reader`] that reports its failures as [`MessageError`]s for message `tag`.
struct Fields<'a> {
    r: Reader<'a>,
    tag: Tag,
}

impl<'a> Fields<'a> {
    fn new(tag: u8, body: &'a [u8]) -> Self {
        Self {
            r: Reader::new(body),
            tag: Tag(tag),
        }
    }

    fn truncated(&self) -> MessageError {
        MessageError::Truncated { tag: self.tag }
    }

    fn str(&mut self) -> Result<&'a str, MessageError> {
        let b = self
            .r
            .cstr()
            .ok_or(MessageError::Unterminated { tag: self.tag })?;
        std::str::from_utf8(b).map_err(|_| MessageError::NotUtf8 { tag: self.tag })
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        self.r.u8().ok_or_else(|| self.truncated())
    }

    fn i16(&mut self) -> Result<i16, MessageError> {
        self.r.i16().ok_or_else(|| self.truncated())
    }

    fn i32(&mut self) -> Result<i32, MessageError> {
        self.r.i32().ok_or_else(|| self.truncated())
    }

    fn u32(&mut self) -> Result<u32, MessageError> {
        self.r.u32().ok_or_else(|| self.truncated())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        self.r.bytes(n).ok_or_else(|| self.truncated())
    }

    fn rest(&mut self) -> &'a [u8] {
        let n = self.r.remaining();
        self.r.bytes(n).unwrap_or_default()
    }

    /// An Int16 count, then that many elements read by `each`.
    fn list<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, MessageError>,
    ) -> Result<Vec<T>, MessageError> {
        let count = self.i16()?;
        let n = usize::try_from(count).map_err(|_| MessageError::NegativeCount {
            tag: self.tag,
            count,
        })?;
        // Each element takes at least two bytes, so a lying count cannot reserve much.
        let mut out = Vec::with_capacity(n.min(self.r.remaining() / 2));
        for _ in 0..n {
            out.push(each(self)?);
        }
        Ok(out)
    }

    fn end<T>(self, value: T) -> Result<T, MessageError> {
        if self.r.is_empty() {
            Ok(value)
        } else {
            Err(MessageError::TrailingBytes {
                tag: self.tag,
                count: self.r.remaining(),
            })
        }
    }
}

/// Decodes a client message from its type byte and body (the bytes after the header).
pub fn parse_frontend(tag: u8, body: &[u8]) -> Result<Frontend<'_>, MessageError> {
    let mut f = Fields::new(tag, body);
    let msg = match tag {
        b'Q' => Frontend::Query { text: f.str()? },
        b'P' => Frontend::Parse {
            statement: f.str()?,
            text: f.str()?,
            param_types: f.list(Fields::u32)?,
        },
        b'B' => {
            let portal = f.str()?;
            let statement = f.str()?;
            let param_formats = f.list(Fields::i16)?;
            let params = f.list(|f| {
                let length = f.i32()?;
                match length {
                    -1 => Ok(None),
                    _ => {
                        let n = usize::try_from(length)
                            .map_err(|_| MessageError::ParamLength { length })?;
                        f.bytes(n).map(Some)
                    }
                }
            })?;
            let result_formats = f.list(Fields::i16)?;
            Frontend::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            }
        }
        b'E' => Frontend::Execute {
            portal: f.str()?,
            max_rows: f.i32()?,
        },
        b'C' => {
            let kind = f.u8()?;
            if kind != b'S' && kind != b'P' {
                return Err(MessageError::CloseKind { kind: Tag(kind) });
            }
            Frontend::Close {
                kind,
                name: f.str()?,
            }
        }
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'd' => Frontend::CopyData {
            len: f.rest().len(),
        },
        b'c' => Frontend::CopyDone,
        b'f' => Frontend::CopyFail { message: f.str()? },
        b'X' => Frontend::Terminate,
        _ => return Ok(Frontend::Other { tag }),
    };
    f.end(msg)
}

/// Decodes a server message from its type byte and body (the bytes after the header).
pub fn parse_backend(tag: u8, body: &[u8]) -> Result<Backend<'_>, MessageError> {
    let mut f = Fields::new(tag, body);
    let msg = match tag {
        b'C' => Backend::CommandComplete { tag: f.str()? },
        b'I' => Backend::EmptyQueryResponse,
        b'E' => Backend::ErrorResponse(error_fields(&mut f)?),
        b'N' => Backend::NoticeResponse(error_fields(&mut f)?),
        b'Z' => Backend::ReadyForQuery { status: f.u8()? },
        // The copy responses' format fields are not needed; the relay forwards them as sent.
        b'G' => return Ok(Backend::CopyInResponse),
        b'H' => return Ok(Backend::CopyOutResponse),
        b'W' => return Ok(Backend::CopyBothResponse),
        b'd' => Backend::CopyData {
            len: f.rest().len(),
        },
        b'c' => Backend::CopyDone,
        b's' => Backend::PortalSuspended,
        b'1' => Backend::ParseComplete,
        b'2' => Backend::BindComplete,
        b'3' => Backend::CloseComplete,
        b'K' => Backend::BackendKeyData(CancelKey {
            pid: f.i32()?,
            secret: f.i32()?,
        }),
        b'S' => Backend::ParameterStatus {
            name: f.str()?,
            value: f.str()?,
        },
        b'R' => Backend::Authentication(auth_request(&mut f)?),
        b'v' => return Ok(Backend::NegotiateProtocolVersion),
        _ => return Ok(Backend::Other { tag }),
    };
    f.end(msg)
}

/// Fields of a type byte and a String each, ended by a zero type byte (§55.7 ErrorResponse).
fn error_fields<'a>(f: &mut Fields<'a>) -> Result<ErrorFields<'a>, MessageError> {
    let mut out = ErrorFields::default();
    let mut localized = "";
    loop {
        let code = f.u8()?;
        if code == 0 {
            break;
        }
        let value = f.str()?;
        match code {
            b'S' => localized = value,
            b'V' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
        out.fields.push((code, value));
    }
    if out.severity.is_empty() {
        out.severity = localized;
    }
    Ok(out)
}

fn auth_request<'a>(f: &mut Fields<'a>) -> Result<AuthRequest<'a>, MessageError> {
    Ok(match f.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt = f.bytes(4)?;
            AuthRequest::Md5Password {
                salt: salt.try_into().map_err(|_| f.truncated())?,
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                match f.str()? {
                    "" => break,
                    m => mechanisms.push(m),
                }
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(f.rest()),
        12 => AuthRequest::SaslFinal(f.rest()),
        // GSS continue (8) carries data; nothing else is read from an unsupported request.
        code => {
            f.rest();
            AuthRequest::Other(code)
        }
    })
}

/// AuthenticationOk (`R`, code 0).
pub fn authentication_ok() -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    put_authentication_ok(&mut out);
    out
}

/// Appends AuthenticationOk to `out`.
pub fn put_authentication_ok(out: &mut Vec<u8>) {
    let at = begin(out, b'R');
    out.extend_from_slice(&0_i32.to_be_bytes());
    finish(out, at);
}

/// ParameterStatus (`S`): a run-time parameter's current value.
pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + name.len() + value.len());
    put_parameter_status(&mut out, name, value);
    out
}

/// Appends ParameterStatus to `out`.
pub fn put_parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    let at = begin(out, b'S');
    put_cstr(out, name);
    put_cstr(out, value);
    finish(out, at);
}

/// ReadyForQuery (`Z`) with transaction status `I`, `T` or `E`.
pub fn ready_for_query(status: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    put_ready_for_query(&mut out, status);
    out
}

/// Appends ReadyForQuery to `out`.
pub fn put_ready_for_query(out: &mut Vec<u8>, status: u8) {
    let at = begin(out, b'Z');
    out.push(status);
    finish(out, at);
}

/// ErrorResponse (`E`) with fields S and V (`severity`, e.g. "FATAL"), C (`code`, a SQLSTATE
/// such as "28000"), M, and D and H when given (§55.8). psql prints M, then DETAIL and HINT.
pub fn error_response(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + message.len());
    put_error_response(&mut out, severity, code, message, detail, hint);
    out
}

/// Appends ErrorResponse to `out`.
pub fn put_error_response(
    out: &mut Vec<u8>,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let at = begin(out, b'E');
    let fields = [
        (b'S', Some(severity)),
        (b'V', Some(severity)),
        (b'C', Some(code)),
        (b'M', Some(message)),
        (b'D', detail),
        (b'H', hint),
    ];
    for (kind, value) in fields {
        if let Some(value) = value {
            out.push(kind);
            put_cstr(out, value);
        }
    }
    out.push(0);
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::body;
    use bytes::BytesMut;
    use postgres_protocol::message::backend::{ErrorResponseBody, Message};
    use postgres_protocol::message::frontend;

    fn encoded(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        f(&mut buf);
        buf.to_vec()
    }

    fn front(msg: &[u8]) -> Frontend<'_> {
        parse_frontend(msg[0], body(msg)).unwrap()
    }

    #[test]
    fn query() {
        let m = encoded(|b| frontend::query("SELECT 1; SELECT 2", b).unwrap());
        assert_eq!(
            front(&m),
            Frontend::Query {
                text: "SELECT 1; SELECT 2"
            }
        );
    }

    #[test]
    fn parse_bind_execute_as_postgres_protocol_encodes_them() {
        let p = encoded(|b| frontend::parse("s1", "SELECT $1, $2", [23, 25], b).unwrap());
        assert_eq!(
            front(&p),
            Frontend::Parse {
                statement: "s1",
                text: "SELECT $1, $2",
                param_types: vec![23, 25]
            }
        );
        let bind = encoded(|b| {
            frontend::bind(
                "",
                "s1",
                [1_i16, 0],
                [Some(&[0, 0, 0, 42][..]), None],
                |p, buf| {
                    Ok::<_, Box<dyn std::error::Error + Sync + Send>>(match p {
                        Some(v) => {
                            buf.extend_from_slice(v);
                            postgres_protocol::IsNull::No
                        }
                        None => postgres_protocol::IsNull::Yes,
                    })
                },
                [1_i16],
                b,
            )
            .map_err(|_| ())
            .unwrap()
        });
        assert_eq!(
            front(&bind),
            Frontend::Bind {
                portal: "",
                statement: "s1",
                param_formats: vec![1, 0],
                params: vec![Some(&[0, 0, 0, 42][..]), None],
                result_formats: vec![1]
            }
        );
        let e = encoded(|b| frontend::execute("", 0, b).unwrap());
        assert_eq!(
            front(&e),
            Frontend::Execute {
                portal: "",
                max_rows: 0
            }
        );
        let c = encoded(|b| frontend::close(b'S', "s1", b).unwrap());
        assert_eq!(
            front(&c),
            Frontend::Close {
                kind: b'S',
                name: "s1"
            }
        );
        assert_eq!(front(&encoded(frontend::sync)), Frontend::Sync);
        assert_eq!(front(&encoded(frontend::flush)), Frontend::Flush);
        assert_eq!(front(&encoded(frontend::terminate)), Frontend::Terminate);
        assert_eq!(front(&encoded(frontend::copy_done)), Frontend::CopyDone);
        assert_eq!(
            front(&encoded(|b| frontend::copy_fail("stop", b).unwrap())),
            Frontend::CopyFail { message: "stop" }
        );
        let d = encoded(|b| frontend::CopyData::new(&b"1\t2\n"[..]).unwrap().write(b));
        assert_eq!(front(&d), Frontend::CopyData { len: 4 });
        let describe = encoded(|b| frontend::describe(b'S', "s1", b).unwrap());
        assert_eq!(front(&describe), Frontend::Other { tag: b'D' });
    }

    #[test]
    fn frontend_errors() {
        let t = |tag| Tag(tag);
        assert_eq!(
            parse_frontend(b'Q', b"no nul"),
            Err(MessageError::Unterminated { tag: t(b'Q') })
        );
        assert_eq!(
            parse_frontend(b'Q', b"SELECT\0x"),
            Err(MessageError::TrailingBytes {
                tag: t(b'Q'),
                count: 1
            })
        );
        assert_eq!(
            parse_frontend(b'Q', b"\xff\0"),
            Err(MessageError::NotUtf8 { tag: t(b'Q') })
        );
        assert_eq!(
            parse_frontend(b'E', b"\0\0\0"),
            Err(MessageError::Truncated { tag: t(b'E') })
        );
        assert_eq!(
            parse_frontend(b'P', b"s\0q\0\xff\xff"),
            Err(MessageError::NegativeCount {
                tag: t(b'P'),
                count: -1
            })
        );
        // A count larger than the body.
        assert_eq!(
            parse_frontend(b'P', b"s\0q\0\x7f\xff\0\0\0\x17"),
            Err(MessageError::Truncated { tag: t(b'P') })
        );
        assert_eq!(
            parse_frontend(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
            Err(MessageError::ParamLength { length: -2 })
        );
        assert_eq!(
            parse_frontend(b'B', b"\0\0\0\0\0\x01\0\0\0\x09abc\0\0"),
            Err(MessageError::Truncated { tag: t(b'B') })
        );
        assert_eq!(
            parse_frontend(b'C', b"Xname\0"),
            Err(MessageError::CloseKind { kind: t(b'X') })
        );
        assert_eq!(
            parse_frontend(b'C', b""),
            Err(MessageError::Truncated { tag: t(b'C') })
        );
        assert_eq!(
            parse_frontend(b'S', b"x"),
            Err(MessageError::TrailingBytes {
                tag: t(b'S'),
                count: 1
            })
        );
    }

    #[test]
    fn backend_messages() {
        let b = |tag, body: &'static [u8]| parse_backend(tag, body).unwrap();
        assert_eq!(
            b(b'C', b"INSERT 0 3\0"),
            Backend::CommandComplete { tag: "INSERT 0 3" }
        );
        assert_eq!(b(b'I', b""), Backend::EmptyQueryResponse);
        assert_eq!(b(b'Z', b"T"), Backend::ReadyForQuery { status: b'T' });
        assert_eq!(b(b'G', b"\0\0\x01\0\0"), Backend::CopyInResponse);
        assert_eq!(b(b'H', b"\0\0\0"), Backend::CopyOutResponse);
        assert_eq!(b(b'W', b"\0\0\0"), Backend::CopyBothResponse);
        assert_eq!(b(b'd', b"abc"), Backend::CopyData { len: 3 });
        assert_eq!(b(b'c', b""), Backend::CopyDone);
        assert_eq!(b(b's', b""), Backend::PortalSuspended);
        assert_eq!(b(b'1', b""), Backend::ParseComplete);
        assert_eq!(b(b'2', b""), Backend::BindComplete);
        assert_eq!(b(b'3', b""), Backend::CloseComplete);
        assert_eq!(
            b(b'K', b"\0\0\0\x07\xff\xff\xff\xff"),
            Backend::BackendKeyData(CancelKey { pid: 7, secret: -1 })
        );
        assert_eq!(
            b(b'S', b"TimeZone\0UTC\0"),
            Backend::ParameterStatus {
                name: "TimeZone",
                value: "UTC"
            }
        );
        assert_eq!(
            b(b'v', b"\0\0\0\0\0\0\0\0"),
            Backend::NegotiateProtocolVersion
        );
        assert_eq!(b(b'D', b"\0\0"), Backend::Other { tag: b'D' });
    }

    #[test]
    fn authentication_requests() {
        let r = |body: &'static [u8]| match parse_backend(b'R', body).unwrap() {
            Backend::Authentication(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(r(b"\0\0\0\0"), AuthRequest::Ok);
        assert_eq!(r(b"\0\0\0\x03"), AuthRequest::CleartextPassword);
        assert_eq!(
            r(b"\0\0\0\x05abcd"),
            AuthRequest::Md5Password { salt: *b"abcd" }
        );
        assert_eq!(
            r(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            }
        );
        assert_eq!(r(b"\0\0\0\x0br=x"), AuthRequest::SaslContinue(b"r=x"));
        assert_eq!(r(b"\0\0\0\x0cv=y"), AuthRequest::SaslFinal(b"v=y"));
        assert_eq!(r(b"\0\0\0\x07"), AuthRequest::Other(7));
        assert_eq!(r(b"\0\0\0\x08gss"), AuthRequest::Other(8));
        assert_eq!(
            parse_backend(b'R', b"\0\0\0\x05abc"),
            Err(MessageError::Truncated { tag: Tag(b'R') })
        );
        assert_eq!(
            parse_backend(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0"),
            Err(MessageError::Unterminated { tag: Tag(b'R') })
        );
        assert_eq!(
            parse_backend(b'R', b"\0\0\0\0x"),
            Err(MessageError::TrailingBytes {
                tag: Tag(b'R'),
                count: 1
            })
        );
    }

    #[test]
    fn error_fields() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0\0";
        let Backend::ErrorResponse(e) = parse_backend(b'E', body).unwrap() else {
            panic!()
        };
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "42P01");
        assert_eq!(e.message, "relation \"nope\" does not exist");
        assert_eq!(e.get(b'P'), Some("15"));
        assert_eq!(e.fields.len(), 5);
        // A localized S without V is still a severity.
        let Backend::NoticeResponse(n) = parse_backend(b'N', b"SWARNUNG\0Mx\0\0").unwrap() else {
            panic!()
        };
        assert_eq!(n.severity, "WARNUNG");
        assert_eq!(n.code, "");
        assert_eq!(
            parse_backend(b'E', b"SERROR\0"),
            Err(MessageError::Truncated { tag: Tag(b'E') })
        );
    }

    fn parsed_by_postgres_protocol(bytes: &[u8]) -> Message {
        let mut buf = BytesMut::from(bytes);
        let msg = Message::parse(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "postgres-protocol left {} bytes", buf.len());
        msg
    }

    fn fields_of(e: &ErrorResponseBody) -> Vec<(u8, String)> {
        use fallible_iterator::FallibleIterator;
        e.fields()
            .map(|f| Ok((f.type_(), String::from_utf8_lossy(f.value_bytes()).into())))
            .collect()
            .unwrap()
    }

    #[test]
    fn builders_bytes() {
        assert_eq!(authentication_ok(), [b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        assert_eq!(ready_for_query(b'I'), [b'Z', 0, 0, 0, 5, b'I']);
        assert_eq!(parameter_status("a", "b"), b"S\0\0\0\x08a\0b\0");
        let e = error_response("FATAL", "28000", "no", None, Some("log in"));
        assert_eq!(
            e,
            b"E\0\0\0\x26SFATAL\0VFATAL\0C28000\0Mno\0Hlog in\0\0".as_slice()
        );
        // What we build, the reference parser and ours read back the same way.
        match parsed_by_postgres_protocol(&e) {
            Message::ErrorResponse(body) => assert_eq!(
                fields_of(&body),
                [
                    (b'S', "FATAL".into()),
                    (b'V', "FATAL".into()),
                    (b'C', "28000".into()),
                    (b'M', "no".into()),
                    (b'H', "log in".into())
                ]
            ),
            _ => panic!("not an ErrorResponse"),
        }
        let full = error_response("ERROR", "42501", "denied", Some("why"), Some("what"));
        let Backend::ErrorResponse(f) = parse_backend(full[0], body(&full)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (f.severity, f.code, f.message, f.get(b'D'), f.get(b'H')),
            ("ERROR", "42501", "denied", Some("why"), Some("what"))
        );
        assert!(matches!(
            parsed_by_postgres_protocol(&authentication_ok()),
            Message::AuthenticationOk
        ));
        assert!(matches!(
            parsed_by_postgres_protocol(&ready_for_query(b'T')),
            Message::ReadyForQuery(b) if b.status() == b'T'
        ));
        match parsed_by_postgres_protocol(&parameter_status("server_version", "15.4")) {
            Message::ParameterStatus(b) => {
                assert_eq!(b.name().unwrap(), "server_version");
                assert_eq!(b.value().unwrap(), "15.4");
            }
            _ => panic!("not a ParameterStatus"),
        }
    }

    #[test]
    fn put_variants_append() {
        let mut out = vec![b'N'];
        put_authentication_ok(&mut out);
        put_ready_for_query(&mut out, b'I');
        assert_eq!(
            out,
            [b'N', b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I']
        );
    }
}

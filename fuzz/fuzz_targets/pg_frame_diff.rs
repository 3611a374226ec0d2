//! Differential: our framing (`frame::Scanner`) and decoding (`message::parse_backend`)
//! of server messages against postgres-protocol's `backend::Message::parse`, the parser of
//! rust-postgres, on the same bytes.
//!
//! Both must split the stream at the same places (same message lengths, "need more" at
//! the same points), and where both decode a message they must read the same fields.
//! Where only one accepts, it must be one of the known, intended differences:
//! - we refuse strings that are not UTF-8 (postgres-protocol decodes them lazily);
//! - we read ErrorResponse/NoticeResponse fields and the SASL mechanism list strictly,
//!   postgres-protocol lazily;
//! - we accept CopyBothResponse ('W'), NegotiateProtocolVersion ('v') and authentication
//!   codes it does not know, and read neither the Copy responses' bodies nor those of the
//!   authentication requests we do not support.
//!
//! postgres-protocol reserves a message's declared length before it has the bytes, so a
//! declared length above 1 MiB ends the comparison (it is not a disagreement).

#![no_main]

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use lastmile_postgres::frame::{self, Limits, Scanner, Step};
use lastmile_postgres::message::{AuthRequest, Backend, MessageError, parse_backend};
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::{ErrorFields, Message};

fuzz_target!(|data: &[u8]| {
    let mut ours = Scanner::new(Limits::default(), |_| true);
    let mut theirs = BytesMut::from(data);
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        if let Some(len) = rest.get(1..5) {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if len > 1 << 20 {
                return;
            }
        }
        let before = theirs.len();
        match (ours.next(rest), Message::parse(&mut theirs)) {
            (Ok(Step::NeedMore), Ok(None)) => return,
            (Err(_), Err(_)) => return,
            (Ok(Step::Message { tag, len }), Ok(Some(message))) => {
                assert_eq!(before - theirs.len(), len, "message lengths differ");
                compare(tag, &rest[..len], &message);
                pos += len;
            }
            // postgres-protocol refused the body after taking the message off its buffer.
            (Ok(Step::Message { tag, len }), Err(e)) => {
                assert_eq!(before - theirs.len(), len, "lengths differ ({e})");
                only_ours_accepts(tag, frame::body(&rest[..len]), &e);
                return;
            }
            (o, t) => panic!(
                "framing disagrees at byte {pos}: ours {o:?}, postgres-protocol {:?}",
                t.map(|m| m.is_some())
            ),
        }
    }
});

fn compare(tag: u8, msg: &[u8], theirs: &Message) {
    let body = frame::body(msg);
    let ours = match parse_backend(tag, body) {
        Ok(ours) => ours,
        Err(e) => return only_theirs_accepts(tag, body, &e),
    };
    match (&ours, theirs) {
        (Backend::CommandComplete { tag }, Message::CommandComplete(b)) => {
            assert_eq!(Some(tag.to_string()), b.tag().ok().map(str::to_owned));
        }
        (Backend::EmptyQueryResponse, Message::EmptyQueryResponse)
        | (Backend::CopyInResponse, Message::CopyInResponse(_))
        | (Backend::CopyOutResponse, Message::CopyOutResponse(_))
        | (Backend::CopyDone, Message::CopyDone)
        | (Backend::PortalSuspended, Message::PortalSuspended)
        | (Backend::ParseComplete, Message::ParseComplete)
        | (Backend::BindComplete, Message::BindComplete)
        | (Backend::CloseComplete, Message::CloseComplete) => {}
        (Backend::CopyData { len }, Message::CopyData(b)) => assert_eq!(*len, b.data().len()),
        (Backend::ReadyForQuery { status }, Message::ReadyForQuery(b)) => {
            assert_eq!(*status, b.status());
        }
        (Backend::BackendKeyData(k), Message::BackendKeyData(b)) => {
            assert_eq!((k.pid, k.secret), (b.process_id(), b.secret_key()));
        }
        (Backend::ParameterStatus { name, value }, Message::ParameterStatus(b)) => {
            assert_eq!(Some(name.to_string()), b.name().ok().map(str::to_owned));
            assert_eq!(Some(value.to_string()), b.value().ok().map(str::to_owned));
        }
        (Backend::ErrorResponse(e), Message::ErrorResponse(b)) => {
            same_fields(&e.fields, b.fields());
        }
        (Backend::NoticeResponse(e), Message::NoticeResponse(b)) => {
            same_fields(&e.fields, b.fields());
        }
        (Backend::Authentication(a), theirs) => match (a, theirs) {
            (AuthRequest::Ok, Message::AuthenticationOk)
            | (AuthRequest::CleartextPassword, Message::AuthenticationCleartextPassword)
            | (AuthRequest::Other(2), Message::AuthenticationKerberosV5)
            | (AuthRequest::Other(6), Message::AuthenticationScmCredential)
            | (AuthRequest::Other(7), Message::AuthenticationGss)
            | (AuthRequest::Other(8), Message::AuthenticationGssContinue(_))
            | (AuthRequest::Other(9), Message::AuthenticationSspi) => {}
            (AuthRequest::Md5Password { salt }, Message::AuthenticationMd5Password(b)) => {
                assert_eq!(*salt, b.salt());
            }
            (AuthRequest::Sasl { mechanisms }, Message::AuthenticationSasl(b)) => {
                let theirs: Vec<String> = b
                    .mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .unwrap_or_default();
                assert_eq!(*mechanisms, theirs);
            }
            (AuthRequest::SaslContinue(d), Message::AuthenticationSaslContinue(b)) => {
                assert_eq!(*d, b.data());
            }
            (AuthRequest::SaslFinal(d), Message::AuthenticationSaslFinal(b)) => {
                assert_eq!(*d, b.data());
            }
            (a, _) => panic!("authentication request {a:?} reads differently"),
        },
        // Types we do not decode: postgres-protocol may (DataRow, RowDescription, ...).
        (Backend::Other { tag: t }, _) => assert_eq!(*t, tag),
        (ours, _) => panic!("{ours:?} is another message to postgres-protocol"),
    }
}

fn same_fields(ours: &[(u8, &str)], theirs: ErrorFields<'_>) {
    let theirs: Result<Vec<(u8, Vec<u8>)>, _> = theirs
        .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
        .collect();
    let ours: Vec<(u8, Vec<u8>)> = ours
        .iter()
        .map(|(c, v)| (*c, v.as_bytes().to_vec()))
        .collect();
    assert_eq!(Ok(ours), theirs.map_err(|e| e.to_string()));
}

/// We decoded a message postgres-protocol refused: allowed only where we mean to differ.
fn only_ours_accepts(tag: u8, body: &[u8], e: &std::io::Error) {
    match parse_backend(tag, body) {
        Err(_) => {}
        // Types postgres-protocol does not know.
        Ok(Backend::CopyBothResponse | Backend::NegotiateProtocolVersion) => {}
        // We do not read the Copy responses' format fields.
        Ok(Backend::CopyInResponse | Backend::CopyOutResponse) => {}
        // Authentication requests we do not support: we do not read their bodies (it
        // knows codes 2 and 6-9, and refuses bytes after those that carry none).
        Ok(Backend::Authentication(AuthRequest::Other(_))) => {}
        Ok(Backend::Other { .. }) => {}
        Ok(ours) => panic!("we read {ours:?}, postgres-protocol refuses it: {e}"),
    }
}

/// postgres-protocol decoded a message we refused: allowed only where we are stricter.
fn only_theirs_accepts(tag: u8, body: &[u8], e: &MessageError) {
    let sasl = tag == b'R' && body.get(..4) == Some(&[0, 0, 0, 10]);
    let strict = matches!(e, MessageError::NotUtf8 { .. }) || matches!(tag, b'E' | b'N') || sasl;
    assert!(
        strict,
        "we refuse a {:?} message postgres-protocol reads: {e}",
        char::from(tag)
    );
}

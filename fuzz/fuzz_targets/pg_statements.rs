//! The statement log (`statements::StatementLog`) fed arbitrary, interleaved client and
//! server messages: simple queries, Parse/Bind/Execute/Sync batches, errors, COPY in all
//! three directions, out-of-order and unanswered messages.
//!
//! The input is decoded with `arbitrary` into a list of operations; statement and portal
//! names come mostly from a small set so that they collide the way real ones do.
//!
//! Checked beyond "no panic":
//! - no statement is logged that was not asked for: the statements logged and those
//!   `pending()` together are never more than the Queries, Executes and Parses sent;
//! - every statement started at or after the connection began, and its duration fits in
//!   the time that passed;
//! - a logged text is never longer than `MAX_STATEMENT_TEXT` plus the truncation marker,
//!   except the "(unknown portal …)"/"(unknown prepared statement …)" placeholders, which
//!   quote the name the client sent.

#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use lastmile_postgres::message::{Backend, ErrorFields, Frontend};
use lastmile_postgres::statements::{MAX_STATEMENT_TEXT, Outcome, StatementLog};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Name {
    Unnamed,
    S1,
    S2,
    Other(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Unnamed => "",
            Name::S1 => "s1",
            Name::S2 => "s2",
            Name::Other(s) => s,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum CommandTag {
    Select(u64),
    Insert(u64),
    Update(u64),
    Copy(u64),
    Begin,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Op {
    Query(String),
    Parse {
        statement: Name,
        text: String,
    },
    Bind {
        portal: Name,
        statement: Name,
        formats: Vec<i16>,
        params: Vec<Option<Vec<u8>>>,
    },
    Execute {
        portal: Name,
        max_rows: i32,
    },
    CloseStatement(Name),
    ClosePortal(Name),
    Sync,
    Flush,
    ClientCopyData(u16),
    ClientCopyDone,
    CopyFail,
    Terminate,
    ClientOther(u8),
    CommandComplete(CommandTag),
    EmptyQueryResponse,
    Error {
        code: String,
        message: String,
    },
    Notice,
    ReadyForQuery(u8),
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    ServerCopyData(u16),
    ServerCopyDone,
    ParseComplete,
    BindComplete,
    CloseComplete,
    PortalSuspended,
    ServerOther(u8),
    /// CopyData the gateway streamed instead of inspecting.
    StreamedCopyData {
        from_client: bool,
        len: u32,
    },
    /// Time passes.
    Wait(u16),
}

#[derive(Debug, Arbitrary)]
struct Session {
    keep_params: bool,
    ops: Vec<Op>,
}

/// "… (truncated: N bytes in all)" with the largest N a message can carry.
const MARKER: usize = 40;

fuzz_target!(|session: Session| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut log = StatementLog::new(session.keep_params);
    let (mut asked, mut runs, mut logged) = (0_usize, 0_usize, 0_usize);
    for op in &session.ops {
        now += Duration::from_micros(1);
        let tag_text;
        let client = match op {
            Op::Query(text) => Some(Frontend::Query { text }),
            Op::Parse { statement, text } => Some(Frontend::Parse {
                statement: statement.as_str(),
                text,
                param_types: Vec::new(),
            }),
            Op::Bind {
                portal,
                statement,
                formats,
                params,
            } => Some(Frontend::Bind {
                portal: portal.as_str(),
                statement: statement.as_str(),
                param_formats: formats.clone(),
                params: params.iter().map(|p| p.as_deref()).collect(),
                result_formats: Vec::new(),
            }),
            Op::Execute { portal, max_rows } => Some(Frontend::Execute {
                portal: portal.as_str(),
                max_rows: *max_rows,
            }),
            Op::CloseStatement(n) => Some(Frontend::Close {
                kind: b'S',
                name: n.as_str(),
            }),
            Op::ClosePortal(n) => Some(Frontend::Close {
                kind: b'P',
                name: n.as_str(),
            }),
            Op::Sync => Some(Frontend::Sync),
            Op::Flush => Some(Frontend::Flush),
            Op::ClientCopyData(len) => Some(Frontend::CopyData { len: (*len).into() }),
            Op::ClientCopyDone => Some(Frontend::CopyDone),
            Op::CopyFail => Some(Frontend::CopyFail { message: "stop" }),
            Op::Terminate => Some(Frontend::Terminate),
            Op::ClientOther(tag) => Some(Frontend::Other { tag: *tag }),
            _ => None,
        };
        if let Some(msg) = client {
            match &msg {
                Frontend::Query { .. } | Frontend::Execute { .. } => {
                    asked += 1;
                    runs += 1;
                }
                Frontend::Parse { .. } => asked += 1,
                _ => {}
            }
            log.frontend(&msg, now);
            assert!(log.pending() <= runs && log.pending() + logged <= asked);
            continue;
        }
        let server = match op {
            Op::CommandComplete(tag) => {
                tag_text = match tag {
                    CommandTag::Select(n) => format!("SELECT {n}"),
                    CommandTag::Insert(n) => format!("INSERT 0 {n}"),
                    CommandTag::Update(n) => format!("UPDATE {n}"),
                    CommandTag::Copy(n) => format!("COPY {n}"),
                    CommandTag::Begin => "BEGIN".to_owned(),
                    CommandTag::Other(s) => s.clone(),
                };
                Some(Backend::CommandComplete { tag: &tag_text })
            }
            Op::EmptyQueryResponse => Some(Backend::EmptyQueryResponse),
            Op::Error { code, message } => Some(Backend::ErrorResponse(ErrorFields {
                severity: "ERROR",
                code,
                message,
                fields: Vec::new(),
            })),
            Op::Notice => Some(Backend::NoticeResponse(ErrorFields::default())),
            Op::ReadyForQuery(status) => Some(Backend::ReadyForQuery { status: *status }),
            Op::CopyInResponse => Some(Backend::CopyInResponse),
            Op::CopyOutResponse => Some(Backend::CopyOutResponse),
            Op::CopyBothResponse => Some(Backend::CopyBothResponse),
            Op::ServerCopyData(len) => Some(Backend::CopyData { len: (*len).into() }),
            Op::ServerCopyDone => Some(Backend::CopyDone),
            Op::ParseComplete => Some(Backend::ParseComplete),
            Op::BindComplete => Some(Backend::BindComplete),
            Op::CloseComplete => Some(Backend::CloseComplete),
            Op::PortalSuspended => Some(Backend::PortalSuspended),
            Op::ServerOther(tag) => Some(Backend::Other { tag: *tag }),
            Op::StreamedCopyData { from_client, len } => {
                log.copy_data(*from_client, *len as usize);
                None
            }
            Op::Wait(ms) => {
                now += Duration::from_millis((*ms).into());
                None
            }
            _ => None,
        };
        let Some(msg) = server else {
            continue;
        };
        if let Some(statement) = log.backend(&msg, now) {
            logged += 1;
            assert!(logged <= asked, "{logged} statements logged, {asked} asked");
            assert!(statement.started >= t0 && statement.started <= now);
            assert!(statement.duration <= now - t0);
            let placeholder = statement.text.starts_with("(unknown ");
            assert!(
                placeholder || statement.text.len() <= MAX_STATEMENT_TEXT + MARKER,
                "{} bytes of text",
                statement.text.len()
            );
            if let Outcome::Ok { tags, rows } = &statement.outcome {
                assert!(rows.is_none() || !tags.is_empty());
            }
            if let Some(params) = &statement.params {
                assert!(session.keep_params);
                let _ = params.len();
            }
        }
        assert!(log.pending() <= runs && log.pending() + logged <= asked);
    }
});

//! The relay after login: both directions framed (§55.7), only the messages the
//! statement log needs looked at, every other byte forwarded as it came, each read's
//! worth in one write.
//!
//! Each statement becomes one `db.query` event when the server answers it. The events go
//! through the gateway's event sink, which batches and syncs them off the statement's
//! path; when the sink cannot record at all, the next statement is refused and the
//! connection ends, so statements do not go on running unlogged.

use lastmile_proto::wire::ErrorCode;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::{Buf as _, BytesMut};
use lastmile_postgres::{
    frame::{self, Limits, Scanner, Step},
    message::{self, Frontend},
    statements::{CopyDirection, Outcome, Protocol, Statement, StatementLog},
};
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf,
};
use tracing::{debug, info};

use super::{Refusal, login::Session, upstream::Upstream};
use crate::{
    events::{DbQuery, Event, EventBody},
    gateway::streams::Connection,
};

/// Client messages the statement log reads (§55.7): Query, Parse, Bind, Execute, Close,
/// Sync, CopyDone, CopyFail. CopyData is counted from its header.
fn frontend_inspected(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' | b'c' | b'f')
}

/// Server messages the statement log reads: CommandComplete, EmptyQueryResponse,
/// ErrorResponse, ReadyForQuery, Copy{In,Out,Both}Response, CopyDone, PortalSuspended,
/// and BackendKeyData, which never reaches the client.
fn backend_inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'C' | b'I' | b'E' | b'Z' | b'G' | b'H' | b'W' | b'c' | b's' | b'K'
    )
}

/// How much is read from the server at a time.
const READ: usize = 64 << 10;

struct Shared {
    conn_id: lastmile_proto::wire::ConnectionId,
    sock_cookie: Option<u64>,
    log: Mutex<StatementLog>,
    statements: AtomicU64,
    /// Whether the last batch sent to the client ended inside a message, so nothing may
    /// be injected (a FATAL) after it.
    client_mid_message: AtomicBool,
}

pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut conn: Connection,
    client: S,
    session: Session,
) {
    let Session {
        database,
        upstream,
        leftover,
        cancel,
        ..
    } = session;
    let shared = Arc::new(Shared {
        conn_id: conn.id.clone(),
        sock_cookie: conn.sock_cookie,
        log: Mutex::new(StatementLog::new(conn.gw.log_query_params)),
        statements: AtomicU64::new(0),
        client_mid_message: AtomicBool::new(false),
    });
    let (from_client, mut to_client) = tokio::io::split(client);
    let (from_server, to_server) = tokio::io::split(upstream);
    let mut ending = conn.ending.clone();
    let result = {
        let up = client_to_server(&conn, &shared, from_client, to_server);
        let down = server_to_client(
            &conn,
            &shared,
            &database,
            from_server,
            &mut to_client,
            leftover,
        );
        tokio::select! {
            r = up => r,
            r = down => r,
            why = ending.wait() => Err(ended(why)),
        }
    };
    drop(cancel);
    let statements = shared.statements.load(Ordering::Relaxed);
    conn.record
        .extra
        .insert("statements".into(), statements.into());
    conn.record
        .extra
        .insert("database".into(), database.clone().into());
    match result {
        Ok(()) => {}
        Err(refusal) => {
            super::record_refusal(&mut conn, &refusal);
            // Not in the middle of a server message: the client would misread it.
            if let Some(bytes) = refusal.error_response()
                && !shared.client_mid_message.load(Ordering::Acquire)
            {
                let _ = to_client.write_all(&bytes).await;
            }
        }
    }
    let _ = to_client.shutdown().await;
    info!(
        statements,
        up = conn.meter.up(),
        down = conn.meter.down(),
        "postgres session closed"
    );
}

/// What the client is told when its connection must end (§55.8: 57P01 admin_shutdown,
/// the code a terminated backend gives).
fn ended(why: String) -> Refusal {
    let refusal = Refusal::fatal(
        "57P01",
        ErrorCode::ConnectionEnded,
        format!("lastmile: {why}"),
    );
    if why.starts_with("session") {
        refusal.hint("run `lastmile login` again")
    } else {
        refusal.hint("ask an administrator for access to this resource")
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, StatementLog> {
    match shared.log.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn client_to_server<S: AsyncRead>(
    conn: &Connection,
    shared: &Shared,
    mut from_client: ReadHalf<S>,
    mut to_server: WriteHalf<Upstream>,
) -> Result<(), Refusal> {
    let mut scanner = Scanner::new(Limits::default(), frontend_inspected);
    let mut buf = BytesMut::new();
    let lost = |e: std::io::Error| {
        Refusal::fatal(
            "08006",
            ErrorCode::UpstreamLost,
            format!("lastmile: the connection to the server broke: {e}"),
        )
    };
    loop {
        buf.reserve(READ);
        match from_client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                // The client is done: so is the server connection.
                let _ = to_server.shutdown().await;
                return Ok(());
            }
            Ok(_) => {}
        }
        let mut pos = 0;
        let now = Instant::now();
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match scanner.next(rest).map_err(|e| {
                Refusal::fatal(
                    "08P01",
                    ErrorCode::ProtocolViolation,
                    format!("lastmile: invalid message from the client: {e}"),
                )
            })? {
                Step::NeedMore => break,
                Step::Pass { tag, len } => {
                    if tag == b'd' {
                        lock(shared).copy_data(true, len.saturating_sub(frame::HEADER_LEN));
                    }
                }
                Step::Forward(n) => pos += n,
                Step::Message { tag, len } => {
                    let msg = rest.get(..len).unwrap_or_default();
                    let parsed = message::parse_frontend(tag, frame::body(msg)).map_err(|e| {
                        Refusal::fatal(
                            "08P01",
                            ErrorCode::ProtocolViolation,
                            format!("lastmile: invalid message from the client: {e}"),
                        )
                    })?;
                    if matches!(parsed, Frontend::Query { .. } | Frontend::Execute { .. })
                        && conn.gw.sink.failing()
                    {
                        return Err(Refusal::fatal(
                            "58030",
                            ErrorCode::AuditUnavailable,
                            "lastmile: the gateway cannot record statements right now (its audit log cannot be written), so none may run",
                        )
                        .hint("try again later; the gateway's operators have been alerted in its log"));
                    }
                    lock(shared).frontend(&parsed, now);
                    pos += len;
                }
            }
        }
        if pos > 0 {
            let ready = buf.split_to(pos);
            to_server.write_all(&ready).await.map_err(lost)?;
        }
    }
}

async fn server_to_client<W: AsyncWrite>(
    conn: &Connection,
    shared: &Shared,
    database: &str,
    mut from_server: ReadHalf<Upstream>,
    to_client: &mut WriteHalf<W>,
    mut buf: BytesMut,
) -> Result<(), Refusal> {
    let mut scanner = Scanner::new(Limits::default(), backend_inspected);
    loop {
        let mut pos = 0;
        let now = Instant::now();
        // Messages to leave out (BackendKeyData), as ranges of `buf`.
        let mut cut: Option<(usize, usize)> = None;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match scanner.next(rest).map_err(|e| {
                Refusal::fatal(
                    "08P01",
                    ErrorCode::UpstreamProtocol,
                    format!("lastmile: invalid message from the server: {e}"),
                )
            })? {
                Step::NeedMore => break,
                Step::Pass { tag, len } => {
                    if tag == b'd' {
                        lock(shared).copy_data(false, len.saturating_sub(frame::HEADER_LEN));
                    }
                }
                Step::Forward(n) => pos += n,
                Step::Message { tag, len } => {
                    if tag == b'K' {
                        // The server's own key never reaches the client.
                        cut = Some((pos, len));
                        break;
                    }
                    let msg = rest.get(..len).unwrap_or_default();
                    let parsed = message::parse_backend(tag, frame::body(msg)).map_err(|e| {
                        Refusal::fatal(
                            "08P01",
                            ErrorCode::UpstreamProtocol,
                            format!("lastmile: invalid message from the server: {e}"),
                        )
                    })?;
                    let done = lock(shared).backend(&parsed, now);
                    if let Some(statement) = done {
                        record(conn, shared, database, statement);
                    }
                    pos += len;
                }
            }
        }
        if pos > 0 {
            let ready = buf.split_to(pos);
            shared
                .client_mid_message
                .store(scanner.mid_message(), Ordering::Release);
            to_client
                .write_all(&ready)
                .await
                .map_err(|_| Refusal::silent(ErrorCode::ClientGone, "the client went away"))?;
        }
        if let Some((_, len)) = cut {
            debug!("dropped a BackendKeyData from the server");
            buf.advance(len);
            continue;
        }
        buf.reserve(READ);
        match from_server.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Refusal::fatal(
                    "08006",
                    ErrorCode::UpstreamLost,
                    format!("lastmile: the connection to the server broke: {e}"),
                ));
            }
        }
    }
}

/// Writes the `db.query` event of one statement.
fn record(conn: &Connection, shared: &Shared, database: &str, s: Statement) {
    shared.statements.fetch_add(1, Ordering::Relaxed);
    let (outcome, tags, rows, sqlstate, error) = match s.outcome {
        Outcome::Ok { tags, rows } => ("ok", tags, rows, None, None),
        Outcome::Error { sqlstate, message } => {
            ("error", Vec::new(), None, Some(sqlstate), Some(message))
        }
    };
    let (copy, copy_bytes) = match s.copy {
        Some(c) => (
            Some(match c.direction {
                CopyDirection::In => "in",
                CopyDirection::Out => "out",
                CopyDirection::Both => "both",
            }),
            Some(c.bytes),
        ),
        None => (None, None),
    };
    conn.gw.sink.write(&Event::now(EventBody::DbQuery(DbQuery {
        connection: shared.conn_id.clone(),
        session: conn.identity.session.clone(),
        user: conn.identity.user.clone(),
        resource: conn.authorized.resource.name.clone(),
        gateway: conn.gw.name.clone(),
        sock_cookie: shared.sock_cookie,
        database: database.to_owned(),
        protocol: match s.protocol {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        },
        query: s.text,
        params: s.params,
        outcome,
        tags,
        rows,
        sqlstate,
        error,
        duration_us: u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX),
        copy,
        copy_bytes,
    })));
}

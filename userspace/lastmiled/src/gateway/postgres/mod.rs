//! `postgres` resources: the gateway speaks PostgreSQL to the user's client, logs in to
//! the server with the resource's credential, and relays, logging every statement.
//!
//! The phases of one connection (PostgreSQL 15 docs, "Frontend/Backend Protocol"):
//! 1. **Startup** (§55.2.1): the gateway answers the client itself. An SSLRequest is
//!    answered `S` and TLS is terminated here, at the gateway, with a certificate for
//!    the resource's names from the organisation's CA ([`tls`]): the key stays on the
//!    gateway, which serves the resource, rather than on every user's host, and a client
//!    with `sslmode=verify-full` and the organisation's CA as its root verifies the name
//!    it dialled. (The tunnel already encrypts the hop; TLS here is for clients that
//!    insist on it.) GSSENCRequest is answered `N`. A CancelRequest is mapped to the
//!    server's real key ([`cancel`]).
//! 2. **Login** ([`login`]): the database the client asked for is checked against the
//!    resource's list; the gateway connects with the resource's `upstream_tls` and
//!    authenticates as the resource's database user with the credential the API released
//!    for this connection, which lives only in zeroized memory and only until the login
//!    ends. The client then gets AuthenticationOk, the server's ParameterStatus messages,
//!    a BackendKeyData of the gateway's own, and ReadyForQuery.
//! 3. **Relay** ([`relay`]): message framing only; the messages the statement log needs
//!    are looked at, every other byte is forwarded untouched.

mod cancel;
mod login;
mod relay;
mod tls;
mod upstream;

use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use lastmile_postgres::{
    message,
    startup::{self, StartupMessage, StartupPacket},
};
use lastmile_proto::wire::ErrorCode;
use lastmile_tunnel::{server::Incoming, stream::ClientStream};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tracing::{info, warn};

pub(super) use cancel::Cancels;
pub(super) use tls::ServerTls;

use super::streams::Connection;
use crate::events::{DbRefusal, Event, EventBody};

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn serve(mut conn: Connection, incoming: Incoming) {
    let (send, recv) = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            conn.record.error = Some(lastmile_audit_sink::error_chain(&e));
            return;
        }
    };
    let mut client = ClientStream::new(send, recv, conn.meter.clone());
    let mut buf = BytesMut::new();
    match startup_within(&mut client, &mut buf, true).await {
        Ok(Startup::Tls) => {
            let config = conn
                .gw
                .server_tls
                .config(&conn.gw, &conn.authorized.resource)
                .await;
            match config {
                Ok(config) => {
                    if write(&mut client, &[message::SSL_SUPPORTED]).await.is_err() {
                        return;
                    }
                    match tokio_rustls::TlsAcceptor::from(config).accept(client).await {
                        Ok(tls) => {
                            conn.record.extra.insert("client_tls".into(), true.into());
                            begin(conn, tls, BytesMut::new(), false).await
                        }
                        Err(e) => {
                            info!(error = %e, "client TLS handshake failed");
                            conn.record.error = Some(format!("client TLS handshake: {e}"));
                        }
                    }
                }
                Err(e) => {
                    // Without a certificate the client is told `N`: one that insists on
                    // TLS gives up, others go on in the (already encrypted) tunnel.
                    warn!(error = %e, "no TLS certificate for this resource; answering N");
                    if write(&mut client, &[message::SSL_NOT_SUPPORTED])
                        .await
                        .is_ok()
                    {
                        begin(conn, client, buf, false).await;
                    }
                }
            }
        }
        Ok(other) => finish(conn, client, buf, other).await,
        Err(refusal) => refuse(&mut conn, &mut client, refusal).await,
    }
}

/// Reads the (rest of the) startup on `client` and goes on with the connection.
async fn begin<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut conn: Connection,
    mut client: S,
    mut buf: BytesMut,
    tls_possible: bool,
) {
    match startup_within(&mut client, &mut buf, tls_possible).await {
        Ok(Startup::Tls) => {
            let refusal = Refusal::fatal(
                "08P01",
                ErrorCode::ProtocolViolation,
                "lastmile: a second encryption request",
            );
            refuse(&mut conn, &mut client, refusal).await;
        }
        Ok(other) => finish(conn, client, buf, other).await,
        Err(refusal) => refuse(&mut conn, &mut client, refusal).await,
    }
}

async fn finish<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut conn: Connection,
    mut client: S,
    buf: BytesMut,
    startup: Startup,
) {
    let startup = match startup {
        Startup::Cancel(key) => {
            cancel::forward(&mut conn, key).await;
            return;
        }
        Startup::Login(s) => s,
        Startup::Tls => return,
    };
    if !buf.is_empty() {
        // §55.2.1: the client waits for the authentication exchange; anything sent
        // before it ends is not a client we understand.
        return refuse(
            &mut conn,
            &mut client,
            Refusal::fatal(
                "08P01",
                ErrorCode::ProtocolViolation,
                "lastmile: the client sent messages before authentication completed",
            ),
        )
        .await;
    }
    let session = match login::login(&mut conn, &mut client, &startup).await {
        Ok(s) => s,
        Err(refusal) => return refuse(&mut conn, &mut client, refusal).await,
    };
    info!(database = %session.database, upstream = %conn.record.upstream_text(), tls = session.tls, "postgres session open");
    relay::run(conn, client, session).await;
}

/// What the client opened the connection for.
enum Startup {
    Login(StartupMessage),
    Cancel(startup::CancelKey),
    /// It asked for TLS, and the caller may give it.
    Tls,
}

async fn startup_within<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    tls_possible: bool,
) -> Result<Startup, Refusal> {
    tokio::time::timeout(STARTUP_TIMEOUT, read_startup(client, buf, tls_possible))
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::fatal(
                "08P01",
                ErrorCode::ProtocolViolation,
                "lastmile: no startup packet within 30 s",
            ))
        })
}

/// Reads startup packets until a StartupMessage or CancelRequest (or an SSLRequest the
/// caller may answer with TLS), answering GSSENCRequest (and SSLRequest when TLS is not
/// possible) with `N` and a newer protocol with NegotiateProtocolVersion.
async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    buf: &mut BytesMut,
    tls_possible: bool,
) -> Result<Startup, Refusal> {
    loop {
        let parsed = startup::parse_startup(buf).map_err(|e| {
            Refusal::fatal(
                "08P01",
                ErrorCode::BadStartup,
                format!("lastmile: invalid startup packet: {e}"),
            )
        })?;
        let Some((packet, used)) = parsed else {
            if buf.len() > startup::MAX_STARTUP_PACKET + 8 {
                return Err(Refusal::fatal(
                    "08P01",
                    ErrorCode::BadStartup,
                    "lastmile: the startup packet is too long",
                ));
            }
            buf.reserve(4096);
            match client.read_buf(buf).await {
                Ok(0) | Err(_) => {
                    return Err(Refusal::silent(
                        ErrorCode::ClientGone,
                        "the client closed before its startup packet",
                    ));
                }
                Ok(_) => continue,
            }
        };
        buf.advance(used);
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                // CVE-2021-23214 class: bytes that arrived with the request, before our
                // answer, were not protected by whatever the answer sets up.
                if !buf.is_empty() {
                    return Err(Refusal::fatal(
                        "08P01",
                        ErrorCode::ProtocolViolation,
                        "lastmile: the client sent data after its encryption request before the answer",
                    ));
                }
                if tls_possible && matches!(packet, StartupPacket::SslRequest) {
                    return Ok(Startup::Tls);
                }
                write(client, &[message::SSL_NOT_SUPPORTED]).await?;
            }
            StartupPacket::Cancel(key) => return Ok(Startup::Cancel(key)),
            StartupPacket::Startup(s) => {
                if s.needs_negotiation() {
                    let options = s.protocol_options();
                    write(
                        client,
                        &startup::negotiate_protocol_version(startup::PROTOCOL_MINOR, &options),
                    )
                    .await?;
                }
                return Ok(Startup::Login(s));
            }
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> Result<(), Refusal> {
    client
        .write_all(bytes)
        .await
        .map_err(|_| Refusal::silent(ErrorCode::ClientGone, "the client went away"))
}

/// Why a connection ends before (or instead of) its relay: what the client is told (a
/// FATAL ErrorResponse, unless the client is gone) and what the audit log records.
#[derive(Debug)]
pub(super) struct Refusal {
    /// SQLSTATE for the client, or `None` to tell it nothing.
    sqlstate: Option<&'static str>,
    /// The audit event's code.
    code: ErrorCode,
    message: String,
    hint: Option<String>,
}

impl Refusal {
    pub(super) fn fatal(
        sqlstate: &'static str,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            sqlstate: Some(sqlstate),
            code,
            message: message.into(),
            hint: None,
        }
    }

    fn silent(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            sqlstate: None,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl Refusal {
    /// The FATAL ErrorResponse the client is sent, unless it is to be told nothing.
    fn error_response(&self) -> Option<Vec<u8>> {
        self.sqlstate.map(|sqlstate| {
            message::error_response("FATAL", sqlstate, &self.message, None, self.hint.as_deref())
        })
    }
}

/// Records why the gateway ends the connection: in `connection.close` and as a
/// `db.refused` event.
fn record_refusal(conn: &mut Connection, refusal: &Refusal) {
    warn!(code = %refusal.code, message = %refusal.message, "postgres connection ended by the gateway");
    conn.record.error = Some(format!("{}: {}", refusal.code, refusal.message));
    conn.gw
        .sink
        .write(&Event::now(EventBody::DbRefused(DbRefusal {
            connection: conn.id.clone(),
            session: conn.identity.session.clone(),
            user: conn.identity.user.clone(),
            resource: conn.authorized.resource.name.clone(),
            gateway: conn.gw.name.clone(),
            sock_cookie: conn.sock_cookie,
            code: refusal.code.clone(),
            message: refusal.message.clone(),
        })));
}

/// Tells the client (FATAL) and the audit log (`db.refused`) why the connection ends.
async fn refuse<S: AsyncWrite + Unpin>(conn: &mut Connection, client: &mut S, refusal: Refusal) {
    record_refusal(conn, &refusal);
    if let Some(bytes) = refusal.error_response() {
        let _ = client.write_all(&bytes).await;
    }
    let _ = client.shutdown().await;
}

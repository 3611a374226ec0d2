//! `postgres` resources: the gateway speaks PostgreSQL to the user's client, logs in to
//! the server with the resource's credential, and relays, logging every statement.
//!
//! The phases of one connection (PostgreSQL 15 docs, "Frontend/Backend Protocol"):
//! 1. **Startup** (§55.2.1): the gateway answers the client itself. An SSLRequest or
//!    GSSENCRequest is answered `N`: the tunnel already encrypts the hop, and the first
//!    hop is this host's loopback or redirected socket (see the README for clients that
//!    insist on TLS). A CancelRequest is mapped to the server's real key ([`cancel`]).
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
mod upstream;

use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use lastmile_postgres::{
    message,
    startup::{self, StartupMessage, StartupPacket},
};
use lastmile_tunnel::{server::Incoming, stream::ClientStream};
use tokio::io::AsyncWriteExt as _;
use tracing::{info, warn};

pub(super) use cancel::Cancels;

use super::streams::Connection;
use crate::events::{DbRefusal, Event, EventBody};

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn serve(mut conn: Connection, incoming: Incoming) {
    let (send, recv) = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            conn.record.error = Some(e.to_string());
            return;
        }
    };
    let mut client = ClientStream::new(send, recv, conn.meter.clone());
    let mut buf = BytesMut::new();
    let startup =
        match tokio::time::timeout(STARTUP_TIMEOUT, read_startup(&mut client, &mut buf)).await {
            Ok(Ok(s)) => s,
            Ok(Err(refusal)) => return refuse(&mut conn, &mut client, refusal).await,
            Err(_) => {
                return refuse(
                    &mut conn,
                    &mut client,
                    Refusal::fatal(
                        "08P01",
                        "protocol_violation",
                        "lastmile: no startup packet within 30 s",
                    ),
                )
                .await;
            }
        };
    let startup = match startup {
        Startup::Cancel(key) => {
            cancel::forward(&mut conn, key).await;
            return;
        }
        Startup::Login(s) => s,
    };
    if !buf.is_empty() {
        // §55.2.1: the client waits for the authentication exchange; anything sent
        // before it ends is not a client we understand.
        return refuse(
            &mut conn,
            &mut client,
            Refusal::fatal(
                "08P01",
                "protocol_violation",
                "lastmile: the client sent messages before authentication completed",
            ),
        )
        .await;
    }
    let session = match login::login(&mut conn, &mut client, &startup).await {
        Ok(s) => s,
        Err(refusal) => return refuse(&mut conn, &mut client, refusal).await,
    };
    info!(database = %session.database, upstream = ?conn.record.upstream, tls = session.tls, "postgres session open");
    relay::run(conn, client, session).await;
}

/// What the client opened the connection for.
enum Startup {
    Login(StartupMessage),
    Cancel(startup::CancelKey),
}

/// Reads startup packets until a StartupMessage or CancelRequest, answering SSLRequest
/// and GSSENCRequest with `N` and a newer protocol with NegotiateProtocolVersion.
async fn read_startup(client: &mut ClientStream, buf: &mut BytesMut) -> Result<Startup, Refusal> {
    loop {
        let parsed = startup::parse_startup(buf).map_err(|e| {
            Refusal::fatal(
                "08P01",
                "bad_startup",
                format!("lastmile: invalid startup packet: {e}"),
            )
        })?;
        let Some((packet, used)) = parsed else {
            match client.read_chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > startup::MAX_STARTUP_PACKET + 8 {
                        return Err(Refusal::fatal(
                            "08P01",
                            "bad_startup",
                            "lastmile: the startup packet is too long",
                        ));
                    }
                    buf.extend_from_slice(&chunk);
                    continue;
                }
                Ok(None) | Err(_) => {
                    return Err(Refusal::silent(
                        "client_gone",
                        "the client closed before its startup packet",
                    ));
                }
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
                        "protocol_violation",
                        "lastmile: the client sent data after its encryption request before the answer",
                    ));
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

async fn write(client: &mut ClientStream, bytes: &[u8]) -> Result<(), Refusal> {
    client
        .write_all(bytes)
        .await
        .map_err(|_| Refusal::silent("client_gone", "the client went away"))
}

/// Why a connection ends before (or instead of) its relay: what the client is told (a
/// FATAL ErrorResponse, unless the client is gone) and what the audit log records.
#[derive(Debug)]
pub(super) struct Refusal {
    /// SQLSTATE for the client, or `None` to tell it nothing.
    sqlstate: Option<&'static str>,
    /// The audit event's code.
    code: &'static str,
    message: String,
    hint: Option<String>,
}

impl Refusal {
    pub(super) fn fatal(
        sqlstate: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            sqlstate: Some(sqlstate),
            code,
            message: message.into(),
            hint: None,
        }
    }

    fn silent(code: &'static str, message: impl Into<String>) -> Self {
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

/// Tells the client (FATAL) and the audit log (`db.refused`) why the connection ends.
async fn refuse(conn: &mut Connection, client: &mut ClientStream, refusal: Refusal) {
    warn!(code = refusal.code, message = %refusal.message, "postgres connection refused");
    conn.record.error = Some(format!("{}: {}", refusal.code, refusal.message));
    conn.gw
        .sink
        .write(&Event::now(EventBody::DbRefused(DbRefusal {
            connection: conn.id.clone(),
            session: conn.identity.session.clone(),
            user: conn.identity.user.clone(),
            resource: conn.authorized.resource.name.clone(),
            gateway: conn.gw.name.clone(),
            sock_cookie: sock_cookie(&conn.id),
            code: refusal.code.to_owned(),
            message: refusal.message.clone(),
        })));
    if let Some(sqlstate) = refusal.sqlstate {
        let bytes = message::error_response(
            "FATAL",
            sqlstate,
            &refusal.message,
            None,
            refusal.hint.as_deref(),
        );
        let _ = client.write_all(&bytes).await;
    }
    let _ = client.shutdown().await;
}

/// The socket cookie in a connection id made by the agent (`sock-<cookie>-<nonce>`), so
/// statements join the kernel's connect event.
pub(super) fn sock_cookie(connection: &str) -> Option<u64> {
    connection
        .strip_prefix("sock-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|c| c.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_socket_cookie_is_read_from_agent_connection_ids() {
        assert_eq!(super::sock_cookie("sock-4242-ab12cd"), Some(4242));
        assert_eq!(super::sock_cookie("listen-4242-ab12cd"), None);
        assert_eq!(super::sock_cookie("sock-x-1"), None);
    }
}

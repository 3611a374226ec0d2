//! Logging in to the server as the resource's database user (§55.2.2 "Authentication"),
//! then greeting the client as if it had logged in itself.

use bytes::{Buf as _, BytesMut};
use lastmile_postgres::{
    auth::{AuthStep, Authenticator, ChannelBindingPolicy, Credentials, tls_server_end_point},
    frame::{self, Limits, Scanner, Step},
    message::{self, AuthRequest, Backend},
    startup::{CancelKey, StartupMessage},
};
use lastmile_proto::wire::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use zeroize::Zeroizing;

use super::{
    Refusal,
    upstream::{self, Upstream},
};
use crate::gateway::streams::{Connection, Credential};

/// A logged-in server connection, ready to relay.
pub(super) struct Session {
    pub database: String,
    pub tls: bool,
    pub upstream: Upstream,
    /// Server bytes read past ReadyForQuery (none, from a well-behaved server).
    pub leftover: BytesMut,
    /// The key the client was given (ours) and the server's real one.
    pub cancel: Option<super::cancel::Registration>,
}

/// Startup parameters the gateway sets itself, or does not pass on.
fn passed_on(name: &str) -> bool {
    !matches!(name, "user" | "database" | "replication") && !name.starts_with("_pq_.")
}

pub(super) async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection,
    client: &mut S,
    startup: &StartupMessage,
) -> Result<Session, Refusal> {
    let resource = conn.authorized.resource.clone();
    let database = startup.database().unwrap_or_default().to_owned();
    if !resource.databases.is_empty() && !resource.databases.contains(&database) {
        return Err(Refusal::fatal(
            "3D000",
            ErrorCode::DatabaseNotAllowed,
            format!(
                "lastmile: database \"{database}\" is not reachable through `{}`",
                resource.name
            ),
        )
        .hint(format!(
            "this resource allows: {}",
            resource.databases.join(", ")
        )));
    }
    if startup
        .get("replication")
        .is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0"))
    {
        return Err(Refusal::fatal(
            "28000",
            ErrorCode::ReplicationRefused,
            "lastmile: replication connections are not relayed (their commands are not logged as statements)",
        ));
    }
    let Some(db_user) = resource.database_user.clone() else {
        return Err(Refusal::fatal(
            "28000",
            ErrorCode::NoDatabaseUser,
            format!(
                "lastmile: resource `{}` names no database user to log in as",
                resource.name
            ),
        )
        .hint("an administrator sets it: lastmile-api resources put … --database-user ROLE"));
    };
    let mut upstream = upstream::connect(&conn.gw, &resource).await.map_err(|e| {
        Refusal::fatal(
            "08006",
            ErrorCode::UpstreamUnreachable,
            format!(
                "lastmile: the gateway cannot open `{}`: {}",
                resource.name,
                lastmile_audit_sink::error_chain(&e)
            ),
        )
    })?;
    conn.record.upstream = match &upstream {
        Upstream::Plain(s) => s.peer_addr().ok(),
        Upstream::Tls(t) => t.get_ref().0.peer_addr().ok(),
    };
    let binding = match upstream.server_certificate().and_then(tls_server_end_point) {
        Some(hash) => ChannelBindingPolicy::TlsServerEndPoint(hash),
        None => ChannelBindingPolicy::None,
    };
    let password = match conn.credential.take() {
        Some(Credential::Password(p)) => p,
        // An SSH credential on a postgres resource logs in with no password: the
        // server says what it wants.
        Some(Credential::SshKey(_) | Credential::SshCertificate { .. }) | None => {
            Zeroizing::new(Vec::new())
        }
    };
    let mut auth = Authenticator::new(
        Credentials {
            user: db_user.clone(),
            password,
        },
        binding,
    );
    let mut params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| passed_on(k))
        .cloned()
        .collect();
    params.push(("user".into(), db_user.clone()));
    params.push(("database".into(), database.clone()));
    let lost = |e: std::io::Error| {
        Refusal::fatal(
            "08006",
            ErrorCode::UpstreamLost,
            format!(
                "lastmile: the connection to `{}` broke during login: {e}",
                resource.name
            ),
        )
    };
    upstream
        .write_all(&StartupMessage::new(params).encode())
        .await
        .map_err(lost)?;

    let mut scanner = Scanner::new(Limits::default(), |_| true);
    let mut buf = BytesMut::with_capacity(8 << 10);
    let mut greeting = Vec::with_capacity(512);
    message::put_authentication_ok(&mut greeting);
    let mut authenticated = false;
    let mut real_key = None;
    loop {
        let step = scanner.next(&buf).map_err(|e| {
            Refusal::fatal(
                "08P01",
                ErrorCode::UpstreamProtocol,
                format!("lastmile: `{}` sent an invalid message: {e}", resource.name),
            )
        })?;
        let len = match step {
            Step::Message { len, .. } => len,
            // Every type is inspected during login, so these do not occur.
            Step::Pass { .. } | Step::Forward(_) | Step::NeedMore => {
                read_more(&mut upstream, &mut buf, client).await?;
                continue;
            }
        };
        let msg = buf.get(..len).unwrap_or_default();
        let tag = msg.first().copied().unwrap_or_default();
        let parsed = message::parse_backend(tag, frame::body(msg)).map_err(|e| {
            Refusal::fatal(
                "08P01",
                ErrorCode::UpstreamProtocol,
                format!("lastmile: `{}` sent an invalid message: {e}", resource.name),
            )
        })?;
        match parsed {
            Backend::Authentication(request) if !authenticated => {
                match auth.feed(&request) {
                    Ok(AuthStep::Send(reply)) => {
                        let reply = Zeroizing::new(reply);
                        upstream.write_all(&reply).await.map_err(lost)?;
                    }
                    Ok(AuthStep::Wait) => {}
                    Ok(AuthStep::Done) => authenticated = true,
                    Err(e) => {
                        return Err(Refusal::fatal(
                            "28000",
                            ErrorCode::UpstreamLoginFailed,
                            format!(
                                "lastmile: the gateway could not log in to `{}` as its database user: {e}",
                                resource.name
                            ),
                        ));
                    }
                }
                if matches!(request, AuthRequest::Ok) {
                    authenticated = true;
                }
            }
            Backend::ErrorResponse(fields) => {
                let (code, what) = if authenticated {
                    (ErrorCode::UpstreamRefused, "refused the session")
                } else {
                    (
                        ErrorCode::UpstreamLoginFailed,
                        "refused the gateway's login",
                    )
                };
                return Err(Refusal::fatal(
                    "28000",
                    code,
                    format!(
                        "lastmile: the gateway could not log in to `{}`: the server {what} ({} {})",
                        resource.name, fields.code, fields.message
                    ),
                )
                .hint("the stored credential or the resource's database user may be wrong: tell an administrator"));
            }
            Backend::ParameterStatus { .. } | Backend::NoticeResponse(_) if authenticated => {
                greeting.extend_from_slice(msg);
            }
            Backend::BackendKeyData(key) if authenticated => real_key = Some(key),
            Backend::NegotiateProtocolVersion => {}
            Backend::ReadyForQuery { status } if authenticated => {
                buf.advance(len);
                let cancel = match real_key {
                    Some(real) => {
                        let ours = super::cancel::Registration::new(conn, real)?;
                        greeting.extend_from_slice(&ours.key().encode_backend_key_data());
                        Some(ours)
                    }
                    None => None,
                };
                message::put_ready_for_query(&mut greeting, status);
                client.write_all(&greeting).await.map_err(|_| {
                    Refusal::silent(ErrorCode::ClientGone, "the client went away during login")
                })?;
                return Ok(Session {
                    database,
                    tls: upstream.is_tls(),
                    upstream,
                    leftover: buf,
                    cancel,
                });
            }
            _ => {
                return Err(Refusal::fatal(
                    "08P01",
                    ErrorCode::UpstreamProtocol,
                    format!(
                        "lastmile: `{}` sent an unexpected message ({}) during login",
                        resource.name,
                        char::from(tag)
                    ),
                ));
            }
        }
        buf.advance(len);
    }
}

/// Reads more of the server's login messages. The client must stay quiet meanwhile: it
/// has not been told it is logged in.
async fn read_more<S: AsyncRead + Unpin>(
    upstream: &mut Upstream,
    buf: &mut BytesMut,
    client: &mut S,
) -> Result<(), Refusal> {
    buf.reserve(8 << 10);
    let mut early = [0u8; 1];
    tokio::select! {
        n = upstream.read_buf(buf) => match n {
            Ok(0) | Err(_) => Err(Refusal::fatal(
                "08006",
                ErrorCode::UpstreamLost,
                "lastmile: the server closed the connection during login",
            )),
            Ok(_) => Ok(()),
        },
        read = client.read(&mut early) => match read {
            Ok(n) if n > 0 => Err(Refusal::fatal(
                "08P01",
                ErrorCode::ProtocolViolation,
                "lastmile: the client sent messages before authentication completed",
            )),
            _ => Err(Refusal::silent(ErrorCode::ClientGone, "the client went away during login")),
        },
    }
}

/// A CancelKey the server does not know is harmless; one CancelKey guessable by
/// another user is not: ours are random.
pub(super) fn random_key() -> Result<CancelKey, Refusal> {
    let b = lastmile_api_client::random32().map_err(|e| {
        Refusal::fatal(
            "58000",
            ErrorCode::Internal,
            format!("lastmile: no randomness: {e}"),
        )
    })?;
    let word = |i: usize| {
        let mut w = [0u8; 4];
        if let Some(s) = b.get(i..i + 4) {
            w.copy_from_slice(s);
        }
        i32::from_be_bytes(w)
    };
    // A backend pid is positive; keep ours looking like one.
    Ok(CancelKey {
        pid: word(0) & 0x7fff_ffff,
        secret: word(4),
    })
}

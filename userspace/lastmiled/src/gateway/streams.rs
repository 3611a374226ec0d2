//! Tunnels and their streams: the handshake, each stream's checks, and the relay.

use lastmile_proto::wire::ConnectionId;
use lastmile_proto::wire::ErrorCode;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::{ConnectionAuthorized, CredentialKind, ResourceKind};
use lastmile_tunnel::{
    header::{Refusal, StreamHeader},
    server::{Accepted, Incoming},
    splice::Meter,
    tls::SessionIdentity,
};
use tokio::{net::TcpStream, sync::watch, task::JoinSet};
use tracing::{Instrument as _, debug, info, info_span};
use zeroize::Zeroizing;

use super::{Gateway, Live, authorize::authorize};
use crate::events::{Event, EventBody, GatewayClose};

pub(super) async fn tunnel(
    gw: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
    (handshake, timeout): (tokio::sync::OwnedSemaphorePermit, Duration),
) {
    let accepted = match tokio::time::timeout(
        timeout,
        lastmile_tunnel::server::accept(tls, tcp, peer),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            gw.metrics.tls_failures.inc();
            info!(%peer, error = %error_chain(&e), "tunnel handshake refused");
            return;
        }
        Err(_) => {
            gw.metrics.tls_failures.inc();
            info!(%peer, ?timeout, "tunnel handshake timed out ([gateway] handshake_timeout)");
            return;
        }
    };
    drop(handshake);
    gw.metrics.tunnels_open.inc();
    let session = accepted.identity.session.clone();
    let id = gw.next.fetch_add(1, Ordering::Relaxed);
    let (cut, cut_seen) = watch::channel(None);
    let span = info_span!("tunnel", id, session = %session, user = %accepted.identity.user, %peer);
    let task = tokio::spawn(streams(gw.clone(), accepted, cut_seen).instrument(span));
    if let Ok(mut t) = gw.tunnels.lock() {
        t.entry(session.clone()).or_default().push(Live {
            id,
            abort: task.abort_handle(),
            cut,
        });
    }
    let _ = task.await;
    gw.metrics.tunnels_open.dec();
    if let Ok(mut t) = gw.tunnels.lock()
        && let Some(list) = t.get_mut(&session)
    {
        list.retain(|l| l.id != id);
        if list.is_empty() {
            t.remove(&session);
        }
    }
}

async fn streams(gw: Arc<Gateway>, accepted: Accepted, cut: watch::Receiver<Option<String>>) {
    let Accepted {
        identity,
        mut connection,
        ..
    } = accepted;
    info!("tunnel open");
    let identity = Arc::new(identity);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tasks.spawn(stream(gw.clone(), identity.clone(), Incoming { request, respond }, cut.clone()));
                }
                Some(Err(e)) => {
                    debug!(error = %e, "tunnel broke");
                    break;
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    info!("tunnel closed");
}

/// Why a connection must end before either side closes it: its session was revoked (the
/// tunnel is cut) or expired. Handlers wait on it beside their relay, so they can tell
/// the user in their protocol before the stream goes.
#[derive(Debug, Clone)]
pub(super) struct Ending {
    /// The tunnel's: its session was revoked.
    cut: watch::Receiver<Option<String>>,
    /// This connection's: the user's access to the resource was revoked.
    access: watch::Receiver<Option<String>>,
    /// When the session or the grant ends, whichever is first, and which.
    expires: (tokio::time::Instant, &'static str),
}

impl Ending {
    /// Resolves with the reason once the connection must end.
    pub(super) async fn wait(&mut self) -> String {
        let (deadline, what) = self.expires;
        tokio::select! {
            changed = self.cut.wait_for(Option::is_some) => match changed {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The tunnel is gone; its streams go with it.
                Err(_) => "tunnel closed".to_owned(),
            },
            changed = self.access.wait_for(Option::is_some) => match changed {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "access revoked".to_owned(),
            },
            () = tokio::time::sleep_until(deadline) => what.to_owned(),
        }
    }

    fn revoked(&self) -> Option<String> {
        self.cut
            .borrow()
            .clone()
            .or_else(|| self.access.borrow().clone())
    }
}

/// A deadline `at` (Unix seconds) from now.
fn deadline(at: i64) -> tokio::time::Instant {
    let left = at - lastmile_api_client::now();
    tokio::time::Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

/// One authorized stream, handed to its resource kind's handler.
pub(super) struct Connection {
    pub gw: Arc<Gateway>,
    pub identity: Arc<SessionIdentity>,
    pub header: StreamHeader,
    /// The connection's id, as the API chose it and the audit log knows it.
    pub id: ConnectionId,
    /// The kernel's socket cookie of the user's connection, from the id the client
    /// proposed (`sock-COOKIE-…`), when the node handed it over.
    pub sock_cookie: Option<u64>,
    pub authorized: ConnectionAuthorized,
    /// The resource's credential, opened for this connection only.
    pub credential: Option<Credential>,
    pub ending: Ending,
    pub meter: Arc<Meter>,
    /// `connection.close`, written when this is dropped; handlers fill in the upstream
    /// and why it ended.
    pub record: CloseRecord,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("resource", &self.authorized.resource.name)
            .finish_non_exhaustive()
    }
}

/// A credential in gateway memory, zeroized when dropped.
pub(super) enum Credential {
    Password(Zeroizing<Vec<u8>>),
    /// A stored OpenSSH private key (`ssh-key`); ssh-key zeroizes it on drop.
    SshKey(Box<russh::keys::PrivateKey>),
    /// The API's short-lived user certificate for this connection's own key
    /// (`ssh-certificate`).
    SshCertificate {
        key: Box<russh::keys::PrivateKey>,
        certificate: Box<russh::keys::Certificate>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(…)")
    }
}

/// Writes `connection.close` when the stream ends, however it ends (also when its tunnel
/// is cut, which drops this).
pub(super) struct CloseRecord {
    gw: Arc<Gateway>,
    identity: Arc<SessionIdentity>,
    connection: ConnectionId,
    client_connection: String,
    sock_cookie: Option<u64>,
    resource: String,
    /// The resource's kind, for the open-streams gauge.
    kind: crate::metrics::KindLabel,
    pub upstream: Option<SocketAddr>,
    meter: Arc<Meter>,
    started: Instant,
    pub error: Option<String>,
    /// More fields for this kind of connection (a database connection's statement
    /// count, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
    ending: Ending,
    /// This connection's entry in the gateway's access table.
    access: (super::Access, u64),
}

impl CloseRecord {
    /// The target's address for a log line, or `none` before it is connected.
    pub fn upstream_text(&self) -> String {
        self.upstream
            .map_or_else(|| "none".to_owned(), |a| a.to_string())
    }
}

impl Drop for CloseRecord {
    fn drop(&mut self) {
        self.gw.metrics.streams_open.get_or_create(&self.kind).dec();
        if let Ok(mut a) = self.gw.access.lock() {
            let (key, id) = &self.access;
            if let Some(list) = a.get_mut(key) {
                list.retain(|(i, _)| i != id);
                if list.is_empty() {
                    a.remove(key);
                }
            }
        }
        let error = match self.ending.revoked() {
            Some(why) => Some(why),
            None => self.error.take(),
        };
        self.gw
            .sink
            .write(&Event::now(EventBody::ConnectionClose(GatewayClose {
                connection: std::mem::take(&mut self.connection),
                client_connection: std::mem::take(&mut self.client_connection),
                sock_cookie: self.sock_cookie,
                session: self.identity.session.clone(),
                user: self.identity.user.clone(),
                resource: std::mem::take(&mut self.resource),
                gateway: self.gw.name.clone(),
                upstream: self.upstream,
                bytes_up: self.meter.up(),
                bytes_down: self.meter.down(),
                duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                error,
                extra: std::mem::take(&mut self.extra),
            })));
    }
}

async fn stream(
    gw: Arc<Gateway>,
    identity: Arc<SessionIdentity>,
    mut incoming: Incoming,
    cut: watch::Receiver<Option<String>>,
) {
    let header = match incoming.header() {
        Ok(h) => h,
        // Already answered; recorded here.
        Err(r) => return gw.refused(&identity, None, &r),
    };
    // The names audit events use: the client's proposal, the cookie it carries, and the
    // API's id once the API has named the connection.
    let span = info_span!(
        "stream",
        client_connection = %header.authorization.connection,
        sock_cookie = header.authorization.connection.sock_cookie(),
        connection = tracing::field::Empty,
        resource = %header.resource
    );
    async {
        match open(&gw, &identity, &header, cut).await {
            Ok(conn) => {
                let kind = conn.authorized.resource.kind;
                match kind {
                    ResourceKind::Tcp => super::tcp::serve(conn, incoming).await,
                    ResourceKind::Postgres => super::postgres::serve(conn, incoming).await,
                    ResourceKind::Ssh => super::ssh::serve(conn, incoming).await,
                }
            }
            Err(r) => {
                gw.refused(&identity, Some(&header), &r);
                incoming.refuse(&r);
            }
        }
    }
    .instrument(span)
    .await
}

/// The checks every stream passes before its handler sees it: the authorization is the
/// tunnel's own session and device, and the API authorizes it (recording
/// `connection.open`) and, in the same call, releases the resource's credential sealed
/// to a key made for this one connection.
async fn open(
    gw: &Arc<Gateway>,
    identity: &Arc<SessionIdentity>,
    header: &StreamHeader,
    cut: watch::Receiver<Option<String>>,
) -> Result<Connection, Refusal> {
    let a = &header.authorization;
    if a.session != identity.session || a.device != identity.device {
        return Err(Refusal::new(
            http::StatusCode::FORBIDDEN,
            ErrorCode::AuthorizationOtherSession,
            "the stream's authorization is for another session or device than this tunnel's certificate",
        ));
    }
    let key = age::x25519::Identity::generate();
    // Also a key for SSH, in case the resource logs in with a certificate: the API signs
    // one for its public half, and the private half never leaves this connection.
    let ssh_key = super::ssh::connection_key().map_err(|e| {
        Refusal::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("making this connection's SSH key: {e}"),
        )
    })?;
    let ssh_public = ssh_key.public_key().to_openssh().unwrap_or_default();
    let mut authorized = authorize(
        gw,
        header,
        Some(&key.to_public().to_string()),
        Some(&ssh_public),
    )
    .await?;
    gw.revocations.authorized(authorized.revocations_after);
    let credential = match authorized.credential.take() {
        None => None,
        Some(unlocked) => Some(open_credential(&key, ssh_key, &unlocked)?),
    };
    // A connection outlives neither its session nor its grant.
    let expires = match authorized.grant_expires_at {
        Some(g) if g < authorized.session_expires_at => (deadline(g), "grant expired"),
        _ => (deadline(authorized.session_expires_at), "session expired"),
    };
    let (access_cut, access) = watch::channel(None);
    let access_id = gw.next.fetch_add(1, Ordering::Relaxed);
    let access_key = (authorized.user.clone(), authorized.resource.name.clone());
    if let Ok(mut a) = gw.access.lock() {
        a.entry(access_key.clone())
            .or_default()
            .push((access_id, access_cut));
    }
    let ending = Ending {
        cut,
        access,
        expires,
    };
    // The API names the connection; an older API that does not keeps the client's.
    let id = if authorized.connection.is_empty() {
        ConnectionId::from(a.connection.as_str())
    } else {
        authorized.connection.clone()
    };
    tracing::Span::current().record("connection", id.as_str());
    let sock_cookie = a.connection.sock_cookie();
    let meter = Arc::new(Meter::default());
    let kind = crate::metrics::KindLabel {
        kind: authorized.resource.kind.to_string(),
    };
    gw.metrics.streams.get_or_create(&kind).inc();
    gw.metrics.streams_open.get_or_create(&kind).inc();
    let record = CloseRecord {
        gw: gw.clone(),
        identity: identity.clone(),
        connection: id.clone(),
        client_connection: a.connection.to_string(),
        sock_cookie,
        resource: authorized.resource.name.clone(),
        kind,
        upstream: None,
        meter: meter.clone(),
        started: Instant::now(),
        error: None,
        extra: serde_json::Map::new(),
        ending: ending.clone(),
        access: (access_key, access_id),
    };
    Ok(Connection {
        gw: gw.clone(),
        identity: identity.clone(),
        header: header.clone(),
        id,
        sock_cookie,
        authorized,
        credential,
        ending,
        meter,
        record,
    })
}

fn open_credential(
    key: &age::x25519::Identity,
    ssh_key: russh::keys::PrivateKey,
    unlocked: &lastmile_proto::wire::Unlocked,
) -> Result<Credential, Refusal> {
    let fail = |why: String| {
        Refusal::new(
            http::StatusCode::BAD_GATEWAY,
            ErrorCode::CredentialUnreadable,
            format!("the API's sealed credential for this connection could not be opened: {why}"),
        )
    };
    if unlocked.kind == CredentialKind::SshCertificate {
        let text = unlocked
            .ssh_certificate
            .as_deref()
            .ok_or_else(|| fail("the answer carries no SSH certificate".into()))?;
        let certificate = russh::keys::Certificate::from_openssh(text.trim())
            .map_err(|e| fail(format!("the SSH certificate: {e}")))?;
        return Ok(Credential::SshCertificate {
            key: Box::new(ssh_key),
            certificate: Box::new(certificate),
        });
    }
    use base64::Engine as _;
    let sealed = unlocked
        .sealed
        .as_deref()
        .ok_or_else(|| fail("the answer carries no sealed secret".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|e| fail(e.to_string()))?;
    let secret = Zeroizing::new(age::decrypt(key, &bytes).map_err(|e| fail(e.to_string()))?);
    match unlocked.kind {
        CredentialKind::SshKey => {
            let key = russh::keys::PrivateKey::from_openssh(secret.as_slice())
                .map_err(|e| fail(format!("the stored SSH key: {e}")))?;
            if key.is_encrypted() {
                return Err(fail(
                    "the stored SSH key is passphrase-protected: store it without a passphrase (the vault encrypts it)".into(),
                ));
            }
            Ok(Credential::SshKey(Box::new(key)))
        }
        CredentialKind::Password => Ok(Credential::Password(secret)),
        CredentialKind::SshCertificate => Err(fail(
            "an ssh-certificate answer with a sealed secret".into(),
        )),
    }
}

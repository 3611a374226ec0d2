//! The russh plumbing: one user connection (any stream the tunnel hands over) bridged to
//! one target (a TCP stream the gateway connected), under the resource's policy.
//!
//! The seam for the gateway is [`serve`]: give it the two streams, the gateway's host
//! identity, what the resource says ([`SshResource`]) and the credential for the target
//! ([`UpstreamLogin`]), an [`EventSink`] for the audit log and a future that resolves when
//! the session is revoked.

mod gateway;
mod relay;
mod server;
pub mod upstream;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::keys::{Certificate, PrivateKey};
use russh::{ChannelId, Disconnect, MethodKind, MethodSet, SshId};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{Instrument, info, info_span};

pub use self::upstream::{HostKeyError, HostTrust, UpstreamError, UpstreamLogin};
use crate::events::{ConnectionId, EventSink, SshEvent};
use crate::policy::ChannelPolicy;
use crate::recording::RecordingStore;

/// How long after the ending future fires the session may take to close.
const ENDING_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error("SSH protocol error")]
    Ssh(#[from] russh::Error),
}

/// The gateway's SSH host identity: its key and the certificate the organisation's SSH
/// host CA gave it for the resource's protected names (what `@cert-authority` checks).
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Option<Certificate>,
}

/// What the resource says about SSH.
#[derive(Debug, Clone)]
pub struct SshResource {
    /// The resource's name, for titles and logs.
    pub name: String,
    /// Logins the user may pick with `ssh LOGIN@host`.
    pub ssh_principals: Vec<String>,
    pub policy: ChannelPolicy,
    pub host_trust: HostTrust,
}

/// Everything one bridged connection needs besides its streams.
#[derive(Clone)]
pub struct GatewaySession {
    pub connection: ConnectionId,
    pub resource: SshResource,
    pub login: UpstreamLogin,
    /// Where interactive sessions are recorded; None records nothing.
    pub recordings: Option<Arc<dyn RecordingStore>>,
    pub events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for GatewaySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySession")
            .field("connection", &self.connection)
            .field("resource", &self.resource.name)
            .finish_non_exhaustive()
    }
}

/// What the handler and `serve` both see.
#[derive(Default)]
pub(crate) struct Shared {
    pub open: Mutex<HashSet<ChannelId>>,
    pub counters: Mutex<Vec<Arc<relay::Counters>>>,
    pub principal: Mutex<Option<String>>,
    pub upstream: Mutex<Option<Arc<russh::client::Handle<upstream::Upstream>>>>,
}

fn server_config(host: &HostIdentity) -> russh::server::Config {
    // Strict key exchange: russh's default kex list (Preferred::default) carries
    // `kex-strict-s-v00@openssh.com` and russh enforces it when the client offers its
    // half (OpenSSH 9.6+ does); we keep that list untouched.
    let preferred = russh::Preferred::default();
    debug_assert!(
        preferred
            .kex
            .iter()
            .any(|k| k.as_ref() == "kex-strict-s-v00@openssh.com")
    );
    russh::server::Config {
        server_id: SshId::Standard("SSH-2.0-lastmile".into()),
        methods: MethodSet::from(&[MethodKind::None, MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host.key.clone()],
        certificates: host.certificate.clone().into_iter().collect(),
        preferred,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

/// Bridge one user connection to the target until either side leaves or `ending`
/// resolves (revocation: its output is the reason the user reads on every open channel's
/// stderr before the channels close).
pub async fn serve<S, E>(
    user: S,
    target: TcpStream,
    host: &HostIdentity,
    session: GatewaySession,
    ending: E,
) -> Result<(), BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Future<Output = String> + Send,
{
    let span = info_span!("ssh", connection = %session.connection);
    serve_inner(user, target, host, session, ending)
        .instrument(span)
        .await
}

async fn serve_inner<S, E>(
    user: S,
    target: TcpStream,
    host: &HostIdentity,
    session: GatewaySession,
    ending: E,
) -> Result<(), BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Future<Output = String> + Send,
{
    let started = Instant::now();
    let connection = session.connection.clone();
    let events = session.events.clone();
    let shared = Arc::new(Shared::default());
    let handler = gateway::Gateway::new(session, target, shared.clone());
    let running = russh::server::run_stream(Arc::new(server_config(host)), user, handler).await?;
    let handle = running.handle();
    tokio::pin!(running);
    tokio::pin!(ending);
    let (reason, result) = tokio::select! {
        result = &mut running => ("connection closed".to_owned(), result),
        why = &mut ending => {
            info!("ending the session: {why}");
            let notice = Bytes::from(format!("\r\nlastmile: {why}\r\n"));
            for channel in server::open_channels(&shared) {
                let _ = handle.extended_data(channel, 1, notice.clone()).await;
                let _ = handle.close(channel).await;
            }
            let _ = handle
                .disconnect(Disconnect::ByApplication, format!("lastmile: {why}"), "en".to_owned())
                .await;
            let result = tokio::time::timeout(ENDING_GRACE, &mut running).await;
            (why, result.unwrap_or(Ok(())))
        }
    };
    let upstream = shared.upstream.lock().ok().and_then(|mut slot| slot.take());
    if let Some(upstream) = upstream {
        let _ = upstream
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
    let counters = shared
        .counters
        .lock()
        .map(|all| all.clone())
        .unwrap_or_default();
    let exit_status = counters
        .iter()
        .rev()
        .find_map(|c| c.exit_status.lock().ok().and_then(|s| *s));
    let reason = match &result {
        Err(error) => format!("{reason}: {}", server::error_chain(error)),
        Ok(()) => reason,
    };
    events.event(SshEvent::SessionClosed {
        connection,
        principal: shared.principal.lock().ok().and_then(|p| p.clone()),
        channels: u32::try_from(counters.len()).unwrap_or(u32::MAX),
        bytes_to_target: counters
            .iter()
            .map(|c| c.to_target.load(Ordering::Relaxed))
            .sum(),
        bytes_to_user: counters
            .iter()
            .map(|c| c.to_user.load(Ordering::Relaxed))
            .sum(),
        duration: started.elapsed(),
        exit_status,
        reason,
    });
    result
}

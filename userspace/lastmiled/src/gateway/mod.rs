//! The gateway role: the far end of users' tunnels and the last hop to resources.
//!
//! Each tunnel is a TLS 1.3 connection whose client certificate is a session certificate
//! from the organisation's CA (checked at the handshake, dates included). Each stream on it
//! carries a stream header: the resource and the user's per-connection authorization,
//! signed by the session key. The gateway checks that the authorization is the tunnel's
//! own session and device, then asks the API (`POST /v1/connections/authorize`, signed with
//! the gateway's key) whether the session is live and device-bound, the authorization fresh
//! and unused, and the grant in force; the API records `connection.open` before it says
//! yes. Then the gateway opens the resource, marked so that a node on this host lets the
//! connection through, and splices. When the API revokes a session, every tunnel of it
//! is cut at once.

//!
//! - [`identity`]: enrollment and the key and certificate it leaves;
//! - [`renewal`]: renewing the certificate before it ends;
//! - [`revocations`]: following the API's revocations;
//! - [`streams`]: tunnels, streams and their checks;
//! - [`authorize`]: the API call that lets a stream open;
//! - [`upstream`]: connections to resources (TCP with the exempt mark, and TLS);
//! - the handlers, one per resource kind: [`tcp`] relays bytes, [`postgres`] speaks
//!   PostgreSQL and logs in with the resource's credential, [`ssh`] is the SSH server
//!   the user's `ssh` reaches and logs in to the target with a certificate or key.

mod authorize;
mod identity;
mod postgres;
mod renewal;
mod revocations;
mod ssh;
mod streams;
mod tcp;
mod upstream;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use lastmile_api_client::ApiClient;
use lastmile_proto::wire::{Announce, SessionId, UserName};
use lastmile_tunnel::{
    header::{Refusal, StreamHeader},
    tls::SessionIdentity,
};
use reqwest::Method;
use tokio::{net::TcpListener, task::AbortHandle};
use tracing::{info, warn};

pub use identity::{Identity, enroll, enroll_node, node_audit_identity};

use crate::{
    config::{ApiConfig, Config, GatewayConfig},
    events::{Event, EventBody, EventSink, GatewayRefusal},
};

/// One live tunnel, by session, so a revocation can cut it.
#[derive(Debug)]
struct Live {
    id: u64,
    abort: AbortHandle,
    /// Set to the reason when the session is revoked: handlers tell their user, then end.
    cut: tokio::sync::watch::Sender<Option<String>>,
}

/// A user and a resource: what a grant gives.
pub(crate) type Access = (UserName, String);

/// Set to the reason when a connection's access ends.
type AccessCut = tokio::sync::watch::Sender<Option<String>>;

/// How long handlers have to tell their user a session was revoked before its tunnels
/// are cut regardless.
const REVOCATION_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Gateway {
    name: String,
    key: SigningKey,
    /// Replaced, with the TLS configuration, when the certificate is renewed.
    api: std::sync::RwLock<ApiClient>,
    tls: std::sync::RwLock<Arc<rustls::ServerConfig>>,
    sink: EventSink,
    mark: u32,
    connect_timeout: Duration,
    tunnels: Mutex<HashMap<SessionId, Vec<Live>>>,
    next: AtomicU64,
    /// Open connections by (user, resource), so an access revocation can end them.
    access: Mutex<HashMap<Access, Vec<(u64, AccessCut)>>>,
    /// PostgreSQL connections' cancel keys.
    cancels: postgres::Cancels,
    /// TLS towards PostgreSQL clients that ask for it, per resource.
    server_tls: postgres::ServerTls,
    /// Whether `db.query` events carry bound parameters.
    log_query_params: bool,
    /// The SSH host key and its certificates per `ssh` resource.
    ssh_hosts: ssh::SshHosts,
    /// Where SSH sessions are recorded.
    ssh_recordings: Option<Arc<lastmile_ssh::recording::LocalDirStore>>,
    /// Where the revocation stream must resume from.
    revocations: revocations::Position,
    metrics: crate::metrics::GatewayMetrics,
}

impl Gateway {
    fn api(&self) -> ApiClient {
        match self.api.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn tls(&self) -> Arc<rustls::ServerConfig> {
        match self.tls.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Records that a stream was refused (the header, when it could be read, names the
    /// connection and resource).
    fn refused(&self, who: &SessionIdentity, header: Option<&StreamHeader>, r: &Refusal) {
        info!(code = %r.code, message = %r.message, "stream refused");
        self.metrics
            .refusals
            .get_or_create(&crate::metrics::CodeLabel {
                code: r.code.to_string(),
            })
            .inc();
        self.sink
            .write(&Event::now(EventBody::GatewayRefused(GatewayRefusal {
                client_connection: header.map(|h| h.authorization.connection.to_string()),
                sock_cookie: header.and_then(|h| h.authorization.connection.sock_cookie()),
                session: who.session.clone(),
                user: who.user.clone(),
                resource: header.map(|h| h.resource.to_string()),
                gateway: self.name.clone(),
                code: r.code.clone(),
                message: r.message.clone(),
            })));
    }

    /// Ends `user`'s open connections to `resource`: their access ended.
    fn end_access(&self, user: &UserName, resource: &str, reason: &str) {
        let open = self
            .access
            .lock()
            .ok()
            .and_then(|mut a| a.remove(&(user.clone(), resource.to_owned())))
            .unwrap_or_default();
        for (_, cut) in &open {
            cut.send_replace(Some(format!("access revoked: {reason}")));
        }
        if !open.is_empty() {
            info!(
                %user,
                resource,
                reason,
                connections = open.len(),
                "access revoked: connections ended"
            );
        }
    }

    /// Cuts every tunnel of `session`.
    fn revoke(&self, session: &SessionId, reason: &str) {
        let live = self
            .tunnels
            .lock()
            .ok()
            .and_then(|mut t| t.remove(session))
            .unwrap_or_default();
        for l in &live {
            l.cut
                .send_replace(Some(format!("session revoked: {reason}")));
        }
        if !live.is_empty() {
            let aborts: Vec<AbortHandle> = live.iter().map(|l| l.abort.clone()).collect();
            tokio::spawn(async move {
                tokio::time::sleep(REVOCATION_GRACE).await;
                for a in aborts {
                    a.abort();
                }
            });
        }
        if !live.is_empty() {
            info!(
                %session,
                reason,
                tunnels = live.len(),
                "session revoked: tunnels cut"
            );
        }
    }
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config.gateway, config.api))
}

async fn serve(config: GatewayConfig, api_config: ApiConfig) -> anyhow::Result<()> {
    let identity = Identity::load(&api_config.state_dir)?;
    let api = identity.api(&api_config.url)?;
    let tls = lastmile_tunnel::tls::gateway_config(
        &identity.ca_pem,
        &identity.certificate_pem,
        &identity.key_pem,
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([gateway] listen)", config.listen))?;
    let local = listener.local_addr()?;
    let announce = match &config.announce {
        Some(a) => a.clone(),
        None => {
            let host = identity
                .addresses()
                .into_iter()
                .next()
                .context("the gateway certificate names no address; set [gateway] announce")?;
            if host.contains(':') {
                format!("[{host}]:{}", local.port())
            } else {
                format!("{host}:{}", local.port())
            }
        }
    };
    let answer = api
        .call_as_gateway(
            &identity.name,
            &identity.key,
            Method::POST,
            "/v1/gateways/announce",
            &serde_json::to_vec(&Announce {
                tunnel: announce.clone(),
            })?,
        )
        .await
        .with_context(|| format!("announcing this gateway to the API at {}", api_config.url))?;
    answer
        .json::<lastmile_proto::wire::GatewayEndpoint>()
        .context("the API refused this gateway's announcement")?;
    let sink = EventSink::start(
        "gateway",
        config.events.as_deref(),
        &config.audit,
        Some(identity::audit_identity(&api_config.state_dir)),
    )
    .with_context(|| format!("cannot open the event file {:?}", config.events))?;
    let ssh_host_key = ssh::load_or_create_host_key(&api_config.state_dir)?;
    let recordings_dir = config
        .recordings
        .clone()
        .unwrap_or_else(|| api_config.state_dir.join("recordings"));
    let ssh_recordings = ssh::recordings(&recordings_dir)?;
    let gw = Arc::new(Gateway {
        name: identity.name.clone(),
        key: identity.key.clone(),
        api: std::sync::RwLock::new(api),
        tls: std::sync::RwLock::new(tls),
        sink,
        mark: config.exempt_mark,
        connect_timeout: config.connect_timeout,
        tunnels: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        access: Mutex::new(HashMap::new()),
        cancels: postgres::Cancels::default(),
        server_tls: postgres::ServerTls::default(),
        log_query_params: config.log_query_params,
        ssh_hosts: ssh::SshHosts::new(ssh_host_key),
        ssh_recordings: Some(ssh_recordings),
        revocations: revocations::Position::default(),
        metrics: crate::metrics::GatewayMetrics::default(),
    });
    let mut registry = lastmile_metrics::Registry::with_prefix("lastmile_gateway");
    gw.metrics.register(&mut registry);
    gw.sink.metrics().register(&mut registry);
    crate::metrics::serve(config.metrics_listen, registry).await?;
    info!(gateway = %gw.name, listen = %local, %announce, "gateway serving tunnels");
    tokio::spawn(revocations::watch_revocations(gw.clone()));
    tokio::spawn(renewal::keep_certificate(
        gw.clone(),
        identity,
        api_config.url.clone(),
        api_config.state_dir.clone(),
        config.renew_before,
    ));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(config.max_handshakes));
    let handshake_timeout = config.handshake_timeout;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => match handshakes.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(streams::tunnel(
                            gw.clone(),
                            gw.tls(),
                            tcp,
                            peer,
                            (permit, handshake_timeout),
                        ));
                    }
                    Err(_) => {
                        warn!(%peer, "too many TLS handshakes in progress ([gateway] max_handshakes); connection closed");
                        drop(tcp);
                    }
                },
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("gateway stopping");
    Ok(())
}

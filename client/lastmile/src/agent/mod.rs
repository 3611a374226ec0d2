//! The agent: the user's end of the tunnel.
//!
//! It registers with lastmiled (role node) for the user's uid and receives every
//! connection a process of that user made to a protected target (the socket itself, over
//! SCM_RIGHTS). Each one becomes a stream in a tunnel: one TLS 1.3 connection per gateway,
//! authenticated with the session certificate, opened with the resource and a fresh
//! authorization signed by the session key. Gateways come from the API (`GET
//! /v1/gateways`); a gateway that fails is skipped for a growing while (backoff), and the
//! next one takes new connections. When the session is revoked (the API says so on the
//! revocation stream, or a gateway refuses for it), the agent stops carrying connections
//! and tells each new one, in its own protocol, to log in again.
//!
//! `lastmile listen` runs the same core for one resource on a local port, for hosts
//! without eBPF.

mod backoff;
mod gateways;
mod listen;
mod metrics;
mod node_link;
mod probe;
mod process;
mod refusals;
mod sock_diag;
mod state;

pub use listen::{ListenArgs, listen};
pub use process::{running, spawn, stop};
pub use refusals::{RefusalRecord, read as read_refusals};
pub use state::{AgentState, ApiHealth, GatewayState};

use lastmile_proto::wire::ErrorCode;
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use lastmile_api_client::{ApiClient, Revocations, Session};
use lastmile_audit_sink::error_chain;
use lastmile_handoff::{Handoff, refusal::refuse};
use lastmile_proto::connection::ClientConnectionId;
use lastmile_proto::wire::{GatewayEndpoint, Refreshed, Resource, ResourceKind};
use lastmile_tunnel::{
    client::Tunnel,
    splice::{Meter, splice},
};
use reqwest::Method;
use tokio::net::TcpStream;
use tracing::{Instrument as _, info, info_span, warn};

use crate::home::Home;
use gateways::Gateways;
use node_link::node_link;
use refusals::{OpenError, RefusalRecord as Refused};

/// Where lastmiled's agent socket is, unless told otherwise.
pub const DEFAULT_NODE_SOCKET: &str = "/run/lastmile/node.sock";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// lastmiled's agent socket (default: $LASTMILE_NODE_SOCKET, else
    /// /run/lastmile/node.sock).
    #[arg(long)]
    node_socket: Option<PathBuf>,
    /// Replace an agent already running for this LASTMILE_HOME.
    #[arg(long)]
    replace: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9471).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

const REFRESH_LISTS: Duration = Duration::from_secs(30);
/// When no gateway takes a connection, the list is fetched again at most this often.
const LIST_RETRY: Duration = Duration::from_secs(2);

/// What `agent` and `listen` share: the session, the gateways, the tunnels.
pub struct Core {
    home: Home,
    api: ApiClient,
    session: RwLock<Session>,
    tls: RwLock<Arc<rustls::ClientConfig>>,
    gateways: Mutex<Gateways>,
    resources: RwLock<HashMap<String, Resource>>,
    tunnels: tokio::sync::Mutex<HashMap<String, Arc<Tunnel>>>,
    revoked: Mutex<Option<String>>,
    /// When the gateway list was last fetched because no gateway took a connection.
    listed_at: Mutex<Instant>,
    node: Mutex<String>,
    carried: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    api_health: Mutex<ApiHealth>,
    write_state: bool,
    /// Wakes the state writer (at most one write per STATE_EVERY).
    dirty: tokio::sync::Notify,
    /// Set when the agent's work is over (its session was replaced or logged out): the
    /// main loop ends, and with it the process, after its cleanup.
    shutdown: tokio::sync::watch::Sender<bool>,
}

const STATE_EVERY: Duration = Duration::from_millis(200);

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

fn tls_for(session: &Session) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(lastmile_tunnel::tls::agent_config(
        &session.login.ca,
        &session.login.certificate,
        &session.session_key.to_bytes(),
    )?)
}

impl Core {
    async fn start(home: &Home, write_state: bool) -> anyhow::Result<Arc<Self>> {
        let (api, session) = home
            .load()?
            .context("not logged in: run `lastmile login`")?;
        let tls = tls_for(&session)?;
        let gateways = Gateways::new(session.login.session.clone());
        let core = Arc::new(Self {
            home: home.clone(),
            api,
            session: RwLock::new(session),
            tls: RwLock::new(tls),
            gateways: Mutex::new(gateways),
            resources: RwLock::new(HashMap::new()),
            tunnels: tokio::sync::Mutex::new(HashMap::new()),
            revoked: Mutex::new(None),
            listed_at: Mutex::new(
                Instant::now()
                    .checked_sub(LIST_RETRY)
                    .unwrap_or_else(Instant::now),
            ),
            node: Mutex::new(
                if write_state {
                    "connecting"
                } else {
                    "not used"
                }
                .into(),
            ),
            carried: Default::default(),
            refused: Default::default(),
            api_health: Mutex::new(ApiHealth::default()),
            write_state,
            dirty: tokio::sync::Notify::new(),
            shutdown: tokio::sync::watch::Sender::new(false),
        });
        core.refresh_lists().await?;
        tokio::spawn(core.clone().keep_lists());
        tokio::spawn(core.clone().watch_revocations());
        tokio::spawn(core.clone().keep_certificate());
        core.save_state().await;
        if write_state {
            tokio::spawn(core.clone().write_state_when_dirty());
            tokio::spawn(core.clone().probe_gateways());
        }
        Ok(core)
    }

    async fn write_state_when_dirty(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            self.save_state().await;
            tokio::time::sleep(STATE_EVERY).await;
        }
    }

    /// Something `lastmile status` shows changed.
    fn changed(&self) {
        self.dirty.notify_one();
    }

    fn session(&self) -> Session {
        self.session
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The API answered (a refusal is an answer too).
    fn api_reached(&self) {
        let news = self
            .api_health
            .lock()
            .map(|mut h| h.reached(lastmile_api_client::now()))
            .unwrap_or(false);
        if news {
            info!("the API answers again");
            self.changed();
        }
    }

    /// A call to the API got no answer.
    fn api_failed(&self, error: &lastmile_api_client::ClientError) {
        let error = error_chain(error);
        let news = self
            .api_health
            .lock()
            .map(|mut h| h.failed(lastmile_api_client::now(), error))
            .unwrap_or(false);
        if news {
            self.changed();
        }
    }

    /// `result` of an API call, noted in the API's health.
    fn noted<T>(
        &self,
        result: Result<T, lastmile_api_client::ClientError>,
    ) -> Result<T, lastmile_api_client::ClientError> {
        match &result {
            Ok(_) => self.api_reached(),
            Err(e) => self.api_failed(e),
        }
        result
    }

    fn revoked(&self) -> Option<String> {
        self.revoked.lock().ok().and_then(|r| r.clone())
    }

    async fn set_revoked(&self, why: String) {
        warn!(%why, "the session can no longer be used; log in again");
        if let Ok(mut r) = self.revoked.lock() {
            *r = Some(why);
        }
        self.tunnels.lock().await.clear();
        self.save_state().await;
    }

    /// Fetches the gateways and the user's resources.
    async fn refresh_lists(&self) -> anyhow::Result<()> {
        let session = self.session();
        let answer = self.noted(
            self.api
                .call(&session, Method::GET, "/v1/gateways", None)
                .await,
        )?;
        let gateways: Vec<GatewayEndpoint> = match answer.json() {
            Ok(g) => g,
            Err(e) if needs_login(e.code()) => {
                self.set_revoked(e.to_string()).await;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let resources: Vec<Resource> = self
            .noted(
                self.api
                    .call(&session, Method::GET, "/v1/resources", None)
                    .await,
            )?
            .json()?;
        if let Ok(mut g) = self.gateways.lock() {
            g.set_list(gateways);
        }
        if let Ok(mut r) = self.resources.write() {
            *r = resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        }
        Ok(())
    }

    async fn keep_lists(self: Arc<Self>) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A logout or a new login elsewhere replaces or removes the saved session:
            // this agent's work is over.
            if self.write_state && !self.still_current() {
                info!("the saved session is gone or replaced; the agent stops");
                self.shutdown.send_replace(true);
                return;
            }
            if last.elapsed() < REFRESH_LISTS {
                continue;
            }
            last = Instant::now();
            if self.revoked().is_some() {
                continue;
            }
            if let Err(e) = self.refresh_lists().await {
                warn!(error = %format!("{e:#}"), "cannot refresh the gateway list");
            }
            self.save_state().await;
        }
    }

    /// Resolves once the agent's work is over.
    async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|over| *over).await;
    }

    /// Whether session.json still holds this agent's session (read every second: only
    /// the id is looked at, no keys are loaded).
    fn still_current(&self) -> bool {
        match self.home.saved_session_id() {
            Ok(Some(id)) => id == self.session().login.session,
            Ok(None) => false,
            // Unreadable for a moment (being replaced): keep going.
            Err(_) => true,
        }
    }

    /// Follows the user's revocations; its own session's ends the agent's work. Each
    /// (re)connection is a signed call, so a session revoked while the stream was down
    /// is refused there; the stream also resumes after the last position it had.
    async fn watch_revocations(self: Arc<Self>) {
        let mut backoff = backoff::backoff();
        let mut since: Option<i64> = None;
        loop {
            if self.revoked().is_some() {
                return;
            }
            let session = self.session();
            let path = match since {
                Some(s) => format!("/v1/revocations?since={s}"),
                None => "/v1/revocations".to_owned(),
            };
            match self.noted(self.api.stream(&session, &path).await) {
                Ok(resp) if resp.status().is_success() => {
                    backoff.reset();
                    let mut events = Revocations::new(resp);
                    loop {
                        let next = events.next().await;
                        since = events.position().or(since);
                        let Ok(Some(r)) = next else { break };
                        if r.session == session.login.session {
                            self.set_revoked(format!("session revoked: {}", r.reason))
                                .await;
                            return;
                        }
                    }
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    let answer = lastmile_api_client::Answer { status, body };
                    if let Err(e) = answer.json::<serde_json::Value>()
                        && needs_login(e.code())
                    {
                        self.set_revoked(e.to_string()).await;
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot reach the API for revocations; retrying")
                }
            }
            tokio::time::sleep(backoff.failed()).await;
        }
    }

    /// Renews the session certificate before it ends (the session itself lasts longer).
    async fn keep_certificate(self: Arc<Self>) {
        loop {
            let expires = self.session().login.certificate_expires_at;
            let wait = (expires - lastmile_api_client::now() - 300).max(10);
            tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(10))).await;
            if self.revoked().is_some() {
                return;
            }
            let session = self.session();
            let answer = self.noted(
                self.api
                    .call(&session, Method::POST, "/v1/session/refresh", None)
                    .await,
            );
            match answer.map(|a| a.json::<Refreshed>()) {
                Ok(Ok(r)) => {
                    let mut s = session;
                    s.login.certificate = r.certificate;
                    s.login.certificate_expires_at = r.certificate_expires_at;
                    match tls_for(&s) {
                        Ok(tls) => {
                            if let Ok(mut t) = self.tls.write() {
                                *t = tls;
                            }
                        }
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "the renewed certificate is unusable")
                        }
                    }
                    if let Err(e) = self.home.save_certificate(&s) {
                        warn!(error = %format!("{e:#}"), "cannot save the renewed certificate");
                    }
                    if let Ok(mut cur) = self.session.write() {
                        *cur = s;
                    }
                    info!("session certificate renewed");
                }
                Ok(Err(e)) if needs_login(e.code()) => {
                    self.set_revoked(e.to_string()).await;
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "certificate renewal refused; retrying"),
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot reach the API to renew the certificate")
                }
            }
        }
    }

    /// Carries one local connection to `resource`, or tells its client why not.
    async fn carry(
        self: Arc<Self>,
        tcp: TcpStream,
        resource: String,
        kind: ResourceKind,
        id: ClientConnectionId,
    ) {
        // The names the node's and the gateway's spans and the audit events use.
        let span = info_span!(
            "connection",
            client_connection = %id,
            sock_cookie = id.sock_cookie(),
            resource = %resource
        );
        // Each batch the gateway sends is written as it comes: Nagle would hold a second
        // small write (a TLS handshake's next record) for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        async {
            match self.open(&resource, id.as_str()).await {
                Ok((send, recv, gateway)) => {
                    info!(%gateway, "stream open");
                    self.carried
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.changed();
                    let meter = Meter::default();
                    let started = Instant::now();
                    let result = splice(&tcp, send, recv, true, &meter).await;
                    info!(
                        up = meter.up(),
                        down = meter.down(),
                        ms = started.elapsed().as_millis() as u64,
                        error = %result.err().map_or_else(String::new, |e| e.to_string()),
                        "stream closed"
                    );
                }
                Err(e) => {
                    let explained = e.explain();
                    let message = explained.message();
                    warn!(%message, "connection refused");
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let record = Refused {
                        at: lastmile_api_client::now(),
                        resource: resource.clone(),
                        reason: explained.reason,
                        what_to_do: explained.what_to_do,
                        code: explained.code,
                    };
                    if let Err(e) = refusals::record(&self.home, record) {
                        warn!(error = %format!("{e:#}"), "cannot note the refusal for `lastmile why`");
                    }
                    self.changed();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), refuse(tcp, kind, message))
                            .await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn save_state(&self) {
        if !self.write_state {
            return;
        }
        let live = self.live_tunnels().await;
        let gateways = self
            .gateways
            .lock()
            .map(|g| g.states(|name| live.contains(name)))
            .unwrap_or_default();
        let state = AgentState {
            pid: std::process::id(),
            session: self.session().login.session,
            node: self.node.lock().map(|n| n.clone()).unwrap_or_default(),
            gateways,
            revoked: self.revoked(),
            carried: self.carried.load(std::sync::atomic::Ordering::Relaxed),
            refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            api: self
                .api_health
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default(),
            updated_at: lastmile_api_client::now(),
        };
        if let Ok(bytes) = serde_json::to_vec_pretty(&state)
            && let Err(e) = self.home.write_private(STATE_FILE, &bytes)
        {
            warn!(error = %format!("{e:#}"), "cannot write the agent state");
        }
    }
}

fn needs_login(code: Option<&ErrorCode>) -> bool {
    code.is_some_and(ErrorCode::session_gone)
}

pub const STATE_FILE: &str = "agent.json";

/// `lastmile agent`: register with the node and carry its connections until stopped.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let home = Home::locate()?;
    if let Some(other) = running(&home)
        && other.pid != std::process::id()
    {
        if args.replace {
            stop(&home);
        } else {
            anyhow::bail!(
                "an agent is already running for {} (pid {}); pass --replace",
                home.display(),
                other.pid
            );
        }
    }
    let socket = args
        .node_socket
        .or_else(|| std::env::var_os("LASTMILE_NODE_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_SOCKET));
    let core = Core::start(&home, true).await?;
    if let Some(addr) = args.metrics_listen {
        let mut registry = lastmile_metrics::Registry::default();
        registry.register_collector(Box::new(metrics::AgentState(Arc::downgrade(&core))));
        lastmile_metrics::serve(addr, Arc::new(registry)).await?;
    }
    info!(session = %core.session().login.session, socket = %socket.display(), "agent starting");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Handoff, OwnedFd)>(1024);
    let (node_tx, mut node_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || node_link(&socket, &tx, &node_tx));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some((handoff, fd)) = rx.recv() => {
                let std_stream = std::net::TcpStream::from(fd);
                if let Err(e) = std_stream.set_nonblocking(true) {
                    warn!(error = %e, "handed-off socket unusable");
                    continue;
                }
                match TcpStream::from_std(std_stream) {
                    Ok(tcp) => {
                        let id = ClientConnectionId::handed_over(handoff.sock_cookie, &short_nonce());
                        info!(pid = handoff.pid, comm = %handoff.comm, orig_dst = %handoff.orig_dst, "connection handed over");
                        tokio::spawn(core.clone().carry(tcp, handoff.target.name, handoff.target.kind, id));
                    }
                    Err(e) => warn!(error = %e, "handed-off socket unusable"),
                }
            }
            Some(state) = node_rx.recv() => {
                if let Ok(mut n) = core.node.lock() {
                    *n = state;
                }
                core.save_state().await;
            }
            _ = hangup.recv() => {}
            () = core.stopped() => break,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(home.join(STATE_FILE));
    info!("agent stopped");
    Ok(())
}

fn short_nonce() -> String {
    lastmile_api_client::nonce()
        .map(|n| n.chars().take(8).collect())
        .unwrap_or_default()
}

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

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use lastmile_api_client::{ApiClient, Revocations, Session};
use lastmile_audit_sink::error_chain;
use lastmile_handoff::{AgentLink, Handoff, HandoffError, TargetKind, refusal::refuse};
use lastmile_proto::wire::{GatewayEndpoint, Refreshed, Resource, ResourceKind};
use lastmile_tunnel::{
    ConnectError,
    client::Tunnel,
    header::{Refusal, StreamHeader},
    splice::{Meter, splice},
};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tracing::{Instrument as _, info, info_span, warn};

use crate::session;

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
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The resource to carry.
    resource: String,
    /// Local port (default: the resource's own port).
    #[arg(long)]
    port: Option<u16>,
    /// Local address to listen on: a loopback address (anyone who can reach the port
    /// uses your session).
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

/// What the agent tells `lastmile status`: `$LASTMILE_HOME/agent.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub pid: u32,
    pub session: String,
    pub node: String,
    pub gateways: Vec<GatewayState>,
    /// Why the session can no longer be used, when it cannot.
    pub revoked: Option<String>,
    pub connections: u64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayState {
    pub name: String,
    pub tunnel: String,
    /// `up`, `down` or `idle` (no tunnel yet).
    pub state: String,
    pub error: Option<String>,
}

/// A gateway that failed, and until when it is skipped.
#[derive(Debug, Clone)]
struct Down {
    until: Instant,
    backoff: Duration,
    error: String,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REFRESH_LISTS: Duration = Duration::from_secs(30);
/// When no gateway takes a connection, the list is fetched again at most this often.
const LIST_RETRY: Duration = Duration::from_secs(2);

/// Why a connection could not be carried.
#[derive(Debug)]
enum OpenError {
    /// The session is gone: log in again.
    Login(String),
    /// A gateway refused, for a reason another gateway would share.
    Refused(Refusal),
    /// No gateway could be reached.
    NoGateway(String),
}

impl OpenError {
    fn message(&self) -> String {
        match self {
            Self::Login(why) => {
                format!(
                    "lastmile: your session cannot be used ({why}); run `lastmile login`, then connect again"
                )
            }
            Self::Refused(r) => format!("lastmile: the gateway refused this connection: {r}"),
            Self::NoGateway(why) => format!("lastmile: no gateway could be reached: {why}"),
        }
    }
}

/// What `agent` and `listen` share: the session, the gateways, the tunnels.
pub struct Core {
    home: PathBuf,
    api: ApiClient,
    session: RwLock<Session>,
    tls: RwLock<Arc<rustls::ClientConfig>>,
    gateways: RwLock<Vec<GatewayEndpoint>>,
    resources: RwLock<HashMap<String, Resource>>,
    tunnels: tokio::sync::Mutex<HashMap<String, Arc<Tunnel>>>,
    down: Mutex<HashMap<String, Down>>,
    revoked: Mutex<Option<String>>,
    /// When the gateway list was last fetched because no gateway took a connection.
    listed_at: Mutex<Instant>,
    node: Mutex<String>,
    connections: std::sync::atomic::AtomicU64,
    write_state: bool,
    /// Wakes the state writer (at most one write per STATE_EVERY).
    dirty: tokio::sync::Notify,
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
    async fn start(home: &Path, write_state: bool) -> anyhow::Result<Arc<Self>> {
        let (api, session) = session::load(home)?.context("not logged in: run `lastmile login`")?;
        let tls = tls_for(&session)?;
        let core = Arc::new(Self {
            home: home.to_owned(),
            api,
            session: RwLock::new(session),
            tls: RwLock::new(tls),
            gateways: RwLock::new(Vec::new()),
            resources: RwLock::new(HashMap::new()),
            tunnels: tokio::sync::Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
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
            connections: Default::default(),
            write_state,
            dirty: tokio::sync::Notify::new(),
        });
        core.refresh_lists().await?;
        tokio::spawn(core.clone().keep_lists());
        tokio::spawn(core.clone().watch_revocations());
        tokio::spawn(core.clone().keep_certificate());
        core.save_state().await;
        if write_state {
            tokio::spawn(core.clone().write_state_when_dirty());
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
        let answer = self
            .api
            .call(&session, Method::GET, "/v1/gateways", None)
            .await?;
        let gateways: Vec<GatewayEndpoint> = match answer.json() {
            Ok(g) => g,
            Err(e) if needs_login(e.code()) => {
                self.set_revoked(e.to_string()).await;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let resources: Vec<Resource> = self
            .api
            .call(&session, Method::GET, "/v1/resources", None)
            .await?
            .json()?;
        if let Ok(mut g) = self.gateways.write() {
            *g = gateways;
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
                let _ = std::fs::remove_file(self.home.join(STATE_FILE));
                std::process::exit(0);
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

    /// Whether session.json still holds this agent's session (read every second: only
    /// the id is looked at, no keys are loaded).
    fn still_current(&self) -> bool {
        match session::saved_session_id(&self.home) {
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
        let mut backoff = FIRST_BACKOFF;
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
            match self.api.stream(&session, &path).await {
                Ok(resp) if resp.status().is_success() => {
                    backoff = FIRST_BACKOFF;
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
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
            let answer = self
                .api
                .call(&session, Method::POST, "/v1/session/refresh", None)
                .await;
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
                    if let Err(e) = session::save_certificate(&self.home, &s) {
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

    /// The gateways to try, best first: those with a live tunnel, then the others not
    /// backing off, then (if nothing else is left) those backing off.
    async fn candidates(&self) -> Vec<GatewayEndpoint> {
        let all = self.gateways.read().map(|g| g.clone()).unwrap_or_default();
        let tunnels = self.tunnels.lock().await;
        let now = Instant::now();
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let rank = |g: &GatewayEndpoint| {
            if tunnels.get(&g.name).is_some_and(|t| t.is_open()) {
                0
            } else if down.get(&g.name).is_some_and(|d| d.until > now) {
                2
            } else {
                1
            }
        };
        // Within a rank, an order of this session's own, so agents spread over gateways
        // instead of all choosing the first by name.
        let session = self.session().login.session;
        let spread = |g: &GatewayEndpoint| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&session, &g.name).hash(&mut h);
            h.finish()
        };
        let mut all = all;
        all.sort_by_key(|g| (rank(g), spread(g)));
        all
    }

    fn mark_down(&self, gateway: &str, error: String) {
        if let Ok(mut d) = self.down.lock() {
            let backoff = d
                .get(gateway)
                .map(|x| (x.backoff * 2).min(MAX_BACKOFF))
                .unwrap_or(FIRST_BACKOFF);
            warn!(gateway, %error, backoff_ms = backoff.as_millis() as u64, "gateway down");
            self.changed();
            d.insert(
                gateway.to_owned(),
                Down {
                    until: Instant::now() + backoff,
                    backoff,
                    error,
                },
            );
        }
    }

    async fn tunnel(&self, g: &GatewayEndpoint) -> Result<Arc<Tunnel>, ConnectError> {
        if let Some(t) = self.tunnels.lock().await.get(&g.name)
            && t.is_open()
        {
            return Ok(t.clone());
        }
        let tls = self
            .tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let t = Arc::new(Tunnel::connect(tls, &g.name, &g.tunnel).await?);
        info!(gateway = %g.name, tunnel = %g.tunnel, "tunnel up");
        if let Ok(mut d) = self.down.lock() {
            d.remove(&g.name);
        }
        self.tunnels.lock().await.insert(g.name.clone(), t.clone());
        self.changed();
        Ok(t)
    }

    /// Opens a stream to `resource` through the first gateway that takes it. When none
    /// does, the gateway list may be stale (a gateway moved, a new one came): fetch it again
    /// (at most every LIST_RETRY) and try once more.
    async fn open(
        &self,
        resource: &str,
        connection: &str,
    ) -> Result<(h2::SendStream<Bytes>, h2::RecvStream, String), OpenError> {
        match self.try_gateways(resource, connection).await {
            Err(OpenError::NoGateway(why)) => {
                let due = self
                    .listed_at
                    .lock()
                    .map(|mut at| {
                        let due = at.elapsed() >= LIST_RETRY;
                        if due {
                            *at = Instant::now();
                        }
                        due
                    })
                    .unwrap_or(false);
                if !due {
                    return Err(OpenError::NoGateway(why));
                }
                info!("no gateway took the connection; fetching the gateway list again");
                if let Err(e) = self.refresh_lists().await {
                    return Err(OpenError::NoGateway(format!("{why}; and the API: {e:#}")));
                }
                // The fresh list's gateways get a fresh chance.
                if let Ok(mut d) = self.down.lock() {
                    d.clear();
                }
                self.try_gateways(resource, connection).await
            }
            other => other,
        }
    }

    async fn try_gateways(
        &self,
        resource: &str,
        connection: &str,
    ) -> Result<(h2::SendStream<Bytes>, h2::RecvStream, String), OpenError> {
        if let Some(why) = self.revoked() {
            return Err(OpenError::Login(why));
        }
        let candidates = self.candidates().await;
        if candidates.is_empty() {
            return Err(OpenError::NoGateway(
                "the API lists no gateway (none enrolled and running?)".into(),
            ));
        }
        let mut errors = Vec::new();
        for g in candidates {
            let tunnel = match self.tunnel(&g).await {
                Ok(t) => t,
                Err(e) => {
                    let why = error_chain(&e);
                    errors.push(format!("{}: {why}", g.name));
                    self.mark_down(&g.name, why);
                    continue;
                }
            };
            let (authorization, signature) = self
                .session()
                .authorize(resource, &g.name, connection)
                .map_err(|e| OpenError::NoGateway(e.to_string()))?;
            let header = StreamHeader {
                resource: resource.to_owned(),
                authorization,
                signature,
            };
            match tunnel.open(&header).await {
                Ok((send, recv)) => return Ok((send, recv, g.name)),
                Err(ConnectError::Refused(r)) if r.needs_login() => {
                    self.set_revoked(r.to_string()).await;
                    return Err(OpenError::Login(r.to_string()));
                }
                Err(ConnectError::Refused(r))
                    if matches!(r.code.as_str(), "api_unavailable" | "upstream_unreachable") =>
                {
                    errors.push(format!("{}: {r}", g.name));
                }
                Err(ConnectError::Refused(r)) => return Err(OpenError::Refused(r)),
                Err(e) => {
                    self.tunnels.lock().await.remove(&g.name);
                    let why = error_chain(&e);
                    errors.push(format!("{}: {why}", g.name));
                    self.mark_down(&g.name, why);
                }
            }
        }
        Err(OpenError::NoGateway(errors.join("; ")))
    }

    /// Carries one local connection to `resource`, or tells its client why not.
    async fn carry(
        self: Arc<Self>,
        tcp: TcpStream,
        resource: String,
        kind: TargetKind,
        id: String,
    ) {
        let span = info_span!("connection", connection = %id, resource = %resource);
        // Each batch the gateway sends is written as it comes: Nagle would hold a second
        // small write (a TLS handshake's next record) for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        async {
            self.connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.changed();
            match self.open(&resource, &id).await {
                Ok((send, recv, gateway)) => {
                    info!(%gateway, "stream open");
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
                    let message = e.message();
                    warn!(%message, "connection refused");
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
        let tunnels = self.tunnels.lock().await;
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let now = Instant::now();
        let gateways = self
            .gateways
            .read()
            .map(|g| g.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| {
                let (state, error) = match (tunnels.get(&g.name), down.get(&g.name)) {
                    (Some(t), _) if t.is_open() => ("up", None),
                    (_, Some(d)) if d.until > now => ("down", Some(d.error.clone())),
                    _ => ("idle", None),
                };
                GatewayState {
                    name: g.name,
                    tunnel: g.tunnel,
                    state: state.into(),
                    error,
                }
            })
            .collect();
        drop(tunnels);
        let state = AgentState {
            pid: std::process::id(),
            session: self.session().login.session,
            node: self.node.lock().map(|n| n.clone()).unwrap_or_default(),
            gateways,
            revoked: self.revoked(),
            connections: self.connections.load(std::sync::atomic::Ordering::Relaxed),
            updated_at: lastmile_api_client::now(),
        };
        if let Ok(bytes) = serde_json::to_vec_pretty(&state)
            && let Err(e) = session::write_private(&self.home.join(STATE_FILE), &bytes)
        {
            warn!(error = %format!("{e:#}"), "cannot write the agent state");
        }
    }
}

fn needs_login(code: Option<&str>) -> bool {
    code.is_some_and(lastmile_proto::wire::session_gone)
}

pub const STATE_FILE: &str = "agent.json";

fn target_kind(kind: ResourceKind) -> TargetKind {
    match kind {
        ResourceKind::Postgres => TargetKind::Postgres,
        ResourceKind::Ssh => TargetKind::Ssh,
        ResourceKind::Tcp => TargetKind::Tcp,
    }
}

/// The running agent of this home, if any: its state, with a live pid.
pub fn running(home: &Path) -> Option<AgentState> {
    let text = std::fs::read_to_string(home.join(STATE_FILE)).ok()?;
    let state: AgentState = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(state.pid).ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == b"agent"))
        .unwrap_or(false);
    (alive && ours).then_some(state)
}

/// Stops the running agent of this home (SIGTERM), waiting up to 2 s.
pub fn stop(home: &Path) {
    let Some(state) = running(home) else { return };
    let Ok(pid) = i32::try_from(state.pid) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(home.join(STATE_FILE));
}

/// Starts `lastmile agent` in the background, logging to `$LASTMILE_HOME/agent.log`.
pub fn spawn(home: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    stop(home);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("agent.log"))
        .context("opening the agent log")?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("agent")
        .env("LASTMILE_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    // Until the agent writes its own state, this says it runs, so that a `logout` right
    // after the `login` still finds it.
    let state = AgentState {
        pid: child.id(),
        node: "starting".into(),
        updated_at: lastmile_api_client::now(),
        ..AgentState::default()
    };
    session::write_private(&home.join(STATE_FILE), &serde_json::to_vec_pretty(&state)?)?;
    Ok(child.id())
}

/// `lastmile agent`: register with the node and carry its connections until stopped.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let home = session::home()?;
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
                        let id = format!("sock-{}-{}", handoff.connection_id, short_nonce());
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

/// The blocking side of the node link: register (again, whenever lastmiled restarts) and
/// pass each handed-off connection to the async side.
fn node_link(
    socket: &Path,
    tx: &tokio::sync::mpsc::Sender<(Handoff, OwnedFd)>,
    state: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut last = String::new();
    let mut report = |s: String| {
        if s != last {
            last.clone_from(&s);
            let _ = state.send(s);
        }
    };
    loop {
        let link = match AgentLink::register(socket) {
            Ok(l) => l,
            Err(e) => {
                report(format!("not registered: {}", error_chain(&e)));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        info!(uid = link.uid(), "registered with lastmiled");
        report(format!(
            "registered for uid {} at {}",
            link.uid(),
            socket.display()
        ));
        loop {
            match link.next() {
                Ok(conn) => {
                    if tx.blocking_send(conn).is_err() {
                        return;
                    }
                }
                Err(HandoffError::Closed) => break,
                Err(e) => {
                    warn!(error = %error_chain(&e), "bad message from lastmiled");
                    break;
                }
            }
        }
        report("not registered: lastmiled went away".into());
    }
}

/// `lastmile listen`: a local port into the tunnel, for hosts without eBPF.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    if !args.bind.is_loopback() {
        anyhow::bail!(
            "--bind {} is not a loopback address: everyone who can reach that port would use your session; listen on 127.0.0.1 or ::1",
            args.bind
        );
    }
    let home = session::home()?;
    let core = Core::start(&home, false).await?;
    let resource = core
        .resources
        .read()
        .ok()
        .and_then(|r| r.get(&args.resource).cloned())
        .with_context(|| {
            format!(
                "`{}` is not among your resources (`lastmile resources` lists them)",
                args.resource
            )
        })?;
    let port = args.port.unwrap_or(resource.port);
    let listener = tokio::net::TcpListener::bind((args.bind, port))
        .await
        .with_context(|| format!("cannot listen on {}:{port}", args.bind))?;
    let local = listener.local_addr()?;
    eprintln!(
        "lastmile: {local} carries connections to `{}`; Ctrl-C stops",
        resource.name
    );
    println!(
        "{}",
        serde_json::json!({"listening": local.to_string(), "resource": resource.name})
    );
    let kind = target_kind(resource.kind);
    let me = nix::unistd::getuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Another user of this host must not ride this session.
                    match socket_owner(peer, local) {
                        Some(uid) if uid == me => {}
                        owner => {
                            warn!(%peer, owner = %owner.map_or_else(|| "unknown".to_owned(), |uid| format!("uid {uid}")), "connection from another user (or unknown) refused");
                            drop(tcp);
                            continue;
                        }
                    }
                    let id = format!("listen-{}-{}", peer.port(), short_nonce());
                    tokio::spawn(core.clone().carry(tcp, resource.name.clone(), kind, id));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The uid owning the local TCP socket `client` connected to `server`, asked of the
/// kernel by exact 4-tuple over NETLINK_SOCK_DIAG (sock_diag(7): an `inet_diag_req_v2`
/// without NLM_F_DUMP looks one socket up; the answer's `inet_diag_msg` carries
/// `idiag_uid`). `None` when it cannot be told, which callers treat as a refusal.
fn socket_owner(client: std::net::SocketAddr, server: std::net::SocketAddr) -> Option<u32> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt::ReceiveTimeout,
    };
    use std::os::fd::AsRawFd as _;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const IPPROTO_TCP: u8 = 6;
    let family: u8 = if client.is_ipv4() { 2 } else { 10 };
    let words = |a: std::net::IpAddr| -> [u8; 16] {
        match a {
            std::net::IpAddr::V4(v4) => {
                let mut w = [0u8; 16];
                w[..4].copy_from_slice(&v4.octets());
                w
            }
            std::net::IpAddr::V6(v6) => v6.octets(),
        }
    };
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    // inet_diag_sockid: ports and addresses in network order, interface, no cookie.
    req.extend_from_slice(&client.port().to_be_bytes());
    req.extend_from_slice(&server.port().to_be_bytes());
    req.extend_from_slice(&words(client.ip()));
    req.extend_from_slice(&words(server.ip()));
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    setsockopt(&fd, ReceiveTimeout, &nix::sys::time::TimeVal::new(1, 0)).ok()?;
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    let answer = buf.get(..n)?;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY || kind == NLMSG_ERROR {
        return None;
    }
    // inet_diag_msg after the 16-byte header: family, state, timer, retrans (4),
    // sockid (48), expires, rqueue, wqueue (12), then uid.
    let uid = answer.get(16 + 4 + 48 + 12..16 + 4 + 48 + 16)?;
    Some(u32::from_ne_bytes(uid.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn our_own_loopback_connection_is_ours_and_a_missing_one_is_nobodys() {
        for host in ["127.0.0.1", "[::1]"] {
            let Ok(l) = std::net::TcpListener::bind(format!("{host}:0")) else {
                continue; // no IPv6 loopback here
            };
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let owner = socket_owner(c.local_addr().unwrap(), l.local_addr().unwrap());
            assert_eq!(owner, Some(nix::unistd::getuid().as_raw()), "{host}");
            let mut gone = c.local_addr().unwrap();
            gone.set_port(gone.port().wrapping_add(1));
            assert_eq!(socket_owner(gone, l.local_addr().unwrap()), None, "{host}");
        }
    }
}

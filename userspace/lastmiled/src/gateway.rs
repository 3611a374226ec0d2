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

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use lastmile_api_client::{ApiClient, Revocations};
use lastmile_proto::wire::{
    Announce, ConnectionAuthorized, ConnectionRequest, Enroll, ErrorBody, GatewayCertificate,
    ResourceKind,
};
use lastmile_tunnel::{
    header::{Refusal, StreamHeader},
    server::{Accepted, Incoming},
    splice::{Meter, splice},
    tls::SessionIdentity,
};
use reqwest::Method;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    task::{AbortHandle, JoinSet},
};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    config::{ApiConfig, Config, GatewayConfig},
    events::{Event, EventBody, EventSink, GatewayClose, GatewayRefusal},
};

/// This host's identity with the API, as `lastmiled gateway enroll` left it.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub key: SigningKey,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_pem: String,
}

const KEY_FILE: &str = "gateway.key";
const CERT_FILE: &str = "gateway.pem";
const CA_FILE: &str = "ca.pem";

impl Identity {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).with_context(|| {
                format!(
                    "reading {}: enroll this host first (`lastmiled gateway enroll --token …`)",
                    dir.join(f).display()
                )
            })
        };
        let key_pem = read(KEY_FILE)?;
        let certificate_pem = read(CERT_FILE)?;
        let ca_pem = read(CA_FILE)?;
        use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject as _};
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .with_context(|| format!("{} is not a PKCS#8 PEM key", dir.join(KEY_FILE).display()))?;
        let seed = lastmile_tunnel::tls::ed25519_seed(der.secret_pkcs8_der())
            .with_context(|| format!("{} is not an Ed25519 key", dir.join(KEY_FILE).display()))?;
        let cert = lastmile_tunnel::tls::certificates(&certificate_pem)?;
        let name = cert
            .first()
            .and_then(lastmile_tunnel::tls::gateway_name)
            .with_context(|| {
                format!(
                    "{} is not a gateway certificate",
                    dir.join(CERT_FILE).display()
                )
            })?;
        Ok(Self {
            name,
            key: SigningKey::from_bytes(&seed),
            key_pem,
            certificate_pem,
            ca_pem,
        })
    }

    pub fn api(&self, url: &str) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(
            url,
            &self.ca_pem,
            Some((&self.certificate_pem, &self.key_pem)),
        )?)
    }

    /// The addresses the certificate names.
    pub fn addresses(&self) -> Vec<String> {
        lastmile_tunnel::tls::certificates(&self.certificate_pem)
            .ok()
            .and_then(|c| c.first().map(lastmile_tunnel::tls::certificate_addresses))
            .unwrap_or_default()
    }
}

/// `lastmiled gateway enroll`: makes this host's key, sends a CSR with the one-time token,
/// and stores key, certificate and CA in `state_dir`.
pub async fn enroll(api: &ApiConfig, ca_file: &Path, token: &str) -> anyhow::Result<String> {
    let ca_pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading the organisation CA {}", ca_file.display()))?;
    let seed = lastmile_api_client::random32()?;
    let der = lastmile_tunnel::tls::ed25519_pkcs8(&seed);
    let pair = rcgen::KeyPair::try_from(der.as_slice()).context("making the gateway key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)
        .context("making the CSR")?
        .pem()
        .context("making the CSR")?;
    let client = ApiClient::new(&api.url, &ca_pem, None)?;
    let cert: GatewayCertificate = client
        .post(
            "/v1/gateways/enroll",
            &Enroll {
                token: token.to_owned(),
                csr,
            },
        )
        .await
        .context("enrolling with the API")?;
    let dir = &api.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join(KEY_FILE), pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(CERT_FILE), cert.certificate.as_bytes(), 0o644)?;
    write_file(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    Ok(cert.name)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// One live tunnel, by session, so a revocation can cut it.
#[derive(Debug)]
struct Live {
    id: u64,
    abort: AbortHandle,
    revoked: Arc<AtomicBool>,
}

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
    tunnels: Mutex<HashMap<String, Vec<Live>>>,
    next: AtomicU64,
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
        self.sink
            .write(&Event::now(EventBody::GatewayRefused(GatewayRefusal {
                connection: header.map(|h| h.authorization.connection.clone()),
                session: who.session.clone(),
                user: who.user.clone(),
                resource: header.map(|h| h.resource.clone()),
                gateway: self.name.clone(),
                code: r.code.clone(),
                message: r.message.clone(),
            })));
    }

    /// Cuts every tunnel of `session`.
    fn revoke(&self, session: &str, reason: &str) {
        let live = self
            .tunnels
            .lock()
            .ok()
            .and_then(|mut t| t.remove(session))
            .unwrap_or_default();
        for l in &live {
            l.revoked.store(true, Ordering::Release);
            l.abort.abort();
        }
        if !live.is_empty() {
            info!(
                session,
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
    let sink = EventSink::start(config.events.as_deref(), &config.audit)
        .with_context(|| format!("cannot open the event file {:?}", config.events))?;
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
    });
    info!(gateway = %gw.name, listen = %local, %announce, "gateway serving tunnels");
    tokio::spawn(watch_revocations(gw.clone()));
    tokio::spawn(keep_certificate(
        gw.clone(),
        identity,
        api_config.url.clone(),
        api_config.state_dir.clone(),
        config.renew_before,
    ));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    tokio::spawn(tunnel(gw.clone(), gw.tls(), tcp, peer));
                }
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

/// Follows the API's revocations (all sessions: the gateway's certificate sees them all)
/// and cuts the tunnels of each revoked session. Reconnects, resuming after the last seen.
async fn watch_revocations(gw: Arc<Gateway>) {
    let mut since: Option<i64> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let path = match since {
            Some(s) => format!("/v1/revocations?since={s}"),
            None => "/v1/revocations".to_owned(),
        };
        match gw.api().stream_unsigned(&path).await {
            Ok(resp) if resp.status().is_success() => {
                backoff = Duration::from_millis(200);
                let mut events = Revocations::new(resp);
                loop {
                    match events.next().await {
                        Ok(Some(r)) => {
                            since = Some(r.seq);
                            gw.revoke(&r.session, &r.reason);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e, "revocation stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Ok(resp) => warn!(status = %resp.status(), "the API refused the revocation stream"),
            Err(e) => warn!(error = %e, "cannot reach the API for revocations; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn tunnel(
    gw: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let accepted = match lastmile_tunnel::server::accept(tls, tcp, peer).await {
        Ok(a) => a,
        Err(e) => {
            info!(%peer, error = %e, "tunnel handshake refused");
            return;
        }
    };
    let session = accepted.identity.session.clone();
    let id = gw.next.fetch_add(1, Ordering::Relaxed);
    let revoked = Arc::new(AtomicBool::new(false));
    let span = info_span!("tunnel", id, session = %session, user = %accepted.identity.user, %peer);
    let task = tokio::spawn(streams(gw.clone(), accepted, revoked.clone()).instrument(span));
    if let Ok(mut t) = gw.tunnels.lock() {
        t.entry(session.clone()).or_default().push(Live {
            id,
            abort: task.abort_handle(),
            revoked,
        });
    }
    let _ = task.await;
    if let Ok(mut t) = gw.tunnels.lock()
        && let Some(list) = t.get_mut(&session)
    {
        list.retain(|l| l.id != id);
        if list.is_empty() {
            t.remove(&session);
        }
    }
}

async fn streams(gw: Arc<Gateway>, accepted: Accepted, revoked: Arc<AtomicBool>) {
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
                    tasks.spawn(stream(gw.clone(), identity.clone(), Incoming { request, respond }, revoked.clone()));
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

/// Writes `connection.close` when the stream ends, however it ends (also when its tunnel
/// is cut, which drops this).
struct CloseRecord {
    gw: Arc<Gateway>,
    identity: Arc<SessionIdentity>,
    connection: String,
    resource: String,
    upstream: Option<SocketAddr>,
    meter: Arc<Meter>,
    started: Instant,
    error: Option<String>,
    revoked: Arc<AtomicBool>,
}

impl Drop for CloseRecord {
    fn drop(&mut self) {
        let error = if self.revoked.load(Ordering::Acquire) {
            Some("session revoked: tunnel cut".to_owned())
        } else {
            self.error.take()
        };
        self.gw
            .sink
            .write(&Event::now(EventBody::ConnectionClose(GatewayClose {
                connection: std::mem::take(&mut self.connection),
                session: self.identity.session.clone(),
                user: self.identity.user.clone(),
                resource: std::mem::take(&mut self.resource),
                gateway: self.gw.name.clone(),
                upstream: self.upstream,
                bytes_up: self.meter.up(),
                bytes_down: self.meter.down(),
                duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                error,
            })));
    }
}

async fn stream(
    gw: Arc<Gateway>,
    identity: Arc<SessionIdentity>,
    mut incoming: Incoming,
    revoked: Arc<AtomicBool>,
) {
    let refuse = |incoming: Incoming, header: &StreamHeader, r: Refusal| {
        gw.refused(&identity, Some(header), &r);
        incoming.refuse(&r);
    };
    let header = match incoming.header() {
        Ok(h) => h,
        // Already answered; recorded here.
        Err(r) => return gw.refused(&identity, None, &r),
    };
    let span = info_span!("stream", connection = %header.authorization.connection, resource = %header.resource);
    async {
        let a = &header.authorization;
        if a.session != identity.session || a.device != identity.device {
            return refuse(incoming, &header, Refusal::new(
                http::StatusCode::FORBIDDEN,
                "authorization_other_session",
                "the stream's authorization is for another session or device than this tunnel's certificate",
            ));
        }
        let authorized = match authorize(&gw, &header).await {
            Ok(a) => a,
            Err(r) => return refuse(incoming, &header, r),
        };
        let resource = authorized.resource.clone();
        if resource.kind != ResourceKind::Tcp {
            return refuse(incoming, &header, Refusal::new(
                http::StatusCode::NOT_IMPLEMENTED,
                "protocol_not_supported",
                format!(
                    "this gateway relays `tcp` resources only; `{}` is {:?}, whose protocol handler is not built yet",
                    resource.name, resource.kind
                ),
            ));
        }
        let upstream = match connect_upstream(&gw, &resource.host, resource.port).await {
            Ok(s) => s,
            Err(e) => {
                return refuse(incoming, &header, Refusal::new(
                    http::StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    format!("cannot reach {}:{} for `{}`: {e}", resource.host, resource.port, resource.name),
                ));
            }
        };
        let meter = Arc::new(Meter::default());
        let mut record = CloseRecord {
            gw: gw.clone(),
            identity: identity.clone(),
            connection: a.connection.clone(),
            resource: resource.name.clone(),
            upstream: upstream.peer_addr().ok(),
            meter: meter.clone(),
            started: Instant::now(),
            error: None,
            revoked,
        };
        let (send, recv) = match incoming.accept() {
            Ok(s) => s,
            Err(e) => {
                record.error = Some(e.to_string());
                return;
            }
        };
        info!(upstream = ?record.upstream, "stream open");
        // A connection does not outlive its session.
        let left = authorized.session_expires_at - lastmile_api_client::now();
        let expiry = tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        tokio::select! {
            result = splice(&upstream, send, recv, false, &meter) => {
                if let Err(e) = result {
                    record.error = Some(e.to_string());
                }
            }
            () = expiry => record.error = Some("session expired".into()),
        }
        info!(up = meter.up(), down = meter.down(), "stream closed");
    }
    .instrument(span)
    .await
}

/// Asks the API whether this stream may open.
async fn authorize(gw: &Gateway, header: &StreamHeader) -> Result<ConnectionAuthorized, Refusal> {
    let body = serde_json::to_vec(&ConnectionRequest {
        resource: header.resource.clone(),
        authorization: Some(header.authorization.clone()),
        authorization_signature: Some(header.signature.clone()),
    })
    .map_err(|e| {
        Refusal::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
    let answer = gw
        .api()
        .call_as_gateway(&gw.name, &gw.key, Method::POST, "/v1/connections/authorize", &body)
        .await
        .map_err(|e| {
            Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "api_unavailable",
                format!("the gateway cannot reach the API to check this connection, so it is refused: {e}"),
            )
        })?;
    if (200..300).contains(&answer.status) {
        return answer.json().map_err(|e| {
            Refusal::new(
                http::StatusCode::BAD_GATEWAY,
                "api_unexpected",
                e.to_string(),
            )
        });
    }
    let status = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::FORBIDDEN);
    Err(match serde_json::from_str::<ErrorBody>(&answer.body) {
        Ok(b) => Refusal::new(status, b.error, b.message),
        Err(_) => Refusal::new(status, "api_refused", answer.body),
    })
}

/// Connects to the resource with SO_MARK set, so interception on this host exempts it.
async fn connect_upstream(gw: &Gateway, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("the name resolves to no address");
    let addrs = tokio::net::lookup_host((host, port)).await?;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &gw.mark)
            .map_err(std::io::Error::from)?;
        socket.set_nodelay(true)?;
        match tokio::time::timeout(gw.connect_timeout, socket.connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(last)
}

/// However early renewal is asked for, at most one renewal a minute.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(60);

/// Keeps the gateway certificate current: renews it over mutual TLS (same key, new
/// certificate) before it ends, saves it, and serves new tunnels and API calls with it.
async fn keep_certificate(
    gw: Arc<Gateway>,
    mut identity: Identity,
    url: String,
    dir: std::path::PathBuf,
    renew_before: Duration,
) {
    let renew_before = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let mut floor = Duration::ZERO;
    loop {
        let expires = lastmile_tunnel::tls::certificates(&identity.certificate_pem)
            .ok()
            .and_then(|c| c.first().and_then(lastmile_tunnel::tls::not_after))
            .unwrap_or(0);
        let wait = expires
            .saturating_sub(renew_before)
            .saturating_sub(lastmile_api_client::now())
            .max(0);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(0)).max(floor)).await;
        floor = MIN_RENEWAL_GAP;
        match renew(&gw, &identity).await {
            Ok(pem) => {
                identity.certificate_pem = pem;
                let rebuilt = write_file(
                    &dir.join(CERT_FILE),
                    identity.certificate_pem.as_bytes(),
                    0o644,
                )
                .and_then(|()| {
                    let tls = lastmile_tunnel::tls::gateway_config(
                        &identity.ca_pem,
                        &identity.certificate_pem,
                        &identity.key_pem,
                    )?;
                    let api = identity.api(&url)?;
                    Ok((tls, api))
                });
                match rebuilt {
                    Ok((tls, api)) => {
                        if let Ok(mut t) = gw.tls.write() {
                            *t = tls;
                        }
                        if let Ok(mut a) = gw.api.write() {
                            *a = api;
                        }
                        info!("gateway certificate renewed");
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "the renewed certificate is unusable")
                    }
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "certificate renewal failed; retrying in 5 minutes")
            }
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

async fn renew(gw: &Gateway, identity: &Identity) -> anyhow::Result<String> {
    let pair = rcgen::KeyPair::from_pem(&identity.key_pem).context("reading the gateway key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)?
        .pem()?;
    let cert: GatewayCertificate = gw
        .api()
        .post("/v1/gateways/renew", &lastmile_proto::wire::Renew { csr })
        .await?;
    Ok(cert.certificate)
}

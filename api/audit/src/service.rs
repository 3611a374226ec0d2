//! `lastmile-audit serve`: the log over HTTPS with mutual TLS.
//!
//! Every client presents a certificate from the organisation's CA; its identity is the
//! certificate's first URI SAN (or `CN=<common name>` without one). Writers on the
//! `writers` list may append; readers on the `readers` list may read entries; anyone
//! with a valid certificate may fetch checkpoints and proofs. There is no route that
//! changes or removes an entry.
//!
//! One task owns the log: appends queued while it was writing go out together in one
//! durable batch (group commit), and a checkpoint is signed every second while there are
//! new entries. While a checkpoint cannot be published (witness unmounted, a fork, a note
//! already in its place), appends are refused with a 503, so that writers keep their
//! events in their spool rather than have them acknowledged by a log nobody can verify;
//! the failure is logged as an error (`alert = "audit_log_unverifiable"`) when it starts
//! and every minute while it lasts, and appends resume by themselves once it clears.
//!
//! With `[audit.archive]` ([`crate::archive`]), every checkpoint goes first to an S3
//! bucket with Object Lock (compliance mode), so a checkpoint the bucket refuses or
//! cannot take (unreachable, a fork) refuses appends the same way; and every sealed
//! segment (each but the newest) is copied there with its SHA-256 within
//! [`crate::archive::SEGMENTS_EVERY`]. A segment that cannot be archived is logged as an
//! error (`alert = "audit_archive_behind"`) and retried; it does not refuse appends.

use crate::metrics::AuditMetrics;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use lastmile_audit_log::{Hash, consistency_proof, inclusion_proof};
use lastmile_audit_sink::error_chain;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
};
use tracing::{error, info, warn};

use crate::{
    checkpoints::{self, Publisher},
    log::{Log, read_entries},
};

/// `lastmile-audit serve` configuration (`[audit]` table of a TOML file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The log's data directory (segments, checkpoints, signing key).
    pub data_dir: PathBuf,
    /// The log's name in its checkpoints.
    pub origin: String,
    /// The checkpoint signing key (made by `lastmile-audit init --signing-key`). Put it
    /// on another filesystem than `data_dir` (another disk, a mount only this service
    /// reads): a key beside the log lets whoever can rewrite the log re-sign it.
    /// Default `<data_dir>/signing.key`, which is warned about at start.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// A signing key held by a KMS instead (`[audit.signing_kms]`: `region`, `key_id`,
    /// optional `endpoint`, credentials as for `[api.kms]`): an `ECC_NIST_P256` key for
    /// `SIGN_VERIFY` that signs every checkpoint (ECDSA, signed-note type 0x02), so no
    /// key to re-sign the log is on this host. Exclusive with `signing_key`.
    #[serde(default)]
    pub signing_kms: Option<lastmile_vault::AwsConfig>,
    /// Where to listen. Default 127.0.0.1:7443.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A directory for write-once copies of every checkpoint (a mount of another host,
    /// say).
    #[serde(default)]
    pub witness: Option<PathBuf>,
    /// An S3 bucket with Object Lock as witness and archive (`[audit.archive]`: `bucket`,
    /// `region`, optional `endpoint`, `prefix`, `retention_days` (default 2557, 7 years),
    /// and credentials of the account that owns the bucket, which should not be the
    /// account of this host or its KMS: `access_key_id` / `secret_access_key`, default
    /// `LASTMILE_ARCHIVE_ACCESS_KEY_ID` / `LASTMILE_ARCHIVE_SECRET_ACCESS_KEY`). Every
    /// checkpoint and every sealed segment is written there once, locked in compliance
    /// mode for the retention. Default: none.
    #[serde(default)]
    pub archive: Option<crate::archive::ArchiveConfig>,
    /// This service's certificate chain and key (PEM).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The organisation's CA (PEM): client certificates must chain to it.
    pub client_ca: PathBuf,
    /// Identities allowed to append: a certificate's identity, or `role:gateway`,
    /// `role:node`, `role:api` for every identity the organisation's CA issued in that
    /// role at enrollment.
    pub writers: Vec<String>,
    /// Identities allowed to read entries (or `role:audit-reader`, for every reader
    /// certificate from `lastmile-api audit-readers issue`).
    #[serde(default)]
    pub readers: Vec<String>,
    /// Most events in one request.
    #[serde(default = "default_max_events")]
    pub max_events_per_request: usize,
    /// Durability policy. Every append is acknowledged only after an fsync that covers it;
    /// appends that arrive while one is being written share the next fsync (group commit).
    /// This window, in milliseconds, makes the log wait that long after the first queued
    /// append for more to share its fsync: more throughput, more latency. Default 0.
    #[serde(default)]
    pub commit_window_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP: a local or
    /// monitoring-only address). Default: not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

fn default_max_events() -> usize {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    audit: ServeConfig,
}

impl ServeConfig {
    /// Where the signing key is.
    pub fn signing_key(&self) -> checkpoints::KeySource {
        match (&self.signing_kms, &self.signing_key) {
            (Some(kms), _) => checkpoints::KeySource::Kms(kms.clone()),
            (None, Some(path)) => checkpoints::KeySource::File(path.clone()),
            (None, None) => {
                checkpoints::KeySource::File(crate::checkpoints::key_path(&self.data_dir))
            }
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid lastmile-audit config", path.display()))?;
        if file.audit.signing_key.is_some() && file.audit.signing_kms.is_some() {
            anyhow::bail!(
                "{}: both signing_key and [audit.signing_kms] are set; the log has one signing \
                 key: keep the one it was initialised with",
                path.display()
            );
        }
        for entry in file.audit.writers.iter().chain(&file.audit.readers) {
            if let Some(role) = entry.strip_prefix("role:")
                && !lastmile_proto::wire::uri::ROLES.contains(&role)
            {
                anyhow::bail!(
                    "{}: `{entry}` in writers or readers is no role; the roles are {}",
                    path.display(),
                    lastmile_proto::wire::uri::ROLES
                        .iter()
                        .map(|r| format!("role:{r}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(file.audit)
    }
}

/// Whether `who` is on `list`: by name, or by a `role:…` entry for the role the
/// organisation's CA issued its certificate in (the service trusts only that CA).
pub fn on_list(list: &[String], who: &str) -> bool {
    list.iter().any(|e| e == who)
        || lastmile_proto::wire::uri::role_of(who)
            .is_some_and(|role| list.iter().any(|e| e.strip_prefix("role:") == Some(role)))
}

/// A client's identity, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

enum Command {
    Append {
        events: Vec<Value>,
        writer: String,
        reply: oneshot::Sender<Result<Appended, Refusal>>,
    },
    Inclusion {
        index: u64,
        size: u64,
        reply: oneshot::Sender<Result<ProofBody, Refusal>>,
    },
    Consistency {
        old: u64,
        new: u64,
        reply: oneshot::Sender<Result<ProofBody, Refusal>>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Appended {
    pub first: u64,
    pub count: u64,
    pub tree_size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProofBody {
    pub proof: Vec<String>,
}

struct App {
    commands: mpsc::Sender<Command>,
    config: ServeConfig,
    metrics: AuditMetrics,
}

/// An error answered with its status and a message that says what to do.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Runs the service until the process is stopped.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let tls = tls_config(&config)?;
    let (log, recovered, mut publisher) = crate::open_for_writing(
        &config.data_dir,
        &config.signing_key(),
        &config.origin,
        config.witness.clone(),
    )
    .await?;
    if let Some(c) = &config.archive {
        let archive = crate::archive::Archive::new(c)?;
        archive
            .check_object_lock()
            .await
            .context("the archive ([audit.archive]) is not usable")?;
        info!(archive = %archive.url(""), "archiving checkpoints and sealed segments");
        tokio::spawn(crate::archive::keep_segments_archived(
            archive.clone(),
            crate::log::segments_dir(&config.data_dir),
        ));
        publisher = publisher.with_archive(archive);
    }
    info!(
        entries = recovered.entries,
        torn_bytes_cut = recovered.torn_bytes_cut,
        "log opened"
    );
    let (tx, rx) = mpsc::channel(1024);
    let metrics = AuditMetrics::default();
    metrics
        .entries
        .set(i64::try_from(log.size()).unwrap_or(i64::MAX));
    if let Some(addr) = config.metrics_listen {
        lastmile_metrics::serve(addr, Arc::new(metrics.registry())).await?;
    }
    tokio::spawn(own_the_log(
        log,
        publisher,
        rx,
        Duration::from_millis(config.commit_window_ms),
        metrics.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(listen = %listener.local_addr()?, "serving");
    let app = Arc::new(App {
        commands: tx,
        config,
        metrics,
    });
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        app.metrics.tls_failures.inc();
                        return warn!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        app.metrics.tls_failures.inc();
                        return warn!(%peer, "TLS handshake timed out");
                    }
                };
            let Some(identity) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity_of)
            else {
                return warn!(%peer, "client certificate without a usable identity");
            };
            let router = routes(app).layer(Extension(identity));
            let service = hyper_util::service::TowerToHyperService::new(router);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                warn!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn routes(app: Arc<App>) -> Router {
    let limit = app.config.max_events_per_request * 64 * 1024;
    Router::new()
        .route("/v1/events", post(append))
        .route("/v1/entries", get(entries))
        .route("/v1/checkpoint", get(latest_checkpoint))
        .route("/v1/proof/inclusion", get(inclusion))
        .route("/v1/proof/consistency", get(consistency))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn append(
    State(app): State<Arc<App>>,
    Extension(identity): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Json<Appended>, Refusal> {
    let started = std::time::Instant::now();
    let r = append_events(&app, identity, body).await;
    app.metrics
        .append_seconds
        .observe(started.elapsed().as_secs_f64());
    match &r {
        Ok(a) => {
            app.metrics.append("ok");
            app.metrics.events.inc_by(a.count);
        }
        Err(Refusal(status, _)) => app.metrics.append(match *status {
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unverifiable",
            _ => "error",
        }),
    }
    r.map(Json)
}

async fn append_events(
    app: &App,
    Identity(who): Identity,
    body: axum::body::Bytes,
) -> Result<Appended, Refusal> {
    if !on_list(&app.config.writers, &who) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("{who} is not on this log's writer list"),
        ));
    }
    let events: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON array of event objects: {e}"),
        )
    })?;
    if events.is_empty() || events.len() > app.config.max_events_per_request {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "send 1 to {} events per request, not {}",
                app.config.max_events_per_request,
                events.len()
            ),
        ));
    }
    if let Some(i) = events.iter().position(|e| !e.is_object()) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("event {i} is not a JSON object"),
        ));
    }
    let (reply, answer) = oneshot::channel();
    ask(
        app,
        Command::Append {
            events,
            writer: who,
            reply,
        },
        answer,
    )
    .await
}

async fn ask<T>(
    app: &App,
    command: Command,
    answer: oneshot::Receiver<Result<T, Refusal>>,
) -> Result<T, Refusal> {
    let unavailable = || {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log is not accepting requests".into(),
        )
    };
    app.commands
        .send(command)
        .await
        .map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())?
}

#[derive(Debug, Deserialize)]
struct EntriesQuery {
    start: u64,
    #[serde(default = "default_count")]
    count: u64,
}

fn default_count() -> u64 {
    100
}

async fn entries(
    State(app): State<Arc<App>>,
    Extension(Identity(who)): Extension<Identity>,
    Query(q): Query<EntriesQuery>,
) -> Result<Response, Refusal> {
    if !on_list(&app.config.readers, &who) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("{who} is not on this log's reader list"),
        ));
    }
    let data_dir = app.config.data_dir.clone();
    let count = q.count.min(1000);
    let lines = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let read = read_entries(&data_dir).map_err(|e| error_chain(&e))?;
        let mut out = String::new();
        for (_, r) in read.records().skip(q.start as usize).take(count as usize) {
            out.push_str(&String::from_utf8_lossy(&r.payload));
            out.push('\n');
        }
        Ok(out)
    })
    .await
    .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(([("content-type", "application/x-ndjson")], lines).into_response())
}

async fn latest_checkpoint(State(app): State<Arc<App>>) -> Result<Response, Refusal> {
    let notes = checkpoints::read_notes(&checkpoints::checkpoints_dir(&app.config.data_dir))
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)))?;
    match notes.into_iter().last() {
        Some((_, text)) => {
            Ok(([("content-type", "text/plain; charset=utf-8")], text).into_response())
        }
        None => Err(Refusal(
            StatusCode::NOT_FOUND,
            "no checkpoint yet: the log is empty".into(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

async fn inclusion(
    State(app): State<Arc<App>>,
    Query(q): Query<InclusionQuery>,
) -> Result<Json<ProofBody>, Refusal> {
    let (reply, answer) = oneshot::channel();
    ask(
        &app,
        Command::Inclusion {
            index: q.index,
            size: q.size,
            reply,
        },
        answer,
    )
    .await
    .map(Json)
}

#[derive(Debug, Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

async fn consistency(
    State(app): State<Arc<App>>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ProofBody>, Refusal> {
    let (reply, answer) = oneshot::channel();
    ask(
        &app,
        Command::Consistency {
            old: q.old,
            new: q.new,
            reply,
        },
        answer,
    )
    .await
    .map(Json)
}

/// A checkpoint attempt in flight: it owns the publisher and gives it back with the result.
type Attempt = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Publisher, Result<(), checkpoints::PublishError>)> + Send,
    >,
>;

/// The one owner of the log: batches appends, answers proofs, signs checkpoints.
///
/// A checkpoint attempt runs beside the commands rather than in front of them (a KMS may
/// take up to [`checkpoints::KMS_SIGN_TIMEOUT`] to answer or fail): proofs are answered
/// meanwhile; appends wait for the attempt's outcome while the log is verifiable, so none
/// is acknowledged on the strength of an attempt that then fails, and are refused at once
/// while it is not, so a writer is never held for a signing timeout it cannot change.
async fn own_the_log(
    mut log: Log,
    publisher: Publisher,
    mut commands: mpsc::Receiver<Command>,
    commit_window: Duration,
    metrics: AuditMetrics,
) {
    // A checkpoint on every tick: select! picks among ready branches at random, so a busy
    // stream of appends does not starve it.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Why the log cannot be made verifiable now; while it cannot, nothing is acknowledged.
    let mut unverifiable: Option<Unverifiable> = None;
    let mut idle = Some(publisher);
    let mut attempt: Option<Attempt> = None;
    // Appends that arrived while an attempt was in flight, with their replies.
    let mut held: Vec<(Batch, Reply)> = Vec::new();
    loop {
        let first = tokio::select! {
            c = commands.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = tick.tick(), if attempt.is_none() => {
                if let Some(mut publisher) = idle.take() {
                    let (size, root) = (log.size(), log.root());
                    attempt = Some(Box::pin(async move {
                        let result = checkpoint(&mut publisher, size, root).await;
                        (publisher, result)
                    }));
                }
                continue;
            }
            (publisher, result) = in_flight(&mut attempt), if attempt.is_some() => {
                attempt = None;
                idle = Some(publisher);
                match &result {
                    Ok(()) => {
                        metrics.last_checkpoint.set(unix_now());
                    }
                    Err(_) => {
                        metrics.checkpoint_failures.inc();
                    }
                }
                unverifiable = alert(unverifiable, result);
                metrics.unverifiable.set(i64::from(unverifiable.is_some()));
                settle(&mut log, std::mem::take(&mut held), unverifiable.as_ref());
                metrics.entries.set(i64::try_from(log.size()).unwrap_or(i64::MAX));
                continue;
            }
        };
        let mut queued = vec![first];
        if !commit_window.is_zero() {
            let deadline = tokio::time::Instant::now() + commit_window;
            while let Ok(Some(c)) = tokio::time::timeout_at(deadline, commands.recv()).await {
                queued.push(c);
            }
        }
        while let Ok(c) = commands.try_recv() {
            queued.push(c);
        }
        let mut appends = Vec::new();
        for c in queued {
            match c {
                Command::Append {
                    events,
                    writer,
                    reply,
                } => appends.push(((writer, events), reply)),
                Command::Inclusion { index, size, reply } => {
                    let r = prefix(&log, size).and_then(|l| proof_body(inclusion_proof(l, index)));
                    let _ = reply.send(r);
                }
                Command::Consistency { old, new, reply } => {
                    let r = prefix(&log, new).and_then(|l| proof_body(consistency_proof(l, old)));
                    let _ = reply.send(r);
                }
            }
        }
        if attempt.is_some() && unverifiable.is_none() {
            held.extend(appends);
        } else {
            settle(&mut log, appends, unverifiable.as_ref());
            metrics
                .entries
                .set(i64::try_from(log.size()).unwrap_or(i64::MAX));
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The attempt's outcome; pending for ever when there is none (select! guards that).
async fn in_flight(
    attempt: &mut Option<Attempt>,
) -> (Publisher, Result<(), checkpoints::PublishError>) {
    match attempt {
        Some(a) => a.await,
        None => std::future::pending().await,
    }
}

/// One writer's events.
type Batch = (String, Vec<Value>);
/// Where an append's answer goes.
type Reply = oneshot::Sender<Result<Appended, Refusal>>;

/// Commits `appends` in one group commit, or refuses them all while the log is
/// unverifiable.
fn settle(log: &mut Log, appends: Vec<(Batch, Reply)>, unverifiable: Option<&Unverifiable>) {
    if appends.is_empty() {
        return;
    }
    let (batches, waiting): (Vec<Batch>, Vec<Reply>) = appends.into_iter().unzip();
    if let Some(u) = unverifiable {
        // Writers keep these in their spool until the log can vouch for them again.
        for reply in waiting {
            let _ = reply.send(Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the log is refusing appends because it cannot publish a checkpoint \
                     ({}), so nothing it acknowledged could be verified; keep the events \
                     and send them again: appends resume once an operator fixes the cause",
                    u.why
                ),
            )));
        }
        return;
    }
    // Group commit: every append queued meanwhile shares one fsync.
    let result = tokio::task::block_in_place(|| log.append_batches(batches, SystemTime::now()));
    match result {
        Ok(results) => {
            for (result, reply) in results.into_iter().zip(waiting) {
                let answer = match result {
                    Ok(range) => Ok(Appended {
                        first: range.start,
                        count: range.end - range.start,
                        tree_size: log.size(),
                    }),
                    // The writer's event, not the log, is at fault: refuse it alone.
                    Err(too_large) => {
                        warn!(error = %too_large, "batch refused");
                        Err(Refusal(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            too_large.to_string(),
                        ))
                    }
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            // The log's trouble (disk full, say), not the writer's.
            let why = error_chain(&e);
            error!(error = %why, "append failed; nothing acknowledged");
            for reply in waiting {
                let _ = reply.send(Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, why.clone())));
            }
        }
    }
}

/// A failure to make the log verifiable, since when, and when it was last reported.
struct Unverifiable {
    why: String,
    last_alert: std::time::Instant,
}

/// How often a failure that persists is reported again.
const ALERT_AGAIN: Duration = Duration::from_secs(60);

async fn checkpoint(
    publisher: &mut Publisher,
    size: u64,
    root: Hash,
) -> Result<(), checkpoints::PublishError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if publisher.publish(size, root, now).await?.is_some() {
        info!(size, "checkpoint signed");
    }
    Ok(())
}

/// The state after a checkpoint attempt, reporting a failure when it starts, every
/// [`ALERT_AGAIN`] while it lasts, and its end.
fn alert(
    state: Option<Unverifiable>,
    result: Result<(), checkpoints::PublishError>,
) -> Option<Unverifiable> {
    match (state, result) {
        (None, Ok(())) => None,
        (Some(u), Ok(())) => {
            info!(was = %u.why, "checkpoint published again; appends are acknowledged again");
            None
        }
        (state, Err(e)) => {
            let why = error_chain(&e);
            let due = state
                .as_ref()
                .is_none_or(|u| u.why != why || u.last_alert.elapsed() >= ALERT_AGAIN);
            if due {
                error!(
                    alert = "audit_log_unverifiable",
                    error = %why,
                    "checkpoint not published: appends are refused until it can be"
                );
            }
            Some(Unverifiable {
                why,
                last_alert: match state {
                    Some(u) if !due => u.last_alert,
                    _ => std::time::Instant::now(),
                },
            })
        }
    }
}

fn prefix(log: &Log, size: u64) -> Result<&[Hash], Refusal> {
    log.leaves()
        .get(..usize::try_from(size).unwrap_or(usize::MAX))
        .ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("the log holds {} entries, fewer than {size}", log.size()),
            )
        })
}

fn proof_body(p: Result<Vec<Hash>, lastmile_audit_log::ProofError>) -> Result<ProofBody, Refusal> {
    p.map(|hashes| ProofBody {
        proof: hashes.iter().map(ToString::to_string).collect(),
    })
    .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))
}

fn tls_config(config: &ServeConfig) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.tls_cert)
        .with_context(|| format!("reading {}", config.tls_cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "{} is not a PEM certificate chain",
                config.tls_cert.display()
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key)
        .with_context(|| format!("{} is not a PEM private key", config.tls_key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&config.client_ca)
        .with_context(|| format!("reading {}", config.client_ca.display()))?
    {
        roots.add(ca.with_context(|| format!("{} is not PEM", config.client_ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the service certificate and key do not match")
}

/// The identity a certificate names: its first URI SAN, else `CN=<common name>`.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                return Some(Identity((*uri).to_owned()));
            }
        }
    }
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Identity(format!("CN={cn}")))
}

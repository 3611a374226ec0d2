//! The state of one user's SSH connection at the gateway: the login to the target (which
//! principal, the upstream session), the channels open on both sides with what each logs,
//! and the recordings; what the russh handler in `server.rs` works on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use russh::client;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::server::error_chain;
use super::upstream::{self, Upstream};
use super::{BridgeError, GatewaySession, Shared};
use crate::events::SshEvent;
use crate::policy::Decision;
use crate::principal::{self, Principal};
use crate::recording::{CastHeader, MonotonicClock, Recorder, RecordingId};

use super::relay::{self, Audit, ChannelLogs, Counters};

/// How long a channel request waits for the target's reply before it is failed. The
/// session loop is held meanwhile (russh answers requests from the handler), so a target
/// that never answers must not hold it for ever.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct PtyInfo {
    pub(super) term: String,
    pub(super) cols: u32,
    pub(super) rows: u32,
}

pub(super) struct ChannelState {
    pub(super) upstream: Arc<ChannelWriteHalf<client::Msg>>,
    pub(super) replies: mpsc::UnboundedReceiver<bool>,
    pub(super) logs: Arc<Mutex<ChannelLogs>>,
    pub(super) counters: Arc<Counters>,
    pub(super) audit: Audit,
    pub(super) pty: Option<PtyInfo>,
    pub(super) done: Arc<AtomicBool>,
}

impl ChannelState {
    pub(super) async fn target_reply(&mut self) -> bool {
        matches!(
            tokio::time::timeout(REPLY_TIMEOUT, self.replies.recv()).await,
            Ok(Some(true))
        )
    }
}

pub(crate) struct Gateway {
    pub(super) session: GatewaySession,
    pub(super) target: Option<TcpStream>,
    pub(super) upstream: Option<Arc<client::Handle<Upstream>>>,
    pub(super) principal: Option<Principal>,
    /// Set when the login cannot proceed; said to the user once authentication is over,
    /// in a DISCONNECT they see (RFC 4253 §11.1), rather than as a bare auth failure.
    pub(super) fatal: Option<String>,
    pub(super) channels: HashMap<ChannelId, ChannelState>,
    /// The client sent `no-more-sessions@openssh.com` (OpenSSH PROTOCOL §2.2).
    pub(super) no_more_sessions: bool,
    pub(super) shared: Arc<Shared>,
}

impl Gateway {
    pub(crate) fn new(session: GatewaySession, target: TcpStream, shared: Arc<Shared>) -> Self {
        Self {
            session,
            target: Some(target),
            upstream: None,
            principal: None,
            fatal: None,
            channels: HashMap::new(),
            no_more_sessions: false,
            shared,
        }
    }

    pub(super) fn emit(&self, event: SshEvent) {
        self.session.events.event(event);
    }

    pub(super) fn audit(&self, channel: ChannelId) -> Audit {
        Audit {
            connection: self.session.connection.clone(),
            channel: u32::from(channel),
            events: self.session.events.clone(),
        }
    }

    /// RFC 4252 §5: the user name arrives with every authentication request. The tunnel
    /// already proved who the user is, so any method is accepted; the name picks the
    /// principal and, on the first request, the login to the target happens here.
    pub(super) async fn admit(&mut self, login: &str) -> Auth {
        if self.upstream.is_some() || self.fatal.is_some() {
            return Auth::Accept;
        }
        let principal = match principal::choose(login, &self.session.resource.ssh_principals) {
            Ok(principal) => principal,
            Err(refused) => {
                self.emit(SshEvent::Refused {
                    connection: self.session.connection.clone(),
                    channel: None,
                    what: format!("login as {login:?}"),
                    reason: refused.to_string(),
                });
                self.fatal = Some(format!("lastmile: {refused}"));
                return Auth::Accept;
            }
        };
        let Some(target) = self.target.take() else {
            return Auth::reject();
        };
        match upstream::connect(
            target,
            self.session.resource.host_trust.clone(),
            &principal,
            &self.session.login,
        )
        .await
        {
            Ok(handle) => {
                info!(connection = %self.session.connection, %principal, "logged in to the target");
                let handle = Arc::new(handle);
                if let Ok(mut slot) = self.shared.upstream.lock() {
                    *slot = Some(handle.clone());
                }
                if let Ok(mut slot) = self.shared.principal.lock() {
                    *slot = Some(principal.to_string());
                }
                self.upstream = Some(handle);
                self.emit(SshEvent::SessionOpened {
                    connection: self.session.connection.clone(),
                    login: login.to_owned(),
                    principal: principal.to_string(),
                });
                self.principal = Some(principal);
            }
            Err(error) => {
                let chain = error_chain(&error);
                warn!(connection = %self.session.connection, "upstream login failed: {chain}");
                // A target that is not the one the resource trusts is a refusal the
                // security team looks for, not a gap in the trail.
                if matches!(error, upstream::UpstreamError::HostKey(_)) {
                    self.emit(SshEvent::Refused {
                        connection: self.session.connection.clone(),
                        channel: None,
                        what: "target host key".to_owned(),
                        reason: chain.clone(),
                    });
                } else {
                    self.emit(SshEvent::Incomplete {
                        connection: self.session.connection.clone(),
                        channel: None,
                        what: format!("login to the target failed: {chain}"),
                    });
                }
                self.fatal = Some(format!("lastmile: {chain}"));
            }
        }
        Auth::Accept
    }

    /// Refuse a request the policy turned down: the audit event, a line on the channel's
    /// stderr (RFC 4254 §5.2, data type 1) the user reads, and the failure reply.
    pub(super) fn refused(
        &self,
        channel: Option<ChannelId>,
        decision: Decision,
        session: &mut Session,
    ) -> Result<bool, BridgeError> {
        let Decision::Refuse { what, reason } = &decision else {
            return Ok(false);
        };
        info!(connection = %self.session.connection, "refused {what}: {reason}");
        self.emit(SshEvent::Refused {
            connection: self.session.connection.clone(),
            channel: channel.map(u32::from),
            what: what.clone(),
            reason: reason.to_string(),
        });
        if let Some(channel) = channel {
            if let Some(message) = decision.message() {
                session.extended_data(channel, 1, Bytes::from(message + "\r\n"))?;
            }
            session.channel_failure(channel)?;
        }
        Ok(true)
    }

    /// A channel type the gateway never opens (`x11`, `forwarded-tcpip`, streamlocal):
    /// refused, audited, and the open rejected as administratively prohibited (RFC 4254
    /// §5.1).
    pub(super) async fn refuse_open(
        &self,
        kind: &'static str,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), BridgeError> {
        let decision = self
            .session
            .resource
            .policy
            .decide(crate::policy::Request::OpenOther { kind });
        self.refused(None, decision, session)?;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    pub(super) fn open_channels(&mut self) -> usize {
        self.channels
            .retain(|_, state| !state.done.load(Ordering::Relaxed));
        self.channels.len()
    }

    pub(super) async fn start_channel(
        &mut self,
        user: Channel<Msg>,
        upstream: Channel<client::Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
        kind: String,
    ) {
        reply.accept().await;
        let id = user.id();
        let (_ignored, user_writer) = user.split();
        let (upstream_reader, upstream_writer) = upstream.split();
        let upstream_writer = Arc::new(upstream_writer);
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let logs = Arc::new(Mutex::new(ChannelLogs::default()));
        let counters = Arc::new(Counters::default());
        let done = Arc::new(AtomicBool::new(false));
        if let Ok(mut all) = self.shared.counters.lock() {
            all.push(counters.clone());
        }
        if let Ok(mut open) = self.shared.open.lock() {
            open.insert(id);
        }
        self.emit(SshEvent::ChannelOpened {
            connection: self.session.connection.clone(),
            channel: u32::from(id),
            kind,
        });
        let relay_done = done.clone();
        let shared = self.shared.clone();
        let task = relay::target_to_user(
            upstream_reader,
            user_writer,
            session.handle(),
            id,
            replies_tx,
            logs.clone(),
            counters.clone(),
            self.audit(id),
            upstream_writer.clone(),
        );
        tokio::spawn(async move {
            task.await;
            relay_done.store(true, Ordering::Relaxed);
            if let Ok(mut open) = shared.open.lock() {
                open.remove(&id);
            }
        });
        self.channels.insert(
            id,
            ChannelState {
                upstream: upstream_writer,
                replies,
                logs,
                counters,
                audit: self.audit(id),
                pty: None,
                done,
            },
        );
    }

    pub(super) fn start_recording(&mut self, channel: ChannelId, title: String) {
        let Some(store) = self.session.recordings.clone() else {
            return;
        };
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let (cols, rows, term) = match &state.pty {
            Some(pty) => (pty.cols.max(1), pty.rows.max(1), pty.term.clone()),
            None => (80, 24, String::new()),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut header = CastHeader::new(cols, rows, now).with_title(title);
        if !term.is_empty() {
            header = header.with_env("TERM", &term);
        }
        let started = RecordingId::new(format!(
            "{}-{}",
            self.session.connection,
            u32::from(channel)
        ))
        .and_then(|id| {
            Recorder::start(
                store.as_ref(),
                &id,
                &header,
                Box::new(MonotonicClock::start()),
            )
        });
        match started {
            Ok(recorder) => relay::lock(&state.logs).recorder = Some(recorder),
            Err(error) => state
                .audit
                .incomplete(format!("recording not started: {error}")),
        }
    }

    pub(super) fn title(&self, what: &str) -> String {
        format!(
            "{}@{} {what}",
            self.principal
                .as_ref()
                .map(Principal::as_str)
                .unwrap_or_default(),
            self.session.resource.name
        )
    }
}

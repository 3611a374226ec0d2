//! The russh server handler: the SSH server the user's `ssh` talks to. Every channel and
//! request goes through the policy first; allowed ones are opened on the target and
//! relayed; each reply to the user is the target's own reply to the same request.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, Pty, Sig};
use tracing::debug;

use super::{BridgeError, Shared};
use crate::events::SshEvent;
use crate::exec_log::ExecCommand;
use crate::policy::{Decision, Request};

use super::gateway::{Gateway, PtyInfo};
use super::relay::{self};

fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), BridgeError> {
    if ok {
        session.channel_success(channel)?;
    } else {
        session.channel_failure(channel)?;
    }
    Ok(())
}

/// An error and its causes, each once, `: `-separated. The same as
/// `lastmile_audit_sink::error_chain`, kept here so that this crate depends on no other
/// lastmile crate.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl server::Handler for Gateway {
    type Error = BridgeError;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(message) = self.fatal.take() {
            session.disconnect(Disconnect::ByApplication, &message, "en")?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open_channels = self.open_channels();
        if self.refused(
            None,
            self.session.resource.policy.decide(Request::OpenSession {
                open_channels,
                no_more_sessions: self.no_more_sessions,
            }),
            session,
        )? {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let Some(upstream) = self.upstream.clone() else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match upstream.channel_open_session().await {
            Ok(up) => {
                self.start_channel(channel, up, reply, session, "session".to_owned())
                    .await
            }
            Err(error) => {
                self.audit(channel.id())
                    .incomplete(format!("the target refused a session channel: {error}"));
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let open_channels = self.open_channels();
        let decision = self
            .session
            .resource
            .policy
            .decide(Request::OpenDirectTcpip {
                host: host_to_connect,
                port: port_to_connect,
                open_channels,
            });
        if self.refused(None, decision, session)? {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(upstream) = self.upstream.clone() else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match upstream
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(up) => {
                let kind = format!("direct-tcpip to {host_to_connect}:{port_to_connect}");
                self.start_channel(channel, up, reply, session, kind).await
            }
            Err(error) => {
                self.audit(channel.id())
                    .incomplete(format!("the target refused direct-tcpip: {error}"));
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("x11", reply, session).await
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("forwarded-tcpip", reply, session).await
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("direct-streamlocal@openssh.com", reply, session)
            .await
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(state) = self.channels.get(&channel) else {
            return Ok(());
        };
        state
            .counters
            .to_target
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let broken = {
            let mut logs = relay::lock(&state.logs);
            logs.saw_from_user(data, &state.audit);
            logs.broken
        };
        // Waiting here for the target's window is the backpressure: russh reads no more
        // from the user until this returns.
        if broken
            || state
                .upstream
                .data_bytes(Bytes::copy_from_slice(data))
                .await
                .is_err()
        {
            let _ = state.upstream.close().await;
            session.close(channel)?;
        }
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.get(&channel) {
            let _ = state
                .upstream
                .extended_data_bytes(code, Bytes::copy_from_slice(data))
                .await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.get(&channel) {
            let _ = state.upstream.eof().await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.channels.remove(&channel) {
            let _ = state.upstream.close().await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refused(
            Some(channel),
            self.session.resource.policy.decide(Request::Pty),
            session,
        )? {
            return Ok(());
        }
        let Some(state) = self.channels.get_mut(&channel) else {
            return reply(session, channel, false);
        };
        let sent = state
            .upstream
            .request_pty(
                true, term, col_width, row_height, pix_width, pix_height, modes,
            )
            .await;
        let ok = sent.is_ok() && state.target_reply().await;
        if ok {
            state.pty = Some(PtyInfo {
                term: term.to_owned(),
                cols: col_width,
                rows: row_height,
            });
        }
        reply(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let decision = self.session.resource.policy.decide(Request::Env {
            name: variable_name,
        });
        // A refused variable is audited but not shouted at the user: OpenSSH sends LANG and
        // LC_* on every login, and sshd refuses unlisted ones just as quietly.
        if let Decision::Refuse { what, reason } = decision {
            self.emit(SshEvent::Refused {
                connection: self.session.connection.clone(),
                channel: Some(u32::from(channel)),
                what,
                reason: reason.to_string(),
            });
            return reply(session, channel, false);
        }
        let Some(state) = self.channels.get_mut(&channel) else {
            return reply(session, channel, false);
        };
        let sent = state
            .upstream
            .set_env(true, variable_name, variable_value)
            .await;
        let ok = sent.is_ok() && state.target_reply().await;
        reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refused(
            Some(channel),
            self.session.resource.policy.decide(Request::Shell),
            session,
        )? {
            return Ok(());
        }
        self.start_recording(channel, self.title("shell"));
        self.emit(SshEvent::Started {
            connection: self.session.connection.clone(),
            channel: u32::from(channel),
            what: "shell".to_owned(),
        });
        let Some(state) = self.channels.get_mut(&channel) else {
            return reply(session, channel, false);
        };
        let sent = state.upstream.request_shell(true).await;
        let ok = sent.is_ok() && state.target_reply().await;
        reply(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = ExecCommand::parse(data);
        let decision = self.session.resource.policy.decide(Request::Exec(&command));
        if self.refused(Some(channel), decision, session)? {
            return Ok(());
        }
        debug!(connection = %self.session.connection, "exec {:?}", command.text);
        self.emit(SshEvent::Exec {
            connection: self.session.connection.clone(),
            channel: u32::from(channel),
            command: command.clone(),
        });
        let interactive = self
            .channels
            .get(&channel)
            .is_some_and(|state| state.pty.is_some());
        if interactive {
            self.start_recording(channel, self.title(&command.text));
        }
        let Some(state) = self.channels.get_mut(&channel) else {
            return reply(session, channel, false);
        };
        let sent = state.upstream.exec(true, command.raw).await;
        let ok = sent.is_ok() && state.target_reply().await;
        reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let decision = self
            .session
            .resource
            .policy
            .decide(Request::Subsystem { name });
        if self.refused(Some(channel), decision, session)? {
            return Ok(());
        }
        self.emit(SshEvent::Started {
            connection: self.session.connection.clone(),
            channel: u32::from(channel),
            what: format!("subsystem {name}"),
        });
        let Some(state) = self.channels.get_mut(&channel) else {
            return reply(session, channel, false);
        };
        if name == "sftp" {
            relay::lock(&state.logs).sftp = Some(crate::sftp_log::SftpLog::default());
        }
        let sent = state.upstream.request_subsystem(true, name).await;
        let ok = sent.is_ok() && state.target_reply().await;
        reply(session, channel, ok)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // RFC 4254 §6.7: window-change never wants a reply.
        if let Some(state) = self.channels.get(&channel) {
            {
                let mut logs = relay::lock(&state.logs);
                if let Some(recorder) = &mut logs.recorder
                    && let Err(error) = recorder.resize(col_width, row_height)
                {
                    state
                        .audit
                        .incomplete(format!("recording stopped: {error}"));
                    logs.recorder = None;
                }
            }
            let _ = state
                .upstream
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // RFC 4254 §6.9: signal never wants a reply.
        if let Some(state) = self.channels.get(&channel) {
            let _ = state.upstream.signal(signal).await;
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Relaying X11 is not built: refused even where the policy would allow it.
        let decision = match self.session.resource.policy.decide(Request::X11) {
            Decision::Allow => Decision::Refuse {
                what: "X11 forwarding (ssh -X)".to_owned(),
                reason: crate::policy::RefusalReason::Unknown,
            },
            refused => refused,
        };
        self.refused(Some(channel), decision, session)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // russh sends the failure reply itself from the returned false.
        let decision = match self.session.resource.policy.decide(Request::AgentForward) {
            Decision::Allow => Decision::Refuse {
                what: "agent forwarding (ssh -A)".to_owned(),
                reason: crate::policy::RefusalReason::Unknown,
            },
            refused => refused,
        };
        if let Decision::Refuse { what, reason } = &decision {
            self.emit(SshEvent::Refused {
                connection: self.session.connection.clone(),
                channel: Some(u32::from(channel)),
                what: what.clone(),
                reason: reason.to_string(),
            });
            if let Some(message) = decision.message() {
                session.extended_data(channel, 1, Bytes::from(message + "\r\n"))?;
            }
        }
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let what = format!("tcpip-forward {address}:{port}");
        let decision = match self
            .session
            .resource
            .policy
            .decide(Request::RemoteForward { what: &what })
        {
            Decision::Allow => Decision::Refuse {
                what: format!("remote forwarding ({what})"),
                reason: crate::policy::RefusalReason::Unknown,
            },
            refused => refused,
        };
        self.refused(None, decision, session)?;
        Ok(false)
    }

    async fn channel_request_other(
        &mut self,
        channel: ChannelId,
        request_type: &str,
        _want_reply: bool,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // `refused` answers CHANNEL_FAILURE, which russh sends only if a reply is wanted.
        let decision = self
            .session
            .resource
            .policy
            .decide(Request::ChannelRequestOther { kind: request_type });
        self.refused(Some(channel), decision, session)?;
        Ok(())
    }

    async fn global_request_other(
        &mut self,
        request_type: &str,
        _want_reply: bool,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // russh sends either reply only if one is wanted (RFC 4254 §4).
        match request_type {
            // ssh's ServerAliveInterval probe: any reply proves the connection alive, and
            // OpenSSH's sshd answers it with failure too. Not a refusal of anything.
            "keepalive@openssh.com" => session.request_failure(),
            // ssh promises to open no more sessions on this connection; held to it below.
            "no-more-sessions@openssh.com" => {
                self.no_more_sessions = true;
                session.request_success();
            }
            other => {
                let decision = self
                    .session
                    .resource
                    .policy
                    .decide(Request::GlobalRequestOther { kind: other });
                self.refused(None, decision, session)?;
                session.request_failure();
            }
        }
        Ok(())
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let what = format!("streamlocal-forward {socket_path}");
        let decision = self
            .session
            .resource
            .policy
            .decide(Request::RemoteForward { what: &what });
        let decision = match decision {
            Decision::Allow => Decision::Refuse {
                what,
                reason: crate::policy::RefusalReason::Unknown,
            },
            refused => refused,
        };
        self.refused(None, decision, session)?;
        Ok(false)
    }
}

/// The channels still open, for the ending notice.
pub(crate) fn open_channels(shared: &Shared) -> Vec<ChannelId> {
    shared
        .open
        .lock()
        .map(|open| open.iter().copied().collect())
        .unwrap_or_default()
}

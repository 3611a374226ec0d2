//! Per-channel state shared by the server handler (user → target) and the relay task
//! (target → user), and the relay task itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::client;
use russh::server;
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::events::{ConnectionId, EventSink, SshEvent};
use crate::recording::Recorder;
use crate::sftp_log::SftpLog;

/// The audit side of one channel: its recording and its SFTP log, fed from both ends.
#[derive(Debug, Default)]
pub(crate) struct ChannelLogs {
    pub recorder: Option<Recorder>,
    pub sftp: Option<SftpLog>,
    /// An audit stream failed; the channel is closed rather than carried unlogged.
    pub broken: bool,
}

/// Counters and the end of one channel, shared with the session's totals.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub to_target: AtomicU64,
    pub to_user: AtomicU64,
    pub exit_status: Mutex<Option<u32>>,
}

pub(crate) struct Audit {
    pub connection: ConnectionId,
    pub channel: u32,
    pub events: Arc<dyn EventSink>,
}

impl Audit {
    pub fn emit(&self, event: SshEvent) {
        self.events.event(event);
    }

    pub fn incomplete(&self, what: String) {
        warn!(connection = %self.connection, channel = self.channel, "{what}");
        self.emit(SshEvent::Incomplete {
            connection: self.connection.clone(),
            channel: Some(self.channel),
            what,
        });
    }
}

impl ChannelLogs {
    /// Bytes from the target to the user.
    pub fn saw_from_target(&mut self, data: &[u8], audit: &Audit) {
        if let Some(recorder) = &mut self.recorder
            && let Err(error) = recorder.output(data)
        {
            audit.incomplete(format!("recording stopped: {error}"));
            self.recorder = None;
        }
        if let Some(sftp) = &mut self.sftp {
            // The operations this data completed happened on the target, so they are logged
            // even when a later packet in the same data breaks the stream.
            let (ops, lost) = match sftp.server_bytes(data) {
                Ok(ops) => (ops, None),
                Err(lost) => (lost.completed, Some(lost.error)),
            };
            for op in ops {
                audit.emit(SshEvent::Sftp {
                    connection: audit.connection.clone(),
                    channel: audit.channel,
                    op,
                });
            }
            if let Some(error) = lost {
                audit.incomplete(format!("sftp log lost the stream: {error}"));
                self.sftp = None;
                self.broken = true;
            }
        }
    }

    /// Bytes from the user to the target.
    pub fn saw_from_user(&mut self, data: &[u8], audit: &Audit) {
        if let Some(recorder) = &mut self.recorder
            && let Err(error) = recorder.input(data)
        {
            audit.incomplete(format!("recording stopped: {error}"));
            self.recorder = None;
        }
        if let Some(sftp) = &mut self.sftp
            && let Err(error) = sftp.client_bytes(data)
        {
            audit.incomplete(format!("sftp log lost the stream: {error}"));
            self.sftp = None;
            self.broken = true;
        }
    }

    /// The channel ended: last SFTP totals, and the recording made durable.
    pub fn finish(&mut self, audit: &Audit) {
        if let Some(mut sftp) = self.sftp.take() {
            for op in sftp.finish() {
                audit.emit(SshEvent::Sftp {
                    connection: audit.connection.clone(),
                    channel: audit.channel,
                    op,
                });
            }
        }
        if let Some(recorder) = self.recorder.take() {
            match recorder.finish() {
                Ok(recording) => audit.emit(SshEvent::RecordingFinished {
                    connection: audit.connection.clone(),
                    channel: audit.channel,
                    recording,
                }),
                Err(error) => audit.incomplete(format!("recording could not be finished: {error}")),
            }
        }
    }
}

pub(crate) fn lock(logs: &Mutex<ChannelLogs>) -> std::sync::MutexGuard<'_, ChannelLogs> {
    // A panic while holding the lock would poison it; the logs are still the best we have.
    logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Carries what the target sends on one channel to the user, in the order it came:
/// data (respecting the user's window), EOF, exit-status / exit-signal, close
/// (RFC 4254 §5.2, §5.3, §6.10). Replies to channel requests go to the handler waiting
/// for them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn target_to_user(
    mut upstream: ChannelReadHalf,
    user: ChannelWriteHalf<server::Msg>,
    server: server::Handle,
    user_channel: ChannelId,
    replies: mpsc::UnboundedSender<bool>,
    logs: Arc<Mutex<ChannelLogs>>,
    counters: Arc<Counters>,
    audit: Audit,
    upstream_writer: Arc<ChannelWriteHalf<client::Msg>>,
) {
    let mut exit_signal = None;
    loop {
        let Some(message) = upstream.wait().await else {
            break;
        };
        match message {
            ChannelMsg::Data { data } => {
                counters
                    .to_user
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let broken = {
                    let mut logs = lock(&logs);
                    logs.saw_from_target(&data, &audit);
                    logs.broken
                };
                if broken || user.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                counters
                    .to_user
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                lock(&logs).saw_from_target(&data, &audit);
                if user.extended_data_bytes(ext, data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = user.eof().await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                if let Ok(mut slot) = counters.exit_status.lock() {
                    *slot = Some(exit_status);
                }
                let _ = server.exit_status_request(user_channel, exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                exit_signal = Some(format!("{signal_name:?}"));
                let _ = server
                    .exit_signal_request(
                        user_channel,
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    )
                    .await;
            }
            ChannelMsg::Success => {
                let _ = replies.send(true);
            }
            ChannelMsg::Failure => {
                let _ = replies.send(false);
            }
            ChannelMsg::Close => break,
            other => debug!(connection = %audit.connection, "upstream channel message {other:?}"),
        }
    }
    let _ = user.close().await;
    let _ = upstream_writer.close().await;
    lock(&logs).finish(&audit);
    let exit_status = counters.exit_status.lock().ok().and_then(|s| *s);
    audit.emit(SshEvent::ChannelClosed {
        connection: audit.connection.clone(),
        channel: audit.channel,
        bytes_to_target: counters.to_target.load(Ordering::Relaxed),
        bytes_to_user: counters.to_user.load(Ordering::Relaxed),
        exit_status,
        exit_signal,
    });
}

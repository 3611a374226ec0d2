//! What the bridge tells the gateway, for its audit sink.

use std::time::Duration;

use serde::Serialize;

use crate::exec_log::ExecCommand;
use crate::recording::FinishedRecording;
use crate::sftp_log::SftpOp;

/// The API's id for one tunnelled connection, carried in every event and tracing span.
pub use lastmile_proto::names::ConnectionId;

/// One thing worth an audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SshEvent {
    /// The user's login name mapped to a principal and the target accepted the login.
    SessionOpened {
        connection: ConnectionId,
        login: String,
        principal: String,
    },
    SessionClosed {
        connection: ConnectionId,
        principal: Option<String>,
        channels: u32,
        bytes_to_target: u64,
        bytes_to_user: u64,
        #[serde(with = "seconds")]
        duration: Duration,
        /// The exit status of the last session channel that reported one.
        exit_status: Option<u32>,
        /// Why it ended: the user left, the target closed, revocation, an error.
        reason: String,
    },
    ChannelOpened {
        connection: ConnectionId,
        channel: u32,
        /// `session`, or `direct-tcpip to HOST:PORT`.
        kind: String,
    },
    ChannelClosed {
        connection: ConnectionId,
        channel: u32,
        bytes_to_target: u64,
        bytes_to_user: u64,
        exit_status: Option<u32>,
        exit_signal: Option<String>,
    },
    /// One `exec` request, before it runs.
    Exec {
        connection: ConnectionId,
        channel: u32,
        command: ExecCommand,
    },
    /// A `shell` or `subsystem` request that was allowed.
    Started {
        connection: ConnectionId,
        channel: u32,
        what: String,
    },
    Sftp {
        connection: ConnectionId,
        channel: u32,
        op: SftpOp,
    },
    /// A request the policy (or the principal mapping) refused.
    Refused {
        connection: ConnectionId,
        channel: Option<u32>,
        what: String,
        reason: String,
    },
    RecordingFinished {
        connection: ConnectionId,
        channel: u32,
        recording: FinishedRecording,
    },
    /// Something the audit trail is missing because it failed (a recording that could not
    /// be written, an SFTP stream the log could not follow).
    Incomplete {
        connection: ConnectionId,
        channel: Option<u32>,
        what: String,
    },
}

/// The gateway implements this to receive events; it must not block for long (write to a
/// channel, or to a buffered sink).
pub trait EventSink: Send + Sync {
    fn event(&self, event: SshEvent);
}

mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

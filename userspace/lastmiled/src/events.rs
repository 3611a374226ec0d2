//! Structured events: the kernel's connect decisions, enriched from /proc, and the node's
//! own decisions about each redirected connection, written as JSON lines.
//!
//! The keys that join them: `sock_cookie` (the kernel's event, the node's, the hand-off
//! to the agent, and the id the agent proposes), then the session and connection ids once
//! a session exists.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::SystemTime,
};

use lastmile_proto::{
    connection::{ClientAddr, OrigDstAddr},
    wire::{ConnectionId, ErrorCode, SessionId, UserName},
};
use serde_json::Value;

use lastmile_ebpf_common::{AF_INET, ConnectRecord, Decision};
use serde::Serialize;

mod proc;
mod sink;

pub use proc::{ProcCache, ProcInfo};
pub use sink::{EventSink, SinkMetrics};

/// Version of the event schema; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// One event, as written.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub v: u32,
    /// RFC 3339, UTC, when lastmiled wrote it.
    pub time: String,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind")]
pub enum EventBody {
    /// The kernel decided about a connect to a protected target.
    #[serde(rename = "kernel.connect")]
    KernelConnect(KernelConnect),
    /// A redirected connection went to the agent of its user.
    #[serde(rename = "node.handoff")]
    Handoff(NodeConnection),
    /// A redirected connection was refused: its user has no agent here.
    #[serde(rename = "node.refused_no_agent")]
    RefusedNoAgent(NodeConnection),
    /// Someone connected to the listener directly, not through the kernel's redirect.
    #[serde(rename = "node.refused_direct_dial")]
    RefusedDirectDial {
        client: SocketAddr,
        listener: SocketAddr,
    },
    /// An agent registered for a uid, or went away.
    #[serde(rename = "node.agent")]
    Agent {
        uid: u32,
        pid: Option<i32>,
        registered: bool,
    },
    /// A connection the gateway relayed ended.
    #[serde(rename = "connection.close")]
    ConnectionClose(GatewayClose),
    /// The gateway refused a stream.
    #[serde(rename = "gateway.refused")]
    GatewayRefused(GatewayRefusal),
    /// A statement ran on a database connection (a simple Query, or an Execute of the
    /// extended protocol), with its outcome.
    #[serde(rename = "db.query")]
    DbQuery(DbQuery),
    /// The gateway ended a database connection before or instead of relaying it
    /// (a database not allowed, a failed upstream login, a protocol violation, …).
    #[serde(rename = "db.refused")]
    DbRefused(DbRefusal),
    /// A client's cancel request, and whether it reached a server.
    #[serde(rename = "db.cancel")]
    DbCancel(DbCancel),
    #[serde(rename = "ssh.session")]
    SshSession(SshRecord),
    #[serde(rename = "ssh.channel")]
    SshChannel(SshRecord),
    #[serde(rename = "ssh.exec")]
    SshExec(SshRecord),
    #[serde(rename = "ssh.sftp")]
    SshSftp(SshRecord),
    #[serde(rename = "ssh.refused")]
    SshRefused(SshRecord),
    #[serde(rename = "ssh.recording")]
    SshRecording(SshRecord),
    #[serde(rename = "ssh.incomplete")]
    SshIncomplete(SshRecord),
    /// Events were dropped because the writer's queue was full (a flood: a local user
    /// looping `connect()` to a protected target, a stalled disk).
    #[serde(rename = "events.dropped")]
    EventsDropped {
        /// How many since the last such event.
        count: u64,
    },
}

/// One `ssh.*` event: who and where, and the bridge's own fields (see
/// docs/audit-events.md).
#[derive(Debug, Clone, Serialize)]
pub struct SshRecord {
    pub connection: ConnectionId,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
    #[serde(flatten)]
    pub detail: serde_json::Map<String, Value>,
}

/// One statement on a database connection.
#[derive(Debug, Clone, Serialize)]
pub struct DbQuery {
    pub connection: ConnectionId,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
    /// The kernel's socket cookie of the client's connection, when the node handed it
    /// over (the join key to `kernel.connect`).
    pub sock_cookie: Option<u64>,
    pub database: String,
    /// `simple` (Query) or `extended` (Parse/Bind/Execute).
    pub protocol: &'static str,
    /// The statement's text; the audit policy keeps it, hashes it or drops it.
    pub query: String,
    /// Bound parameters (text, or a note for binary), only with `log_query_params`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Option<String>>>,
    /// `ok` or `error`.
    pub outcome: &'static str,
    /// The command tags (`SELECT 1`, `INSERT 0 3`, …), one per statement of a Query.
    pub tags: Vec<String>,
    /// Rows from the last command tag, when it has a count.
    pub rows: Option<u64>,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// From the statement's message to the server's answer, in microseconds.
    pub duration_us: u64,
    /// `in`, `out` or `both`, for COPY.
    pub copy: Option<&'static str>,
    pub copy_bytes: Option<u64>,
}

/// A database connection the gateway ended itself.
#[derive(Debug, Clone, Serialize)]
pub struct DbRefusal {
    pub connection: ConnectionId,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
    pub sock_cookie: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

/// A cancel request.
#[derive(Debug, Clone, Serialize)]
pub struct DbCancel {
    /// The connection the cancel request came on.
    pub connection: ConnectionId,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
    pub sock_cookie: Option<u64>,
    /// The connection whose statement was cancelled, when the key named one.
    pub cancelled: Option<String>,
    /// `forwarded`, `unknown_key`, `other_user`, or why the server was not reached.
    pub outcome: String,
}

/// What the gateway records when a relayed connection ends.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayClose {
    /// The API's id for the connection.
    pub connection: ConnectionId,
    /// The id the client proposed (it carries the node's socket cookie).
    pub client_connection: String,
    /// The kernel's socket cookie of the client's connection, when the node handed it
    /// over (the join key to `kernel.connect`).
    pub sock_cookie: Option<u64>,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
    pub upstream: Option<SocketAddr>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Why it ended other than by both sides closing.
    pub error: Option<String>,
    /// What the resource kind's handler adds (a database connection's statement count).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// What the gateway records when it refuses a stream.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRefusal {
    /// The id the client proposed (the API named none: the stream never opened); absent
    /// when the stream header was unreadable.
    pub client_connection: Option<String>,
    /// The application socket's cookie, when the node handed the connection over.
    pub sock_cookie: Option<u64>,
    pub session: SessionId,
    pub user: UserName,
    pub resource: Option<String>,
    pub gateway: String,
    pub code: ErrorCode,
    pub message: String,
}

/// The kernel's record of one connect, with what /proc adds.
#[derive(Debug, Clone, Serialize)]
pub struct KernelConnect {
    pub decision: &'static str,
    pub target: Option<String>,
    pub target_id: u32,
    pub orig_dst: OrigDstAddr,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub sock_cookie: u64,
    pub boot_ns: u64,
    /// When the kernel saw the connect (RFC 3339, from `boot_ns`); `time` is when the
    /// node read the event, which can be later than what followed it.
    pub at: Option<String>,
    /// Read from /proc at the time the event was read; absent if the process was gone.
    pub exe: Option<PathBuf>,
    pub ppid: Option<u32>,
    pub login_uid: Option<u32>,
}

/// What the node did with one redirected connection.
#[derive(Debug, Clone, Serialize)]
pub struct NodeConnection {
    pub sock_cookie: u64,
    pub target: Option<String>,
    /// The target's kind (`postgres`, `ssh`, `tcp`).
    pub protocol: Option<lastmile_proto::wire::ResourceKind>,
    pub orig_dst: OrigDstAddr,
    pub client: ClientAddr,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

impl Event {
    pub fn now(body: EventBody) -> Self {
        Self {
            v: SCHEMA_VERSION,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            body,
        }
    }
}

/// The destination the application asked for, from a kernel record.
pub fn orig_dst(record: &ConnectRecord) -> OrigDstAddr {
    let port = u16::from_be_bytes(record.orig_port);
    let v6 = Ipv6Addr::from(record.orig_addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) if record.family == AF_INET => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    OrigDstAddr(SocketAddr::new(ip, port))
}

/// A NUL-padded `comm` as text.
pub fn comm(record: &ConnectRecord) -> String {
    let end = record
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(record.comm.len());
    String::from_utf8_lossy(record.comm.get(..end).unwrap_or_default()).into_owned()
}

pub fn decision_name(decision: u32) -> &'static str {
    match Decision::from_u32(decision) {
        Some(Decision::Redirected) => "redirected",
        Some(Decision::Refused) => "refused",
        Some(Decision::Exempt) => "exempt",
        Some(Decision::PassedThrough) => "passed_through",
        None => "unknown",
    }
}

/// The wall-clock time of a `CLOCK_BOOTTIME` reading (what `bpf_ktime_get_boot_ns`
/// gives): now, less how long ago it was on that clock.
fn wall_time_of_boot_ns(boot_ns: u64) -> Option<String> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) } != 0 {
        return None;
    }
    let boot_now = u64::try_from(now.tv_sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(now.tv_nsec).ok()?)?;
    let ago = std::time::Duration::from_nanos(boot_now.checked_sub(boot_ns)?);
    let at = SystemTime::now().checked_sub(ago)?;
    Some(humantime::format_rfc3339_micros(at).to_string())
}

/// Builds the event for a kernel record with what /proc said of the caller.
pub fn kernel_connect(
    record: &ConnectRecord,
    target: Option<String>,
    proc_info: ProcInfo,
) -> KernelConnect {
    KernelConnect {
        decision: decision_name(record.decision),
        target,
        target_id: record.target_id,
        orig_dst: orig_dst(record),
        pid: record.pid,
        tid: record.tid,
        uid: record.uid,
        gid: record.gid,
        comm: comm(record),
        cgroup_id: record.cgroup_id,
        netns_cookie: record.netns_cookie,
        sock_cookie: record.sock_cookie,
        boot_ns: record.boot_ns,
        at: wall_time_of_boot_ns(record.boot_ns),
        exe: proc_info.exe,
        ppid: proc_info.ppid,
        login_uid: proc_info.login_uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orig_dst_tells_ipv4_from_v4_mapped_by_the_socket_family() {
        let mut r: ConnectRecord = unsafe { std::mem::zeroed() };
        r.orig_addr = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 2]).octets();
        r.orig_port = 5432u16.to_be_bytes();
        r.family = AF_INET;
        assert_eq!(orig_dst(&r).to_string(), "127.0.0.2:5432");
        r.family = lastmile_ebpf_common::AF_INET6;
        assert_eq!(orig_dst(&r).to_string(), "[::ffff:127.0.0.2]:5432");
    }

    #[test]
    fn the_gateways_events_meet_the_audit_schema() {
        let close = Event::now(EventBody::ConnectionClose(GatewayClose {
            connection: "conn_1".into(),
            client_connection: "sock-1-ab".into(),
            sock_cookie: Some(1),
            session: "ses_1".into(),
            user: UserName::parse("alice").unwrap(),
            resource: "echo".into(),
            gateway: "gw1".into(),
            upstream: None,
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 3,
            error: None,
            extra: serde_json::Map::new(),
        }));
        let refused = Event::now(EventBody::GatewayRefused(GatewayRefusal {
            client_connection: None,
            sock_cookie: None,
            session: "ses_1".into(),
            user: UserName::parse("alice").unwrap(),
            resource: None,
            gateway: "gw1".into(),
            code: ErrorCode::BadStreamHeader,
            message: "m".into(),
        }));
        let query = Event::now(EventBody::DbQuery(DbQuery {
            connection: "sock-1-ab".into(),
            session: "ses_1".into(),
            user: UserName::parse("alice").unwrap(),
            resource: "orders".into(),
            gateway: "gw1".into(),
            sock_cookie: Some(1),
            database: "app".into(),
            protocol: "extended",
            query: "select $1".into(),
            params: None,
            outcome: "ok",
            tags: vec!["SELECT 1".into()],
            rows: Some(1),
            sqlstate: None,
            error: None,
            duration_us: 10,
            copy: None,
            copy_bytes: None,
        }));
        let db_refused = Event::now(EventBody::DbRefused(DbRefusal {
            connection: "sock-1-ab".into(),
            session: "ses_1".into(),
            user: UserName::parse("alice").unwrap(),
            resource: "orders".into(),
            gateway: "gw1".into(),
            sock_cookie: Some(1),
            code: ErrorCode::DatabaseNotAllowed,
            message: "m".into(),
        }));
        let cancel = Event::now(EventBody::DbCancel(DbCancel {
            connection: "sock-2-cd".into(),
            session: "ses_1".into(),
            user: UserName::parse("alice").unwrap(),
            resource: "orders".into(),
            gateway: "gw1".into(),
            sock_cookie: Some(2),
            cancelled: Some("sock-1-ab".into()),
            outcome: "forwarded".into(),
        }));
        for (e, kind) in [
            (close, "connection.close"),
            (refused, "gateway.refused"),
            (query, "db.query"),
            (db_refused, "db.refused"),
            (cancel, "db.cancel"),
        ] {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["kind"], kind);
            lastmile_audit_sink::schema::check(&v).unwrap();
        }
    }

    #[test]
    fn events_serialize_with_kind_and_version() {
        let e = Event::now(EventBody::RefusedDirectDial {
            client: "127.0.0.1:1".parse().unwrap(),
            listener: "127.0.0.1:2".parse().unwrap(),
        });
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "node.refused_direct_dial");
        assert_eq!(v["v"], 1);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}

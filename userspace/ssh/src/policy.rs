//! Which channels and channel requests a resource lets through (RFC 4254).
//!
//! Plain data and pure functions: the bridge asks [`ChannelPolicy::decide`] about each
//! channel open, channel request and global request before anything reaches the target,
//! and audits every [`Decision::Refuse`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exec_log::ExecCommand;

/// The per-resource channel policy. The defaults are what an engineer expects from plain
/// `ssh`, `scp` and `sftp`, and nothing that opens a path into or out of the target's
/// network (port forwarding, X11, agent forwarding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelPolicy {
    /// `pty-req` (RFC 4254 §6.2): interactive terminals.
    pub pty: bool,
    /// `shell` (RFC 4254 §6.5).
    pub shell: bool,
    /// `exec` (RFC 4254 §6.5), other than legacy scp.
    pub exec: bool,
    /// The `sftp` subsystem, which modern `scp` and `sftp` use.
    pub sftp: bool,
    /// `exec` of `scp -t` / `scp -f` (what `scp -O` runs on the target).
    pub legacy_scp: bool,
    /// Variables an `env` request (RFC 4254 §6.4) may set: an exact name, or a prefix
    /// ending in `*` (`LC_*`). TERM needs no entry: it travels in `pty-req`.
    pub env_allow: Vec<String>,
    /// `direct-tcpip` channels (RFC 4254 §7.2): `ssh -L` and `ssh -J` through this target.
    pub direct_tcpip: bool,
    /// `tcpip-forward` global requests (RFC 4254 §7.1): `ssh -R`.
    pub remote_forwarding: bool,
    /// `x11-req` (RFC 4254 §6.3.1): `ssh -X`.
    pub x11: bool,
    /// `auth-agent-req@openssh.com`: `ssh -A`.
    pub agent_forwarding: bool,
    /// Channels open at once on one connection; more is refused (hostile or broken client).
    pub max_channels: usize,
}

impl Default for ChannelPolicy {
    fn default() -> Self {
        Self {
            pty: true,
            shell: true,
            exec: true,
            sftp: true,
            legacy_scp: true,
            env_allow: vec!["LANG".to_owned(), "LC_*".to_owned()],
            direct_tcpip: false,
            remote_forwarding: false,
            x11: false,
            agent_forwarding: false,
            max_channels: 64,
        }
    }
}

/// What the client asks for, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `CHANNEL_OPEN "session"` (RFC 4254 §6.1), with the number already open and
    /// whether the client has sent `no-more-sessions@openssh.com` (OpenSSH PROTOCOL §2.2).
    OpenSession {
        open_channels: usize,
        no_more_sessions: bool,
    },
    /// `CHANNEL_OPEN "direct-tcpip"` (RFC 4254 §7.2).
    OpenDirectTcpip {
        host: &'a str,
        port: u32,
        open_channels: usize,
    },
    /// `CHANNEL_OPEN "x11"`, `"forwarded-tcpip"`, `"direct-streamlocal@openssh.com"`
    /// and anything else a client should not open towards the server.
    OpenOther {
        kind: &'a str,
    },
    Pty,
    Shell,
    Exec(&'a ExecCommand),
    Subsystem {
        name: &'a str,
    },
    Env {
        name: &'a str,
    },
    WindowChange,
    Signal,
    X11,
    AgentForward,
    /// `tcpip-forward` / `streamlocal-forward@openssh.com` global requests.
    RemoteForward {
        what: &'a str,
    },
    /// A channel request of a type the gateway does not relay (RFC 4254 §5.4: "If the
    /// request is not recognized or is not supported for the channel,
    /// SSH_MSG_CHANNEL_FAILURE is returned"), such as `break` (RFC 4335) or a vendor's.
    ChannelRequestOther {
        kind: &'a str,
    },
    /// A global request other than forwarding, keepalive and no-more-sessions (RFC 4254 §4).
    GlobalRequestOther {
        kind: &'a str,
    },
}

/// Why a request was refused; its text is what the user reads and what the audit log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The resource's policy turns this off.
    NotAllowedByResource,
    /// An `env` variable outside the resource's allow-list.
    EnvNotAllowed,
    /// A channel type or request this gateway does not relay.
    Unknown,
    /// The connection already has `max_channels` open.
    TooManyChannels,
    /// The client sent `no-more-sessions@openssh.com` and then opened a session anyway,
    /// which OpenSSH's sshd treats as an attack on a hijacked connection.
    AfterNoMoreSessions,
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAllowedByResource => {
                "not allowed on this resource (an administrator can allow it in the resource's ssh policy)"
            }
            Self::EnvNotAllowed => {
                "variable not in the resource's env allow-list (an administrator can add it)"
            }
            Self::Unknown => "not supported by the lastmile gateway",
            Self::TooManyChannels => "too many channels open on this connection; close some first",
            Self::AfterNoMoreSessions => {
                "the client had promised to open no more sessions (no-more-sessions@openssh.com)"
            }
        })
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse {
        /// What was asked, for the user and the audit log (`direct-tcpip to db:5432`).
        what: String,
        reason: RefusalReason,
    },
}

impl Decision {
    fn allow_if(allowed: bool, what: impl Into<String>) -> Self {
        if allowed {
            Self::Allow
        } else {
            Self::Refuse {
                what: what.into(),
                reason: RefusalReason::NotAllowedByResource,
            }
        }
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }

    /// One line for the user's terminal (stderr of the channel), or None when allowed.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Allow => None,
            Self::Refuse { what, reason } => Some(format!("lastmile: {what} refused: {reason}")),
        }
    }
}

impl ChannelPolicy {
    /// Decide one request. Pure: the caller supplies everything it depends on.
    pub fn decide(&self, request: Request<'_>) -> Decision {
        match request {
            Request::OpenSession {
                no_more_sessions: true,
                ..
            } => Decision::Refuse {
                what: "session channel".to_owned(),
                reason: RefusalReason::AfterNoMoreSessions,
            },
            Request::OpenSession { open_channels, .. } => {
                self.room(open_channels, "session channel")
            }
            Request::OpenDirectTcpip {
                host,
                port,
                open_channels,
            } => {
                let what = format!("port forwarding (direct-tcpip) to {host}:{port}");
                match Decision::allow_if(self.direct_tcpip, what) {
                    Decision::Allow => self.room(open_channels, "direct-tcpip channel"),
                    refused => refused,
                }
            }
            Request::OpenOther { kind } => match kind {
                "x11" => Decision::allow_if(false, "X11 channel"),
                "forwarded-tcpip" => Decision::allow_if(false, "forwarded-tcpip channel"),
                other => Decision::Refuse {
                    what: format!("channel type {other:?}"),
                    reason: RefusalReason::Unknown,
                },
            },
            Request::Pty => Decision::allow_if(self.pty, "pseudo-terminal (pty-req)"),
            Request::Shell => Decision::allow_if(self.shell, "shell"),
            Request::Exec(command) => match &command.scp {
                Some(scp) => Decision::allow_if(
                    self.legacy_scp,
                    format!("legacy scp ({}) of {}", scp.direction, scp.path),
                ),
                None => Decision::allow_if(self.exec, format!("exec of {:?}", command.text)),
            },
            Request::Subsystem { name } => match name {
                "sftp" => Decision::allow_if(self.sftp, "sftp subsystem"),
                other => Decision::Refuse {
                    what: format!("subsystem {other:?}"),
                    reason: RefusalReason::Unknown,
                },
            },
            Request::Env { name } => {
                if self
                    .env_allow
                    .iter()
                    .any(|pattern| env_matches(pattern, name))
                {
                    Decision::Allow
                } else {
                    Decision::Refuse {
                        what: format!("environment variable {name}"),
                        reason: RefusalReason::EnvNotAllowed,
                    }
                }
            }
            // Both only make sense on a channel that was allowed; they carry no new capability.
            Request::WindowChange | Request::Signal => Decision::Allow,
            Request::X11 => Decision::allow_if(self.x11, "X11 forwarding (ssh -X)"),
            Request::AgentForward => {
                Decision::allow_if(self.agent_forwarding, "agent forwarding (ssh -A)")
            }
            Request::RemoteForward { what } => Decision::allow_if(
                self.remote_forwarding,
                format!("remote forwarding ({what})"),
            ),
            Request::ChannelRequestOther { kind } => Decision::Refuse {
                what: format!("channel request {kind:?}"),
                reason: RefusalReason::Unknown,
            },
            Request::GlobalRequestOther { kind } => Decision::Refuse {
                what: format!("global request {kind:?}"),
                reason: RefusalReason::Unknown,
            },
        }
    }

    fn room(&self, open_channels: usize, what: &str) -> Decision {
        if open_channels < self.max_channels {
            Decision::Allow
        } else {
            Decision::Refuse {
                what: format!("{what} beyond {} open", self.max_channels),
                reason: RefusalReason::TooManyChannels,
            }
        }
    }
}

fn env_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_log::ExecCommand;

    fn refused_because(decision: Decision) -> RefusalReason {
        match decision {
            Decision::Refuse { reason, .. } => reason,
            Decision::Allow => panic!("expected a refusal"),
        }
    }

    #[test]
    fn defaults_allow_what_ssh_scp_and_sftp_need() {
        let policy = ChannelPolicy::default();
        for request in [
            Request::OpenSession {
                open_channels: 0,
                no_more_sessions: false,
            },
            Request::Pty,
            Request::Shell,
            Request::Subsystem { name: "sftp" },
            Request::Env { name: "LANG" },
            Request::Env { name: "LC_ALL" },
            Request::WindowChange,
            Request::Signal,
        ] {
            assert_eq!(policy.decide(request), Decision::Allow, "{request:?}");
        }
        let exec = ExecCommand::parse(b"echo hi; exit 3");
        assert!(policy.decide(Request::Exec(&exec)).is_allowed());
        let scp = ExecCommand::parse(b"scp -t /tmp/x");
        assert!(policy.decide(Request::Exec(&scp)).is_allowed());
    }

    #[test]
    fn defaults_refuse_forwarding_x11_and_agent() {
        let policy = ChannelPolicy::default();
        let forward = policy.decide(Request::OpenDirectTcpip {
            host: "db.internal",
            port: 5432,
            open_channels: 0,
        });
        assert_eq!(
            forward,
            Decision::Refuse {
                what: "port forwarding (direct-tcpip) to db.internal:5432".to_owned(),
                reason: RefusalReason::NotAllowedByResource
            }
        );
        for request in [
            Request::X11,
            Request::AgentForward,
            Request::RemoteForward {
                what: "tcpip-forward 0.0.0.0:8080",
            },
            Request::OpenOther { kind: "x11" },
        ] {
            assert_eq!(
                refused_because(policy.decide(request)),
                RefusalReason::NotAllowedByResource,
                "{request:?}"
            );
        }
    }

    #[test]
    fn unknown_types_and_env_outside_the_list_are_refused() {
        let policy = ChannelPolicy::default();
        assert_eq!(
            refused_because(policy.decide(Request::OpenOther {
                kind: "direct-streamlocal@openssh.com"
            })),
            RefusalReason::Unknown
        );
        assert_eq!(
            refused_because(policy.decide(Request::Subsystem { name: "netconf" })),
            RefusalReason::Unknown
        );
        assert_eq!(
            refused_because(policy.decide(Request::Env { name: "LD_PRELOAD" })),
            RefusalReason::EnvNotAllowed
        );
        // A prefix pattern is a prefix, not a substring.
        assert_eq!(
            refused_because(policy.decide(Request::Env { name: "XLC_ALL" })),
            RefusalReason::EnvNotAllowed
        );
    }

    #[test]
    fn a_resource_can_allow_forwarding_and_forbid_exec() {
        let policy = ChannelPolicy {
            direct_tcpip: true,
            exec: false,
            legacy_scp: false,
            ..ChannelPolicy::default()
        };
        assert!(
            policy
                .decide(Request::OpenDirectTcpip {
                    host: "127.0.0.1",
                    port: 80,
                    open_channels: 1
                })
                .is_allowed()
        );
        let exec = ExecCommand::parse(b"id");
        assert!(!policy.decide(Request::Exec(&exec)).is_allowed());
        let scp = ExecCommand::parse(b"scp -f /etc/hosts");
        let refusal = policy.decide(Request::Exec(&scp));
        assert_eq!(
            refusal.message().as_deref(),
            Some(
                "lastmile: legacy scp (download) of /etc/hosts refused: not allowed on this \
                 resource (an administrator can allow it in the resource's ssh policy)"
            )
        );
    }

    #[test]
    fn channels_are_bounded() {
        let policy = ChannelPolicy::default();
        let open = |open_channels| Request::OpenSession {
            open_channels,
            no_more_sessions: false,
        };
        assert!(policy.decide(open(63)).is_allowed());
        assert_eq!(
            refused_because(policy.decide(open(64))),
            RefusalReason::TooManyChannels
        );
    }

    #[test]
    fn no_session_after_no_more_sessions() {
        let policy = ChannelPolicy::default();
        assert_eq!(
            refused_because(policy.decide(Request::OpenSession {
                open_channels: 0,
                no_more_sessions: true,
            })),
            RefusalReason::AfterNoMoreSessions
        );
    }

    #[test]
    fn requests_of_unknown_types_are_refused_naming_the_type() {
        let policy = ChannelPolicy::default();
        let refusal = policy.decide(Request::ChannelRequestOther { kind: "break" });
        assert_eq!(
            refusal.message().as_deref(),
            Some(
                "lastmile: channel request \"break\" refused: not supported by the lastmile gateway"
            )
        );
        assert_eq!(
            refused_because(policy.decide(Request::GlobalRequestOther {
                kind: "hostkeys-prove-00@openssh.com"
            })),
            RefusalReason::Unknown
        );
    }

    #[test]
    fn policy_reads_from_toml_with_defaults() {
        let policy: ChannelPolicy =
            serde_json::from_str(r#"{"direct_tcpip": true}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.direct_tcpip);
        assert!(policy.sftp);
        assert!(serde_json::from_str::<ChannelPolicy>(r#"{"directtcpip": true}"#).is_err());
    }
}

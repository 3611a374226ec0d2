//! The audit event schema, version 1: every kind, what it records, and the fields it must
//! carry. `docs/audit-events.md` documents the same list for people; a test keeps the two
//! in step.
//!
//! Every event is a JSON object with `"v": 1` and `"kind"`. The keys that join events are
//! `sock_cookie` (kernel event ↔ node hand-off ↔ agent connection), `connection` (one
//! proxied connection), `session` (one login session) and `user`.

/// The schema version carried in every event's `"v"`.
pub const VERSION: u64 = 1;

/// One kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    pub what: &'static str,
    /// Fields every event of this kind carries (besides `v` and `kind`).
    pub required: &'static [&'static str],
}

/// Every kind of version 1.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "login",
        what: "a user logged in (password, TOTP, device proof)",
        required: &["user", "device", "session"],
    },
    Kind {
        name: "login.failed",
        what: "a login attempt failed, and why",
        required: &["user", "reason"],
    },
    Kind {
        name: "device.register",
        what: "a device key was registered for a user",
        required: &["user", "device"],
    },
    Kind {
        name: "session.create",
        what: "a session was bound to a user and device",
        required: &["user", "device", "session"],
    },
    Kind {
        name: "session.revoke",
        what: "a session was revoked (logout, admin, other device)",
        required: &["session", "reason"],
    },
    Kind {
        name: "grant.change",
        what: "a grant of a resource to a user or group changed",
        required: &["actor", "resource", "change"],
    },
    Kind {
        name: "permission.change",
        what: "an administrative permission changed",
        required: &["actor", "change"],
    },
    Kind {
        name: "user.change",
        what: "a user was created, disabled, enabled, deleted, changed groups, password or TOTP",
        required: &["actor", "user", "change"],
    },
    Kind {
        name: "resource.change",
        what: "a resource was created, changed or deleted",
        required: &["actor", "resource", "change"],
    },
    Kind {
        name: "device.change",
        what: "an admin approved or revoked a device",
        required: &["actor", "user", "device", "change"],
    },
    Kind {
        name: "gateway.change",
        what: "a gateway token was made, or a gateway enrolled, renewed or was revoked",
        required: &["actor", "gateway", "change"],
    },
    Kind {
        name: "identity.change",
        what: "a node's enrollment token was made, a node enrolled, or a security reader's certificate was issued",
        required: &["actor", "identity", "change"],
    },
    Kind {
        name: "credential.change",
        what: "a credential was stored, or its data key re-wrapped under another KMS key",
        required: &["actor", "resource", "change", "version"],
    },
    Kind {
        name: "credential.decrypt",
        what: "a credential was decrypted for a gateway",
        required: &["resource", "session", "gateway", "connection"],
    },
    Kind {
        name: "connection.open",
        what: "a proxied connection to a resource opened",
        required: &["connection", "session", "resource"],
    },
    Kind {
        name: "connection.close",
        what: "a proxied connection closed, with bytes and duration",
        required: &["connection", "bytes_up", "bytes_down", "duration_ms"],
    },
    Kind {
        name: "gateway.refused",
        what: "a gateway refused a stream (bad header, no authorization, unreachable resource)",
        required: &["session", "gateway", "code"],
    },
    Kind {
        name: "db.query",
        what: "a statement on a database connection, with its outcome (text, keyed hash, or nothing, by policy)",
        required: &[
            "connection",
            "session",
            "resource",
            "protocol",
            "outcome",
            "duration_us",
        ],
    },
    Kind {
        name: "db.refused",
        what: "the gateway ended a database connection itself (database not allowed, upstream login failed, protocol violation, audit unavailable)",
        required: &["connection", "session", "resource", "code"],
    },
    Kind {
        name: "db.cancel",
        what: "a client's cancel request, and whether it reached the server",
        required: &["connection", "session", "outcome"],
    },
    Kind {
        name: "ssh.session",
        what: "an SSH connection through a gateway opened (the principal the target accepted) or closed (channels, bytes, duration, exit status)",
        required: &["connection", "session", "resource", "phase"],
    },
    Kind {
        name: "ssh.channel",
        what: "an SSH channel opened or closed, with its bytes and exit status",
        required: &["connection", "session", "resource", "channel", "phase"],
    },
    Kind {
        name: "ssh.exec",
        what: "an SSH exec request, with the exact command line, before it runs",
        required: &["connection", "session", "resource", "command"],
    },
    Kind {
        name: "ssh.sftp",
        what: "an SFTP operation (open, transfer totals, remove, rename, mkdir, …) read off the subsystem",
        required: &["connection", "session", "resource", "op"],
    },
    Kind {
        name: "ssh.refused",
        what: "an SSH request the gateway refused (principal not allowed, channel or forwarding the policy refuses, untrusted target host key)",
        required: &["connection", "session", "resource", "what", "reason"],
    },
    Kind {
        name: "ssh.recording",
        what: "a terminal recording (asciicast v2) on stable storage, by its SHA-256, size and location",
        required: &[
            "connection",
            "session",
            "resource",
            "sha256",
            "size",
            "location",
        ],
    },
    Kind {
        name: "ssh.incomplete",
        what: "something the SSH audit trail is missing because it failed (a recording not written, an SFTP stream not followed)",
        required: &["connection", "session", "resource", "what"],
    },
    Kind {
        name: "kernel.connect",
        what: "the kernel's decision on a connect to a protected target",
        required: &[
            "decision",
            "orig_dst",
            "pid",
            "uid",
            "comm",
            "cgroup_id",
            "sock_cookie",
        ],
    },
    Kind {
        name: "node.handoff",
        what: "a redirected connection went to its user's agent",
        required: &["sock_cookie", "orig_dst", "uid"],
    },
    Kind {
        name: "node.refused_no_agent",
        what: "a redirected connection was refused: no agent for its uid",
        required: &["sock_cookie", "orig_dst", "uid"],
    },
    Kind {
        name: "node.refused_direct_dial",
        what: "someone connected to the node's listener directly",
        required: &["client", "listener"],
    },
    Kind {
        name: "node.agent",
        what: "an agent registered with the node, or went away",
        required: &["uid", "registered"],
    },
    Kind {
        name: "events.dropped",
        what: "a node or gateway dropped events: its writer's queue was full",
        required: &["count"],
    },
];

/// The kind named `name`, if version 1 has it.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// What is wrong with `event` against the schema, if anything.
pub fn check(event: &serde_json::Value) -> Result<(), String> {
    let v = event.get("v").and_then(serde_json::Value::as_u64);
    if v != Some(VERSION) {
        return Err(format!(
            "\"v\" must be {VERSION}, found {:?}",
            event.get("v")
        ));
    }
    let name = event
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .ok_or("no \"kind\"")?;
    let kind = kind(name).ok_or_else(|| format!("unknown kind `{name}`"))?;
    let missing: Vec<&str> = kind
        .required
        .iter()
        .copied()
        .filter(|f| event.get(*f).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("a `{name}` event needs {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_kind_and_its_fields() {
        let doc = include_str!("../../../docs/audit-events.md");
        for k in KINDS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
                .unwrap_or_else(|| panic!("docs/audit-events.md has no row for `{}`", k.name));
            for f in k.required {
                assert!(
                    row.contains(&format!("`{f}`")),
                    "the `{}` row does not mention `{f}`",
                    k.name
                );
            }
        }
    }

    #[test]
    fn events_are_checked_against_their_kind() {
        use serde_json::json;
        assert!(
            check(&json!({"v": 1, "kind": "node.agent", "uid": 1000, "registered": true})).is_ok()
        );
        assert_eq!(
            check(&json!({"v": 1, "kind": "connection.close", "connection": "c1"})).unwrap_err(),
            "a `connection.close` event needs bytes_up, bytes_down, duration_ms"
        );
        assert!(
            check(&json!({"v": 2, "kind": "login"}))
                .unwrap_err()
                .contains("\"v\" must be 1")
        );
        assert!(
            check(&json!({"v": 1, "kind": "telepathy"}))
                .unwrap_err()
                .contains("unknown kind")
        );
    }
}

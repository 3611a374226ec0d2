//! `lastmile audit trace`: one connection's story in order, joined across components.
//!
//! The kernel (`kernel.connect`) and the node (`node.handoff`, `node.refused_no_agent`)
//! know a connection by its socket cookie; the API's `connection.open` and
//! `credential.decrypt` carry that cookie (`sock_cookie`), the client's proposed id
//! (`client_connection`) and the id the API chose (`connection`), which every gateway
//! event of the connection carries. Starting from any one of them, the trace takes every
//! event that shares one of these keys, and with them the session's own events (its
//! login and creation, a revocation), then orders them by time.

use std::collections::BTreeSet;

use serde_json::Value;

/// What a trace starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The API's id (`conn_…`).
    Connection(String),
    /// The kernel's socket cookie of the application's socket.
    SockCookie(u64),
    /// Every connection of a session, and the session's own events.
    Session(String),
}

/// The keys a connection is known by.
#[derive(Debug, Default)]
struct Keys {
    connections: BTreeSet<String>,
    client_connections: BTreeSet<String>,
    cookies: BTreeSet<u64>,
    sessions: BTreeSet<String>,
}

fn text<'a>(e: &'a Value, field: &str) -> Option<&'a str> {
    e.get(field).and_then(Value::as_str)
}

/// The event inside an audit log entry (`{"event": …}`), or the line itself (a
/// component's JSON-lines event file).
pub fn event_of(entry: Value) -> Value {
    match entry {
        Value::Object(mut m) if m.get("event").is_some_and(Value::is_object) => {
            m.remove("event").unwrap_or_default()
        }
        other => other,
    }
}

impl Keys {
    /// Whether `e` concerns one of the connections known so far.
    fn joins(&self, e: &Value) -> bool {
        text(e, "connection").is_some_and(|c| self.connections.contains(c))
            || text(e, "client_connection").is_some_and(|c| self.client_connections.contains(c))
            || e.get("sock_cookie")
                .and_then(Value::as_u64)
                .is_some_and(|c| self.cookies.contains(&c))
    }

    /// Learns the keys `e` carries; whether any was new.
    fn learn(&mut self, e: &Value) -> bool {
        let mut new = false;
        if let Some(c) = text(e, "connection") {
            new |= self.connections.insert(c.to_owned());
        }
        if let Some(c) = text(e, "client_connection") {
            new |= self.client_connections.insert(c.to_owned());
        }
        if let Some(c) = e.get("sock_cookie").and_then(Value::as_u64) {
            new |= self.cookies.insert(c);
        }
        if let Some(s) = text(e, "session") {
            new |= self.sessions.insert(s.to_owned());
        }
        new
    }
}

/// The kinds that belong to a session rather than to one connection.
const SESSION_KINDS: &[&str] = &[
    "login",
    "session.create",
    "session.revoke",
    "device.register",
];

/// The events of the trace, in time order (events without a time keep their place at
/// the end).
pub fn trace(events: &[Value], start: &Start) -> Vec<Value> {
    let mut keys = Keys::default();
    match start {
        Start::Connection(c) => {
            keys.connections.insert(c.clone());
        }
        Start::SockCookie(n) => {
            keys.cookies.insert(*n);
        }
        Start::Session(s) => {
            keys.sessions.insert(s.clone());
            // Every connection opened in the session is part of its story.
            for e in events {
                if text(e, "session") == Some(s.as_str()) && !is_session_kind(e) {
                    keys.learn(e);
                }
            }
        }
    }
    // Until nothing new is learnt: a kernel event gives the cookie, connection.open joins
    // it to the API's id, the gateway's events carry that id.
    let mut taken = vec![false; events.len()];
    loop {
        let mut learnt = false;
        for (e, taken) in events.iter().zip(taken.iter_mut()) {
            if !*taken && !is_session_kind(e) && keys.joins(e) {
                *taken = true;
                learnt |= keys.learn(e);
            }
        }
        if !learnt {
            break;
        }
    }
    for (e, taken) in events.iter().zip(taken.iter_mut()) {
        if is_session_kind(e) && text(e, "session").is_some_and(|s| keys.sessions.contains(s)) {
            *taken = true;
        }
    }
    let mut out: Vec<Value> = events
        .iter()
        .zip(taken)
        .filter(|(_, t)| *t)
        .map(|(e, _)| e.clone())
        .collect();
    // RFC 3339 with the same precision and offset sorts as text; stable for ties. A
    // kernel event is placed when the kernel saw it (`at`), not when the node read it.
    out.sort_by(|a, b| match (when(a), when(b)) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    out
}

/// When an event happened: a kernel event's `at`, else its `time`.
fn when(e: &Value) -> Option<&str> {
    text(e, "at").or_else(|| text(e, "time"))
}

fn is_session_kind(e: &Value) -> bool {
    text(e, "kind").is_some_and(|k| SESSION_KINDS.contains(&k))
}

/// One line for a person: time, kind, component, and what happened.
pub fn describe(e: &Value) -> String {
    let s = |f: &str| text(e, f).unwrap_or("?").to_owned();
    let n = |f: &str| e.get(f).map_or_else(|| "?".to_owned(), ToString::to_string);
    let kind = s("kind");
    let what = match kind.as_str() {
        "kernel.connect" => format!(
            "{} → {} ({}{}) by pid {} {} uid {}",
            text(e, "comm").unwrap_or("?"),
            s("orig_dst"),
            s("decision"),
            text(e, "target")
                .map(|t| format!(", target {t}"))
                .unwrap_or_default(),
            n("pid"),
            text(e, "exe").unwrap_or("(exe gone)"),
            n("uid"),
        ),
        "node.handoff" => format!(
            "handed to uid {}'s agent ({} → {})",
            n("uid"),
            s("client"),
            s("orig_dst")
        ),
        "node.refused_no_agent" => format!("refused: no agent for uid {}", n("uid")),
        "login" | "session.create" => format!(
            "user {} on device {}, session {}",
            s("user"),
            s("device"),
            s("session")
        ),
        "session.revoke" => format!("session {} revoked: {}", s("session"), s("reason")),
        "connection.open" => format!(
            "authorized: user {} (device {}, session {}) through gateway {} to {}",
            s("user"),
            s("device"),
            s("session"),
            s("gateway"),
            s("resource")
        ),
        "credential.decrypt" => format!(
            "credential of {} (version {}, {}) released to gateway {}",
            s("resource"),
            n("version"),
            text(e, "credential_kind").unwrap_or("?"),
            s("gateway")
        ),
        "db.query" => format!(
            "{} → {}{}",
            text(e, "query")
                .map(str::to_owned)
                .or_else(|| text(e, "query_hmac").map(|h| format!("(statement hmac {h})")))
                .unwrap_or_else(|| "(statement not kept)".into()),
            s("outcome"),
            e.get("rows")
                .and_then(Value::as_u64)
                .map(|r| format!(", {r} rows"))
                .unwrap_or_default()
        ),
        // `command` is an object (`text`, `valid_utf8`, `scp`: docs/audit-events.md); an
        // older event may carry the bare string.
        "ssh.exec" => format!(
            "exec: {}",
            e.get("command")
                .and_then(|c| c.get("text").and_then(Value::as_str).or_else(|| c.as_str()))
                .unwrap_or("?")
        ),
        "ssh.session" | "ssh.channel" => format!("{} {}", s("phase"), compact(e)),
        "gateway.refused" | "db.refused" => format!("refused {}: {}", s("code"), s("message")),
        "connection.close" => format!(
            "closed after {} ms: {} bytes up, {} down{}",
            n("duration_ms"),
            n("bytes_up"),
            n("bytes_down"),
            text(e, "error")
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        ),
        _ => compact(e),
    };
    format!(
        "{}  {:<20} {:<8} {what}",
        text(e, "at").or_else(|| text(e, "time")).unwrap_or("-"),
        kind,
        text(e, "component").unwrap_or(""),
    )
}

/// The event's fields without the envelope ones, as JSON.
fn compact(e: &Value) -> String {
    let mut e = e.clone();
    if let Value::Object(m) = &mut e {
        for k in ["v", "kind", "time", "component"] {
            m.remove(k);
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn story() -> Vec<Value> {
        vec![
            json!({"kind": "login", "time": "2026-12-03T10:00:00.000000Z", "session": "ses_1", "user": "alice", "device": "dev_1"}),
            json!({"kind": "connection.close", "time": "2026-12-03T10:00:09.000000Z", "connection": "conn_1", "bytes_up": 10, "bytes_down": 20, "duration_ms": 900}),
            // Read by the node after the hand-off; seen by the kernel before it.
            json!({"kind": "kernel.connect", "time": "2026-12-03T10:00:05.200000Z", "at": "2026-12-03T10:00:05.000000Z", "sock_cookie": 77, "pid": 42, "comm": "psql", "orig_dst": "127.0.0.2:5432", "decision": "redirected", "uid": 1000}),
            json!({"kind": "node.handoff", "time": "2026-12-03T10:00:05.100000Z", "sock_cookie": 77, "uid": 1000}),
            json!({"kind": "connection.open", "time": "2026-12-03T10:00:06.000000Z", "connection": "conn_1", "client_connection": "sock-77-ab", "sock_cookie": 77, "session": "ses_1", "user": "alice"}),
            json!({"kind": "db.query", "time": "2026-12-03T10:00:07.000000Z", "connection": "conn_1", "query": "select 1", "outcome": "ok"}),
            // Another connection of the same session, and someone else's.
            json!({"kind": "connection.open", "time": "2026-12-03T10:00:08.000000Z", "connection": "conn_2", "sock_cookie": 78, "session": "ses_1"}),
            json!({"kind": "kernel.connect", "time": "2026-12-03T10:00:07.500000Z", "sock_cookie": 78}),
            json!({"kind": "kernel.connect", "time": "2026-12-03T10:00:01.000000Z", "sock_cookie": 99}),
        ]
    }

    fn kinds(t: &[Value]) -> Vec<&str> {
        t.iter().map(|e| e["kind"].as_str().unwrap()).collect()
    }

    #[test]
    fn from_the_kernels_cookie_to_the_close_in_time_order() {
        let t = trace(&story(), &Start::SockCookie(77));
        assert_eq!(
            kinds(&t),
            [
                "login",
                "kernel.connect",
                "node.handoff",
                "connection.open",
                "db.query",
                "connection.close"
            ]
        );
        // The same story from the API's id.
        let again = trace(&story(), &Start::Connection("conn_1".into()));
        assert_eq!(kinds(&again), kinds(&t));
    }

    #[test]
    fn a_session_takes_all_its_connections_and_nothing_else() {
        let t = trace(&story(), &Start::Session("ses_1".into()));
        assert_eq!(t.len(), 8, "{t:#?}");
        assert!(t.iter().all(|e| e["sock_cookie"] != 99));
        assert!(trace(&story(), &Start::Session("ses_9".into())).is_empty());
    }

    #[test]
    fn lines_say_what_happened() {
        let t = trace(&story(), &Start::SockCookie(77));
        let lines: Vec<String> = t.iter().map(describe).collect();
        assert!(
            lines[1].contains("psql → 127.0.0.2:5432 (redirected) by pid 42"),
            "{lines:?}"
        );
        assert!(lines[4].contains("select 1 → ok"), "{lines:?}");
        assert!(lines[5].contains("10 bytes up, 20 down"), "{lines:?}");
        // An exec's command is an object, as the gateway writes it.
        let exec = json!({"kind": "ssh.exec", "command": {"text": "uname -a", "valid_utf8": true}});
        assert!(
            describe(&exec).contains("exec: uname -a"),
            "{}",
            describe(&exec)
        );
        assert_eq!(
            event_of(json!({"event": {"kind": "x"}, "received": 1}))["kind"],
            "x"
        );
    }
}

//! The bridge's events as the gateway's `ssh.*` audit events: each with the connection,
//! session, user, resource and gateway, so one SSH connection joins the rest of the log.

use lastmile_proto::wire::{ConnectionId, SessionId, UserName};
use std::sync::{Arc, Mutex};

use lastmile_ssh::events::SshEvent;
use serde_json::{Map, Value, json};

use crate::{
    events::{Event, EventBody, SshRecord},
    gateway::Gateway,
};

/// Who and what every event of one connection names.
#[derive(Debug, Clone)]
pub(super) struct Context {
    pub connection: ConnectionId,
    pub session: SessionId,
    pub user: UserName,
    pub resource: String,
    pub gateway: String,
}

/// The bridge's [`lastmile_ssh::events::EventSink`] for one connection.
pub(super) struct Audit {
    pub gw: Arc<Gateway>,
    pub context: Context,
    /// The principal the target accepted, for `connection.close`.
    pub principal: Mutex<Option<String>>,
    /// Why the connection as a whole failed (a login refused, an untrusted target), for
    /// `connection.close`'s `error`.
    pub failure: Mutex<Option<String>>,
}

impl lastmile_ssh::events::EventSink for Audit {
    fn event(&self, event: SshEvent) {
        if let SshEvent::SessionOpened { principal, .. } = &event
            && let Ok(mut p) = self.principal.lock()
        {
            *p = Some(principal.clone());
        }
        let failed = match &event {
            SshEvent::Refused {
                channel: None,
                what,
                reason,
                ..
            } => Some(format!("refused {what}: {reason}")),
            SshEvent::Incomplete {
                channel: None,
                what,
                ..
            } => Some(what.clone()),
            _ => None,
        };
        if let Some(why) = failed
            && let Ok(mut f) = self.failure.lock()
        {
            f.get_or_insert(why);
        }
        let (kind, detail) = record(event);
        let c = &self.context;
        let record = SshRecord {
            connection: c.connection.clone(),
            session: c.session.clone(),
            user: c.user.clone(),
            resource: c.resource.clone(),
            gateway: c.gateway.clone(),
            detail,
        };
        self.gw.sink.write(&Event::now(kind(record)));
    }
}

type Kind = fn(SshRecord) -> EventBody;

/// Which `ssh.*` kind an event is and its own fields (the bridge's `connection` and tag
/// are dropped: the record carries the gateway's).
pub(super) fn record(event: SshEvent) -> (Kind, Map<String, Value>) {
    let kind: Kind = match &event {
        SshEvent::SessionOpened { .. } | SshEvent::SessionClosed { .. } => EventBody::SshSession,
        SshEvent::ChannelOpened { .. }
        | SshEvent::ChannelClosed { .. }
        | SshEvent::Started { .. } => EventBody::SshChannel,
        SshEvent::Exec { .. } => EventBody::SshExec,
        SshEvent::Sftp { .. } => EventBody::SshSftp,
        SshEvent::Refused { .. } => EventBody::SshRefused,
        SshEvent::RecordingFinished { .. } => EventBody::SshRecording,
        SshEvent::Incomplete { .. } => EventBody::SshIncomplete,
    };
    let phase = match &event {
        SshEvent::SessionOpened { .. } | SshEvent::ChannelOpened { .. } => Some("open"),
        SshEvent::SessionClosed { .. } | SshEvent::ChannelClosed { .. } => Some("close"),
        SshEvent::Started { .. } => Some("start"),
        _ => None,
    };
    let mut detail = match serde_json::to_value(&event) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    detail.remove("event");
    detail.remove("connection");
    if let Some(phase) = phase {
        detail.insert("phase".into(), json!(phase));
    }
    // A channel's kind is `type` in the log: `kind` is the event's.
    if let Some(k) = detail.remove("kind") {
        detail.insert("type".into(), k);
    }
    // `ssh.recording` and `ssh.sftp` carry their parts at the top.
    if let Some(Value::Object(recording)) = detail.remove("recording") {
        detail.extend(recording);
    }
    if let Some(Value::Object(op)) = detail.remove("op") {
        detail.extend(op);
    }
    (kind, detail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::time::Duration;

    use lastmile_ssh::events::{ConnectionId, SshEvent};

    use super::record;

    fn kind_of(event: SshEvent) -> (String, serde_json::Map<String, serde_json::Value>) {
        let (kind, detail) = record(event);
        let record = crate::events::SshRecord {
            connection: "c".into(),
            session: "s".into(),
            user: lastmile_proto::wire::UserName::parse("u").unwrap(),
            resource: "r".into(),
            gateway: "g".into(),
            detail: detail.clone(),
        };
        let v = serde_json::to_value(crate::events::Event::now(kind(record))).unwrap();
        lastmile_audit_sink::schema::check(&v).unwrap();
        (v["kind"].as_str().unwrap().to_owned(), detail)
    }

    #[test]
    fn each_bridge_event_is_an_ssh_kind_with_its_fields_at_the_top() {
        let c = || ConnectionId::from("c");
        let (kind, d) = kind_of(SshEvent::SessionClosed {
            connection: c(),
            principal: Some("root".into()),
            channels: 1,
            bytes_to_target: 5,
            bytes_to_user: 7,
            duration: Duration::from_millis(1500),
            exit_status: Some(3),
            reason: "connection closed".into(),
        });
        assert_eq!(kind, "ssh.session");
        assert_eq!(d["phase"], "close");
        assert_eq!(d["exit_status"], 3);
        assert_eq!(d["duration"], 1.5);
        assert!(!d.contains_key("connection") && !d.contains_key("event"));
        let (kind, d) = kind_of(SshEvent::ChannelOpened {
            connection: c(),
            channel: 0,
            kind: "session".into(),
        });
        assert_eq!(
            (kind.as_str(), &d["type"]),
            ("ssh.channel", &"session".into())
        );
        let (kind, d) = kind_of(SshEvent::RecordingFinished {
            connection: c(),
            channel: 0,
            recording: lastmile_ssh::recording::FinishedRecording {
                location: "/r/c-0.cast".into(),
                sha256: "ab".into(),
                size: 9,
            },
        });
        assert_eq!(kind, "ssh.recording");
        assert_eq!((&d["sha256"], &d["size"]), (&"ab".into(), &9.into()));
        let (kind, d) = kind_of(SshEvent::Refused {
            connection: c(),
            channel: None,
            what: "login as \"deploy\"".into(),
            reason: "not allowed".into(),
        });
        assert_eq!(
            (kind.as_str(), &d["reason"]),
            ("ssh.refused", &"not allowed".into())
        );
    }
}

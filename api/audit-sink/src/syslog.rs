//! Audit events as RFC 5424 syslog messages, framed for TLS (RFC 5425): the copy a SIEM
//! takes. Sans-IO: this module only turns an event into bytes; [`sender`] moves them.
//!
//! A message is (RFC 5424 §6)
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [lastmile@32473 user="…" …] BOM{event JSON}
//! ```
//!
//! with MSGID the event's kind and MSG the event exactly as the JSON-lines file holds it
//! (after the policy and sealing), so a SIEM parses the same JSON from either source.
//! The structured data repeats a few join keys so a receiver can filter without parsing
//! the JSON; a sealed event keeps them in the clear too ([`crate::CLEAR_FIELDS`]).

pub(crate) mod sender;

use serde::Deserialize;
use serde_json::Value;

/// The SD-ID of lastmile's structured data element. An SD-ID with an `@` is a private
/// one under an enterprise number (RFC 5424 §6.3.2, §7.2.2); 32473 is the number RFC 5612
/// reserves for documentation and examples, used until lastmile has its own.
pub const SD_ID: &str = "lastmile@32473";

/// The event fields copied into the structured data element, in this order.
pub const SD_PARAMS: &[&str] = &["user", "session", "resource", "connection"];

/// The UTF-8 byte order mark that says MSG is UTF-8 (RFC 5424 §6.4).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// RFC 5424 §6.2.1, table 1: the facility part of PRI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Facility(u8);

/// Facility names as rsyslog and syslog(3) spell them, by code (RFC 5424 table 1).
const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl Facility {
    /// `authpriv` (10): receivers commonly keep it in a file only root reads (Debian's
    /// rsyslog writes it to /var/log/auth.log, not /var/log/syslog), which suits events
    /// that say who connected where.
    pub const AUTHPRIV: Self = Self(10);

    pub fn code(self) -> u8 {
        self.0
    }
}

impl Default for Facility {
    fn default() -> Self {
        Self::AUTHPRIV
    }
}

/// A facility name that RFC 5424 table 1 does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a syslog facility: use one of kern, user, mail, daemon, auth, syslog, lpr, \
     news, uucp, cron, authpriv, ftp, ntp, audit, alert, clock, local0 … local7"
)]
pub struct UnknownFacility(String);

impl TryFrom<String> for Facility {
    type Error = UnknownFacility;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        FACILITIES
            .iter()
            .position(|f| f.eq_ignore_ascii_case(&name))
            .and_then(|code| u8::try_from(code).ok())
            .map(Self)
            .ok_or(UnknownFacility(name))
    }
}

/// RFC 5424 §6.2.1, table 2 (the two an audit event gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A refusal, a denial, a failed login, or a gap in the audit trail.
    Warning = 4,
    Informational = 6,
}

/// How urgent `event` is: refusals and denials (every `*.refused*` kind, a failed login,
/// a connect the kernel refused) and events that say the trail has a gap
/// (`events.dropped`, `ssh.incomplete`) are warnings; everything else is information.
pub fn severity(event: &Value) -> Severity {
    let kind = event
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let denied = kind.contains("refused")
        || kind == "login.failed"
        || (kind == "kernel.connect"
            && event.get("decision").and_then(Value::as_str) == Some("refused"));
    let gap = kind == "events.dropped" || kind == "ssh.incomplete";
    if denied || gap {
        Severity::Warning
    } else {
        Severity::Informational
    }
}

/// The header fields that come from the sender, not the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// HOSTNAME (§6.2.4): this host's name or FQDN.
    pub hostname: String,
    /// APP-NAME (§6.2.5).
    pub app_name: String,
    pub facility: Facility,
}

/// The RFC 5424 SYSLOG-MSG for `event`, whose JSON text (as written to the file) is
/// `json`.
pub fn message(origin: &Origin, event: &Value, json: &str) -> Vec<u8> {
    // §6.2.1: PRIVAL = facility × 8 + severity.
    let prival = u16::from(origin.facility.code()) * 8 + severity(event) as u16;
    let time = event
        .get("time")
        .and_then(Value::as_str)
        .and_then(timestamp)
        .unwrap_or_else(|| "-".to_owned());
    let kind = event
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // §6.2: VERSION 1; PROCID is NILVALUE (the process id says nothing a SIEM needs).
    let header = format!(
        "<{prival}>1 {time} {} {} - {}",
        printable(&origin.hostname, 255),
        printable(&origin.app_name, 48),
        printable(kind, 32),
    );
    let mut msg = Vec::with_capacity(header.len() + json.len() + 128);
    msg.extend_from_slice(header.as_bytes());
    msg.push(b' ');
    msg.extend_from_slice(structured_data(event).as_bytes());
    // §6.4: MSG starts with the BOM when it is UTF-8, as JSON text is.
    msg.push(b' ');
    msg.extend_from_slice(BOM);
    msg.extend_from_slice(json.as_bytes());
    msg
}

/// RFC 5425 §4.3 octet counting: `MSGLEN SP SYSLOG-MSG`, MSGLEN the SYSLOG-MSG's length
/// in octets, in decimal.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = format!("{} ", message.len()).into_bytes();
    frame.extend_from_slice(message);
    frame
}

/// A header field (§6: `1*N PRINTUSASCII`, i.e. `%d33-126`): other characters become
/// `_`, the text is cut at `max` characters, and an empty one is NILVALUE.
fn printable(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if field.is_empty() {
        "-".to_owned()
    } else {
        field
    }
}

/// The STRUCTURED-DATA field (§6.3): one element holding [`SD_PARAMS`] that the event has,
/// or NILVALUE when it has none.
fn structured_data(event: &Value) -> String {
    let mut element = format!("[{SD_ID}");
    let mut any = false;
    for name in SD_PARAMS {
        let value = match event.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        any = true;
        element.push(' ');
        element.push_str(name);
        element.push_str("=\"");
        element.push_str(&escape_param(&value));
        element.push('"');
    }
    element.push(']');
    if any { element } else { "-".to_owned() }
}

/// §6.3.3: inside PARAM-VALUE, `"`, `\` and `]` MUST be escaped with a backslash.
fn escape_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The event's `time` as §6.2.3 wants it: RFC 3339 with an upper-case `T` and `Z`, at
/// most six digits of fraction (more are cut), and no leap second. `None` when it is not
/// such a time (the message then carries NILVALUE and the receiver's own time).
fn timestamp(time: &str) -> Option<String> {
    let b = time.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize| b.get(i).copied();
    let date_time = digits(0..4)
        && at(4) == Some(b'-')
        && digits(5..7)
        && at(7) == Some(b'-')
        && digits(8..10)
        && matches!(at(10), Some(b'T' | b't'))
        && digits(11..13)
        && at(13) == Some(b':')
        && digits(14..16)
        && at(16) == Some(b':')
        && digits(17..19)
        && b.get(17..19) != Some(b"60");
    if !date_time {
        return None;
    }
    let mut out = time.get(..19)?.to_ascii_uppercase();
    let mut rest = time.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        out.push('.');
        out.push_str(frac.get(..n.min(6))?);
        rest = frac.get(n..)?;
    }
    let offset = rest.as_bytes();
    let numeric = offset.len() == 6
        && matches!(offset.first(), Some(b'+' | b'-'))
        && offset
            .get(1..3)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        && offset.get(3) == Some(&b':')
        && offset
            .get(4..6)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if rest.eq_ignore_ascii_case("z") {
        out.push('Z');
    } else if numeric {
        out.push_str(rest);
    } else {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn origin() -> Origin {
        Origin {
            hostname: "gw-1.example.net".into(),
            app_name: "lastmile".into(),
            facility: Facility::AUTHPRIV,
        }
    }

    fn text(event: &Value) -> String {
        String::from_utf8(message(&origin(), event, &event.to_string())).unwrap()
    }

    #[test]
    fn a_message_is_rfc5424_with_the_event_as_its_json() {
        let event = json!({"v": 1, "kind": "connection.open", "time": "2026-11-28T14:36:54.360646Z",
            "user": "ana", "session": "s-7f3a", "resource": "pg-main", "connection": "conn_19"});
        let json = event.to_string();
        assert_eq!(
            text(&event),
            format!(
                "<86>1 2026-11-28T14:36:54.360646Z gw-1.example.net lastmile - connection.open \
                 [lastmile@32473 user=\"ana\" session=\"s-7f3a\" resource=\"pg-main\" \
                 connection=\"conn_19\"] \u{feff}{json}"
            )
        );
    }

    #[test]
    fn refusals_and_denials_are_warnings() {
        let pri = |event: Value| text(&event).split('>').next().unwrap().to_owned();
        // authpriv (10) × 8 + 4 (warning) or 6 (informational).
        assert_eq!(pri(json!({"kind": "gateway.refused"})), "<84");
        assert_eq!(pri(json!({"kind": "node.refused_no_agent"})), "<84");
        assert_eq!(pri(json!({"kind": "login.failed"})), "<84");
        assert_eq!(
            pri(json!({"kind": "kernel.connect", "decision": "refused"})),
            "<84"
        );
        assert_eq!(pri(json!({"kind": "events.dropped", "count": 3})), "<84");
        assert_eq!(
            pri(json!({"kind": "kernel.connect", "decision": "redirected"})),
            "<86"
        );
        assert_eq!(pri(json!({"kind": "login"})), "<86");
        let local7 = Origin {
            facility: Facility::try_from("local7".to_owned()).unwrap(),
            ..origin()
        };
        let msg = message(&local7, &json!({"kind": "db.refused"}), "{}");
        assert!(msg.starts_with(b"<188>1 "), "{msg:?}");
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(escape_param(r#"a"b\c]d[e"#), r#"a\"b\\c\]d[e"#);
        let event = json!({"kind": "login", "user": "x\"] [evil@1 a=\"b", "session": 7});
        assert!(
            text(&event).contains(r#"[lastmile@32473 user="x\"\] [evil@1 a=\"b" session="7"]"#),
            "{}",
            text(&event)
        );
    }

    #[test]
    fn an_event_without_join_keys_has_nil_structured_data() {
        let event =
            json!({"v": 1, "kind": "node.agent", "uid": 1000, "registered": true, "user": null});
        assert!(
            text(&event).contains(" node.agent - \u{feff}{"),
            "{}",
            text(&event)
        );
    }

    #[test]
    fn header_fields_are_printable_ascii_and_bounded() {
        let long_kind = "k".repeat(40);
        let event = json!({"kind": long_kind});
        let o = Origin {
            hostname: "my host".into(),
            app_name: String::new(),
            ..origin()
        };
        let msg = String::from_utf8(message(&o, &event, "{}")).unwrap();
        assert!(
            msg.starts_with(&format!("<86>1 - my_host - - {} - ", "k".repeat(32))),
            "{msg}"
        );
    }

    #[test]
    fn timestamps_follow_section_6_2_3() {
        assert_eq!(
            timestamp("2026-11-28T14:36:54.360646Z").as_deref(),
            Some("2026-11-28T14:36:54.360646Z")
        );
        assert_eq!(
            timestamp("2003-08-24t05:14:15.000003-07:00").as_deref(),
            Some("2003-08-24T05:14:15.000003-07:00")
        );
        assert_eq!(
            timestamp("1985-04-12T23:20:50.123456789z").as_deref(),
            Some("1985-04-12T23:20:50.123456Z")
        );
        assert_eq!(
            timestamp("1985-04-12T23:20:50Z").as_deref(),
            Some("1985-04-12T23:20:50Z")
        );
        // A leap second, no offset, a space for T, an empty fraction, junk: not a time.
        for bad in [
            "1990-12-31T23:59:60Z",
            "1985-04-12T23:20:50",
            "1985-04-12 23:20:50Z",
            "1985-04-12T23:20:50.Z",
            "yesterday",
            "",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
        assert!(text(&json!({"kind": "login", "time": 12})).starts_with("<86>1 - "));
    }

    #[test]
    fn frames_count_octets_not_characters() {
        let msg = message(&origin(), &json!({"kind": "login", "user": "zoë"}), "{}");
        let framed = frame(&msg);
        let (len, rest) = framed.split_at(framed.iter().position(|b| *b == b' ').unwrap());
        assert_eq!(std::str::from_utf8(len).unwrap(), msg.len().to_string());
        assert_eq!(&rest[1..], &msg[..]);
        assert_ne!(
            msg.len(),
            String::from_utf8(msg.clone()).unwrap().chars().count()
        );
    }

    #[test]
    fn facilities_by_name() {
        assert_eq!(Facility::try_from("audit".to_owned()).unwrap().code(), 13);
        assert_eq!(Facility::try_from("LOCAL0".to_owned()).unwrap().code(), 16);
        let err = Facility::try_from("local8".to_owned()).unwrap_err();
        assert!(err.to_string().contains("use one of"), "{err}");
    }
}

//! How a lastmile component writes audit events.
//!
//! Per component, configuration decides which event kinds are kept ([`Policy::kinds`]),
//! how much of a query is kept (the text, a keyed hash of it, or nothing:
//! [`QueryText`]), and whether events are encrypted on the host to age X25519
//! recipients before they leave it ([`seal`]). An encrypted event keeps its kind and its
//! join keys (session, connection, socket cookie) in the clear so the log can still be
//! searched and joined; everything else is inside the age ciphertext, which only the
//! holders of a recipient's identity can read ([`open`]).
//!
//! The event schema is versioned: every event carries `"v"`; see `docs/audit-events.md`.

mod config;
pub mod files;
mod identity;
mod policy;
pub mod schema;
mod seal;
pub mod spool;
pub mod syslog;
mod writer;

pub use config::{ServiceConfig, SinkConfig, SyslogConfig};
pub use identity::{ClientIdentity, IdentityError, MemoryIdentity};
pub use policy::{Policy, PolicyError, QueryText};
pub use seal::{SealError, load_identities, open, open_all, parse_recipients, seal};
pub use syslog::sender::SyslogError;
pub use writer::{AuditWriter, Delivery, ServiceTarget, WriteError};

/// Fields an encrypted event keeps in the clear: what searching and joining need.
pub const CLEAR_FIELDS: &[&str] = &[
    "v",
    "kind",
    "time",
    "session",
    "connection",
    "sock_cookie",
    "user",
    "resource",
    "host",
];

/// An error and each of its causes, once each, as `{:#}` prints an anyhow error: the text
/// to put where only a string goes (an event's `error`, a log field, a reply's message).
/// Errors put their cause in `source()`, not in their message, so `to_string()` alone
/// would drop it. A cause whose text the message already ends with (a foreign error that
/// repeats its source) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x.toml")]
    struct Read(#[source] std::io::Error);

    /// As some other crates' errors are: the cause in the message and in `source()`.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x.toml: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            error_chain(&Read(missing())),
            "cannot read /x.toml: no such file"
        );
        assert_eq!(
            error_chain(&Repeats(missing())),
            "cannot read /x.toml: no such file"
        );
    }
}

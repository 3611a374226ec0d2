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
mod policy;
pub mod schema;
mod seal;
pub mod spool;
mod writer;

pub use config::{ServiceConfig, SinkConfig};
pub use policy::{Policy, PolicyError, QueryText};
pub use seal::{SealError, load_identities, open, open_all, parse_recipients, seal};
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

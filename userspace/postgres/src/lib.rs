//! The PostgreSQL frontend/backend protocol (version 3.0, PostgreSQL 15 docs chapter 55),
//! sans-IO: the gateway's tokio code moves bytes between sockets and these functions.
//!
//! - [`startup`]: the untyped start-up packets (§55.2.1): StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest, and NegotiateProtocolVersion.
//! - [`frame`]: the relay's framing of typed messages (§55.7), streaming what it does not
//!   inspect.
//!
//! Section numbers (§55.x) refer to the PostgreSQL 15 documentation.
#![forbid(unsafe_code)]

pub mod auth;
mod end_point;
pub mod frame;
pub mod message;
pub mod startup;
mod wire;

pub use wire::Tag;

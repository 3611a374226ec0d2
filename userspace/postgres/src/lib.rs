//! The PostgreSQL frontend/backend protocol (version 3.0) as lastmile's gateway needs it,
//! sans-IO: no sockets, no clock. The gateway's tokio code moves bytes between sockets and
//! these functions and passes in `Instant`s.
//!
//! - [`startup`]: the untyped start-up packets (§55.2.1): StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest; NegotiateProtocolVersion.
//! - [`frame`]: the relay's framing of typed messages (§55.7). Messages it is not asked to
//!   inspect stream through without being buffered whole.
//! - [`message`]: typed, borrowing views of the messages the gateway reads, and builders for
//!   the ones it writes to the client (AuthenticationOk, ParameterStatus, ReadyForQuery,
//!   ErrorResponse).
//! - [`auth`]: the gateway's own login upstream (cleartext, MD5, SCRAM-SHA-256 and
//!   SCRAM-SHA-256-PLUS with tls-server-end-point channel binding).
//! - [`statements`]: matching the client's statements to the server's answers for the audit
//!   log.
//!
//! Section numbers (§55.x) are those of the PostgreSQL 15 documentation, chapter 55
//! "Frontend/Backend Protocol".
//!
//! # What comes from `postgres-protocol`, and what is written here
//!
//! Taken from `postgres-protocol` 0.6, the client half of rust-postgres:
//! - the SCRAM-SHA-256 client, `authentication::sasl::ScramSha256` with `ChannelBinding`
//!   (SASLprep, PBKDF2, proofs, the server-signature check, a cap on the server's iteration
//!   count), and `authentication::md5_hash`: the parts where a mistake is a security bug;
//! - the encoders of the frontend messages the login sends (`frontend::password_message`,
//!   `sasl_initial_response`, `sasl_response`). Its other encoders and its backend parser
//!   serve as a reference in the tests, which check our bytes against theirs.
//!
//! Written here, and why:
//! - the framing ([`frame::Scanner`]): `backend::Message::parse` wants the whole message in
//!   a `BytesMut` and decodes it, while a relay must pass messages it does not care about
//!   through byte for byte as they arrive (a 500 MB DataRow, a COPY stream), enforce its own
//!   size limit from the header alone, and frame the client's direction too, for which
//!   postgres-protocol has no parser;
//! - the typed views ([`message`]): they borrow `&str`s from the received bytes, cover the
//!   frontend messages (Query, Parse, Bind, ...) that postgres-protocol only encodes, and
//!   fail on malformed input with an error instead of a partial value;
//! - the start-up packets: the server side of start-up is not in postgres-protocol at all;
//! - the tls-server-end-point hash: postgres-protocol takes the hash, it does not compute
//!   it. A minimal DER walk to the certificate's signatureAlgorithm is enough (see
//!   [`auth::tls_server_end_point`]); an X.509 parser would be a large dependency for one
//!   OID.
#![forbid(unsafe_code)]

pub mod auth;
mod end_point;
pub mod frame;
pub mod message;
pub mod startup;
pub mod statements;
mod wire;

pub use wire::Tag;

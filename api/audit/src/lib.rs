//! lastmile's tamper-evident audit log.
//!
//! Events are appended to segment files ([`segment`]), each wrapped in an envelope that
//! numbers it ([`envelope`]); every envelope is a leaf of an RFC 6962 Merkle tree, and
//! signed checkpoints of that tree ([`checkpoints`]) are published to the data directory
//! and to a witness location. [`verify`] recomputes the tree from the segments and checks
//! it against every checkpoint, so an edited, dropped, reordered or truncated entry, a
//! fork, or a log re-signed with another key is found and named.

pub mod checkpoints;
pub mod envelope;
pub mod log;
pub mod segment;
pub mod service;
pub mod verify;

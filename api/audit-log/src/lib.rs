//! The integrity core of lastmile's tamper-evident audit log.
//!
//! Every audit entry becomes a leaf of an append-only Merkle tree, built exactly as
//! RFC 6962 section 2.1 / RFC 9162 section 2.1 define it ([`merkle`]). The log
//! periodically signs its tree head as a C2SP checkpoint (<https://c2sp.org/tlog-checkpoint>,
//! a <https://c2sp.org/signed-note> with an Ed25519 or ECDSA P-256 signature; [`checkpoint`]). With a
//! signed checkpoint in hand, anyone can demand
//!
//! - an inclusion proof (RFC 9162 section 2.1.3) that a given entry is in the log, and
//! - a consistency proof (RFC 9162 section 2.1.4) that a newer checkpoint extends an
//!   older one, i.e. that no entry was changed, removed or reordered in between.
//!
//! Sticking to the published standards (rather than a home-grown scheme) lets existing
//! transparency-log tooling and witnesses check lastmile's log independently.
//!
//! The crate is sans-IO: no files, sockets or clocks. Callers store leaves, pass in
//! the time, and move the text of notes wherever they need to.

pub mod checkpoint;
pub mod merkle;
pub mod note_key;

pub use checkpoint::{
    BodyError, Checkpoint, CheckpointError, NoteSigner, NoteVerifier, attach_signature, open, sign,
};
pub use merkle::{
    CompactTree, Hash, ProofError, consistency_proof, empty_root, inclusion_proof, leaf_hash,
    node_hash, root_from_leaves, verify_consistency, verify_inclusion,
};

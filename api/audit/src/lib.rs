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

use std::path::{Path, PathBuf};

/// Why the log could not be opened for writing.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error(transparent)]
    Publish(#[from] checkpoints::PublishError),
    #[error(
        "the log holds {entries} entries but a checkpoint of size {published} was published: \
         acknowledged entries are missing; run `lastmile audit verify` and investigate before \
         writing to this log again"
    )]
    Behind { entries: u64, published: u64 },
}

/// Opens the log in `data_dir` for appending, with the publisher of its checkpoints
/// (signing key `signing.key`, made by `lastmile-audit init`). Refuses a log that holds
/// fewer entries than a published checkpoint vouches for: appending would bury the loss.
pub fn open_for_writing(
    data_dir: &Path,
    origin: &str,
    witness: Option<PathBuf>,
) -> Result<(log::Log, log::Recovered, checkpoints::Publisher), OpenError> {
    // The key first: no key means no `init`, and then nothing should be created here.
    let signer = checkpoints::load_signer(data_dir, origin)?;
    let (log, recovered) = log::Log::open(data_dir, log::DEFAULT_SEGMENT_BYTES)?;
    let publisher = checkpoints::Publisher::new(data_dir, origin, signer, witness)?;
    if let Some(published) = publisher.last_size()
        && published > log.size()
    {
        return Err(OpenError::Behind {
            entries: log.size(),
            published,
        });
    }
    Ok((log, recovered, publisher))
}

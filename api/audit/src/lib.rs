//! lastmile's tamper-evident audit log.
//!
//! Events are appended to segment files ([`segment`]), each wrapped in an envelope that
//! numbers it ([`envelope`]); every envelope is a leaf of an RFC 6962 Merkle tree, and
//! signed checkpoints of that tree ([`checkpoints`]) are published to the data directory
//! and to a witness location. [`verify`] recomputes the tree from the segments and checks
//! it against every checkpoint, so an edited, dropped, reordered or truncated entry, a
//! fork, or a log re-signed with another key is found and named.

pub mod archive;
pub mod checkpoints;
pub mod envelope;
pub mod log;
pub mod metrics;
pub mod monitor;
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
    #[error(
        "checkpoint {} does not open with this log's signing key: this log did not write it; \
         run `lastmile audit verify` and investigate before writing to this log again",
        file.display()
    )]
    ForeignCheckpoint {
        file: PathBuf,
        #[source]
        source: lastmile_audit_log::CheckpointError,
    },
    #[error(
        "the log's first {size} entries no longer hash to the root signed in {}: entries were \
         changed while the log was closed; run `lastmile audit verify` with the witness and \
         investigate before writing to this log again",
        file.display()
    )]
    Rewritten { size: u64, file: PathBuf },
}

/// Opens the log in `data_dir` for appending, with the publisher of its checkpoints
/// signed by the key at `key` (a file made by `lastmile-audit init`, or a KMS key; a key
/// file on the same filesystem as the data is warned about). Refuses a log that does not
/// match the newest checkpoint it published (in its own directory and in the witness):
/// fewer entries than it vouches for, or a different root over them. Entries after it
/// (acknowledged, not yet signed, when the log stopped) are adopted.
pub async fn open_for_writing(
    data_dir: &Path,
    key: &checkpoints::KeySource,
    origin: &str,
    witness: Option<PathBuf>,
) -> Result<(log::Log, log::Recovered, checkpoints::Publisher), OpenError> {
    // The key first: no key means no `init`, and then nothing should be created here.
    let signer = checkpoints::Signer::load(key, origin).await?;
    if let checkpoints::KeySource::File(path) = key
        && checkpoints::same_filesystem(path, data_dir) == Some(true)
    {
        tracing::warn!(
            key = %path.display(),
            data = %data_dir.display(),
            "the log's signing key is on the same filesystem as its data: whoever can rewrite \
             the log there can re-sign it; set `signing_key` to a path on another filesystem \
             (or keep it on another host, or in a KMS: `signing_kms`)"
        );
    }
    let (log, recovered) = log::Log::open(data_dir, log::DEFAULT_SEGMENT_BYTES)?;
    let publisher = checkpoints::Publisher::new(data_dir, origin, signer, witness)?;
    check_against_checkpoints(&log, &publisher)?;
    Ok((log, recovered, publisher))
}

/// Appending to a log that no longer matches what it signed would bury the change.
fn check_against_checkpoints(
    log: &log::Log,
    publisher: &checkpoints::Publisher,
) -> Result<(), OpenError> {
    let verifier = publisher.verifier();
    for (file, text) in publisher.latest_notes()? {
        let checkpoint = checkpoints::open_note(&text, &verifier).map_err(|source| {
            OpenError::ForeignCheckpoint {
                file: file.clone(),
                source,
            }
        })?;
        let Some(leaves) = usize::try_from(checkpoint.size)
            .ok()
            .and_then(|n| log.leaves().get(..n))
        else {
            return Err(OpenError::Behind {
                entries: log.size(),
                published: checkpoint.size,
            });
        };
        if lastmile_audit_log::root_from_leaves(leaves) != checkpoint.root {
            return Err(OpenError::Rewritten {
                size: checkpoint.size,
                file,
            });
        }
    }
    Ok(())
}

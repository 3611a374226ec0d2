//! Checking a log against its signed checkpoints.
//!
//! The verifier recomputes the Merkle tree from the segments and compares its root at
//! every checkpoint's size with the signed root; checks each signature against the
//! log's verifier key (pinned by the caller, never read from the log's own directory
//! when it matters); checks that no two checkpoints of one size disagree (a fork) and
//! that checkpoints move forward in time as they grow; and that every entry's `seq` is
//! its position. It names the first entry that fails.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use lastmile_audit_log::{Checkpoint, CompactTree, Hash, NoteVerifier, leaf_hash};

use crate::{
    checkpoints::{open_note, read_notes},
    log::read_entries,
    segment::{SegmentError, Tail},
};

/// The part of an envelope the verifier reads; serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct Position {
    seq: u64,
}

/// One thing wrong with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A record's bytes do not match its checksum, or the segments cannot be read.
    Damaged { index: Option<u64>, detail: String },
    /// An entry is not a log envelope.
    BadEnvelope { index: u64, detail: String },
    /// An entry claims another position: entries were dropped, inserted or reordered.
    OutOfOrder { index: u64, seq: u64 },
    /// A checkpoint does not open with the verifier key.
    BadSignature { file: PathBuf, detail: String },
    /// A checkpoint covers more entries than the log holds.
    Truncated {
        file: PathBuf,
        checkpoint_size: u64,
        entries: u64,
    },
    /// The log's first `size` entries do not hash to the signed root: something among
    /// entries `since..size` changed.
    RootMismatch {
        file: PathBuf,
        size: u64,
        since: u64,
    },
    /// Two signed checkpoints of one size with different roots.
    Fork {
        size: u64,
        files: (PathBuf, PathBuf),
    },
    /// A larger checkpoint signed at an earlier time than a smaller one.
    Backwards { file: PathBuf, earlier: PathBuf },
    /// No checkpoint opened with the verifier key: nothing vouches for the log.
    NoValidCheckpoint,
}

impl Problem {
    /// The one entry this problem names exactly, if it does.
    pub fn exact_entry(&self) -> Option<u64> {
        match self {
            Problem::Damaged { index, .. } => *index,
            Problem::BadEnvelope { index, .. } | Problem::OutOfOrder { index, .. } => Some(*index),
            Problem::Truncated { entries, .. } => Some(*entries),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Damaged {
                index: Some(i),
                detail,
            } => write!(f, "entry {i} is damaged: {detail}"),
            Problem::Damaged {
                index: None,
                detail,
            } => write!(f, "the segments cannot be read: {detail}"),
            Problem::BadEnvelope { index, detail } => {
                write!(f, "entry {index} is not a log envelope: {detail}")
            }
            Problem::OutOfOrder { index, seq } => write!(
                f,
                "entry {index} says it is entry {seq}: entries were dropped, inserted or reordered here"
            ),
            Problem::BadSignature { file, detail } => {
                write!(
                    f,
                    "checkpoint {} is not signed by the log's key: {detail}",
                    file.display()
                )
            }
            Problem::Truncated {
                file,
                checkpoint_size,
                entries,
            } => write!(
                f,
                "the log holds {entries} entries but checkpoint {} vouches for {checkpoint_size}: \
                 entries from {entries} on were removed",
                file.display()
            ),
            Problem::RootMismatch { file, size, since } => write!(
                f,
                "the first {size} entries do not match checkpoint {}: an entry in {since}..{size} was changed",
                file.display()
            ),
            Problem::Fork { size, files } => write!(
                f,
                "FORK: {} and {} are both signed for size {size} with different roots",
                files.0.display(),
                files.1.display()
            ),
            Problem::Backwards { file, earlier } => write!(
                f,
                "checkpoint {} is larger than {} but was signed earlier: checkpoints went backwards",
                file.display(),
                earlier.display()
            ),
            Problem::NoValidCheckpoint => write!(f, "no checkpoint is signed by the log's key"),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    /// The newest segment ends in a write that never completed (never acknowledged).
    pub torn_tail: bool,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first entry that fails: the lowest entry a problem names exactly, unless a
    /// signed root already fails over a range that ends before it, in which case the start
    /// of that range (the root says only that something in it changed).
    pub fn first_failing_entry(&self) -> Option<u64> {
        let exact = self.problems.iter().filter_map(Problem::exact_entry).min();
        let ranges = self.problems.iter().filter_map(|p| match p {
            Problem::RootMismatch { size, since, .. } => match exact {
                Some(e) if e >= *since && e < *size => Some(e),
                _ => Some(*since),
            },
            _ => None,
        });
        exact.into_iter().chain(ranges).min()
    }
}

/// Verifies the log in `data_dir` against the checkpoints in `note_dirs` (the log's own
/// `checkpoints/` and any witness copies) and, if given, a `pinned` checkpoint note the
/// caller trusted before.
pub fn verify(
    data_dir: &Path,
    note_dirs: &[PathBuf],
    verifier: &NoteVerifier,
    pinned: Option<(PathBuf, String)>,
) -> Report {
    let mut problems = Vec::new();

    // The checkpoints first: which sizes need a root.
    let mut notes = Vec::new();
    for dir in note_dirs {
        match read_notes(dir) {
            Ok(n) => notes.extend(n),
            Err(e) => problems.push(Problem::BadSignature {
                file: dir.clone(),
                detail: e.to_string(),
            }),
        }
    }
    notes.extend(pinned);
    let mut checkpoints: Vec<(PathBuf, Checkpoint)> = Vec::new();
    for (file, text) in notes {
        match open_note(&text, verifier) {
            Ok(c) => checkpoints.push((file, c)),
            Err(e) => problems.push(Problem::BadSignature {
                file,
                detail: e.to_string(),
            }),
        }
    }
    if checkpoints.is_empty() {
        problems.push(Problem::NoValidCheckpoint);
    }
    checkpoints.sort_by_key(|(f, c)| (c.size, c.time, f.clone()));

    let mut by_size: BTreeMap<u64, (PathBuf, Hash)> = BTreeMap::new();
    for (file, c) in &checkpoints {
        match by_size.get(&c.size) {
            Some((other, root)) if *root != c.root => problems.push(Problem::Fork {
                size: c.size,
                files: (other.clone(), file.clone()),
            }),
            Some(_) => {}
            None => {
                by_size.insert(c.size, (file.clone(), c.root));
            }
        }
    }
    for pair in checkpoints.windows(2) {
        if let [(earlier, a), (file, b)] = pair
            && b.size > a.size
            && b.time < a.time
        {
            problems.push(Problem::Backwards {
                file: file.clone(),
                earlier: earlier.clone(),
            });
        }
    }

    // The entries: recompute the tree, noting the root at each checkpoint size.
    let (entries, torn_tail, roots) = match read_entries(data_dir) {
        Ok(read) => {
            let mut tree = CompactTree::new();
            let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
            if by_size.contains_key(&0) {
                roots.insert(0, tree.root());
            }
            let mut first_disorder = None;
            for (_, record) in read.records() {
                match serde_json::from_slice::<Position>(&record.payload) {
                    Ok(e) if e.seq != record.index && first_disorder.is_none() => {
                        first_disorder = Some(Problem::OutOfOrder {
                            index: record.index,
                            seq: e.seq,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(Problem::BadEnvelope {
                        index: record.index,
                        detail: e.to_string(),
                    }),
                }
                tree.push(leaf_hash(&record.payload));
                if by_size.contains_key(&tree.size()) {
                    roots.insert(tree.size(), tree.root());
                }
            }
            problems.extend(first_disorder);
            (read.count(), matches!(read.tail, Tail::Torn { .. }), roots)
        }
        Err(e) => {
            let index = match &e {
                SegmentError::Corrupt { index, .. } => Some(*index),
                _ => None,
            };
            problems.push(Problem::Damaged {
                index,
                detail: e.to_string(),
            });
            return Report {
                entries: 0,
                checkpoints: checkpoints.len(),
                torn_tail: false,
                problems,
            };
        }
    };

    let mut last_good = 0;
    for (size, (file, root)) in &by_size {
        match roots.get(size) {
            None => problems.push(Problem::Truncated {
                file: file.clone(),
                checkpoint_size: *size,
                entries,
            }),
            Some(r) if r != root => {
                problems.push(Problem::RootMismatch {
                    file: file.clone(),
                    size: *size,
                    since: last_good,
                });
            }
            Some(_) => last_good = *size,
        }
    }
    Report {
        entries,
        checkpoints: checkpoints.len(),
        torn_tail,
        problems,
    }
}

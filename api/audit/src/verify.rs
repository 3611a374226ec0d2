//! Checking a log against its signed checkpoints.
//!
//! The verifier recomputes the Merkle tree from the segments and compares its root at
//! every checkpoint's size with the signed root; checks each signature against the
//! log's verifier key (pinned by the caller, never read from the log's own directory
//! when it matters); checks that no two checkpoints of one size disagree (a fork) and
//! that checkpoints move forward in time as they grow; and that every entry's `seq` is
//! its position. It names the first entry that fails.
//!
//! The log's own checkpoints prove little alone: its signing key lives on its host, so
//! whoever controls the host can rewrite the log and sign it again. What the caller holds
//! from elsewhere, a witness's copies or a checkpoint kept before ([`Anchors`]), is what
//! vouches for the log; [`Coverage`] says how far it does.
//!
//! An object-lock archive ([`crate::archive`], read beforehand into an [`ArchiveCopy`])
//! is such a witness, and more: a checkpoint the log's host holds (in the log's
//! directory or a witness directory) that the archive lacks, or one the archive holds
//! that the host lost, is reported; so is a local segment whose bytes differ from its
//! archived copy, an archived segment the log no longer has, and a key in the bucket that
//! was overwritten or deleted after its first version (which is the one read).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use lastmile_audit_log::{Checkpoint, CompactTree, Hash, NoteVerifier, leaf_hash};
use lastmile_audit_sink::error_chain;
use sha2::{Digest as _, Sha256};

use crate::{
    archive::ArchiveCopy,
    checkpoints::{open_note, read_notes},
    log::{read_entries, segments_dir},
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
    /// A witness directory cannot be read (not mounted?): it vouches for nothing.
    WitnessUnreadable { dir: PathBuf, detail: String },
    /// Anchors were given, but none of their checkpoints opened with the verifier key.
    Unanchored,
    /// The archive holds no checkpoint at all (another bucket or prefix than the log's?).
    ArchiveEmpty { location: String },
    /// A checkpoint the log's host holds is not in the archive.
    NotArchived { file: PathBuf, size: u64 },
    /// The archive holds a checkpoint that `dir` (the log's checkpoints or a witness)
    /// lost.
    CheckpointLost {
        size: u64,
        archived: PathBuf,
        dir: PathBuf,
    },
    /// A local segment's bytes differ from its archived copy.
    SegmentDiffers { segment: PathBuf, archived: String },
    /// The archive holds a segment the log no longer has.
    SegmentLost { segment: PathBuf, archived: String },
    /// An archived segment does not match the checksum archived beside it.
    ArchivedSegmentDamaged { archived: String },
    /// A key in the archive has versions or delete markers after its first version.
    ArchiveRewritten {
        url: String,
        versions: usize,
        delete_markers: usize,
    },
    /// A local segment cannot be read to compare it with its archived copy.
    SegmentUnreadable { segment: PathBuf, detail: String },
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
            Problem::WitnessUnreadable { dir, detail } => write!(
                f,
                "the witness {} cannot be read ({detail}): is it mounted, and is the path right? \
                 A witness that cannot be read vouches for nothing",
                dir.display()
            ),
            Problem::Unanchored => write!(
                f,
                "no checkpoint from the witness or the pin is signed by the log's key: nothing \
                 from outside the log's host vouches for it"
            ),
            Problem::ArchiveEmpty { location } => write!(
                f,
                "the archive {location} holds no checkpoint: is the bucket or prefix right? \
                 An empty archive vouches for nothing"
            ),
            Problem::NotArchived { file, size } => write!(
                f,
                "checkpoint {} (size {size}) is not in the archive, although checkpoints go \
                 there first: it was made or changed on the log's host afterwards",
                file.display()
            ),
            Problem::CheckpointLost {
                size,
                archived,
                dir,
            } => write!(
                f,
                "the archive holds checkpoint {} (size {size}) but {} does not: it was \
                 removed from the log's host",
                archived.display(),
                dir.display()
            ),
            Problem::SegmentDiffers { segment, archived } => write!(
                f,
                "segment {} differs from its archived copy {archived}: it was changed after \
                 it was archived (the archived copy is the original)",
                segment.display()
            ),
            Problem::SegmentLost { segment, archived } => write!(
                f,
                "the archive holds {archived} but the log has no segment {}: it was removed \
                 (the archived copy is the original)",
                segment.display()
            ),
            Problem::ArchivedSegmentDamaged { archived } => write!(
                f,
                "the archived segment {archived} does not match the SHA-256 archived beside it"
            ),
            Problem::ArchiveRewritten {
                url,
                versions,
                delete_markers,
            } => write!(
                f,
                "{url} was overwritten or deleted after it was archived ({versions} versions, \
                 {delete_markers} delete markers): its first version was checked; find out \
                 who holds the archive's credentials"
            ),
            Problem::SegmentUnreadable { segment, detail } => write!(
                f,
                "segment {} cannot be read to compare it with the archive: {detail}",
                segment.display()
            ),
        }
    }
}

/// Checkpoints the caller holds from outside the log's host.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// Witness directories: the write-once copies of the log's checkpoints.
    pub witnesses: Vec<PathBuf>,
    /// Checkpoint notes kept before, as (file, text).
    pub pinned: Vec<(PathBuf, String)>,
    /// What the object-lock archive holds ([`crate::archive::Archive::read`]).
    pub archive: Option<ArchiveCopy>,
}

impl Anchors {
    pub fn is_empty(&self) -> bool {
        self.witnesses.is_empty() && self.pinned.is_empty() && self.archive.is_none()
    }
}

/// Where a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The log's own `checkpoints/`: signed with a key its host holds.
    Log,
    Witness,
    Pinned,
    /// The object-lock archive.
    Archive,
}

/// How far the log's entries are vouched for, counted from entry 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coverage {
    /// The largest checkpoint from a witness or pin that the log matches: (size, file,
    /// source).
    pub anchored: Option<(u64, PathBuf, Source)>,
    /// The size of the largest checkpoint of any source that the log matches.
    pub signed: u64,
}

impl Coverage {
    /// What was and was not checked, in sentences, for a log of `entries` entries.
    pub fn describe(&self, entries: u64) -> Vec<String> {
        let mut out = Vec::new();
        let anchored = match &self.anchored {
            Some((size, file, source)) => {
                let holder = match source {
                    Source::Pinned => "you pinned",
                    Source::Archive => "the archive holds",
                    Source::Witness | Source::Log => "the witness holds",
                };
                if *size > 0 {
                    out.push(format!(
                        "{} covered by checkpoint {}, which {holder}",
                        span(0, *size),
                        file.display()
                    ));
                }
                *size
            }
            None => {
                out.push(
                    "no checkpoint from a witness or pin covers any entry: nothing checked \
                     here is vouched for from outside the log's host"
                        .to_owned(),
                );
                0
            }
        };
        if self.signed > anchored {
            out.push(format!(
                "{} covered only by checkpoints in the log's own directory, which whoever \
                 controls its host could have signed again",
                span(anchored, self.signed)
            ));
        }
        let last = anchored.max(self.signed);
        if entries > last {
            out.push(format!(
                "{} after the last checkpoint: not signed yet, not vouched for",
                span(last, entries)
            ));
        }
        out
    }
}

/// Entries `start..end`, in words.
fn span(start: u64, end: u64) -> String {
    match end - start {
        1 => format!("1 entry ({start}) is"),
        n => format!("{n} entries ({start}-{}) are", end - 1),
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
    /// How far the entries are vouched for (meaningful when [`Report::ok`]).
    pub coverage: Coverage,
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

/// Verifies the log in `data_dir` against its own checkpoints and the `anchors`, each
/// signature against `verifier`.
///
/// With no anchors, [`Report::ok`] says only that the log agrees with checkpoints its own
/// host holds, which whoever controls the host can rewrite; [`Report::coverage`] says how
/// far anchors vouch for it. A witness that cannot be read, or anchors none of whose
/// checkpoints opens, is a problem.
pub fn verify(data_dir: &Path, verifier: &NoteVerifier, anchors: &Anchors) -> Report {
    let mut problems = Vec::new();

    // The checkpoints first: which sizes need a root.
    let mut notes = Vec::new();
    let own = crate::checkpoints::checkpoints_dir(data_dir);
    match read_notes(&own) {
        Ok(n) => notes.extend(n.into_iter().map(|(f, t)| (f, t, Source::Log))),
        Err(e) => problems.push(Problem::BadSignature {
            file: own.clone(),
            detail: error_chain(&e),
        }),
    }
    for dir in &anchors.witnesses {
        // A witness that is not there is not an empty witness.
        match std::fs::metadata(dir)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if m.is_dir() {
                    read_notes(dir).map_err(|e| error_chain(&e))
                } else {
                    Err("not a directory".to_owned())
                }
            }) {
            Ok(n) => notes.extend(n.into_iter().map(|(f, t)| (f, t, Source::Witness))),
            Err(detail) => problems.push(Problem::WitnessUnreadable {
                dir: dir.clone(),
                detail,
            }),
        }
    }
    if let Some(archive) = &anchors.archive {
        notes.extend(
            archive
                .checkpoints
                .iter()
                .map(|(n, t)| (archive.checkpoint_file(n), t.clone(), Source::Archive)),
        );
    }
    notes.extend(
        anchors
            .pinned
            .iter()
            .map(|(f, t)| (f.clone(), t.clone(), Source::Pinned)),
    );
    let mut checkpoints: Vec<(PathBuf, Checkpoint, Source)> = Vec::new();
    for (file, text, source) in notes {
        match open_note(&text, verifier) {
            Ok(c) => checkpoints.push((file, c, source)),
            Err(e) => problems.push(Problem::BadSignature {
                file,
                detail: error_chain(&e),
            }),
        }
    }
    if checkpoints.is_empty() {
        problems.push(Problem::NoValidCheckpoint);
    } else if !anchors.is_empty() && checkpoints.iter().all(|(_, _, s)| *s == Source::Log) {
        problems.push(Problem::Unanchored);
    }
    checkpoints.sort_by_key(|(f, c, _)| (c.size, c.time, f.clone()));
    if let Some(archive) = &anchors.archive {
        problems.extend(archive_gaps(
            archive,
            &checkpoints,
            &own,
            &anchors.witnesses,
        ));
        problems.extend(segments_against(archive, &segments_dir(data_dir)));
        problems.extend(archive.rewritten.iter().map(|r| Problem::ArchiveRewritten {
            url: r.url.clone(),
            versions: r.versions,
            delete_markers: r.delete_markers,
        }));
    }

    let mut by_size: BTreeMap<u64, (PathBuf, Hash)> = BTreeMap::new();
    for (file, c, _) in &checkpoints {
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
        if let [(earlier, a, _), (file, b, _)] = pair
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
                detail: error_chain(&e),
            });
            return Report {
                entries: 0,
                checkpoints: checkpoints.len(),
                torn_tail: false,
                problems,
                coverage: Coverage::default(),
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
    let matches = |c: &Checkpoint| roots.get(&c.size) == Some(&c.root);
    let coverage = Coverage {
        anchored: checkpoints
            .iter()
            .filter(|(_, c, s)| *s != Source::Log && matches(c))
            .max_by_key(|(_, c, _)| c.size)
            .map(|(f, c, s)| (c.size, f.clone(), *s)),
        signed: checkpoints
            .iter()
            .filter(|(_, c, _)| matches(c))
            .map(|(_, c, _)| c.size)
            .max()
            .unwrap_or(0),
    };
    Report {
        entries,
        checkpoints: checkpoints.len(),
        torn_tail,
        problems,
        coverage,
    }
}

/// The checkpoints the log's host holds (in `own`, the log's directory, and in each
/// witness directory) that the archive lacks, and those the archive holds that they
/// lost. Checkpoints older than the archive's first predate it; a witness directory is
/// compared from its own first checkpoint on (it may have been added later), the log's
/// directory, which keeps every checkpoint, from the start.
fn archive_gaps(
    archive: &ArchiveCopy,
    checkpoints: &[(PathBuf, Checkpoint, Source)],
    own: &Path,
    witnesses: &[PathBuf],
) -> Vec<Problem> {
    let held = |source: Source, dir: Option<&Path>| -> BTreeMap<u64, PathBuf> {
        checkpoints
            .iter()
            .filter(|(f, _, s)| *s == source && dir.is_none_or(|d| f.parent() == Some(d)))
            .map(|(f, c, _)| (c.size, f.clone()))
            .collect()
    };
    let archived = held(Source::Archive, None);
    let Some(&first_archived) = archived.keys().next() else {
        return vec![Problem::ArchiveEmpty {
            location: archive.location.clone(),
        }];
    };
    let mut problems = Vec::new();
    let sources =
        std::iter::once((own, true)).chain(witnesses.iter().map(|w| (w.as_path(), false)));
    for (dir, keeps_all) in sources {
        let local = held(
            if keeps_all {
                Source::Log
            } else {
                Source::Witness
            },
            Some(dir),
        );
        for (size, file) in local.range(first_archived..) {
            if !archived.contains_key(size) {
                problems.push(Problem::NotArchived {
                    file: file.clone(),
                    size: *size,
                });
            }
        }
        let start = if keeps_all {
            0
        } else {
            local.keys().next().copied().unwrap_or(0)
        };
        for (size, file) in archived.range(start..) {
            if !local.contains_key(size) {
                problems.push(Problem::CheckpointLost {
                    size: *size,
                    archived: file.clone(),
                    dir: dir.to_owned(),
                });
            }
        }
    }
    problems
}

/// Each archived segment against the local segment of its name.
fn segments_against(archive: &ArchiveCopy, dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    for s in &archive.segments {
        let archived = archive.segment_url(&s.name);
        // No checksum yet is an upload cut short (retried); another one is damage.
        if s.recorded.is_some() && !s.matches_recorded() {
            problems.push(Problem::ArchivedSegmentDamaged {
                archived: archived.clone(),
            });
        }
        let segment = dir.join(&s.name);
        match std::fs::read(&segment) {
            Ok(bytes) if <[u8; 32]>::from(Sha256::digest(&bytes)) == s.sha256 => {}
            Ok(_) => problems.push(Problem::SegmentDiffers { segment, archived }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(Problem::SegmentLost { segment, archived });
            }
            Err(e) => problems.push(Problem::SegmentUnreadable {
                segment,
                detail: e.to_string(),
            }),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_says_what_each_part_of_the_log_rests_on() {
        let c = Coverage {
            anchored: Some((9000, PathBuf::from("w/9000.note"), Source::Witness)),
            signed: 9005,
        };
        assert_eq!(
            c.describe(9012),
            [
                "9000 entries (0-8999) are covered by checkpoint w/9000.note, which the witness holds",
                "5 entries (9000-9004) are covered only by checkpoints in the log's own \
                 directory, which whoever controls its host could have signed again",
                "7 entries (9005-9011) are after the last checkpoint: not signed yet, not vouched for",
            ]
        );
        let pinned = Coverage {
            anchored: Some((3, PathBuf::from("kept.note"), Source::Pinned)),
            signed: 3,
        };
        assert_eq!(
            pinned.describe(4),
            [
                "3 entries (0-2) are covered by checkpoint kept.note, which you pinned",
                "1 entry (3) is after the last checkpoint: not signed yet, not vouched for",
            ]
        );
        assert!(Coverage::default().describe(2)[0].contains("nothing checked here is vouched"));
    }
}

//! The log: segments on disk, the Merkle tree over them in memory.

use std::{
    fs,
    ops::Range,
    path::{Path, PathBuf},
    time::SystemTime,
};

use lastmile_audit_log::{CompactTree, Hash, leaf_hash};
use serde_json::Value;

use crate::{
    envelope::Envelope,
    segment::{self, SegmentError, SegmentWriter, Tail},
};

/// Default size at which a new segment starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(
        "an earlier write failed ({0}); nothing since was acknowledged. Restart lastmile-audit \
         once the cause (disk full?) is fixed: it recovers from what is on disk"
    )]
    Failed(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What opening the log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub entries: u64,
    /// Bytes of a write that never completed, cut from the newest segment.
    pub torn_bytes_cut: u64,
}

/// An open log. Appends are durable when [`Log::append`] returns.
#[derive(Debug)]
pub struct Log {
    writer: SegmentWriter,
    leaves: Vec<Hash>,
    tree: CompactTree,
    failed: Option<String>,
}

/// Every entry of a log directory, read without modifying anything.
#[derive(Debug)]
pub struct Entries {
    /// (segment path, its records) in order.
    pub segments: Vec<(PathBuf, Vec<segment::Record>)>,
    /// How the newest segment ends.
    pub tail: Tail,
}

impl Entries {
    pub fn count(&self) -> u64 {
        self.segments.iter().map(|(_, r)| r.len() as u64).sum()
    }

    pub fn records(&self) -> impl Iterator<Item = (&Path, &segment::Record)> {
        self.segments
            .iter()
            .flat_map(|(p, rs)| rs.iter().map(move |r| (p.as_path(), r)))
    }
}

pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

/// Reads every segment of `data_dir` in order. Only the newest segment may end torn; a
/// damaged record anywhere else is an error naming it.
pub fn read_entries(data_dir: &Path) -> Result<Entries, SegmentError> {
    let dir = segments_dir(data_dir);
    let list = segment::list_segments(&dir)?;
    let mut segments = Vec::new();
    let mut expected = 0u64;
    let mut tail = Tail::Clean;
    let last = list.len().saturating_sub(1);
    for (i, (first, path)) in list.into_iter().enumerate() {
        if first != expected {
            return Err(SegmentError::Gap {
                path,
                expected,
                found: first,
            });
        }
        let (records, t) = segment::read_segment(&path, first)?;
        if let Tail::Torn { valid_len } = t
            && i != last
        {
            return Err(SegmentError::Corrupt {
                path,
                index: first + records.len() as u64,
                offset: valid_len,
                what: "damaged record at the end of a segment that is not the newest",
            });
        }
        tail = t;
        expected = first + records.len() as u64;
        segments.push((path, records));
    }
    Ok(Entries { segments, tail })
}

impl Log {
    /// Opens (creating if needed) the log in `data_dir`, cutting a torn tail left by a
    /// crash. Everything acknowledged before the crash is intact: acknowledgements follow
    /// fsync, so only unacknowledged bytes can be torn.
    pub fn open(data_dir: &Path, max_segment_bytes: u64) -> Result<(Self, Recovered), LogError> {
        let dir = segments_dir(data_dir);
        fs::create_dir_all(&dir).map_err(|source| LogError::Io {
            path: dir.clone(),
            source,
        })?;
        let entries = read_entries(data_dir)?;
        let mut torn_bytes_cut = 0;
        if let (Tail::Torn { valid_len }, Some((path, _))) = (entries.tail, entries.segments.last())
        {
            torn_bytes_cut = segment::file_len(path)? - valid_len;
            segment::truncate_torn(path, valid_len)?;
        }
        let mut tree = CompactTree::new();
        let mut leaves = Vec::with_capacity(entries.count() as usize);
        for (_, record) in entries.records() {
            let h = leaf_hash(&record.payload);
            tree.push(h);
            leaves.push(h);
        }
        let newest = match entries.segments.last() {
            Some((path, records)) => {
                let first = records
                    .first()
                    .map(|r| r.index)
                    .unwrap_or(leaves.len() as u64);
                Some((first, segment::file_len(path)?))
            }
            None => None,
        };
        let writer = SegmentWriter::open(&dir, newest, leaves.len() as u64, max_segment_bytes)?;
        let recovered = Recovered {
            entries: leaves.len() as u64,
            torn_bytes_cut,
        };
        Ok((
            Self {
                writer,
                leaves,
                tree,
                failed: None,
            },
            recovered,
        ))
    }

    /// Appends `events` from `writer` and makes them durable; returns their positions.
    /// After a failed write the log refuses further appends until reopened (what reached
    /// the disk is then recovered), so nothing is acknowledged that might be lost.
    pub fn append(
        &mut self,
        events: Vec<Value>,
        writer: &str,
        now: SystemTime,
    ) -> Result<Range<u64>, LogError> {
        let mut ranges = self.append_batches(vec![(writer.to_owned(), events)], now)?;
        Ok(ranges.pop().unwrap_or(self.size()..self.size()))
    }

    /// Appends several writers' events with one fsync for all (group commit); returns the
    /// positions of each batch, in order.
    pub fn append_batches(
        &mut self,
        batches: Vec<(String, Vec<Value>)>,
        now: SystemTime,
    ) -> Result<Vec<Range<u64>>, LogError> {
        if let Some(why) = &self.failed {
            return Err(LogError::Failed(why.clone()));
        }
        let received = humantime::format_rfc3339_micros(now).to_string();
        let mut hashes = Vec::new();
        let mut ranges = Vec::with_capacity(batches.len());
        let result = (|| {
            for (writer, events) in batches {
                let start = self.writer.next_index();
                for event in events {
                    let seq = self.writer.next_index();
                    let envelope = Envelope {
                        event,
                        received: received.clone(),
                        seq,
                        writer: writer.clone(),
                    };
                    let bytes = envelope.to_canonical();
                    hashes.push(leaf_hash(&bytes));
                    self.writer.append(&bytes)?;
                }
                ranges.push(start..self.writer.next_index());
            }
            self.writer.sync()
        })();
        if let Err(e) = result {
            self.failed = Some(e.to_string());
            return Err(e.into());
        }
        for h in hashes {
            self.tree.push(h);
            self.leaves.push(h);
        }
        Ok(ranges)
    }

    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// Every leaf hash, for proofs.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }
}

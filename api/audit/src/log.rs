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
    segment::{self, MAX_PAYLOAD, SegmentError, SegmentWriter, Tail},
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
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error("{}", path.display())]
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

/// A batch the log refused without writing any of it: the log itself is unharmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event {event} of the batch is {bytes} bytes as a log entry, over the {MAX_PAYLOAD}-byte \
     limit; nothing of the batch was written: make that event smaller (or leave it out) and \
     send the batch again"
)]
pub struct TooLarge {
    /// Its position in the batch, from 0.
    pub event: usize,
    /// Its size as an envelope.
    pub bytes: usize,
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
    /// the disk is then recovered), so nothing is acknowledged that might be lost. A batch
    /// holding an event over the size limit is refused whole, and the log goes on.
    pub fn append(
        &mut self,
        events: Vec<Value>,
        writer: &str,
        now: SystemTime,
    ) -> Result<Range<u64>, LogError> {
        let mut results = self.append_batches(vec![(writer.to_owned(), events)], now)?;
        Ok(results.pop().unwrap_or(Ok(self.size()..self.size()))?)
    }

    /// Appends several writers' events with one fsync for all (group commit); returns,
    /// for each batch in order, its positions or why it alone was refused.
    pub fn append_batches(
        &mut self,
        batches: Vec<(String, Vec<Value>)>,
        now: SystemTime,
    ) -> Result<Vec<Result<Range<u64>, TooLarge>>, LogError> {
        if let Some(why) = &self.failed {
            return Err(LogError::Failed(why.clone()));
        }
        let received = humantime::format_rfc3339_micros(now).to_string();
        let mut hashes = Vec::new();
        let mut results = Vec::with_capacity(batches.len());
        let result = (|| {
            for (writer, events) in batches {
                // Every envelope first: a refused batch must leave nothing queued.
                let start = self.writer.next_index();
                let envelopes: Vec<Vec<u8>> = events
                    .into_iter()
                    .zip(start..)
                    .map(|(event, seq)| {
                        Envelope {
                            event,
                            received: received.clone(),
                            seq,
                            writer: writer.clone(),
                        }
                        .to_canonical()
                    })
                    .collect();
                if let Some((event, bytes)) = envelopes
                    .iter()
                    .map(Vec::len)
                    .enumerate()
                    .find(|(_, len)| *len > MAX_PAYLOAD)
                {
                    results.push(Err(TooLarge { event, bytes }));
                    continue;
                }
                for bytes in envelopes {
                    hashes.push(leaf_hash(&bytes));
                    self.writer.append(&bytes)?;
                }
                results.push(Ok(start..self.writer.next_index()));
            }
            self.writer.sync()
        })();
        if let Err(e) = result {
            self.failed = Some(lastmile_audit_sink::error_chain(&e));
            return Err(e.into());
        }
        for h in hashes {
            self.tree.push(h);
            self.leaves.push(h);
        }
        Ok(results)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_event_is_refused_alone_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 1 << 20).unwrap();
        let now = SystemTime::now();
        let big = serde_json::json!({ "kind": "query", "text": "x".repeat(MAX_PAYLOAD) });
        let small = |n: u64| serde_json::json!({ "kind": "query", "n": n });
        let results = log
            .append_batches(
                vec![
                    ("gw-1".into(), vec![small(0)]),
                    ("gw-2".into(), vec![small(1), big]),
                    ("gw-3".into(), vec![small(2)]),
                ],
                now,
            )
            .unwrap();
        assert_eq!(results[0], Ok(0..1));
        let refused = results[1].clone().unwrap_err();
        assert_eq!(refused.event, 1);
        assert!(
            refused.to_string().contains("send the batch again"),
            "{refused}"
        );
        assert_eq!(results[2], Ok(1..2), "the refused batch took no positions");
        assert_eq!(log.append(vec![small(3)], "gw-1", now).unwrap(), 2..3);
        drop(log);
        let (log, recovered) = Log::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.entries, recovered.torn_bytes_cut), (3, 0));
        assert_eq!(log.size(), 3);
    }
}

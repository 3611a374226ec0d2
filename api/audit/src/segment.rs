//! Append-only segment files: the durable form of the log.
//!
//! A segment is a sequence of records `[len: u32 BE][crc32c(payload): u32 BE][payload]`.
//! Segments are named by the index of their first entry (`00000000000000000000.seg`) and
//! a new one starts when the current one passes its size limit. Nothing is ever written
//! but at the end of the newest segment.
//!
//! The checksum is not the integrity guarantee (anyone who can edit a file can recompute
//! it; the signed Merkle checkpoints are the guarantee). It tells a torn write from a
//! complete one, and points at the exact entry a careless edit broke.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// Largest payload accepted (one event). Larger is a caller error, not a storage one.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: entry {index} at byte {offset} is damaged ({what}) and entries follow it; \
         this is not a torn write, and the log will not append past it: verify the log and investigate",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        index: u64,
        offset: u64,
        what: &'static str,
    },
    #[error("event of {0} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("{}: segment name is not a first-entry index", .0.display())]
    BadName(PathBuf),
    #[error("segments are not contiguous: {} starts at entry {found}, expected {expected}", path.display())]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub payload: Vec<u8>,
}

/// What reading a segment found at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after a whole record.
    Clean,
    /// The file ends inside a record (or with a damaged last record): a write that never
    /// completed. `valid_len` is where the last whole record ends.
    Torn { valid_len: u64 },
}

/// Reads every record of one segment whose first entry is `first_index`.
///
/// A damaged record followed by more bytes is corruption (an error); a damaged or short
/// record at the very end is a torn tail (reported, not an error).
pub fn read_segment(path: &Path, first_index: u64) -> Result<(Vec<Record>, Tail), SegmentError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| BufReader::new(f).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    loop {
        if offset == bytes.len() {
            return Ok((records, Tail::Clean));
        }
        let index = first_index + records.len() as u64;
        let torn = Tail::Torn {
            valid_len: offset as u64,
        };
        let (Some(len), Some(crc)) = (be_u32(&bytes, offset), be_u32(&bytes, offset + 4)) else {
            return Ok((records, torn));
        };
        let len = len as usize;
        let end = offset + HEADER + len;
        let damaged = |what| SegmentError::Corrupt {
            path: path.to_owned(),
            index,
            offset: offset as u64,
            what,
        };
        if len > MAX_PAYLOAD {
            // A garbage length: torn if nothing plausible could follow, else corruption.
            return if end >= bytes.len() {
                Ok((records, torn))
            } else {
                Err(damaged("impossible length"))
            };
        }
        let Some(payload) = bytes.get(offset + HEADER..end) else {
            return Ok((records, torn));
        };
        if crc32c::crc32c(payload) != crc {
            return if end == bytes.len() {
                Ok((records, torn))
            } else {
                Err(damaged("checksum mismatch"))
            };
        }
        records.push(Record {
            index,
            payload: payload.to_vec(),
        });
        offset = end;
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// The segments in `dir`, by first entry index, in order.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SegmentError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("seg") {
            continue;
        }
        let first = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| SegmentError::BadName(path.clone()))?;
        out.push((first, path));
    }
    out.sort();
    Ok(out)
}

pub fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

/// Appends to the newest segment. Writes are buffered until [`SegmentWriter::sync`],
/// which makes everything written so far durable (write + fdatasync).
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next_index: u64,
    max_segment_bytes: u64,
    pending: Vec<u8>,
}

impl SegmentWriter {
    /// Opens `dir` for appending after `next_index` entries, the newest segment being
    /// `newest` (first index, valid length) or none yet.
    pub fn open(
        dir: &Path,
        newest: Option<(u64, u64)>,
        next_index: u64,
        max_segment_bytes: u64,
    ) -> Result<Self, SegmentError> {
        let (first, len) = newest.unwrap_or((next_index, 0));
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if newest.is_none() {
            sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            file,
            path,
            len,
            next_index,
            max_segment_bytes,
            pending: Vec::new(),
        })
    }

    /// Queues one record; returns its index. Not durable until [`Self::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SegmentError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(SegmentError::TooLarge(payload.len()));
        }
        let current = self.len + self.pending.len() as u64;
        if current > 0 && current >= self.max_segment_bytes {
            self.roll()?;
        }
        self.pending
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.pending
            .extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        self.pending.extend_from_slice(payload);
        let index = self.next_index;
        self.next_index += 1;
        Ok(index)
    }

    /// Writes what is queued and waits until it is on disk.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(io_err(&self.path))?;
            self.len += self.pending.len() as u64;
            self.pending.clear();
        }
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// Entries written or queued so far.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    fn roll(&mut self) -> Result<(), SegmentError> {
        self.sync()?;
        let first = self.next_index;
        let path = segment_path(&self.dir, first);
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.path = path;
        self.len = 0;
        sync_dir(&self.dir)
    }
}

/// Cuts a torn tail off the segment at `path`, durably.
pub fn truncate_torn(path: &Path, valid_len: u64) -> Result<(), SegmentError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(valid_len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Makes a new or renamed file in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The byte length of a segment file.
pub fn file_len(path: &Path) -> Result<u64, SegmentError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::End(0)).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, payloads: &[&[u8]], max: u64) -> SegmentWriter {
        let mut w = SegmentWriter::open(dir, None, 0, max).unwrap();
        for p in payloads {
            w.append(p).unwrap();
        }
        w.sync().unwrap();
        w
    }

    #[test]
    fn records_read_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[b"a", b"bb", b"ccc", b"dddd"], 20);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        let mut all = Vec::new();
        for (first, path) in segments {
            let (records, tail) = read_segment(&path, first).unwrap();
            assert_eq!(tail, Tail::Clean);
            all.extend(records);
        }
        let payloads: Vec<&[u8]> = all.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"a"[..], b"bb", b"ccc", b"dddd"]);
        assert_eq!(
            all.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn a_torn_tail_is_reported_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[b"one", b"two"], 1 << 20);
        let path = segment_path(dir.path(), 0);
        let whole = file_len(&path).unwrap();
        // Half a record more, as a crash mid-write leaves it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
        let (records, tail) = read_segment(&path, 0).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(tail, Tail::Torn { valid_len: whole });
        truncate_torn(&path, whole).unwrap();
        assert_eq!(read_segment(&path, 0).unwrap().1, Tail::Clean);
    }

    #[test]
    fn damage_in_the_middle_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[b"one", b"two", b"three"], 1 << 20);
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 3 + HEADER] ^= 1; // first byte of "two"
        fs::write(&path, bytes).unwrap();
        let err = read_segment(&path, 0).unwrap_err();
        assert!(
            matches!(err, SegmentError::Corrupt { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn oversized_events_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), None, 0, 1 << 20).unwrap();
        assert!(matches!(
            w.append(&vec![0; MAX_PAYLOAD + 1]),
            Err(SegmentError::TooLarge(_))
        ));
    }
}

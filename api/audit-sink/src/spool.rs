//! The durable spool: events the audit service has not acknowledged yet, oldest first.
//!
//! Framed like the log's segments: records `[len: u32 BE][crc32c(payload): u32 BE][payload]`,
//! each payload one event as JSON. Before anything is appended or replayed, the file is
//! checked: a tail torn by a crash, a damaged record, or a payload that is not an event is
//! moved, as raw bytes, to `<spool>.damaged` (kept for a person to look at, never deleted),
//! and the file is rewritten with the intact records; so a torn write never merges with the
//! next one, and damage costs only the damaged record. A spool of JSON lines, as earlier
//! versions wrote it (it starts with `{`), is read the same way and rewritten framed. The
//! file shrinks only as the service acknowledges events.

use std::{
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::WriteError;

const HEADER: usize = 8;
/// Largest event the spool keeps; also what tells a garbage length from a real one.
pub const MAX_SPOOLED: usize = 16 << 20;

/// What a spool file holds.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Parsed {
    /// Whole, intact events, in order.
    pub events: Vec<Value>,
    /// Bytes that are not a whole, intact event: to keep aside, never to drop.
    pub damaged: Vec<Vec<u8>>,
    /// The file must be rewritten before use: old format, damage or a torn tail.
    pub unclean: bool,
}

/// Reads a spool file's bytes; never fails, sorting what is not an event into `damaged`.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.first() == Some(&b'{') {
        return parse_lines(bytes);
    }
    let mut parsed = Parsed::default();
    let mut at = 0;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let header = (be_u32(rest, 0), be_u32(rest, 4));
        let (Some(len), Some(crc)) = header else {
            parsed.keep_aside(rest);
            break;
        };
        let end = HEADER.saturating_add(len as usize);
        let payload = (len as usize <= MAX_SPOOLED)
            .then(|| rest.get(HEADER..end))
            .flatten();
        let Some(payload) = payload else {
            // Torn at the end, or a length nothing can follow: the rest is not records.
            parsed.keep_aside(rest);
            break;
        };
        match serde_json::from_slice::<Value>(payload) {
            Ok(event) if crc32c::crc32c(payload) == crc && event.is_object() => {
                parsed.events.push(event)
            }
            _ => parsed.keep_aside(rest.get(..end).unwrap_or(rest)),
        }
        at += end;
    }
    parsed
}

/// The JSON-lines spool of earlier versions.
fn parse_lines(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed {
        unclean: true,
        ..Parsed::default()
    };
    let mut pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last newline: nothing, or a line a crash tore.
    let torn = pieces.pop().unwrap_or_default();
    for line in pieces {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(event) if event.is_object() => parsed.events.push(event),
            _ => parsed.damaged.push([line, b"\n"].concat()),
        }
    }
    if !torn.is_empty() {
        parsed.damaged.push(torn.to_vec());
    }
    parsed
}

impl Parsed {
    fn keep_aside(&mut self, bytes: &[u8]) {
        self.damaged.push(bytes.to_vec());
        self.unclean = true;
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn frame(event: &Value) -> Result<Vec<u8>, WriteError> {
    let payload = event.to_string().into_bytes();
    if payload.len() > MAX_SPOOLED {
        return Err(WriteError::TooLargeToSpool(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One spool file. Its owner serialises every use (the writer's send order lock).
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    /// The file's length when it was last known clean; `None`: check it before use.
    clean_len: Option<u64>,
}

impl Spool {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            clean_len: None,
        }
    }

    /// Where damaged bytes are kept.
    pub fn damaged_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".damaged");
        self.path.with_file_name(name)
    }

    /// The events waiting, oldest first, after moving damage and a torn tail aside.
    pub fn pending(&mut self) -> Result<Vec<Value>, WriteError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.clean_len = Some(0);
                return Ok(Vec::new());
            }
            Err(e) => return Err(io(&self.path)(e)),
        };
        let parsed = parse(&bytes);
        if parsed.unclean {
            // Aside first: if the rewrite then fails, the bytes are in both places.
            self.keep_aside(&parsed.damaged)?;
            self.rewrite(&parsed.events)?;
        } else {
            self.clean_len = Some(bytes.len() as u64);
        }
        Ok(parsed.events)
    }

    /// Appends `events` durably (one write, one sync), after a torn tail (if any) is moved
    /// aside.
    pub fn append(&mut self, events: &[Value]) -> Result<(), WriteError> {
        let mut record = Vec::new();
        for e in events {
            record.extend(frame(e)?);
        }
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&self.path)(e)),
        };
        if self.clean_len != Some(len) {
            self.pending()?;
        }
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut f = crate::files::open_append(&self.path).map_err(io(&self.path))?;
        let written = f.write_all(&record).and_then(|()| f.sync_data());
        if let Err(e) = written {
            self.clean_len = None;
            return Err(io(&self.path)(e));
        }
        if self.clean_len == Some(0) {
            sync_dir(&dir)?;
        }
        self.clean_len = self.clean_len.map(|l| l + record.len() as u64);
        Ok(())
    }

    /// Keeps only `rest` (the events not acknowledged yet); removes the file when none is.
    pub fn keep_only(&mut self, rest: &[Value]) -> Result<(), WriteError> {
        if !rest.is_empty() {
            return self.rewrite(rest);
        }
        match fs::remove_file(&self.path) {
            Ok(()) => sync_dir(&self.dir())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&self.path)(e)),
        }
        self.clean_len = Some(0);
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    fn rewrite(&mut self, events: &[Value]) -> Result<(), WriteError> {
        let mut bytes = Vec::new();
        for e in events {
            bytes.extend(frame(e)?);
        }
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        let tmp = self.path.with_file_name(name);
        let mut f = crate::files::create_replacement(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.dir())?;
        self.clean_len = Some(bytes.len() as u64);
        Ok(())
    }

    fn keep_aside(&self, damaged: &[Vec<u8>]) -> Result<(), WriteError> {
        if damaged.is_empty() {
            return Ok(());
        }
        let path = self.damaged_path();
        let mut f = crate::files::open_append(&path).map_err(io(&path))?;
        f.write_all(&damaged.concat())
            .and_then(|()| f.sync_all())
            .map_err(io(&path))
    }
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn framed(events: &[Value]) -> Vec<u8> {
        events.iter().flat_map(|e| frame(e).unwrap()).collect()
    }

    #[test]
    fn framed_events_read_back_in_order() {
        let events = [json!({"n": 1}), json!({"n": 2, "s": "é\n"})];
        let parsed = parse(&framed(&events));
        assert_eq!(parsed.events, events);
        assert!(!parsed.unclean && parsed.damaged.is_empty());
    }

    #[test]
    fn a_torn_tail_is_kept_aside_and_what_precedes_it_is_read() {
        let mut bytes = framed(&[json!({"n": 1})]);
        let whole = frame(&json!({"n": 2})).unwrap();
        bytes.extend_from_slice(&whole[..whole.len() - 3]);
        let parsed = parse(&bytes);
        assert_eq!(parsed.events, [json!({"n": 1})]);
        assert_eq!(parsed.damaged, [whole[..whole.len() - 3].to_vec()]);
        assert!(parsed.unclean);
    }

    #[test]
    fn a_damaged_record_costs_only_itself() {
        let mut bytes = framed(&[json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
        let second = frame(&json!({"n": 1})).unwrap().len();
        bytes[second + HEADER + 2] = 0xff; // inside {"n":2}: not UTF-8, checksum wrong
        let parsed = parse(&bytes);
        assert_eq!(parsed.events, [json!({"n": 1}), json!({"n": 3})]);
        assert_eq!(parsed.damaged.len(), 1);
    }

    #[test]
    fn an_old_json_lines_spool_is_read_line_by_line() {
        let bytes = b"{\"n\":1}\n{\"n\":\xff}\n{\"n\":3}\n{\"n\":4".to_vec();
        let parsed = parse(&bytes);
        assert_eq!(parsed.events, [json!({"n": 1}), json!({"n": 3})]);
        assert_eq!(
            parsed.damaged,
            [b"{\"n\":\xff}\n".to_vec(), b"{\"n\":4".to_vec()]
        );
        assert!(parsed.unclean, "rewritten framed before use");
    }

    #[test]
    fn an_append_after_a_crash_does_not_merge_with_the_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut spool = Spool::new(&path);
        spool.append(&[json!({"n": 1})]).unwrap();
        // The crash: half a record, then a new process.
        let whole = frame(&json!({"n": 2})).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&whole[..5]).unwrap();
        let mut spool = Spool::new(&path);
        spool.append(&[json!({"n": 3}), json!({"n": 4})]).unwrap();
        assert_eq!(
            spool.pending().unwrap(),
            [json!({"n": 1}), json!({"n": 3}), json!({"n": 4})]
        );
        assert_eq!(fs::read(spool.damaged_path()).unwrap(), whole[..5]);
        spool.keep_only(&[json!({"n": 3})]).unwrap();
        assert_eq!(spool.pending().unwrap(), [json!({"n": 3})]);
        spool.keep_only(&[]).unwrap();
        assert!(!path.exists());
        assert!(spool.damaged_path().exists(), "damage is never deleted");
    }
}

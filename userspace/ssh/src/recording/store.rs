//! Where recordings are kept: one `.cast` file per channel. The audit log references a
//! recording by its SHA-256 and size, so a file edited afterwards fails verification.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecordingError {
    #[error(
        "recording id {0:?} is not a file name (letters, digits, '.', '-', '_'; not starting with '.')"
    )]
    BadId(String),
    #[error("cannot create recording {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write recording {path} (is the recording store's disk full?)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the recording header")]
    Encode(#[source] serde_json::Error),
}

/// A recording's name in its store: `<session>-<channel>`, say. Checked to be a plain
/// file name so no caller can write outside the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingId(String);

impl RecordingId {
    pub fn new(id: impl Into<String>) -> Result<Self, RecordingError> {
        let id = id.into();
        let plain = !id.is_empty()
            && id.len() <= 200
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if plain {
            Ok(Self(id))
        } else {
            Err(RecordingError::BadId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A recording that is complete and on stable storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FinishedRecording {
    /// Where the store put it (a path for [`LocalDirStore`]).
    pub location: String,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
    pub size: u64,
}

/// An open recording: lines go in, and `finish` makes it durable.
pub trait RecordingFile: Send + std::fmt::Debug {
    /// Append one line (the newline is added here).
    fn write_line(&mut self, line: &str) -> Result<(), RecordingError>;
    /// Flush and fsync; the digest covers exactly the bytes written.
    fn finish(self: Box<Self>) -> Result<FinishedRecording, RecordingError>;
}

/// A place to keep recordings. The gateway's default is [`LocalDirStore`].
pub trait RecordingStore: Send + Sync + std::fmt::Debug {
    fn create(&self, id: &RecordingId) -> Result<Box<dyn RecordingFile>, RecordingError>;
}

/// Recordings as `<dir>/<id>.cast`, created owner-only and never overwritten.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    dir: PathBuf,
}

impl LocalDirStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path_of(&self, id: &RecordingId) -> PathBuf {
        self.dir.join(format!("{}.cast", id.as_str()))
    }
}

impl RecordingStore for LocalDirStore {
    fn create(&self, id: &RecordingId) -> Result<Box<dyn RecordingFile>, RecordingError> {
        let path = self.path_of(id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| RecordingError::Create {
                path: path.clone(),
                source,
            })?;
        Ok(Box::new(LocalFile {
            path,
            out: BufWriter::with_capacity(64 * 1024, file),
            digest: Sha256::new(),
            size: 0,
        }))
    }
}

#[derive(Debug)]
struct LocalFile {
    path: PathBuf,
    out: BufWriter<File>,
    digest: Sha256,
    size: u64,
}

impl LocalFile {
    fn write_error(&self, source: std::io::Error) -> RecordingError {
        RecordingError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl RecordingFile for LocalFile {
    fn write_line(&mut self, line: &str) -> Result<(), RecordingError> {
        for part in [line.as_bytes(), b"\n"] {
            self.out.write_all(part).map_err(|e| self.write_error(e))?;
            self.digest.update(part);
            self.size += part.len() as u64;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<FinishedRecording, RecordingError> {
        let LocalFile {
            path,
            out,
            digest,
            size,
        } = *self;
        let file = out.into_inner().map_err(|e| RecordingError::Write {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| RecordingError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(FinishedRecording {
            location: path.display().to_string(),
            sha256: hex(&digest.finalize()),
            size,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 and size of a file, to compare with what the audit log recorded.
pub fn digest_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut digest = Sha256::new();
    let size = std::io::copy(&mut file, &mut DigestWriter(&mut digest))?;
    Ok((hex(&digest.finalize()), size))
}

struct DigestWriter<'a>(&'a mut Sha256);

impl Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{CastHeader, Clock, Recorder};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[derive(Debug, Clone, Default)]
    struct HandClock(Arc<AtomicU64>);
    impl Clock for HandClock {
        fn elapsed(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn a_recording_is_written_hashed_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalDirStore::new(dir.path());
        let id = RecordingId::new("sess-1-ch-0").unwrap_or_else(|e| panic!("{e}"));
        let clock = HandClock::default();
        let mut recorder = Recorder::start(
            &store,
            &id,
            &CastHeader::new(80, 24, 7),
            Box::new(clock.clone()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        clock.0.store(250, Ordering::SeqCst);
        recorder.output(b"hi\r\n").unwrap_or_else(|e| panic!("{e}"));
        recorder.resize(100, 40).unwrap_or_else(|e| panic!("{e}"));
        let done = recorder.finish().unwrap_or_else(|e| panic!("{e}"));

        let path = store.path_of(&id);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            text,
            "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":7}\n\
             [0.250000, \"o\", \"hi\\r\\n\"]\n[0.250000, \"r\", \"100x40\"]\n"
        );
        assert_eq!(done.size, text.len() as u64);
        assert_eq!(
            digest_file(&path).unwrap_or_else(|e| panic!("{e}")),
            (done.sha256.clone(), done.size)
        );
        assert!(
            store.create(&id).is_err(),
            "an existing recording must not be replaced"
        );
    }

    #[test]
    fn ids_cannot_leave_the_store() {
        for bad in ["../x", "a/b", ".hidden", "", "a b"] {
            assert!(RecordingId::new(bad).is_err(), "{bad:?}");
        }
        assert!(RecordingId::new("0f3a-2.ch_1").is_ok());
    }
}

//! What the fuzz targets share: cutting the input into the pieces a target needs, and a
//! scratch file for the loaders that only read from a path.

use std::path::PathBuf;

/// A cursor over the fuzzer's bytes. Reads past the end give zeros and empty slices, so a
/// target never has to give up on a short input.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// The next `n` bytes, or all that is left.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    /// Exactly `N` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let got = self.take(N);
        out.get_mut(..got.len())
            .unwrap_or_default()
            .copy_from_slice(got);
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// The next chunk of a two-way stream: a header byte whose low bit says the direction
    /// and whose other bits the length (0-126; 127: a 16-bit length follows), then the
    /// bytes. `None` at the end of the input.
    pub fn chunk(&mut self) -> Option<(bool, &'a [u8])> {
        if self.rest.is_empty() {
            return None;
        }
        let head = self.byte();
        let len = match head >> 1 {
            127 => usize::from(self.u16()),
            n => usize::from(n),
        };
        Some((head & 1 == 1, self.take(len)))
    }
}

/// Encodes a two-way stream as [`Input::chunk`] reads it (for building seeds and tests).
pub fn encode_chunks(chunks: &[(bool, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (dir, bytes) in chunks {
        for piece in bytes.chunks(u16::MAX.into()) {
            let dir = u8::from(*dir);
            match u8::try_from(piece.len()) {
                Ok(n) if n < 127 => out.push((n << 1) | dir),
                _ => {
                    out.push((127 << 1) | dir);
                    out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                }
            }
            out.extend_from_slice(piece);
        }
    }
    out
}

/// A file of this process's own, rewritten with `contents` on every call: for loaders
/// that only take a path. In the temporary directory, and named by the process id, so
/// that parallel fuzzers (`-jobs`, `-fork`) do not share one.
pub fn scratch_file(extension: &str, contents: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("lastmile-fuzz-{}.{extension}", std::process::id()));
    if let Err(e) = std::fs::write(&path, contents) {
        panic!("cannot write the scratch file {}: {e}", path.display());
    }
    path
}

/// The input's lines (split at `\n`, lossily decoded), at most `n` of them; the last one
/// holds the rest of the input, newlines included.
pub fn lines(data: &[u8], n: usize) -> Vec<String> {
    String::from_utf8_lossy(data)
        .splitn(n, '\n')
        .map(str::to_owned)
        .collect()
}

//! Recordings of interactive sessions in asciicast v2
//! (<https://docs.asciinema.org/manual/asciicast/v2/>): newline-delimited JSON, a header
//! object and then `[time, code, data]` events, playable with `asciinema play`.
//!
//! [`CastEncoder`] is sans-IO: it turns terminal bytes into lines and is told the time,
//! so tests are exact. [`Recorder`] is the thin layer that stamps times and writes the
//! lines to a [`RecordingStore`]; [`cast::parse`] reads a file back for play and verify.

pub mod cast;
pub mod store;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use store::{FinishedRecording, LocalDirStore, RecordingError, RecordingId, RecordingStore};

/// The header line (asciicast v2 "Header").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CastHeader {
    /// Always 2.
    pub version: u32,
    pub width: u32,
    pub height: u32,
    /// Unix time of the start, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl CastHeader {
    /// A header for a terminal of `width`×`height`, with TERM (from `pty-req`) and SHELL
    /// when known.
    pub fn new(width: u32, height: u32, timestamp: u64) -> Self {
        Self {
            version: 2,
            width,
            height,
            timestamp: Some(timestamp),
            title: None,
            command: None,
            env: BTreeMap::new(),
        }
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }
}

/// Event codes of asciicast v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCode {
    /// Data the terminal printed (the channel's stdout and stderr).
    Output,
    /// Data the user typed.
    Input,
    /// The terminal was resized (`COLSxROWS`).
    Resize,
    /// A marker.
    Marker,
}

impl EventCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "o",
            Self::Input => "i",
            Self::Resize => "r",
            Self::Marker => "m",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "o" => Some(Self::Output),
            "i" => Some(Self::Input),
            "r" => Some(Self::Resize),
            "m" => Some(Self::Marker),
            _ => None,
        }
    }
}

/// Turns a byte stream into UTF-8 text across arbitrary chunk boundaries: a sequence cut
/// in two by a chunk boundary waits for its rest; bytes that can never be UTF-8 become
/// U+FFFD, so every event is valid JSON and a player shows what it can.
#[derive(Debug, Default, Clone)]
pub struct Utf8Assembler {
    /// The start of a sequence a chunk boundary cut: at most 3 bytes.
    pending: Vec<u8>,
}

impl Utf8Assembler {
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(chunk);
        let mut text = String::with_capacity(bytes.len());
        let mut rest = bytes.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    // `valid_up_to` marks a valid prefix, so this cannot fail.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // Incomplete at the end: keep it for the next chunk.
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        text
    }

    /// The stream ended: an incomplete sequence left over is invalid.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

/// Sans-IO asciicast v2 encoder: each method returns the line(s) to append (without the
/// newline) or None when there is nothing complete to write yet.
#[derive(Debug)]
pub struct CastEncoder {
    output: Utf8Assembler,
    input: Utf8Assembler,
    /// Event times never go backwards, whatever the clock does.
    last: Duration,
}

impl CastEncoder {
    /// The encoder and the header line.
    pub fn new(header: &CastHeader) -> Result<(Self, String), serde_json::Error> {
        let line = serde_json::to_string(header)?;
        Ok((
            Self {
                output: Utf8Assembler::default(),
                input: Utf8Assembler::default(),
                last: Duration::ZERO,
            },
            line,
        ))
    }

    /// Terminal output at `elapsed` since the start of the recording.
    pub fn output(&mut self, elapsed: Duration, data: &[u8]) -> Option<String> {
        let text = self.output.push(data);
        self.event(elapsed, EventCode::Output, &text)
    }

    /// User input at `elapsed`.
    pub fn input(&mut self, elapsed: Duration, data: &[u8]) -> Option<String> {
        let text = self.input.push(data);
        self.event(elapsed, EventCode::Input, &text)
    }

    /// The terminal became `cols`×`rows` (a `window-change`, RFC 4254 §6.7).
    pub fn resize(&mut self, elapsed: Duration, cols: u32, rows: u32) -> Option<String> {
        self.event(elapsed, EventCode::Resize, &format!("{cols}x{rows}"))
    }

    /// The last lines: what is left of a sequence cut off when the channel ended.
    pub fn finish(&mut self, elapsed: Duration) -> Vec<String> {
        let output = self.output.finish();
        let input = self.input.finish();
        [
            self.event(elapsed, EventCode::Output, &output),
            self.event(elapsed, EventCode::Input, &input),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn event(&mut self, elapsed: Duration, code: EventCode, text: &str) -> Option<String> {
        if text.is_empty() {
            return None;
        }
        self.last = self.last.max(elapsed);
        // serde_json escapes control characters as \uXXXX, as the format asks.
        let data = serde_json::Value::String(text.to_owned());
        Some(format!(
            "[{}.{:06}, \"{}\", {data}]",
            self.last.as_secs(),
            self.last.subsec_micros(),
            code.as_str()
        ))
    }
}

/// Where the time of an event comes from. The bridge uses [`MonotonicClock`]; tests
/// use a clock they move by hand.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time since the recording started.
    fn elapsed(&self) -> Duration;
}

#[derive(Debug)]
pub struct MonotonicClock(std::time::Instant);

impl MonotonicClock {
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// One channel's recording: the encoder, its clock and the file it goes to.
#[derive(Debug)]
pub struct Recorder {
    encoder: CastEncoder,
    clock: Box<dyn Clock>,
    file: Box<dyn store::RecordingFile>,
}

impl Recorder {
    pub fn start(
        store: &dyn RecordingStore,
        id: &RecordingId,
        header: &CastHeader,
        clock: Box<dyn Clock>,
    ) -> Result<Self, RecordingError> {
        let (encoder, line) = CastEncoder::new(header).map_err(RecordingError::Encode)?;
        let mut file = store.create(id)?;
        file.write_line(&line)?;
        Ok(Self {
            encoder,
            clock,
            file,
        })
    }

    pub fn output(&mut self, data: &[u8]) -> Result<(), RecordingError> {
        let line = self.encoder.output(self.clock.elapsed(), data);
        self.write(line)
    }

    pub fn input(&mut self, data: &[u8]) -> Result<(), RecordingError> {
        let line = self.encoder.input(self.clock.elapsed(), data);
        self.write(line)
    }

    pub fn resize(&mut self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        let line = self.encoder.resize(self.clock.elapsed(), cols, rows);
        self.write(line)
    }

    /// Write the last lines, fsync, and say where the file is and what it hashes to.
    pub fn finish(mut self) -> Result<FinishedRecording, RecordingError> {
        for line in self.encoder.finish(self.clock.elapsed()) {
            self.file.write_line(&line)?;
        }
        self.file.finish()
    }

    fn write(&mut self, line: Option<String>) -> Result<(), RecordingError> {
        match line {
            Some(line) => self.file.write_line(&line),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn header_and_events_are_asciicast_v2() {
        let header = CastHeader::new(80, 24, 1_504_467_315)
            .with_env("TERM", "xterm-256color")
            .with_env("SHELL", "/bin/bash")
            .with_title("deploy@web-1");
        let (mut encoder, line) = CastEncoder::new(&header).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            line,
            r#"{"version":2,"width":80,"height":24,"timestamp":1504467315,"title":"deploy@web-1","env":{"SHELL":"/bin/bash","TERM":"xterm-256color"}}"#
        );
        assert_eq!(
            encoder.output(Duration::from_micros(248_848), b"\x1b[1;31mHello\n"),
            Some(r#"[0.248848, "o", "\u001b[1;31mHello\n"]"#.to_owned())
        );
        assert_eq!(
            encoder.input(ms(1_500), b"ls\r"),
            Some(r#"[1.500000, "i", "ls\r"]"#.to_owned())
        );
        assert_eq!(
            encoder.resize(ms(4_050), 90, 30),
            Some(r#"[4.050000, "r", "90x30"]"#.to_owned())
        );
    }

    #[test]
    fn utf8_cut_by_a_chunk_boundary_waits_for_its_rest() {
        let (mut encoder, _) =
            CastEncoder::new(&CastHeader::new(80, 24, 0)).unwrap_or_else(|e| panic!("{e}"));
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(encoder.output(ms(1), &euro[..1]), None);
        assert_eq!(encoder.output(ms(2), &euro[1..2]), None);
        assert_eq!(
            encoder.output(ms(3), &[&euro[2..], b"!"].concat()),
            Some("[0.003000, \"o\", \"€!\"]".to_owned())
        );
    }

    #[test]
    fn every_split_of_mixed_text_gives_the_same_text() {
        let text = "aé€😀\u{7}z".as_bytes();
        for cut in 0..=text.len() {
            let mut assembler = Utf8Assembler::default();
            let (a, b) = text.split_at(cut);
            let joined = assembler.push(a) + &assembler.push(b) + &assembler.finish();
            assert_eq!(joined.as_bytes(), text, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut assembler = Utf8Assembler::default();
        assert_eq!(assembler.push(b"a\xffb\xc3"), "a\u{fffd}b");
        // The cut sequence turns out to be invalid when its "rest" arrives.
        assert_eq!(assembler.push(b"(x"), "\u{fffd}(x");
        assert_eq!(assembler.push(b"\xe2\x82"), "");
        assert_eq!(assembler.finish(), "\u{fffd}");
    }

    #[test]
    fn times_never_go_backwards() {
        let (mut encoder, _) =
            CastEncoder::new(&CastHeader::new(80, 24, 0)).unwrap_or_else(|e| panic!("{e}"));
        let _ = encoder.output(ms(2_000), b"a");
        assert_eq!(
            encoder.output(ms(1_000), b"b"),
            Some(r#"[2.000000, "o", "b"]"#.to_owned())
        );
    }

    #[test]
    fn finish_flushes_a_cut_sequence() {
        let (mut encoder, _) =
            CastEncoder::new(&CastHeader::new(80, 24, 0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(encoder.output(ms(1), b"\xf0\x9f"), None);
        assert_eq!(
            encoder.finish(ms(5)),
            vec!["[0.005000, \"o\", \"\u{fffd}\"]".to_owned()]
        );
        assert!(encoder.finish(ms(6)).is_empty());
    }
}

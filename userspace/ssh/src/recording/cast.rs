//! Reading a `.cast` file back: what `lastmile recordings play|verify` stand on. Strict:
//! a file that does not parse as asciicast v2 is reported with the line at fault.

use serde_json::Value;
use thiserror::Error;

use super::{CastHeader, EventCode};

#[derive(Debug, Error, PartialEq)]
pub enum CastError {
    #[error("the recording is empty (no header line)")]
    Empty,
    #[error("line 1: the header is not an asciicast header object: {0}")]
    Header(String),
    #[error("line 1: asciicast version {0}, expected 2")]
    Version(u32),
    #[error("line {line}: {problem}")]
    Event { line: usize, problem: String },
    #[error("the recording is not UTF-8 at byte {0}")]
    NotUtf8(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    /// Seconds since the start.
    pub time: f64,
    pub code: EventCode,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    pub header: CastHeader,
    pub events: Vec<CastEvent>,
}

impl Cast {
    /// Seconds from the start to the last event.
    pub fn duration(&self) -> f64 {
        self.events.last().map(|e| e.time).unwrap_or(0.0)
    }
}

/// Parse and validate a whole recording.
pub fn parse(bytes: &[u8]) -> Result<Cast, CastError> {
    let text = std::str::from_utf8(bytes).map_err(|e| CastError::NotUtf8(e.valid_up_to()))?;
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or(CastError::Empty)?;
    let header: CastHeader =
        serde_json::from_str(first).map_err(|e| CastError::Header(e.to_string()))?;
    if header.version != 2 {
        return Err(CastError::Version(header.version));
    }
    if header.width == 0 || header.height == 0 {
        return Err(CastError::Header(
            "width and height must be positive".to_owned(),
        ));
    }
    let mut events = Vec::new();
    let mut last = 0.0_f64;
    for (index, line) in lines {
        let line_no = index + 1;
        if line.is_empty() {
            continue;
        }
        let event = parse_event(line).map_err(|problem| CastError::Event {
            line: line_no,
            problem,
        })?;
        if event.time < last {
            return Err(CastError::Event {
                line: line_no,
                problem: format!("time {} is before the previous event's {last}", event.time),
            });
        }
        last = event.time;
        events.push(event);
    }
    Ok(Cast { header, events })
}

fn parse_event(line: &str) -> Result<CastEvent, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("an event must be a [time, code, data] array".to_owned());
    };
    let [time, code, data] = items.as_slice() else {
        return Err(format!("an event has 3 elements, this one {}", items.len()));
    };
    let time = time
        .as_f64()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or("the time must be a non-negative number")?;
    let code = code
        .as_str()
        .and_then(EventCode::from_code)
        .ok_or("the code must be one of \"o\", \"i\", \"r\", \"m\"")?;
    let data = data.as_str().ok_or("the data must be a string")?.to_owned();
    if code == EventCode::Resize && !is_size(&data) {
        return Err(format!("a resize must be COLSxROWS, not {data:?}"));
    }
    Ok(CastEvent { time, code, data })
}

fn is_size(data: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(data.split_once('x'), Some((cols, rows)) if digits(cols) && digits(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{CastEncoder, CastHeader};
    use std::time::Duration;

    #[test]
    fn what_the_encoder_writes_parses() {
        let header = CastHeader::new(80, 24, 1).with_env("TERM", "xterm");
        let (mut encoder, head) = CastEncoder::new(&header).unwrap_or_else(|e| panic!("{e}"));
        let mut file = vec![head];
        file.extend(encoder.output(Duration::from_millis(10), b"\x1b[0m\xe2\x82"));
        file.extend(encoder.output(Duration::from_millis(20), b"\xac \xff"));
        file.extend(encoder.resize(Duration::from_millis(30), 100, 50));
        file.extend(encoder.input(Duration::from_millis(40), b"\x03"));
        let text = file.join("\n") + "\n";
        let cast = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cast.header, header);
        let data: Vec<_> = cast.events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["\u{1b}[0m", "€ \u{fffd}", "100x50", "\u{3}"]);
        assert!((cast.duration() - 0.04).abs() < 1e-9);
    }

    #[test]
    fn the_reference_example_parses() {
        // From the asciicast v2 specification.
        let example = r#"{"version": 2, "width": 80, "height": 24, "timestamp": 1504467315, "title": "Demo", "env": {"TERM": "xterm-256color", "SHELL": "/bin/zsh"}}
[0.248848, "o", "\u001b[1;31mHello \u001b[32mWorld!\u001b[0m\n"]
[1.001376, "o", "That was ok\rThis is better."]
[1.500000, "m", ""]
[2.143733, "o", "Now... "]
[4.050000, "r", "80x24"]
[6.541828, "o", "Bye!"]
"#;
        let cast = parse(example.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cast.events.len(), 6);
        assert_eq!(cast.header.title.as_deref(), Some("Demo"));
    }

    #[test]
    fn broken_files_say_which_line() {
        let head = r#"{"version":2,"width":80,"height":24}"#;
        let cases = [
            ("", CastError::Empty),
            (
                r#"{"version":1,"width":80,"height":24}"#,
                CastError::Version(1),
            ),
            (
                &format!("{head}\n[1.0, \"o\"]"),
                CastError::Event {
                    line: 2,
                    problem: "an event has 3 elements, this one 2".to_owned(),
                },
            ),
            (
                &format!("{head}\n[2.0, \"o\", \"a\"]\n[1.0, \"o\", \"b\"]"),
                CastError::Event {
                    line: 3,
                    problem: "time 1 is before the previous event's 2".to_owned(),
                },
            ),
            (
                &format!("{head}\n[1.0, \"r\", \"wide\"]"),
                CastError::Event {
                    line: 2,
                    problem: "a resize must be COLSxROWS, not \"wide\"".to_owned(),
                },
            ),
            (
                &format!("{head}\n[1.0, \"z\", \"a\"]"),
                CastError::Event {
                    line: 2,
                    problem: "the code must be one of \"o\", \"i\", \"r\", \"m\"".to_owned(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text.as_bytes()), Err(expected), "{text:?}");
        }
        assert!(matches!(
            parse(b"{\"version\":2,\"width\":80}"),
            Err(CastError::Header(_))
        ));
        assert_eq!(parse(b"\xff"), Err(CastError::NotUtf8(0)));
    }
}

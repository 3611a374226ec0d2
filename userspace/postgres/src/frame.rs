//! The relay's framing of typed messages (§55.7): every message after start-up is a one-byte
//! type, then an Int32 length that counts itself but not the type, then the body.
//!
//! A [`Scanner`] walks a byte stream message by message. Messages the caller wants to read
//! ([`Step::Message`]) are handed over whole and are bounded by [`Limits::max_message`];
//! all others ([`Step::Pass`]) are streamed through in pieces ([`Step::Forward`]) as they
//! arrive, so a 500 MB DataRow never has to sit in memory, and are bounded only by
//! [`Limits::max_passed`].

use thiserror::Error;

use crate::wire::{Tag, be_i32};

/// The size of a message header: the type byte and the length.
pub const HEADER_LEN: usize = 5;

/// Bounds on message sizes, counted as the length field counts: body plus the 4 length bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message the scanner hands over whole (an inspected one). These are held in
    /// memory, so this bounds what one client can make the gateway buffer. Default 64 MiB:
    /// far above any real query text or Bind, far below what would hurt.
    pub max_message: usize,
    /// The largest message streamed through. Default `i32::MAX`, the most the Int32 length
    /// can say: the server itself caps a message body at 1 GB - 1 (`MaxAllocSize`), so this
    /// only rejects lengths no server or libpq would send and never buffers anything.
    pub max_passed: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 64 << 20,
            max_passed: i32::MAX as usize,
        }
    }
}

/// What to do with the bytes at the front of the buffer given to [`Scanner::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not enough bytes to go on: read more, then call again with the unconsumed bytes.
    NeedMore,
    /// A message that is not inspected starts here: `tag`, and `len` bytes in all (header and
    /// body, `len = 1 + length field`). Nothing is consumed yet; the next calls return
    /// [`Step::Forward`] until all `len` bytes, header included, have been forwarded.
    Pass { tag: u8, len: usize },
    /// Forward these many bytes, untouched, and consume them: the next piece of the passed
    /// message. Never more than the buffer given, never zero.
    Forward(usize),
    /// An inspected message, whole, at `buf[..len]` (header included; see [`body`]). Look at
    /// it, forward or replace it, and consume `len` bytes.
    Message { tag: u8, len: usize },
}

/// Why the stream cannot be framed. The connection cannot continue after any of these: the
/// next message boundary is unknown.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A length field below 4, the length of the length itself.
    #[error("message {tag} declares a length of {length}, below the minimum of 4")]
    TooShort { tag: Tag, length: i32 },
    /// A message the gateway must read whole is larger than [`Limits::max_message`].
    #[error(
        "message {tag} declares {length} bytes, above the gateway's limit of {max} for messages it reads"
    )]
    TooLong { tag: Tag, length: usize, max: usize },
    /// A streamed message is larger than [`Limits::max_passed`].
    #[error("message {tag} declares {length} bytes, above the gateway's limit of {max}")]
    PassedTooLong { tag: Tag, length: usize, max: usize },
}

/// Finds message boundaries in one direction of a connection.
///
/// The caller's loop, over its buffer of received bytes `buf`:
///
/// ```
/// # use lastmile_postgres::frame::{Limits, Scanner, Step};
/// # fn wanted(tag: u8) -> bool { tag == b'Q' }
/// # let buf = b"Q\0\0\0\x0dSELECT 1\0D\0\0\0\x0a\0\0";
/// let mut scanner = Scanner::new(Limits::default(), wanted);
/// let mut pos = 0;
/// loop {
///     match scanner.next(&buf[pos..])? {
///         Step::NeedMore => break,
///         Step::Pass { .. } => {}
///         Step::Forward(n) => pos += n,
///         Step::Message { tag, len } => {
///             let _query = &buf[pos..pos + len]; // log it
///             pos += len;
///         }
///     }
/// }
/// // write buf[..pos] to the other side, keep buf[pos..] for the next read
/// // The DataRow is streamed as it arrives: its first 7 of 11 bytes go now.
/// assert_eq!(pos, buf.len());
/// assert!(scanner.mid_message());
/// # Ok::<(), lastmile_postgres::frame::FrameError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Scanner {
    limits: Limits,
    inspect: fn(u8) -> bool,
    /// Bytes of a passed message not yet forwarded.
    passing: usize,
}

impl Scanner {
    /// A scanner at a message boundary. `inspect(tag)` says which message types the caller
    /// wants whole.
    pub fn new(limits: Limits, inspect: fn(u8) -> bool) -> Self {
        Self {
            limits,
            inspect,
            passing: 0,
        }
    }

    /// Whether the scanner is in the middle of a passed message (so the stream cannot be cut
    /// or a message injected here).
    pub fn mid_message(&self) -> bool {
        self.passing > 0
    }

    /// The next step for `buf`, the bytes not yet consumed.
    pub fn next(&mut self, buf: &[u8]) -> Result<Step, FrameError> {
        if self.passing > 0 {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = self.passing.min(buf.len());
            self.passing -= n;
            return Ok(Step::Forward(n));
        }
        let (Some(&tag), Some(length)) = (buf.first(), buf.get(1..).and_then(be_i32)) else {
            return Ok(Step::NeedMore);
        };
        let tag_name = Tag(tag);
        let size = match usize::try_from(length) {
            Ok(size) if size >= 4 => size,
            _ => {
                return Err(FrameError::TooShort {
                    tag: tag_name,
                    length,
                });
            }
        };
        let len = size + 1;
        if (self.inspect)(tag) {
            if size > self.limits.max_message {
                return Err(FrameError::TooLong {
                    tag: tag_name,
                    length: size,
                    max: self.limits.max_message,
                });
            }
            if buf.len() < len {
                return Ok(Step::NeedMore);
            }
            Ok(Step::Message { tag, len })
        } else {
            if size > self.limits.max_passed {
                return Err(FrameError::PassedTooLong {
                    tag: tag_name,
                    length: size,
                    max: self.limits.max_passed,
                });
            }
            self.passing = len;
            Ok(Step::Pass { tag, len })
        }
    }
}

/// The body of a whole message: the bytes after its 5-byte header (empty if there are none).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(HEADER_LEN..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn queries(tag: u8) -> bool {
        tag == b'Q'
    }

    /// Drives the scanner like the gateway does, in reads of `chunk` bytes, and returns what
    /// it saw: ("pass"/"msg", tag, bytes) per message, in order, and the bytes forwarded.
    type Seen = Vec<(&'static str, u8, Vec<u8>)>;

    fn relay(stream: &[u8], chunk: usize) -> (Seen, Vec<u8>) {
        let mut scanner = Scanner::new(Limits::default(), queries);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                match scanner.next(&buf[pos..]).unwrap() {
                    Step::NeedMore => break,
                    Step::Pass { tag, len } => seen.push(("pass", tag, Vec::with_capacity(len))),
                    Step::Forward(n) => {
                        assert!(n > 0 && n <= buf.len() - pos);
                        seen.last_mut()
                            .unwrap()
                            .2
                            .extend_from_slice(&buf[pos..pos + n]);
                        pos += n;
                    }
                    Step::Message { tag, len } => {
                        seen.push(("msg", tag, buf[pos..pos + len].to_vec()));
                        pos += len;
                    }
                }
            }
            out.extend_from_slice(&buf[..pos]);
            buf.drain(..pos);
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        (seen, out)
    }

    #[test]
    fn every_chunking_gives_the_same_messages_and_bytes() {
        let q = msg(b'Q', b"SELECT 1\0");
        let d = msg(b'D', &[7; 300]);
        let s = msg(b'S', b"");
        let stream = [q.clone(), d.clone(), s.clone(), q.clone()].concat();
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            let (seen, out) = relay(&stream, chunk);
            assert_eq!(out, stream, "chunk {chunk}");
            assert_eq!(
                seen,
                [
                    ("msg", b'Q', q.clone()),
                    ("pass", b'D', d.clone()),
                    ("pass", b'S', s.clone()),
                    ("msg", b'Q', q.clone())
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn passed_messages_stream_without_being_whole() {
        let mut scanner = Scanner::new(Limits::default(), queries);
        // The header of a 500 MB DataRow and the first 10 body bytes.
        let mut head = vec![b'D'];
        head.extend_from_slice(&500_000_004_u32.to_be_bytes());
        head.extend_from_slice(&[0; 10]);
        assert_eq!(
            scanner.next(&head),
            Ok(Step::Pass {
                tag: b'D',
                len: 500_000_005
            })
        );
        assert_eq!(scanner.next(&head), Ok(Step::Forward(15)));
        assert!(scanner.mid_message());
        assert_eq!(scanner.next(&[]), Ok(Step::NeedMore));
        assert_eq!(scanner.next(&[0; 4096]), Ok(Step::Forward(4096)));
        let rest = 500_000_005 - 15 - 4096;
        let mut big = vec![0; rest + 3];
        big[rest] = b'Q';
        assert_eq!(scanner.next(&big), Ok(Step::Forward(rest)));
        assert!(!scanner.mid_message());
        assert_eq!(scanner.next(&big[rest..]), Ok(Step::NeedMore));
    }

    #[test]
    fn inspected_message_waits_until_whole() {
        let mut scanner = Scanner::new(Limits::default(), queries);
        let q = msg(b'Q', b"SELECT 1\0");
        for cut in 0..q.len() {
            assert_eq!(scanner.next(&q[..cut]), Ok(Step::NeedMore), "cut {cut}");
        }
        assert_eq!(
            scanner.next(&q),
            Ok(Step::Message {
                tag: b'Q',
                len: q.len()
            })
        );
        assert_eq!(body(&q), b"SELECT 1\0");
    }

    #[test]
    fn header_only_message() {
        let mut scanner = Scanner::new(Limits::default(), |t| t == b'S');
        assert_eq!(
            scanner.next(&[b'S', 0, 0, 0, 4]),
            Ok(Step::Message { tag: b'S', len: 5 })
        );
        assert_eq!(body(&[b'S', 0, 0, 0, 4]), b"");
        assert_eq!(body(b"S"), b"");
    }

    #[test]
    fn length_below_four() {
        for length in [0_i32, 3, -1, i32::MIN] {
            for inspect in [queries as fn(u8) -> bool, |_| false] {
                let mut scanner = Scanner::new(Limits::default(), inspect);
                let mut buf = vec![b'Q'];
                buf.extend_from_slice(&length.to_be_bytes());
                assert_eq!(
                    scanner.next(&buf),
                    Err(FrameError::TooShort {
                        tag: Tag(b'Q'),
                        length
                    })
                );
            }
        }
    }

    #[test]
    fn inspected_above_max_message_is_refused_from_the_header() {
        let limits = Limits {
            max_message: 100,
            max_passed: 1000,
        };
        let mut scanner = Scanner::new(limits, queries);
        let mut buf = vec![b'Q'];
        buf.extend_from_slice(&101_u32.to_be_bytes());
        assert_eq!(
            scanner.next(&buf),
            Err(FrameError::TooLong {
                tag: Tag(b'Q'),
                length: 101,
                max: 100
            })
        );
        // Exactly the limit is fine.
        let q = msg(b'Q', &[b'x'; 96]);
        assert_eq!(
            scanner.next(&q),
            Ok(Step::Message {
                tag: b'Q',
                len: 101
            })
        );
        // A passed message may exceed max_message, up to max_passed.
        let mut d = vec![b'D'];
        d.extend_from_slice(&1000_u32.to_be_bytes());
        assert_eq!(
            scanner.next(&d),
            Ok(Step::Pass {
                tag: b'D',
                len: 1001
            })
        );
        let mut scanner = Scanner::new(limits, queries);
        let mut d = vec![b'D'];
        d.extend_from_slice(&1001_u32.to_be_bytes());
        assert_eq!(
            scanner.next(&d),
            Err(FrameError::PassedTooLong {
                tag: Tag(b'D'),
                length: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn default_limits() {
        let l = Limits::default();
        assert_eq!(l.max_message, 64 * 1024 * 1024);
        assert_eq!(l.max_passed, 2_147_483_647);
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let e = FrameError::TooShort {
            tag: Tag(b'Q'),
            length: 2,
        };
        assert_eq!(
            e.to_string(),
            "message 'Q' declares a length of 2, below the minimum of 4"
        );
    }
}

//! Reading and writing the protocol's data types (§55.6): big-endian integers and
//! NUL-terminated strings, over a borrowed buffer, without panicking on short input.

use std::fmt;

/// A cursor over a message body. Every read is checked; a short read returns `None` and the
/// caller turns it into its own error.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(b)
    }

    pub(crate) fn i16(&mut self) -> Option<i16> {
        let b = self.bytes(2)?;
        Some(i16::from_be_bytes(b.try_into().ok()?))
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        let b = self.bytes(4)?;
        Some(i32::from_be_bytes(b.try_into().ok()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    /// The bytes up to the next NUL, consuming the NUL; `None` if there is no NUL.
    pub(crate) fn cstr(&mut self) -> Option<&'a [u8]> {
        let at = self.rest.iter().position(|&b| b == 0)?;
        let s = self.bytes(at)?;
        self.bytes(1)?;
        Some(s)
    }
}

/// Reads a big-endian Int32 at the start of `buf`, if there are four bytes.
pub(crate) fn be_i32(buf: &[u8]) -> Option<i32> {
    Reader::new(buf).i32()
}

/// Appends a String (§55.6): the bytes up to, not including, the first NUL, then a NUL.
/// A NUL cannot be carried inside a protocol string; cutting there keeps the framing intact.
pub(crate) fn put_cstr(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.extend_from_slice(bytes.get(..end).unwrap_or_default());
    out.push(0);
}

/// Starts a typed message: its tag and a placeholder length. Returns where the length goes.
pub(crate) fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Fills in the length of a message begun at `at` (the length counts itself, not the tag).
pub(crate) fn finish(out: &mut [u8], at: usize) {
    let len = out.len().saturating_sub(at);
    let len = i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes();
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len);
    }
}

/// A message type byte as people read it in the docs: `'Q'`, or `0x00` when not printable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_are_none_not_panics() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.i32(), None);
        assert_eq!(r.i16(), Some(1));
        assert_eq!(r.cstr(), None);
        assert_eq!(r.u8(), Some(2));
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn cstr_consumes_the_nul() {
        let mut r = Reader::new(b"ab\0c\0");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.cstr(), Some(&b"c"[..]));
        assert!(r.is_empty());
    }

    #[test]
    fn put_cstr_cuts_at_an_embedded_nul() {
        let mut out = Vec::new();
        put_cstr(&mut out, "ab\0cd");
        assert_eq!(out, b"ab\0");
    }

    #[test]
    fn tag_display() {
        assert_eq!(Tag(b'Q').to_string(), "'Q'");
        assert_eq!(Tag(0).to_string(), "0x00");
    }
}

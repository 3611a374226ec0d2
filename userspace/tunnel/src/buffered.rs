//! A socket read through a buffer that is small until the peer has proven who it is.
//!
//! rustls asks for at most 4 KiB per read, so the tunnel's socket is read through a large
//! buffer ([`settings::SOCKET_READ_BUFFER`](crate::settings::SOCKET_READ_BUFFER)) to save
//! system calls. A gateway that gave every accepted TCP connection that buffer before the
//! TLS handshake would let a stranger pin it by opening connections; so the buffer starts
//! at [`HANDSHAKE_BUFFER`] and grows once the handshake has succeeded.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read buffer during the TLS handshake: a ClientHello and a certificate chain.
pub const HANDSHAKE_BUFFER: usize = 4 << 10;

/// `inner`, read through a buffer whose size can grow.
#[derive(Debug)]
pub struct GrowableReader<T> {
    inner: T,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl<T> GrowableReader<T> {
    pub fn new(inner: T, capacity: usize) -> Self {
        Self {
            inner,
            buf: vec![0; capacity],
            pos: 0,
            filled: 0,
        }
    }

    /// Grows the buffer to `capacity` (never shrinks it; buffered bytes are kept).
    pub fn grow(&mut self, capacity: usize) {
        if capacity > self.buf.len() {
            self.buf.resize(capacity, 0);
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The buffer's size.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GrowableReader<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            // A read as large as the buffer goes around it.
            if out.remaining() >= this.buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.filled = rb.filled().len();
            this.pos = 0;
        }
        let available = this.buf.get(this.pos..this.filled).unwrap_or_default();
        let n = available.len().min(out.remaining());
        out.put_slice(available.get(..n).unwrap_or_default());
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GrowableReader<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn bytes_come_through_in_order_across_a_grow() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&data).await.unwrap();
        drop(a);
        let mut r = GrowableReader::new(b, 16);
        let mut head = [0u8; 10];
        r.read_exact(&mut head).await.unwrap();
        r.grow(64 << 10);
        assert_eq!(r.capacity(), 64 << 10);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!([&head[..], &rest[..]].concat(), data);
    }
}

//! One tunnel stream as a byte stream (`AsyncRead + AsyncWrite`), for protocol handlers
//! that speak the user's protocol themselves rather than splicing bytes to a socket.
//!
//! Reads hand out received DATA frames and release their flow-control capacity as they
//! are consumed (RFC 9113 §6.9), so a slow handler holds back its own stream only.
//! Writes queue at most what the stream's send window allows. Shutdown ends the stream
//! (END_STREAM). Bytes are counted in a [`Meter`] as they move: `up` is what the user
//! sent, `down` what they were sent.

use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::splice::{Meter, h2_io};

/// A stream carrying one user connection, seen from the gateway.
#[derive(Debug)]
pub struct ClientStream {
    reader: ClientReader,
    writer: ClientWriter,
}

/// The receiving half of a [`ClientStream`].
#[derive(Debug)]
pub struct ClientReader {
    recv: RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
    ended: bool,
    meter: Arc<Meter>,
}

/// The sending half of a [`ClientStream`].
#[derive(Debug)]
pub struct ClientWriter {
    send: SendStream<Bytes>,
    meter: Arc<Meter>,
}

impl ClientStream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, meter: Arc<Meter>) -> Self {
        Self {
            reader: ClientReader {
                recv,
                pending: Bytes::new(),
                ended: false,
                meter: meter.clone(),
            },
            writer: ClientWriter { send, meter },
        }
    }

    /// The two halves, to read and write from separate tasks or futures.
    pub fn into_split(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }

    /// See [`ClientReader::read_chunk`].
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        self.reader.read_chunk().await
    }

    /// See [`ClientWriter::write_bytes`].
    pub async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        self.writer.write_bytes(data).await
    }
}

impl ClientReader {
    /// Takes the next received chunk whole (no copy), or `None` at the end of the
    /// stream. For handlers that keep their own buffer.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                // The bytes are the handler's now: let the peer send more.
                self.recv
                    .flow_control()
                    .release_capacity(n)
                    .map_err(h2_io)?;
                self.meter.up.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(Some(chunk)))
            }
            Some(Err(e)) => Poll::Ready(Err(h2_io(e))),
            None => {
                self.ended = true;
                Poll::Ready(Ok(None))
            }
        }
    }
}

impl ClientWriter {
    /// Sends `data` (no copy), waiting for send window as needed.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_capacity(cx, data.len())).await?;
            let chunk = data.split_to(n.min(data.len()));
            self.meter
                .down
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.send.send_data(chunk, false).map_err(h2_io)?;
        }
        Ok(())
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            self.send.reserve_capacity(want);
            // poll_capacity wakes only when capacity grows: take what is there first.
            let granted = self.send.capacity();
            if granted > 0 {
                return Poll::Ready(Ok(granted));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(n)) if n > 0 => return Poll::Ready(Ok(n)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the stream closed",
                    )));
                }
            }
        }
    }

    /// Ends the stream in the gateway's direction.
    pub fn finish(&mut self) -> io::Result<()> {
        self.send.send_data(Bytes::new(), true).map_err(h2_io)
    }
}

impl AsyncRead for ClientReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.poll_chunk(cx))? {
                Some(chunk) => this.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        if let Some(head) = this.pending.get(..n) {
            buf.put_slice(head);
        }
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_capacity(cx, buf.len()))?.min(buf.len());
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        this.meter.down.fetch_add(n as u64, Ordering::Relaxed);
        this.send.send_data(chunk, false).map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 sends queued DATA as the connection task runs; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

//! Copying one connection's bytes between a TCP socket and a tunnel stream.
//!
//! Each direction honours the other side's pace: from the socket we read only as much as
//! the stream's HTTP/2 send window allows us to queue (RFC 9113 §5.2), and received DATA
//! is released to the window only once it is written to the socket, so a slow reader
//! holds back its own stream and no other. An idle stream holds no buffer: a read buffer
//! is taken only once the socket is readable.

use std::{
    future::poll_fn,
    io,
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
    task::Poll,
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;

use crate::settings::READ_CHUNK;

/// Bytes moved so far, as seen from the user: `up` towards the resource, `down` back.
/// Updated as bytes move, so a connection cut short still reports what it carried.
#[derive(Debug, Default)]
pub struct Meter {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Meter {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// An h2 error as an I/O error (the underlying one, when there is one).
pub(crate) fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("tunnel I/O"))
    } else {
        io::Error::other(e)
    }
}

/// Copies until both directions have ended. `outbound` says which way the socket's bytes
/// go: true on the agent (socket → tunnel is up), false on the gateway (socket → tunnel is
/// down).
pub async fn splice(
    tcp: &TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    outbound: bool,
    meter: &Meter,
) -> io::Result<()> {
    let (from_socket, to_socket) = if outbound {
        (&meter.up, &meter.down)
    } else {
        (&meter.down, &meter.up)
    };
    tokio::try_join!(
        socket_to_stream(tcp, send, from_socket),
        stream_to_socket(recv, tcp, to_socket)
    )?;
    Ok(())
}

async fn socket_to_stream(
    tcp: &TcpStream,
    mut send: SendStream<Bytes>,
    total: &AtomicU64,
) -> io::Result<()> {
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let n = match tcp.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(());
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        let mut data = buf.freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            // poll_capacity wakes only when capacity grows: take what is there first.
            let mut granted = send.capacity();
            if granted == 0 {
                granted = poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the stream closed"))?
                    .map_err(h2_io)?;
            }
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            send.send_data(chunk, false).map_err(h2_io)?;
        }
    }
}

/// How many received DATA frames one write to the socket may gather.
const GATHER: usize = 32;

async fn stream_to_socket(
    mut recv: RecvStream,
    tcp: &TcpStream,
    total: &AtomicU64,
) -> io::Result<()> {
    let mut ended = false;
    while !ended {
        // Made per write, so an idle stream holds no batch.
        let mut batch = match recv.data().await {
            Some(chunk) => vec![chunk.map_err(h2_io)?],
            None => break,
        };
        // Gather what has already arrived, so one system call writes many frames.
        while batch.len() < GATHER {
            match poll_fn(|cx| Poll::Ready(recv.poll_data(cx))).await {
                Poll::Ready(Some(chunk)) => batch.push(chunk.map_err(h2_io)?),
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let len: usize = batch.iter().map(Bytes::len).sum();
        write_all_vectored(tcp, &batch).await?;
        total.fetch_add(len as u64, Ordering::Relaxed);
        recv.flow_control().release_capacity(len).map_err(h2_io)?;
    }
    // The other side is done sending: pass the half-close on.
    nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&tcp.as_fd()),
        nix::sys::socket::Shutdown::Write,
    )
    .or_else(|e| {
        if e == nix::errno::Errno::ENOTCONN {
            Ok(())
        } else {
            Err(io::Error::from(e))
        }
    })
}

async fn write_all_vectored(tcp: &TcpStream, chunks: &[Bytes]) -> io::Result<()> {
    let (mut index, mut offset) = (0, 0);
    while index < chunks.len() {
        let slices: Vec<io::IoSlice<'_>> = chunks
            .iter()
            .skip(index)
            .enumerate()
            .map(|(i, c)| {
                io::IoSlice::new(if i == 0 {
                    c.get(offset..).unwrap_or_default()
                } else {
                    c
                })
            })
            .collect();
        tcp.writable().await?;
        let mut n = match tcp.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Advance past what was written.
        while n > 0 {
            let Some(c) = chunks.get(index) else { break };
            let left = c.len() - offset;
            if n >= left {
                n -= left;
                index += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        while chunks.get(index).is_some_and(|c| c.len() == offset) {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

//! The tunnel between a user's agent and a gateway.
//!
//! The agent keeps one TLS 1.3 connection per gateway, mutually authenticated: the agent
//! presents its session certificate (issued by the API for the session key), the gateway
//! its gateway certificate; both chain to the organisation's CA. Every user connection is
//! one HTTP/2 stream on it (RFC 9113): the request's headers are the stream header (the
//! resource, and the per-connection authorization signed by the session key), the answer
//! says whether the gateway opened the resource, and then the two DATA directions carry
//! the connection's bytes, with HTTP/2's per-stream and per-connection flow control so
//! that a bulk stream cannot starve an interactive one. Why HTTP/2 and not yamux or QUIC:
//! see `docs/tunnel.md`.
//!
//! - [`tls`]: the rustls configurations for both ends and the identities in the
//!   certificates.
//! - [`header`]: the stream header and the gateway's refusals, to and from HTTP/2 headers.
//! - [`client`]: the agent's end: connect, open streams.
//! - [`server`]: the gateway's end: accept streams.
//! - [`splice`]: copying between a TCP socket and a stream, counting bytes.
//! - [`stream`]: a stream as `AsyncRead + AsyncWrite`, for handlers that speak the
//!   user's protocol.
//!
//! Each end has its own error: [`ConnectError`] for the agent (which gateway, at which
//! address, refused how), [`AcceptError`] for the gateway (what the peer got wrong);
//! [`CredentialsError`] for a certificate or key either end cannot build its TLS
//! configuration from.

pub mod buffered;
pub mod client;
pub mod header;
pub mod server;
pub mod splice;
pub mod stream;
pub mod tls;

pub use client::ConnectError;
pub use server::AcceptError;
pub use tls::CredentialsError;

/// The ALPN protocol of the tunnel (RFC 7301): HTTP/2 framing, lastmile's semantics.
pub const ALPN: &[u8] = b"lastmile-tunnel/1";

/// HTTP/2 settings both ends use. The windows bound what one stream may have in flight
/// (and so the memory it can pin) while letting one stream fill a fast link.
pub mod settings {
    /// Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). Larger windows buy a
    /// little bulk throughput at the cost of interactive latency beside a bulk stream
    /// (measured in docs/tunnel.md).
    pub const STREAM_WINDOW: u32 = 256 << 10;
    /// Per-connection receive window.
    pub const CONNECTION_WINDOW: u32 = 1 << 20;
    /// Largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE): HTTP/2's default. Small
    /// frames interleave streams finely, so an interactive stream waits behind at most
    /// one 16 KiB frame of a bulk one.
    pub const MAX_FRAME: u32 = 16 << 10;
    /// Streams one tunnel carries at once (SETTINGS_MAX_CONCURRENT_STREAMS). Each is a
    /// connection to a resource at the gateway, with its buffers and an upstream socket:
    /// one user's tunnel must not be able to hold tens of thousands. 1,024 is far above
    /// what a person or a connection pool opens; past it, new connections wait for a
    /// slot (h2 flow control) rather than fail.
    pub const MAX_STREAMS: u32 = 1024;
    /// How much a splice reads from a socket at a time.
    pub const READ_CHUNK: usize = 256 << 10;
    /// The tunnel's socket is read through a buffer this large: rustls asks for at most
    /// 4 KiB per read, which would cost four system calls per 16 KiB TLS record.
    pub const SOCKET_READ_BUFFER: usize = 256 << 10;
    /// The most header bytes a stream may open with (SETTINGS_MAX_HEADER_LIST_SIZE): a
    /// stream header is well under 4 KiB.
    pub const MAX_HEADER_LIST: u32 = 16 << 10;
    /// How much one stream may have queued for sending (h2's `max_send_buffer_size`).
    pub const SEND_BUFFER: usize = 1 << 20;
}

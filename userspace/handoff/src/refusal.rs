//! Telling a user, in their own tool, that a connection cannot go through ("run `lastmile
//! login`"), instead of a silent hang or a bare reset. Sans-IO: each refusal is a small
//! state machine fed the client's bytes; the caller moves bytes and closes.

use std::{fmt, io, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::ResourceKind;

/// What a refusal wants done next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes, then keep feeding what the client sends.
    Send(Vec<u8>),
    /// Send these bytes and close: the client has been told.
    SendAndClose(Vec<u8>),
    /// Need more bytes from the client.
    NeedMore,
    /// Close without a word (the client is not speaking the protocol, or asked for
    /// something that has no answer, like a cancel request).
    Close,
}

/// PostgreSQL (protocol 3.0, see the PostgreSQL documentation, "Frontend/Backend
/// Protocol", "Message Flow: Start-up" and "Message Formats").
///
/// The client speaks first: an optional SSLRequest or GSSENCRequest (we answer 'N': this
/// listener has no certificate, and nothing secret is said), then a StartupMessage, which
/// we answer with a FATAL ErrorResponse, SQLSTATE 28000 (invalid_authorization_specification).
#[derive(Debug)]
pub struct PostgresRefusal {
    message: String,
    buffered: Vec<u8>,
    done: bool,
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 3 << 16;
/// The largest startup packet PostgreSQL itself accepts (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP: u32 = 10_000;

impl PostgresRefusal {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            buffered: Vec::new(),
            done: false,
        }
    }

    /// Feeds bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        if self.done {
            return Step::Close;
        }
        self.buffered.extend_from_slice(bytes);
        let (Some(len), Some(code)) = (be_u32(&self.buffered, 0), be_u32(&self.buffered, 4)) else {
            return Step::NeedMore;
        };
        if !(8..=MAX_STARTUP).contains(&len) {
            self.done = true;
            return Step::Close;
        }
        let len = len as usize;
        if self.buffered.len() < len {
            return Step::NeedMore;
        }
        self.buffered.drain(..len);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => Step::Send(b"N".to_vec()),
            PROTOCOL_3 => {
                self.done = true;
                Step::SendAndClose(postgres_fatal("28000", &self.message))
            }
            // A 2.0 or future protocol: answer as the server does, with an error in 3.0
            // format, which libpq prints.
            c if c >> 16 != 1234 => {
                self.done = true;
                Step::SendAndClose(postgres_fatal("0A000", &self.message))
            }
            CANCEL_REQUEST => {
                self.done = true;
                Step::Close
            }
            _ => {
                self.done = true;
                Step::Close
            }
        }
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// An ErrorResponse with severity FATAL.
fn postgres_fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(field);
        // A NUL inside would end the field early; the message is ours, but be exact.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// SSH (RFC 4253): the server sends its identification string, reads the client's, and
/// then, still before key exchange, an unencrypted SSH_MSG_DISCONNECT (section 11.1),
/// whose description OpenSSH shows the user.
#[derive(Debug)]
pub struct SshRefusal {
    message: String,
    buffered: Vec<u8>,
    state: SshState,
}

#[derive(Debug, PartialEq, Eq)]
enum SshState {
    Start,
    AwaitVersion,
    Done,
}

/// RFC 4253 §4.2: the identification string is at most 255 bytes with CR LF.
const MAX_IDENT: usize = 255;
/// RFC 4250 §4.2.2: SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE.
const DISCONNECT_NO_MORE_AUTH_METHODS: u32 = 14;
const SSH_MSG_DISCONNECT: u8 = 1;

impl SshRefusal {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            buffered: Vec::new(),
            state: SshState::Start,
        }
    }

    /// What to send before the client says anything.
    pub fn start(&mut self) -> Step {
        self.state = SshState::AwaitVersion;
        Step::Send(b"SSH-2.0-lastmile\r\n".to_vec())
    }

    /// Feeds bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        if self.state != SshState::AwaitVersion {
            return Step::Close;
        }
        self.buffered.extend_from_slice(bytes);
        match self.buffered.iter().position(|b| *b == b'\n') {
            Some(end) => {
                self.state = SshState::Done;
                if self.buffered.starts_with(b"SSH-") && end < MAX_IDENT {
                    Step::SendAndClose(ssh_disconnect(
                        DISCONNECT_NO_MORE_AUTH_METHODS,
                        &self.message,
                    ))
                } else {
                    Step::Close
                }
            }
            None if self.buffered.len() >= MAX_IDENT => {
                self.state = SshState::Done;
                Step::Close
            }
            None => Step::NeedMore,
        }
    }
}

/// An unencrypted binary packet (RFC 4253 §6) holding SSH_MSG_DISCONNECT.
fn ssh_disconnect(reason: u32, description: &str) -> Vec<u8> {
    let mut payload = vec![SSH_MSG_DISCONNECT];
    payload.extend_from_slice(&reason.to_be_bytes());
    payload.extend_from_slice(&(description.len() as u32).to_be_bytes());
    payload.extend_from_slice(description.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag, empty
    // packet_length || padding_length || payload || padding must be a multiple of 8 (the
    // block size before encryption), with at least 4 bytes of padding.
    let unpadded = 4 + 1 + payload.len();
    let mut padding = 8 - unpadded % 8;
    if padding < 4 {
        padding += 8;
    }
    let packet_length = (1 + payload.len() + padding) as u32;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(&packet_length.to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    // Padding "should" be random; nothing here is secret or encrypted, zeros are fine.
    out.resize(out.len() + padding, 0);
    out
}

/// The words a refused user reads.
#[derive(Debug, Clone, Copy)]
pub struct NoAgent {
    pub uid: u32,
}

impl fmt::Display for NoAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lastmile: this connection needs a lastmile session, and uid {} has none on this host; \
             run `lastmile login`, then connect again",
            self.uid
        )
    }
}

/// Drives a refusal over a socket: tells the client `message` in its protocol (for
/// `tcp`, just closes).
pub async fn refuse(mut stream: TcpStream, kind: ResourceKind, message: String) -> io::Result<()> {
    enum Machine {
        Postgres(PostgresRefusal),
        Ssh(SshRefusal),
    }
    let mut machine = match kind {
        ResourceKind::Tcp => return Ok(()),
        ResourceKind::Postgres => Machine::Postgres(PostgresRefusal::new(message)),
        ResourceKind::Ssh => {
            let mut r = SshRefusal::new(message);
            if let Step::Send(bytes) = r.start() {
                stream.write_all(&bytes).await?;
            }
            Machine::Ssh(r)
        }
    };
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let input = buf.get(..n).unwrap_or_default();
        let step = match &mut machine {
            Machine::Postgres(m) => m.feed(input),
            Machine::Ssh(m) => m.feed(input),
        };
        match step {
            Step::NeedMore => {}
            Step::Send(bytes) => stream.write_all(&bytes).await?,
            Step::SendAndClose(bytes) => {
                stream.write_all(&bytes).await?;
                stream.shutdown().await?;
                // Read what the client still sends until it closes, so that closing does
                // not turn into a reset that could discard our answer before it is read.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
                return Ok(());
            }
            Step::Close => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0database\0orders\0\0");
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend(body);
        m
    }

    fn ssl_request() -> Vec<u8> {
        let mut m = 8u32.to_be_bytes().to_vec();
        m.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        m
    }

    #[test]
    fn postgres_declines_tls_then_answers_startup_with_28000() {
        let mut r = PostgresRefusal::new("run `lastmile login`");
        assert_eq!(r.feed(&ssl_request()), Step::Send(b"N".to_vec()));
        let Step::SendAndClose(reply) = r.feed(&startup()) else {
            panic!("no error response")
        };
        assert_eq!(reply[0], b'E');
        let len = u32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, reply.len());
        let text = String::from_utf8_lossy(&reply[5..]);
        assert!(text.contains("C28000\0"), "{text}");
        assert!(text.contains("Mrun `lastmile login`\0"), "{text}");
        assert!(text.contains("SFATAL\0"));
        assert!(reply.ends_with(b"\0\0"));
    }

    #[test]
    fn postgres_waits_for_a_split_startup() {
        let mut r = PostgresRefusal::new("x");
        let m = startup();
        assert_eq!(r.feed(&m[..3]), Step::NeedMore);
        assert_eq!(r.feed(&m[3..10]), Step::NeedMore);
        assert!(matches!(r.feed(&m[10..]), Step::SendAndClose(_)));
    }

    #[test]
    fn postgres_closes_on_garbage_and_cancel() {
        let mut r = PostgresRefusal::new("x");
        assert_eq!(r.feed(&[0xff; 8]), Step::Close);
        let mut cancel = 16u32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        cancel.extend_from_slice(&[0; 8]);
        assert_eq!(PostgresRefusal::new("x").feed(&cancel), Step::Close);
    }

    #[test]
    fn ssh_sends_its_version_then_a_disconnect_with_the_reason() {
        let mut r = SshRefusal::new("run `lastmile login`");
        assert_eq!(r.start(), Step::Send(b"SSH-2.0-lastmile\r\n".to_vec()));
        assert_eq!(r.feed(b"SSH-2.0-OpenSSH_9.2"), Step::NeedMore);
        let Step::SendAndClose(packet) = r.feed(b"p1\r\n") else {
            panic!("no disconnect")
        };
        assert_eq!(packet.len() % 8, 0);
        let packet_length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet_length + 4, packet.len());
        let padding = packet[4] as usize;
        assert!(padding >= 4);
        assert_eq!(packet[5], SSH_MSG_DISCONNECT);
        assert_eq!(u32::from_be_bytes(packet[6..10].try_into().unwrap()), 14);
        let len = u32::from_be_bytes(packet[10..14].try_into().unwrap()) as usize;
        assert_eq!(&packet[14..14 + len], b"run `lastmile login`");
    }

    #[test]
    fn ssh_closes_on_a_client_that_is_not_ssh() {
        let mut r = SshRefusal::new("x");
        r.start();
        assert_eq!(r.feed(b"GET / HTTP/1.1\r\n"), Step::Close);
        let mut r = SshRefusal::new("x");
        r.start();
        assert_eq!(r.feed(&[b'a'; 300]), Step::Close);
    }
}

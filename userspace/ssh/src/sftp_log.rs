//! The file operations an `sftp` subsystem carries, read off its two byte streams.
//!
//! SFTP version 3 (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks). §3: every
//! packet is `uint32 length, byte type, payload`; requests carry a `uint32 id` that the
//! server's reply repeats (§6.1), which is how a result is matched to its request.
//!
//! A small checked parser of our own rather than russh-sftp's codec: that codec decodes
//! names and handles into `String` lossily, so two distinct binary handles (OpenSSH's are
//! 4 raw bytes) could collapse into one, and it copies every DATA payload we only count.
//! Here handles stay bytes and data is never copied.

use std::collections::HashMap;

use serde::Serialize;
use thiserror::Error;

/// OpenSSH's sftp-server refuses packets over 256 KiB (SFTP_MAX_MSG_LENGTH); a little
/// headroom for other servers, and nothing more: a larger length is an attack or garbage.
pub const DEFAULT_MAX_PACKET: u32 = 256 * 1024 + 1024;
/// Requests awaiting a reply, and handles open at once, before the log gives up.
const MAX_PENDING: usize = 8192;
const MAX_HANDLES: usize = 4096;

// §3 packet types.
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_EXTENDED: u8 = 200;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SftpLogError {
    #[error("an SFTP packet of {length} bytes is over the {max} allowed")]
    TooLarge { length: u32, max: u32 },
    #[error("a malformed SFTP packet (type {packet_type}): {problem}")]
    Malformed {
        packet_type: u8,
        problem: &'static str,
    },
    #[error("more than {0} SFTP requests or handles outstanding")]
    TooManyOutstanding(usize),
}

/// The log lost the server's stream partway through one chunk: the operations the
/// chunk's earlier packets completed, and why it cannot follow the stream past that point.
///
/// Not an [`std::error::Error`], so that it cannot be `?`-converted into a generic error
/// with the operations dropped: they happened on the server and must still be logged,
/// and the error still means the channel can no longer be carried logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLost {
    /// What completed before the refused packet, in the order the replies came.
    pub completed: Vec<SftpOp>,
    /// Why the rest of the stream cannot be read.
    pub error: SftpLogError,
}

/// How a request ended (§7: SSH_FXP_STATUS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed { code: u32, message: String },
}

/// What the audit log records for one SFTP operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SftpOp {
    /// §6.3 SSH_FXP_OPEN; `flags` are the §6.3 pflags (READ 1, WRITE 2, APPEND 4, CREAT 8,
    /// TRUNC 0x10, EXCL 0x20).
    Open {
        path: String,
        flags: u32,
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// A file handle's totals, reported when it is closed (or when the channel ends with
    /// it still open, `closed: false`).
    Transfer {
        path: String,
        bytes_read: u64,
        bytes_written: u64,
        closed: bool,
    },
    Remove {
        path: String,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Rename {
        from: String,
        to: String,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Mkdir {
        path: String,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Rmdir {
        path: String,
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// §6.9 SETSTAT or FSETSTAT (the handle's path).
    Setstat {
        path: String,
        #[serde(flatten)]
        outcome: Outcome,
    },
}

/// Reassembles length-prefixed packets from one direction's chunks.
#[derive(Debug)]
struct Framer {
    buf: Vec<u8>,
    max: u32,
}

impl Framer {
    /// The next whole packet (type byte and payload), if one is buffered.
    fn next_packet(&mut self) -> Result<Option<Vec<u8>>, SftpLogError> {
        let Some(length) = self.buf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) else {
            return Ok(None);
        };
        if length > self.max {
            return Err(SftpLogError::TooLarge {
                length,
                max: self.max,
            });
        }
        let end = 4 + length as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let packet = self.buf.get(4..end).unwrap_or_default().to_vec();
        self.buf.drain(..end);
        Ok(Some(packet))
    }
}

/// A cursor over one packet's payload (§3: uint32, uint64 and string are big-endian,
/// strings length-prefixed).
struct Fields<'a> {
    rest: &'a [u8],
    packet_type: u8,
}

impl<'a> Fields<'a> {
    fn malformed(&self, problem: &'static str) -> SftpLogError {
        SftpLogError::Malformed {
            packet_type: self.packet_type,
            problem,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SftpLogError> {
        if self.rest.len() < n {
            return Err(self.malformed("truncated field"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, SftpLogError> {
        let bytes = self.take(4)?;
        let array: [u8; 4] = bytes.try_into().map_err(|_| self.malformed("uint32"))?;
        Ok(u32::from_be_bytes(array))
    }

    fn string(&mut self) -> Result<&'a [u8], SftpLogError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn text(&mut self) -> Result<String, SftpLogError> {
        Ok(String::from_utf8_lossy(self.string()?).into_owned())
    }
}

#[derive(Debug)]
enum Pending {
    Open { path: String, flags: u32 },
    Close { handle: Vec<u8> },
    Read { handle: Vec<u8> },
    Write { handle: Vec<u8>, bytes: u64 },
    Remove { path: String },
    Rename { from: String, to: String },
    Mkdir { path: String },
    Rmdir { path: String },
    Setstat { path: String },
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    bytes_read: u64,
    bytes_written: u64,
}

/// The SFTP log of one subsystem channel. Feed it both directions as they pass; it
/// returns the operations that completed.
#[derive(Debug)]
pub struct SftpLog {
    from_client: Framer,
    from_server: Framer,
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
}

impl Default for SftpLog {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET)
    }
}

impl SftpLog {
    pub fn new(max_packet: u32) -> Self {
        let framer = || Framer {
            buf: Vec::new(),
            max: max_packet,
        };
        Self {
            from_client: framer(),
            from_server: framer(),
            pending: HashMap::new(),
            files: HashMap::new(),
        }
    }

    /// Bytes the user's client sent to the server.
    pub fn client_bytes(&mut self, chunk: &[u8]) -> Result<Vec<SftpOp>, SftpLogError> {
        self.from_client.buf.extend_from_slice(chunk);
        while let Some(packet) = self.from_client.next_packet()? {
            self.request(&packet)?;
        }
        Ok(Vec::new())
    }

    /// Bytes the server sent back: the operations they completed.
    ///
    /// # Errors
    ///
    /// [`StreamLost`] when a packet is refused (too large, malformed, too many handles),
    /// carrying the operations the packets before it in `chunk` completed, so that
    /// how the server's bytes were cut into chunks does not change what is logged.
    pub fn server_bytes(&mut self, chunk: &[u8]) -> Result<Vec<SftpOp>, StreamLost> {
        self.from_server.buf.extend_from_slice(chunk);
        let mut completed = Vec::new();
        loop {
            let step = self
                .from_server
                .next_packet()
                .and_then(|packet| packet.map(|p| self.reply(&p)).transpose());
            match step {
                Ok(Some(op)) => completed.extend(op),
                Ok(None) => return Ok(completed),
                Err(error) => return Err(StreamLost { completed, error }),
            }
        }
    }

    /// The channel ended: totals for the files still open.
    pub fn finish(&mut self) -> Vec<SftpOp> {
        self.pending.clear();
        let mut files: Vec<_> = self.files.drain().map(|(_, file)| file).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
            .into_iter()
            .map(|file| SftpOp::Transfer {
                path: file.path,
                bytes_read: file.bytes_read,
                bytes_written: file.bytes_written,
                closed: false,
            })
            .collect()
    }

    fn request(&mut self, packet: &[u8]) -> Result<(), SftpLogError> {
        let Some((&packet_type, rest)) = packet.split_first() else {
            return Err(SftpLogError::Malformed {
                packet_type: 0,
                problem: "empty packet",
            });
        };
        let mut f = Fields { rest, packet_type };
        let pending = match packet_type {
            FXP_OPEN => {
                let id = f.u32()?;
                let path = f.text()?;
                let flags = f.u32()?;
                (id, Pending::Open { path, flags })
            }
            FXP_CLOSE => (
                f.u32()?,
                Pending::Close {
                    handle: f.string()?.to_vec(),
                },
            ),
            FXP_READ => (
                f.u32()?,
                Pending::Read {
                    handle: f.string()?.to_vec(),
                },
            ),
            FXP_WRITE => {
                let id = f.u32()?;
                let handle = f.string()?.to_vec();
                let _offset = f.take(8)?;
                let bytes = f.string()?.len() as u64;
                (id, Pending::Write { handle, bytes })
            }
            FXP_REMOVE => (f.u32()?, Pending::Remove { path: f.text()? }),
            FXP_MKDIR => (f.u32()?, Pending::Mkdir { path: f.text()? }),
            FXP_RMDIR => (f.u32()?, Pending::Rmdir { path: f.text()? }),
            FXP_SETSTAT => (f.u32()?, Pending::Setstat { path: f.text()? }),
            FXP_FSETSTAT => {
                let id = f.u32()?;
                let handle = f.string()?;
                let path = self
                    .files
                    .get(handle)
                    .map(|file| file.path.clone())
                    .unwrap_or_else(|| "(unknown handle)".to_owned());
                (id, Pending::Setstat { path })
            }
            FXP_RENAME => {
                let id = f.u32()?;
                let from = f.text()?;
                let to = f.text()?;
                (id, Pending::Rename { from, to })
            }
            FXP_EXTENDED => {
                let id = f.u32()?;
                // OpenSSH's PROTOCOL file: posix-rename@openssh.com carries oldpath, newpath.
                if f.string()? != b"posix-rename@openssh.com" {
                    return Ok(());
                }
                let from = f.text()?;
                let to = f.text()?;
                (id, Pending::Rename { from, to })
            }
            // INIT, STAT, READDIR, REALPATH and the like change nothing worth a log line.
            _ => return Ok(()),
        };
        if self.pending.len() >= MAX_PENDING {
            return Err(SftpLogError::TooManyOutstanding(MAX_PENDING));
        }
        self.pending.insert(pending.0, pending.1);
        Ok(())
    }

    fn reply(&mut self, packet: &[u8]) -> Result<Option<SftpOp>, SftpLogError> {
        let Some((&packet_type, rest)) = packet.split_first() else {
            return Err(SftpLogError::Malformed {
                packet_type: 0,
                problem: "empty packet",
            });
        };
        let mut f = Fields { rest, packet_type };
        match packet_type {
            FXP_HANDLE => {
                let id = f.u32()?;
                let handle = f.string()?.to_vec();
                match self.pending.remove(&id) {
                    Some(Pending::Open { path, flags }) => {
                        if self.files.len() >= MAX_HANDLES {
                            return Err(SftpLogError::TooManyOutstanding(MAX_HANDLES));
                        }
                        self.files.insert(
                            handle,
                            OpenFile {
                                path: path.clone(),
                                bytes_read: 0,
                                bytes_written: 0,
                            },
                        );
                        Ok(Some(SftpOp::Open {
                            path,
                            flags,
                            outcome: Outcome::Ok,
                        }))
                    }
                    _ => Ok(None),
                }
            }
            FXP_DATA => {
                let id = f.u32()?;
                let bytes = f.string()?.len() as u64;
                if let Some(Pending::Read { handle }) = self.pending.remove(&id)
                    && let Some(file) = self.files.get_mut(&handle)
                {
                    file.bytes_read += bytes;
                }
                Ok(None)
            }
            FXP_STATUS => {
                let id = f.u32()?;
                let code = f.u32()?;
                // §7: error message and language tag follow; version 3 servers send them.
                let message = f.text().unwrap_or_default();
                let outcome = if code == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Failed { code, message }
                };
                Ok(self.status(id, outcome))
            }
            _ => Ok(None),
        }
    }

    fn status(&mut self, id: u32, outcome: Outcome) -> Option<SftpOp> {
        match self.pending.remove(&id)? {
            Pending::Open { path, flags } => Some(SftpOp::Open {
                path,
                flags,
                outcome,
            }),
            Pending::Close { handle } => {
                let file = self.files.remove(&handle)?;
                Some(SftpOp::Transfer {
                    path: file.path,
                    bytes_read: file.bytes_read,
                    bytes_written: file.bytes_written,
                    closed: true,
                })
            }
            Pending::Write { handle, bytes } => {
                if outcome == Outcome::Ok
                    && let Some(file) = self.files.get_mut(&handle)
                {
                    file.bytes_written += bytes;
                }
                None
            }
            // A STATUS for a READ is EOF or an error: no bytes moved.
            Pending::Read { .. } => None,
            Pending::Remove { path } => Some(SftpOp::Remove { path, outcome }),
            Pending::Rename { from, to } => Some(SftpOp::Rename { from, to, outcome }),
            Pending::Mkdir { path } => Some(SftpOp::Mkdir { path, outcome }),
            Pending::Rmdir { path } => Some(SftpOp::Rmdir { path, outcome }),
            Pending::Setstat { path } => Some(SftpOp::Setstat { path, outcome }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds packets as §3 lays them out.
    struct Packet(Vec<u8>);
    impl Packet {
        fn new(packet_type: u8) -> Self {
            Self(vec![packet_type])
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn string(self, s: &[u8]) -> Self {
            let mut p = self.u32(s.len() as u32);
            p.0.extend_from_slice(s);
            p
        }
        fn bytes(self) -> Vec<u8> {
            let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&self.0);
            out
        }
    }

    fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
        Packet::new(FXP_STATUS)
            .u32(id)
            .u32(code)
            .string(message.as_bytes())
            .string(b"en")
            .bytes()
    }

    /// Feeds one byte at a time, so every chunk boundary is exercised.
    fn drip(log: &mut SftpLog, client: bool, bytes: &[u8]) -> Vec<SftpOp> {
        let mut ops = Vec::new();
        for byte in bytes {
            let step = if client {
                log.client_bytes(std::slice::from_ref(byte))
            } else {
                log.server_bytes(std::slice::from_ref(byte))
                    .map_err(|lost| lost.error)
            };
            ops.extend(step.unwrap_or_else(|e| panic!("{e}")));
        }
        ops
    }

    #[test]
    fn an_upload_is_logged_with_its_path_and_bytes() {
        let mut log = SftpLog::default();
        // Two handles OpenSSH could hand out: 0x80 is not UTF-8, so lossy decoding would
        // merge them.
        let handle_a = [0, 0, 0, 0x80];
        let open = Packet::new(FXP_OPEN)
            .u32(1)
            .string(b"/tmp/up.bin")
            .u32(0x1a)
            .u32(0)
            .bytes();
        drip(&mut log, true, &open);
        let handle = Packet::new(FXP_HANDLE).u32(1).string(&handle_a).bytes();
        assert_eq!(
            drip(&mut log, false, &handle),
            vec![SftpOp::Open {
                path: "/tmp/up.bin".to_owned(),
                flags: 0x1a,
                outcome: Outcome::Ok
            }]
        );
        for (id, size) in [(2, 32_768), (3, 100)] {
            let write = Packet::new(FXP_WRITE)
                .u32(id)
                .string(&handle_a)
                .u64(0)
                .string(&vec![7; size])
                .bytes();
            drip(&mut log, true, &write);
        }
        drip(
            &mut log,
            false,
            &[status(2, 0, ""), status(3, 0, "")].concat(),
        );
        drip(
            &mut log,
            true,
            &Packet::new(FXP_CLOSE).u32(4).string(&handle_a).bytes(),
        );
        assert_eq!(
            drip(&mut log, false, &status(4, 0, "")),
            vec![SftpOp::Transfer {
                path: "/tmp/up.bin".to_owned(),
                bytes_read: 0,
                bytes_written: 32_868,
                closed: true
            }]
        );
        assert!(log.finish().is_empty());
    }

    #[test]
    fn a_download_counts_data_replies() {
        let mut log = SftpLog::default();
        let h = [0, 0, 0, 0x81];
        let mut client = Packet::new(FXP_OPEN)
            .u32(9)
            .string(b"/etc/hosts")
            .u32(1)
            .u32(0)
            .bytes();
        client.extend(
            Packet::new(FXP_READ)
                .u32(10)
                .string(&h)
                .u64(0)
                .u32(4096)
                .bytes(),
        );
        client.extend(
            Packet::new(FXP_READ)
                .u32(11)
                .string(&h)
                .u64(5)
                .u32(4096)
                .bytes(),
        );
        let mut server = Packet::new(FXP_HANDLE).u32(9).string(&h).bytes();
        server.extend(Packet::new(FXP_DATA).u32(10).string(b"hello").bytes());
        server.extend(status(11, 1, "EOF"));
        // Whole buffers this time: several packets per chunk.
        assert!(
            log.client_bytes(&client)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty()
        );
        let ops = log
            .server_bytes(&server)
            .unwrap_or_else(|lost| panic!("{}", lost.error));
        assert_eq!(ops.len(), 1);
        // The channel ends without a CLOSE.
        assert_eq!(
            log.finish(),
            vec![SftpOp::Transfer {
                path: "/etc/hosts".to_owned(),
                bytes_read: 5,
                bytes_written: 0,
                closed: false
            }]
        );
    }

    #[test]
    fn failures_are_matched_to_their_request() {
        let mut log = SftpLog::default();
        let mut client = Packet::new(FXP_REMOVE).u32(5).string(b"/root/x").bytes();
        client.extend(
            Packet::new(FXP_MKDIR)
                .u32(6)
                .string(b"/tmp/d")
                .u32(0)
                .bytes(),
        );
        client.extend(
            Packet::new(FXP_EXTENDED)
                .u32(7)
                .string(b"posix-rename@openssh.com")
                .string(b"/tmp/a")
                .string(b"/tmp/b")
                .bytes(),
        );
        client.extend(
            Packet::new(FXP_OPEN)
                .u32(8)
                .string(b"/nope")
                .u32(1)
                .u32(0)
                .bytes(),
        );
        drip(&mut log, true, &client);
        // Replies out of order: ids, not order, decide.
        let server = [
            status(7, 0, ""),
            status(5, 3, "Permission denied"),
            status(8, 2, "No such file"),
            status(6, 0, ""),
        ]
        .concat();
        let ops = drip(&mut log, false, &server);
        assert_eq!(
            ops,
            vec![
                SftpOp::Rename {
                    from: "/tmp/a".to_owned(),
                    to: "/tmp/b".to_owned(),
                    outcome: Outcome::Ok
                },
                SftpOp::Remove {
                    path: "/root/x".to_owned(),
                    outcome: Outcome::Failed {
                        code: 3,
                        message: "Permission denied".to_owned()
                    }
                },
                SftpOp::Open {
                    path: "/nope".to_owned(),
                    flags: 1,
                    outcome: Outcome::Failed {
                        code: 2,
                        message: "No such file".to_owned()
                    }
                },
                SftpOp::Mkdir {
                    path: "/tmp/d".to_owned(),
                    outcome: Outcome::Ok
                },
            ]
        );
        let json = serde_json::to_string(&ops[1]).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"op":"remove","path":"/root/x","result":"failed","code":3,"message":"Permission denied"}"#
        );
    }

    #[test]
    fn hostile_streams_are_errors_not_allocations() {
        let mut log = SftpLog::new(1024);
        assert_eq!(
            log.client_bytes(&[0x7f, 0xff, 0xff, 0xff]),
            Err(SftpLogError::TooLarge {
                length: 0x7fff_ffff,
                max: 1024
            })
        );
        let mut log = SftpLog::default();
        // A REMOVE whose path length runs past the packet.
        let bad = Packet::new(FXP_REMOVE).u32(1).u32(99).bytes();
        assert_eq!(
            log.client_bytes(&bad),
            Err(SftpLogError::Malformed {
                packet_type: FXP_REMOVE,
                problem: "truncated field"
            })
        );
    }

    #[test]
    fn replies_to_unknown_ids_are_ignored() {
        let mut log = SftpLog::default();
        assert_eq!(log.server_bytes(&status(42, 0, "")), Ok(Vec::new()));
        let stray = Packet::new(FXP_HANDLE).u32(43).string(b"h").bytes();
        assert_eq!(log.server_bytes(&stray), Ok(Vec::new()));
    }

    /// Found by fuzzing (fuzz/corpus/ssh_sftp/regression-ops-lost-before-bad-packet): when
    /// one read from the server held a reply that completes an operation and then a packet
    /// the log refuses, `server_bytes` returned only the error, so the gateway logged "sftp
    /// log lost the stream" but not the operation, which it would have logged had the reply
    /// come in a read of its own. Now the error carries the operation.
    #[test]
    fn operations_completed_before_a_bad_packet_are_not_lost() {
        let mut log = SftpLog::default();
        let remove = Packet::new(FXP_REMOVE).u32(7).string(b"/root/x").bytes();
        assert_eq!(log.client_bytes(&remove), Ok(Vec::new()));
        let mut reply = status(7, 0, "");
        reply.extend_from_slice(&[0xff; 4]);
        let removed = SftpOp::Remove {
            path: "/root/x".to_owned(),
            outcome: Outcome::Ok,
        };
        // What one byte at a time gives.
        let mut bytewise = SftpLog::default();
        bytewise.client_bytes(&remove).unwrap();
        let mut ops = Vec::new();
        for b in &reply[..reply.len() - 4] {
            ops.extend(bytewise.server_bytes(&[*b]).unwrap());
        }
        assert_eq!(ops, std::slice::from_ref(&removed));
        // The bad length that follows, a byte at a time: the same error, nothing more.
        let mut lost = None;
        for b in &reply[reply.len() - 4..] {
            if let Err(e) = bytewise.server_bytes(&[*b]) {
                lost = Some(e);
                break;
            }
        }
        let too_large = SftpLogError::TooLarge {
            length: u32::MAX,
            max: DEFAULT_MAX_PACKET,
        };
        assert_eq!(
            lost,
            Some(StreamLost {
                completed: Vec::new(),
                error: too_large.clone()
            })
        );
        // All in one read: the Remove still comes out, with the error (which is not
        // swallowed: the stream is lost either way).
        assert_eq!(
            log.server_bytes(&reply),
            Err(StreamLost {
                completed: vec![removed],
                error: too_large
            })
        );
    }
}

//! The SSH last mile: lastmile's gateway is the SSH server the user's native `ssh`,
//! `scp` and `sftp` reach through the tunnel, and the SSH client that logs in to the
//! target with a credential the user never sees.
//!
//! # What is russh's and what is ours
//!
//! [russh] (0.65) does the SSH transport and connection protocols on both hops: key
//! exchange with strict kex (`kex-strict-*-v00@openssh.com`, the CVE-2023-48795 fix, on
//! by default in its kex list; we keep that list, see `bridge::server_config` and
//! `bridge::upstream::client_config`), the host certificate the gateway presents
//! (`server::Config::certificates`), user authentication with an OpenSSH user certificate
//! upstream (`client::Handle::authenticate_openssh_cert`), channel windows and packet
//! sizes. It was picked because it is the one maintained pure-Rust SSH library that does
//! both server and client, with host certificates and certificate login, on tokio, and
//! takes any `AsyncRead + AsyncWrite` stream, which is what the tunnel hands over.
//!
//! Ours, as plain code with unit tests and no sockets:
//! - [`policy`]: which channels and requests a resource lets through (RFC 4254), each
//!   decision `Allow` or `Refuse { what, reason }` for the audit log;
//! - [`principal`]: the login name the user typed picks one of the resource's
//!   `ssh_principals` (RFC 4252 §5);
//! - [`exec_log`]: the exact command of each `exec`, and legacy `scp -t/-f` as a transfer;
//! - [`sftp_log`]: SFTP v3 operations read off the subsystem's byte streams. Our own small
//!   parser rather than russh-sftp's codec, which decodes handles and names into `String`
//!   lossily (two binary OpenSSH handles could become one) and copies every payload;
//! - [`recording`]: asciicast v2 recordings (sans-IO encoder, a store, a parser);
//! - [`events`]: what the gateway writes to its audit sink.
//!
//! [`bridge`] is the thin russh plumbing between them and the gateway's seam:
//! [`bridge::serve`].

pub mod bridge;
pub mod events;
pub mod exec_log;
pub mod policy;
pub mod principal;
pub mod recording;
pub mod sftp_log;

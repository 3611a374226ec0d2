//! `lastmiled probe`: one connection, reported.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to connect: ADDRESS:PORT or [IPV6]:PORT.
    target: SocketAddr,
    /// Send this text once connected, then print what comes back.
    #[arg(long)]
    send: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&args.target, timeout).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::PermissionDenied => "denied by policy (EPERM)",
            std::io::ErrorKind::TimedOut => "timed out",
            _ => "failed",
        };
        anyhow::anyhow!("connect to {}: {what} ({e})", args.target)
    })?;
    let connect_us = started.elapsed().as_micros();
    stream
        .set_read_timeout(Some(timeout))
        .context("set read timeout")?;
    let peer = stream.peer_addr().context("getpeername")?;
    let local = stream.local_addr().context("getsockname")?;
    let received = match &args.send {
        Some(text) => {
            stream.write_all(text.as_bytes()).context("send")?;
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).context("receive")?;
            Some(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
        }
        None => None,
    };
    let report = serde_json::json!({
        "target": args.target.to_string(),
        "peer": peer.to_string(),
        "local": local.to_string(),
        "connect_us": connect_us,
        "received": received,
    });
    println!("{report}");
    Ok(())
}

//! `lastmiled probe`: one connection, reported.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
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
    /// After connecting, send each line of standard input and print each answer as one
    /// JSON line (for holding a connection open across events).
    #[arg(long, conflicts_with = "send")]
    interactive: bool,
    /// Set this SO_MARK on the socket first (needs CAP_NET_ADMIN).
    #[arg(long)]
    mark: Option<u32>,
    /// Connect this many times (closing each at once) and print a summary instead; for
    /// load and for filling the event ring buffer. Errors are counted, not fatal.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["send", "interactive"])]
    count: u32,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    if args.count > 1 {
        return repeat(args, timeout);
    }
    let started = Instant::now();
    let mut stream = connect(args.target, args.mark, timeout)?;
    let connect_us = started.elapsed().as_micros();
    stream
        .set_read_timeout(Some(timeout))
        .context("set read timeout")?;
    let peer = stream.peer_addr().context("getpeername")?;
    let local = stream.local_addr().context("getsockname")?;
    let received = match &args.send {
        Some(text) => Some(exchange(&mut stream, text)?),
        None => None,
    };
    let report = serde_json::json!({
        "target": args.target.to_string(),
        "peer": peer.to_string(),
        "local": local.to_string(),
        "pid": std::process::id(),
        "connect_us": connect_us,
        "received": received,
    });
    println!("{report}");
    if args.interactive {
        std::io::stdout().flush()?;
        for line in std::io::stdin().lock().lines() {
            let received = exchange(&mut stream, &line?)?;
            println!("{}", serde_json::json!({ "received": received }));
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

fn repeat(args: &Args, timeout: Duration) -> anyhow::Result<()> {
    let (mut connected, mut denied, mut refused, mut other) = (0u32, 0u32, 0u32, 0u32);
    let started = Instant::now();
    for _ in 0..args.count {
        match connect(args.target, args.mark, timeout) {
            Ok(_) => connected += 1,
            Err(e) => match e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
                Some(std::io::ErrorKind::PermissionDenied) => denied += 1,
                Some(std::io::ErrorKind::ConnectionRefused) => refused += 1,
                _ => other += 1,
            },
        }
    }
    let report = serde_json::json!({
        "target": args.target.to_string(),
        "attempts": args.count,
        "connected": connected,
        "denied": denied,
        "refused": refused,
        "failed": other,
        "elapsed_us": started.elapsed().as_micros(),
    });
    println!("{report}");
    Ok(())
}

fn exchange(stream: &mut TcpStream, text: &str) -> anyhow::Result<String> {
    stream.write_all(text.as_bytes()).context("send")?;
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).context("receive")?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

fn connect(target: SocketAddr, mark: Option<u32>, timeout: Duration) -> anyhow::Result<TcpStream> {
    let describe = |e: std::io::Error| {
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::PermissionDenied => "denied by policy (EPERM)",
            std::io::ErrorKind::TimedOut => "timed out",
            _ => "failed",
        };
        anyhow::Error::new(e).context(format!("connect to {target}: {what}"))
    };
    let Some(mark) = mark else {
        return TcpStream::connect_timeout(&target, timeout).map_err(describe);
    };
    // A mark must be set before connect, so build the socket by hand.
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the option value points at a u32 of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_MARK needs CAP_NET_ADMIN");
    }
    let result = match target {
        SocketAddr::V4(a) => {
            nix::sys::socket::connect(stream.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(a))
        }
        SocketAddr::V6(a) => {
            nix::sys::socket::connect(stream.as_raw_fd(), &nix::sys::socket::SockaddrIn6::from(a))
        }
    };
    result.map_err(|e| describe(e.into()))?;
    Ok(stream)
}

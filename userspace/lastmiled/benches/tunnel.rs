//! `cargo xtask bench tunnel`: what the tunnel costs, next to a direct loopback connection
//! and an OpenSSH `ssh -L` forward, measured in the same run.
//!
//! The path: a client connects to `lastmile listen` (the agent's core; with eBPF the kernel
//! hands the socket to the agent instead, which changes only the connect, see `bench
//! connect`) → one TLS 1.3 + HTTP/2 tunnel → `lastmiled gateway` (which asks the API per
//! connection) → the server. All on loopback, the API in this process (SQLite, local KMS).
//!
//! Measured, rounds interleaved so drift hits every path alike:
//! - bulk: 256 MiB one way to a server that discards it and answers once at the end;
//! - request/response: 64-byte ping-pong on one open connection;
//! - connection setup: connect and a first 64-byte answer on a new connection;
//! - fairness: the same ping-pong on one stream while another carries bulk, through one
//!   tunnel (flow control must keep the interactive stream moving);
//! - memory: RSS of the agent and of the gateway before and with 10,000 open idle streams.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support {
    pub fn lastmiled() -> &'static str {
        env!("CARGO_BIN_EXE_lastmiled")
    }
}
#[path = "baselines/ssh_forward.rs"]
#[allow(dead_code)]
mod ssh_forward;
#[path = "../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ssh_forward::SshForward;
use stack::{Listen, Stack};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BULK: usize = 256 << 20;
const ROUNDS: usize = 3;
const ROUND_TRIPS: usize = 2000;
const IDLE_STREAMS: usize = 10_000;
const SETUPS: usize = 100;
const AIM_IDLE_KIB: f64 = 32.0;

fn main() {
    // 10,000 streams hold ~10,000 descriptors in each of: the clients (this process), the
    // agent, the gateway, and the echo server (a child of its own, below).
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let want = hard.max(32_768);
    if nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, want)
        .is_err()
    {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os(ECHO_ROLE).is_some() {
        // The echo server's own process: print the address, echo until killed.
        rt.block_on(async {
            let addr = echo_server().await;
            println!("{addr}");
            std::future::pending::<()>().await;
        });
        return;
    }
    rt.block_on(run());
}

const ECHO_ROLE: &str = "LASTMILE_BENCH_ECHO";

/// The echo server in a process of its own (its descriptors count against its own limit).
struct EchoProcess {
    child: Child,
    addr: SocketAddr,
}

impl EchoProcess {
    fn start() -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ECHO_ROLE, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            addr: line.trim().parse().unwrap(),
            child,
        }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads everything until EOF, then answers "ok".
async fn sink_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = s.write_all(b"ok").await;
            });
        }
    });
    addr
}

/// Echoes until EOF; one task per connection, so 10,000 idle ones are cheap.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `ssh -L` to the sink and the echo; ready when a forwarded connection echoes.
fn ssh_forwards(sink: SocketAddr, echo: SocketAddr) -> SshForward {
    let fwd = SshForward::start(&[sink, echo]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(fwd.local[1]) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            if s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "ssh -L did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    fwd
}

/// Seconds to move BULK bytes to the sink at `addr` (until its "ok").
fn bulk_once(addr: SocketAddr) -> f64 {
    let chunk = vec![0x5au8; 256 << 10];
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < BULK {
        s.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    started.elapsed().as_secs_f64()
}

/// Round-trip times (µs) of 64-byte ping-pongs on one connection to the echo at `addr`.
fn round_trips(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let ping = [7u8; 64];
    let mut pong = [0u8; 64];
    // Warm up (the gateway opens the resource on the first use).
    s.write_all(&ping).unwrap();
    s.read_exact(&mut pong).unwrap();
    (0..n)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&ping).unwrap();
            s.read_exact(&mut pong).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Times (µs) to connect to the echo at `addr` and get a first 64-byte answer: what a
/// new connection waits (through the tunnel: the stream, the API's authorization, the
/// gateway's connect upstream).
fn setups(addr: SocketAddr, n: usize) -> Vec<f64> {
    let ping = [9u8; 64];
    let mut pong = [0u8; 64];
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&ping).unwrap();
            s.read_exact(&mut pong).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn run() {
    let stack = Stack::start().await;
    let sink = sink_server().await;
    let echo_process = EchoProcess::start();
    let echo = echo_process.addr;
    let alice = stack.user("alice").await;
    stack.resource("sink", sink, &[], &["alice"]).await;
    stack.resource("echo", echo, &[], &["alice"]).await;
    let gw = stack.gateway("gw1").await;
    let listen_sink = Listen::start(&alice, "sink");
    let listen_echo = Listen::start(&alice, "echo");
    let ssh = ssh_forwards(sink, echo);
    let paths: [(&str, SocketAddr, SocketAddr); 3] = [
        ("direct", sink, echo),
        ("tunnel", listen_sink.addr, listen_echo.addr),
        ("ssh -L", ssh.local[0], ssh.local[1]),
    ];

    let results = tokio::task::spawn_blocking(move || {
        // Bulk, interleaved.
        let mut bulk: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut rtt: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut setup: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 0..ROUNDS {
            for (i, (name, s, _)) in paths.iter().enumerate() {
                let secs = bulk_once(*s);
                let mbs = BULK as f64 / secs / 1e6;
                eprintln!("round {round}: bulk {name:<7} {mbs:>8.0} MB/s");
                bulk[i].push(mbs);
            }
            for (i, (_, _, e)) in paths.iter().enumerate() {
                rtt[i].extend(round_trips(*e, ROUND_TRIPS));
                setup[i].extend(setups(*e, SETUPS));
            }
        }
        // Fairness: ping-pong through the tunnel while another stream carries bulk.
        let busy = Arc::new(AtomicBool::new(true));
        let b = busy.clone();
        let sink_addr = paths[1].1;
        let bulk_thread = std::thread::spawn(move || {
            let mut n = 0;
            while b.load(Ordering::Relaxed) {
                bulk_once(sink_addr);
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(200));
        let beside_bulk = round_trips(paths[1].2, ROUND_TRIPS);
        busy.store(false, Ordering::Relaxed);
        let _ = bulk_thread.join();
        (bulk, rtt, beside_bulk, setup)
    })
    .await
    .unwrap();
    let (bulk, mut rtt, mut beside, mut setup) = results;

    // Idle streams.
    let agent_pid = listen_echo.child.id();
    let gw_pid = gw.pid().unwrap();
    let (agent_before, gw_before) = (rss_kib(agent_pid), rss_kib(gw_pid));
    let addr = listen_echo.addr;
    let opened_at = Instant::now();
    let conns = tokio::task::spawn_blocking(move || {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..IDLE_STREAMS / 8 {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            break;
                        };
                        let mut b = [0u8; 1];
                        if s.write_all(b"i").is_err() || s.read_exact(&mut b).is_err() {
                            break;
                        }
                        mine.push(s);
                    }
                    mine
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let open_secs = opened_at.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (agent_after, gw_after) = (rss_kib(agent_pid), rss_kib(gw_pid));
    let n = conns.len() as f64;
    let agent_per = (agent_after - agent_before) / n;
    let gw_per = (gw_after - gw_before) / n;
    drop(conns);

    let names: Vec<&str> = paths.iter().map(|p| p.0).collect();
    let bulk_m: Vec<f64> = bulk.into_iter().map(median).collect();
    println!();
    println!(
        "tunnel bench ({ROUNDS} interleaved rounds; {} MiB bulk; {ROUND_TRIPS} round trips of 64 B per round)",
        BULK >> 20
    );
    for (i, name) in names.iter().enumerate() {
        let r = &mut rtt[i];
        println!(
            "  {name:<7} bulk {:>6.0} MB/s   round trip median {:>6.1} µs, p99 {:>6.1} µs",
            bulk_m[i],
            pct(r, 0.5),
            pct(r, 0.99)
        );
    }
    for (i, name) in names.iter().enumerate() {
        let v = &mut setup[i];
        println!(
            "  {name:<7} new connection to first answer: median {:>7.1} µs, p99 {:>7.1} µs",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    println!(
        "  tunnel, round trip beside a bulk stream: median {:.1} µs, p99 {:.1} µs",
        pct(&mut beside, 0.5),
        pct(&mut beside, 0.99)
    );
    let vs_direct = bulk_m[1] / bulk_m[0];
    let vs_ssh = bulk_m[1] / bulk_m[2];
    println!(
        "  bulk: tunnel/direct = {vs_direct:.2} (aim >= 0.50: {}), tunnel/ssh -L = {vs_ssh:.2} (aim >= 2.00: {})",
        if vs_direct >= 0.5 { "met" } else { "MISSED" },
        if vs_ssh >= 2.0 { "met" } else { "MISSED" }
    );
    println!(
        "  round trip: tunnel/direct = {:.2}, tunnel/ssh -L = {:.2}",
        pct(&mut rtt[1], 0.5) / pct(&mut rtt[0], 0.5),
        pct(&mut rtt[1], 0.5) / pct(&mut rtt[2], 0.5)
    );
    println!(
        "  idle streams: {} open in {open_secs:.1} s; RSS per stream: agent {agent_per:.1} KiB + gateway {gw_per:.1} KiB = {:.1} KiB (aim <= {AIM_IDLE_KIB} KiB: {}); kernel socket buffers not included",
        n,
        agent_per + gw_per,
        if agent_per + gw_per <= AIM_IDLE_KIB {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(ssh);
    drop(echo_process);
}

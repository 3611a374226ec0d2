//! `cargo xtask bench connect`: what interception costs a connect().
//!
//! In one run, connect()+close to a plain loopback listener from a cgroup without the
//! programs (the baseline), to an unprotected destination from a cgroup with them (what
//! every other connection on the host pays), and to a redirected protected target (what a
//! protected connection pays). Rounds are interleaved so drift hits all three alike. Then
//! the programs' own run time per call and per connection, from the kernel's BPF
//! statistics (which time each call with two `sched_clock` reads: a call that returns at
//! once, like most of record_client's on an unprotected connection, measures ~40 ns here).
//!
//! Needs root. Connections are closed with RST (SO_LINGER 0) so no TIME_WAIT piles up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lastmiled::intercept::{Interceptor, RedirectPolicy, TargetId};

const ROUNDS: usize = 25;
const PER_ROUND: usize = 2000;
const AIM_NS: u64 = 300;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench connect needs root (eBPF, cgroups): run `sudo cargo xtask bench connect`");
        std::process::exit(2);
    }
    let root = lastmiled::mounts::cgroup2_root().unwrap();
    let original = own_cgroup(&root);
    let plain = Cgroup::new(&root, "plain");
    let hooked = Cgroup::new(&root, "hooked");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let protected: SocketAddr = format!("127.0.0.2:{}", listen.port()).parse().unwrap();

    let mut interceptor = Interceptor::load().unwrap();
    interceptor
        .set_policy(&RedirectPolicy {
            listener_v4: Some(listen),
            listener_v6: None,
            exempt_mark: 0,
            enforce: false,
        })
        .unwrap();
    interceptor
        .protect(&format!("{protected}").parse().unwrap(), TargetId(0))
        .unwrap();
    interceptor.attach(&hooked.path).unwrap();
    // Read events as lastmiled does (wait for the kernel's wakeup, drain), so the ring
    // buffer never fills and every redirected connect pays for a real submit and wakeup.
    let mut ring = interceptor.take_events().unwrap();
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = consumed.clone();
    std::thread::spawn(move || {
        loop {
            let mut fds = [libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            let mut n = 0;
            while let Some(item) = ring.next() {
                std::hint::black_box(&*item);
                n += 1;
            }
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // BPF run-time statistics are on while this fd is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();

    let ids = interceptor.program_ids();
    let mut baseline = Vec::new();
    let mut unprotected = Vec::new();
    let mut redirected = Vec::new();
    // BPF run time spent by each program during each kind of connection.
    let mut bpf_unprotected = RunStats::default();
    let mut bpf_redirected = RunStats::default();
    // Warm up caches and the listener.
    plain.enter();
    run_round(listen, 200);
    for _ in 0..ROUNDS {
        plain.enter();
        baseline.push(run_round(listen, PER_ROUND));
        hooked.enter();
        let before = snapshot(&ids);
        unprotected.push(run_round(listen, PER_ROUND));
        let mid = snapshot(&ids);
        redirected.push(run_round(protected, PER_ROUND));
        let after = snapshot(&ids);
        bpf_unprotected.add(&before, &mid, PER_ROUND);
        bpf_redirected.add(&mid, &after, PER_ROUND);
    }
    enter(&original);
    drop(stats);

    let base = median(&mut baseline);
    let unprot = median(&mut unprotected);
    let redir = median(&mut redirected);
    println!(
        "connect()+close on loopback, {ROUNDS} interleaved rounds of {PER_ROUND}, median per connection:"
    );
    println!(
        "  plain listener, no programs (baseline)  {:>8.2} us  1.00x",
        base / 1000.0
    );
    println!(
        "  unprotected destination, programs on    {:>8.2} us  {:.2}x  ({:+.0} ns)",
        unprot / 1000.0,
        unprot / base,
        unprot - base
    );
    println!(
        "  redirected protected target             {:>8.2} us  {:.2}x  ({:+.0} ns)",
        redir / 1000.0,
        redir / base,
        redir - base
    );
    println!("BPF run time per call (kernel bpf_stats; median of the rounds, min..max):");
    let mut worst = 0;
    for (what, stats) in [
        ("unprotected", &mut bpf_unprotected),
        ("redirected", &mut bpf_redirected),
    ] {
        for (name, (runs, rounds)) in &mut stats.0 {
            let per = median(rounds) as u64;
            let (lo, hi) = (rounds[0] as u64, rounds[rounds.len() - 1] as u64);
            worst = worst.max(per);
            println!("  {what:<12} {name:<14} {per:>5} ns/call  ({lo}..{hi}; {runs} calls)");
        }
    }
    println!("BPF run time per connection (every program's calls for one connect()+close):");
    for (what, stats) in [
        ("unprotected", &mut bpf_unprotected),
        ("redirected", &mut bpf_redirected),
    ] {
        let per = median(&mut stats.1) as u64;
        println!("  {what:<12} {per:>5} ns");
    }
    let counters = interceptor.counters().unwrap();
    println!(
        "events: {} read, {} dropped by the kernel",
        consumed.load(std::sync::atomic::Ordering::Relaxed),
        counters.events_dropped
    );
    println!(
        "aim: at most {AIM_NS} ns of BPF run time per call: {} (worst {worst} ns)",
        if worst <= AIM_NS { "met" } else { "MISSED" }
    );
    drop(interceptor);
}

/// Per program: its calls over all rounds, and its ns per call in each round; and every
/// program's ns per connection in each round.
#[derive(Default)]
struct RunStats(Vec<(&'static str, (u64, Vec<f64>))>, Vec<f64>);

impl RunStats {
    fn add(
        &mut self,
        before: &[(&'static str, u64, u64)],
        after: &[(&'static str, u64, u64)],
        connections: usize,
    ) {
        let mut total = 0;
        for ((name, c0, t0), (_, c1, t1)) in before.iter().zip(after) {
            let (calls, ns) = (c1 - c0, t1 - t0);
            total += ns;
            if calls == 0 {
                continue;
            }
            let per = ns as f64 / calls as f64;
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, (c, rounds))) => {
                    *c += calls;
                    rounds.push(per);
                }
                None => self.0.push((name, (calls, vec![per]))),
            }
        }
        self.1.push(total as f64 / connections as f64);
    }
}

/// (program, run count, run time ns) for each program, now.
fn snapshot(ids: &[(&'static str, u32)]) -> Vec<(&'static str, u64, u64)> {
    let loaded: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .collect();
    ids.iter()
        .map(|(name, id)| match loaded.iter().find(|p| p.id() == *id) {
            Some(p) => (*name, p.run_count(), p.run_time().as_nanos() as u64),
            None => (*name, 0, 0),
        })
        .collect()
}

/// Nanoseconds per connect()+close over `n` connections.
fn run_round(to: SocketAddr, n: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the option value points at a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn new(root: &Path, name: &str) -> Self {
        let path = root.join(format!("lastmile-bench-{name}-{}", std::process::id()));
        fs::create_dir(&path).unwrap();
        Self { path }
    }

    fn enter(&self) {
        enter(&self.path);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

/// Moves this whole process (every thread) into the cgroup at `path`.
fn enter(path: &Path) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.procs"))
        .unwrap();
    f.write_all(std::process::id().to_string().as_bytes())
        .unwrap();
}

fn own_cgroup(root: &Path) -> PathBuf {
    let line = fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    root.join(rel.trim_start_matches('/'))
}

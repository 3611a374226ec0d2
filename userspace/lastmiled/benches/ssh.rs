//! `cargo xtask bench ssh`: what lastmile costs a native `scp` and an interactive `ssh`,
//! next to a direct login and an OpenSSH `ssh -J` (ProxyJump) through a second sshd, to
//! the same target sshd in the same run.
//!
//! The paths, all on loopback, to one sshd set up as the README tells an ops team
//! (`tests/support/ssh_target.rs`: it trusts the SSH user CA and has a host certificate):
//! - direct: `scp`/`ssh` → target sshd, logging in with a temp key;
//! - lastmile: `scp`/`ssh` → `lastmile listen` → mutual-TLS tunnel → `lastmiled gateway`
//!   (the SSH server the user reaches) → target sshd, logging in with a 5-minute
//!   certificate; the user verifies the host with the known_hosts `lastmile login` wrote;
//! - ssh -J: `scp`/`ssh -J` → a second sshd (the jump host, temp key) → target sshd.
//!
//! Measured per path, in rounds interleaved across paths so drift hits every path alike:
//! - `scp -q` (sftp mode) of LASTMILE_BENCH_SSH_MB MiB (default 1024) from a tmpfs file
//!   to another tmpfs path: MB/s; the relay's CPU (utime + stime of its processes and of
//!   the children they reaped, from /proc) per GiB: `lastmile listen` + the gateway, or the
//!   jump sshd and its session processes; and the client's (scp, ssh, and for -J the
//!   `ssh -W` it starts) from wait4;
//! - keystroke round trip: `ssh -tt HOST 'stty raw -echo; cat'`, one byte written to
//!   ssh's stdin and timed until it comes back on its stdout, KEYS times: p50 and p99.
//!
//! Every client uses chacha20-poly1305@openssh.com (OpenSSH's default) and
//! `Compression=no`.

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
#[path = "common/cpu.rs"]
mod cpu;
#[path = "../tests/support/ssh_target.rs"]
#[allow(dead_code)]
mod ssh_target;
#[path = "../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ssh_target::{client, free_port, new_user, run, skip_reason, ssh_resource, sshd};
use stack::Listen;

const ROUNDS: usize = 2;
const KEYS: usize = 200;
const WARMUP_KEYS: usize = 10;
const CIPHER: &str = "chacha20-poly1305@openssh.com";
const AIM_THROUGHPUT_RATIO: f64 = 0.8;
const AIM_KEYSTROKE_RATIO: f64 = 2.0;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED bench ssh: {reason}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_bench());
}

fn bench_mib() -> u64 {
    std::env::var("LASTMILE_BENCH_SSH_MB")
        .ok()
        .map(|s| {
            s.parse()
                .expect("LASTMILE_BENCH_SSH_MB must be a whole number of MiB")
        })
        .unwrap_or(1024)
}

/// A directory on tmpfs, removed when dropped.
struct Shm(PathBuf);

impl Shm {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/lastmile-bench-ssh-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mib` MiB that do not compress (xorshift), so no layer can shrink them.
fn write_payload(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

/// The jump host for `ssh -J`: a second sshd on loopback, root logging in with `key`.
struct JumpSshd {
    child: Child,
    port: u16,
    /// Its host key's public half, for the bench's known_hosts.
    host_public: String,
}

impl Drop for JumpSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JumpSshd {
    fn start(dir: &Path, user_public: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        keygen(&dir.join("host_key"));
        std::fs::copy(user_public, dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nPidFile none\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the jump sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let host_public = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        Self {
            child,
            port,
            host_public: host_public.trim().to_owned(),
        }
    }
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
        .arg(path));
}

/// CPU seconds of `roots` and all their live descendants, with what they reaped (sshd's
/// session processes end with their connection, and their time lands in the listener's
/// cutime).
fn cpu_secs(roots: &[u32]) -> f64 {
    cpu::tree_secs(roots, true)
}

/// Runs `cmd` to the end (killed after `limit`): its wall time, its CPU seconds with all
/// its descendants (wait4's rusage), and whether it succeeded.
fn timed(cmd: &mut Command, limit: Duration) -> (Duration, f64, bool, String) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as i32;
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(limit).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage; wait4 writes into the two locals only.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    // Reaped by wait4 above: std must not wait for it again.
    std::mem::forget(child);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    let ok = reaped == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (wall, cpu, ok, stderr.join().unwrap_or_default())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Lastmile,
    Jump,
}

/// One way from the user's OpenSSH client to the target sshd.
struct Route {
    name: &'static str,
    kind: Kind,
    /// The port the client dials: the target's, `lastmile listen`'s, the target's (-J).
    port: u16,
    /// The relay's processes (their descendants count too); empty for direct.
    relay: Vec<u32>,
}

/// How the bench's own (non-lastmile) clients log in: a temp key, a temp known_hosts.
struct Clients {
    config: PathBuf,
    lastmile_home: PathBuf,
    jump_port: u16,
}

impl Clients {
    fn command(&self, route: &Route, tool: &str) -> Command {
        let port_flag = if tool == "scp" { "-P" } else { "-p" };
        let mut cmd = match route.kind {
            Kind::Lastmile => client(tool, &self.lastmile_home),
            Kind::Direct | Kind::Jump => {
                let mut cmd = Command::new(tool);
                cmd.arg("-F").arg(&self.config);
                cmd
            }
        };
        cmd.args(["-o", "Compression=no", "-o", &format!("Ciphers={CIPHER}")])
            .args([port_flag, &route.port.to_string()]);
        if route.kind == Kind::Jump {
            cmd.args(["-J", &format!("root@127.0.0.1:{}", self.jump_port)]);
        }
        cmd
    }
}

#[derive(Default)]
struct Tally {
    bytes: f64,
    secs: f64,
    relay_cpu: f64,
    client_cpu: f64,
    keys_ms: Vec<f64>,
}

impl Tally {
    fn mb_per_sec(&self) -> f64 {
        self.bytes / self.secs / 1e6
    }
    fn relay_per_gib(&self) -> f64 {
        self.relay_cpu / (self.bytes / GIB)
    }
    fn client_per_gib(&self) -> f64 {
        self.client_cpu / (self.bytes / GIB)
    }
}

use cpu::pct;

/// One `scp -q` of `src` to `dst` on `route`.
fn scp(clients: &Clients, route: &Route, src: &Path, dst: &Path, mib: u64, t: &mut Tally) {
    let _ = std::fs::remove_file(dst);
    let mut cmd = clients.command(route, "scp");
    cmd.arg("-q")
        .arg(src)
        .arg(format!("root@127.0.0.1:{}", dst.display()));
    let relay0 = cpu_secs(&route.relay);
    let (wall, client_cpu, ok, stderr) = timed(&mut cmd, Duration::from_secs(120));
    // sshd's session processes end just after the client: let them be reaped.
    std::thread::sleep(Duration::from_millis(300));
    let relay = cpu_secs(&route.relay) - relay0;
    assert!(ok, "scp through {}: {stderr}", route.name);
    let len = std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        len,
        mib * MIB,
        "scp through {} copied {len} bytes",
        route.name
    );
    std::fs::remove_file(dst).unwrap();
    let bytes = (mib * MIB) as f64;
    eprintln!(
        "  {:<9} scp {mib} MiB in {:>6.2} s: {:>7.1} MB/s, relay {:.2} CPU s/GiB, client {:.2} CPU s/GiB",
        route.name,
        wall.as_secs_f64(),
        bytes / wall.as_secs_f64() / 1e6,
        relay / (bytes / GIB),
        client_cpu / (bytes / GIB)
    );
    t.bytes += bytes;
    t.secs += wall.as_secs_f64();
    t.relay_cpu += relay;
    t.client_cpu += client_cpu;
}

/// KEYS keystrokes in `ssh -tt HOST 'stty raw -echo; cat'`: each one byte written to ssh's
/// stdin and timed until cat's echo of it comes back on ssh's stdout.
fn keystrokes(clients: &Clients, route: &Route, t: &mut Tally) {
    let mut cmd = clients.command(route, "ssh");
    cmd.args(["-tt", "-e", "none", "root@127.0.0.1"])
        .arg("stty raw -echo; echo READY; exec cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"READY") {
        if output.read(&mut byte).unwrap() == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "ssh through {} ended before the remote cat was ready: {err}",
                route.name
            );
        }
        seen.push(byte[0]);
    }
    // The line end after READY (raw mode: no output processing, so "\n" alone).
    let mut ending = [0u8; 1];
    output.read_exact(&mut ending).unwrap();
    for i in 0..WARMUP_KEYS + KEYS {
        let key = b'a' + (i % 26) as u8;
        let sent = Instant::now();
        input.write_all(&[key]).unwrap();
        input.flush().unwrap();
        output.read_exact(&mut byte).unwrap();
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        assert_eq!(
            byte[0], key,
            "ssh through {} echoed another byte",
            route.name
        );
        if i >= WARMUP_KEYS {
            t.keys_ms.push(ms);
        }
    }
    let _ = done.send(());
    let _ = watchdog.join();
    let _ = child.kill();
    let _ = child.wait();
}

async fn run_bench() {
    let mib = bench_mib();
    let stack = stack::Stack::start().await;
    let target_dir = stack.dir.path().join("target");
    std::fs::create_dir_all(&target_dir).unwrap();
    let target = sshd(&stack, &target_dir);
    let work = stack.dir.path().join("bench");
    std::fs::create_dir_all(&work).unwrap();
    // The bench's own key: root on the target (direct, and the last hop of -J) and on the
    // jump host.
    keygen(&work.join("user"));
    std::fs::copy(work.join("user.pub"), target_dir.join("authorized_keys")).unwrap();
    let jump = JumpSshd::start(&work.join("jump"), &work.join("user.pub"));
    let host_ca = stack.app.pki.bundle().ssh_host_ca;
    let ca_key: Vec<&str> = host_ca.split_whitespace().take(2).collect();
    std::fs::write(
        work.join("known_hosts"),
        format!(
            "@cert-authority [127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n",
            target.port,
            ca_key.join(" "),
            jump.port,
            jump.host_public
        ),
    )
    .unwrap();
    let w = work.display();
    std::fs::write(
        work.join("ssh_config"),
        format!(
            "Host *\n  User root\n  IdentityFile {w}/user\n  IdentitiesOnly yes\n  IdentityAgent none\n\
             BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {w}/known_hosts\n\
             GlobalKnownHostsFile /dev/null\n  Compression no\n  Ciphers {CIPHER}\n  ConnectTimeout 10\n"
        ),
    )
    .unwrap();

    let login_alice = new_user(&stack, "alice").await;
    let port = free_port();
    ssh_resource(&stack, "web", target.port, port, vec![], &["alice"]).await;
    let gw = stack.gateway("gw1").await;
    let alice = login_alice().await;
    let listen = Listen::start_on(&alice, "web", port);

    let routes = vec![
        Route {
            name: "direct",
            kind: Kind::Direct,
            port: target.port,
            relay: vec![],
        },
        Route {
            name: "lastmile",
            kind: Kind::Lastmile,
            port: listen.addr.port(),
            relay: vec![listen.child.id(), gw.pid().unwrap()],
        },
        Route {
            name: "ssh -J",
            kind: Kind::Jump,
            port: target.port,
            relay: vec![jump.child.id()],
        },
    ];
    let clients = Clients {
        config: work.join("ssh_config"),
        lastmile_home: alice.clone(),
        jump_port: jump.port,
    };
    let shm = Shm::new();
    let src = shm.0.join("src");
    write_payload(&src, mib);
    let dst = shm.0.join("dst");
    eprintln!(
        "ssh bench: {} paths x {ROUNDS} rounds of scp {mib} MiB and {KEYS} keystrokes",
        routes.len()
    );

    let (routes, mut tallies) = tokio::task::spawn_blocking(move || {
        let mut tallies: Vec<Tally> = routes.iter().map(|_| Tally::default()).collect();
        for round in 0..ROUNDS {
            eprintln!("round {round}");
            for (route, t) in routes.iter().zip(&mut tallies) {
                scp(&clients, route, &src, &dst, mib, t);
            }
            for (route, t) in routes.iter().zip(&mut tallies) {
                keystrokes(&clients, route, t);
            }
        }
        (routes, tallies)
    })
    .await
    .unwrap();

    println!();
    println!(
        "ssh bench (OpenSSH clients, {CIPHER}, Compression=no; {ROUNDS} interleaved rounds per path)"
    );
    println!(
        "  scp -q (sftp mode) of {mib} MiB, /dev/shm to /dev/shm; keystroke: one byte through `ssh -tt HOST 'stty raw -echo; cat'`, {} per path",
        KEYS * ROUNDS
    );
    println!(
        "  relay CPU = utime+stime of the relay's processes (lastmile listen + lastmiled gateway; the jump sshd and its sessions);"
    );
    println!("  client CPU = scp + ssh (+ the `ssh -W` that -J starts on the client)");
    println!(
        "  {:<10} {:>8} {:>16} {:>17} {:>14} {:>14}",
        "path", "MB/s", "relay CPU s/GiB", "client CPU s/GiB", "keystroke p50", "keystroke p99"
    );
    for (route, t) in routes.iter().zip(&mut tallies) {
        let relay = if route.relay.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", t.relay_per_gib())
        };
        let (p50, p99) = (pct(&mut t.keys_ms, 0.5), pct(&mut t.keys_ms, 0.99));
        println!(
            "  {:<10} {:>8.1} {:>16} {:>17.2} {:>11.3} ms {:>11.3} ms",
            route.name,
            t.mb_per_sec(),
            relay,
            t.client_per_gib(),
            p50,
            p99
        );
    }
    let [direct, lm, jump_t] = &mut tallies[..] else {
        unreachable!()
    };
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let throughput = lm.mb_per_sec() / jump_t.mb_per_sec();
    println!(
        "  scp throughput: lastmile / ssh -J = {throughput:.2} (aim >= {AIM_THROUGHPUT_RATIO:.1}: {}); lastmile / direct = {:.2}",
        met(throughput >= AIM_THROUGHPUT_RATIO),
        lm.mb_per_sec() / direct.mb_per_sec()
    );
    let keys = pct(&mut lm.keys_ms, 0.5) / pct(&mut jump_t.keys_ms, 0.5);
    println!(
        "  keystroke round trip p50: lastmile / ssh -J = {keys:.2} (aim <= {AIM_KEYSTROKE_RATIO:.1}: {}); p99: {:.2}",
        met(keys <= AIM_KEYSTROKE_RATIO),
        pct(&mut lm.keys_ms, 0.99) / pct(&mut jump_t.keys_ms, 0.99)
    );
    println!(
        "  relay CPU per GiB: lastmile / ssh -J = {:.2}",
        lm.relay_per_gib() / jump_t.relay_per_gib()
    );
    drop((listen, gw, jump, target, shm, stack));
}

//! `cargo xtask bench pg`: what lastmile costs a PostgreSQL client, next to a direct
//! connection, pgbouncer and an OpenSSH `ssh -L` forward, on the same PostgreSQL 15 in the
//! same run.
//!
//! The paths, all on loopback, to one throwaway server (`PgServer`, `pgbench -i -s 1` once):
//! - direct: pgbench → PostgreSQL;
//! - pgbouncer: session pooling, SCRAM from a userlist, connection logging off;
//! - ssh -L: through a private sshd;
//! - lastmile tcp: `lastmile listen` → mutual-TLS tunnel → `lastmiled gateway` relaying
//!   bytes; pgbench logs in to PostgreSQL itself (PGPASSWORD);
//! - lastmile postgres: the same tunnel, the gateway answering the startup and logging in
//!   upstream with the vault's credential; pgbench has no password.
//!
//! Measured per path, in rounds interleaved across paths so drift hits every path alike:
//! - transactions: `pgbench -S -c 4 -j 2 -T secs -n` on persistent connections: TPS, and the
//!   relay's CPU (utime + stime of its processes, from /proc) per transaction;
//! - new connections: `pgbench -C -S -c 1 -T secs -n`: pgbench's average connection time
//!   (connect, log in, disconnect) and the relay's CPU per connection;
//! - login p50: our own raw client (startup, SCRAM, to the first ReadyForQuery) timed on
//!   LOGINS new connections per round, because pgbench reports only an average.
//!
//! `LASTMILE_BENCH_SECS` sets the seconds of each pgbench run (default 10).

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
#[path = "baselines/ssh_forward.rs"]
mod ssh_forward;
#[path = "../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lastmile_postgres::{
    auth::{AuthStep, Authenticator, ChannelBindingPolicy, Credentials},
    message::{Backend, parse_backend},
    startup::StartupMessage,
};
use lastmile_proto::wire::{
    CredentialKind, NewGrant, Resource, ResourceKind, Subject, UpstreamTls,
};
use lastmile_testkit::pg::PgServer;
use ssh_forward::SshForward;
use stack::{Listen, Stack};
use zeroize::Zeroizing;

const ROUNDS: usize = 2;
const LOGINS: usize = 100;
const AIM_TPS_RATIO: f64 = 0.9;
const AIM_CPU_RATIO: f64 = 1.0;
const AIM_LOGIN_MS: f64 = 2.0;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn bench_secs() -> u64 {
    std::env::var("LASTMILE_BENCH_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("LASTMILE_BENCH_SECS must be a whole number of seconds")
        })
        .unwrap_or(10)
}

/// One way from pgbench to the server.
struct Route {
    name: &'static str,
    addr: SocketAddr,
    /// The password pgbench sends; `None` when lastmile logs in for it.
    password: Option<String>,
    /// The relay's processes (their descendants count too); empty for direct.
    relay: Vec<u32>,
    /// pgbench's PGSSLMODE: `disable` on every path, so all compare alike (libpq's default
    /// `prefer` gets TLS from lastmile's gateway, which the others do not offer), and
    /// `require` on one more lastmile row to show what that TLS costs.
    sslmode: &'static str,
}

/// pgbouncer in session pooling mode, in front of `pg`, run as the user PostgreSQL runs as.
struct Pgbouncer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pgbouncer {
    fn start(pg: &PgServer) -> Self {
        // pgbouncer refuses to run as root; as root, run it as PgServer runs PostgreSQL.
        let run_as = nix::unistd::geteuid()
            .is_root()
            .then(|| nix::unistd::User::from_name("postgres").unwrap().unwrap());
        let dir = tempfile::Builder::new()
            .prefix("lastmile-pgbouncer-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let port = free_port();
        std::fs::write(
            d.join("userlist.txt"),
            format!("\"{}\" \"{}\"\n", pg.user(), pg.password()),
        )
        .unwrap();
        std::fs::write(
            d.join("pgbouncer.ini"),
            format!(
                "[databases]\nlastmile = host=127.0.0.1 port={} dbname=lastmile\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {}\npool_mode = session\n\
                 max_client_conn = 100\ndefault_pool_size = 20\n\
                 log_connections = 0\nlog_disconnections = 0\nlogfile = {}\n",
                pg.port(),
                d.join("userlist.txt").display(),
                d.join("pgbouncer.log").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/pgbouncer");
        cmd.arg(d.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = &run_as {
            for f in ["", "userlist.txt", "pgbouncer.ini"] {
                std::os::unix::fs::chown(d.join(f), Some(user.uid.as_raw()), None).unwrap();
            }
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd
            .spawn()
            .expect("start pgbouncer (apt install pgbouncer)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = d.join("pgbouncer.log");
        let bouncer = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }
}

/// utime + stime (µs) of `roots` and all their live descendants.
fn cpu_us(roots: &[u32]) -> f64 {
    cpu::tree_secs(roots, false) * 1e6
}

/// This process's own utime + stime (µs), children not included: the API, which lastmile
/// asks per connection, runs here.
fn own_cpu_us() -> f64 {
    cpu::ticks_to_secs(cpu::stat_ticks(std::process::id(), false).unwrap().1) * 1e6
}

/// Runs `cmd` to the end, killing it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(limit).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let _ = watchdog.join();
    out
}

/// What one pgbench run reported.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    transactions: f64,
    tps: f64,
    /// pgbench's "average connection time" (ms), under -C.
    conn_ms: f64,
    relay_cpu_us: f64,
    api_cpu_us: f64,
}

fn pgbench(pg: &PgServer, route: &Route, args: &[&str], secs: u64) -> Run {
    let mut cmd = Command::new(pg.bin_dir().join("pgbench"));
    cmd.args(["-h", &route.addr.ip().to_string()])
        .args(["-p", &route.addr.port().to_string(), "-U", pg.user()])
        .args(args)
        .args(["-T", &secs.to_string(), "-n", "lastmile"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", route.sslmode);
    match &route.password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let (relay0, api0) = (cpu_us(&route.relay), own_cpu_us());
    let out = run_bounded(&mut cmd, Duration::from_secs(secs + 60));
    let (relay1, api1) = (cpu_us(&route.relay), own_cpu_us());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench {args:?} via {}: {text}{}",
        route.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
    };
    Run {
        transactions: field("number of transactions actually processed: ").unwrap(),
        tps: field("tps = ").unwrap(),
        conn_ms: field("average connection time = ").unwrap_or(f64::NAN),
        relay_cpu_us: relay1 - relay0,
        api_cpu_us: api1 - api0,
    }
}

/// Milliseconds from connect() to the first ReadyForQuery: the startup message, the login
/// (SCRAM when a password is given and asked for) and the backend's start. Then Terminate.
fn login_ms(addr: SocketAddr, user: &str, password: Option<&str>) -> f64 {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let startup = StartupMessage::new(vec![
        ("user".into(), user.into()),
        ("database".into(), "lastmile".into()),
    ]);
    s.write_all(&startup.encode()).unwrap();
    let mut auth = Authenticator::new(
        Credentials {
            user: user.into(),
            password: Zeroizing::new(password.unwrap_or_default().as_bytes().to_vec()),
        },
        ChannelBindingPolicy::None,
    );
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        match parse_backend(head[0], &body).unwrap() {
            Backend::Authentication(req) => {
                if let AuthStep::Send(msg) = auth.feed(&req).unwrap() {
                    s.write_all(&msg).unwrap();
                }
            }
            Backend::ErrorResponse(e) => panic!("login at {addr} refused: {}", e.message),
            Backend::ReadyForQuery { .. } => break,
            _ => {}
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    ms
}

use cpu::pct;

fn admin_sql(pg: &PgServer, sql: &str) {
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.url())
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {out:?}");
}

async fn postgres_resource(stack: &Stack, name: &str, pg: &PgServer, user: &str) {
    lastmile_api::admin::put_resource(
        &stack.app,
        "test",
        Resource {
            name: name.into(),
            kind: ResourceKind::Postgres,
            host: "127.0.0.1".into(),
            port: pg.port(),
            protect: vec![],
            upstream_tls: Some(UpstreamTls::Disable),
            credential: Some(CredentialKind::Password),
            ssh_principals: vec![],
            database_user: Some(pg.user().into()),
            databases: vec![],
            upstream_ca: None,
            ssh_host_ca: vec![],
            ssh_host_keys: vec![],
            ssh_allow_port_forwarding: false,
            names: vec![],
        },
    )
    .await
    .unwrap();
    lastmile_api::vault::set_credential(
        &stack.app,
        "test",
        name,
        CredentialKind::Password,
        Zeroizing::new(pg.password().as_bytes().to_vec()),
    )
    .await
    .unwrap();
    lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        NewGrant {
            resource: name.into(),
            subject: Subject::User(user.into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Per-route results over all rounds.
#[derive(Default)]
struct Tally {
    tx: Vec<Run>,
    conn: Vec<Run>,
    logins: Vec<f64>,
}

impl Tally {
    fn tps(&self) -> f64 {
        mean(&self.tx.iter().map(|r| r.tps).collect::<Vec<_>>())
    }

    fn per(runs: &[Run], cpu: fn(&Run) -> f64) -> f64 {
        runs.iter().map(cpu).sum::<f64>() / runs.iter().map(|r| r.transactions).sum::<f64>()
    }

    fn cpu_per_tx(&self) -> f64 {
        Self::per(&self.tx, |r| r.relay_cpu_us)
    }

    fn cpu_per_conn(&self) -> f64 {
        Self::per(&self.conn, |r| r.relay_cpu_us)
    }

    fn api_per_conn(&self) -> f64 {
        Self::per(&self.conn, |r| r.api_cpu_us)
    }

    fn conns_per_sec(&self) -> f64 {
        mean(&self.conn.iter().map(|r| r.tps).collect::<Vec<_>>())
    }

    fn conn_ms(&self) -> f64 {
        mean(&self.conn.iter().map(|r| r.conn_ms).collect::<Vec<_>>())
    }
}

async fn run() {
    let secs = bench_secs();
    let pg = PgServer::start().unwrap();
    let pg_addr = SocketAddr::from(([127, 0, 0, 1], pg.port()));
    let init = Command::new(pg.bin_dir().join("pgbench"))
        .args(["-i", "-s", "1", "-q", "-d"])
        .arg(pg.url())
        .output()
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {init:?}");
    admin_sql(&pg, "VACUUM ANALYZE");

    let bouncer = Pgbouncer::start(&pg);
    let ssh = SshForward::start(&[pg_addr]);
    let stack = Stack::start().await;
    let alice = stack.user("alice").await;
    stack.resource("pg-tcp", pg_addr, &[], &["alice"]).await;
    postgres_resource(&stack, "pg", &pg, "alice").await;
    let gw = stack.gateway("gw1").await;
    let listen_tcp = Listen::start(&alice, "pg-tcp");
    let listen_pg = Listen::start(&alice, "pg");
    let gw_pid = gw.pid().unwrap();
    let password = Some(pg.password().to_owned());
    let routes = vec![
        Route {
            name: "direct",
            addr: pg_addr,
            password: password.clone(),
            relay: vec![],
            sslmode: "disable",
        },
        Route {
            name: "pgbouncer (session)",
            addr: bouncer.addr,
            password: password.clone(),
            relay: vec![bouncer.child.id()],
            sslmode: "disable",
        },
        Route {
            name: "ssh -L",
            addr: ssh.local[0],
            password: password.clone(),
            relay: vec![ssh.ssh_pid(), ssh.sshd_pid()],
            sslmode: "disable",
        },
        Route {
            name: "lastmile tcp",
            addr: listen_tcp.addr,
            password: password.clone(),
            relay: vec![listen_tcp.child.id(), gw_pid],
            sslmode: "disable",
        },
        Route {
            name: "lastmile postgres",
            addr: listen_pg.addr,
            password: None,
            relay: vec![listen_pg.child.id(), gw_pid],
            sslmode: "disable",
        },
        Route {
            name: "lastmile postgres+TLS",
            addr: listen_pg.addr,
            password: None,
            relay: vec![listen_pg.child.id(), gw_pid],
            sslmode: "require",
        },
    ];
    eprintln!(
        "pg bench: {} routes x {ROUNDS} rounds x 2 pgbench runs of {secs} s, about {} s",
        routes.len(),
        routes.len() * ROUNDS * 2 * secs as usize
    );

    let tallies = tokio::task::spawn_blocking({
        let pg_user = pg.user().to_owned();
        move || {
            let mut tallies: Vec<Tally> = routes.iter().map(|_| Tally::default()).collect();
            for round in 0..ROUNDS {
                for (route, t) in routes.iter().zip(&mut tallies) {
                    let r = pgbench(&pg, route, &["-S", "-c", "4", "-j", "2"], secs);
                    eprintln!(
                        "round {round}: {:<19} {:>8.0} TPS, relay {:>6.1} µs CPU/txn",
                        route.name,
                        r.tps,
                        r.relay_cpu_us / r.transactions
                    );
                    t.tx.push(r);
                }
                for (route, t) in routes.iter().zip(&mut tallies) {
                    let r = pgbench(&pg, route, &["-C", "-S", "-c", "1"], secs);
                    for _ in 0..LOGINS {
                        t.logins
                            .push(login_ms(route.addr, &pg_user, route.password.as_deref()));
                    }
                    eprintln!(
                        "round {round}: {:<19} {:>8.0} conn/s, {:>6.2} ms avg connection, relay {:>7.0} µs CPU/conn",
                        route.name,
                        r.tps,
                        r.conn_ms,
                        r.relay_cpu_us / r.transactions
                    );
                    t.conn.push(r);
                }
            }
            (pg, routes, tallies)
        }
    })
    .await
    .unwrap();
    let (pg, routes, mut tallies) = tallies;

    println!();
    println!(
        "pg bench (PostgreSQL 15, pgbench -i -s 1; select-only; {ROUNDS} interleaved rounds of {secs} s per path and mode)"
    );
    println!(
        "  transactions: pgbench -S -c 4 -j 2 (persistent connections); new connections: pgbench -C -S -c 1; \
         login p50: {} raw logins (connect → ReadyForQuery)",
        LOGINS * ROUNDS
    );
    println!(
        "  relay CPU = utime+stime of the relay's processes (pgbouncer; ssh + sshd; lastmile listen + lastmiled gateway)"
    );
    println!(
        "  {:<22} {:>8} {:>13}   {:>7} {:>12} {:>10} {:>10} {:>14}",
        "path",
        "TPS",
        "relay µs/txn",
        "conn/s",
        "avg conn ms",
        "login p50",
        "login p99",
        "relay µs/conn"
    );
    for (route, t) in routes.iter().zip(&mut tallies) {
        let relay = |v: f64| {
            if route.relay.is_empty() {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        let (p50, p99) = (pct(&mut t.logins, 0.5), pct(&mut t.logins, 0.99));
        println!(
            "  {:<22} {:>8.0} {:>13}   {:>7.0} {:>12.2} {:>7.2} ms {:>7.2} ms {:>14}",
            route.name,
            t.tps(),
            relay(t.cpu_per_tx()),
            t.conns_per_sec(),
            t.conn_ms(),
            p50,
            p99,
            relay(t.cpu_per_conn()),
        );
    }
    let [direct, _, ssh_t, tcp, pgr, _] = &mut tallies[..] else {
        unreachable!()
    };
    println!(
        "  the API (in this process) per new connection: lastmile tcp {:.0} µs CPU, lastmile postgres {:.0} µs CPU",
        tcp.api_per_conn(),
        pgr.api_per_conn()
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let tps_ratio = pgr.tps() / tcp.tps();
    println!(
        "  TPS: lastmile postgres / lastmile tcp = {tps_ratio:.2} (aim >= {AIM_TPS_RATIO:.2}: {}); postgres / direct = {:.2}",
        met(tps_ratio >= AIM_TPS_RATIO),
        pgr.tps() / direct.tps()
    );
    let cpu_ratio = pgr.cpu_per_tx() / ssh_t.cpu_per_tx();
    println!(
        "  relay CPU per transaction: lastmile postgres / ssh -L = {cpu_ratio:.2} (aim <= {AIM_CPU_RATIO:.2}: {}); lastmile tcp / ssh -L = {:.2}",
        met(cpu_ratio <= AIM_CPU_RATIO),
        tcp.cpu_per_tx() / ssh_t.cpu_per_tx()
    );
    let extra = pct(&mut pgr.logins, 0.5) - pct(&mut direct.logins, 0.5);
    println!(
        "  new connection, login p50: lastmile postgres - direct = {extra:.2} ms (aim <= {AIM_LOGIN_MS:.0} ms: {}); \
         pgbench average connection time: lastmile postgres - direct = {:.2} ms",
        met(extra <= AIM_LOGIN_MS),
        pgr.conn_ms() - direct.conn_ms()
    );
    drop((listen_tcp, listen_pg, gw, ssh, bouncer, stack, pg));
}
